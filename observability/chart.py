"""Render charts/lupita with the real helm (cached build of helm.sh/helm/v3 from the Go module proxy).

Used by the observability tests to read what the chart really produces (ServiceMonitors, the
PrometheusRules, the dashboard ConfigMaps, the KEDA prometheus triggers) instead of its templates.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "lupita"
KUBE_VERSION = "1.34.2"
# The custom resources whose CRDs the chart checks for (.Capabilities.APIVersions.Has).
MONITORING_APIS = ("monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule")
KEDA_APIS = ("keda.sh/v1alpha1/ScaledObject",)


def helm() -> Path:
    from lupita_dev.cluster.tools import ensure

    return ensure("helm")


def render(*, values: Iterable[Path] = (), set_values: Iterable[str] = (), api_versions: Iterable[str] = (),
           namespace: str = "lupita", release: str = "lupita") -> list[dict[str, Any]]:
    """``helm template`` of the chart: the parsed manifests (raises with helm's message on failure)."""
    cmd = [str(helm()), "template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION]
    for path in values:
        cmd += ["--values", str(path)]
    for item in set_values:
        cmd += ["--set", item]
    for api in api_versions:
        cmd += ["--api-versions", api]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"helm template failed ({out.returncode}): {out.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]
