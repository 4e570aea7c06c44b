"""The chart's observability: Prometheus rules checked and unit-tested by promtool, Grafana dashboards
generated from code (never drifting from it), and the monitoring objects the chart renders.

promtool and helm are real binaries built once from their Go modules (observability/promtool.py,
lupita_dev.cluster.tools) and cached under ~/.cache/lupita; the first run builds them (minutes).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from observability import chart, dashboards, metric_names  # noqa: E402
from observability.promtool import ensure_promtool  # noqa: E402

# The first run builds promtool (and helm) from their Go modules: ~5-15 minutes cold on 2 shared cores.
pytestmark = pytest.mark.timeout(1800)

RULES = sorted((ROOT / "charts/lupita/files/rules").glob("*.yaml"))
RULE_TESTS = sorted((ROOT / "observability/rules-tests").glob("*.yaml"))
COMPONENTS = {"media-bridge", "recorder", "vad", "transcriber", "understanding", "context-api", "telephony-gateway"}


@pytest.fixture(scope="module")
def promtool() -> Path:
    return ensure_promtool()


def run(cmd: list[str | Path], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, timeout=300)


# --- rules --------------------------------------------------------------------------------------


def test_the_rule_files_pass_promtool_check_with_every_lint(promtool):
    assert RULES, "no rule files"
    out = run([promtool, "check", "rules", "--lint=all", "--lint-fatal", *RULES])
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == len(RULES), out.stdout


def test_the_rules_pass_their_promtool_unit_tests(promtool):
    out = run([promtool, "test", "rules", *RULE_TESTS])
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_is_proven_to_fire_by_a_unit_test():
    """Each alert has at least one promtool test case in which it fires (exp_alerts not empty)."""
    alerts = {r["alert"] for r in metric_names.rules() if "alert" in r}
    fired = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test") or []:
                if check.get("exp_alerts"):
                    fired.add(check["alertname"])
    assert alerts - fired == set(), f"alerts never shown firing in observability/rules-tests: {sorted(alerts - fired)}"


def test_every_rule_file_is_unit_tested():
    tested = set()
    for path in RULE_TESTS:
        for name in yaml.safe_load(path.read_text())["rule_files"]:
            tested.add((path.parent / name).resolve())
    assert {p.resolve() for p in RULES} - tested == set()


def test_promtool_fails_a_unit_test_whose_expectation_is_wrong(promtool, tmp_path):
    """The unit tests can fail: the bridge's Kafka alert expected as a warning (it is critical)."""
    spec = yaml.safe_load((ROOT / "observability/rules-tests/bridge.yaml").read_text())
    spec["rule_files"] = [str((ROOT / "charts/lupita/files/rules/bridge.yaml").resolve())]
    case = spec["tests"][0]
    firing = [c for c in case["alert_rule_test"] if c["exp_alerts"]][0]
    firing["exp_alerts"][0]["exp_labels"]["severity"] = "warning"
    spec["tests"] = [case]
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(spec))
    out = run([promtool, "test", "rules", broken])
    assert out.returncode != 0
    assert "LupitaBridgeKafkaErrors" in out.stdout + out.stderr


def test_promtool_check_refuses_a_broken_rule(promtool, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"alert": "Broken", "expr": "sum(rate(lupita_bridge_calls_total[5m]) > ",
         "labels": {"severity": "warning"}}]}]}))
    out = run([promtool, "check", "rules", bad])
    assert out.returncode != 0


def test_every_alert_has_a_severity_a_summary_and_a_description():
    for rule in metric_names.rules():
        if "alert" in rule:
            assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}, rule["alert"]
            assert rule.get("annotations", {}).get("summary"), rule["alert"]
            assert rule.get("annotations", {}).get("description"), rule["alert"]


# --- dashboards ---------------------------------------------------------------------------------


def test_the_committed_dashboards_are_what_the_generator_writes():
    """observability/dashboards.py --check: regenerate in memory and compare byte for byte."""
    assert dashboards.main(["--check"]) == 0, "run: .venv/bin/python observability/dashboards.py"


def test_the_drift_check_notices_a_hand_edited_dashboard(tmp_path):
    out = tmp_path / "dashboards"
    shutil.copytree(dashboards.OUT_DIR, out)
    board = out / "lupita-overview.json"
    model = json.loads(board.read_text())
    model["title"] = "edited by hand"
    board.write_text(json.dumps(model, indent=2, sort_keys=True) + "\n")
    (out / "stray.json").write_text("{}\n")
    assert dashboards.main(["--check", "--out", str(out)]) == 1


def test_each_dashboard_has_unique_panel_ids_and_queries_every_component_it_names():
    uids = set()
    for path in sorted(dashboards.OUT_DIR.glob("*.json")):
        board = json.loads(path.read_text())
        assert board["uid"] not in uids
        uids.add(board["uid"])
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), path.name
        for panel in board["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
                assert panel["targets"], panel["title"]
    assert uids == {"lupita-overview", "lupita-latency", "lupita-reliability"}


def test_the_dashboards_cover_what_the_issue_asks_for():
    """Calls in flight, audio throughput, VAD/ASR latency, lag per stage, store errors, alerts raised,
    dead letters: each is a panel reading the metric that measures it."""
    exprs = metric_names.dashboard_expressions()
    named = set().union(*(metric_names.names_in(e) for e in exprs.values()))
    for metric in ("lupita_bridge_active_calls", "lupita_bridge_bytes_total", "lupita_vad_batch_seconds_bucket",
                   "lupita_transcriber_decode_seconds_bucket", "lupita_transcriber_lag_seconds_bucket",
                   "lupita:stage_lag:sum", "lupita_sink_writes_total", "lupita_understanding_alerts_total",
                   "lupita:dead_letters:delta5m", "lupita_gateway_live_calls", "lupita_gateway_bad_input_total"):
        assert metric in named, metric


# --- what the chart renders ---------------------------------------------------------------------


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return chart.render(api_versions=chart.MONITORING_APIS)


def test_a_service_monitor_scrapes_each_workloads_metrics_port(rendered):
    services = by_kind(rendered, "Service")
    monitors = by_kind(rendered, "ServiceMonitor")
    components = set()
    for monitor in monitors:
        spec = monitor["spec"]
        assert spec["jobLabel"] == "app.kubernetes.io/component"
        assert spec["namespaceSelector"] == {"matchNames": ["lupita"]}
        assert [e["port"] for e in spec["endpoints"]] == ["metrics"]
        assert spec["endpoints"][0]["interval"] == "30s"
        want = spec["selector"]["matchLabels"]
        matched = [s for s in services if want.items() <= s["metadata"]["labels"].items()]
        assert len(matched) == 1, f"{monitor['metadata']['name']} selects {len(matched)} Services"
        assert "metrics" in {p["name"] for p in matched[0]["spec"]["ports"]}
        components.add(want["app.kubernetes.io/component"])
    assert components == COMPONENTS


def test_the_prometheus_rules_are_the_rule_files(rendered):
    rules = {d["metadata"]["name"]: d for d in by_kind(rendered, "PrometheusRule")}
    assert set(rules) == {f"lupita-rules-{p.stem}" for p in RULES}
    for path in RULES:
        assert rules[f"lupita-rules-{path.stem}"]["spec"]["groups"] == yaml.safe_load(path.read_text())["groups"]


def test_each_dashboard_is_a_configmap_for_the_grafana_sidecar(rendered):
    maps = [d for d in by_kind(rendered, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    shipped = {}
    for cm in maps:
        (name, text), = cm["data"].items()
        shipped[name] = json.loads(text)
    assert shipped == {p.name: json.loads(p.read_text()) for p in dashboards.OUT_DIR.glob("*.json")}


def test_without_the_prometheus_operator_crds_only_the_dashboards_render():
    docs = chart.render()
    assert by_kind(docs, "ServiceMonitor") == [] and by_kind(docs, "PrometheusRule") == []
    assert len([d for d in by_kind(docs, "ConfigMap") if "grafana_dashboard" in d["metadata"]["labels"]]) == 3


def test_the_monitoring_flags_and_labels_are_honoured():
    docs = chart.render(api_versions=chart.MONITORING_APIS, set_values=[
        "monitoring.serviceMonitors.enabled=false", "monitoring.prometheusRules.labels.release=kps",
        "monitoring.dashboards.labels.grafana_dashboard=null", "monitoring.dashboards.labels.team=voice",
        "contextApi.enabled=false"])
    assert by_kind(docs, "ServiceMonitor") == []
    assert all(d["metadata"]["labels"]["release"] == "kps" for d in by_kind(docs, "PrometheusRule"))
    maps = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["labels"].get("team") == "voice"]
    assert len(maps) == 3 and all("grafana_dashboard" not in d["metadata"]["labels"] for d in maps)
    docs = chart.render(api_versions=chart.MONITORING_APIS, set_values=[
        "monitoring.prometheusRules.enabled=false", "monitoring.dashboards.enabled=false",
        "monitoring.serviceMonitors.interval=15s", "contextApi.enabled=false"])
    assert by_kind(docs, "PrometheusRule") == []
    assert not [d for d in by_kind(docs, "ConfigMap") if "dashboard" in d["metadata"]["name"]]
    monitors = by_kind(docs, "ServiceMonitor")
    assert {m["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for m in monitors} == \
        COMPONENTS - {"context-api"}
    assert {m["spec"]["endpoints"][0]["interval"] for m in monitors} == {"15s"}


def test_rules_and_dashboards_select_only_jobs_the_service_monitors_create():
    """job="..." matchers name components (the ServiceMonitors' jobLabel), not Service names."""
    import promql_parser

    exprs = {**metric_names.rule_expressions(), **metric_names.dashboard_expressions()}
    for where, expr in exprs.items():
        text = metric_names._GRAFANA_MACROS.sub("5m", expr)
        match = metric_names._LABEL_VALUES.match(text)
        tree = promql_parser.parse(match.group("selector") if match else text)
        jobs: list[str] = []

        def visit(node, jobs=jobs):
            if isinstance(node, promql_parser.VectorSelector):
                jobs.extend(m.value for m in node.matchers.matchers if m.name == "job")

        promql_parser.walk(tree, visit)
        for value in jobs:
            assert set(value.split("|")) <= COMPONENTS, f"{where}: job matcher {value!r}"


def strict(schema):
    """A CRD's openAPIV3Schema made strict like ``kubeconform -strict``: objects with declared
    properties refuse unknown ones (the API server would silently prune them)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def test_the_monitoring_resources_validate_strictly_against_the_operators_crds(rendered):
    """ServiceMonitor and PrometheusRule against prometheus-operator's own CRD schemas (the files the
    cluster tools install, from the operator's Go module)."""
    import jsonschema
    from lupita_dev.cluster import crds

    schemas = {}
    for path in crds.crd_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition" \
                    and doc["spec"]["group"] == "monitoring.coreos.com":
                for version in doc["spec"]["versions"]:
                    schemas[(f"monitoring.coreos.com/{version['name']}", doc["spec"]["names"]["kind"])] = \
                        strict(version["schema"]["openAPIV3Schema"])
    checked = 0
    for doc in rendered:
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key[0] and key[0].startswith("monitoring.coreos.com/"):
            body = {k: v for k, v in doc.items() if k != "metadata"}  # metadata: the API server's schema
            # no metaschema check: the CRDs' patterns are Go RE2 (e.g. "^(?i)...") that Python's re refuses
            jsonschema.Draft7Validator(schemas[key]).validate(body)
            checked += 1
    assert checked == len(COMPONENTS) + len(RULES)  # a ServiceMonitor per workload, a PrometheusRule per file
    bad = [d for d in rendered if d.get("kind") == "ServiceMonitor"][0]
    bad = {k: v for k, v in bad.items() if k != "metadata"}
    bad["spec"] = {**bad["spec"], "jobLable": "typo"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schemas[("monitoring.coreos.com/v1", "ServiceMonitor")]).validate(bad)
