"""The real node (containerd + runc + kubelet + kube-proxy + CNI bridge): a built image runs as a
hardened pod on the host network against the local stack and passes its gRPC readiness probe; the
apiserver reaches the kubelet (logs); a Service in front of it answers on its ClusterIP from the
host (kube-proxy's DNAT, the service range routed via lo meanwhile); ``down`` leaves no process,
mount, network namespace, bridge, iptables/ip6tables chain or address behind, blackholes the
service range again and leaves the machine's sysctls as they were."""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import host_sysctls
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
        _the_bridge_answers_on_a_cluster_ip(kubectl, pod)
    finally:
        kubectl("delete", "service", "bridge-on-real-node", "--ignore-not-found")
        kubectl("delete", "pod", "bridge-on-real-node", "--ignore-not-found", "--wait=true", "--timeout=60s")
        kubectl("delete", "secret", "real-node-stack", "--ignore-not-found")


def _the_bridge_answers_on_a_cluster_ip(kubectl, pod: dict) -> None:
    """A ClusterIP Service (port 80 -> the pod's gRPC port) in front of the host-network bridge pod:
    from the host, gRPC health through the ClusterIP says SERVING (kube-proxy DNATs to the node
    address); an unallocated ClusterIP on the same port does not answer, so it is the DNAT that does."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from lupita_dev.cluster import manager

    grpc_port = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}["LUPITA_GRPC_PORT"]
    pod_labels = {"app": "bridge-on-real-node"}
    kubectl("label", "pod", "bridge-on-real-node", "app=bridge-on-real-node", "--overwrite")
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "bridge-on-real-node", "namespace": "default"},
        "spec": {"type": "ClusterIP", "selector": pod_labels,
                 "ports": [{"name": "grpc", "port": 80, "targetPort": int(grpc_port), "protocol": "TCP"}]}}))
    cluster_ip = kubectl("get", "service", "bridge-on-real-node", "-o", "jsonpath={.spec.clusterIP}").stdout
    assert ipaddress.ip_address(cluster_ip) in ipaddress.ip_network(manager.SERVICE_CIDR)
    assert manager._service_route_via_lo()
    assert subprocess.run(["ip", "-4", "route", "get", cluster_ip], capture_output=True, text=True,
                          check=True).stdout.split()[2] == "lo"

    def serving() -> bool:
        with grpc.insecure_channel(f"{cluster_ip}:80") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                                   timeout=3)
            except grpc.RpcError:
                return False
            return reply.status == health_pb2.HealthCheckResponse.SERVING

    wait_for(f"the bridge SERVING through ClusterIP {cluster_ip}:80", serving, timeout=60, interval=1)
    unallocated = str(ipaddress.ip_network(manager.SERVICE_CIDR)[-2])
    with pytest.raises(OSError):  # no DNAT: the SYN dies on lo (timed out), it never leaves the machine
        socket.create_connection((unallocated, 80), timeout=3).close()


def test_down_leaves_nothing_of_the_node(real_node, sysctls_at_start):
    node = real_node
    node.down()
    assert not any(s["pid"] for s in node.status().values()), node.status()
    assert not node._our_shims()
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(node.KUBELET_ROOT) not in mounts and str(node.RUN_DIR) not in mounts
    assert not (node.NETNS_DIR.exists() and list(node.NETNS_DIR.glob("cni-*")))
    assert subprocess.run(["ip", "link", "show", node.BRIDGE], capture_output=True).returncode != 0
    for cmd in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            rules = subprocess.run([cmd, "-t", table, "-S"], capture_output=True, text=True).stdout
            assert "KUBE-" not in rules and "CNI-" not in rules, (cmd, table, rules)
    assert node.NODE_IP not in subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
    # the service range is blackholed again (the cluster still holds it): nothing for it can leave
    from lupita_dev.cluster import manager

    assert [line.strip() for line in manager._routes_for(manager.SERVICE_CIDR)] == [f"blackhole {manager.SERVICE_CIDR}"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(OSError) as refused:
            sock.connect((str(ipaddress.ip_network(manager.SERVICE_CIDR)[10]), 53))
        assert refused.value.errno == errno.EINVAL
    assert host_sysctls() == sysctls_at_start
