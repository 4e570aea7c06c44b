"""Prometheus exposition shared by every long-lived process (names: ``lupita_<thing>_<unit>``)."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

log = logging.getLogger(__name__)


def serve_metrics(port: int, host: str = "0.0.0.0") -> None:
    """Expose ``/metrics`` on ``host:port`` from a daemon thread (port 0 disables it)."""
    if port:
        start_http_server(port, addr=host)
        log.info("metrics listening", extra={"port": port})
