"""charts/lupita renders, lints strictly, refuses invalid values with a clear message, and what it
renders has the properties that matter: hardened containers, probes and resources on every
workload, one consumer group per stage with its scaler capped at the partition count, a bridge
that drains before it is killed, NetworkPolicies that open only what each workload needs, and
local values that keep every endpoint on 127.0.0.1.

helm is the real binary (helm.sh/helm/v3, built once from the Go module proxy and cached by
lupita_dev.cluster.tools); the API server checks are the cluster tests' job.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "lupita"
LOCAL = CHART / "values-local.yaml"
EKS = CHART / "values-eks.yaml"
KUBE_VERSION = "1.34.2"
KEDA = "keda.sh/v1alpha1/ScaledObject"
SCENARIOS = {"default": [], "local": [LOCAL], "eks": [EKS]}
STAGES = ("recorder", "vad", "transcriber", "understanding")
WORKLOADS = ("media-bridge", *STAGES, "context-api", "telephony-gateway")
# the topics each stage's agent consumes (services/stream_processor/stages/*/agent.py: self.source),
# besides its own control topic
STAGE_SOURCES = {
    "recorder": {"audio.chunks", "call.lifecycle"},
    "vad": {"audio.chunks", "call.lifecycle"},
    "transcriber": {"speech.segments"},
    "understanding": {"transcripts", "call.lifecycle"},
}


@pytest.fixture(scope="session")
def helm() -> Path:
    from lupita_dev.cluster.tools import ensure

    return ensure("helm")


def helm_run(helm: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=ROOT)


def template_args(values: list[Path], sets: list[str], keda: bool) -> list[str]:
    args = ["template", "lupita", str(CHART), "--namespace", "lupita", "--kube-version", KUBE_VERSION]
    for path in values:
        args += ["--values", str(path)]
    for item in sets:
        args += ["--set", item]
    if keda:
        args += ["--api-versions", KEDA]
    return args


def render(helm: Path, values: list[Path] = (), sets: list[str] = (), keda: bool = True) -> list[dict[str, Any]]:
    out = helm_run(helm, *template_args(list(values), list(sets), keda))
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def refused(helm: Path, sets: list[str]) -> str:
    out = helm_run(helm, *template_args([], sets, True))
    assert out.returncode != 0, f"helm accepted {sets}"
    return out.stderr


@pytest.fixture(scope="session", params=list(SCENARIOS))
def scenario(request, helm) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(helm, SCENARIOS[request.param])


def of_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def component(doc: dict) -> str:
    return doc["metadata"]["labels"]["app.kubernetes.io/component"]


def by_component(docs: list[dict], kind: str) -> dict[str, dict]:
    return {component(d): d for d in docs if d["kind"] == kind}


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    out = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            out.append((f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]))
    return out


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def literal_env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


# --- lint, render, schema ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_helm_lint_strict_passes(helm, name):
    args = ["lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION]
    for path in SCENARIOS[name]:
        args += ["--values", str(path)]
    out = helm_run(helm, *args)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


def test_each_scenario_renders_every_workload_and_its_objects(scenario):
    name, docs = scenario
    for kind in ("Deployment", "Service", "ServiceAccount", "PodDisruptionBudget"):
        assert set(by_component(docs, kind)) == set(WORKLOADS), (name, kind)
    if name != "local":  # local: KEDA cannot run on the local cluster, policies do not bind host-network pods
        assert set(by_component(docs, "ScaledObject")) == {"media-bridge", "telephony-gateway", *STAGES}
        # values-eks runs the migration hook Job, which has its own policy
        assert set(by_component(docs, "NetworkPolicy")) == {*WORKLOADS, *(["migrations"] if name == "eks" else [])}
        assert set(by_component(docs, "HorizontalPodAutoscaler")) == {"context-api"}


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["kafka.partitions=zero"], "at '/kafka/partitions': got string, want integer"),
        (["securityContext.runAsUser=0"], "at '/securityContext/runAsUser': minimum: got 0, want 1"),
        (["mediaBridge.settings.LUPITA_BRIDGE_TOKENS=abc"],
         "at '/mediaBridge/settings/LUPITA_BRIDGE_TOKENS': value must be 'secrets are never values"),
        (["streamProcessor.stages.recorder.settings.LUPITA_POSTGRES_DSN=postgresql://u:p@h/db"],
         "at '/streamProcessor/stages/recorder/settings/LUPITA_POSTGRES_DSN'"),
        (["mediaBridge.settings.CHUNK_MS=200"], "additional properties 'CHUNK_MS' not allowed"),
        (["streamProcessor.stages.vad.tableStore=redis://"],
         "at '/streamProcessor/stages/vad/tableStore': value must be one of 'memory://', 'rocksdb://'"),
        (["mediaBridge.prots.grpc=1"], "at '/mediaBridge': additional properties 'prots' not allowed"),
        (["kafka.bootstrap="], "at '/kafka/bootstrap'"),
        (["streamProcessor.stages.transcriber.autoscaling.topics[0].name=speech"],
         "at '/streamProcessor/stages/transcriber/autoscaling/topics/0/name'"),
        (["streamProcessor.kafkaHeartbeatSeconds=11"],
         "streamProcessor.kafkaHeartbeatSeconds (11) must be at most a third of streamProcessor.kafkaSessionTimeoutSeconds"),
        (["streamProcessor.stages.vad.autoscaling.minReplicas=13"],
         "streamProcessor.stages.vad.autoscaling.minReplicas (13) is above its maxReplicas (12)"),
        (["mediaBridge.settings.LUPITA_GRPC_PORT=50062"],
         "mediaBridge.settings.LUPITA_GRPC_PORT: the chart sets LUPITA_GRPC_PORT from mediaBridge.ports.grpc"),
        (["streamProcessor.stages.transcriber.gpu.enabled=true",
          "streamProcessor.stages.transcriber.settings.LUPITA_ASR_DEVICE=cpu"],
         "streamProcessor.stages.transcriber.settings.LUPITA_ASR_DEVICE: streamProcessor.stages.transcriber.gpu.enabled sets it"),
        (["hostNetwork=true"], "hostNetwork is true and streamProcessor.stages.recorder.ports.metrics and "
                               "streamProcessor.stages.vad.ports.metrics both use port 9102"),
        (["telephonyGateway.publicUrl=https://voice.example.org"], "at '/telephonyGateway/publicUrl'"),
        (["telephonyGateway.autoscaling.minReplicas=5", "telephonyGateway.autoscaling.maxReplicas=3"],
         "telephonyGateway.autoscaling.minReplicas (5) is above its maxReplicas (3)"),
        (["migrations.job.enabled=true", "secrets.postgresOwner.name="], "at '/secrets/postgresOwner/name'"),
        (["migrations.job.activeDeadlineSeconds=5"], "at '/migrations/job/activeDeadlineSeconds'"),
        (["secrets.postgresContextApi.name=Context_API"], "at '/secrets/postgresContextApi/name'"),
        (["secrets.postgresProcessor.dsnKey="], "at '/secrets/postgresProcessor/dsnKey'"),
        (["telephonyGateway.chime.sessionTimeoutMs=1000"],
         "at '/telephonyGateway/chime/sessionTimeoutMs'"),
        (["telephonyGateway.settings.LUPITA_GATEWAY_CHIME_GROUP_ID=other"],
         "telephonyGateway.settings.LUPITA_GATEWAY_CHIME_GROUP_ID: the chart sets "
         "LUPITA_GATEWAY_CHIME_GROUP_ID from telephonyGateway.chime.groupId"),
        (["telephonyGateway.autoscaling.targetLiveCallsPerPod=0"],
         "at '/telephonyGateway/autoscaling/targetLiveCallsPerPod'"),
        (["telephonyGateway.settings.LUPITA_GATEWAY_PORT=9000"],
         "telephonyGateway.settings.LUPITA_GATEWAY_PORT: the chart sets LUPITA_GATEWAY_PORT from "
         "telephonyGateway.ports.websocket"),
        (["telephonyGateway.settings.LUPITA_GATEWAY_TWILIO_AUTH_TOKEN=abc"],
         "at '/telephonyGateway/settings/LUPITA_GATEWAY_TWILIO_AUTH_TOKEN': value must be 'secrets are never values"),
        (["hostNetwork=true", "streamProcessor.stages.vad.ports.metrics=9112",
          "streamProcessor.stages.transcriber.ports.metrics=9113",
          "streamProcessor.stages.understanding.ports.metrics=9114", "telephonyGateway.ports.metrics=9101"],
         "hostNetwork is true and mediaBridge.ports.metrics and telephonyGateway.ports.metrics both use port 9101"),
    ],
)
def test_invalid_values_are_refused_with_a_message_naming_the_key(helm, sets, message):
    err = refused(helm, sets)
    assert message in err, err


def test_the_values_given_do_not_leak_into_a_refusal(helm):
    """A refused secret-like setting is named, its value is not echoed."""
    err = refused(helm, ["contextApi.settings.LUPITA_CONTEXT_API_HMAC_SECRET=s3cr3t-value-xyz"])
    assert "LUPITA_CONTEXT_API_HMAC_SECRET" in err and "s3cr3t-value-xyz" not in err


# --- hardening, probes, resources ----------------------------------------------------------------


def all_pod_specs(helm) -> list[tuple[str, str, dict]]:
    """Pod specs of every scenario, with the load generator's and the migrations' Jobs turned on."""
    out = []
    for name, values in SCENARIOS.items():
        for where, spec in pod_specs(render(helm, values, ["loadgen.enabled=true", "migrations.job.enabled=true"])):
            out.append((name, where, spec))
    return out


def test_every_container_runs_non_root_read_only_without_capabilities(helm):
    specs = all_pod_specs(helm)
    assert len(specs) == 3 * (len(WORKLOADS) + 2)
    for name, where, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 10001, (name, where)
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", (name, where)
        assert spec["automountServiceAccountToken"] is False, (name, where)
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0, (name, where, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (name, where, c["name"])
            assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False, (name, where)
            assert sc["capabilities"] == {"drop": ["ALL"]}, (name, where)
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", (name, where)
            # the writable paths are emptyDirs: /tmp everywhere, Faust's data dir in the stages
            volumes = {v["name"]: v for v in spec["volumes"]}
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert "/tmp" in mounts, (name, where)
            for path, vol in mounts.items():
                assert "emptyDir" in volumes[vol], (name, where, path)


def test_every_deployment_has_probes_resources_and_spreads_its_pods(scenario):
    name, docs = scenario
    for dep_name, dep in of_kind(docs, "Deployment").items():
        spec = dep["spec"]["template"]["spec"]
        assert spec["topologySpreadConstraints"], dep_name
        for tsc in spec["topologySpreadConstraints"]:
            assert tsc["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == component(dep)
        for c in spec["containers"]:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in c, (name, dep_name, probe)
            res = c["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]), (name, dep_name)
            assert "memory" in res["limits"], (name, dep_name)
            # every probe and Service targets a port the container declares
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                p = c[probe]
                target = (p.get("httpGet") or p.get("grpc") or p.get("tcpSocket"))["port"]
                assert target in ports or target in ports.values(), (name, dep_name, probe, target)


def test_http_probes_use_the_services_real_paths(scenario):
    """/livez and /readyz: stream_processor/metrics.py serves them on the metrics port,
    context_api/app.py on the HTTP port, telephony_gateway/server.py on the websocket port."""
    _, docs = scenario
    deps = by_component(docs, "Deployment")
    for comp in (*STAGES, "context-api", "telephony-gateway"):
        c = deps[comp]["spec"]["template"]["spec"]["containers"][0]
        port = {"context-api": "http", "telephony-gateway": "websocket"}.get(comp, "metrics")
        assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": port}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}


def test_each_workload_listens_where_its_ports_say(scenario):
    """The LUPITA_* port each service reads equals the containerPort its probes and Service use."""
    _, docs = scenario
    deps = by_component(docs, "Deployment")
    port_env = {"media-bridge": {"grpc": "LUPITA_GRPC_PORT", "metrics": "LUPITA_METRICS_PORT"},
                "context-api": {"http": "LUPITA_CONTEXT_API_PORT", "metrics": "LUPITA_CONTEXT_API_METRICS_PORT"},
                "telephony-gateway": {"websocket": "LUPITA_GATEWAY_PORT", "control": "LUPITA_GATEWAY_CONTROL_PORT",
                                      "metrics": "LUPITA_GATEWAY_METRICS_PORT"},
                **{s: {"metrics": "LUPITA_METRICS_PORT"} for s in STAGES}}
    services = by_component(docs, "Service")
    for comp, ports in port_env.items():
        c = deps[comp]["spec"]["template"]["spec"]["containers"][0]
        env = literal_env(c)
        declared = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert set(declared) == set(ports), comp
        for port_name, var in ports.items():
            assert int(env[var]) == declared[port_name], (comp, var)
        svc_ports = {p["name"]: p["targetPort"] for p in services[comp]["spec"]["ports"]}
        assert set(svc_ports) == set(ports) and all(v in ports for v in svc_ports.values()), comp
        # the ServiceMonitors select the Service by component and scrape its port "metrics"
        assert services[comp]["spec"]["selector"]["app.kubernetes.io/component"] == comp
        assert "metrics" in svc_ports


# --- the stages: one consumer group each, scaled on its own lag ----------------------------------


def test_each_stage_runs_only_its_agent_in_its_own_consumer_group(scenario):
    name, docs = scenario
    deps = by_component(docs, "Deployment")
    groups = {}
    for stage in STAGES:
        env = literal_env(deps[stage]["spec"]["template"]["spec"]["containers"][0])
        assert env["LUPITA_STAGES"] == stage
        groups[stage] = env["LUPITA_TOPIC_PREFIX"] + env["LUPITA_APP_ID"]
    assert len(set(groups.values())) == len(STAGES), groups  # recorder and vad both read audio.chunks


def test_each_stage_scales_on_its_own_groups_lag_of_the_topics_its_agent_reads(helm):
    import importlib

    docs = render(helm, [EKS])
    deps = by_component(docs, "Deployment")
    scalers = by_component(docs, "ScaledObject")
    for stage in STAGES:
        env = literal_env(deps[stage]["spec"]["template"]["spec"]["containers"][0])
        so = scalers[stage]
        assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                "name": deps[stage]["metadata"]["name"]}
        triggers = so["spec"]["triggers"]
        assert {t["type"] for t in triggers} == {"kafka"}
        group = env["LUPITA_TOPIC_PREFIX"] + env["LUPITA_APP_ID"]
        assert {t["metadata"]["consumerGroup"] for t in triggers} == {group}
        assert {t["metadata"]["bootstrapServers"] for t in triggers} == {env["LUPITA_KAFKA_BOOTSTRAP"]}
        topics = {t["metadata"]["topic"] for t in triggers}
        assert topics == {env["LUPITA_TOPIC_PREFIX"] + t for t in STAGE_SOURCES[stage]}, stage
        agent = importlib.import_module(f"stream_processor.stages.{stage}.agent")
        assert STAGE_SOURCES[stage] <= set(agent.TOPICS), stage
        for t in triggers:
            assert int(t["metadata"]["lagThreshold"]) > 0


@pytest.mark.parametrize("asked", [12, 24, 500])
def test_no_stage_scales_beyond_the_partition_count(helm, asked):
    sets = [f"streamProcessor.stages.{s}.autoscaling.maxReplicas={asked}" for s in STAGES]
    docs = render(helm, [EKS], sets)
    partitions = yaml.safe_load(EKS.read_text())["kafka"]["partitions"]
    scalers = by_component(docs, "ScaledObject")
    for stage in STAGES:
        spec = scalers[stage]["spec"]
        assert spec["maxReplicaCount"] == min(asked, partitions), stage
        assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert all(t["metadata"]["allowIdleConsumers"] == "false" for t in spec["triggers"])


def test_a_scaled_deployment_leaves_its_replicas_to_the_scaler(helm):
    with_keda = by_component(render(helm, keda=True), "Deployment")
    without = by_component(render(helm, keda=False), "Deployment")
    for comp in ("media-bridge", "telephony-gateway", *STAGES):
        assert "replicas" not in with_keda[comp]["spec"], comp  # an upgrade must not reset the HPA's count
        assert without[comp]["spec"]["replicas"] >= 1, comp  # no KEDA CRDs: fixed replicas, no ScaledObject
    assert not by_component(render(helm, keda=False), "ScaledObject")
    assert "replicas" not in with_keda["context-api"]["spec"]  # its HPA scales it


def test_the_transcriber_can_be_placed_on_gpu_nodes(helm):
    docs = render(helm, [EKS], ["streamProcessor.stages.transcriber.gpu.enabled=true"])
    deps = by_component(docs, "Deployment")
    spec = deps["transcriber"]["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"eks.amazonaws.com/nodegroup": "lupita-gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    env = literal_env(c)
    assert env["LUPITA_ASR_DEVICE"] == "cuda" and env["LUPITA_ASR_COMPUTE_TYPE"] == "float16"
    for other in ("recorder", "vad", "understanding"):  # only the transcriber
        o = deps[other]["spec"]["template"]["spec"]
        assert "nvidia.com/gpu" not in o["containers"][0]["resources"].get("limits", {})
        assert "nodeSelector" not in o


# --- the bridge: drain before the kill, scale on live calls --------------------------------------


def test_the_bridge_stops_new_calls_then_drains_within_its_grace_period(scenario):
    _, docs = scenario
    dep = by_component(docs, "Deployment")["media-bridge"]
    spec = dep["spec"]["template"]["spec"]
    c = spec["containers"][0]
    env = literal_env(c)
    drain = float(env["LUPITA_DRAIN_SECONDS"])
    # Bridge.shutdown: the drain, then up to request timeout + 5 s for the last records
    needed = drain + int(env["LUPITA_KAFKA_REQUEST_TIMEOUT_MS"]) / 1000 + 5
    assert spec["terminationGracePeriodSeconds"] > needed
    assert c["lifecycle"]["preStop"]["exec"]["command"][-1] == "import os, signal; os.kill(1, signal.SIGTERM)"
    assert c["readinessProbe"]["grpc"]["port"] == int(env["LUPITA_GRPC_PORT"])
    assert "grpc" not in c["livenessProbe"]  # a draining bridge is NOT_SERVING and must not be restarted
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_bridge_scales_on_its_active_calls_metric_and_scales_down_slowly(helm):
    from media_bridge.metrics import ACTIVE_CALLS

    docs = render(helm)
    so = by_component(docs, "ScaledObject")["media-bridge"]["spec"]
    (trigger,) = so["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["query"] == (
        f'sum({ACTIVE_CALLS._name}{{namespace="lupita", service="lupita-media-bridge"}})')
    assert by_component(docs, "Service")["media-bridge"]["metadata"]["name"] == "lupita-media-bridge"
    down = so["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]


def test_the_gateway_scales_on_its_live_calls_metric_and_scales_down_slowly(helm):
    """Like the bridge: live calls summed over the gateway's pods (every source), a target per pod
    below the gateway's own refusal limit, and a slow scale-down (each removed pod drains)."""
    from telephony_gateway.metrics import LIVE_CALLS

    for files in ([], [EKS]):
        docs = render(helm, files)
        so = by_component(docs, "ScaledObject")["telephony-gateway"]["spec"]
        dep = by_component(docs, "Deployment")["telephony-gateway"]
        assert so["scaleTargetRef"]["name"] == dep["metadata"]["name"]
        (trigger,) = so["triggers"]
        assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
        assert trigger["metadata"]["query"] == (
            f'sum({LIVE_CALLS._name}{{namespace="lupita", service="lupita-telephony-gateway"}})')
        assert by_component(docs, "Service")["telephony-gateway"]["metadata"]["name"] == "lupita-telephony-gateway"
        env = literal_env(dep["spec"]["template"]["spec"]["containers"][0])
        assert 0 < int(trigger["metadata"]["threshold"]) < int(env["LUPITA_GATEWAY_MAX_CALLS"])
        down = so["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        assert down["stabilizationWindowSeconds"] >= 600
        assert down["selectPolicy"] == "Min" and down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]
        assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > int(env["LUPITA_GATEWAY_DRAIN_SECONDS"])
    off = by_component(render(helm, [], ["telephonyGateway.autoscaling.enabled=false"]), "ScaledObject")
    assert "telephony-gateway" not in off and "media-bridge" in off


# --- network policies ----------------------------------------------------------------------------


def rule_ports(rules: list[dict]) -> set:
    return {p["port"] for r in rules for p in r.get("ports", [])}


def test_only_the_bridge_the_context_api_and_the_gateway_accept_traffic_besides_metrics_scrapes(helm):
    docs = render(helm, [EKS], ["loadgen.enabled=true"])
    policies = by_component(docs, "NetworkPolicy")
    assert set(policies) == {*WORKLOADS, "loadgen", "migrations"}
    for comp, pol in policies.items():
        spec = pol["spec"]
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == comp
        served = rule_ports(spec["ingress"]) - {"metrics"}
        assert served == {"media-bridge": {"grpc"}, "context-api": {"http"},
                          "telephony-gateway": {"websocket", "control"}}.get(comp, set()), comp
        for rule in spec["ingress"]:
            if rule["ports"][0]["port"] == "metrics":
                assert rule["from"] == [{"namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name": "monitoring"}}}]


def test_only_the_workloads_that_use_a_store_may_reach_it(helm):
    docs = render(helm, [EKS], ["loadgen.enabled=true"])
    values = yaml.safe_load(EKS.read_text())["networkPolicy"]["egress"]
    peers = {name: values[name]["to"] for name in ("kafka", "postgres", "weaviate", "s3")}
    reach: dict[str, set[str]] = {name: set() for name in peers}
    for comp, pol in by_component(docs, "NetworkPolicy").items():
        for rule in pol["spec"]["egress"]:
            for name, to in peers.items():
                if rule.get("to") == to and rule["ports"] == values[name]["ports"]:
                    reach[name].add(comp)
    assert reach == {
        "kafka": {"media-bridge", "telephony-gateway", *STAGES},  # the gateway: Chime's events and checkpoints
        "postgres": {"recorder", "understanding", "context-api", "migrations"},
        "weaviate": {"understanding"},
        "s3": {"recorder"},
    }
    loadgen = by_component(docs, "NetworkPolicy")["loadgen"]["spec"]["egress"]
    assert loadgen[-1]["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "media-bridge"


def test_the_gateway_reaches_the_bridge_and_vapi_and_the_bridge_admits_it(helm):
    """The bridge's ingress names the gateway's pods even when its own peers are restricted (the EKS
    values), the gateway may open only the bridge's gRPC port, Kafka and VAPI's listen sockets (443), and its
    control port admits only networkPolicy.ingress.telephonyGateway.controlFrom."""
    docs = render(helm, [EKS])
    policies = by_component(docs, "NetworkPolicy")
    values = yaml.safe_load(EKS.read_text())["networkPolicy"]
    gateway_pods = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "lupita", "app.kubernetes.io/instance": "lupita",
                                                    "app.kubernetes.io/component": "telephony-gateway"}}}
    bridge_in = policies["media-bridge"]["spec"]["ingress"]
    assert {"ports": [{"port": "grpc", "protocol": "TCP"}], "from": [gateway_pods]} in bridge_in
    egress = policies["telephony-gateway"]["spec"]["egress"]
    assert egress[-1]["ports"] == [{"port": 50061, "protocol": "TCP"}]
    assert egress[-1]["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "media-bridge"
    vapi = yaml.safe_load((CHART / "values.yaml").read_text())["networkPolicy"]["egress"]["vapi"]
    assert {"ports": vapi["ports"]} in egress  # `to` left open: VAPI's listen hosts are not known ahead
    kafka = yaml.safe_load(EKS.read_text())["networkPolicy"]["egress"]["kafka"]
    assert {"ports": kafka["ports"], "to": kafka["to"]} in egress  # Chime's events and checkpoints
    assert len(egress) == 4  # DNS, Kafka, VAPI, the bridge: no store
    ingress = {r["ports"][0]["port"]: r.get("from") for r in policies["telephony-gateway"]["spec"]["ingress"]}
    assert ingress["control"] == values["ingress"]["telephonyGateway"]["controlFrom"]
    assert ingress["websocket"] == values["ingress"]["telephonyGateway"]["from"]


def test_the_gateway_drains_before_the_kubelet_kills_it_and_streams_into_this_release_s_bridge(scenario):
    name, docs = scenario
    dep = by_component(docs, "Deployment")["telephony-gateway"]
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    env = literal_env(c)
    assert spec["terminationGracePeriodSeconds"] > int(env["LUPITA_GATEWAY_DRAIN_SECONDS"]) + \
        int(env["LUPITA_GATEWAY_BRIDGE_CLOSE_SECONDS"])
    assert "os.kill(1, signal.SIGTERM)" in c["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"  # never /readyz: a drain is not a failure
    bridge = by_component(docs, "Deployment")["media-bridge"]["spec"]["template"]["spec"]["containers"][0]
    grpc_port = literal_env(bridge)["LUPITA_GRPC_PORT"]
    if name == "local":  # host network: the bridge listens on the node's address
        assert env["LUPITA_BRIDGE_TARGET"] == f"$(LUPITA_GATEWAY_HOST):{grpc_port}"
    else:
        service = by_component(docs, "Service")["media-bridge"]["metadata"]["name"]
        assert env["LUPITA_BRIDGE_TARGET"] == f"{service}:{grpc_port}"
    # the bearer token it sends is the bridge's own Secret
    assert env_of(c)["LUPITA_BRIDGE_TOKENS"]["valueFrom"] == env_of(bridge)["LUPITA_BRIDGE_TOKENS"]["valueFrom"]


def test_the_gateway_reads_chime_with_its_values_and_shares_the_calls_through_kafka(helm):
    """The Chime values become the gateway's LUPITA_GATEWAY_CHIME_* settings; the calls' events and
    checkpoints are on Kafka (no volume: the only writable path under the read-only root is /tmp)
    and the phone encryption key comes with the Chime path; Chime off: no key. The EKS values leave
    the KVS endpoints to AWS."""
    sets = ["telephonyGateway.chime.region=eu-west-1", "telephonyGateway.chime.recordingConsent=true",
            "telephonyGateway.chime.consentSource=ivr-prompt", "telephonyGateway.chime.language=en-US",
            "telephonyGateway.chime.regionLabel=eu", "telephonyGateway.chime.startMarginSeconds=3",
            "telephonyGateway.chime.groupId=gw-pods", "telephonyGateway.chime.sessionTimeoutMs=15000"]
    for values in ([], [EKS]):
        spec = by_component(render(helm, values, sets), "Deployment")["telephony-gateway"]["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        env = literal_env(c)
        assert {k: v for k, v in env.items() if k.startswith("LUPITA_GATEWAY_CHIME_")} == {
            "LUPITA_GATEWAY_CHIME_REGION": "eu-west-1", "LUPITA_GATEWAY_CHIME_RECORDING_CONSENT": "true",
            "LUPITA_GATEWAY_CHIME_CONSENT_SOURCE": "ivr-prompt", "LUPITA_GATEWAY_CHIME_LANGUAGE": "en-US",
            "LUPITA_GATEWAY_CHIME_REGION_LABEL": "eu", "LUPITA_GATEWAY_CHIME_START_MARGIN_SECONDS": "3",
            "LUPITA_GATEWAY_CHIME_KVS_ENDPOINT": "", "LUPITA_GATEWAY_CHIME_GET_MEDIA_ENDPOINT": "",
            "LUPITA_GATEWAY_CHIME_ENABLED": "true", "LUPITA_GATEWAY_CHIME_GROUP_ID": "gw-pods",
            "LUPITA_GATEWAY_CHIME_SESSION_TIMEOUT_MS": "15000"}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert mounts == {"/tmp": "tmp"}
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert "LUPITA_KAFKA_BOOTSTRAP" in env_of(c)
        key = env_of(c)["LUPITA_PHONE_ENCRYPTION_KEY"]["valueFrom"]["secretKeyRef"]
        assert (key["name"], key["key"]) == ("lupita-phone-keys", "phone-encryption-key") and not key.get("optional")
    spec = by_component(render(helm, [], ["telephonyGateway.chime.enabled=false"]),
                        "Deployment")["telephony-gateway"]["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert literal_env(c)["LUPITA_GATEWAY_CHIME_ENABLED"] == "false"
    assert "LUPITA_PHONE_ENCRYPTION_KEY" not in env_of(c)


def test_eventbridge_reaches_the_gateway_s_control_port_over_tls_through_its_load_balancer(helm):
    """EKS: the NLB terminates TLS on the control port too (EventBridge API destinations call HTTPS
    endpoints), and the control port admits the NLB's addresses (the VPC) besides the context API."""
    docs = render(helm, [EKS])
    service = by_component(docs, "Service")["telephony-gateway"]
    ssl_ports = service["metadata"]["annotations"]["service.beta.kubernetes.io/aws-load-balancer-ssl-ports"]
    assert set(ssl_ports.split(",")) == {"websocket", "control"}
    assert "control" in {p["name"] for p in service["spec"]["ports"]}
    ingress = {r["ports"][0]["port"]: r.get("from") for r in
               by_component(docs, "NetworkPolicy")["telephony-gateway"]["spec"]["ingress"]}
    assert {"ipBlock": {"cidr": "10.20.0.0/16"}} in ingress["control"]
    assert {"ipBlock": {"cidr": "10.20.0.0/16"}} in ingress["websocket"]


LISTEN_ADDRESS = {"media-bridge": ["LUPITA_GRPC_HOST", "LUPITA_METRICS_HOST"], "context-api": ["LUPITA_CONTEXT_API_HOST"],
                  "telephony-gateway": ["LUPITA_GATEWAY_HOST", "LUPITA_GATEWAY_METRICS_HOST"],
                  **{s: ["LUPITA_METRICS_HOST"] for s in STAGES}}


def test_host_network_servers_listen_on_the_node_address(helm):
    """Under hostNetwork every server listens on status.hostIP (a real kubelet refuses a loopback
    node IP, and probes the pod IP, which is the node's); without it nothing is set (the images
    listen on 0.0.0.0 in their own network namespace); a listen address in `settings` wins."""
    host_ip = {"valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}
    local = by_component(render(helm, [LOCAL]), "Deployment")
    assert set(local) == set(LISTEN_ADDRESS)
    for comp, names in LISTEN_ADDRESS.items():
        env = env_of(local[comp]["spec"]["template"]["spec"]["containers"][0])
        for var in names:
            assert {k: v for k, v in env[var].items() if k != "name"} == host_ip, (comp, var)
    for comp, dep in by_component(render(helm, [EKS]), "Deployment").items():
        env = env_of(dep["spec"]["template"]["spec"]["containers"][0])
        assert not set(LISTEN_ADDRESS[comp]) & set(env), comp
    pinned = by_component(render(helm, [LOCAL], ["mediaBridge.settings.LUPITA_GRPC_HOST=10.245.0.9",
                                                 "telephonyGateway.settings.LUPITA_GATEWAY_HOST=10.245.0.9"]),
                          "Deployment")
    assert env_of(pinned["media-bridge"]["spec"]["template"]["spec"]["containers"][0])["LUPITA_GRPC_HOST"] == \
        {"name": "LUPITA_GRPC_HOST", "value": "10.245.0.9"}
    gateway = literal_env(pinned["telephony-gateway"]["spec"]["template"]["spec"]["containers"][0])
    assert gateway["LUPITA_GATEWAY_HOST"] == "10.245.0.9"
    assert gateway["LUPITA_BRIDGE_TARGET"] == "10.245.0.9:50161"


# --- secrets, service accounts, labels -----------------------------------------------------------


SECRET_SUFFIXES = ("_KEY", "_SECRET", "_TOKENS", "_TOKEN", "_DSN", "_PASSWORD")


def test_secrets_come_only_from_existing_secrets(helm):
    for name, values in SCENARIOS.items():
        docs = render(helm, values, ["loadgen.enabled=true", "secrets.cloudApis.name=lupita-cloud",
                                     "secrets.s3.name=lupita-s3"])
        assert not of_kind(docs, "Secret"), name  # the chart never carries secret content
        for where, spec in pod_specs(docs):
            for c in spec["containers"]:
                for var, e in env_of(c).items():
                    if var.endswith(SECRET_SUFFIXES):
                        assert "value" not in e and e["valueFrom"]["secretKeyRef"]["name"], (name, where, var)


def test_only_the_recorder_gets_s3_and_only_the_users_of_postgres_its_dsn(scenario):
    _, docs = scenario
    for comp, dep in by_component(docs, "Deployment").items():
        env = env_of(dep["spec"]["template"]["spec"]["containers"][0])
        assert ("LUPITA_S3_LEGAL_BUCKET" in env) == (comp == "recorder"), comp
        assert ("LUPITA_POSTGRES_DSN" in env) == (comp in {"recorder", "understanding", "context-api"}), comp
        assert ("LUPITA_WEAVIATE_HOST" in env) == (comp == "understanding"), comp
        # the bridge encrypts numbers; the gateway's Chime events and checkpoints hold one encrypted (on by default)
        assert ("LUPITA_PHONE_ENCRYPTION_KEY" in env) == (comp in {"media-bridge", "telephony-gateway"}), comp


def test_each_workload_has_its_own_service_account_with_its_irsa_role(helm):
    docs = render(helm, [EKS])
    accounts = by_component(docs, "ServiceAccount")
    for comp, dep in by_component(docs, "Deployment").items():
        assert dep["spec"]["template"]["spec"]["serviceAccountName"] == accounts[comp]["metadata"]["name"]
    # the roles of k8s/iam/: the recorder writes the legal archive, the context-api erases, the
    # gateway reads the Chime Voice Connector's KVS streams
    with_roles = {"recorder", "context-api", "telephony-gateway"}
    for comp in with_roles:
        assert accounts[comp]["metadata"]["annotations"] == {
            "eks.amazonaws.com/role-arn": f"arn:aws:iam::123456789012:role/lupita-{comp}"}
    assert all("annotations" not in a["metadata"] for c, a in accounts.items() if c not in with_roles)


def test_every_object_carries_the_release_and_component_labels(scenario):
    _, docs = scenario
    for d in docs:
        labels = d["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "lupita" and labels["app.kubernetes.io/name"] == "lupita"
        if d["kind"] in ("Deployment", "Service", "ScaledObject", "ServiceAccount", "PodDisruptionBudget",
                         "NetworkPolicy", "HorizontalPodAutoscaler"):
            assert labels["app.kubernetes.io/component"] in (*WORKLOADS, "migrations"), d["metadata"]["name"]
        if d["kind"] == "Deployment":
            pod_labels = d["spec"]["template"]["metadata"]["labels"]
            assert d["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


# --- local values: images built here, every endpoint on 127.0.0.1 --------------------------------


def test_local_values_use_the_images_built_here_and_the_host_network(helm):
    docs = render(helm, [LOCAL], ["loadgen.enabled=true"])
    for where, spec in pod_specs(docs):
        assert spec["hostNetwork"] is True, where
        for c in spec["containers"]:
            assert c["image"].startswith("localhost/lupita-") and c["image"].endswith(":dev"), c["image"]
            assert c["imagePullPolicy"] == "Never"


def test_local_values_keep_every_endpoint_and_listener_on_this_machine(helm):
    """Network safety: with host networking, what the pods connect to is the host's loopback (the
    stack) or the node's own address (the gateway's bridge, where the bridge pod listens), and
    every listen address is the node's own (status.hostIP: 10.245.0.1 on the real node, a /32 on
    this machine's lo)."""
    docs = render(helm, [LOCAL], ["loadgen.enabled=true"])
    endpoint_vars = ("LUPITA_KAFKA_BOOTSTRAP", "LUPITA_S3_ENDPOINT", "LUPITA_WEAVIATE_HOST", "LUPITA_BRIDGE_TARGET")
    listen_vars = ("LUPITA_GRPC_HOST", "LUPITA_METRICS_HOST", "LUPITA_CONTEXT_API_HOST", "LUPITA_GATEWAY_HOST",
                   "LUPITA_GATEWAY_METRICS_HOST")
    node_address = "$(LUPITA_GATEWAY_HOST)"  # expanded by the kubelet from status.hostIP
    seen = set()
    for where, spec in pod_specs(docs):
        for c in spec["containers"]:
            for var, e in env_of(c).items():
                if var in listen_vars:
                    seen.add(var)
                    assert e.get("valueFrom") == {"fieldRef": {"fieldPath": "status.hostIP"}}, (where, var, e)
                if var in endpoint_vars:
                    seen.add(var)
                    value = e["value"]
                    hosts = [h.split("://")[-1].rsplit(":", 1)[0] if ":" in h.split("://")[-1] else h.split("://")[-1]
                             for h in value.split(",")]
                    assert hosts and all(h == "127.0.0.1" or (h == node_address and var == "LUPITA_BRIDGE_TARGET"
                                                              and "LUPITA_GATEWAY_HOST" in env_of(c))
                                         for h in hosts), (where, var, value)
    assert seen == set(endpoint_vars) | set(listen_vars)


def test_the_monitoring_block_keeps_the_keys_the_monitoring_templates_read():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["monitoring"] == {
        "serviceMonitors": {"enabled": True, "interval": "30s", "labels": {}},
        "prometheusRules": {"enabled": True, "labels": {}},
        "dashboards": {"enabled": True, "labels": {"grafana_dashboard": "1"}},
    }


# --- values.yaml is fully commented and mirrored by the schema -----------------------------------

# keys whose children are data, not settings of the chart (documented by the key above them)
DATA_KEYS = {"resources", "labels", "nodeSelector", "settings", "annotations", "podAnnotations", "commonLabels",
             "metadata", "affinity", "requests", "limits", "matchLabels"}


def uncommented_keys(text: str) -> list[str]:
    """Keys of values.yaml (outside list items and data maps) without a comment line above them."""
    import re

    lines = text.splitlines()
    stack: list[tuple[int, str]] = []
    missing = []
    for n, line in enumerate(lines):
        m = re.match(r"^(\s*)(- )?([A-Za-z_][A-Za-z0-9_.-]*):", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parents = [k for _, k in stack]
        in_list = m.group(2) is not None or "-" in parents
        if m.group(2):
            stack.append((indent, "-"))
            indent += 2
        stack.append((indent, key))
        if in_list or any(p in DATA_KEYS for p in parents):
            continue
        j = n - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        if not lines[j].lstrip().startswith("#"):
            missing.append(".".join([*parents, key]))
    return missing


def test_every_key_of_values_yaml_has_a_comment():
    assert uncommented_keys((CHART / "values.yaml").read_text()) == []
    assert uncommented_keys("a:\n  # -- b\n  b: 1\n  c: 2\n") == ["a", "a.c"]  # the check itself can fail


def test_the_schema_types_every_key_of_values_yaml():
    """values.schema.json mirrors values.yaml: every key is declared (objects are closed)."""
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def resolve(node):
        while "$ref" in node:
            node = schema["definitions"][node["$ref"].split("/")[-1]]
        return node

    def walk(value, node, path):
        node = resolve(node)
        if isinstance(value, dict) and "properties" in node:
            assert node.get("additionalProperties") is False or path.startswith("values.monitoring"), path
            for key, child in value.items():
                assert key in node["properties"], f"{path}.{key} is not in the schema"
                walk(child, node["properties"][key], f"{path}.{key}")
            assert set(node.get("required", [])) <= set(value), path

    walk(values, schema, "values")


def test_every_reference_between_rendered_objects_resolves(scenario):
    """What an empty namespace needs besides the named Secrets is all rendered: each selector picks
    exactly one workload's pods, each scale target and ServiceAccount exists."""
    name, docs = scenario
    deployments = of_kind(docs, "Deployment")
    pods = {**deployments, **of_kind(docs, "Job")}  # the migration hook Job has its own policy
    pod_labels = {f"{d['kind']}/{n}": d["spec"]["template"]["metadata"]["labels"] for n, d in pods.items()}
    accounts = set(of_kind(docs, "ServiceAccount"))

    def selected(match: dict) -> list[str]:
        return [n for n, labels in pod_labels.items() if match.items() <= labels.items()]

    for svc in of_kind(docs, "Service").values():
        assert len(selected(svc["spec"]["selector"])) == 1, (name, svc["metadata"]["name"])
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for obj in of_kind(docs, kind).values():
            sel = obj["spec"].get("selector") or obj["spec"]["podSelector"]
            assert len(selected(sel["matchLabels"])) == 1, (name, kind, obj["metadata"]["name"])
    for kind in ("ScaledObject", "HorizontalPodAutoscaler"):
        for obj in of_kind(docs, kind).values():
            ref = obj["spec"]["scaleTargetRef"]
            assert ref["kind"] == "Deployment" and ref["name"] in deployments, (name, kind, ref)
    for dep in deployments.values():
        assert dep["spec"]["template"]["spec"]["serviceAccountName"] in accounts


def test_weaviate_grpc_goes_to_its_own_host_when_one_is_named(helm):
    """values-eks names the Weaviate chart's two Services (HTTP "weaviate", gRPC "weaviate-grpc"):
    the understanding stage gets both hosts; without weaviate.grpcHost, gRPC uses weaviate.host."""
    weaviate = yaml.safe_load(EKS.read_text())["weaviate"]
    eks = literal_env(by_component(render(helm, [EKS]), "Deployment")["understanding"]["spec"]["template"]["spec"]
                      ["containers"][0])
    assert (eks["LUPITA_WEAVIATE_HOST"], eks["LUPITA_WEAVIATE_GRPC_HOST"]) == (weaviate["host"], weaviate["grpcHost"])
    assert weaviate["host"] != weaviate["grpcHost"]
    default = literal_env(by_component(render(helm), "Deployment")["understanding"]["spec"]["template"]["spec"]
                          ["containers"][0])
    assert "LUPITA_WEAVIATE_GRPC_HOST" not in default and default["LUPITA_WEAVIATE_HOST"]


def test_the_migrations_run_as_the_schema_owner_in_a_hook_job_before_the_workloads(helm):
    """values-eks: `lupita migrate` in a pre-install/pre-upgrade hook Job with the owner's DSN
    (secrets.postgresOwner), and no stage migrates on start (their users only hold lupita_processor).
    Default and local values: no Job, the recorder and understanding migrate on start as before."""
    eks_values = yaml.safe_load(EKS.read_text())
    docs = render(helm, [EKS])
    (job,) = [d for d in docs if d["kind"] == "Job"]
    assert component(job) == "migrations"
    notes = job["metadata"]["annotations"]
    assert notes["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert set(notes["helm.sh/hook-delete-policy"].split(",")) == {"before-hook-creation", "hook-succeeded"}
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never" and job["spec"]["activeDeadlineSeconds"] > 0
    # the chart's ServiceAccounts do not exist yet at pre-install
    accounts = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    assert spec["serviceAccountName"] == "default" and spec["serviceAccountName"] not in accounts
    (c,) = spec["containers"]
    assert c["command"] == ["lupita", "migrate"]
    assert c["image"].split("/")[-1].startswith("lupita-stream-processor:")
    owner = eks_values["secrets"]["postgresOwner"]
    assert env_of(c)["LUPITA_POSTGRES_DSN"]["valueFrom"]["secretKeyRef"] == {"name": owner["name"],
                                                                            "key": owner["dsnKey"]}
    assert owner["name"] != eks_values["secrets"]["postgres"]["name"]
    deps = by_component(docs, "Deployment")
    for stage in STAGES:
        env = literal_env(deps[stage]["spec"]["template"]["spec"]["containers"][0])
        assert env.get("LUPITA_MIGRATE_ON_START", "false") == "false", stage
    for values in ([], [LOCAL]):
        docs = render(helm, values)
        assert not [d for d in docs if d["kind"] == "Job"]
        deps = by_component(docs, "Deployment")
        migrating = {s for s in STAGES
                     if literal_env(deps[s]["spec"]["template"]["spec"]["containers"][0]).get("LUPITA_MIGRATE_ON_START")
                     == "true"}
        assert migrating == {"recorder", "understanding"}, values
    # the pod joins the node's network where the workloads do (the local cluster)
    local = [d for d in render(helm, [LOCAL], ["migrations.job.enabled=true"]) if d["kind"] == "Job"]
    assert local[0]["spec"]["template"]["spec"]["hostNetwork"] is True


def postgres_refs(docs: list[dict]) -> dict[str, dict]:
    """component -> the secretKeyRef of its LUPITA_POSTGRES_DSN, for each pod that reads one."""
    out = {}
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            env = env_of(d["spec"]["template"]["spec"]["containers"][0])
            if "LUPITA_POSTGRES_DSN" in env:
                out[component(d)] = env["LUPITA_POSTGRES_DSN"]["valueFrom"]["secretKeyRef"]
    return out


def test_each_workload_reads_the_dsn_of_its_own_postgres_role(helm):
    """values-eks: the stages' user holds only lupita_processor, the context API's only
    lupita_context_api and the migration Job's owns the schema — three Secrets. A role whose entry
    names no Secret falls back to secrets.postgres (the default and local values: one user in both)."""
    secrets = yaml.safe_load(EKS.read_text())["secrets"]
    ref = {name: {"name": secrets[name]["name"], "key": secrets[name]["dsnKey"]}
           for name in ("postgresProcessor", "postgresContextApi", "postgresOwner")}
    assert len({r["name"] for r in ref.values()}) == 3
    assert postgres_refs(render(helm, [EKS])) == {
        "recorder": ref["postgresProcessor"], "understanding": ref["postgresProcessor"],
        "context-api": ref["postgresContextApi"], "migrations": ref["postgresOwner"]}
    for values in ([], [LOCAL]):
        shared = yaml.safe_load(((CHART / "values.yaml") if not values else values[0]).read_text())["secrets"]["postgres"]
        refs = postgres_refs(render(helm, values))
        assert set(refs) == {"recorder", "understanding", "context-api"}, values
        assert all(r == {"name": shared["name"], "key": shared["dsnKey"]} for r in refs.values()), (values, refs)
    # one role named, the other falls back; a key of its own is read from its own Secret
    refs = postgres_refs(render(helm, [], ["secrets.postgresContextApi.name=ctx-pg",
                                           "secrets.postgresContextApi.dsnKey=uri"]))
    assert refs["context-api"] == {"name": "ctx-pg", "key": "uri"}
    assert refs["recorder"] == refs["understanding"] == {"name": "lupita-postgres", "key": "dsn"}
    refs = postgres_refs(render(helm, [], ["secrets.postgresProcessor.name=proc-pg"]))
    assert refs["recorder"] == refs["understanding"] == {"name": "proc-pg", "key": "dsn"}
    assert refs["context-api"] == {"name": "lupita-postgres", "key": "dsn"}


def test_the_migration_job_reaches_postgres_through_a_policy_that_lives_as_long_as_the_job(helm):
    """In a namespace that denies all else, the Job's pod gets DNS and Postgres out and nothing in,
    from a NetworkPolicy hook of the same events, created just before the Job and deleted with it
    (hook-succeeded: after the hooks succeeded, and by Helm when a later hook of the run fails), so
    nothing of it is left after an install, an upgrade or an uninstall. No Job, no policy; no
    policies (the local values: host network), none for the Job either."""
    values = yaml.safe_load(EKS.read_text())["networkPolicy"]["egress"]
    docs = render(helm, [EKS])
    (job,) = [d for d in docs if d["kind"] == "Job"]
    policy = by_component(docs, "NetworkPolicy")["migrations"]
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "migrations"
    assert spec["policyTypes"] == ["Ingress", "Egress"] and spec["ingress"] == []
    assert spec["egress"] == [{"ports": values["dns"]["ports"], "to": values["dns"]["to"]},
                              {"ports": values["postgres"]["ports"], "to": values["postgres"]["to"]}]
    # the workloads' policies select other pods only: without this one the Job would be cut off
    others = [p for c, p in by_component(docs, "NetworkPolicy").items() if c != "migrations"]
    assert all(p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] != "migrations" for p in others)
    hook, job_hook = policy["metadata"]["annotations"], job["metadata"]["annotations"]
    assert hook["helm.sh/hook"] == job_hook["helm.sh/hook"]
    assert int(hook["helm.sh/hook-weight"]) < int(job_hook["helm.sh/hook-weight"])
    assert set(hook["helm.sh/hook-delete-policy"].split(",")) == {"before-hook-creation", "hook-succeeded"}
    # the default values' policies are on, the Job off; local: the Job on, policies off
    for values_files, sets in (([], []), ([LOCAL], ["migrations.job.enabled=true"]),
                               ([], ["migrations.job.enabled=true", "networkPolicy.enabled=false"])):
        assert "migrations" not in by_component(render(helm, values_files, sets), "NetworkPolicy"), sets
    assert "migrations" in by_component(render(helm, [], ["migrations.job.enabled=true"]), "NetworkPolicy")


def test_the_context_api_starts_one_worker_per_core_of_its_cpu_limit(helm):
    """contextApi.workers 0 (the default): LUPITA_CONTEXT_API_WORKERS from the downward API, the
    container's limits.cpu in whole cores rounded up, or 1 without a CPU limit (the downward API would
    give the node's CPU then); a positive contextApi.workers is used as is; a limit above the
    setting's 64 is refused."""
    from context_api.settings import ContextApiSettings

    def workers(values: list[Path], sets: list[str]) -> tuple[dict, dict]:
        dep = by_component(render(helm, values, sets), "Deployment")["context-api"]
        c = dep["spec"]["template"]["spec"]["containers"][0]
        return c, env_of(c)["LUPITA_CONTEXT_API_WORKERS"]

    c, env = workers([EKS], [])
    limit = yaml.safe_load(EKS.read_text())["contextApi"]["resources"]["limits"]["cpu"]
    assert c["resources"]["limits"]["cpu"] == limit
    assert env["valueFrom"] == {"resourceFieldRef": {"containerName": c["name"], "resource": "limits.cpu",
                                                     "divisor": "1"}}
    for values in ([], [LOCAL]):
        c, env = workers(values, [])
        assert "cpu" not in c["resources"].get("limits", {}) and env.get("value") == "1", values
    assert workers([EKS], ["contextApi.workers=5"])[1] == {"name": "LUPITA_CONTEXT_API_WORKERS", "value": "5"}
    assert workers([], ["contextApi.resources.limits.cpu=64"])[1]["valueFrom"]["resourceFieldRef"]["resource"] \
        == "limits.cpu"
    assert ContextApiSettings.model_fields["context_api_workers"].metadata  # its bounds are the schema's
    bounds = {type(m).__name__: m for m in ContextApiSettings.model_fields["context_api_workers"].metadata}
    assert (bounds["Ge"].ge, bounds["Le"].le) == (1, 64)
    err = refused(helm, ["contextApi.resources.limits.cpu=64500m"])
    assert "contextApi.resources.limits.cpu (64500m) would start more than 64 workers" in err, err
    assert "at '/contextApi/workers'" in refused(helm, ["contextApi.workers=65"])
    assert "contextApi.settings.LUPITA_CONTEXT_API_WORKERS: the chart sets" in \
        refused(helm, ["contextApi.settings.LUPITA_CONTEXT_API_WORKERS=2"])
