"""The platform's processes as the tests run them: ``lupita worker`` (``python -m stream_processor``)
and ``lupita bridge`` as child processes, their Prometheus metrics, and other ``lupita`` commands.

Every child writes its stdout and stderr into the session's log folder (:mod:`logscan`), which
the session scans for phone numbers at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import logscan
from waits import wait_for

ROOT = Path(__file__).resolve().parents[2]

# Worker timing for tests: everything that waits is seconds, not minutes.
WORKER_ENV = {
    "LUPITA_KAFKA_SESSION_TIMEOUT_SECONDS": "6",
    "LUPITA_KAFKA_HEARTBEAT_SECONDS": "1",
    "LUPITA_KAFKA_REBALANCE_TIMEOUT_SECONDS": "6",
    "LUPITA_KAFKA_COMMIT_INTERVAL_SECONDS": "0.5",
    "LUPITA_TABLE_STANDBY_REPLICAS": "0",
    "LUPITA_RECORDER_GRACE_SECONDS": "2",
    "LUPITA_RECORDER_ORPHAN_SECONDS": "2",
    "LUPITA_RECORDER_IDLE_SECONDS": "30",
    "LUPITA_RECORDER_STATE_RETENTION_SECONDS": "6",
    "LUPITA_RECORDER_TICK_SECONDS": "0.25",
    "LUPITA_RECORDER_RETRY_SECONDS": "2",
    "LUPITA_RECORDER_THREADS": "2",
    "LUPITA_RECORDER_PART_SIZE_MIB": "5",
    "LUPITA_RECORDER_DRAIN_SECONDS": "10",
    "LUPITA_LOG_LEVEL": "INFO",
    # The recorder tests run the recorder alone; the other stage tests pass their own stages.
    "LUPITA_STAGES": "recorder",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- metrics --------------------------------------------------------------------------------------


def scrape(port: int) -> str:
    """The text of ``http://127.0.0.1:<port>/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def metric_value(text: str, name: str, *, required: bool = False, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``: 0 if none (a counter
    not incremented yet), or an AssertionError when ``required`` (a gauge that must exist)."""
    from prometheus_client.parser import text_string_to_metric_families

    total, found = 0.0, False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
                found = True
    if required and not found:
        raise AssertionError(f"no sample {name}{labels or ''} in the metrics")
    return total


# --- the worker -----------------------------------------------------------------------------------


@dataclass
class Worker:
    proc: subprocess.Popen
    port: int
    log_path: Path
    app_id: str
    env: dict[str, str] = field(repr=False, default_factory=dict)
    part_size_bytes: int = int(WORKER_ENV["LUPITA_RECORDER_PART_SIZE_MIB"]) * 1024 * 1024

    @property
    def group(self) -> str:
        """Its Kafka consumer group: the Faust app id, i.e. topic prefix + app id."""
        return f"{self.env.get('LUPITA_TOPIC_PREFIX', '')}{self.app_id}"

    def metrics_text(self) -> str:
        return scrape(self.port)

    def metric(self, name: str, *, required: bool = False, **labels: str) -> float:
        """Current value of a counter/gauge (summed over the samples matching ``labels``)."""
        return metric_value(self.metrics_text(), name, required=required, **labels)

    def logs(self, call_id: str | None = None) -> list[dict]:
        """Its JSON log lines (of one call)."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if call_id is None or rec.get("call_id") == call_id:
                out.append(rec)
        return out

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def alive(self) -> bool:
        return self.proc.poll() is None


def start_worker(workdir: Path, app_id: str, *, stages: str | None = None, timeout: float = 120.0,
                 env_extra: dict[str, str] | None = None) -> Worker:
    """``python -m stream_processor`` (= ``lupita worker``) as a child with its own app id (consumer
    group) and data folder (``workdir``, kept across a restart with the same app id), the test
    timing of :data:`WORKER_ENV`, ``LUPITA_STAGES=stages`` (default: the recorder); returns once
    its ``/readyz`` answers 200."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(os.environ, **WORKER_ENV)
    env.update(
        LUPITA_APP_ID=app_id,
        LUPITA_METRICS_PORT=str(port),
        LUPITA_METRICS_HOST="127.0.0.1",
        LUPITA_DATA_DIR=str(workdir / "data"),
        LUPITA_INSTANCE_NAME=f"{app_id}-worker",
    )
    if stages is not None:
        env["LUPITA_STAGES"] = stages
    env.update(env_extra or {})
    log_path = logscan.log_path(f"worker-{app_id}", workdir)
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "stream_processor"], env=env, cwd=ROOT,
                                stdout=log_file, stderr=subprocess.STDOUT)
    worker = Worker(proc, port, log_path, app_id, env)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}:\n{worker.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    try:
        wait_for(f"worker {app_id} to be ready", ready, timeout=timeout, interval=0.25)
    except AssertionError:
        stop_worker(worker)
        raise RuntimeError(f"worker not ready after {timeout:.0f} s:\n{worker.log_tail()}") from None
    return worker


def stop_worker(worker: Worker, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    """Signal it (SIGTERM: it drains and exits 0) and wait; SIGKILL after ``timeout``."""
    if worker.proc.poll() is None:
        worker.proc.send_signal(sig)
        try:
            worker.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait(timeout=10)
    return worker.proc.returncode


# --- the bridge and other commands ----------------------------------------------------------------


def bridge_process(name: str = "bridge", fallback_dir: Path | None = None, **kwargs):
    """A ``lupita bridge`` child (``loadgen.bridgeproc.BridgeProcess``, not started yet: ``with
    bridge_process(...) as b`` or ``.start()``) logging into the session's log folder."""
    from loadgen.bridgeproc import BridgeProcess

    return BridgeProcess(logscan.log_path(name, fallback_dir), **kwargs)


def run_lupita(name: str, args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """``python -m lupita.cli ARGS`` (output captured as text, and copied to the session logs)."""
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 120)
    return logscan.run_logged(name, [sys.executable, "-m", "lupita.cli", *args], **kwargs)
