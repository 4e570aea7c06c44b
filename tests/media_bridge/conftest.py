"""Fixtures of the media-bridge tests (helpers live in the test kit: tests/kit/bridgekit.py)."""

from __future__ import annotations

import pytest_asyncio

from bridgekit import RunningBridge, start_bridge, stop_bridge


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def bridge(stack_env) -> RunningBridge:
    """One in-process bridge per test module, on the real Kafka."""
    running = await start_bridge()
    yield running
    await stop_bridge(running)
