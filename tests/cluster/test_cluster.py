"""``lupita cluster``: the local cluster itself (its teardown is checked by the ``cluster`` fixture)."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def route_device(address: str) -> str:
    """The device `ip route get` sends ``address`` out of (it sends nothing itself)."""
    words = subprocess.run(["ip", "-4", "route", "get", address], capture_output=True, text=True,
                           check=True).stdout.split()
    return words[words.index("dev") + 1]


@pytest.mark.parametrize("cidr_name", ["SERVICE_CIDR", "POD_CIDR"])
def test_cluster_address_ranges_cannot_leave_the_machine(cidr_name, cluster):
    """A socket to any address of the service or pod range is refused by the host's routing
    (blackhole route), so no packet for a cluster address follows the default route out.
    A UDP connect sends nothing, so this check is safe even if the route were missing. The one
    exception: while the real node's kube-proxy runs, the service range is routed via lo (and
    never via a device that leaves the machine)."""
    from lupita_dev.cluster import manager, node

    network = ipaddress.ip_network(getattr(manager, cidr_name))
    via_lo = cidr_name == "SERVICE_CIDR" and manager._service_route_via_lo()
    if via_lo:
        assert node.kube_proxy_alive(), "the service range is routed via lo without a running kube-proxy"
    for address in (network[10], network[-2]):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            if via_lo:
                sock.connect((str(address), 53))
                assert route_device(str(address)) == "lo"
                continue
            with pytest.raises(OSError) as refused:
                sock.connect((str(address), 53))
            assert refused.value.errno == errno.EINVAL, refused.value


def _udp_connect_errno(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((address, 53))
        except OSError as exc:
            return exc.errno
    return 0


@pytest.fixture
def spare_ranges(tmp_path, monkeypatch) -> tuple[str, str]:
    """Test-only service and pod ranges (routed nowhere on this machine; a blackhole drops packets,
    so adding one is safe) and a test-only holder registry, in place of the cluster's own."""
    from lupita_dev.cluster import manager

    ranges = ("10.250.0.0/24", "10.251.0.0/24")
    for cidr in ranges:
        assert not manager._routes_for(cidr), f"{cidr} is routed on this machine: pick other test ranges"
    monkeypatch.setattr(manager, "SERVICE_CIDR", ranges[0])
    monkeypatch.setattr(manager, "POD_CIDR", ranges[1])
    monkeypatch.setattr(manager, "ROUTE_HOLDERS", tmp_path / "holders")
    return ranges


def test_the_service_range_goes_back_to_its_blackhole_on_every_exit_path(tmp_path, monkeypatch, spare_ranges):
    """The real node routes the service range via lo while its kube-proxy runs. That route is put
    back to the blackhole (one `ip route replace`: never without a route) at down, when kube-proxy
    fails to start, and by the next up or down of any cluster when kube-proxy is gone (a crash).
    Test-only ranges and holder registry, no real-node owner (kube-proxy counts as gone)."""
    from lupita_dev.cluster import manager, node, tools

    ranges = spare_ranges
    monkeypatch.setattr(node, "OWNER_FILE", tmp_path / "real-node.owner")
    monkeypatch.setenv("LUPITA_CLUSTER_DIR", str(tmp_path / "cluster"))
    probe = "10.250.0.77"
    blackholed = [f"blackhole {ranges[0]}"]
    try:
        manager.add_blackhole_routes()
        assert _udp_connect_errno(probe) == errno.EINVAL
        manager.open_service_range()
        assert manager._service_route_via_lo() and route_device(probe) == "lo"
        assert _udp_connect_errno(probe) == 0  # the route lookup passes: what kube-proxy's DNAT needs

        # a crash: the route is left, kube-proxy is gone; the next up (any cluster) puts it back
        assert not node.kube_proxy_alive()
        manager.add_blackhole_routes()
        assert [line.strip() for line in manager._routes_for(ranges[0])] == blackholed
        assert _udp_connect_errno(probe) == errno.EINVAL

        # kube-proxy fails to start: the range is blackholed again before the error goes up
        manager.open_service_range()
        monkeypatch.setattr(tools, "ensure", lambda name, **kw: Path("/bin/false"))
        with pytest.raises(RuntimeError, match="kube-proxy exited during start-up"):
            node._start_kube_proxy()
        assert [line.strip() for line in manager._routes_for(ranges[0])] == blackholed

        # only our own blackhole is swapped: another route of the range is refused
        subprocess.run(["ip", "route", "replace", ranges[0], "dev", "lo"], check=True)
        with pytest.raises(RuntimeError, match="not \\(only\\) blackholed"):
            manager.open_service_range()
        subprocess.run(["ip", "route", "replace", "blackhole", ranges[0]], check=True)

        # down, from the lo route: blackholed, then removed with the last holder
        manager.open_service_range()
        assert manager.remove_blackhole_routes() == list(ranges)
        assert not manager._routes_for(ranges[0]) and not manager._routes_for(ranges[1])
    finally:
        for cidr in ranges:
            subprocess.run(["ip", "route", "del", cidr], capture_output=True)
            subprocess.run(["ip", "route", "del", "blackhole", cidr], capture_output=True)


def test_status_reports_every_component_healthy_and_the_node_ready(cluster, kubectl):
    from lupita_dev.cluster import manager

    assert all(s["healthy"] and s["pid"] for s in manager.status().values()), manager.status()
    version = kubectl("version", "-o", "json").stdout
    assert '"gitVersion": "v1.34.2"' in version
    ready = kubectl("get", "node", manager.KWOK_NODE, "-o",
                    "jsonpath={.status.conditions[?(@.type=='Ready')].status}").stdout
    assert ready == "True"


def test_two_clusters_share_a_blackhole_and_the_last_one_down_removes_it(tmp_path, monkeypatch, spare_ranges):
    """Two checkouts' clusters (two cluster dirs) on one machine: the route is added once, kept
    while either holds it, removed when the last one lets go. Test-only ranges (blackholes drop
    packets: adding them is safe) and a test-only holder registry."""
    from lupita_dev.cluster import manager

    ranges = spare_ranges
    first, second = tmp_path / "first", tmp_path / "second"
    try:
        monkeypatch.setenv("LUPITA_CLUSTER_DIR", str(first))
        assert manager.add_blackhole_routes() == list(ranges)
        monkeypatch.setenv("LUPITA_CLUSTER_DIR", str(second))
        assert manager.add_blackhole_routes() == list(ranges)
        assert manager.route_holders(ranges[0]) == [str(first.resolve())]

        monkeypatch.setenv("LUPITA_CLUSTER_DIR", str(first))
        assert manager.remove_blackhole_routes() == []  # the second cluster still holds both
        assert all(manager._routes_for(cidr)[0].startswith(f"blackhole {cidr}") for cidr in ranges)

        monkeypatch.setenv("LUPITA_CLUSTER_DIR", str(second))
        assert manager.remove_blackhole_routes() == list(ranges)
        assert not any(manager._routes_for(cidr) for cidr in ranges)
    finally:
        for cidr in ranges:
            subprocess.run(["ip", "route", "del", "blackhole", cidr], capture_output=True)


def test_cluster_ports_follow_the_stack_port_offset():
    """A second checkout (LUPITA_STACK_PORT_OFFSET) runs its own control plane beside the first."""
    code = ("from lupita_dev.cluster import manager, node; "
            "print(manager.APISERVER_PORT, manager.ETCD_CLIENT_PORT, manager.KWOK_PORT, node.KUBELET_PORT)")
    ports = {}
    for offset in ("0", "100"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "LUPITA_STACK_PORT_OFFSET": offset})
        ports[offset] = [int(p) for p in out.stdout.split()]
    assert [b - a for a, b in zip(ports["0"], ports["100"])] == [100] * 4
