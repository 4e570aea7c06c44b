"""Run the context API under uvicorn until SIGTERM / SIGINT: stop accepting, let in-flight
requests finish (up to ``context_api_drain_seconds``), close the Postgres pool, exit 0. Meanwhile
the erasure sweeper runs every ``context_api_erasure_sweep_interval_seconds``, and (unless
``context_api_callbacks_enabled`` is off) the callbacks dispatcher publishes due callbacks to
``callbacks.due`` (:mod:`context_api.callbacks_due`); both stop with the server, the dispatcher
after finishing the round it is in (its transaction commits or rolls back, nothing half-done).

With ``context_api_workers`` > 1, :mod:`context_api.workers` runs :func:`serve` once per worker
process on a listening socket they share (``sock``); only worker 0 runs the sweeper and the
dispatcher (``background``), and the parent serves the metrics of all of them (``metrics`` off here)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

import uvicorn

from context_api.app import create_app
from context_api.callbacks_due import Dispatcher, dispatch_callbacks
from context_api.erasure import Eraser
from context_api.settings import ContextApiSettings
from lupita.metrics import serve_metrics

log = logging.getLogger("context_api")


async def sweep_erasures(app, settings: ContextApiSettings) -> None:
    """Every ``context_api_erasure_sweep_interval_seconds`` (0 = off), from start: delete the retained
    objects of erased people whose legal retention has ended (:meth:`Eraser.sweep`)."""
    interval = settings.context_api_erasure_sweep_interval_seconds
    if not interval:
        return
    eraser = Eraser(settings)
    while True:
        try:
            await asyncio.to_thread(eraser.sweep, app.state.pool, settings.context_api_erasure_timeout_seconds)
        except Exception as exc:  # noqa: BLE001 - a store down: the next round tries again
            log.warning("erasure sweep failed", extra={"stage": "erasure-sweep", "error": type(exc).__name__})
        await asyncio.sleep(interval)  # the schedule itself, not a wait for some other event


async def serve(settings: ContextApiSettings, *, sock: socket.socket | None = None, worker: int | None = None,
                background: bool = True, metrics: bool = True) -> int:
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.context_api_host, port=settings.context_api_port,
        log_config=None, access_log=False, lifespan="off", server_header=False,
        timeout_graceful_shutdown=settings.context_api_drain_seconds,
        h11_max_incomplete_event_size=64 * 1024,
    )
    server = uvicorn.Server(config)
    # uvicorn handles SIGTERM/SIGINT itself and re-raises the signal once it has shut down: with
    # these no-op handlers installed first, the re-raise does not kill the process (exit 0).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    if metrics:
        serve_metrics(settings.context_api_metrics_port, settings.context_api_host)
    task = asyncio.create_task(server.serve(sockets=[sock] if sock is not None else None))
    while not server.started and not task.done():
        await asyncio.sleep(0.02)
    if server.started:
        port = server.servers[0].sockets[0].getsockname()[1]
        log.info("context api listening", extra={"stage": "startup", "host": settings.context_api_host,
                                                  "port": port, "auth_mode": settings.context_api_auth_mode,
                                                  "worker": worker})
    sweeping = asyncio.create_task(sweep_erasures(app, settings)) if server.started and background else None
    dispatcher = (Dispatcher(settings)
                  if server.started and background and settings.context_api_callbacks_enabled else None)
    dispatching = asyncio.create_task(dispatch_callbacks(dispatcher)) if dispatcher is not None else None
    if server.started:
        log.info("context api background tasks", extra={"stage": "startup", "worker": worker,
                                                         "erasure_sweeper": sweeping is not None,
                                                         "callbacks_dispatcher": dispatcher is not None})
    try:
        await task
    finally:
        if sweeping is not None:
            sweeping.cancel()
        if dispatching is not None:
            dispatching.cancel()
            await asyncio.gather(dispatching, return_exceptions=True)
            await asyncio.to_thread(dispatcher.close)  # waits for a round in flight
        await app.state.gateway.close()
        await app.state.tools.past.close()
        app.state.pool.close()
    if not server.started:
        log.error("context api did not start", extra={"stage": "startup", "worker": worker})
        return 1
    log.info("context api stopped", extra={"stage": "shutdown", "worker": worker})
    return 0
