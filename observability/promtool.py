"""promtool (Prometheus' rule checker and rule unit-test runner), built from its Go module and cached.

No release tarball can be downloaded here, and the dev stack runs no Prometheus, so promtool comes from
the Go module proxy like the stack's MinIO and Weaviate, into ``$LUPITA_CACHE_DIR/bin``, then cached.
promtool and the Prometheus server (:mod:`observability.prometheus`) are built together by one
``go install`` (their shared packages compiled once) with Prometheus' own ``remove_all_sd`` build tag:
the cloud service-discovery plugins (AWS, Azure, GCE, Kubernetes, ... SDKs: most of the compile) are
left out, since the rule checks and unit tests need none and the test server scrapes static targets.
Built under a file lock and moved into place by atomic rename, so concurrent test processes and
checkouts either find a complete binary or wait for the one building it. The module version v0.316.0
is Prometheus v3.16.0 (Prometheus publishes its Go module as v0.<major*100+minor>.<patch>).

    .venv/bin/python -m observability.promtool check rules charts/lupita/files/rules/*.yaml
    .venv/bin/python -m observability.promtool test rules observability/rules-tests/*.yaml
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROMETHEUS_VERSION = "v0.316.0"
PROMETHEUS_COMMANDS = ("promtool", "prometheus")
PROMTOOL_MODULE = f"github.com/prometheus/prometheus/cmd/promtool@{PROMETHEUS_VERSION}"
# the plugins/ files of the module: every service-discovery plugin but file and HTTP is behind it
BUILD_TAGS = "remove_all_sd"


def ensure_built(name: str) -> Path:
    """The cached ``promtool`` or ``prometheus`` binary; both are built on first use."""
    import os
    import tempfile
    import time

    from lupita_dev.cluster import tools
    from lupita_dev.stack.install import cache_dir

    bindir = cache_dir() / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    if (bindir / name).exists():
        return bindir / name
    with tools._locked("prometheus"):
        missing = [cmd for cmd in PROMETHEUS_COMMANDS if not (bindir / cmd).exists()]
        if missing:
            log = cache_dir() / "logs" / "prometheus-build.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            tools.say(f"building {' and '.join(missing)} {PROMETHEUS_VERSION} from the Go module proxy "
                      f"(first time only: several minutes, log: {log})")
            started = time.monotonic()
            with tempfile.TemporaryDirectory(dir=bindir, prefix=".build-") as tmp:
                tools._run_logged(
                    [tools._go(), "install", f"-tags={BUILD_TAGS}", "-ldflags=-s -w",
                     *(f"github.com/prometheus/prometheus/cmd/{cmd}@{PROMETHEUS_VERSION}" for cmd in missing)],
                    log, what=f"building {' + '.join(missing)}", env=tools._go_env(GOBIN=tmp))
                for cmd in missing:
                    os.replace(os.path.join(tmp, cmd), bindir / cmd)
            tools.say(f"{' and '.join(missing)} ready in {time.monotonic() - started:.0f}s")
    return bindir / name


def ensure_promtool() -> Path:
    """The cached promtool binary, built on first use (with the Prometheus server)."""
    return ensure_built("promtool")


def main(argv: list[str] | None = None) -> int:
    """Run promtool with the given arguments (installing it first if needed)."""
    return subprocess.call([str(ensure_promtool()), *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
