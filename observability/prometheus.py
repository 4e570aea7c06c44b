"""A real Prometheus server for the observability end-to-end test, built from its Go module and cached.

The test (tests/chart/test_observability_prometheus.py) points it at the platform's real processes on
127.0.0.1 with the chart's rule files, labels every target as the chart's ServiceMonitors would
(job = the component, namespace, pod, service) and runs every rule and dashboard query against what
it scraped. Built with promtool (:mod:`observability.promtool`): one ``go install`` of
``github.com/prometheus/prometheus/cmd/{promtool,prometheus}`` v0.316.0 (= Prometheus v3.16.0) into
``$LUPITA_CACHE_DIR/bin``, without the cloud service-discovery plugins (``remove_all_sd``) and without
the web UI's assets (not embedded by default): static targets and the HTTP API are all the test uses.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PROMETHEUS_MODULE = "github.com/prometheus/prometheus/cmd/prometheus@v0.316.0"


def ensure_prometheus() -> Path:
    """The cached Prometheus server, built on first use (with promtool: :mod:`observability.promtool`)."""
    from observability.promtool import ensure_built

    return ensure_built("prometheus")


@dataclass(frozen=True)
class Target:
    """One scrape target as a ServiceMonitor would label it."""

    component: str  # job label (ServiceMonitor jobLabel: app.kubernetes.io/component)
    address: str  # 127.0.0.1:<port>
    namespace: str
    pod: str
    service: str


def config(targets: list[Target], rule_files: list[Path], interval: str = "1s") -> dict[str, Any]:
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(p.resolve()) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": f"{t.component}-{t.pod}",
                "static_configs": [{"targets": [t.address],
                                    "labels": {"namespace": t.namespace, "pod": t.pod, "service": t.service}}],
                # the job label is the component, as jobLabel makes it under prometheus-operator
                "relabel_configs": [{"target_label": "job", "replacement": t.component}],
            }
            for t in targets
        ],
    }


class Prometheus:
    """``prometheus`` on 127.0.0.1:<port> with a config file and a throw-away TSDB under ``workdir``."""

    def __init__(self, workdir: Path, port: int, cfg: dict[str, Any]) -> None:
        self.workdir = workdir
        self.port = port
        self.cfg = cfg
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "prometheus.log"

    def start(self) -> "Prometheus":
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg_path = self.workdir / "prometheus.yml"
        cfg_path.write_text(yaml.safe_dump(self.cfg))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(ensure_prometheus()), f"--config.file={cfg_path}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        return self

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def api(self, path: str, **params: str | list[str]) -> Any:
        """GET /api/v1/<path>: the ``data`` of a success, else raises with Prometheus' error."""
        query = urllib.parse.urlencode(params, doseq=True)
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr, time=f"{time.time():.3f}")
        return data["result"] if data["resultType"] in ("vector", "matrix") else [data["result"]]
