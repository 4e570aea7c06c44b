"""Which metric names the code exports, and which ones the rules, dashboards and scalers name.

Why: a dashboard or alert on a misspelt or renamed metric shows "no data" and never fires; the
only safe check is against what the code really registers. tests/chart/test_observability_metrics.py
uses both halves.

Exported names: every module under ``services/`` that creates prometheus_client metrics is imported,
then prometheus_client's default REGISTRY is walked (``collect()``: public API) and each family's
series names are derived from its type, as the exposition writes them (counter ``_total`` and
``_created``; histogram ``_bucket``/``_sum``/``_count``/``_created``; summary ``_sum``/``_count``...).
Labelled metrics without children produce no samples, hence names from types, not samples.

Named metrics: PromQL is parsed with ``promql-parser`` (the Rust PromQL parser's Python binding), and
every vector selector's metric name is taken (the ``__name__`` matcher too). Grafana's own macros
(``$__rate_interval``, ...) are replaced by a duration first and ``label_values(selector, label)``
template queries are reduced to their selector.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import promql_parser
import yaml

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ROOT / "services"
RULES_DIR = ROOT / "charts" / "lupita" / "files" / "rules"
DASHBOARDS_DIR = ROOT / "charts" / "lupita" / "files" / "dashboards"

# Metrics the platform does not export but its rules and dashboards use on purpose, each with its source.
EXTERNAL = {
    # kafka_exporter (Strimzi's Kafka spec.kafkaExporter, or the prometheus-kafka-exporter chart)
    "kafka_consumergroup_lag_sum": "kafka_exporter",
    "kafka_consumergroup_current_offset_sum": "kafka_exporter",
    "kafka_topic_partition_current_offset": "kafka_exporter",
    # written by Prometheus itself for every scrape target
    "up": "prometheus",
}

_METRIC_CLASS = re.compile(r"\b(Counter|Gauge|Histogram|Summary|Info|Enum)\(\s*[\"']")
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "gauge": ("",),
    "stateset": ("",),
    "unknown": ("",),
}
# Grafana macros that are not PromQL: replaced by a plain duration before parsing.
_GRAFANA_MACROS = re.compile(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}")
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$", re.S)


def metric_modules(root: Path = SERVICES) -> list[str]:
    """Dotted names of the modules under ``services/`` that create prometheus_client metrics."""
    found = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(errors="replace")
        if "prometheus_client" in text and _METRIC_CLASS.search(text):
            found.append(".".join(path.relative_to(root).with_suffix("").parts))
    return found


def exported_names(modules: Iterable[str] | None = None) -> set[str]:
    """Every series name the services' metrics produce (their modules imported into this process)."""
    from prometheus_client import REGISTRY

    for name in metric_modules() if modules is None else modules:
        importlib.import_module(name)
    names: set[str] = set()
    for family in REGISTRY.collect():
        for suffix in _SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def _selectors(expr: Any) -> Iterator[str]:
    found: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                found.append(node.name)
            for matcher in node.matchers.matchers:
                if matcher.name == "__name__":
                    found.append(matcher.value)

    promql_parser.walk(expr, visit)
    yield from found


def names_in(promql: str) -> set[str]:
    """Metric names a PromQL expression (or a Grafana query / ``label_values`` query) reads."""
    text = _GRAFANA_MACROS.sub("5m", promql)
    match = _LABEL_VALUES.match(text)
    if match:
        text = match.group("selector")
    try:
        expr = promql_parser.parse(text)
    except Exception as exc:  # the parser raises its own error types
        raise ValueError(f"not valid PromQL: {promql!r}: {exc}") from exc
    return set(_selectors(expr))


def rule_files(folder: Path = RULES_DIR) -> list[Path]:
    return sorted(folder.glob("*.yaml"))


def rules(folder: Path = RULES_DIR) -> list[dict[str, Any]]:
    """Every rule (alerting and recording) of the chart's rule files."""
    out = []
    for path in rule_files(folder):
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", []):
            for rule in group.get("rules", []):
                out.append({**rule, "file": path.name, "group": group["name"]})
    return out


def recorded_names(folder: Path = RULES_DIR) -> set[str]:
    return {rule["record"] for rule in rules(folder) if "record" in rule}


def rule_expressions(folder: Path = RULES_DIR) -> dict[str, str]:
    """``"<file>/<rule name>" -> expr`` for every rule."""
    return {f"{r['file']}/{r.get('alert') or r.get('record')}": r["expr"] for r in rules(folder)}


def dashboard_expressions(folder: Path = DASHBOARDS_DIR) -> dict[str, str]:
    """``"<file>/<panel title>/<refId>" -> expr`` for every panel target and templating query."""
    out: dict[str, str] = {}
    for path in sorted(folder.glob("*.json")):
        board = json.loads(path.read_text())

        def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
            for item in items:
                yield item
                yield from panels(item.get("panels") or [])

        for panel in panels(board.get("panels") or []):
            for target in panel.get("targets") or []:
                if target.get("expr"):
                    out[f"{path.name}/{panel.get('title')}/{target.get('refId')}"] = target["expr"]
        for var in (board.get("templating") or {}).get("list") or []:
            query = var.get("query")
            if var.get("type") == "query" and isinstance(query, dict):
                query = query.get("query")
            if var.get("type") == "query" and query:
                out[f"{path.name}/${var['name']}"] = query
    return out


def scaler_expressions(manifests: Iterable[dict[str, Any]]) -> dict[str, str]:
    """``"<ScaledObject>/<trigger n>" -> query`` for the KEDA prometheus triggers of rendered manifests."""
    out = {}
    for doc in manifests:
        if not doc or doc.get("kind") != "ScaledObject":
            continue
        for n, trigger in enumerate(doc.get("spec", {}).get("triggers") or []):
            if trigger.get("type") == "prometheus":
                out[f"ScaledObject/{doc['metadata']['name']}/{n}"] = trigger["metadata"]["query"]
    return out


def unknown_names(expressions: dict[str, str], known: set[str]) -> dict[str, set[str]]:
    """Where each expression names a metric that is neither exported, recorded nor allow-listed."""
    bad = {}
    for where, expr in expressions.items():
        missing = names_in(expr) - known
        if missing:
            bad[where] = missing
    return bad


def main() -> int:
    """Print every unknown metric name (exit 1 if any): rules and dashboards (no chart rendering)."""
    known = exported_names() | recorded_names() | set(EXTERNAL)
    bad = unknown_names({**rule_expressions(), **dashboard_expressions()}, known)
    for where, names in sorted(bad.items()):
        print(f"{where}: {', '.join(sorted(names))}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
