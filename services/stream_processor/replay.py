"""``lupita replay``: re-run recorded calls from their S3 WAV through the understanding stages.

This is how an improved model (VAD settings, ASR backend, analyzer, embedder) is rolled out over
old calls::

    lupita replay CALL_ID [CALL_ID ...]
    lupita replay --since 2026-01-01 [--until 2026-01-31]

The call index is Postgres ``companion_calls`` (the recorder's row: ``recording_status``,
``recording_consent``, ``s3_legal_key``, ``started_at``, ``phone_number_hash``, ``region``). For
each call:

1. the stereo WAV is streamed from the legal-archive bucket (left = Lupita, right = the person);
   sample 0 is the recording's ``timeline_origin`` (its ``metadata.json``; the call start when
   absent);
2. each leg is cut into 100 ms PCM16 ``AudioChunk`` records on the call timeline
   (``start_ts_us = origin + offset``, like :mod:`media_bridge.chunker` builds them) and fed
   with the call's lifecycle events to :class:`~.stages.vad.core.VadCore`, the batched streaming VAD
   of the ``vad`` agent (same code, same settings; partial snapshots are not made: nothing
   downstream of a replay uses them);
3. every FINAL segment is transcribed by the configured transcriber
   (:func:`~.models.asr.factory.build_transcriber`) and made a ``TranscriptEvent`` by the transcriber
   stage's :func:`~.stages.transcriber.core.transcript_event`, then an ``Utterance`` by the understanding
   agent's :func:`~.stages.understanding.agent.utterance_of`; alerts found on the person's leg are stored
   in ``call_alerts`` (idempotent per (call, cue); nothing is published on Kafka, nobody is paged
   for an old call);
4. :func:`~.stages.understanding.core.finish_call` REPLACES the derived data: Weaviate
   objects and Postgres rows are upserts on natural keys and utterances no longer found are
   deleted, so replaying a call twice changes nothing.

A call without recording consent or without audio is skipped with the reason; an unknown call
id is a usage error (exit 2) reported before any model is loaded. Progress goes to stderr, one
summary line per call to stdout. Exit 0: every call replayed or skipped; 1: one failed.
Phone numbers never appear (the index holds only their keyed hash, which is not printed either).
"""

from __future__ import annotations

import argparse
import logging
import struct
import sys
import time
from dataclasses import dataclass, field
from datetime import date, datetime, time as dtime, timedelta, timezone
from typing import Any, BinaryIO, Iterator, TextIO

import numpy as np

from lupita.audio import SUPPORTED_RATES
from lupita.v1 import audio_pb2, events_pb2

from stream_processor.records import is_valid_call_id
from stream_processor.settings import PipelineSettings

log = logging.getLogger("stream_processor.replay")

STAGE = "replay"
CHUNK_MS = 100
FRAME_MS = 20  # frame numbering of the synthetic chunks (the bridge's 20 ms frames)
STEP_EVERY_CHUNKS = 50  # run the batched VAD after this many chunks per leg (5 s of audio)
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class ReplaySettings(PipelineSettings):
    """Every stage's settings (vad, transcriber, understanding: analyzer, embedder, alert
    catalogue, sinks): a replay runs exactly what the worker runs."""


class UsageError(ValueError):
    """Bad arguments (unknown call id, bad date range): exit 2."""


# ------------------------------------------------------------------------------------------ WAV


class WavFormatError(ValueError):
    """The archived object is not the recorder's stereo PCM16 WAV."""


class WavStream:
    """Reads a RIFF/WAVE PCM16 stereo stream sequentially (no seeking: an S3 body works)."""

    def __init__(self, body: BinaryIO) -> None:
        self.body = body
        riff = self._exact(12)
        if riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
            raise WavFormatError("not a RIFF/WAVE file")
        fmt = None
        while True:
            head = self._exact(8)
            cid, size = head[:4], struct.unpack("<I", head[4:])[0]
            if cid == b"fmt ":
                fmt = self._exact(size + (size & 1))[:16]
            elif cid == b"data":
                break
            else:
                self._exact(size + (size & 1))
        if fmt is None or len(fmt) < 16:
            raise WavFormatError("no fmt chunk before the data")
        tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt)
        if tag != 1 or bits != 16 or channels != 2:
            raise WavFormatError(f"expected 2-channel 16-bit PCM, found format {tag}, {channels} channels, "
                                 f"{bits} bits")
        if rate not in SUPPORTED_RATES:
            raise WavFormatError(f"sample rate {rate} Hz not in {SUPPORTED_RATES}")
        self.sample_rate = rate
        # 0 / 0xFFFFFFFF: a streamed header without the size; read to the end then
        self.data_bytes = None if size in (0, 0xFFFFFFFF) else size
        self._left = self.data_bytes

    def _exact(self, n: int) -> bytes:
        data = self.body.read(n)
        if len(data) != n:
            raise WavFormatError("the WAV ends inside its header")
        return data

    def frames(self, per_block: int) -> Iterator[np.ndarray]:
        """Blocks of ``(n, 2)`` int16 frames, n <= per_block."""
        carry = b""
        while True:
            want = per_block * 4 - len(carry)
            if self._left is not None:
                want = min(want, self._left)
            data = self.body.read(want) if want > 0 else b""
            if self._left is not None:
                self._left -= len(data)
            buf = carry + data
            whole = len(buf) // 4 * 4
            if whole:
                yield np.frombuffer(buf[:whole], dtype="<i2").reshape(-1, 2)
            carry = buf[whole:]
            if not data or (self._left is not None and self._left <= 0):
                break


# ------------------------------------------------------------------------------------------ chunks


class LegChunks:
    """AudioChunk records of one leg on the call timeline, as the bridge's chunker makes them."""

    def __init__(self, call_id: str, leg: int, rate: int, origin_us: int) -> None:
        self.call_id, self.leg, self.rate, self.origin_us = call_id, leg, rate, origin_us
        self.seq = 0
        self.samples = 0  # samples emitted so far
        self.frame_samples = rate * FRAME_MS // 1000

    def chunk(self, pcm: np.ndarray) -> events_pb2.AudioChunk:
        frames = max(1, -(-pcm.size // self.frame_samples))
        first = self.samples // self.frame_samples
        c = events_pb2.AudioChunk(
            call_id=self.call_id, leg=self.leg, chunk_seq=self.seq, first_frame_seq=first,
            last_frame_seq=first + frames - 1,
            start_ts_us=self.origin_us + self.samples * 1_000_000 // self.rate,
            sample_rate_hz=self.rate, codec=audio_pb2.CODEC_PCM16,
            payload=pcm.astype("<i2").tobytes(), frame_count=frames,
        )
        self.seq += 1
        self.samples += int(pcm.size)
        return c


# ------------------------------------------------------------------------------------------ progress


class Progress:
    """A plain-text progress bar on stderr: calls done/total and the current call's work.
    On a terminal it redraws one line; otherwise it prints a line now and then."""

    def __init__(self, total: int, stream: TextIO | None = None, *, every_s: float = 2.0) -> None:
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = every_s
        self._last = 0.0
        self._shown = ""

    def _bar(self) -> str:
        width = 20
        filled = width * self.done // max(1, self.total)
        return f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} calls"

    def show(self, call_id: str, what: str, *, force: bool = False) -> None:
        line = f"replay {self._bar()} | {call_id}: {what}"
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self.stream.flush()
        elif force or now - self._last >= self.every_s:
            self.stream.write(line + "\n")
            self.stream.flush()
            self._last = now
        self._shown = line

    def call_done(self) -> None:
        self.done += 1
        self.clear()

    def clear(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def finish(self) -> None:
        line = f"replay {self._bar()}"
        self.stream.write(("\r\033[K" if self.tty else "") + line + "\n")
        self.stream.flush()


# ------------------------------------------------------------------------------------------ the index


_COLUMNS = """call_id, recording_status, recording_skipped_reason, recording_consent, s3_legal_key,
s3_metadata_key, started_at, ended_at, duration_seconds, phone_number_hash, region"""


@dataclass(frozen=True)
class CallEntry:
    """A ``companion_calls`` row as the replay needs it (never printed whole: it holds the hash)."""

    call_id: str
    recording_status: str
    skipped_reason: str | None
    consent: bool
    s3_legal_key: str | None
    s3_metadata_key: str | None
    started_at: datetime | None
    ended_at: datetime | None
    duration_seconds: float | None
    phone_hash: str | None = field(repr=False)
    region: str | None

    @classmethod
    def from_row(cls, r: tuple) -> "CallEntry":
        return cls(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6], r[7], r[8], r[9], r[10])

    def skip_reason(self) -> str | None:
        if self.recording_status != "recorded":
            why = f" ({self.skipped_reason})" if self.skipped_reason else ""
            return f"not recorded: recording_status {self.recording_status}{why}"
        if not self.consent:
            return "no recording consent"
        if not self.s3_legal_key:
            return "no audio in the legal archive (s3_legal_key is empty)"
        if self.started_at is None:
            return "no started_at"
        return None


def parse_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD") from None


def select_calls(dsn: str, *, call_ids: list[str] | None = None, since: date | None = None,
                 until: date | None = None) -> list[CallEntry]:
    """The calls to replay, in the order asked (ids) or by start time (range; UTC days, both
    inclusive). Raises :class:`UsageError` naming unknown or invalid ids, or an empty range."""
    import psycopg

    if call_ids:
        bad = [c for c in call_ids if not is_valid_call_id(c)]
        if bad:
            raise UsageError(f"not a valid call id: {', '.join(map(repr, bad))}")
        ids = list(dict.fromkeys(call_ids))
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM companion_calls WHERE call_id = ANY(%s)",
                                (ids,)).fetchall()
        found = {r[0]: CallEntry.from_row(r) for r in rows}
        unknown = [c for c in ids if c not in found]
        if unknown:
            raise UsageError(f"unknown call id{'s' if len(unknown) > 1 else ''} (no companion_calls row): "
                             f"{', '.join(unknown)}")
        return [found[c] for c in ids]
    assert since is not None
    lo = datetime.combine(since, dtime(), tzinfo=timezone.utc)
    hi = datetime.combine(until, dtime(), tzinfo=timezone.utc) + timedelta(days=1) if until else None
    if hi is not None and hi <= lo:
        raise UsageError(f"--until {until} is before --since {since}")
    sql = f"SELECT {_COLUMNS} FROM companion_calls WHERE started_at >= %s"
    params: list[Any] = [lo]
    if hi is not None:
        sql += " AND started_at < %s"
        params.append(hi)
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        rows = conn.execute(sql + " ORDER BY started_at, call_id", params).fetchall()
    return [CallEntry.from_row(r) for r in rows]


# ------------------------------------------------------------------------------------------ one call


def _us(dt: datetime) -> int:
    return int(round(dt.timestamp() * 1_000_000))


@dataclass
class Outcome:
    call_id: str
    status: str  # "ok" | "skipped" | "failed"
    detail: str


class Replayer:
    """The models and stores of a replay run (loaded once), and :meth:`replay` for one call."""

    def __init__(self, settings: ReplaySettings, *, transcriber: Any = None, services: Any = None,
                 s3: Any = None, model: Any = None) -> None:
        from stream_processor.stores.archive import s3_client
        from stream_processor.models.asr.factory import build_transcriber
        from stream_processor.stages.understanding.core import UnderstandingServices
        from stream_processor.models.vad import SileroModel
        from stream_processor.stages.vad.core import VadCore

        self.settings = settings
        self.s3 = s3 or s3_client(settings)
        # finals only: a replay has no use for partial snapshots
        self.vad = VadCore(model or SileroModel(intra_op_num_threads=settings.vad_threads),
                           settings.model_copy(update={"vad_partial_after_s": 0.0}))
        self.asr = transcriber or build_transcriber(settings)
        self.services = services or UnderstandingServices.from_settings(settings)

    def close(self) -> None:
        self.services.close()
        close = getattr(self.asr, "close", None)
        if close is not None:
            close()

    # -- steps ----------------------------------------------------------------------------------

    def _origin_us(self, entry: CallEntry) -> int:
        """Call time of WAV sample 0: the recording's timeline origin, else the call start."""
        import json

        started_us = _us(entry.started_at)  # type: ignore[arg-type]
        if not entry.s3_metadata_key:
            return started_us
        try:
            body = self.s3.get_object(Bucket=self.settings.s3_legal_bucket, Key=entry.s3_metadata_key)["Body"]
            meta = json.loads(body.read())
            origin = (meta.get("recording") or {}).get("timeline_origin")
            if origin:
                return _us(datetime.fromisoformat(origin.replace("Z", "+00:00")))
        except Exception as exc:  # noqa: BLE001 - the call start is the recorder's default origin
            log.warning("metadata.json not readable; the call start is the timeline origin",
                        extra={"stage": STAGE, "call_id": entry.call_id, "error": type(exc).__name__})
        return started_us

    def segments(self, entry: CallEntry, progress: Progress | None = None) -> tuple[list[Any], int, int]:
        """Stream the WAV through the VAD; returns (FINAL SegmentOuts, sample rate, ended_at_us)."""
        from stream_processor import records
        from stream_processor.records import KIND_FINAL

        call_id = entry.call_id
        started_us = _us(entry.started_at)  # type: ignore[arg-type]
        origin_us = self._origin_us(entry)
        obj = self.s3.get_object(Bucket=self.settings.s3_legal_bucket, Key=entry.s3_legal_key)
        body = obj["Body"]
        core = self.vad
        try:
            wav = WavStream(body)
            rate = wav.sample_rate
            started = events_pb2.CallLifecycle(call_id=call_id, started=events_pb2.CallStarted(
                started_at_us=started_us, direction=audio_pb2.DIRECTION_OUTBOUND, sample_rate_hz=rate,
                codec=audio_pb2.CODEC_PCM16, recording_consent=True, phone_hash=entry.phone_hash or "",
                region=entry.region or ""))
            now = time.time()
            core.forget(call_id)
            core.on_lifecycle(started, None, now)
            legs = {leg: LegChunks(call_id, leg, rate, origin_us) for leg in (audio_pb2.LEG_LUPITA,
                                                                           audio_pb2.LEG_PERSON)}
            per_chunk = rate * CHUNK_MS // 1000
            out: list[Any] = []
            bad = 0
            for block in wav.frames(per_chunk * STEP_EVERY_CHUNKS):
                for i in range(0, len(block), per_chunk):
                    piece = block[i:i + per_chunk]
                    for column, leg in enumerate((audio_pb2.LEG_LUPITA, audio_pb2.LEG_PERSON)):
                        chunk = legs[leg].chunk(np.ascontiguousarray(piece[:, column]))
                        try:
                            core.on_chunk(chunk, b"", None, now)
                        except records.BadRecord as exc:
                            bad += 1
                            log.warning("chunk refused by the vad", extra={
                                "stage": STAGE, "call_id": call_id, "reason": exc.reason, "error": str(exc)})
                out.extend(core.step())
                if progress is not None:
                    seconds = legs[audio_pb2.LEG_LUPITA].samples / rate
                    found = sum(1 for s in out if s.kind == KIND_FINAL)
                    progress.show(call_id, f"vad {seconds:.0f} s of audio, {found} segments")
            audio_us = legs[audio_pb2.LEG_LUPITA].samples * 1_000_000 // rate
            ended_us = _us(entry.ended_at) if entry.ended_at else origin_us + audio_us
            ended = events_pb2.CallLifecycle(call_id=call_id, ended=events_pb2.CallEnded(
                ended_at_us=ended_us, reason="replay",
                chunks_lupita=legs[audio_pb2.LEG_LUPITA].seq, chunks_person=legs[audio_pb2.LEG_PERSON].seq))
            core.on_lifecycle(ended, None, now)
            out.extend(core.step())
            core.finish(call_id, "replay", now)
            out.extend(core.take_outputs())
        finally:
            core.forget(call_id)
            close = getattr(body, "close", None)
            if close is not None:
                close()
        finals = [s for s in out if s.kind == KIND_FINAL]
        # the order in which the live worker would see them: by end of speech
        finals.sort(key=lambda s: (s.end, s.leg, s.seq))
        return finals, rate, ended_us

    def transcript(self, seg: Any) -> events_pb2.TranscriptEvent:
        """One FINAL segment → its TranscriptEvent, with the transcriber agent's error rules."""
        from stream_processor.models.asr.base import AsrError, AudioInputError
        from stream_processor.stages.transcriber.core import segment_audio, transcript_event

        proto = seg.to_proto(time.time_ns() // 1000)
        try:
            result = self.asr.transcribe(segment_audio(proto), proto.sample_rate_hz)
        except AudioInputError as exc:
            log.warning("segment audio refused by the transcriber", extra={
                "stage": STAGE, "call_id": seg.call_id, "seq": seg.seq, "error": str(exc)})
            return transcript_event(proto, None, emitted_at_us=time.time_ns() // 1000, error="audio")
        except AsrError as exc:
            log.error("transcription failed", extra={
                "stage": STAGE, "call_id": seg.call_id, "seq": seg.seq, "error": str(exc)[:300]})
            return transcript_event(proto, None, emitted_at_us=time.time_ns() // 1000, error=type(exc).__name__)
        return transcript_event(proto, result, emitted_at_us=time.time_ns() // 1000)

    def replay(self, entry: CallEntry, progress: Progress | None = None) -> Outcome:
        from stream_processor.stages.understanding.core import CallUnderstanding, finish_call
        from stream_processor.stages.understanding.agent import utterance_of, words_of
        from stream_processor.records import LEG_NAMES

        t0 = time.monotonic()
        call_id = entry.call_id
        why = entry.skip_reason()
        if why is not None:
            return Outcome(call_id, "skipped", why)
        if progress is not None:
            progress.show(call_id, "reading the WAV", force=True)
        finals, _, ended_us = self.segments(entry, progress)
        svc = self.services
        cu = CallUnderstanding(call_id)
        cu.start(started_at_us=_us(entry.started_at), phone_hash=entry.phone_hash,  # type: ignore[arg-type]
                 region=entry.region, consent=True, detector=svc.detector)
        per_leg = {name: 0 for name in LEG_NAMES.values()}
        alerts = 0
        for i, seg in enumerate(finals):
            per_leg[LEG_NAMES[seg.leg]] += 1
            if progress is not None:
                progress.show(call_id, f"transcribing segment {i + 1}/{len(finals)}", force=i + 1 == len(finals))
            ev = self.transcript(seg)
            hits = cu.on_final(utterance_of(ev), svc.detector, svc.sentiment_of, words=words_of(ev))
            for hit in hits:
                svc.postgres.write_alert(hit)
                alerts += 1
        cu.end(ended_us)
        if progress is not None:
            progress.show(call_id, "analysing and storing", force=True)
        result = finish_call(cu, svc)
        a, pg = result.analysis, result.postgres
        detail = (
            f"segments lupita={per_leg['lupita']} person={per_leg['person']}, utterances {result.utterances}"
            f" (blank {cu.blank_finals}), alerts {alerts}, topics {list(a.topics)}, emotion {a.emotion_primary},"
            f" codes {list(a.behavioral_codes)}, facts {len(a.facts)}, weaviate {result.weaviate_id or '-'}"
            f" (vector {result.vector_dim or '-'}), postgres row {pg.call_row}, utterances written"
            f" {pg.utterances_written} deleted {pg.utterances_deleted}, {time.monotonic() - t0:.1f} s"
        )
        log.info("call replayed", extra={"stage": STAGE, "call_id": call_id, "utterances": result.utterances,
                                         "weaviate_id": result.weaviate_id, "postgres": pg.call_row})
        return Outcome(call_id, "ok", detail)


# ------------------------------------------------------------------------------------------ command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("call_ids", nargs="*", metavar="CALL_ID", help="calls to replay")
    parser.add_argument("--since", type=parse_day, metavar="YYYY-MM-DD",
                        help="replay every call started on or after this day (UTC)")
    parser.add_argument("--until", type=parse_day, metavar="YYYY-MM-DD",
                        help="with --since: up to and including this day (UTC)")
    parser.add_argument("--log-level", default="WARNING",
                        help="level of the JSON logs on stdout (default WARNING: the summaries stay readable)")


def _usage(message: str) -> int:
    print(f"lupita replay: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from lupita.logs import setup_logging

    setup_logging("replay", args.log_level)
    if bool(args.call_ids) == bool(args.since):
        return _usage("give CALL_ID ... or --since YYYY-MM-DD (not both, not neither)")
    if args.until and not args.since:
        return _usage("--until needs --since")
    try:
        settings = ReplaySettings()
    except ValidationError as exc:
        problems = [(f"LUPITA_{str(e['loc'][0]).upper()}: " if e["loc"] else "") + e["msg"]
                    for e in exc.errors(include_input=False, include_url=False)]
        return _usage("invalid settings: " + "; ".join(problems))
    try:
        entries = select_calls(settings.postgres_dsn.get_secret_value(), call_ids=args.call_ids,
                               since=args.since, until=args.until)
    except UsageError as exc:
        return _usage(str(exc))
    if not entries:
        print(f"replay: no call started between {args.since} and {args.until or 'now'}")
        return EXIT_OK
    progress = Progress(len(entries))
    replayer = None
    outcomes: list[Outcome] = []
    try:
        for entry in entries:
            if entry.skip_reason() is None and replayer is None:
                progress.show(entry.call_id, "loading the models", force=True)
                replayer = Replayer(settings)
            try:
                outcome = (replayer.replay(entry, progress) if replayer is not None
                           else Outcome(entry.call_id, "skipped", entry.skip_reason() or ""))
            except Exception as exc:  # noqa: BLE001 - one bad call must not stop the others
                from stream_processor.errors import safe_error

                log.error("replay failed", extra={"stage": STAGE, "call_id": entry.call_id,
                                                  "error": safe_error(exc)})
                outcome = Outcome(entry.call_id, "failed", f"{type(exc).__name__}: {safe_error(exc)}")
            progress.call_done()
            outcomes.append(outcome)
            label = {"ok": "ok", "skipped": "skipped", "failed": "FAILED"}[outcome.status]
            print(f"{outcome.call_id} {label}: {outcome.detail}", flush=True)
    finally:
        if replayer is not None:
            replayer.close()
    progress.finish()
    counts = {s: sum(1 for o in outcomes if o.status == s) for s in ("ok", "skipped", "failed")}
    print(f"replay: {counts['ok']} replayed, {counts['skipped']} skipped, {counts['failed']} failed", flush=True)
    return EXIT_FAILED if counts["failed"] else EXIT_OK


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="lupita replay")
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))
