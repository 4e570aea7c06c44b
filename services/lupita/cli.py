"""The ``lupita`` command: local stack, services, simulator, demo.

Sub-commands import their service lazily so ``lupita stack status`` stays fast.
For local development the stack's generated settings (``.stack/env``: endpoints, dev
secrets) are loaded as defaults; variables already set in the environment win.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# sub-command -> (module, help). Each module exposes add_arguments(parser) and run(args) -> int.
# lupita_dev (stack, demo) is development tooling: not in the service images.
COMMANDS = {
    "stack": ("lupita_dev.stack.cli", "install/start/stop the local Kafka, Postgres, Weaviate and MinIO"),
    "bridge": ("media_bridge.cli", "run the media-bridge gRPC server"),
    "worker": ("stream_processor.worker", "run the stream-processor Faust worker"),
    "call": ("loadgen.cli", "simulate one or many calls against the media bridge"),
    "migrate": ("lupita.db", "apply the Postgres migrations"),
    "demo": ("lupita_dev.demo", "push a simulated Spanish call end to end and show every store"),
    "replay": ("stream_processor.replay", "re-run recorded calls from S3 through the understanding stages"),
    "context-api": ("context_api.cli", "serve the voice agent's VAPI webhook (context, facts, callbacks)"),
    "gateway": ("telephony_gateway.cli", "bring VAPI, Twilio and Chime calls into the media bridge"),
    "cluster": ("lupita_dev.cluster.cli", "build/start/stop the local Kubernetes cluster for the chart"),
}


def stack_env_file() -> Path:
    return Path(os.environ.get("LUPITA_STACK_DIR", ROOT / ".stack")) / "env"


def load_stack_env() -> None:
    """Export ``KEY=VALUE`` lines of the local stack's env file unless already set."""
    path = stack_env_file()
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            os.environ.setdefault(key, value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lupita", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == chosen:  # only import the module that will run
            try:
                importlib.import_module(module).add_arguments(p)
            except ModuleNotFoundError as exc:
                if exc.name != "lupita_dev":
                    raise
                print(f"lupita {name}: development tooling, not installed here (a service image ships "
                      "without it); run it from a checkout after scripts/setup.sh", file=sys.stderr)
                return 2
            p.set_defaults(_module=module)
    args = parser.parse_args(argv)
    load_stack_env()
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
