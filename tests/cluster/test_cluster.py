"""``lupita cluster``: the local cluster itself (its teardown is checked by the ``cluster`` fixture)."""

from __future__ import annotations

import errno
import ipaddress
import socket

import pytest


@pytest.mark.parametrize("cidr_name", ["SERVICE_CIDR", "POD_CIDR"])
def test_cluster_address_ranges_cannot_leave_the_machine(cidr_name, cluster):
    """A socket to any address of the service or pod range is refused by the host's routing
    (blackhole route), so no packet for a cluster address follows the default route out.
    A UDP connect sends nothing, so this check is safe even if the route were missing."""
    from lupita_dev.cluster import manager

    network = ipaddress.ip_network(getattr(manager, cidr_name))
    for address in (network[10], network[-2]):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            with pytest.raises(OSError) as refused:
                sock.connect((str(address), 53))
            assert refused.value.errno == errno.EINVAL, refused.value


def test_status_reports_every_component_healthy_and_the_node_ready(cluster, kubectl):
    from lupita_dev.cluster import manager

    assert all(s["healthy"] and s["pid"] for s in manager.status().values()), manager.status()
    version = kubectl("version", "-o", "json").stdout
    assert '"gitVersion": "v1.34.2"' in version
    ready = kubectl("get", "node", manager.KWOK_NODE, "-o",
                    "jsonpath={.status.conditions[?(@.type=='Ready')].status}").stdout
    assert ready == "True"
