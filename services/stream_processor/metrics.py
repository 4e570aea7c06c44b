"""The worker's HTTP endpoint: Prometheus ``/metrics`` (every stage's metrics, each defined in
``stages/<stage>/metrics.py``) with the ``/livez`` and ``/readyz`` probes."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, generate_latest

log = logging.getLogger(__name__)

READY = Gauge("lupita_recorder_ready", "1 once the worker has its partitions and recovered its tables")


class Probes:
    """Liveness (the process answers) and readiness (partitions assigned, tables recovered)."""

    def __init__(self) -> None:
        self.ready = threading.Event()

    def set_ready(self, ready: bool) -> None:
        (self.ready.set if ready else self.ready.clear)()
        READY.set(1 if ready else 0)


def serve(port: int, host: str, probes: Probes) -> ThreadingHTTPServer | None:
    """``/metrics``, ``/livez`` and ``/readyz`` from a daemon thread (port 0 = off)."""
    if not port:
        return None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            elif path == "/livez":
                self._send(200, b"ok\n")
            elif path == "/readyz":
                ok = probes.ready.is_set()
                self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            else:
                self._send(404, b"not found\n")

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    log.info("metrics listening", extra={"stage": "startup", "port": server.server_address[1]})
    return server
