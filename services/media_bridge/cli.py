"""``lupita bridge``: run the media-bridge gRPC server until SIGTERM (then drain and exit 0)."""

from __future__ import annotations

import argparse
import asyncio
import logging

from pydantic import ValidationError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--host", help="gRPC listen address (LUPITA_GRPC_HOST, default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="gRPC port; 0 = any free port (LUPITA_GRPC_PORT, default 50061)")
    parser.add_argument("--metrics-port", type=int, help="Prometheus port; 0 = off (LUPITA_METRICS_PORT, default 9101)")
    parser.add_argument("--chunk-ms", type=int, help="audio per Kafka record and leg (LUPITA_CHUNK_MS, default 100)")
    parser.add_argument("--drain-seconds", type=float, help="SIGTERM drain deadline (LUPITA_DRAIN_SECONDS, default 20)")


def build_settings(args: argparse.Namespace):
    from .settings import BridgeSettings

    overrides = {
        "grpc_host": getattr(args, "host", None),
        "grpc_port": getattr(args, "port", None),
        "metrics_port": getattr(args, "metrics_port", None),
        "chunk_ms": getattr(args, "chunk_ms", None),
        "drain_seconds": getattr(args, "drain_seconds", None),
    }
    return BridgeSettings(**{k: v for k, v in overrides.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    from lupita.logs import setup_logging

    from .server import serve

    setup_logging("media-bridge")
    try:
        settings = build_settings(args)
        settings.hmac_key_bytes, settings.encryption_key_bytes
    except ValidationError as exc:
        # errors without their input: the input holds secrets (keys, tokens)
        problems = [
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        ]
        logging.getLogger("media_bridge").error("invalid settings", extra={"stage": "startup", "errors": problems})
        return 2
    except ValueError as exc:
        logging.getLogger("media_bridge").error("invalid settings", extra={"stage": "startup", "errors": [str(exc)]})
        return 2
    setup_logging("media-bridge", settings.log_level)
    return asyncio.run(serve(settings))
