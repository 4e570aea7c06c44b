"""promtool (Prometheus' rule checker and rule unit-test runner), built from its Go module and cached.

No release tarball can be downloaded here, and the dev stack runs no Prometheus, so promtool comes from
the Go module proxy like the stack's MinIO and Weaviate: ``go install`` into ``$LUPITA_CACHE_DIR/bin``
through the stack installer's :func:`lupita_dev.stack.install.go_binary` (first build ~5-10 minutes on
2 cores, then cached). The module version v0.316.0 is Prometheus v3.16.0 (Prometheus publishes its Go
module as v0.<major*100+minor>.<patch>).

    .venv/bin/python -m observability.promtool check rules charts/lupita/files/rules/*.yaml
    .venv/bin/python -m observability.promtool test rules observability/rules-tests/*.yaml
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROMTOOL_MODULE = "github.com/prometheus/prometheus/cmd/promtool@v0.316.0"


def ensure_promtool() -> Path:
    """The cached promtool binary, built on first use."""
    from lupita_dev.stack.install import go_binary

    return go_binary("promtool", PROMTOOL_MODULE)


def main(argv: list[str] | None = None) -> int:
    """Run promtool with the given arguments (installing it first if needed)."""
    return subprocess.call([str(ensure_promtool()), *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
