"""Fault scenarios with counts: what a killed worker or a stopped server loses or duplicates.

Simulated Spanish calls go through a real ``lupita bridge`` into four real ``lupita worker``
children (one per stage: recorder, vad, transcriber, understanding), on a stack of their own
(``.stack/faults``, ports +2000: stopping its servers never disturbs the shared stack). Per
scenario one fault is injected mid-call — SIGKILL of one stage's worker and a restart, or Kafka,
Postgres, MinIO or Weaviate stopped for ``--outage-s`` and started again — and then everything is
counted from the stores with their own clients (see ``tests/faults/faultkit.py``): frames sent vs in
Kafka, the WAV, segments, final transcripts, rows, facts, Weaviate objects, alerts against the
no-fault baseline run. One table row per scenario; the problems are listed under it.

    .venv/bin/python bench/faults.py                 # the pytest share: 1 call, 8 s outages (~4 min)
    .venv/bin/python bench/faults.py --full          # every scenario, 2 calls, 30 s outages (~15-25 min)
    .venv/bin/python bench/faults.py --scenarios kafka-outage --calls 3 --outage-s 30

Exit status: 0 when no scenario lost or duplicated anything, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the scenarios of the pytest share (tests/faults/test_faults.py)
QUICK = ("kill-recorder", "kill-transcriber", "kill-understanding", "postgres-outage", "minio-outage")


def main() -> int:
    sys.path[:0] = [str(ROOT / "services"), str(ROOT / "tests" / "faults"), str(ROOT / "tests" / "kit"),
                    str(ROOT / "tests" / "media_bridge")]
    from faultkit import SCENARIOS, FaultRig, expectation_from, format_evidence, format_problems, format_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true",
                        help="every scenario, --calls 2 and --outage-s 30 unless given")
    parser.add_argument("--scenarios", help=f"comma list of {', '.join(s for s in SCENARIOS if s != 'baseline')}")
    parser.add_argument("--calls", type=int, help="calls per scenario (default 1; 2 with --full)")
    parser.add_argument("--outage-s", type=float, help="how long a server stays down (default 8; 30 with --full)")
    parser.add_argument("--speed", type=float, default=1.0, help="1 = real time (default)")
    parser.add_argument("--settle-timeout-s", type=float, default=480.0,
                        help="per scenario, how long to wait for everything to be stored (default 480)")
    parser.add_argument("--keep-stack", action="store_true", help="leave the fault stack running afterwards")
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = parser.parse_args()
    names = ([s for s in SCENARIOS if s != "baseline"] if args.full and not args.scenarios
             else [s.strip() for s in (args.scenarios or ",".join(QUICK)).split(",") if s.strip()])
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; known: {sorted(SCENARIOS)}")
    calls = args.calls or (2 if args.full else 1)
    outage_s = args.outage_s if args.outage_s is not None else (30.0 if args.full else 8.0)

    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="lupita-faults-"))
    rig = FaultRig(workdir, outage_s=outage_s, speed=args.speed, settle_timeout_s=args.settle_timeout_s)
    results = []
    try:
        rig.start()
        baseline = rig.run(SCENARIOS["baseline"], calls)
        results.append(baseline)
        expected = expectation_from(baseline)
        print(f"[faults] expected alerts (the baseline's): {sorted(expected.alerts) or 'none'}",
              file=sys.stderr, flush=True)
        for name in names:
            if name != "baseline":
                results.append(rig.run(SCENARIOS[name], calls, expected))
    finally:
        rig.close(stop_stack=False if args.keep_stack else None)
    load = os.getloadavg()[0]
    print(f"\nfault scenarios: {calls} call(s) of {rig.audio.seconds:.1f} s each at {args.speed:g}x, "
          f"outages {outage_s:g} s; {os.cpu_count()} CPUs, load average {load:.1f}; "
          f"total {time.monotonic() - t0:.0f} s; worker logs in {workdir}")
    print(format_table(results))
    problems = format_problems(results)
    if problems:
        print("\nlost / duplicated, and notes:\n" + problems)
    evidence = format_evidence(results)
    if evidence:
        print("\nhow each fault showed in the workers' logs (most frequent warnings/errors):\n" + evidence)
    if args.json:
        print(json.dumps([r.row() for r in results], indent=2))
    return 0 if all(r.lost == 0 and r.duplicated == 0 and r.settled for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
