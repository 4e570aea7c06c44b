"""Closing a websocket whose reading may be paused (shared by the sources)."""

from __future__ import annotations

import asyncio


async def close_draining(ws, code: int = 1000, reason: str = "") -> None:
    """Close ``ws``, reading (and dropping) what the peer still sends meanwhile.

    The gateway stops reading a socket while the bridge has no credit for it (backpressure), so
    websockets' receive queue can be full when a call ends; the peer's close frame then waits
    behind unread messages and the close takes websockets' whole close timeout (10 s) instead of
    a round trip. Found with a bridge that refused the call: Twilio's socket took 10 s to close.
    """
    closing = asyncio.ensure_future(ws.close(code, reason))
    try:
        while not closing.done():
            await ws.recv()
    except Exception:  # ConnectionClosed: done; anything else: the socket is gone
        pass
    try:
        await closing
    except Exception:
        pass
