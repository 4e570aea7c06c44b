"""One local Kubernetes cluster (real control plane, kwok fake node) per test session.

``cluster`` brings it up through the same code as ``lupita cluster up`` (instant when it is
already running) and takes it down at the end only if this session started it, then checks
that ``down`` left nothing: no process, no route, no port. The cluster's binaries are built
once into the cache (``lupita cluster tools``); a cold build takes minutes, later sessions
start the cluster in seconds. ``crds`` installs the CustomResourceDefinitions of KEDA and the
Prometheus operator from their Go modules, so the chart's custom resources are validated
against the operators' own schemas.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "lupita"


# A cold cache builds the cluster's binaries or the images inside the first test that needs
# them (or waits for the background prebuild that scripts/setup.sh starts in CI), past the
# suite's 300 s per-test timeout.
COLD_BUILD_TIMEOUT_S = 1800
# the folders whose tests need the built tools: run after every other test of the session, so
# that in CI the background prebuild (services/lupita_dev/cluster/prebuild.py) has the rest of
# the suite's run time to finish before a test waits for it
BUILT_TOOLS_TESTS = (ROOT / "tests" / "chart", ROOT / "tests" / "cluster")


def _needs_built_tools(item) -> bool:
    return any(folder in Path(str(item.fspath)).parents for folder in BUILT_TOOLS_TESTS)


def pytest_collection_modifyitems(config, items) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(COLD_BUILD_TIMEOUT_S))
    # a stable partition: every other test first, in its collected order
    needing = [i for i in items if _needs_built_tools(i)]
    others = [i for i in items if not _needs_built_tools(i)]
    items[:] = others + needing
    # a whole-suite run on a cold machine: build the tools and images in the background while the
    # other tests run (scripts/setup.sh already started it in CI: a second start is a no-op)
    if needing and others and os.environ.get("LUPITA_PREBUILD") != "0":
        from lupita_dev.cluster import prebuild

        if prebuild.missing():
            log = prebuild.start_detached()
            reporter = config.pluginmanager.get_plugin("terminalreporter")
            if reporter:
                reporter.write_line(f"[cluster] building the chart and cluster tests' tools and images in the "
                                    f"background while the other tests run (nice 19; log: {log})")


# the host's network sysctls the real node must leave as they were (kube-proxy may set some)
NODE_SYSCTLS = ("net/ipv4/ip_forward", "net/ipv4/conf/all/route_localnet", "net/netfilter/nf_conntrack_max",
                "net/netfilter/nf_conntrack_tcp_timeout_established", "net/netfilter/nf_conntrack_tcp_be_liberal",
                "net/netfilter/nf_conntrack_tcp_timeout_close_wait")


def host_sysctls() -> dict[str, str | None]:
    out = {}
    for name in NODE_SYSCTLS:
        path = Path("/proc/sys") / name
        out[name] = path.read_text().strip() if path.exists() else None
    return out


@pytest.fixture(scope="session")
def sysctls_at_start(cluster) -> dict[str, str | None]:
    """The host's sysctls when the session's cluster came up (before any real node of it)."""
    return _SYSCTLS_AT_START


_SYSCTLS_AT_START: dict[str, str | None] = {}


@pytest.fixture(scope="session")
def cluster() -> Path:
    from lupita_dev.cluster import manager

    _SYSCTLS_AT_START.update(host_sysctls())
    was_up = manager.is_up()
    kubeconfig = manager.up()
    yield kubeconfig
    if was_up or os.environ.get("LUPITA_KEEP_CLUSTER") == "1":
        return
    manager.down()
    left = {name: s for name, s in manager.status().items() if s["pid"] or s["healthy"]}
    assert not left, f"`lupita cluster down` left processes running: {left}"
    # a range another checkout's cluster still holds keeps its blackhole (that cluster is up)
    routes = [manager._routes_for(cidr) for cidr in (manager.SERVICE_CIDR, manager.POD_CIDR)
              if not manager.route_holders(cidr)]
    assert not any(routes), f"`lupita cluster down` left routes: {routes}"


def _runner(binary: Path, kubeconfig: Path, env: dict[str, str] | None = None) -> Callable[..., subprocess.CompletedProcess]:
    def run(*args: str, check: bool = True, input: str | None = None, timeout: float = 300):
        out = subprocess.run([str(binary), *args], capture_output=True, text=True, input=input,
                             timeout=timeout, env={**os.environ, "KUBECONFIG": str(kubeconfig), **(env or {})})
        if check and out.returncode != 0:
            raise AssertionError(f"{binary.name} {' '.join(args)} failed (exit {out.returncode}):\n"
                                 f"{out.stderr.strip()}\n{out.stdout[-2000:]}")
        return out
    return run


@pytest.fixture(scope="session")
def kubectl(cluster: Path):
    from lupita_dev.cluster import tools

    return _runner(tools.ensure("kubectl"), cluster)


@pytest.fixture(scope="session")
def helm(cluster: Path, tmp_path_factory):
    """helm against the local cluster, its config, cache and data in a temporary folder."""
    from lupita_dev.cluster import tools

    home = tmp_path_factory.mktemp("helm")
    env = {f"HELM_{kind}_HOME": str(home / kind.lower()) for kind in ("CACHE", "CONFIG", "DATA")}
    return _runner(tools.ensure("helm"), cluster, env)


@pytest.fixture(scope="session")
def crds(kubectl) -> list[str]:
    from lupita_dev.cluster import crds as crds_mod

    return crds_mod.install(kubectl)


@pytest.fixture(scope="session")
def built_images() -> dict[str, str]:
    """The service images, built (or found in podman's layer cache) once per session."""
    from lupita_dev.cluster import images

    images.build()
    return {img.name: img.ref for img in images.SERVICES}
