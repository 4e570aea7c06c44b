"""The recorder worker as a child process for tests (``python -m stream_processor``)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Recorder timing for tests: everything that waits is seconds, not minutes.
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
    # The recorder tests run the recorder alone (the vad/transcriber tests pass their own stages).
    "LUPITA_STAGES": "recorder",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RecorderWorker:
    proc: subprocess.Popen
    port: int
    log_path: Path
    app_id: str
    part_size_bytes: int = int(WORKER_ENV["LUPITA_RECORDER_PART_SIZE_MIB"]) * 1024 * 1024

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Current value of one sample (0 if absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def logs(self, call_id: str | None = None) -> list[dict]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if call_id is None or rec.get("call_id") == call_id:
                out.append(rec)
        return out

    def alive(self) -> bool:
        return self.proc.poll() is None


def start_worker(
    workdir: Path, app_id: str, *, timeout: float = 90.0, env_extra: dict[str, str] | None = None
) -> RecorderWorker:
    """``python -m stream_processor`` (= ``lupita worker``) as a child; returns once /readyz is 200."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(os.environ, **WORKER_ENV)
    env.update(
        LUPITA_APP_ID=app_id,
        LUPITA_METRICS_PORT=str(port),
        LUPITA_METRICS_HOST="127.0.0.1",
        LUPITA_DATA_DIR=str(workdir / "data"),
        LUPITA_INSTANCE_NAME="recorder-test",
    )
    env.update(env_extra or {})
    log_path = workdir / f"worker-{uuid.uuid4().hex[:6]}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream_processor"], env=env, cwd=ROOT,
            stdout=log_file, stderr=subprocess.STDOUT,
        )
    worker = RecorderWorker(proc, port, log_path, app_id)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return worker
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            stop_worker(worker)
            raise RuntimeError(f"worker not ready after {timeout:.0f} s:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.25)


def stop_worker(worker: RecorderWorker, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    if worker.proc.poll() is None:
        worker.proc.send_signal(sig)
        try:
            worker.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait(timeout=10)
    return worker.proc.returncode
