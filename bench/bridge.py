"""Media-bridge benchmark: N concurrent simulated calls through a real bridge into the real Kafka.

For each chunk size (default: 100 ms per Kafka record, the bridge's default, and 20 ms = one
record per telephony frame, the baseline) it starts a fresh ``lupita bridge`` child process,
streams the same synthesised Spanish call N times concurrently as fast as the bridge's credits
allow (no real-time pacing unless --speed is given), and measures:

- frames/s accepted (acknowledged, i.e. durable in Kafka) and ack latency p50/p99;
- bridge CPU-seconds per call-minute of audio (utime + stime of the bridge pid from /proc);
- lost frames: it reads the run's topics back and compares frames and records in Kafka per call
  with what was sent (must be zero), plus duplicates and chunk-sequence gaps.

Then it prints one table with a column per mode and the ratios of the first mode to the second.
Each mode uses its own topics (prefix ``bench-<run id>-c<chunk_ms>.``) and deletes them at the end
(``--keep-topics`` keeps them). The local stack must be up (``lupita stack up``).

    .venv/bin/python bench/bridge.py                      # 50 calls x 20 s, chunk 100 vs 20 ms
    .venv/bin/python bench/bridge.py --calls 200 --seconds 10 --json
    .venv/bin/python bench/bridge.py --calls 1000 --seconds 5 --call-timeout 600

Exit status: 0 when every call completed and no frame was lost, 1 otherwise, 2 for bad options.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FRAME_MS = 20  # what the simulator sends, like the telephony adapters


@dataclass
class ModeResult:
    """One chunk size's measurements."""

    chunk_ms: int
    calls: int
    ok: int
    failed: int
    errors_by_code: dict[str, int]
    not_accepted: int  # calls the bridge never answered with CallAccepted
    audio_s_per_call: float
    call_minutes: float  # of audio acked (both legs of one minute = one call-minute)
    frames_sent: int
    frames_acked: int
    wall_s: float
    frames_per_s: float  # acked frames per wall second
    realtime_factor: float  # call-seconds of audio carried per wall second
    ack_p50_ms: float | None
    ack_p99_ms: float | None
    ack_max_ms: float | None
    credit_waits: int
    bridge_cpu_s: float
    bridge_cpu_s_per_call_minute: float
    bridge_cores_busy: float  # bridge CPU-seconds per wall second
    loadgen_cpu_s: float
    kafka_records: int
    kafka_frames: int
    kafka_records_per_call_minute: float
    lost_frames: int  # sent but not in Kafka
    extra_frames: int  # in Kafka but not sent (should be 0: duplicates)
    duplicate_records: int
    chunk_seq_gaps: int
    calls_without_ended_event: int  # accepted calls with no call.lifecycle ended event
    bridge_log: str

    @property
    def clean(self) -> bool:
        return (
            self.failed == 0
            and self.lost_frames == 0
            and self.extra_frames == 0
            and self.duplicate_records == 0
            and self.chunk_seq_gaps == 0
            and self.calls_without_ended_event == 0
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=50, help="concurrent calls per mode (1..1000, default 50)")
    p.add_argument("--seconds", type=float, default=20.0, help="audio per call in seconds (default 20)")
    p.add_argument("--modes", default="100,20",
                   help="comma-separated chunk_ms values, one bridge run each (default 100,20: the "
                        "bridge's default vs one record per 20 ms frame)")
    p.add_argument("--speed", type=float, default=0.0,
                   help="0 = accelerated, as fast as credits allow (default); 1 = real time")
    p.add_argument("--rate", type=int, choices=[8000, 16000], default=8000, help="sample rate (default 8000)")
    p.add_argument("--codec", choices=["pcm16", "mulaw"], default="pcm16", help="payload codec (default pcm16)")
    p.add_argument("--ramp", type=float, default=500.0, metavar="CALLS_PER_S",
                   help="start at most this many calls per second (default 500)")
    p.add_argument("--call-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="deadline per call (default 300)")
    p.add_argument("--json", action="store_true", help=f"also write the results to {RESULTS_DIR}/")
    p.add_argument("--keep-topics", action="store_true", help="do not delete the run's Kafka topics")
    args = p.parse_args(argv)
    if not 1 <= args.calls <= 1000:
        p.error(f"--calls must be 1..1000, got {args.calls}")
    if args.seconds <= 0 or args.speed < 0:
        p.error("--seconds must be > 0 and --speed >= 0")
    try:
        args.modes = [int(m) for m in args.modes.split(",") if m.strip()]
    except ValueError:
        p.error(f"--modes must be comma-separated integers, got {args.modes!r}")
    if not args.modes or len(set(args.modes)) != len(args.modes):
        p.error("--modes needs one or more distinct chunk sizes")
    return args


def run_mode(chunk_ms: int, args, settings, token: str, stereo, codec: int, log_dir: Path) -> ModeResult:
    """One bridge child with ``chunk_ms`` on its own topics (``settings.topic_prefix``)."""
    from loadgen.bridgeproc import BridgeProcess
    from loadgen.runner import run_calls
    from loadgen.verify import read_calls
    from lupita.topics import AUDIO_CHUNKS, CALL_LIFECYCLE

    env = {**os.environ, "LUPITA_TOPIC_PREFIX": settings.topic_prefix}
    bridge = BridgeProcess(log_dir / f"bridge-chunk{chunk_ms}.log", chunk_ms=chunk_ms, env=env)
    print(f"[chunk_ms={chunk_ms}] starting bridge ...", file=sys.stderr, flush=True)
    bridge.start()
    try:
        print(f"[chunk_ms={chunk_ms}] {args.calls} calls x {args.seconds:g} s on {bridge.target} "
              f"(bridge pid {bridge.pid}) ...", file=sys.stderr, flush=True)
        cpu0, own0 = bridge.cpu_seconds(), time.process_time()
        report = asyncio.run(run_calls(
            bridge.target, token, stereo, args.rate, codec, calls=args.calls, frame_ms=FRAME_MS, speed=args.speed,
            call_id_prefix=f"bench-c{chunk_ms}", ramp_per_s=args.ramp, timeout_s=args.call_timeout,
        ))
        bridge_cpu, own_cpu = bridge.cpu_seconds() - cpu0, time.process_time() - own0
    finally:
        code = bridge.stop()
    if code not in (0, None):
        print(f"[chunk_ms={chunk_ms}] bridge exited with {code}: {bridge.log_tail()}", file=sys.stderr)

    ids = [r.call_id for r in report.results]
    sent = {r.call_id: r.frames_sent for r in report.results}
    print(f"[chunk_ms={chunk_ms}] reading the records back from Kafka ...", file=sys.stderr, flush=True)
    chunks, lifecycle = asyncio.run(read_calls(
        settings.kafka_bootstrap, settings.topic(AUDIO_CHUNKS), settings.topic(CALL_LIFECYCLE), ids,
        timeout_s=300,
    ))
    lost = sum(max(0, s - chunks.frames_of(cid)) for cid, s in sent.items())
    extra = sum(max(0, chunks.frames_of(cid) - s) for cid, s in sent.items())
    # minutes of call audio actually carried (acked frames, 20 ms each, two legs per call)
    minutes = report.frames_acked * FRAME_MS / 1000 / 2 / 60
    accepted = [r.call_id for r in report.results if r.accepted]
    lat = report.latency_ms
    return ModeResult(
        chunk_ms=chunk_ms, calls=report.calls, ok=report.ok, failed=report.failed,
        errors_by_code=report.errors_by_code, not_accepted=sum(not r.accepted for r in report.results),
        audio_s_per_call=report.audio_s_per_call,
        call_minutes=minutes, frames_sent=report.frames_sent, frames_acked=report.frames_acked,
        wall_s=report.wall_s, frames_per_s=report.frames_per_s,
        realtime_factor=minutes * 60 / report.wall_s if report.wall_s else 0.0,
        ack_p50_ms=lat["p50"], ack_p99_ms=lat["p99"], ack_max_ms=lat["max"],
        credit_waits=report.credit_waits, bridge_cpu_s=bridge_cpu,
        bridge_cpu_s_per_call_minute=bridge_cpu / minutes if minutes else 0.0,
        bridge_cores_busy=bridge_cpu / report.wall_s if report.wall_s else 0.0,
        loadgen_cpu_s=own_cpu, kafka_records=chunks.records, kafka_frames=sum(chunks.frames_of(c) for c in ids),
        kafka_records_per_call_minute=chunks.records / minutes if minutes else 0.0,
        lost_frames=lost, extra_frames=extra, duplicate_records=chunks.duplicates(),
        chunk_seq_gaps=chunks.gaps(), calls_without_ended_event=sum(1 for c in accepted if c not in lifecycle.ended),
        bridge_log=str(bridge.log_path),
    )


# table rows: (label, attribute, format, ratio): ratio None = no ratio column, True/False = lower/higher is better
ROWS = [
    ("calls ok / failed", None, None, None),
    ("calls never accepted", "not_accepted", "{:,.0f}", None),
    ("frames sent", "frames_sent", "{:,.0f}", None),
    ("frames acked", "frames_acked", "{:,.0f}", None),
    ("wall time (s)", "wall_s", "{:.1f}", True),
    ("frames/s accepted", "frames_per_s", "{:,.0f}", False),
    ("call audio x real time", "realtime_factor", "{:.1f}", False),
    ("ack latency p50 (ms)", "ack_p50_ms", "{:.1f}", True),
    ("ack latency p99 (ms)", "ack_p99_ms", "{:.1f}", True),
    ("ack latency max (ms)", "ack_max_ms", "{:.1f}", True),
    ("bridge CPU (s)", "bridge_cpu_s", "{:.2f}", True),
    ("bridge CPU-s / call-minute", "bridge_cpu_s_per_call_minute", "{:.3f}", True),
    ("bridge cores busy", "bridge_cores_busy", "{:.2f}", None),
    ("loadgen CPU (s)", "loadgen_cpu_s", "{:.2f}", True),
    ("Kafka records", "kafka_records", "{:,.0f}", True),
    ("Kafka records / call-minute", "kafka_records_per_call_minute", "{:,.0f}", True),
    ("frames in Kafka", "kafka_frames", "{:,.0f}", None),
    ("lost frames", "lost_frames", "{:,.0f}", None),
    ("duplicate records / gaps", None, None, None),
    ("calls without ended event", "calls_without_ended_event", "{:,.0f}", None),
]


def format_table(results: list[ModeResult]) -> str:
    heads = [f"chunk_ms={r.chunk_ms}" for r in results]
    two = len(results) == 2
    if two:
        heads.append(f"ratio {results[0].chunk_ms}/{results[1].chunk_ms}")
    width = max(len(label) for label, *_ in ROWS)
    col = max(16, *(len(h) for h in heads))
    lines = [" " * width + "".join(f"  {h:>{col}}" for h in heads)]
    for label, attr, fmt, _ in ROWS:
        if attr is None:
            if label.startswith("calls ok"):
                cells = [f"{r.ok} / {r.failed}" for r in results]
            else:
                cells = [f"{r.duplicate_records} / {r.chunk_seq_gaps}" for r in results]
            ratio = ""
        else:
            values = [getattr(r, attr) for r in results]
            cells = ["-" if v is None else fmt.format(v) for v in values]
            ratio = ""
            if two and _ is not None and all(v for v in values):
                ratio = f"{values[0] / values[1]:.2f}x"
        if two:
            cells.append(ratio)
        lines.append(f"{label:<{width}}" + "".join(f"  {c:>{col}}" for c in cells))
    return "\n".join(lines)


def delete_topics(settings, names: list[str]) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="lupita-bench")
    try:
        existing = set(admin.list_topics())
        doomed = [n for n in names if n in existing]
        if doomed:
            admin.delete_topics(doomed)
    finally:
        admin.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from lupita.cli import load_stack_env

    load_stack_env()  # the local stack's endpoints and dev token, as every `lupita` command does

    from loadgen import synth
    from loadgen.frames import codec_from_name, fit_duration
    from loadgen.settings import LoadgenSettings
    from lupita.topics import AUDIO_CHUNKS, CALL_LIFECYCLE, ensure_topics

    run_id = uuid.uuid4().hex[:8]
    settings = LoadgenSettings()
    token = settings.first_token
    if not token:
        print("error: no bearer token: run `lupita stack up` (writes .stack/env) or set LUPITA_BRIDGE_TOKENS",
              file=sys.stderr)
        return 2
    stereo = fit_duration(
        synth.synthesize_dialogue(synth.DEFAULT_SCRIPT, args.rate, cache_dir=settings.cache_dir),
        args.rate, args.seconds,
    )
    codec = codec_from_name(args.codec)
    load_before = os.getloadavg()
    results: list[ModeResult] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lupita-bench-") as logs:
        for chunk_ms in args.modes:
            # each mode on its own topics, so reading back scans only its records
            mode_settings = settings.model_copy(update={"topic_prefix": f"bench-{run_id}-c{chunk_ms}."})
            topics = [mode_settings.topic(AUDIO_CHUNKS), mode_settings.topic(CALL_LIFECYCLE)]
            try:
                ensure_topics(mode_settings, (AUDIO_CHUNKS, CALL_LIFECYCLE))
            except Exception as exc:  # noqa: BLE001 (any client error means the same here)
                print(f"error: Kafka at {settings.kafka_bootstrap} is not reachable ({exc!r}); "
                      f"start the stack with `lupita stack up`", file=sys.stderr)
                return 2
            try:
                result = run_mode(chunk_ms, args, mode_settings, token, stereo, codec, Path(logs))
            finally:
                if not args.keep_topics:
                    delete_topics(mode_settings, topics)
            results.append(result)
            if not result.clean:
                lines = Path(result.bridge_log).read_text(errors="replace").splitlines()
                problems = [ln for ln in lines if '"level": "warning"' in ln or '"level": "error"' in ln]
                print(f"[chunk_ms={chunk_ms}] bridge warnings/errors ({len(problems)}):", file=sys.stderr)
                print("\n".join(problems[-20:]), file=sys.stderr)
    load_after = os.getloadavg()

    machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
               f"load average {load_before[0]:.2f} before / {load_after[0]:.2f} after")
    print(f"media-bridge benchmark: {args.calls} concurrent calls (started at <= {args.ramp:g}/s) x "
          f"{args.seconds:g} s of audio, {args.rate} Hz {args.codec}, 20 ms frames, "
          f"{'accelerated (no pacing)' if args.speed == 0 else f'speed {args.speed:g}x'}")
    print(f"machine: {machine}")
    print(format_table(results))
    if len(results) == 2:
        print(f"ratios are chunk_ms={results[0].chunk_ms} / chunk_ms={results[1].chunk_ms} "
              f"(for rates higher is better, for latency, CPU and records lower is better)")
    for r in results:
        if r.errors_by_code:
            print(f"chunk_ms={r.chunk_ms} errors: {r.errors_by_code}")
        if r.not_accepted:
            print(f"chunk_ms={r.chunk_ms}: {r.not_accepted} calls were never accepted. CANCELLED after about "
                  f"30 s means gRPC core dropped streams the bridge's saturated event loop had not picked up "
                  f"(grpc.server_max_unrequested_time_in_server); start fewer calls or ramp slower (--ramp)")
    print(f"total bench time {time.monotonic() - t0:.0f} s")
    if args.json:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out = RESULTS_DIR / f"bridge-{time.strftime('%Y%m%d-%H%M%S')}-{args.calls}calls.json"
        out.write_text(json.dumps({
            "bench": "bridge",
            "args": {k: v for k, v in vars(args).items()},
            "machine": machine,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "max_rss_mb_loadgen": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "modes": [{k: v for k, v in asdict(r).items() if k != "bridge_log"} for r in results],
        }, indent=2))
        print(f"results written to {out}")
    return 0 if all(r.clean for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
