"""Latency benchmark: end of speech → final transcript on Kafka, through a real ``lupita worker``.

A ``lupita worker`` child process (``LUPITA_STAGES=vad,transcriber``, production settings: VAD
defaults, partials after 4 s then every 2 s, stale partials skipped, Whisper base int8 with the
AsrSettings defaults) reads the run's own topics on the local Kafka. For each concurrency level
(``--calls 1,10,50``) the script streams that many simulated calls **in real time**, as a live
media bridge would: the simulator's Spanish check-in dialogue (``loadgen.synth.DEFAULT_SCRIPT``,
both legs, espeak-ng + sox telephone band, 8 kHz PCM16) cut to ``--seconds``, in 100 ms
``AudioChunk`` records per leg published when their last frame was captured (the bridge's own
``LegChunker``), call starts spread over ``--ramp`` seconds. It waits until every call's two
``leg_complete`` transcript events have arrived.

End of speech = the capture time of the last sample above -40 dBFS inside the segment (from the
synthesised audio itself, so it is the true end of the words, not the VAD's estimate).
Latencies, per FINAL segment:

- ``vad``: end of speech → its FINAL ``speech.segments`` record published (the VAD has to hear
  ``min_silence_ms`` = 300 ms of silence before it may close a segment, plus the chunking);
- ``final``: end of speech → its final ``TranscriptEvent`` published on ``transcripts``
  (``emitted_at_us``; the worker and this script share the machine's clock).

The worker process's CPU (utime + stime) over the level is reported as cores busy. The machine's
cores are shared with Kafka and this script (which paces the calls), so read the load average.
Finals are reported for both legs together and per leg (the person's and the agent's: the
transcriber schedules the person's first).

Configurations (``--config NAME=KEY=VALUE;KEY=VALUE``, repeatable): each gets its own worker with
those extra environment variables, run over the same levels one after the other in the same run
(e.g. today's per-segment path against trimmed windows + a short fallback ladder + packing):

    .venv/bin/python bench/latency.py --calls 1,4,10 --config today= \\
        --config new="LUPITA_ASR_ENCODER_WINDOW=trimmed;LUPITA_ASR_TEMPERATURES=[0.0,0.5];LUPITA_ASR_BEST_OF=2"

``NAME@REV=...`` runs that configuration's worker from the code of git revision REV (a worktree
with its protobuf modules generated, this environment's packages, removed afterwards): the baseline
of issue 10, the per-segment path just before its first change, measured in the same run rather
than imitated by settings (today's scheduler skips the partials that path decoded):

    .venv/bin/python bench/latency.py --calls 10 --seconds 60 --config base@e2d0fac= --config new=

    .venv/bin/python bench/latency.py                        # 1 and 10 calls x 20 s (~2 min)
    .venv/bin/python bench/latency.py --calls 1,10,50 --json  # 50 overloads 2 cores: minutes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
SPEECH_FLOOR = 0.01 * 32768  # -40 dBFS
CHUNK_MS = 100
FRAME_MS = 20

WORKER_ENV = {
    "LUPITA_STAGES": "vad,transcriber",
    "LUPITA_KAFKA_SESSION_TIMEOUT_SECONDS": "10",
    "LUPITA_KAFKA_HEARTBEAT_SECONDS": "1",
    "LUPITA_KAFKA_REBALANCE_TIMEOUT_SECONDS": "10",
    "LUPITA_KAFKA_COMMIT_INTERVAL_SECONDS": "1",
    "LUPITA_TABLE_STANDBY_REPLICAS": "0",
    "LUPITA_VAD_GRACE_SECONDS": "5",
    "LUPITA_LOG_LEVEL": "WARNING",
}


@dataclass
class Level:
    calls: int
    finals: int = 0
    calls_done: int = 0
    vad_ms: list[float] = field(default_factory=list)
    final_ms: list[float] = field(default_factory=list)
    person_ms: list[float] = field(default_factory=list)
    agent_ms: list[float] = field(default_factory=list)
    config: str = "default"
    partials: int = 0
    wall_s: float = 0.0
    worker_cpu_s: float = 0.0
    audio_s: float = 0.0
    load_before: float = 0.0
    load_after: float = 0.0
    timed_out: bool = False

    def pct(self, values: list[float], q: float) -> float | None:
        if not values:
            return None
        return float(np.percentile(np.asarray(values), q))

    def summary(self) -> dict:
        return {
            "calls": self.calls, "calls_done": self.calls_done, "finals": self.finals,
            "partials": self.partials, "timed_out": self.timed_out,
            "vad_p50_ms": self.pct(self.vad_ms, 50), "vad_p95_ms": self.pct(self.vad_ms, 95),
            "final_p50_ms": self.pct(self.final_ms, 50), "final_p95_ms": self.pct(self.final_ms, 95),
            "final_max_ms": max(self.final_ms) if self.final_ms else None,
            "person_p50_ms": self.pct(self.person_ms, 50), "person_p95_ms": self.pct(self.person_ms, 95),
            "agent_p50_ms": self.pct(self.agent_ms, 50), "agent_p95_ms": self.pct(self.agent_ms, 95),
            "config": self.config,
            "wall_s": round(self.wall_s, 1), "worker_cores_busy": round(self.worker_cpu_s / self.wall_s, 2)
            if self.wall_s else None,
            "worker_cpu_s_per_call_minute": round(self.worker_cpu_s / (self.audio_s / 60), 2) if self.audio_s else None,
            "load_before": self.load_before, "load_after": self.load_after,
        }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", default="1,10", help="comma-separated concurrency levels (default 1,10)")
    p.add_argument("--seconds", type=float, default=20.0, help="audio per call (default 20)")
    p.add_argument("--ramp", type=float, default=5.0, help="call starts spread over this many seconds (default 5)")
    p.add_argument("--rate", type=int, choices=[8000, 16000], default=8000)
    p.add_argument("--transcriber-threads", type=int, default=2,
                   help="LUPITA_TRANSCRIBER_THREADS and LUPITA_ASR_NUM_WORKERS of the worker (default 2)")
    p.add_argument("--vad-only", action="store_true",
                   help="run the worker with LUPITA_STAGES=vad and measure speech end -> segment only")
    p.add_argument("--asr-threads", type=int, default=1, help="LUPITA_ASR_THREADS: CPU threads per decode (default 1)")
    p.add_argument("--timeout", type=float, default=600.0, help="per level, after the last call ends (default 600)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--config", action="append", default=[],
                   help="NAME[@REV]=KEY=VALUE;KEY=VALUE: a worker configuration (repeatable; default: one, as "
                        "is); @REV runs the worker code of that git commit (a baseline in the same run)")
    p.add_argument("--json", action="store_true", help=f"also write the results to {RESULTS_DIR}/")
    p.add_argument("--keep-topics", action="store_true", help="do not delete the run's Kafka topics")
    args = p.parse_args(argv)
    try:
        args.calls = [int(c) for c in args.calls.split(",") if c.strip()]
    except ValueError:
        p.error(f"--calls must be comma-separated integers, got {args.calls!r}")
    if not args.calls or min(args.calls) < 1 or max(args.calls) > 500:
        p.error("--calls: levels between 1 and 500")
    if args.seconds <= 0 or args.ramp < 0:
        p.error("--seconds must be > 0 and --ramp >= 0")
    return args


# --- the worker --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_config(text: str) -> tuple[str, str | None, dict[str, str]]:
    """``NAME[@REV]=KEY=VALUE;...`` → (name, git revision or None, extra environment)."""
    head, _, rest = text.partition("=")
    name, at, rev = head.partition("@")
    if at and not rev:
        raise SystemExit(f"--config {text!r}: no git revision after '@'")
    env = {}
    for item in filter(None, (x.strip() for x in rest.split(";"))):
        key, _, value = item.partition("=")
        if not key.startswith("LUPITA_") or not _:
            raise SystemExit(f"--config {text!r}: {item!r} is not LUPITA_KEY=VALUE")
        env[key] = value
    return name or "default", rev or None, env


def checkout_revision(rev: str, dest: Path) -> Path:
    """The worker code of an earlier commit, for a baseline in the same run: a detached git
    worktree of ``rev`` at ``dest`` with its protobuf modules generated (they are not in git).
    It runs with this environment's packages; the worktree is removed by ``remove_revision``."""
    try:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(dest), rev],
                       check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"--config ...@{rev}: cannot check out {rev!r}: {exc.stderr.strip()}") from None
    gen = subprocess.run([sys.executable, "-m", "lupita.protogen"], cwd=dest, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(dest / "services")))
    if gen.returncode != 0:
        remove_revision(dest)
        raise SystemExit(f"--config ...@{rev}: its protobuf modules could not be generated "
                         f"(python -m lupita.protogen): {(gen.stderr or gen.stdout).strip()[-500:]}")
    return dest


def remove_revision(dest: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(dest)], capture_output=True)


@contextlib.contextmanager
def worker_code(rev: str | None, dest: Path) -> Iterator[Path]:
    """The checkout a configuration's worker runs: this one, or ``rev``'s worktree at ``dest``
    for as long as the configuration runs."""
    if not rev:
        yield ROOT
        return
    print(f"checking out {rev} ...", file=sys.stderr, flush=True)
    code = checkout_revision(rev, dest)
    try:
        yield code
    finally:
        remove_revision(code)


def start_worker(prefix: str, app_id: str, workdir: Path, threads: int, asr_threads: int,
                 vad_only: bool = False, extra_env: dict[str, str] | None = None,
                 code: Path = ROOT) -> subprocess.Popen:
    """A ``lupita worker`` on the run's topics; ``code``: the checkout whose ``services/`` it runs
    (this one, or an earlier commit's from ``checkout_revision``)."""
    port = free_port()
    env = dict(os.environ, **WORKER_ENV, LUPITA_TOPIC_PREFIX=prefix, LUPITA_APP_ID=app_id,
               LUPITA_METRICS_PORT=str(port), LUPITA_METRICS_HOST="127.0.0.1",
               LUPITA_DATA_DIR=str(workdir / "data"), LUPITA_INSTANCE_NAME="latency-bench",
               LUPITA_TRANSCRIBER_THREADS=str(threads), LUPITA_ASR_NUM_WORKERS=str(threads),
               LUPITA_ASR_THREADS=str(asr_threads))
    if vad_only:
        env["LUPITA_STAGES"] = "vad"
    env.update(extra_env or {})
    if code != ROOT:  # ahead of the editable install's path to this checkout
        env["PYTHONPATH"] = str(code / "services")
    log = open(workdir / "worker.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "stream_processor"], env=env, cwd=code,
                            stdout=log, stderr=subprocess.STDOUT)
    proc.metrics_port = port  # type: ignore[attr-defined]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}: see {workdir / 'worker.log'}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise RuntimeError("worker not ready after 120 s")


def metric(proc: subprocess.Popen, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{proc.metrics_port}/metrics", timeout=5) as r:  # type: ignore[attr-defined]
        text = r.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


# --- calls ------------------------------------------------------------------------------------


def call_records(call_id: str, stereo: np.ndarray, rate: int, t0_us: int, settings) -> tuple[bytes, list, bytes]:
    """(started event, [(publish at unix s, AudioChunk bytes)], ended event) as the bridge makes them."""
    from lupita.v1 import audio_pb2, media_bridge_pb2
    from media_bridge.chunker import LegChunker
    from media_bridge.publisher import ended_event, started_event
    from media_bridge.validation import check_start

    start = media_bridge_pb2.CallStart(
        call_id=call_id, direction=audio_pb2.DIRECTION_OUTBOUND, sample_rate_hz=rate,
        codec=audio_pb2.CODEC_PCM16, recording_consent=True, started_at_us=t0_us,
        caller=media_bridge_pb2.CallerMetadata(phone_number="+5219515550100", region="oaxaca",
                                               family_plan_id="plan-bench", language="es-MX",
                                               consent_source="ivr_prompt_v2"),
    )
    started = started_event(check_start(start), settings, received_at_us=t0_us)
    frame = rate * FRAME_MS // 1000
    chunks = []
    counts, frames = {}, {}
    for column, leg in enumerate((audio_pb2.LEG_LUPITA, audio_pb2.LEG_PERSON)):
        chunker = LegChunker(call_id=call_id, leg=leg, sample_rate_hz=rate, codec=audio_pb2.CODEC_PCM16,
                             chunk_ms=CHUNK_MS)
        for k in range(len(stereo) // frame):
            for c in chunker.add(k, t0_us + k * FRAME_MS * 1000,
                                 stereo[k * frame:(k + 1) * frame, column].astype("<i2").tobytes()):
                chunks.append(((c.start_ts_us + c.frame_count * FRAME_MS * 1000) / 1e6, c.SerializeToString()))
        tail = chunker.flush()
        if tail is not None:
            chunks.append(((tail.start_ts_us + tail.frame_count * FRAME_MS * 1000) / 1e6, tail.SerializeToString()))
        counts[leg], frames[leg] = chunker.next_chunk_seq, chunker.frames_total
    chunks.sort(key=lambda x: x[0])
    ended = ended_event(call_id, "hangup", ended_at_us=t0_us + len(stereo) * 1_000_000 // rate,
                        chunks=counts, frames=frames)
    return started.SerializeToString(), chunks, ended.SerializeToString()


async def run_level(n: int, args, settings, bridge_settings, stereo: np.ndarray, loud: dict[int, np.ndarray],
                    worker: subprocess.Popen, label: str) -> Level:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from lupita.topics import AUDIO_CHUNKS, CALL_LIFECYCLE, SPEECH_SEGMENTS, TRANSCRIPTS
    from lupita.v1 import audio_pb2, events_pb2

    level = Level(n, load_before=round(os.getloadavg()[0], 2))
    rng = random.Random(args.seed + n)
    call_ids = [f"lat-{label}-{n}-{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
    rate = args.rate
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True, acks="all",
                                linger_ms=2)
    consumer = AIOKafkaConsumer(settings.topic(SPEECH_SEGMENTS), settings.topic(TRANSCRIPTS),
                                bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                auto_offset_reset="latest", enable_auto_commit=False)
    await producer.start()
    await consumer.start()
    await consumer.seek_to_end()
    wanted = {c.encode() for c in call_ids}
    seg_emitted: dict[tuple, int] = {}  # (call, leg, seq) -> emitted_at_us of its FINAL segment
    seg_final: list[events_pb2.SpeechSegment] = []
    finals: list[events_pb2.TranscriptEvent] = []
    done_legs: set[tuple] = set()
    all_done = asyncio.Event()

    async def consume() -> None:
        async for rec in consumer:
            if rec.key not in wanted:
                continue
            if rec.topic == settings.topic(SPEECH_SEGMENTS):
                seg = events_pb2.SpeechSegment()
                seg.ParseFromString(rec.value)
                if seg.kind == events_pb2.SEGMENT_KIND_FINAL:
                    if (seg.call_id, seg.leg, seg.seq) not in seg_emitted:
                        seg_final.append(seg)
                    seg_emitted.setdefault((seg.call_id, seg.leg, seg.seq), seg.emitted_at_us)
                elif seg.kind == events_pb2.SEGMENT_KIND_END_OF_LEG and args.vad_only:
                    done_legs.add((seg.call_id, seg.leg))
                    if len(done_legs) == 2 * n:
                        all_done.set()
                continue
            ev = events_pb2.TranscriptEvent()
            ev.ParseFromString(rec.value)
            if ev.leg_complete:
                done_legs.add((ev.call_id, ev.leg))
                if len(done_legs) == 2 * n:
                    all_done.set()
            elif ev.is_partial:
                level.partials += 1
            else:
                finals.append(ev)

    async def one_call(call_id: str) -> None:
        await asyncio.sleep(rng.uniform(0, args.ramp) if n > 1 else 0)
        t0_us = time.time_ns() // 1000
        started, chunks, ended = call_records(call_id, stereo, rate, t0_us, bridge_settings)
        key = call_id.encode()
        await producer.send(settings.topic(CALL_LIFECYCLE), key=key, value=started)
        for at, value in chunks:
            delay = at - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await producer.send(settings.topic(AUDIO_CHUNKS), key=key, value=value)
        await producer.send(settings.topic(CALL_LIFECYCLE), key=key, value=ended)

    reader = asyncio.ensure_future(consume())
    cpu0, t0 = proc_cpu_seconds(worker.pid), time.monotonic()
    try:
        await asyncio.gather(*(one_call(c) for c in call_ids))
        try:
            await asyncio.wait_for(all_done.wait(), timeout=args.timeout)
        except asyncio.TimeoutError:
            level.timed_out = True
    finally:
        level.wall_s = time.monotonic() - t0
        level.worker_cpu_s = proc_cpu_seconds(worker.pid) - cpu0
        reader.cancel()
        await producer.stop()
        await consumer.stop()
    level.audio_s = n * len(stereo) / rate
    level.calls_done = len({c for c, _ in done_legs if sum(1 for d in done_legs if d[0] == c) == 2})
    level.load_after = round(os.getloadavg()[0], 2)
    for ev in finals:
        column = 0 if ev.leg == audio_pb2.LEG_LUPITA else 1
        a = ev.segment_start_us * rate // 1_000_000
        b = ev.segment_end_us * rate // 1_000_000
        idx = np.nonzero(loud[column][a:b])[0]
        if idx.size == 0:
            continue  # no speech above -40 dBFS in it (never happens with this script)
        speech_end_us = ev.call_started_at_us + (a + idx[-1] + 1) * 1_000_000 // rate
        level.final_ms.append((ev.emitted_at_us - speech_end_us) / 1000)
        (level.person_ms if ev.leg == audio_pb2.LEG_PERSON else level.agent_ms).append(level.final_ms[-1])
        emitted = seg_emitted.get((ev.call_id, ev.leg, ev.seq))
        if emitted:
            level.vad_ms.append((emitted - speech_end_us) / 1000)
    if args.vad_only:
        for seg in seg_final:
            column = 0 if seg.leg == audio_pb2.LEG_LUPITA else 1
            a, b = seg.start_us * rate // 1_000_000, seg.end_us * rate // 1_000_000
            idx = np.nonzero(loud[column][a:b])[0]
            if idx.size:
                speech_end_us = seg.call_started_at_us + (a + idx[-1] + 1) * 1_000_000 // rate
                level.vad_ms.append((seg.emitted_at_us - speech_end_us) / 1000)
    level.finals = len(level.final_ms) if not args.vad_only else len(seg_final)
    return level


# --- output -----------------------------------------------------------------------------------


def fmt(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def format_table(levels: list[Level]) -> str:
    rows = [("configuration", lambda s: s["config"]),
            ("concurrent calls", lambda s: str(s["calls"])),
            ("calls completed", lambda s: f"{s['calls_done']}/{s['calls']}" + (" (timeout)" if s["timed_out"] else "")),
            ("final segments", lambda s: str(s["finals"])),
            ("partials published", lambda s: str(s["partials"])),
            ("vad: speech end -> segment p50 / p95 (ms)", lambda s: f"{fmt(s['vad_p50_ms'])} / {fmt(s['vad_p95_ms'])}"),
            ("speech end -> final transcript p50 / p95 (ms)",
             lambda s: f"{fmt(s['final_p50_ms'])} / {fmt(s['final_p95_ms'])}"),
            ("speech end -> final transcript max (ms)", lambda s: fmt(s["final_max_ms"])),
            ("  person leg p50 / p95 (ms)", lambda s: f"{fmt(s['person_p50_ms'])} / {fmt(s['person_p95_ms'])}"),
            ("  agent leg p50 / p95 (ms)", lambda s: f"{fmt(s['agent_p50_ms'])} / {fmt(s['agent_p95_ms'])}"),
            ("worker cores busy", lambda s: fmt(s["worker_cores_busy"], 2)),
            ("worker CPU-s / call-minute", lambda s: fmt(s["worker_cpu_s_per_call_minute"], 1)),
            ("load average before / after", lambda s: f"{s['load_before']:.2f} / {s['load_after']:.2f}")]
    sums = [lv.summary() for lv in levels]
    width = max(len(r[0]) for r in rows)
    col = max(14, *(len(r[1](s)) for r in rows for s in sums))
    return "\n".join(f"{label:<{width}}" + "".join(f"  {fn(s):>{col}}" for s in sums) for label, fn in rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from lupita.cli import load_stack_env

    load_stack_env()
    sys.path.insert(0, str(ROOT / "services"))
    from loadgen import synth
    from loadgen.frames import fit_duration
    from loadgen.settings import LoadgenSettings
    from lupita.config import CommonSettings
    from lupita.topics import delete_prefixed, ensure_topics
    from media_bridge.settings import BridgeSettings

    run_id = uuid.uuid4().hex[:8]
    prefix = f"bench-lat-{run_id}."
    settings = CommonSettings(topic_prefix=prefix)
    bridge_settings = BridgeSettings(allow_unauthenticated=True, instance_name="latency-bench")
    try:
        ensure_topics(settings)
    except Exception as exc:  # noqa: BLE001
        print(f"error: Kafka at {settings.kafka_bootstrap} is not reachable ({exc!r}); run `lupita stack up`",
              file=sys.stderr)
        return 2
    cache = LoadgenSettings().cache_dir
    stereo = fit_duration(synth.synthesize_dialogue(synth.DEFAULT_SCRIPT, args.rate, cache_dir=cache),
                          args.rate, args.seconds)
    loud = {c: np.abs(stereo[:, c].astype(np.int32)) > SPEECH_FLOOR for c in (0, 1)}
    levels: list[Level] = []
    configs = [parse_config(c) for c in args.config] or [("default", None, {})]
    stale = 0.0
    batch = (0.0, 0.0)
    stages = "vad" if args.vad_only else "vad + transcriber"
    with tempfile.TemporaryDirectory(prefix="lupita-latency-") as tmp:
        try:
            for k, (name, rev, extra) in enumerate(configs):
                workdir = Path(tmp) / f"config-{k}"
                workdir.mkdir()
                # topics of its own: a new worker (consumer group) would otherwise redo the calls before
                cfg_settings = CommonSettings(topic_prefix=f"{prefix}{k}.")
                ensure_topics(cfg_settings)
                label = f"{name}@{rev}" if rev else name
                with worker_code(rev, workdir / "code") as code:
                    print(f"starting the worker ({stages}, configuration {label}: {extra or 'as is'}) ...",
                          file=sys.stderr, flush=True)
                    worker = start_worker(cfg_settings.topic_prefix, f"latency-{run_id}-{k}", workdir,
                                          args.transcriber_threads, args.asr_threads, args.vad_only, extra, code)
                    try:
                        print("warm-up call ...", file=sys.stderr, flush=True)
                        asyncio.run(run_level(1, argparse.Namespace(**{**vars(args), "ramp": 0}), cfg_settings,
                                              bridge_settings, stereo[: 8 * args.rate], loud, worker, f"warm{k}"))
                        for n in args.calls:
                            print(f"{name}: {n} concurrent call(s) x {args.seconds:g} s ...", file=sys.stderr,
                                  flush=True)
                            level = asyncio.run(run_level(n, args, cfg_settings, bridge_settings, stereo, loud,
                                                          worker, f"run{k}"))
                            level.config = label
                            levels.append(level)
                            print(json.dumps(level.summary()), file=sys.stderr, flush=True)
                        stale += metric(worker, "lupita_transcriber_segments_total", kind="partial", outcome="stale")
                        b = (metric(worker, "lupita_vad_batch_streams_sum"),
                             metric(worker, "lupita_vad_batch_streams_count"))
                        batch = (batch[0] + b[0], batch[1] + b[1])
                    finally:
                        worker.send_signal(signal.SIGTERM)
                        try:
                            worker.wait(timeout=60)
                        except subprocess.TimeoutExpired:
                            worker.kill()
        finally:
            if not args.keep_topics:
                delete_prefixed(settings, prefix, "lupita-bench")
    print(f"latency benchmark: speech end -> {'segments' if args.vad_only else 'transcripts'}, {args.seconds:g} s calls (DEFAULT_SCRIPT), "
          f"{args.rate} Hz, real-time pacing, starts over {args.ramp:g} s; worker: {stages}, "
          f"{args.transcriber_threads} decode thread(s) x {args.asr_threads} CPU thread(s) each")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(format_table(levels))
    print(f"partials skipped as stale (all levels): {stale:.0f}; streams per batched VAD inference: "
          f"{batch[0] / max(batch[1], 1):.1f} on average (all levels)")
    if args.json:
        RESULTS_DIR.mkdir(exist_ok=True)
        out = RESULTS_DIR / f"latency-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps({"args": {k: v for k, v in vars(args).items()},
                                   "levels": [lv.summary() for lv in levels],
                                   "raw": [asdict(lv) for lv in levels], "stale_partials": stale,
                                   "vad_streams_per_inference": batch[0] / max(batch[1], 1)}, indent=2))
        print(f"results: {out}")
    return 0 if all(not lv.timed_out for lv in levels) else 1


if __name__ == "__main__":
    sys.exit(main())
