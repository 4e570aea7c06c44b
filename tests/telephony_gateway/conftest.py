"""Fixtures of the gateway tests (helpers in gwkit.py; the bridge side in tests/kit/bridgekit.py)."""

from __future__ import annotations

import pytest_asyncio

from bridgekit import RunningBridge, start_bridge, stop_bridge


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def bridge(stack_env) -> RunningBridge:
    """One in-process media bridge per module, on the real Kafka, with production-like flow
    control (50 credits, partial chunks flushed after 250 ms)."""
    running = await start_bridge(initial_credits=50, max_linger_ms=250)
    yield running
    await stop_bridge(running)
