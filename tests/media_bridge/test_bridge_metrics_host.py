"""The bridge's Prometheus endpoint listens where ``LUPITA_METRICS_HOST`` says, not on every address.

Under host networking the pod's addresses are the node's: the chart sets the listen address to the
node's own (status.hostIP) so /metrics is not opened on every interface of the node. Here a real
``lupita bridge`` child binds its metrics to 127.0.0.2 (a loopback address, like 127.0.0.1): the
endpoint answers there and the same port on 127.0.0.1 refuses the connection.
"""

from __future__ import annotations

import asyncio
import os
import urllib.error
import urllib.request

import pytest
from procs import bridge_process, free_port

from bridgekit import SERVING, health_status

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]


def scrape_at(host: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
        return r.read().decode()


async def test_metrics_listen_only_on_the_configured_address(stack_env, tmp_path):
    import grpc

    port = free_port()
    proc = bridge_process("metrics-host-bridge", tmp_path, env={**os.environ, "LUPITA_METRICS_HOST": "127.0.0.2"},
                          extra_args=["--metrics-port", str(port)])
    await asyncio.to_thread(proc.start)
    channel = grpc.aio.insecure_channel(proc.target)
    try:
        assert await health_status(channel) == SERVING  # metrics are served once the bridge started
        text = await asyncio.to_thread(scrape_at, "127.0.0.2", port)
        assert "lupita_bridge_active_calls 0.0" in text.splitlines()
        with pytest.raises(urllib.error.URLError) as refused:
            await asyncio.to_thread(scrape_at, "127.0.0.1", port)
        assert isinstance(refused.value.reason, ConnectionRefusedError), refused.value
    finally:
        await channel.close()
        proc.stop()


def test_the_setting_defaults_to_every_address_and_reads_its_variable(monkeypatch):
    from media_bridge.settings import BridgeSettings

    monkeypatch.setenv("LUPITA_ALLOW_UNAUTHENTICATED", "true")
    monkeypatch.delenv("LUPITA_METRICS_HOST", raising=False)
    assert BridgeSettings().metrics_host == "0.0.0.0"
    monkeypatch.setenv("LUPITA_METRICS_HOST", "10.245.0.1")
    assert BridgeSettings().metrics_host == "10.245.0.1"
