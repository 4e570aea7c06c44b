#!/usr/bin/env bash
# One-time (and idempotent) set-up of a development machine:
#   - a Python 3.11 virtual environment in .venv with the project and its test extras,
#   - the protobuf/gRPC code generated from protos/ (never edited by hand),
#   - the local stack's servers installed and started (Kafka from Maven Central jars,
#     PostgreSQL from Debian, MinIO and Weaviate built from their Go modules), all cached
#     under ${LUPITA_CACHE_DIR:-~/.cache/lupita} so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || { echo "setup: $PYTHON not found (the project needs Python 3.11)" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
    echo "[setup] installing the project and its dependencies (pip)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[test]'
    # Silero VAD's ONNX model; --no-deps because the package's own import pulls torch,
    # which the platform does not use (onnxruntime runs the model)
    .venv/bin/python -m pip install --quiet --no-deps silero-vad==6.2.3
    rm -f .venv/.installed-* && touch "$stamp"
fi
echo "[setup] generating protobuf/gRPC code from protos/"
.venv/bin/python -m lupita.protogen
echo "[setup] local stack (first run installs and builds the servers: minutes; later: seconds)"
.venv/bin/lupita stack up
