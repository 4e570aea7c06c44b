"""A scripted HTTP API server for the cloud-backend tests (OpenAI, Deepgram, Anthropic wire formats).

``http.server`` in a thread on 127.0.0.1 (ephemeral port). Each POST is recorded and answered with
the next scripted answer: ``(status, headers, payload)`` or ``(status, headers, payload, delay_s)``,
or a callable taking the parsed request body and returning such a tuple. An unscripted request gets
status 599 with ``unscripted`` as its body, which makes the test fail.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: Any  # parse_body(raw bytes)


class ScriptedApi:
    def __init__(
        self,
        *,
        parse_body: Callable[[bytes], Any] = lambda raw: raw,
        default_headers: dict[str, str] | None = None,
        unscripted: bytes = b'{"error": "unscripted request"}',
    ) -> None:
        self.script: deque[Any] = deque()
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()
        api = self
        headers0 = {"content-type": "application/json", **(default_headers or {})}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                url = urlsplit(self.path)
                body = parse_body(raw)
                with api.lock:
                    api.requests.append(Recorded("POST", url.path, parse_qs(url.query),
                                                 {k.lower(): v for k, v in self.headers.items()}, body))
                    answer = api.script.popleft() if api.script else (599, {}, unscripted)
                status, headers, payload, *rest = answer(body) if callable(answer) else answer
                if rest and rest[0]:
                    time.sleep(rest[0])
                try:
                    self.send_response(status)
                    for k, v in {**headers0, **headers}.items():
                        self.send_header(k, v)
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def answer(self, status: int, payload: object, *, delay: float = 0.0, **headers: str) -> None:
        """Script one answer; ``payload`` is JSON-encoded unless it is bytes; header names may use
        ``_`` for ``-`` (``retry_after="2"``)."""
        import json

        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.script.append((status, {k.replace("_", "-"): v for k, v in headers.items()}, body, delay))

    def reset(self) -> None:
        self.script.clear()
        self.requests.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
