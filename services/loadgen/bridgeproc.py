"""Run a real ``lupita bridge`` as a child process (for the integration tests and the benchmark).

The bridge listens on 127.0.0.1 on a free port it picks itself (``--port 0``); the port is
read from its "media bridge listening" log line. Its CPU time is read from
``/proc/<pid>/stat`` so a benchmark can charge the bridge alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_LISTENING = "media bridge listening"


class BridgeStartError(RuntimeError):
    """The bridge exited or did not listen in time (the message holds its last log lines)."""


def lupita_command() -> list[str]:
    """The ``lupita`` console script of this environment (falls back to ``python -m lupita.cli``)."""
    script = Path(sys.executable).with_name("lupita")
    return [str(script)] if script.exists() else [sys.executable, "-m", "lupita.cli"]


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process, from /proc/<pid>/stat (fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


class BridgeProcess:
    """``lupita bridge --host 127.0.0.1 --port 0 --metrics-port 0 [--chunk-ms N]`` as a child."""

    def __init__(
        self,
        log_path: Path,
        *,
        chunk_ms: int | None = None,
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        start_timeout_s: float = 60.0,
    ) -> None:
        self.log_path = Path(log_path)
        self.chunk_ms = chunk_ms
        self.env = dict(os.environ if env is None else env)
        self.extra_args = list(extra_args or [])
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def target(self) -> str:
        if self.port is None:
            raise RuntimeError("bridge not started")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("bridge not started")
        return self.proc.pid

    def start(self) -> "BridgeProcess":
        args = [*lupita_command(), "bridge", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"]
        if self.chunk_ms is not None:
            args += ["--chunk-ms", str(self.chunk_ms)]
        args += self.extra_args
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            port = self._listening_port()
            if port is not None:
                self.port = port
                return self
            if self.proc.poll() is not None:
                raise BridgeStartError(f"bridge exited with {self.proc.returncode}: {self.log_tail()}")
            time.sleep(0.1)
        self.stop()
        raise BridgeStartError(f"bridge did not listen within {self.start_timeout_s:.0f}s: {self.log_tail()}")

    def _listening_port(self) -> int | None:
        for line in self.log_path.read_text(errors="replace").splitlines():
            if _LISTENING in line:
                try:
                    return int(json.loads(line)["port"])
                except (ValueError, KeyError, TypeError):
                    continue
        return None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (the bridge drains), SIGKILL if it has not exited after ``timeout_s``."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def __enter__(self) -> "BridgeProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
