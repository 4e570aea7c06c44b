"""``lupita context-api``: serve the voice agent's webhook (VAPI server URL) until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging

from pydantic import ValidationError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--host", help="listen address (LUPITA_CONTEXT_API_HOST, default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="HTTP port; 0 = any free port (LUPITA_CONTEXT_API_PORT, default 8090)")
    parser.add_argument("--metrics-port", type=int,
                        help="Prometheus port; 0 = off (LUPITA_CONTEXT_API_METRICS_PORT, default 9103)")
    parser.add_argument("--workers", type=int,
                        help="worker processes sharing the port (LUPITA_CONTEXT_API_WORKERS, default 1)")


def build_settings(args: argparse.Namespace):
    from context_api.settings import ContextApiSettings

    overrides = {
        "context_api_host": getattr(args, "host", None),
        "context_api_port": getattr(args, "port", None),
        "context_api_metrics_port": getattr(args, "metrics_port", None),
        "context_api_workers": getattr(args, "workers", None),
    }
    return ContextApiSettings(**{k: v for k, v in overrides.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    from lupita.logs import setup_logging

    setup_logging("context-api")
    log = logging.getLogger("context_api")
    try:
        settings = build_settings(args)
        settings.hmac_key_bytes
    except ValidationError as exc:
        # errors without their input: the input holds secrets (keys, tokens)
        problems = [
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        ]
        log.error("invalid settings", extra={"stage": "startup", "errors": problems})
        return 2
    except ValueError as exc:
        log.error("invalid settings", extra={"stage": "startup", "errors": [str(exc)]})
        return 2
    setup_logging("context-api", settings.log_level)
    if settings.context_api_workers > 1:
        from context_api.workers import serve_workers

        return serve_workers(settings)
    from context_api.server import serve

    return asyncio.run(serve(settings))
