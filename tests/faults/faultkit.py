"""The fault rig: simulated Spanish calls through the real bridge and one real ``lupita worker``
per stage, one fault injected mid-call, then everything counted from the stores themselves.

Used by ``tests/faults/test_faults.py`` (a quick subset) and ``bench/faults.py`` (every scenario,
printed as a table). Nothing here asserts; :class:`ScenarioResult` says what was lost and what was
duplicated, and why.

**Its own stack.** A fault stops Kafka, Postgres, MinIO or Weaviate for tens of seconds. Doing that
to the shared local stack would break every other test session running against it, so the rig
brings up a second stack of the same servers through the same code (``lupita stack up`` with
``LUPITA_STACK_DIR=<repo>/.stack/faults`` and ``LUPITA_STACK_PORT_OFFSET``, default the shared stack's offset + 2000: no port of it meets one of the shared stack's) and stops and
starts its servers with the stack manager's own functions (``PROCS[name].stop()``, ``up((name,))``)
in a child process, where that offset applies. One fault run at a time holds that stack (a file lock):
a second test session or benchmark waits for it.

**The pipeline.** One bridge (``lupita bridge`` child) and four workers (``lupita worker`` children
through ``procs.start_worker``), each with ``LUPITA_STAGES`` = one stage and its own app id
(= consumer group: two stages that both read ``audio.chunks`` must not share one group), on topics
of the rig's own and Weaviate collections of its own. Whisper runs with one temperature
(``LUPITA_ASR_TEMPERATURES=[0.0]``) so the same audio gives the same transcript in every scenario.
The bridge is given a Kafka request timeout longer than the Kafka outage, so it holds its live calls
through it (with its default 30 s a longer outage ends them with UNAVAILABLE, by design).

**A scenario.** N calls of the same audio (one person leg with clear distress cues: a fall and chest
pain) are streamed in real time; when the scenario's trigger holds (a positive signal read from Kafka,
e.g. "half of the first call's chunks are in Kafka", "a final transcript of the call exists") the fault
is injected: SIGKILL of one stage's worker and a restart, or one server stopped for ``outage_s`` and
started again. Then the rig waits until every call is analysed, the expected alerts are stored, every
worker's consumer group has committed up to the end of its input topics and no understanding work is in
progress (or a deadline passes), and counts.

**What is counted** (per call, then summed): frames sent / acknowledged by the bridge / in Kafka
(``audio.chunks``, unique ``(leg, chunk_seq)``); the legal WAV (exactly one version; its samples equal
the frames sent); FINAL segments on ``speech.segments`` (seq 0..n-1 per leg, an END_OF_LEG per leg);
final transcripts on ``transcripts`` (one per FINAL segment, a ``leg_complete`` per leg); the
``companion_calls`` row and its analysis; ``call_utterances`` (one per final with text);
``user_facts`` of the call's phone (no two rows with the same type, key and value); Weaviate
``LupitaConversation`` (exactly one) and ``LupitaUtterance`` objects (one per utterance row);
``call_alerts`` and the ``alerts`` topic against the expected alerts (what the no-fault baseline run
of the same audio raised).

*Lost* = something that should exist and does not (or a WAV whose samples differ). *Duplicated* = a
second WAV version, a second Weaviate object, an extra row, a duplicated fact, or two records of one
key with different content on a topic. A byte-identical second record of one key on a topic (the same
segment published again after a worker was killed before it committed) is at-least-once delivery,
which the design allows and every consumer deduplicates: it is counted apart, as *redelivered*.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import string
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
for _p in (ROOT / "tests" / "kit", ROOT / "tests" / "media_bridge"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from procs import bridge_process, start_worker, stop_worker  # noqa: E402  (the shared test kit)

STAGES = ("recorder", "vad", "transcriber", "understanding")
SERVERS = ("kafka", "postgres", "minio", "weaviate")
RATE = 8000
FRAME_MS = 20

# Person turns with distress cues of services/stream_processor/data/alert_cues.json that Whisper base
# hears through the telephone band from espeak-ng ("me caí" → fall, "dolor muy fuerte en el pecho" →
# chest_pain) and a preference fact ("me gusta el café"). Which alerts count as expected is decided
# by the baseline run, never by this list.
SCRIPT = (
    ("lupita", "Buenos días doña Carmen", 0.4),
    ("person", "Me caí en la cocina", 0.5),
    ("lupita", "Voy a avisar a su hija ahora mismo", 0.4),
    ("person", "Tengo un dolor muy fuerte en el pecho", 0.5),
    ("person", "Me gusta el café con leche", 0.8),
)

# Worker settings on top of procs.WORKER_ENV (short group timeouts, recorder grace 2 s). The idle
# limits (a call without records and without an ended event) are SHORTER than the shortest Kafka
# outage (8 s): the idle clock must stop while the broker is away (faust_kit.BrokerWatch), or the
# kafka-outage scenario ends its calls as timed out and loses their rest.
WORKER_EXTRA = {
    "LUPITA_RECORDER_IDLE_SECONDS": "6",
    "LUPITA_VAD_IDLE_SECONDS": "6",
    "LUPITA_RECORDER_STATE_RETENTION_SECONDS": "3600",
    "LUPITA_VAD_GRACE_SECONDS": "3",
    "LUPITA_VAD_TICK_SECONDS": "0.25",
    "LUPITA_UNDERSTANDING_RETRY_INITIAL_SECONDS": "1",
    "LUPITA_UNDERSTANDING_RETRY_MAX_SECONDS": "4",
    "LUPITA_SINK_RETRY_MAX_ELAPSED_SECONDS": "10",
    "LUPITA_ASR_TEMPERATURES": "[0.0]",
    "LUPITA_ASR_THREADS": "2",
}

# Each worker's gauges of work in hand (open calls, records in flight, store retries waiting).
IDLE_GAUGES = {
    "recorder": ("lupita_recorder_open_calls", "lupita_recorder_finalizations_running"),
    "vad": ("lupita_vad_open_calls",),
    "transcriber": ("lupita_transcriber_in_flight",),
    "understanding": ("lupita_understanding_work_in_progress",),
}
# Polls (1 s apart) of a quiet pipeline after which calls still incomplete are counted as they are.
QUIET_POLLS = 20

INPUT_TOPICS = ("audio.chunks", "call.lifecycle", "speech.segments", "transcripts")
# Input topics of each stage (logical names): its consumer group must have committed to their end.
STAGE_INPUTS = {
    "recorder": ("audio.chunks", "call.lifecycle"),
    "vad": ("audio.chunks", "call.lifecycle"),
    "transcriber": ("speech.segments",),
    "understanding": ("transcripts", "call.lifecycle"),
}


def say(msg: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # "none" | "kill" | "outage"
    target: str = ""  # a stage (kill) or a server (outage)
    trigger: str = ""  # see FaultRig._trigger
    why: str = ""


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("baseline", "none", why="no fault: the expected alerts and segment layout"),
    Scenario("kill-recorder", "kill", "recorder", "half_in_kafka",
             "SIGKILL the recorder with half of the call's chunks in its table, restart"),
    Scenario("kill-vad", "kill", "vad", "first_segment",
             "SIGKILL the vad worker after it published the call's first segment, restart"),
    Scenario("kill-transcriber", "kill", "transcriber", "first_transcript",
             "SIGKILL the transcriber after its first final transcript of the call, restart"),
    Scenario("kill-understanding", "kill", "understanding", "first_alert",
             "SIGKILL the understanding worker right after it published the call's first alert, restart"),
    Scenario("kafka-outage", "outage", "kafka", "half_in_kafka",
             "stop the Kafka broker mid-call, start it again"),
    Scenario("postgres-outage", "outage", "postgres", "first_transcript",
             "stop Postgres mid-call (alerts, the recorder's row and the analysis fall in it)"),
    Scenario("minio-outage", "outage", "minio", "half_in_kafka",
             "stop MinIO mid-call (the WAV upload at hang-up falls in it)"),
    Scenario("weaviate-outage", "outage", "weaviate", "segments_done",
             "stop Weaviate when the call's last segments are out (the analysis' vectors fall in it)"),
)}


# ------------------------------------------------------------------------------------- the stack


class OwnStack:
    """The servers of the local stack, a second time: own directory, ports shifted by ``offset``."""

    def __init__(self, directory: Path | None = None, offset: int | None = None) -> None:
        self.dir = Path(directory or os.environ.get("LUPITA_FAULTS_STACK_DIR", ROOT / ".stack" / "faults"))
        # 2000 above the shared stack's own offset: a second checkout running its stack with
        # LUPITA_STACK_PORT_OFFSET gets a fault stack of its own too
        default = int(os.environ.get("LUPITA_STACK_PORT_OFFSET", "0") or 0) + 2000
        self.offset = int(offset if offset is not None else os.environ.get("LUPITA_FAULTS_STACK_PORT_OFFSET", default))
        self.started_here = False

    @property
    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LUPITA_")}
        env.update(LUPITA_STACK_DIR=str(self.dir), LUPITA_STACK_PORT_OFFSET=str(self.offset))
        if "LUPITA_CACHE_DIR" in os.environ:
            env["LUPITA_CACHE_DIR"] = os.environ["LUPITA_CACHE_DIR"]
        return env

    def _manager(self, code: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", f"from lupita_dev.stack import manager\n{code}"], env=self._env, cwd=ROOT,
            capture_output=True, text=True, timeout=timeout,
        )

    def healthy(self) -> dict[str, bool]:
        out = self._manager("import json; print(json.dumps({n: s['healthy'] for n, s in manager.status().items()}))",
                            timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"stack status failed:\n{out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def up(self) -> dict[str, str]:
        """Start what is not running (installs are cached); return the stack's ``LUPITA_*`` env."""
        was = self.healthy()
        if not all(was.values()):
            say(f"starting the fault stack in {self.dir} (ports +{self.offset})")
            out = self._manager("manager.up()")
            if out.returncode != 0:
                raise RuntimeError(f"fault stack up failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            self.started_here = not any(was.values())
        out = self._manager("import json; print(json.dumps(manager.up()))")
        if out.returncode != 0:
            raise RuntimeError(f"fault stack env failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def stop_server(self, name: str) -> None:
        out = self._manager(f"manager.PROCS[{name!r}].stop()", timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"stopping {name} failed:\n{out.stderr[-2000:]}")

    def start_server(self, name: str) -> None:
        out = self._manager(f"manager.up(({name!r},))")
        if out.returncode != 0:
            raise RuntimeError(f"starting {name} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")

    def down(self) -> None:
        self._manager("manager.down()", timeout=300)

    def lock(self, wait_s: float | None = None) -> None:
        """Take the stack for this rig alone (an exclusive lock on ``<dir>/rig.lock``, released by
        :meth:`unlock` or when this process ends): a second fault run on the same stack (another test
        session, a benchmark) would have its servers stopped under it. Waits for the other run to end."""
        import fcntl

        wait_s = float(os.environ.get("LUPITA_FAULTS_LOCK_WAIT_S", "1800")) if wait_s is None else wait_s
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.dir / "rig.lock", "a+")
        deadline = time.monotonic() + wait_s
        told = False
        while True:
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if not told:
                    say(f"another fault run holds the fault stack ({self.dir}); waiting for it (up to {wait_s:.0f} s)")
                    told = True
                if time.monotonic() > deadline:
                    self._lock_file.close()
                    raise RuntimeError(f"the fault stack {self.dir} stayed locked by another fault run for "
                                       f"{wait_s:.0f} s") from None
                time.sleep(2.0)  # polling the lock

    def unlock(self) -> None:
        f = getattr(self, "_lock_file", None)
        if f is not None:
            f.close()  # closing the file releases the lock
            self._lock_file = None


# ------------------------------------------------------------------------------------- calls


@dataclass
class PlannedCall:
    call_id: str
    phone: str
    result: Any = None  # loadgen CallResult once streamed
    hung_up_at: float = 0.0  # time.time() when the stream ended


@dataclass
class Audio:
    stereo: np.ndarray  # the padded stereo that the frames carry (what the WAV must decode to)
    frames: list  # loadgen Frame
    seconds: float


def make_audio(cache_dir: Path | None = None) -> Audio:
    from loadgen import synth
    from loadgen.frames import samples_per_frame, slice_frames
    from lupita.v1 import audio_pb2

    stereo = synth.synthesize_dialogue([synth.Turn(*t) for t in SCRIPT], RATE, cache_dir=cache_dir)
    frames = slice_frames(stereo, RATE, audio_pb2.CODEC_PCM16, FRAME_MS)
    spf = samples_per_frame(RATE, FRAME_MS)
    n = len(frames) // 2
    padded = np.zeros((n * spf, 2), dtype=np.int16)
    padded[: len(stereo)] = stereo
    return Audio(padded, frames, n * FRAME_MS / 1000)


def new_calls(n: int, tag: str) -> list[PlannedCall]:
    rng = random.Random()
    # letters only after the tag: a run of digits in a call id could pass for a phone number in
    # the session's log scan; a phone of its own per call: facts are kept per phone
    return [PlannedCall(f"flt-{tag}-{''.join(rng.choices(string.ascii_lowercase, k=10))}",
                        f"+5295188{rng.randrange(100000):05d}")
            for _ in range(n)]


class CallDriver(threading.Thread):
    """Streams the calls through the bridge (real time, one second apart) in a thread of its own."""

    def __init__(self, target: str, token: str, audio: Audio, calls: list[PlannedCall], *,
                 speed: float, timeout_s: float) -> None:
        super().__init__(daemon=True, name="fault-calls")
        self.target, self.token, self.audio, self.calls = target, token, audio, calls
        self.speed, self.timeout_s = speed, timeout_s
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by the scenario
            self.error = exc

    async def _main(self) -> None:
        from loadgen.client import stream_call
        from lupita.v1 import audio_pb2

        async def one(i: int, call: PlannedCall) -> None:
            await asyncio.sleep(i * 1.0)  # a ramp, not a synchronisation
            call.result = await stream_call(
                self.target, self.token, call.call_id, None, RATE, audio_pb2.CODEC_PCM16,
                frame_ms=FRAME_MS, speed=self.speed, phone=call.phone, frames=self.audio.frames,
                timeout_s=self.timeout_s,
            )
            call.hung_up_at = time.time()

        await asyncio.gather(*(one(i, c) for i, c in enumerate(self.calls)))


# ------------------------------------------------------------------------------------- results


@dataclass
class CallCount:
    call_id: str
    frames_sent: int = 0
    frames_acked: int = 0
    frames_kafka: int = 0
    bridge_status: str = ""
    chunk_redelivered: int = 0
    chunk_conflicts: int = 0
    wav_ok: bool = False
    wav_versions: int = 0
    segments: int = 0  # unique FINAL segments
    seg_redelivered: int = 0
    seg_conflicts: int = 0
    seg_layout: tuple = ()  # ((leg, seq, start_us, end_us, md5 of the pcm), ...) of the FINAL segments
    finals: int = 0  # unique final transcripts matching a FINAL segment
    final_redelivered: int = 0
    final_conflicts: int = 0
    row: bool = False
    analysed: bool = False
    utterances: int = 0
    facts: int = 0
    facts_dupes: int = 0
    wv_objects: int = 0
    wv_utterances: int = 0
    alerts_expected: frozenset = frozenset()
    alerts_rows: frozenset = frozenset()
    alerts_topic: frozenset = frozenset()
    alert_redelivered: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class ScenarioResult:
    scenario: Scenario
    calls: list[CallCount]
    fault_at: float | None = None  # seconds after the first call started
    fault_s: float = 0.0  # how long the fault lasted (outage; kill → ready again)
    recovery_s: float = 0.0  # fault over (or last hang-up) → everything stored and consumed
    settled: bool = True
    notes: list[str] = field(default_factory=list)
    # what the workers logged at warning level or above during the scenario: (stage, level, message)
    evidence: Counter = field(default_factory=Counter)

    def total(self, attr: str) -> int:
        return sum(int(getattr(c, attr)) for c in self.calls)

    @property
    def lost(self) -> int:
        return sum(len(c.lost) for c in self.calls)

    @property
    def duplicated(self) -> int:
        return sum(len(c.duplicated) for c in self.calls)

    @property
    def redelivered(self) -> int:
        return sum(c.chunk_redelivered + c.seg_redelivered + c.final_redelivered + c.alert_redelivered
                   for c in self.calls)

    def problems(self) -> list[str]:
        out = [f"{c.call_id}: LOST {x}" for c in self.calls for x in c.lost]
        out += [f"{c.call_id}: DUPLICATED {x}" for c in self.calls for x in c.duplicated]
        out += [f"{c.call_id}: note: {x}" for c in self.calls for x in c.notes]
        return out + self.notes

    def row(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "calls": len(self.calls),
            "frames sent/kafka": f"{self.total('frames_sent')}/{self.total('frames_kafka')}",
            "wavs ok": f"{self.total('wav_ok')}/{len(self.calls)}",
            "segments": self.total("segments"),
            "finals": self.total("finals"),
            "redeliv": self.redelivered,
            "rows": f"{self.total('row')}/{self.total('analysed')}",
            "facts/dupes": f"{self.total('facts')}/{self.total('facts_dupes')}",
            "weaviate": self.total("wv_objects"),
            "alerts exp/found": f"{sum(len(c.alerts_expected) for c in self.calls)}/"
                                f"{sum(len(c.alerts_rows & c.alerts_expected) for c in self.calls)}",
            "lost": self.lost,
            "duplicated": self.duplicated,
            "warn/err logs": sum(self.evidence.values()),
            "recovery s": f"{self.recovery_s:.0f}" + ("" if self.settled else "!"),
        }


def format_table(results: list[ScenarioResult]) -> str:
    rows = [r.row() for r in results]
    if not rows:
        return "(no scenario ran)"
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    line = " | ".join(c.ljust(width[c]) for c in cols)
    out = [line, "-+-".join("-" * width[c] for c in cols)]
    out += [" | ".join(str(r[c]).rjust(width[c]) if i else str(r[c]).ljust(width[c])
                       for i, c in enumerate(cols)) for r in rows]
    return "\n".join(out)


def format_evidence(results: list[ScenarioResult], top: int = 4) -> str:
    """The most frequent warnings/errors the workers logged in each scenario (how the fault showed)."""
    lines = []
    for r in results:
        if r.evidence:
            lines.append(f"{r.scenario.name}:")
            lines += [f"  {n:>4} x {stage} {level}: {msg}" for (stage, level, msg), n in r.evidence.most_common(top)]
    return "\n".join(lines)


def format_problems(results: list[ScenarioResult]) -> str:
    lines = []
    for r in results:
        probs = r.problems()
        if probs:
            lines.append(f"{r.scenario.name}:")
            lines += [f"  - {p}" for p in probs]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- the rig


@dataclass
class Expectation:
    """What the no-fault run of the same audio produced."""

    alerts: frozenset  # cue ids every baseline call raised
    seg_layout: tuple | None  # the FINAL segments' (leg, seq, start, end, md5) if every baseline call agreed


class FaultRig:
    """Own stack + own topics + bridge + one worker per stage; runs scenarios and counts."""

    def __init__(self, workdir: Path, *, outage_s: float = 30.0, speed: float = 1.0,
                 settle_timeout_s: float = 420.0, stack: OwnStack | None = None) -> None:
        self.workdir = Path(workdir)
        self.outage_s = outage_s
        self.speed = speed
        self.settle_timeout_s = settle_timeout_s
        self.stack = stack or OwnStack()
        self.workers: dict[str, Any] = {}
        self.app_ids: dict[str, str] = {}
        self.bridge = None
        self.collections: list[str] = []  # every Weaviate collection the rig's pipelines used
        # what a scenario left in the pipeline (records not handled, calls not stored): the next
        # scenario then starts on a fresh pipeline, so each row of the table is one fault's doing
        self.unclean: list[str] = []
        self._stack_env: dict[str, str] = {}
        self._spawned: list[Any] = []  # every worker started and not yet stopped
        self._saved_env: dict[str, str | None] = {}
        self.env: dict[str, str] = {}
        self.audio: Audio | None = None
        self._db = None
        self._s3 = None
        self._wv = None
        self._settings = None
        self.log_paths: dict[Path, str] = {}  # every worker's log (killed ones too) -> its stage

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> "FaultRig":
        t0 = time.monotonic()
        self.stack.lock()
        self._stack_env = self.stack.up()
        from loadgen.settings import LoadgenSettings

        self.audio = make_audio(LoadgenSettings().cache_dir)
        say(f"stack ready in {time.monotonic() - t0:.0f} s")
        self._open_pipeline()
        say(f"rig ready in {time.monotonic() - t0:.0f} s")
        return self

    def _open_pipeline(self) -> None:
        """Fresh topics, consumer groups and Weaviate collections; one worker per stage; the bridge."""
        t0 = time.monotonic()
        tag = uuid.uuid4().hex[:6]
        self.app_ids = {s: f"faults-{s}-{tag}" for s in STAGES}
        self.env = dict(self._stack_env)
        self.env.update(
            LUPITA_TOPIC_PREFIX=f"faults-{tag}.",
            LUPITA_WEAVIATE_CONVERSATION_COLLECTION=f"FaultsConversation_{tag}",
            LUPITA_WEAVIATE_UTTERANCE_COLLECTION=f"FaultsUtterance_{tag}",
        )
        for k, v in self.env.items():  # this process reads the same stores (restored by close())
            self._saved_env.setdefault(k, os.environ.get(k))
            os.environ[k] = v
        self._settings = None
        self.collections += [self.env["LUPITA_WEAVIATE_CONVERSATION_COLLECTION"],
                             self.env["LUPITA_WEAVIATE_UTTERANCE_COLLECTION"]]
        from lupita.topics import ensure_topics

        ensure_topics(self.settings)
        with ThreadPoolExecutor(len(STAGES)) as pool:
            for stage, worker in zip(STAGES, pool.map(self._start_worker, STAGES)):
                self.workers[stage] = worker
        bridge_env = dict(os.environ, LUPITA_KAFKA_REQUEST_TIMEOUT_MS=str(int((self.outage_s + 120) * 1000)))
        self.bridge = bridge_process("faults-bridge", self.workdir, env=bridge_env).start()
        self.unclean = []
        say(f"pipeline on topics {self.env['LUPITA_TOPIC_PREFIX']}* ready in {time.monotonic() - t0:.0f} s")

    def _close_pipeline(self) -> None:
        for w in self._spawned:  # also any a failed or interrupted start left behind
            stop_worker(w)
        self._spawned.clear()
        self.workers.clear()
        if self.bridge is not None:
            self.bridge.stop()
            self.bridge = None

    def close(self, *, stop_stack: bool | None = None) -> None:
        self._close_pipeline()
        try:
            if self._wv is not None:
                for name in self.collections:
                    self._wv.collections.delete(name)
                self._wv.close()
        except Exception as exc:  # noqa: BLE001 - cleanup only
            say(f"could not remove the Weaviate collections: {exc!r}")
        if self._db is not None:
            self._db.close()
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if stop_stack is None:
            stop_stack = self.stack.started_here and os.environ.get("LUPITA_KEEP_STACK") != "1"
        if stop_stack:
            self.stack.down()
        self.stack.unlock()

    def _start_worker(self, stage: str):
        env = dict(self.env, **WORKER_EXTRA, LUPITA_INSTANCE_NAME=f"faults-{stage}")
        worker = start_worker(self.workdir / stage, self.app_ids[stage], stages=stage, timeout=300, env_extra=env)
        self._spawned.append(worker)
        self.log_paths[worker.log_path] = stage
        return worker

    @property
    def settings(self):
        """The pipeline's settings as the workers read them (this process has the rig's env)."""
        if self._settings is None:
            from stream_processor.settings import PipelineSettings

            self._settings = PipelineSettings()
        return self._settings

    def topic(self, name: str) -> str:
        return f"{self.env['LUPITA_TOPIC_PREFIX']}{name}"

    # -- stores ---------------------------------------------------------------------------------

    def db(self):
        import psycopg

        if self._db is not None and not self._db.closed and not self._db.broken:
            return self._db
        self._db = psycopg.connect(self.env["LUPITA_POSTGRES_DSN"], autocommit=True, connect_timeout=5)
        return self._db

    def s3(self):
        if self._s3 is None:
            from stream_processor.stores.archive import s3_client

            self._s3 = s3_client(self.settings)
        return self._s3

    def wv(self):
        import weaviate

        if self._wv is None or not self._wv.is_connected():
            s = self.settings
            self._wv = weaviate.connect_to_custom(
                http_host=s.weaviate_host, http_port=s.weaviate_http_port, http_secure=False,
                grpc_host=s.weaviate_host, grpc_port=s.weaviate_grpc_port, grpc_secure=False)
        return self._wv

    # -- workers --------------------------------------------------------------------------------

    def supervise(self, notes: list[str]) -> None:
        """Restart a worker that exited on its own (what Kubernetes would do), and say so."""
        for stage, w in list(self.workers.items()):
            if w.alive():
                continue
            code = w.proc.returncode
            tail = " ".join(json.dumps(r.get("message", ""))[:120] for r in w.logs()[-3:])
            notes.append(f"{stage} worker exited by itself (rc={code}; last log: {tail}); restarted")
            say(notes[-1])
            try:
                self.workers[stage] = self._start_worker(stage)
            except RuntimeError as exc:
                notes.append(f"{stage} worker could not be restarted yet: {str(exc)[:200]}")

    def kill_and_restart(self, stage: str) -> float:
        t0 = time.monotonic()
        old = self.workers[stage]
        stop_worker(old, signal.SIGKILL)
        self.workers[stage] = self._start_worker(stage)
        return time.monotonic() - t0

    def outage(self, server: str) -> float:
        t0 = time.monotonic()
        self.stack.stop_server(server)
        say(f"{server} stopped; down for {self.outage_s:g} s")
        time.sleep(self.outage_s)  # the outage itself: the fault, not a synchronisation
        self.stack.start_server(server)
        if server == "postgres" and self._db is not None:
            self._db.close()
        return time.monotonic() - t0

    # -- scenarios ------------------------------------------------------------------------------

    def run(self, scenario: Scenario, n_calls: int = 1, expected: Expectation | None = None) -> ScenarioResult:
        from loadgen.settings import LoadgenSettings

        assert self.audio is not None and self.bridge is not None
        say(f"scenario {scenario.name}: {n_calls} call(s) of {self.audio.seconds:.1f} s — {scenario.why}")
        notes: list[str] = []
        if self.unclean:
            say(f"  the previous scenario left work in the pipeline ({'; '.join(self.unclean)[:300]}): "
                f"starting on fresh topics, groups and workers")
            self._close_pipeline()
            self._open_pipeline()
        calls = new_calls(n_calls, scenario.name.split("-")[-1][:6])
        ids = [c.call_id for c in calls]
        timeout_s = self.audio.seconds / max(self.speed, 0.01) + n_calls + self.outage_s + 240
        driver = CallDriver(self.bridge.target, LoadgenSettings().first_token, self.audio, calls,
                            speed=self.speed, timeout_s=timeout_s)
        t_start, wall_start = time.monotonic(), time.time()
        driver.start()
        fault_at, fault_s, fault_end = None, 0.0, None
        if scenario.kind != "none":
            trigger = scenario.trigger
            if trigger == "first_alert" and expected is not None and not expected.alerts:
                trigger = "first_transcript"
                notes.append("no alert in the baseline: the kill fires on the first transcript instead")
            fired = self._wait_trigger(trigger, ids, driver, deadline_s=timeout_s)
            if not fired:
                notes.append(f"trigger {trigger} did not fire: the fault came after the calls")
            fault_at = time.monotonic() - t_start
            say(f"  trigger {trigger} {'held' if fired else 'timed out'} at {fault_at:.1f} s: "
                f"{scenario.kind} {scenario.target}")
            if scenario.kind == "kill":
                fault_s = self.kill_and_restart(scenario.target)
            else:
                fault_s = self.outage(scenario.target)
            fault_end = time.time()
            say(f"  fault over after {fault_s:.1f} s")
        driver.join(timeout_s + 30)
        if driver.is_alive():
            notes.append("the call driver did not finish")
        if driver.error is not None:
            notes.append(f"the call driver failed: {driver.error!r}")
        for c in calls:
            r = c.result
            if r is None or not r.ok:
                notes.append(f"{c.call_id}: bridge call not ok: "
                             f"{None if r is None else (r.status, r.details, r.errors[:2], r.frames_acked)}")
        last_hangup = max((c.hung_up_at for c in calls if c.hung_up_at), default=time.time())
        settled = self._settle(calls, expected, notes)
        t_settled = time.time()
        counts = self.count_all(calls, expected)
        recovery = t_settled - (fault_end if fault_end is not None else last_hangup)
        result = ScenarioResult(scenario, counts, fault_at, fault_s, recovery, settled, notes,
                                self._log_evidence(wall_start, time.time(), set(ids)))
        say(f"  {scenario.name}: lost {result.lost}, duplicated {result.duplicated}, "
            f"redelivered {result.redelivered}, recovery {recovery:.0f} s" + ("" if settled else " (NOT settled)"))
        return result

    # -- positive signals ------------------------------------------------------------------------

    def _wait_trigger(self, trigger: str, ids: list[str], driver: CallDriver, deadline_s: float) -> bool:
        from kafka_io import TopicReader

        from lupita.v1 import events_pb2

        first = ids[0].encode()
        mine = {i.encode() for i in ids}
        expected_chunks = len(self.audio.frames) * FRAME_MS // 100  # both legs, 100 ms chunks
        topic, test = {
            "half_in_kafka": ("audio.chunks",
                              lambda rs: sum(r.key == first for r in rs) >= expected_chunks // 2),
            "first_segment": ("speech.segments", lambda rs: any(
                r.key in mine and events_pb2.SpeechSegment.FromString(r.value).kind == events_pb2.SEGMENT_KIND_FINAL
                for r in rs)),
            "first_transcript": ("transcripts", lambda rs: any(
                r.key in mine and _is_final_transcript(r.value) for r in rs)),
            "first_alert": ("alerts", lambda rs: any(r.key in mine for r in rs)),
            "segments_done": ("speech.segments", lambda rs: sum(
                r.key in mine and events_pb2.SpeechSegment.FromString(r.value).kind
                == events_pb2.SEGMENT_KIND_END_OF_LEG for r in rs) >= 2 * len(ids)),
        }[trigger]
        reader = TopicReader(self.settings.kafka_bootstrap, self.topic(topic))
        try:
            deadline = time.monotonic() + deadline_s
            checked = time.monotonic()
            while time.monotonic() < deadline:
                reader.poll()
                if test(reader.records):
                    return True
                if not driver.is_alive() and trigger == "half_in_kafka":
                    return False
                if time.monotonic() - checked > 2.0:  # the calls are already stored: too late
                    checked = time.monotonic()
                    if self._stored(ids, None):
                        return False
            return False
        finally:
            reader.close()

    def _settle(self, calls: list[PlannedCall], expected: Expectation | None, notes: list[str]) -> bool:
        """Wait for the end of the scenario's work. Done when every call is analysed (and its
        expected alerts are stored), every stage's consumer group has committed past each of the
        calls' records on its input topics, and no worker has work in hand (open calls, records in
        flight, store retries waiting), twice in a row. When that state stops changing with the
        workers idle for :data:`QUIET_POLLS` polls, nothing is left that could complete it: what is
        missing is counted as it is, and the next scenario starts on a fresh pipeline. False only
        when ``settle_timeout_s`` passes."""
        from kafka_io import TopicReader

        ids = [c.call_id for c in calls]
        keys = {i.encode() for i in ids}
        deadline = time.monotonic() + self.settle_timeout_s
        readers: dict[str, Any] = {}
        last_error, last_state = "", None
        done = still = 0
        try:
            while True:
                self.supervise(notes)
                try:
                    for t in INPUT_TOPICS:
                        if t not in readers:
                            readers[t] = TopicReader(self.settings.kafka_bootstrap, self.topic(t))
                        readers[t].poll()
                    unhandled = self._unhandled(readers, keys)
                    stored = self._stored(ids, expected)
                    idle = self._idle()
                    done = done + 1 if stored and not unhandled and idle else 0
                    if done >= 2:
                        return True
                    state = (stored, tuple(unhandled))
                    still = still + 1 if idle and state == last_state else 0
                    last_state, last_error = state, ""
                    if still >= QUIET_POLLS:
                        self.unclean = ([] if stored else [f"calls not stored: {self._progress(ids)}"]) + unhandled
                        notes.append(f"the pipeline went idle with work left: {'; '.join(self.unclean)}")
                        return True
                except Exception as exc:  # a store, the broker or a worker is restarting: poll again
                    done = still = 0
                    error = f"{type(exc).__name__}: {str(exc)[:200]}"
                    if error != last_error:
                        say(f"  (while settling: {error})")
                    last_error = error
                if time.monotonic() > deadline:
                    self.unclean = [f"not settled: {self._progress(ids)}"]
                    notes.append(f"not settled after {self.settle_timeout_s:.0f} s: {self._progress(ids)}"
                                 + (f"; last error {last_error}" if last_error else ""))
                    return False
                time.sleep(1.0)  # poll period
        finally:
            for r in readers.values():
                r.close()

    def _unhandled(self, readers: dict[str, Any], keys: set[bytes]) -> list[str]:
        """The stages whose group has not committed past the last record of these calls on one of
        its input partitions (a Faust worker commits a record once its agent is done with it)."""
        from kafka_io import committed_offsets

        need: dict[tuple[str, int], int] = {}
        for r in readers.values():
            for rec in r.records:
                if rec.key in keys:
                    need[(rec.topic, rec.partition)] = max(need.get((rec.topic, rec.partition), 0), rec.offset + 1)
        out = []
        prefix = self.env["LUPITA_TOPIC_PREFIX"]
        for stage, topics in STAGE_INPUTS.items():
            have = committed_offsets(self.settings.kafka_bootstrap, self.workers[stage].group)
            for (topic, part), n in sorted(need.items()):
                if topic.removeprefix(prefix) in topics and have.get((topic, part), 0) < n:
                    out.append(f"{stage} group committed {topic.removeprefix(prefix)}/{part} up to "
                               f"{have.get((topic, part), 0)}, the calls' records go to {n}")
        return out

    def _stored(self, ids: list[str], expected: Expectation | None) -> bool:
        rows = self.db().execute(
            "SELECT call_id FROM companion_calls WHERE call_id = ANY(%s) AND processed_at IS NOT NULL"
            " AND recording_status = 'recorded'", (ids,)).fetchall()
        if len(rows) < len(ids):
            return False
        if expected is not None and expected.alerts:
            n = self.db().execute(
                "SELECT count(*) FROM call_alerts WHERE call_id = ANY(%s) AND cue_id = ANY(%s)",
                (ids, sorted(expected.alerts))).fetchone()[0]
            if n < len(ids) * len(expected.alerts):
                return False
        return True

    def _progress(self, ids: list[str]) -> str:
        try:
            rows = self.db().execute(
                "SELECT recording_status, processed_at IS NOT NULL FROM companion_calls WHERE call_id = ANY(%s)",
                (ids,)).fetchall()
            return f"{len(rows)}/{len(ids)} rows, {sum(1 for r in rows if r[1])} analysed"
        except Exception as exc:  # noqa: BLE001
            return f"stores unreadable: {exc!r}"[:300]

    def _idle(self) -> bool:
        """Every worker is ready (has its partitions: not in a rebalance) and has no work in hand:
        open calls, records in flight, store retries waiting."""
        import urllib.error
        import urllib.request

        for stage, gauges in IDLE_GAUGES.items():
            w = self.workers[stage]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{w.port}/readyz", timeout=5) as r:
                    if r.status != 200:
                        return False
            except urllib.error.HTTPError:  # 503 while it has no partitions
                return False
            if any(w.metric(g) for g in gauges):
                return False
        return True

    def _log_evidence(self, since: float, until: float, ids: set[str]) -> Counter:
        """Warnings and errors the workers logged in [since, until] (lines of other calls left out;
        Faust's "timer overlapping" notices are load, not faults)."""
        from datetime import datetime

        out: Counter = Counter()
        for path, stage in list(self.log_paths.items()):
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:
                continue
            for line in text.splitlines():
                if not any(f'"level": "{lv}"' in line for lv in ("warning", "error", "critical")):
                    continue
                try:
                    rec = json.loads(line)
                    ts = datetime.fromisoformat(rec["ts"]).timestamp()
                except (ValueError, KeyError, TypeError):
                    continue
                if rec.get("logger") == "mode.timers" or not since <= ts <= until:
                    continue
                if rec.get("call_id") and rec["call_id"] not in ids:
                    continue
                out[(stage, rec.get("level"), str(rec.get("msg", ""))[:110])] += 1
        return out

    # -- counting --------------------------------------------------------------------------------

    def read_topics(self) -> dict[str, list]:
        from bridgekit import read_topic

        names = ("audio.chunks", "call.lifecycle", "speech.segments", "transcripts", "alerts")

        async def main():
            return {n: await read_topic(self.topic(n), timeout_s=120) for n in names}

        return asyncio.run(main())

    def count(self, call: PlannedCall, expected: Expectation | None, topics: dict | None = None) -> CallCount:
        from lupita.privacy import phone_hash
        from lupita.v1 import analysis_pb2, events_pb2
        from sp_stores import read_wav, versions
        from weaviate.classes.query import Filter

        topics = topics or self.read_topics()
        key = call.call_id.encode()
        c = CallCount(call.call_id)
        r = call.result
        if r is not None:
            c.frames_sent, c.frames_acked, c.bridge_status = r.frames_sent, r.frames_acked, r.status

        # audio.chunks: unique (leg, chunk_seq), frames they carry
        chunks: dict[tuple, bytes] = {}
        for rec in (x for x in topics["audio.chunks"] if x.key == key):
            ch = events_pb2.AudioChunk.FromString(rec.value)
            k = (ch.leg, ch.chunk_seq)
            if k in chunks:
                if chunks[k] == rec.value:
                    c.chunk_redelivered += 1
                else:
                    c.chunk_conflicts += 1
                    c.duplicated.append(f"audio chunk leg {ch.leg} seq {ch.chunk_seq} twice with different content")
                continue
            chunks[k] = rec.value
            c.frames_kafka += ch.frame_count
        if c.frames_acked > c.frames_kafka:
            c.lost.append(f"{c.frames_acked - c.frames_kafka} frames acknowledged by the bridge are not in Kafka")

        # the WAV in the legal bucket
        row = self._row(call.call_id)
        c.row = row is not None
        if row is None:
            c.lost.append("companion_calls row")
        else:
            c.analysed = row["processed_at"] is not None
            if not c.analysed:
                c.lost.append("analysis (companion_calls.processed_at is NULL)")
            legal = self.settings.s3_legal_bucket
            wav_key = row.get("s3_legal_key")
            if not wav_key or row.get("recording_status") != "recorded":
                c.lost.append(f"recording (status {row.get('recording_status')!r})")
            else:
                vs = [v for v in versions(self.s3(), legal, wav_key) if v["Key"] == wav_key]
                c.wav_versions = len(vs)
                if len(vs) > 1:
                    c.duplicated.append(f"{len(vs) - 1} extra version(s) of the WAV")
                try:
                    params, got, _ = read_wav(self.s3(), legal, wav_key)
                    want = self.audio.stereo
                    if params.nchannels != 2 or params.framerate != RATE:
                        c.lost.append(f"WAV is {params.nchannels} ch at {params.framerate} Hz")
                    elif got.shape != want.shape:
                        c.lost.append(f"WAV has {len(got)} samples per leg, the frames sent {len(want)}")
                    elif not np.array_equal(got, want):
                        bad = int(np.argmax(np.any(got != want, axis=1)))
                        n_bad = int(np.count_nonzero(np.any(got != want, axis=1)))
                        c.lost.append(f"WAV differs from the frames sent: {n_bad} samples from {bad / RATE:.2f} s")
                    else:
                        c.wav_ok = True
                except Exception as exc:  # noqa: BLE001
                    c.lost.append(f"WAV unreadable: {exc!r}"[:200])

        # speech.segments: FINAL seq 0..n-1 per leg and an END_OF_LEG per leg
        finals_by_key: dict[tuple, bytes] = {}
        ends: dict[int, int] = {}
        for rec in (x for x in topics["speech.segments"] if x.key == key):
            seg = events_pb2.SpeechSegment.FromString(rec.value)
            if seg.kind == events_pb2.SEGMENT_KIND_PARTIAL:
                continue
            k = (seg.leg, seg.seq, seg.kind, seg.revision)
            body = _without(seg, "emitted_at_us")
            if seg.kind == events_pb2.SEGMENT_KIND_END_OF_LEG:
                if seg.leg in ends:
                    if ends[seg.leg] == seg.seq:
                        c.seg_redelivered += 1
                    else:
                        c.seg_conflicts += 1
                        c.duplicated.append(f"END_OF_LEG of leg {seg.leg} twice: seq {ends[seg.leg]} and {seg.seq}")
                else:
                    ends[seg.leg] = seg.seq
                continue
            k = (seg.leg, seg.seq)
            if k in finals_by_key:
                if finals_by_key[k] == body:
                    c.seg_redelivered += 1
                else:
                    c.seg_conflicts += 1
                    c.duplicated.append(f"segment leg {seg.leg} seq {seg.seq} twice with different content")
                continue
            finals_by_key[k] = body
        c.segments = len(finals_by_key)
        layout = []
        for leg in (1, 2):
            seqs = sorted(s for (lg, s) in finals_by_key if lg == leg)
            n = ends.get(leg)
            if n is None:
                c.lost.append(f"END_OF_LEG of leg {leg}")
                n = (seqs[-1] + 1) if seqs else 0
            missing = sorted(set(range(n)) - set(seqs))
            if missing:
                c.lost.append(f"FINAL segments of leg {leg}: seq {missing}")
            for s in seqs:
                seg = events_pb2.SpeechSegment.FromString(finals_by_key[(leg, s)])
                layout.append((leg, s, seg.start_us, seg.end_us, hashlib.md5(seg.pcm16).hexdigest()))
        c.seg_layout = tuple(layout)
        if expected is not None and expected.seg_layout is not None and c.seg_layout != expected.seg_layout:
            # the VAD is deterministic (the baseline calls agree to the sample): speech the baseline
            # has in a segment and this call has in none was lost by the stage
            for leg, missed in _speech_missed(expected.seg_layout, c.seg_layout).items():
                if missed >= 0.05:
                    c.lost.append(f"{missed:.2f} s of leg {leg}'s speech is in no segment (the baseline's "
                                  f"segments have it)")
            diff = sorted(set(c.seg_layout) ^ set(expected.seg_layout))
            c.notes.append("segments differ from the baseline's: " + ", ".join(
                f"{'+' if x in c.seg_layout else '-'}leg {x[0]} seq {x[1]} {x[2] / 1e6:.2f}-{x[3] / 1e6:.2f} s"
                for x in diff))

        # transcripts: one final per FINAL segment, a leg_complete per leg
        tr_by_key: dict[tuple, bytes] = {}
        texts: dict[tuple, str] = {}
        legs_complete: Counter = Counter()
        for rec in (x for x in topics["transcripts"] if x.key == key):
            ev = events_pb2.TranscriptEvent.FromString(rec.value)
            if ev.leg_complete:
                legs_complete[ev.leg] += 1
                continue
            if ev.is_partial:
                continue
            k = (ev.leg, ev.seq)
            body = _without(ev, "emitted_at_us")
            if k in tr_by_key:
                if tr_by_key[k] == body:
                    c.final_redelivered += 1
                else:
                    c.final_conflicts += 1
                    c.duplicated.append(f"final transcript leg {ev.leg} seq {ev.seq} twice with different content")
                continue
            tr_by_key[k] = body
            texts[k] = ev.text
        c.final_redelivered += sum(n - 1 for n in legs_complete.values() if n > 1)
        c.finals = len(set(tr_by_key) & set(finals_by_key))
        missing = sorted(set(finals_by_key) - set(tr_by_key))
        if missing:
            c.lost.append(f"final transcripts of segments {missing}")
        for leg in (1, 2):
            if not legs_complete.get(leg):
                c.lost.append(f"leg_complete of leg {leg}")

        # Postgres: utterances, facts, alerts
        leg_name = {1: "lupita", 2: "person"}
        want_utts = {(leg_name[leg], seq) for (leg, seq), text in texts.items() if text.strip()}
        db = self.db()
        utts = {(leg, seq) for leg, seq in db.execute(
            "SELECT leg, seq FROM call_utterances WHERE call_id = %s", (call.call_id,)).fetchall()}
        c.utterances = len(utts)
        if want_utts - utts:
            c.lost.append(f"call_utterances rows {sorted(want_utts - utts)}")
        if utts - want_utts:
            c.duplicated.append(f"call_utterances rows without a final transcript {sorted(utts - want_utts)}")
        h = phone_hash(call.phone, self.settings.hmac_key_bytes)
        facts = db.execute(
            "SELECT fact_type, fact_key, fact_value, count(*) FROM user_facts WHERE phone_number_hash = %s"
            " GROUP BY 1, 2, 3", (h,)).fetchall()
        c.facts = sum(n for *_, n in facts)
        c.facts_dupes = sum(n - 1 for *_, n in facts if n > 1)
        for t, k, v, n in facts:
            if n > 1:
                c.duplicated.append(f"fact {t}/{k}={v!r} {n} times")
        c.alerts_rows = frozenset(x for (x,) in db.execute(
            "SELECT cue_id FROM call_alerts WHERE call_id = %s", (call.call_id,)).fetchall())
        topic_alerts: dict[str, bytes] = {}
        for rec in (x for x in topics["alerts"] if x.key == key):
            ev = analysis_pb2.AlertEvent.FromString(rec.value)
            body = _without(ev, "raised_at_us", "transcript_emitted_at_us")
            if ev.cue_id in topic_alerts:
                if topic_alerts[ev.cue_id] == body:
                    c.alert_redelivered += 1
                else:
                    c.alert_redelivered += 1  # call_alerts keeps the first evidence: not a duplicate row
                    c.notes.append(f"alert {ev.cue_id} published twice with different evidence")
                continue
            topic_alerts[ev.cue_id] = body
        c.alerts_topic = frozenset(topic_alerts)
        c.alerts_expected = expected.alerts if expected is not None else c.alerts_rows | c.alerts_topic
        for cue in sorted(c.alerts_expected - c.alerts_rows):
            c.lost.append(f"alert {cue} in call_alerts")
        for cue in sorted(c.alerts_expected - c.alerts_topic):
            c.lost.append(f"alert {cue} on the alerts topic")
        extra = (c.alerts_rows | c.alerts_topic) - c.alerts_expected
        if extra:
            c.notes.append(f"alerts the baseline did not raise: {sorted(extra)}")
        if c.alerts_rows != c.alerts_topic:
            c.notes.append(f"call_alerts {sorted(c.alerts_rows)} vs alerts topic {sorted(c.alerts_topic)}")

        # Weaviate: one conversation object, one utterance object per utterance row
        s = self.settings
        by_call = Filter.by_property("call_id").equal(call.call_id)
        wv = self.wv()
        try:
            conv = wv.collections.get(s.weaviate_conversation_collection)
            c.wv_objects = len(conv.query.fetch_objects(filters=by_call, limit=100).objects)
            utt = wv.collections.get(s.weaviate_utterance_collection)
            c.wv_utterances = len(utt.query.fetch_objects(filters=by_call, limit=1000).objects)
        except Exception as exc:  # noqa: BLE001 - e.g. the collection was never created
            c.notes.append(f"Weaviate query failed: {exc!r}"[:200])
        if c.wv_objects == 0:
            c.lost.append("Weaviate conversation object")
        elif c.wv_objects > 1:
            c.duplicated.append(f"{c.wv_objects - 1} extra Weaviate conversation object(s)")
        if c.wv_utterances < c.utterances:
            c.lost.append(f"{c.utterances - c.wv_utterances} Weaviate utterance object(s)")
        elif c.wv_utterances > c.utterances:
            c.duplicated.append(f"{c.wv_utterances - c.utterances} extra Weaviate utterance object(s)")
        return c

    def _row(self, call_id: str) -> dict | None:
        cur = self.db().execute("SELECT * FROM companion_calls WHERE call_id = %s", (call_id,))
        row = cur.fetchone()
        return None if row is None else dict(zip([d.name for d in cur.description], row))

    def count_all(self, result_calls: list[PlannedCall], expected: Expectation | None) -> list[CallCount]:
        topics = self.read_topics()
        return [self.count(c, expected, topics) for c in result_calls]


def expectation_from(baseline: ScenarioResult) -> Expectation:
    """Alerts every baseline call raised (in call_alerts and on the topic); the segment layout if
    every baseline call had the same one."""
    sets = [c.alerts_rows & c.alerts_topic for c in baseline.calls]
    alerts = frozenset.intersection(*sets) if sets else frozenset()
    layouts = {c.seg_layout for c in baseline.calls}
    return Expectation(alerts, layouts.pop() if len(layouts) == 1 else None)


def _speech_missed(base: tuple, got: tuple) -> dict[int, float]:
    """Per leg, seconds covered by the baseline's segments and by none of ``got``'s (1 ms grid)."""
    out = {}
    for leg in (1, 2):
        spans = [(x[2], x[3]) for x in base if x[0] == leg], [(x[2], x[3]) for x in got if x[0] == leg]
        end_ms = max((e // 1000 for sp in spans for _, e in sp), default=0) + 1
        cover = []
        for sp in spans:
            grid = np.zeros(end_ms, dtype=bool)
            for a, b in sp:
                grid[max(a, 0) // 1000:b // 1000] = True
            cover.append(grid)
        out[leg] = float(np.count_nonzero(cover[0] & ~cover[1])) / 1000
    return out


def _is_final_transcript(value: bytes) -> bool:
    from lupita.v1 import events_pb2

    ev = events_pb2.TranscriptEvent.FromString(value)
    return not ev.is_partial and not ev.leg_complete


def _without(msg: Any, *fields_: str) -> bytes:
    """The message's bytes with the given (time-of-publication) fields cleared."""
    m = type(msg)()
    m.CopyFrom(msg)
    for f in fields_:
        m.ClearField(f)
    return m.SerializeToString(deterministic=True)
