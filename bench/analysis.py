"""Hang-up → analysis stored (Postgres + Weaviate), p50/p95, through the real pipeline.

For each concurrency level N (``--calls 1,3``) the script streams N simulated Spanish calls in real
time (``--speed 1``; the simulator's script cut to ``--seconds``) through a real ``lupita bridge``
child into a real ``lupita worker`` child running every stage (recorder, vad, transcriber,
understanding), then waits for each call's ``companion_calls.processed_at``. The understanding
stage writes Weaviate first and Postgres last, so ``processed_at`` is the moment both stores have
the analysis. Latency per call = processed_at − the hang-up (``CallEnded.ended_at_us``, which the
simulator stamps when it sends its end message). The baseline in the same run is the recording:
``companion_calls.created_at`` − hang-up (the recorder's WAV + row), so the extra cost of the
understanding is the difference of the two.

    .venv/bin/python bench/analysis.py                    # 1 and 5 calls of 20 s (issue #10's levels, ~3-4 min)
    .venv/bin/python bench/analysis.py --calls 1,3 --seconds 30

The stack must be up (``.venv/bin/lupita stack up``). Each level uses its own topic prefix.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run_level(calls: int, seconds: float, speed: float, timeout_s: float) -> dict:
    from lupita.config import CommonSettings
    from lupita_dev.demo import Child
    from lupita.topics import ensure_topics
    from loadgen import synth
    from loadgen.bridgeproc import BridgeProcess
    from loadgen.frames import codec_from_name, fit_duration
    from loadgen.runner import run_calls
    from loadgen.settings import LoadgenSettings

    os.environ["LUPITA_TOPIC_PREFIX"] = f"bench-analysis-{uuid.uuid4().hex[:6]}."
    os.environ["LUPITA_APP_ID"] = f"bench-analysis-{uuid.uuid4().hex[:6]}"
    settings = CommonSettings()
    ensure_topics(settings)
    lg = LoadgenSettings()
    stereo = fit_duration(synth.synthesize_dialogue(synth.DEFAULT_SCRIPT, 8000, cache_dir=lg.cache_dir),
                          8000, seconds)
    ids = [f"bench-{uuid.uuid4().hex[:12]}" for _ in range(calls)]
    logs = ROOT / ".stack" / "logs"
    bridge = BridgeProcess(logs / "bench-analysis-bridge.log").start()
    worker = Child("bench-analysis-worker", ["worker", "--metrics-port", "0"])
    try:
        report = asyncio.run(run_calls(bridge.target, lg.first_token, stereo, 8000, codec_from_name("pcm16"),
                                       calls=calls, speed=speed, call_ids=ids, ramp_per_s=2.0))
        if report.failed:
            raise SystemExit(f"{report.failed} of {calls} calls failed at the bridge")
        rows = wait_rows(settings, ids, timeout_s, worker)
    finally:
        worker.stop()
        bridge.stop()
    analysis = [(r["processed_at"] - r["ended_at"]).total_seconds() for r in rows if r["processed_at"]]
    recording = [(r["created_at"] - r["ended_at"]).total_seconds() for r in rows]
    return {"calls": calls, "done": len(analysis), "analysis": analysis, "recording": recording}


def wait_rows(settings, ids: list[str], timeout_s: float, worker) -> list[dict]:
    import psycopg
    from psycopg.rows import dict_row

    deadline = time.monotonic() + timeout_s
    with psycopg.connect(settings.postgres_dsn.get_secret_value(), row_factory=dict_row, autocommit=True) as db:
        while True:
            worker.check_alive()
            rows = db.execute(
                "SELECT call_id, ended_at, created_at, processed_at FROM companion_calls WHERE call_id = ANY(%s)",
                (ids,),
            ).fetchall()
            if len(rows) == len(ids) and all(r["processed_at"] for r in rows):
                return rows
            if time.monotonic() > deadline:
                print(f"  timeout: {sum(1 for r in rows if r['processed_at'])}/{len(ids)} analysed", file=sys.stderr)
                return rows
            time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="1,5", help="comma list of concurrency levels (default 1,5)")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per call (default 20)")
    parser.add_argument("--speed", type=float, default=1.0, help="1 = real time (default)")
    parser.add_argument("--timeout", type=float, default=600.0, help="per level (default 600 s)")
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT / "services")]
    from lupita.cli import load_stack_env

    load_stack_env()
    levels = [int(x) for x in args.calls.split(",") if x.strip()]
    results = []
    load0 = os.getloadavg()[0]
    for n in levels:
        print(f"[{n} calls] {args.seconds:g} s each at {args.speed:g}x ...", file=sys.stderr, flush=True)
        results.append(run_level(n, args.seconds, args.speed, args.timeout))
    print(f"hang-up -> stored, seconds ({os.cpu_count()} CPUs, load average {load0:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end)")
    print(f"{'calls':>5} {'analysed':>8} | {'recording p50':>13} {'p95':>6} | {'analysis p50':>12} {'p95':>6} {'max':>6}")
    for r in results:
        print(f"{r['calls']:>5} {r['done']:>8} | {percentile(r['recording'], 50):13.2f} "
              f"{percentile(r['recording'], 95):6.2f} | {percentile(r['analysis'], 50):12.2f} "
              f"{percentile(r['analysis'], 95):6.2f} {max(r['analysis'], default=float('nan')):6.2f}")
    return 0 if all(r["done"] == r["calls"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
