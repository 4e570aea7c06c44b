"""The CustomResourceDefinitions the chart's custom resources need, from their Go modules.

The operators themselves cannot run here (pods cannot reach an apiserver that advertises
127.0.0.1), but their CRDs make the API server validate our ScaledObjects, ServiceMonitors
and PrometheusRules against the operators' real schemas. Each CRD file comes out of the
module zip the Go module proxy serves (``go mod download``), cached in the Go module cache.
"""

from __future__ import annotations

from pathlib import Path

from . import tools

KEDA_MODULE = "github.com/kedacore/keda/v2@v2.21.0"
PROMETHEUS_OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator@v0.85.0"

# (module, folder inside it, file names: None = every *.yaml there)
SOURCES: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    (KEDA_MODULE, "config/crd/bases", None),
    (PROMETHEUS_OPERATOR_MODULE, "example/prometheus-operator-crd", (
        "monitoring.coreos.com_servicemonitors.yaml",
        "monitoring.coreos.com_podmonitors.yaml",
        "monitoring.coreos.com_prometheusrules.yaml",
        "monitoring.coreos.com_probes.yaml",
    )),
)


def crd_files() -> list[Path]:
    """The CRD manifests, read from the module cache (downloaded once)."""
    files: list[Path] = []
    for module, folder, names in SOURCES:
        base = tools.module_dir(module) / folder
        found = sorted(base.glob("*.yaml")) if names is None else [base / n for n in names]
        missing = [str(p) for p in found if not p.exists()]
        if missing or not found:
            raise RuntimeError(f"{module} has no CRD files {missing or folder!r}")
        files += found
    return files


def install(kubectl) -> list[str]:
    """Apply every CRD (server-side: some are larger than the client-side annotation allows)
    and wait until each is Established. ``kubectl(*args)`` runs kubectl against the cluster."""
    names = []
    for path in crd_files():
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        names.append(kubectl("get", "-f", str(path), "-o", "name").stdout.strip())
    kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    return names


def api_versions() -> list[str]:
    """``group/version`` and ``group/version/Kind`` of every served CRD version: what
    ``helm template --api-versions`` needs to render as if the CRDs were installed."""
    import yaml

    result: list[str] = []
    for path in crd_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if version.get("served", True):
                    gv = f"{spec['group']}/{version['name']}"
                    result += [gv, f"{gv}/{spec['names']['kind']}"]
    return sorted(set(result))
