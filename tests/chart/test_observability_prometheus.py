"""The chart's rules and dashboards on a real Prometheus scraping the platform's real processes.

A ``lupita bridge``, a ``lupita gateway`` in front of it and a recorder worker run on the local stack
(this session's topics); a real
Prometheus (v3.16, built from its Go module: observability/prometheus.py) scrapes their /metrics on
127.0.0.1 every second, labelled as the chart's ServiceMonitors label them (job = component,
namespace, pod, service), with the chart's rule files loaded. Then: every rule evaluates without
error, every dashboard query runs, and a simulated call through the bridge shows on the panels
(calls, audio bytes, the recorder's archive).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import uuid
import wave
from pathlib import Path

import numpy as np
import pytest
import logscan
from procs import bridge_process, free_port, run_lupita, start_worker, stop_worker
from waits import wait_for

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from observability import metric_names  # noqa: E402
from observability.prometheus import Prometheus, Target, config  # noqa: E402

# The first run builds Prometheus from its Go module: ~5-15 minutes cold on 2 shared cores.
pytestmark = [pytest.mark.stack, pytest.mark.timeout(1800)]

NAMESPACE = "lupita"
GRAFANA_VARS = {"$namespace": NAMESPACE, "$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


@pytest.fixture(scope="module")
def platform(stack_env, tmp_path_factory):
    """Bridge, recorder and call on topics of their own (a prefix of this module's), so the recorder
    archives only this module's call and no other test's."""
    from lupita.config import CommonSettings
    from lupita.topics import ensure_topics

    workdir = tmp_path_factory.mktemp("observability")
    prefix = f"{os.environ['LUPITA_TOPIC_PREFIX']}obs{uuid.uuid4().hex[:6]}."
    env = dict(os.environ, LUPITA_TOPIC_PREFIX=prefix)
    ensure_topics(CommonSettings(topic_prefix=prefix))
    bridge_metrics = free_port()
    bridge = bridge_process("observability-bridge", workdir, env=env,
                            extra_args=["--metrics-port", str(bridge_metrics)])
    bridge.start()
    worker = None
    prom = None
    gateway = None
    try:
        # the telephony gateway, streaming into this bridge (no call goes through it: its idle series)
        gateway_port, gateway_metrics = free_port(), free_port()
        with open(logscan.log_path("observability-gateway", workdir), "wb") as log:
            gateway = subprocess.Popen(
                [sys.executable, "-m", "lupita.cli", "gateway", "--host", "127.0.0.1", "--port", str(gateway_port),
                 "--metrics-port", str(gateway_metrics), "--drain-seconds", "1"],
                stdout=log, stderr=subprocess.STDOUT,
                env=dict(env, LUPITA_BRIDGE_TARGET=bridge.target, LUPITA_GATEWAY_METRICS_HOST="127.0.0.1",
                         LUPITA_GATEWAY_ALLOW_UNSIGNED="true"))
        worker = start_worker(workdir / "recorder", "stream-processor-recorder", stages="recorder",
                              env_extra={"LUPITA_TOPIC_PREFIX": prefix})
        targets = [
            Target("media-bridge", f"127.0.0.1:{bridge_metrics}", NAMESPACE, "lupita-media-bridge-0",
                   "lupita-media-bridge"),
            Target("recorder", f"127.0.0.1:{worker.port}", NAMESPACE, "lupita-recorder-0", "lupita-recorder"),
            Target("telephony-gateway", f"127.0.0.1:{gateway_metrics}", NAMESPACE, "lupita-telephony-gateway-0",
                   "lupita-telephony-gateway"),
        ]
        prom = Prometheus(workdir / "prometheus", free_port(), config(targets, metric_names.rule_files())).start()
        wait_for("Prometheus to be ready", prom.ready, timeout=60, alive=prom.alive)
        yield {"prometheus": prom, "bridge": bridge, "worker": worker, "workdir": workdir, "env": env}
    finally:
        if prom is not None:
            prom.stop()
        if worker is not None:
            stop_worker(worker)
        if gateway is not None:
            gateway.terminate()
            gateway.wait(30)
        bridge.stop()


def grafana_to_promql(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


def value_of(result: list[dict], **labels: str) -> float | None:
    for sample in result:
        if labels.items() <= sample["metric"].items():
            return float(sample["value"][1])
    return None


def test_prometheus_scrapes_each_process_labelled_as_the_service_monitors_do(platform):
    prom = platform["prometheus"]

    def all_up():
        targets = prom.api("targets")["activeTargets"]
        return len(targets) == 3 and all(t["health"] == "up" for t in targets) and targets

    targets = wait_for("every target up", all_up, timeout=60, alive=prom.alive)
    assert {t["labels"]["job"] for t in targets} == {"media-bridge", "recorder", "telephony-gateway"}
    up = prom.query(f'up{{namespace="{NAMESPACE}"}}')
    assert {s["metric"]["job"]: s["value"][1] for s in up} == {"media-bridge": "1", "recorder": "1",
                                                                "telephony-gateway": "1"}


def test_every_rule_evaluates_on_the_scraped_data_without_error(platform):
    prom = platform["prometheus"]
    expected = {(r.get("alert") or r.get("record")) for r in metric_names.rules()}

    def evaluated():
        rules = [rule for group in prom.api("rules")["groups"] for rule in group["rules"]]
        done = [r for r in rules if not r["lastEvaluation"].startswith("0001-")]
        return len(done) == len(rules) and rules

    rules = wait_for("every rule evaluated once", evaluated, timeout=60, alive=prom.alive)
    assert {r["name"] for r in rules} == expected
    broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert broken == {}
    # nothing is wrong with a fresh, idle platform: no alert may be firing
    firing = [a for a in prom.api("alerts")["alerts"] if a["state"] == "firing"]
    assert firing == []


def test_every_dashboard_query_runs_and_the_bridge_panels_have_data(platform):
    prom = platform["prometheus"]
    wait_for("a bridge sample", lambda: prom.query("lupita_bridge_active_calls"), timeout=60, alive=prom.alive)
    for where, expr in metric_names.dashboard_expressions().items():
        query = grafana_to_promql(expr)
        match = re.match(r"^label_values\((?P<sel>.*),\s*(?P<label>\w+)\)$", query)
        if match:  # a template variable: Grafana asks the label-values API
            values = prom.api(f"label/{match['label']}/values", **{"match[]": match["sel"]})
            assert NAMESPACE in values, where
        else:
            prom.query(query)  # raises with Prometheus' error if the query is refused
    in_flight = prom.query(grafana_to_promql(
        'sum(lupita_bridge_active_calls{namespace="$namespace", job="media-bridge"})'))
    assert value_of(in_flight) == 0.0


def write_call_wav(path: Path, seconds: float = 3.0, rate: int = 8000) -> Path:
    """A stereo 16-bit WAV: a tone on each leg (left = Lupita, right = the person)."""
    t = np.arange(int(seconds * rate)) / rate
    left = (0.3 * 32767 * np.sin(2 * math.pi * 440 * t)).astype("<i2")
    right = (0.3 * 32767 * np.sin(2 * math.pi * 660 * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.column_stack([left, right]).tobytes())
    return path


def test_a_call_through_the_bridge_shows_on_the_dashboards(platform):
    prom, bridge = platform["prometheus"], platform["bridge"]
    wav = write_call_wav(platform["workdir"] / "call.wav")
    done = run_lupita("observability-call", ["call", "--target", bridge.target, "--wav", str(wav), "--speed", "0",
                                             "--json"], env=platform["env"])
    assert done.returncode == 0, done.stderr[-2000:]

    completed = 'sum by (outcome) (increase(lupita_bridge_calls_total{namespace="$namespace", job="media-bridge"}[5m]))'
    got = wait_for("the completed call on the call-outcomes panel", lambda: value_of(
        prom.query(grafana_to_promql(completed)), outcome="completed"), timeout=60, alive=prom.alive)
    assert got >= 0.99  # increase() extrapolates: about 1
    audio = ('sum by (leg) (rate(lupita_bridge_bytes_total{namespace="$namespace", job="media-bridge"}'
             '[$__rate_interval]))')
    legs = prom.query(grafana_to_promql(audio))
    assert value_of(legs, leg="lupita") > 0 and value_of(legs, leg="person") > 0
    # the recorder archives it (S3 legal archive + calls row): its outcome series appears
    recorded = wait_for("the recording on the recordings panel", lambda: value_of(prom.query(
        f'sum by (outcome) (lupita_recorder_calls_total{{namespace="{NAMESPACE}"}})'), outcome="recorded"),
        timeout=120, alive=prom.alive)
    assert recorded >= 1


def test_the_scaler_queries_of_the_rendered_chart_find_the_bridge_and_the_gateway(platform):
    """KEDA's prometheus trigger, as the chart renders it for release "lupita" in namespace "lupita",
    selects the bridge's and the gateway's series by the labels a ServiceMonitor gives them (namespace, service)."""
    from observability import chart

    prom = platform["prometheus"]
    queries = metric_names.scaler_expressions(chart.render(api_versions=chart.KEDA_APIS + chart.MONITORING_APIS,
                                                           namespace=NAMESPACE, release="lupita"))
    assert queries
    wait_for("a bridge sample", lambda: prom.query("lupita_bridge_active_calls"), timeout=60, alive=prom.alive)
    wait_for("a gateway sample", lambda: prom.query("lupita_gateway_live_calls"), timeout=60, alive=prom.alive)
    assert {q.split("{")[0] for q in queries.values()} == {"sum(lupita_bridge_active_calls",
                                                            "sum(lupita_gateway_live_calls"}
    for where, query in queries.items():
        assert value_of(prom.query(query)) == 0.0, f"{where}: {query}"
