"""End to end on the real node: the built images, loaded into the node, installed by the chart
with the local values against the local stack; every pod passes its probes (the telephony
gateway's /readyz only once it reaches the bridge pod); one simulated call through the bridge
pod ends as a WAV locked in COMPLIANCE mode (the migrations applied by the chart's pre-install hook
Job, the stages not migrating themselves) in the legal bucket and an analysed
``companion_calls`` row; a Twilio Media Streams call through the gateway pod is recorded and
locked too; ``helm uninstall`` leaves nothing of the release behind, in the API or in the node's
runtime.

The pods use the host network (they reach the stack on 127.0.0.1) and listen on the node's
address, 10.245.0.1 (the chart's status.hostIP under hostNetwork: values-local.yaml as it is,
no listen-address override), and only there (no port of the release on every address), where the
kubelet probes them (it refuses a loopback node address); the bridge's Service answers on its
ClusterIP from the host (kube-proxy); the kwok node is cordoned meanwhile so every pod lands on
the real node. Own topic
prefix, own release. Takes 2-5 minutes on the 2 shared cores when the images are warm (three
model loads, Whisper on CPU); loading the four images into containerd is ~2 min of it.
"""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
import yaml
from conftest import CHART
from procs import run_lupita
from test_chart_in_cluster import _release_leftovers
from waits import wait_for

pytestmark = pytest.mark.stack

IMAGES = ("lupita-media-bridge", "lupita-stream-processor", "lupita-context-api", "lupita-telephony-gateway")
PROCESS_TIMEOUT_S = 300  # Whisper on two shared cores: a bound, not a speed assertion


@pytest.fixture(scope="module")
def release(cluster, built_images, kubectl, helm, stack_env, tmp_path_factory):
    from lupita_dev.cluster import manager, node

    node.up()
    node.load_images([built_images[name] for name in IMAGES])
    suffix = uuid.uuid4().hex[:6]
    name, namespace = f"e2e-{suffix}", f"e2e-{suffix}"
    kubectl("create", "namespace", namespace)
    secret = {**stack_env, "LUPITA_CONTEXT_API_BEARER_TOKENS": uuid.uuid4().hex,
              "LUPITA_CONTEXT_API_HMAC_SECRET": uuid.uuid4().hex}
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "lupita-local-stack"}, "stringData": secret}))
    overrides = tmp_path_factory.mktemp("e2e") / "real-node-values.yaml"
    overrides.write_text(yaml.safe_dump({
        # the endpoints of the stack this session runs on (values-local names the default ports; a
        # checkout with LUPITA_STACK_PORT_OFFSET runs its stack elsewhere)
        "kafka": {"topicPrefix": f"cluster-e2e-{suffix}.", "bootstrap": stack_env["LUPITA_KAFKA_BOOTSTRAP"]},
        "s3": {"endpoint": stack_env["LUPITA_S3_ENDPOINT"]},
        "weaviate": {"host": stack_env["LUPITA_WEAVIATE_HOST"], "httpPort": int(stack_env["LUPITA_WEAVIATE_HTTP_PORT"]),
                     "grpcPort": int(stack_env["LUPITA_WEAVIATE_GRPC_PORT"])},
        # the migrations as values-eks runs them: the hook Job (the stream-processor image, hardened, on
        # the real kubelet) before the workloads, which do not migrate themselves (helm install fails
        # if the Job does)
        "migrations": {"job": {"enabled": True}},
        "streamProcessor": {"stages": {s: {"migrateOnStart": False} for s in ("recorder", "understanding")}},
    }))
    kubectl("cordon", manager.KWOK_NODE)
    try:
        helm("install", name, str(CHART), "-n", namespace, "-f", str(CHART / "values-local.yaml"),
             "-f", str(overrides), "--wait", "--timeout", "300s", timeout=360)
        yield {"name": name, "namespace": namespace}
    finally:
        kubectl("uncordon", manager.KWOK_NODE)
        helm("uninstall", name, "-n", namespace, "--wait", "--timeout", "120s", check=False)
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _release_ports() -> set[int]:
    """Every port values-local.yaml gives the release's servers (gRPC, HTTP, websocket, metrics)."""
    values = yaml.safe_load((CHART / "values-local.yaml").read_text())
    ports = {*values["mediaBridge"]["ports"].values(), *values["contextApi"]["ports"].values(),
             *values["telephonyGateway"]["ports"].values()}
    ports |= {stage["ports"]["metrics"] for stage in values["streamProcessor"]["stages"].values()}
    return {int(p) for p in ports}


def _listen_addresses() -> dict[int, set[str]]:
    """TCP listening sockets of this machine: port -> local addresses (ss; "*"/"0.0.0.0" = every)."""
    import subprocess

    out = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True).stdout
    found: dict[int, set[str]] = {}
    for line in out.splitlines():
        local = line.split()[3]
        address, _, port = local.rpartition(":")
        address = address.strip("[]").removeprefix("::ffff:")  # a v4-mapped listener (gRPC's) is that address
        found.setdefault(int(port), set()).add(address)
    return found


def _bridge_serving_on_its_cluster_ip(kubectl, release) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    service = json.loads(kubectl("get", "service", "-n", release["namespace"], "-l",
                                 "app.kubernetes.io/component=media-bridge", "-o", "json").stdout)["items"][0]
    cluster_ip = service["spec"]["clusterIP"]
    port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")

    def serving() -> bool:
        with grpc.insecure_channel(f"{cluster_ip}:{port}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
            except grpc.RpcError:
                return False
            return reply.status == health_pb2.HealthCheckResponse.SERVING

    wait_for(f"the bridge SERVING on its Service's ClusterIP {cluster_ip}:{port}", serving, timeout=60, interval=1)


def _bridge_port() -> int:
    values = yaml.safe_load((CHART / "values-local.yaml").read_text())
    return int(values["mediaBridge"]["ports"]["grpc"])


def test_a_call_through_the_chart_on_the_real_node_is_recorded_locked_and_analysed(release, kubectl, helm,
                                                                                   stack_env):
    import boto3

    from lupita_dev.cluster import node

    pods = json.loads(kubectl("get", "pods", "-n", release["namespace"], "-o", "json").stdout)["items"]
    assert len(pods) >= 7 and all(p["spec"]["nodeName"] == node.NODE for p in pods)
    assert all(all(c["ready"] for c in p["status"]["containerStatuses"]) for p in pods)
    components = {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods}
    assert {"media-bridge", "recorder", "vad", "transcriber", "understanding", "context-api",
            "telephony-gateway"} <= components
    # the servers listen on the node's address (status.hostIP), not on a value the test chose, and
    # only there: no port of the release is open on every address of the machine
    assert {p["status"]["hostIP"] for p in pods} == {node.NODE_IP}
    listening = _listen_addresses()
    values = yaml.safe_load((CHART / "values-local.yaml").read_text())
    # the gateway's control API is off without control tokens (the local Secret holds none)
    optional = {int(values["telephonyGateway"]["ports"]["control"])}
    for port in _release_ports():
        assert listening.get(port, {node.NODE_IP} if port in optional else None) == {node.NODE_IP}, \
            (port, listening.get(port))
    # the bridge's Service answers on its ClusterIP from the host (kube-proxy on the real node)
    _bridge_serving_on_its_cluster_ip(kubectl, release)

    out = run_lupita("cluster-e2e-call", ["call", "--target", f"{node.NODE_IP}:{_bridge_port()}",
                                          "--calls", "1", "--speed", "0", "--json"])
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert (report["ok"], report["failed"]) == (1, 0), report
    call_id = report["per_call"][0]["call_id"]

    def processed():
        with psycopg.connect(stack_env["LUPITA_POSTGRES_DSN"]) as db:
            cur = db.execute("SELECT * FROM companion_calls WHERE call_id = %s AND processed_at IS NOT NULL",
                             (call_id,))
            row = cur.fetchone()
            return row and dict(zip([d.name for d in cur.description], row))

    row = wait_for(f"the analysed row of {call_id}", processed, timeout=PROCESS_TIMEOUT_S, interval=2)
    assert row["recording_status"] == "recorded" and (row["transcript"] or "").strip() and row["summary"]
    s3 = boto3.client("s3", endpoint_url=stack_env["LUPITA_S3_ENDPOINT"], region_name=stack_env["LUPITA_S3_REGION"],
                      aws_access_key_id=stack_env["LUPITA_S3_ACCESS_KEY"],
                      aws_secret_access_key=stack_env["LUPITA_S3_SECRET_KEY"])
    legal = yaml.safe_load((CHART / "values-local.yaml").read_text())["s3"]["legalBucket"]
    head = s3.head_object(Bucket=legal, Key=row["s3_legal_key"])
    assert head["ObjectLockMode"] == "COMPLIANCE" and head["ContentLength"] > 44
    assert row["s3_legal_key"].endswith(f"/{call_id}/audio-full.wav")


def test_a_twilio_stream_through_the_gateway_pod_is_recorded_and_locked(release, stack_env):
    """Twilio's side (the documented Media Streams messages, telephony_gateway.twilio_sim) into the
    gateway pod on the node's address: the gateway streams it into the bridge pod, the recorder pod
    writes the WAV to the legal bucket under COMPLIANCE lock and records the call in Postgres."""
    import asyncio

    import boto3
    import numpy as np

    from lupita_dev.cluster import node
    from telephony_gateway import twilio_sim

    gateway = yaml.safe_load((CHART / "values-local.yaml").read_text())["telephonyGateway"]["ports"]["websocket"]
    call_id = f"cluster-e2e-twilio-{uuid.uuid4().hex[:8]}"
    t = np.arange(8000 * 4) / 8000  # 4 s of two tones, one per leg (8 kHz, as Twilio sends)
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)], axis=1) * 8000
    call = twilio_sim.build_call(stereo.astype(np.int16), {
        "lupitaCallId": call_id, "phone": "+52 951 555 0142", "consent": "true",
        "consentSource": "ivr_prompt_v2", "language": "es-MX"})
    result = asyncio.run(twilio_sim.stream(f"ws://{node.NODE_IP}:{gateway}/twilio", call.messages))
    assert result.close_code == 1000, (result.close_code, result.close_reason)

    def recorded():
        with psycopg.connect(stack_env["LUPITA_POSTGRES_DSN"]) as db:
            cur = db.execute("SELECT recording_status, s3_legal_key FROM companion_calls "
                             "WHERE call_id = %s AND recording_status IS NOT NULL", (call_id,))
            return cur.fetchone()

    status, key = wait_for(f"the recording of {call_id}", recorded, timeout=PROCESS_TIMEOUT_S, interval=2)
    assert status == "recorded" and key.endswith(f"/{call_id}/audio-full.wav"), (status, key)
    s3 = boto3.client("s3", endpoint_url=stack_env["LUPITA_S3_ENDPOINT"], region_name=stack_env["LUPITA_S3_REGION"],
                      aws_access_key_id=stack_env["LUPITA_S3_ACCESS_KEY"],
                      aws_secret_access_key=stack_env["LUPITA_S3_SECRET_KEY"])
    legal = yaml.safe_load((CHART / "values-local.yaml").read_text())["s3"]["legalBucket"]
    head = s3.head_object(Bucket=legal, Key=key)
    # at least 4 s of 16-bit 8 kHz audio (the recorder's layout and rate may hold more)
    assert head["ObjectLockMode"] == "COMPLIANCE" and head["ContentLength"] >= 44 + 4 * 8000 * 2


def test_helm_uninstall_leaves_nothing_in_the_api_or_the_node(release, kubectl, helm):
    from lupita_dev.cluster import node

    helm("uninstall", release["name"], "-n", release["namespace"], "--wait", "--timeout", "120s")
    kubectl("delete", "secret", "lupita-local-stack", "-n", release["namespace"])  # the test's own, not the chart's
    left: list[str] = []

    def nothing_left() -> bool:
        left[:] = _release_leftovers(kubectl, release["name"], release["namespace"])
        # the node: no container of the release's pods still running (only other namespaces' pods)
        tasks = node._ctr("tasks", "ls", "-q", check=False).stdout.split()
        others = json.loads(kubectl("get", "pods", "-A", "--field-selector", f"spec.nodeName={node.NODE}",
                                    "-o", "json").stdout)["items"]
        if not others and tasks:
            left.append(f"{len(tasks)} containers still running in containerd")
        return not left

    try:
        wait_for(f"nothing of {release['name']} left", nothing_left, timeout=120, interval=2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still there: {left}") from None
