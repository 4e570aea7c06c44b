"""Fixtures of the gateway tests (helpers in gwkit.py; the bridge side in tests/kit/bridgekit.py)."""

from __future__ import annotations

import pytest
import pytest_asyncio
from chimekit import aws_env, restore_env

from bridgekit import RunningBridge, start_bridge, stop_bridge
from telephony_gateway import kvs_sim


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def bridge(stack_env) -> RunningBridge:
    """One in-process media bridge per module, on the real Kafka, with production-like flow
    control (50 credits, partial chunks flushed after 250 ms)."""
    running = await start_bridge(initial_credits=50, max_linger_ms=250)
    yield running
    await stop_bridge(running)


@pytest.fixture(scope="module")
def chime_aws():
    """Throwaway AWS credentials and region for boto3 (it signs every request to the KVS stand-in)."""
    saved = aws_env()
    yield
    restore_env(saved)


@pytest_asyncio.fixture(loop_scope="session")
async def kvs(chime_aws):
    """The local stand-in for KVS's GetDataEndpoint/GetMedia."""
    server = await kvs_sim.KvsServer().start()
    yield server
    await server.close()
