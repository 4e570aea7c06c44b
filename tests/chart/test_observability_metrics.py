"""Every metric a rule, a dashboard or a scaler names is one the code exports.

The exported names come from the services' own metric modules, imported and read back from
prometheus_client's registry (observability/metric_names.py); the named ones from a real PromQL parser
(promql-parser) over the rule files, the generated dashboards and the KEDA prometheus triggers of the
rendered chart. Only recording rules the rule files define and an explicit allow-list of external
metrics (kafka_exporter's lag and offsets, Prometheus' own ``up``) are accepted besides.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from observability import chart, metric_names  # noqa: E402


# Rendering the chart builds helm on its first use (cluster tools): minutes cold.
pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return metric_names.exported_names()


@pytest.fixture(scope="module")
def known(exported) -> set[str]:
    return exported | metric_names.recorded_names() | set(metric_names.EXTERNAL)


@pytest.fixture(scope="module")
def scalers() -> dict[str, str]:
    docs = chart.render(api_versions=chart.KEDA_APIS + chart.MONITORING_APIS)
    return metric_names.scaler_expressions(docs)


def test_the_exported_names_are_read_from_the_code(exported):
    """Types give the suffixes: a counter's _total, a histogram's _bucket/_sum/_count, a gauge as is."""
    assert {"lupita_bridge_calls_total", "lupita_bridge_active_calls", "lupita_transcriber_lag_seconds_bucket",
            "lupita_transcriber_lag_seconds_count", "lupita_sink_writes_total", "lupita_stream_broker_retries_total",
            "lupita_context_api_tool_calls_total", "lupita_recorder_ready"} <= exported
    assert "lupita_bridge_calls" not in exported and "lupita_bridge_active_calls_total" not in exported
    modules = metric_names.metric_modules()
    for module in ("media_bridge.metrics", "stream_processor.faust_kit", "stream_processor.stores.metrics",
                   "stream_processor.stages.transcriber.metrics", "context_api.metrics", "telephony_gateway.metrics"):
        assert module in modules


def test_every_metric_a_rule_names_is_exported(known):
    bad = metric_names.unknown_names(metric_names.rule_expressions(), known)
    assert bad == {}, f"rules name metrics the code does not export: {bad}"


def test_every_metric_a_dashboard_names_is_exported(known):
    exprs = metric_names.dashboard_expressions()
    assert len(exprs) > 40
    bad = metric_names.unknown_names(exprs, known)
    assert bad == {}, f"dashboards name metrics the code does not export: {bad}"


def test_every_metric_a_scaler_names_is_exported(scalers, exported):
    """The KEDA prometheus triggers (the bridge scales on live calls) read exported metrics only
    (no recording rule, no external one: the scaler must work with the chart alone)."""
    assert scalers, "the chart renders no KEDA prometheus trigger"
    bad = metric_names.unknown_names(scalers, exported)
    assert bad == {}, f"scalers name metrics the code does not export: {bad}"


def test_the_gateways_metrics_are_watched_by_rules_dashboards_and_its_scaler(scalers):
    """The telephony gateway's signals each reach something that acts on them: its live calls scale it,
    bad input / media-format refusals / bridge errors / up alert, and every one of its metrics is on a
    dashboard (all read from its own metric module, so a renamed metric fails here)."""
    from telephony_gateway import metrics

    def named(exprs: dict[str, str]) -> set[str]:
        return set().union(*(metric_names.names_in(e) for e in exprs.values()))

    assert metrics.LIVE_CALLS._name in named(scalers)
    alerts = {r["alert"]: metric_names.names_in(r["expr"]) for r in metric_names.rules() if "alert" in r}
    recorded = {r["record"]: metric_names.names_in(r["expr"]) for r in metric_names.rules() if "record" in r}
    watched = set()
    for names in alerts.values():
        watched |= names
        for name in names & set(recorded):
            watched |= recorded[name]
    for metric in (metrics.BAD_INPUT, metrics.FORMAT_MISMATCHES, metrics.BRIDGE_ERRORS):
        assert f"{metric._name}_total" in watched, metric._name
    assert "up" in alerts["LupitaGatewayDown"]
    on_boards = named(metric_names.dashboard_expressions())
    for metric in (metrics.LIVE_CALLS, metrics.CALLS, metrics.FRAMES, metrics.GAPS, metrics.REORDERED, metrics.SKIPPED,
                   metrics.FORMAT_MISMATCHES, metrics.BAD_INPUT, metrics.BRIDGE_ERRORS, metrics.FORWARD_SECONDS):
        wanted = {"gauge": metric._name, "counter": f"{metric._name}_total",
                  "histogram": f"{metric._name}_bucket"}[metric._type]
        assert wanted in on_boards, wanted


def test_the_allow_list_holds_only_what_is_used():
    used = set()
    exprs = {**metric_names.rule_expressions(), **metric_names.dashboard_expressions()}
    for expr in exprs.values():
        used |= metric_names.names_in(expr)
    assert set(metric_names.EXTERNAL) - used == set()


def test_the_check_finds_a_misspelt_or_unexported_name(known):
    bad = metric_names.unknown_names({
        "typo": "sum(rate(lupita_bridge_call_total[5m]))",
        "suffix on a gauge": "lupita_bridge_active_calls_total",
        "by __name__": '{__name__="lupita_nothing_total"}',
        "grafana": 'label_values(lupita_vad_open_call{namespace="$namespace"}, pod)',
        "fine": "histogram_quantile(0.9, sum by (le) (rate(lupita_vad_batch_seconds_bucket[$__rate_interval])))",
    }, known)
    assert bad == {"typo": {"lupita_bridge_call_total"}, "suffix on a gauge": {"lupita_bridge_active_calls_total"},
                   "by __name__": {"lupita_nothing_total"}, "grafana": {"lupita_vad_open_call"}}


def test_an_expression_that_is_not_promql_is_refused():
    with pytest.raises(ValueError, match="not valid PromQL"):
        metric_names.names_in("sum(rate(lupita_bridge_calls_total[5m])")


def test_the_derived_names_cover_every_series_the_exposition_writes(exported):
    """The type -> suffix derivation agrees with prometheus_client's own text exposition: every
    sample name it writes for the services' metrics (and the default collectors') is derived."""
    from prometheus_client import REGISTRY, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    written = {sample.name for family in text_string_to_metric_families(generate_latest(REGISTRY).decode())
               for sample in family.samples}
    assert any(name.startswith("lupita_") for name in written)
    assert written - exported == set()


def test_the_slo_threshold_is_a_bucket_boundary_of_the_transcript_lag_histogram():
    """The SLO counts finals under le="8": 8 must be a bucket of lupita_transcriber_lag_seconds, and the
    rule's le matcher must match the label the Python client writes for it (Prometheus 3 writes "8")."""
    import re

    import yaml
    from prometheus_client.utils import floatToGoString
    from stream_processor.stages.transcriber.metrics import LAG_SECONDS

    assert 8.0 in LAG_SECONDS._upper_bounds  # the buckets as constructed (no public accessor without a child)
    slo = yaml.safe_load((metric_names.RULES_DIR / "slo.yaml").read_text())
    matchers = set()
    for rule in slo["groups"][0]["rules"]:
        matchers |= set(re.findall(r'le=~"([^"]+)"', rule["expr"]))
    assert len(matchers) == 1
    pattern = matchers.pop().replace("\\\\", "\\")  # PromQL string escape -> the regex Prometheus compiles
    assert re.fullmatch(pattern, floatToGoString(8.0)) and re.fullmatch(pattern, "8")
    assert not re.fullmatch(pattern, "0.8") and not re.fullmatch(pattern, "16.0")
