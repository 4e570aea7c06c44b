"""``lupita gateway``: run the telephony gateway (Twilio, VAPI, Chime -> media bridge) until SIGTERM.

Sources: Twilio Media Streams, VAPI live audio, Amazon Chime SDK Voice Connector streams; on
SIGTERM it drains and exits 0."""

from __future__ import annotations

import argparse
import asyncio
import logging

from pydantic import ValidationError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--host", help="listen address (LUPITA_GATEWAY_HOST, default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="websocket/health port; 0 = any free port (LUPITA_GATEWAY_PORT, default 8765)")
    parser.add_argument("--metrics-port", type=int, help="Prometheus port; 0 = off (LUPITA_GATEWAY_METRICS_PORT, default 9104)")
    parser.add_argument("--bridge", help="media bridge host:port (LUPITA_BRIDGE_TARGET, default 127.0.0.1:50061)")
    parser.add_argument("--drain-seconds", type=float, help="SIGTERM drain deadline (LUPITA_GATEWAY_DRAIN_SECONDS, default 20)")


def build_settings(args: argparse.Namespace):
    from .settings import GatewaySettings

    overrides = {
        "gateway_host": getattr(args, "host", None),
        "gateway_port": getattr(args, "port", None),
        "gateway_metrics_port": getattr(args, "metrics_port", None),
        "bridge_target": getattr(args, "bridge", None),
        "gateway_drain_seconds": getattr(args, "drain_seconds", None),
    }
    return GatewaySettings(**{k: v for k, v in overrides.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    from lupita.logs import setup_logging

    from .server import run_gateway

    setup_logging("telephony-gateway")
    log = logging.getLogger("telephony_gateway")
    try:
        settings = build_settings(args)
    except ValidationError as exc:
        # errors without their input: the input holds secrets (tokens)
        problems = [f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
                    for e in exc.errors(include_input=False, include_url=False)]
        log.error("invalid settings", extra={"stage": "startup", "errors": problems})
        return 2
    if not settings.bridge_token:
        log.error("invalid settings", extra={"stage": "startup", "errors": ["LUPITA_BRIDGE_TOKENS is empty: the bridge needs a bearer token"]})
        return 2
    setup_logging("telephony-gateway", settings.log_level)
    return asyncio.run(run_gateway(settings))
