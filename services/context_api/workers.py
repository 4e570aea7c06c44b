"""Several context-API worker processes on one port (``LUPITA_CONTEXT_API_WORKERS`` > 1).

One uvicorn event loop saturates one core; the service keeps no shared state besides Postgres
(the past-conversations cache is a per-process cache), so it scales by processes:

- the parent binds and listens on the HTTP port once, then forks the workers, which accept from
  that one socket (one accept queue: a busy worker leaves connections to an idle one; a worker
  that stops leaves none stranded), and closes its own copy;
- worker 0 alone runs the callbacks dispatcher and the erasure sweeper (several dispatchers would
  be safe — rows are claimed with ``SKIP LOCKED`` — but would only poll Postgres N times as often);
- metrics: Prometheus multiprocess mode. The parent points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh
  private directory before anything imports ``prometheus_client``, and serves ``/metrics`` on the
  metrics port: counters and histograms summed over the workers, the backlog gauge of the live
  ones. One scrape target per pod, as with one process. The directory is removed at exit;
- SIGTERM / SIGINT to the parent: forwarded to every worker, each drains as a single process does
  (``context_api_drain_seconds``), the parent waits, kills what is left after the drain plus a
  margin, and exits 0 when every worker exited 0;
- a worker that dies on its own stops the others and the parent exits 1: the orchestrator
  restarts the pod (no half-sized service left running quietly).

Linux/POSIX only (``fork``); the parent starts no thread before forking.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time

from context_api.settings import ContextApiSettings

log = logging.getLogger("context_api")

_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
_KILL_MARGIN_S = 15.0


class _WorkerTag(logging.Filter):
    """Adds ``worker`` (its index) to every record a worker logs."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "worker") or record.worker is None:
            record.worker = self.index
        return True


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY on an accepted socket only when its
    # proto says TCP (proto 0 is skipped), and without it every small answer waited ~40 ms for
    # the client's delayed ACK (Nagle). The listener's own TCP_NODELAY is inherited on accept.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker(settings: ContextApiSettings, sock: socket.socket, index: int) -> int:
    """In the forked child: serve until SIGTERM, return the exit code."""
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerTag(index))
    from context_api.server import serve

    return asyncio.run(serve(settings, sock=sock, worker=index, background=index == 0, metrics=False))


def serve_workers(settings: ContextApiSettings) -> int:
    """The parent: fork ``context_api_workers`` workers, serve their metrics, supervise, return the exit code."""
    if "prometheus_client" in sys.modules:  # its value class is fixed at import: too late to switch
        raise RuntimeError("prometheus_client imported before the workers' metrics directory was set")
    metrics_dir = tempfile.mkdtemp(prefix="lupita-context-api-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        return _supervise(settings, metrics_dir)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(settings: ContextApiSettings, metrics_dir: str) -> int:
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    n = settings.context_api_workers
    try:
        sock = _listen(settings.context_api_host, settings.context_api_port)
    except OSError as exc:  # the port taken, an address not ours: as one process, exit 1
        log.error("context api did not start", extra={"stage": "startup", "error": type(exc).__name__,
                                                      "port": settings.context_api_port})
        return 1
    port = sock.getsockname()[1]
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    children: dict[int, int] = {}  # pid -> worker index
    for index in range(n):
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                code = _worker(settings, sock, index)
            except BaseException:  # noqa: BLE001 - the parent must see an exit code, never our stack
                log.exception("context api worker failed", extra={"stage": "startup", "worker": index})
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = index
    sock.close()  # the workers hold the listening socket now
    if settings.context_api_metrics_port:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=metrics_dir)
        start_http_server(settings.context_api_metrics_port, addr=settings.context_api_host, registry=registry)
        log.info("metrics listening", extra={"port": settings.context_api_metrics_port, "workers": n})
    log.info("context api workers started", extra={"stage": "startup", "workers": n, "port": port})

    code = 0
    stopping = False
    deadline = float("inf")

    def stop_all() -> None:
        nonlocal stopping, deadline
        stopping = True
        deadline = time.monotonic() + settings.context_api_drain_seconds + _KILL_MARGIN_S
        for pid in children:
            _signal(pid, signal.SIGTERM)

    while children:
        info = signal.sigtimedwait(_SIGNALS, 0.5)
        if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT) and not stopping:
            log.info("context api workers stopping", extra={"stage": "shutdown", "workers": len(children)})
            stop_all()
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            index = children.pop(pid, None)
            if index is None:
                continue
            multiprocess.mark_process_dead(pid, metrics_dir)
            rc = os.waitstatus_to_exitcode(status)
            if rc != 0 or not stopping:
                code = 1
                log.error("context api worker exited", extra={"stage": "shutdown", "worker": index, "rc": rc})
            if not stopping:
                stop_all()
        if children and time.monotonic() > deadline:
            for pid, index in children.items():
                log.error("context api worker killed after the drain", extra={"stage": "shutdown", "worker": index})
                _signal(pid, signal.SIGKILL)
            code = 1
            deadline = float("inf")
    log.info("context api workers stopped", extra={"stage": "shutdown", "rc": code})
    return code


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
