"""The real node (containerd + runc + kubelet + CNI bridge): a built image runs as a hardened
pod on the host network against the local stack and passes its gRPC readiness probe; the
apiserver reaches the kubelet (logs); ``down`` leaves no process, mount, network namespace,
bridge, iptables chain or address behind."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from procs import free_port
from waits import wait_for


@pytest.fixture(scope="module")
def real_node(cluster, built_images, kubectl):
    from lupita_dev.cluster import node

    node.up()
    node.load_images([built_images["lupita-media-bridge"]])
    yield node
    node.down()  # a no-op when the last test already took it down


def _bridge_pod(image: str, port: int, metrics_port: int) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "bridge-on-real-node", "namespace": "default"},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": "lupita-node"},
            "hostNetwork": True,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001},
            "terminationGracePeriodSeconds": 30,
            "containers": [{
                "name": "media-bridge", "image": image, "imagePullPolicy": "Never",
                "envFrom": [{"secretRef": {"name": "real-node-stack"}}],
                "env": [
                    # the kubelet probes host-network pods on the node IP (never loopback)
                    {"name": "LUPITA_GRPC_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                    {"name": "LUPITA_GRPC_PORT", "value": str(port)},
                    {"name": "LUPITA_METRICS_PORT", "value": str(metrics_port)},
                ],
                "readinessProbe": {"grpc": {"port": port}, "periodSeconds": 2},
                "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }


def test_a_built_image_runs_as_a_hardened_pod_and_passes_its_grpc_probe(real_node, built_images, kubectl,
                                                                       stack_env):
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "real-node-stack", "namespace": "default"},
              "stringData": dict(stack_env)}
    kubectl("apply", "-f", "-", input=json.dumps(secret))
    pod = _bridge_pod(built_images["lupita-media-bridge"], free_port(), free_port())
    kubectl("apply", "-f", "-", input=json.dumps(pod))
    try:
        def ready() -> bool:
            got = json.loads(kubectl("get", "pod", "bridge-on-real-node", "-o", "json").stdout)
            return any(c.get("ready") for c in got["status"].get("containerStatuses", []))

        try:
            wait_for("the bridge pod Ready on the real node", ready, timeout=120, interval=1)
        except AssertionError as exc:
            described = kubectl("describe", "pod", "bridge-on-real-node", check=False).stdout[-3000:]
            raise AssertionError(f"{exc}\n{described}") from None
        logs = kubectl("logs", "bridge-on-real-node").stdout  # apiserver -> kubelet, TLS both ways
        assert "media bridge listening" in logs, logs[-2000:]
    finally:
        kubectl("delete", "pod", "bridge-on-real-node", "--ignore-not-found", "--wait=true", "--timeout=60s")
        kubectl("delete", "secret", "real-node-stack", "--ignore-not-found")


def test_down_leaves_nothing_of_the_node(real_node):
    node = real_node
    node.down()
    assert not any(s["pid"] for s in node.status().values()), node.status()
    assert not node._our_shims()
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(node.KUBELET_ROOT) not in mounts and str(node.RUN_DIR) not in mounts
    assert not (node.NETNS_DIR.exists() and list(node.NETNS_DIR.glob("cni-*")))
    assert subprocess.run(["ip", "link", "show", node.BRIDGE], capture_output=True).returncode != 0
    for table in ("filter", "nat", "mangle"):
        rules = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True).stdout
        assert "KUBE-" not in rules and "CNI-" not in rules, (table, rules)
    assert node.NODE_IP not in subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
