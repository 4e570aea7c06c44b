"""Build everything the chart and cluster tests need, ahead of them, in the background.

A cold machine must build the Kubernetes binaries, helm, kwok, etcd, promtool + Prometheus
(Go module proxy) and the service images (podman): ~30-40 CPU-minutes, which on 2 cores is
most of a CI run's budget when the first test that needs a tool builds it while the whole
suite waits. This module builds them detached at the lowest CPU priority (``nice -n 19``), on
the CPU the stack's set-up and the rest of the suite leave idle: ``scripts/setup.sh`` starts it
in CI (``CI=true``, or ``LUPITA_PREBUILD=1``), and a pytest session that collects the chart or
cluster tests together with other tests starts it when something is missing
(``tests/cluster/conftest.py``, which also runs the chart and cluster tests last). A test that
needs a tool still calls the same ``ensure`` functions: each build holds a per-tool file lock,
so the test finds the binary, or says "waiting for another process that is building ..." and
waits for this one.

Safe with two checkouts at once: one prebuild per cache directory (a lock; a second one
exits at once), the per-tool locks, and binaries that appear only by atomic rename. Every
step's wall and CPU time and the load average go to ``logs/build-times.log``; the steps'
output to ``logs/prebuild.log``.

    python -m lupita_dev.cluster.prebuild          # what scripts/setup.sh and the tests start
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from lupita_dev.stack.manager import ROOT

from . import tools
from .tools import say


def _prometheus() -> None:
    if str(ROOT) not in sys.path:  # observability/ is a top-level folder of the repository
        sys.path.insert(0, str(ROOT))
    from observability.promtool import ensure_built

    ensure_built("promtool")
    ensure_built("prometheus")


def _kubernetes() -> None:
    tools.ensure_all(("etcd", *tools.KUBE_CONTROL_PLANE, *tools.KUBE_NODE))


def _crds() -> None:
    from . import crds

    crds.crd_files()  # downloads the operators' modules into the Go module cache


def _images() -> None:
    from . import images, node

    images.build()
    node.pause_image()


def _node_packages() -> None:
    from . import node

    node.ensure_debian_packages()


# in the order the tests need them (tests/chart first, then tests/cluster)
STEPS: tuple[tuple[str, Callable[[], None]], ...] = (
    ("promtool + prometheus", _prometheus),
    ("etcd + Kubernetes", _kubernetes),
    ("kwok", lambda: tools.ensure("kwok")),
    ("helm", lambda: tools.ensure("helm")),
    ("CRD modules", _crds),
    ("real-node Debian packages", _node_packages),
    ("images", _images),
)


def missing() -> list[str]:
    """What a prebuild would build (cheap checks: cached binaries, podman images)."""
    from lupita_dev.stack.install import cache_dir as stack_cache_dir

    from . import images

    out = [name for name in tools.TOOLS if not (tools.bin_dir() / name).exists()]
    out += [name for name in ("promtool", "prometheus") if not (stack_cache_dir() / "bin" / name).exists()]
    if os.geteuid() == 0:  # the images are built with rootful podman only
        try:
            out += [img.name for img in (images.LUPITA_BASE, *images.SERVICES) if not images.image_exists(img.ref)]
        except (OSError, RuntimeError):  # podman not installed yet
            out.append("images")
    return out


def start_detached(log: Path | None = None) -> Path:
    """Start ``python -m lupita_dev.cluster.prebuild`` in the background at the lowest CPU
    priority, in its own session (it outlives the caller); returns its log file."""
    log = log or tools.log_dir() / "prebuild.log"
    with log.open("ab") as out:
        subprocess.Popen(["nice", "-n", "19", sys.executable, "-m", "lupita_dev.cluster.prebuild"],
                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                         start_new_session=True, cwd=ROOT)
    return log


def main() -> int:
    lockfile = tools.cache_dir() / "locks" / "prebuild.lock"
    lockfile.parent.mkdir(exist_ok=True)
    with lockfile.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("prebuild: another prebuild is running for this cache; nothing to do")
            return 0
        started = time.monotonic()
        say(f"prebuild started (pid {os.getpid()}, load average {os.getloadavg()[0]:.1f})")
        failed = []
        for name, step in STEPS:
            t0 = time.monotonic()
            try:
                step()
            except Exception:  # the test that needs it builds it again and shows the error there
                failed.append(name)
                say(f"prebuild: {name} FAILED:\n{traceback.format_exc()}")
                continue
            say(f"prebuild: {name} ready ({time.monotonic() - t0:.0f}s)")
        say(f"prebuild finished in {time.monotonic() - started:.0f}s"
            + (f"; failed: {', '.join(failed)}" if failed else ""))
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
