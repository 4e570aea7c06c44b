"""A local stand-in for VAPI's listen socket (``call.monitor.listenUrl``), for the tests and the
benchmark: a websocket server on 127.0.0.1 that, for each connection to ``/<call id>/listen``,
sends a stereo recording as VAPI does (binary frames of interleaved PCM s16le, channel 0 the
customer, channel 1 the assistant, in real time), text frames of JSON between them, and closes
normally at the end. With ``listen_token`` set it refuses (401) an upgrade without
``Authorization: Bearer <token>``, like ``monitorPlan.listenAuthenticationEnabled``.
"""

from __future__ import annotations

import asyncio
import http
import json
import time
from dataclasses import dataclass, field

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response


@dataclass
class ListenScript:
    """What the socket of one call sends: ``stereo`` (n, 2) int16, [customer, assistant]."""

    stereo: np.ndarray
    sample_rate: int = 16000
    chunk_bytes: int = 1280  # 20 ms of 16 kHz stereo; any size works (frames need not align)
    speed: float = 1.0  # 1.0 = real time, 0 = as fast as the socket takes it
    start_message: dict | None = None  # a {"type": "start", ...} text frame first, when set
    text_frames: list[tuple[float, object]] = field(default_factory=list)  # (at seconds, JSON value or raw str)
    extra_binary: list[tuple[float, bytes]] = field(default_factory=list)  # raw bytes sent at a time
    close: bool = True  # close normally at the end (else keep the socket open: a stall)


class ListenServer:
    def __init__(self, *, listen_token: str = "") -> None:
        self.listen_token = listen_token
        self.scripts: dict[str, ListenScript] = {}
        self.server: Server | None = None
        self.port: int | None = None
        self.refused = 0

    def url(self, call_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/{call_id}/listen"

    async def start(self) -> "ListenServer":
        self.server = await serve(self._handle, "127.0.0.1", 0, process_request=self._check, max_size=None)
        self.port = next(iter(self.server.sockets)).getsockname()[1]
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def _check(self, conn: ServerConnection, request: Request) -> Response | None:
        parts = request.path.strip("/").split("/")
        if len(parts) != 2 or parts[1] != "listen" or parts[0] not in self.scripts:
            return conn.respond(http.HTTPStatus.NOT_FOUND, "no such call\n")
        if self.listen_token and request.headers.get("Authorization") != f"Bearer {self.listen_token}":
            self.refused += 1
            return conn.respond(http.HTTPStatus.UNAUTHORIZED, "unauthorized\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        script = self.scripts[ws.request.path.strip("/").split("/")[0]]
        pcm = np.ascontiguousarray(script.stereo, dtype="<i2").tobytes()
        bytes_per_s = script.sample_rate * 4
        events: list[tuple[float, int, object]] = []
        for at, value in script.text_frames:
            events.append((at, 0, value if isinstance(value, str) else json.dumps(value)))
        for at, raw in script.extra_binary:
            events.append((at, 1, raw))
        for off in range(0, len(pcm), script.chunk_bytes):
            events.append((off / bytes_per_s, 2, pcm[off:off + script.chunk_bytes]))
        events.sort(key=lambda e: (e[0], e[1]))
        t0 = time.perf_counter()
        if script.start_message is not None:
            await ws.send(json.dumps(script.start_message))
        try:
            for at, _, data in events:
                if script.speed > 0:
                    delay = t0 + at / script.speed - time.perf_counter()
                    if delay > 0.001:
                        await asyncio.sleep(delay)
                await ws.send(data)
            if script.close:
                await ws.close(1000, "call ended")
            else:
                await ws.wait_closed()
        except Exception:  # the gateway closed the socket first
            pass
