"""``lupita stack up|down|status``: the local real-server stack."""

from __future__ import annotations

import argparse
import json
import sys

from . import manager


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("up", "down", "status", "env"), help="what to do")
    parser.add_argument(
        "--only", nargs="+", choices=manager.COMPONENTS, help="limit `up` to these components"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable status")


def run(args: argparse.Namespace) -> int:
    if args.action == "up":
        try:
            manager.up(tuple(args.only) if args.only else manager.COMPONENTS)
        except RuntimeError as exc:  # a port taken, a server that did not start: said plainly
            print(f"[stack] {exc}", file=sys.stderr)
            return 1
        args.action = "status"
    if args.action == "down":
        stopped = manager.down()
        print(f"[stack] stopped: {', '.join(stopped) or 'nothing was running'}")
        return 0
    if args.action == "env":
        # endpoints and dev secrets, for `set -a; . <(lupita stack env)`; stays on the terminal
        for key, value in sorted(manager.stack_env().items()):
            print(f"{key}={value}")
        return 0
    st = manager.status()
    if args.only:
        st = {name: s for name, s in st.items() if name in args.only}
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        for name, s in st.items():
            state = "healthy" if s["healthy"] else "DOWN"
            pid = s["pid"] if s["pid"] else "-"
            print(f"{name:<9} {state:<8} 127.0.0.1:{s['port']:<6} pid {pid}")
    return 0 if all(s["healthy"] for s in st.values()) else 1
