"""Waiting for a positive signal: one bounded polling helper for every test (sync and async).

A test never sleeps for a fixed time to let something happen: it polls a condition that becomes
true when the thing has happened (a row, a record, a metric, a committed offset) and fails with
what it was waiting for when a bound passes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


def wait_for(what: str, fn: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.2,
             alive: Callable[[], bool] | None = None, before: Callable[[], None] | None = None) -> Any:
    """Poll ``fn`` until it returns something truthy, and return that.

    ``before()`` runs before each poll (e.g. a topic reader's ``poll``); ``alive()`` False (a child
    process died) fails at once; after ``timeout`` seconds an AssertionError names ``what``.
    """
    deadline = time.monotonic() + timeout
    while True:
        if before is not None:
            before()
        value = fn()
        if value:
            return value
        if alive is not None and not alive():
            raise AssertionError(f"the process died while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


async def await_for(what: str, fn: Callable[[], Any], *, timeout: float = 15.0, interval: float = 0.05) -> Any:
    """:func:`wait_for` for async tests: polls ``fn`` (sync, or returning an awaitable) without
    blocking the event loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = fn()
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)
