"""The vad stage's pure core: streaming VAD over every leg of every open call (no Kafka, no
stores, no clock of its own: ``now`` is passed in).

:class:`VadCore` places each leg's chunks on the call timeline (like the recorder's WAV: sample
``round((start_ts_us - call start) x rate)``, gaps are silence, an overlap loses its head,
capture jitter within ``align_tolerance_ms`` is contiguous), decodes mu-law with
:mod:`lupita.audio`, feeds one :class:`~stream_processor.models.vad.BatchedVad` shared by every
(call, leg) stream and drains it -- each step is ONE batched inference over every stream that
has a window ready -- and turns the segment events into :class:`SegmentOut` records with their
audio. Past audio is kept per leg only as far back as a segment can still start (the
segmenter's open raw start, or its next window, minus the padding) or as far as the open
segment goes. Its whole state per call exports to a JSON value plus the raw audio pieces still
needed, and imports back (``export_call`` / ``load``). The arrival rules (started, chunks,
ended, when a call is due) are the shared :mod:`stream_processor.callstate` ones, with the vad's
own waits.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from lupita.audio import decode_pcm16
from lupita.v1 import events_pb2

from stream_processor import callstate as cs
from stream_processor import records
from stream_processor.models.vad import WINDOW_SAMPLES, BatchedVad, SegmentEvent, SileroModel, WindowResult
from stream_processor.records import KIND_END, KIND_FINAL, KIND_PARTIAL, LEG_BY_NAME, LEG_NAMES, LEGS
from stream_processor.stages.vad.metrics import BAD_RECORDS
from stream_processor.stages.vad.settings import VadStageSettings

log = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass(frozen=True)
class SegmentOut:
    """One speech.segments record, before serialisation. Samples are call-time samples."""

    call_id: str
    leg: int
    seq: int
    kind: int
    revision: int
    start: int
    end: int
    sample_rate: int
    pcm16: bytes
    origin_us: int

    @property
    def start_us(self) -> int:
        return self.start * 1_000_000 // self.sample_rate

    @property
    def end_us(self) -> int:
        return self.end * 1_000_000 // self.sample_rate

    @property
    def ident(self) -> tuple[str, int, int, int, int]:
        return (self.call_id, self.leg, self.seq, self.kind, self.revision)

    def to_proto(self, emitted_at_us: int) -> events_pb2.SpeechSegment:
        return events_pb2.SpeechSegment(
            call_id=self.call_id, leg=self.leg, seq=self.seq, start_us=self.start_us, end_us=self.end_us,
            sample_rate_hz=self.sample_rate, pcm16=self.pcm16, kind=self.kind, revision=self.revision,
            call_started_at_us=self.origin_us, emitted_at_us=emitted_at_us,
        )


@dataclass
class _Piece:
    seq: int  # chunk_seq it came from
    pos: int  # call-time sample of its first sample
    samples: np.ndarray  # int16


@dataclass
class _Leg:
    leg: int
    base: int = 0  # call-time sample of the VAD stream's sample 0
    cursor: int = 0  # call-time sample where the next audio of this leg goes
    placed: bool = False  # a chunk was placed (capture-jitter rule applies from then on)
    last_seq: int = -1  # highest chunk_seq fed
    seq_base: int = 0  # segment seq of the current VAD stream's segment 0
    segments: int = 0  # FINAL segments emitted
    open: dict[str, int] | None = None  # {"seq", "start", "next_partial"} of the open segment
    pieces: list[_Piece] = field(default_factory=list)
    vad_open: bool = False  # the leg has a stream in the BatchedVad
    ended: bool = False  # END_OF_LEG emitted


@dataclass
class _Call:
    state: cs.CallState
    legs: dict[int, _Leg]
    held: list[bytes] = field(default_factory=list)  # AudioChunk records waiting for the started event
    new_pieces: dict[str, bytes] = field(default_factory=dict)  # audio table keys to write
    gone_pieces: list[str] = field(default_factory=list)  # audio table keys to delete

    @property
    def origin_us(self) -> int:
        return int(self.state.started["started_at_us"]) if self.state.started else 0

    @property
    def rate(self) -> int | None:
        return int(self.state.started["sample_rate_hz"]) if self.state.started else None


def piece_key(call_id: str, leg: int, seq: int) -> str:
    return f"{call_id}:{LEG_NAMES[leg]}:{seq}"


def stream_id(call_id: str, leg: int) -> str:
    return f"{call_id}:{LEG_NAMES[leg]}"


class VadCore:
    """Streaming VAD over every leg of every open call (pure: no Kafka, no clock of its own).

    Records go in through :meth:`on_chunk` / :meth:`on_lifecycle` (cheap: decode and feed),
    :meth:`step` runs the batched inference and returns the segments it closed or snapshotted,
    :meth:`check` finishes a call that is due (complete, grace expired, idle) and purges old
    tombstones. :meth:`export_call` / :meth:`load` carry a call across worker restarts.
    """

    def __init__(self, model: SileroModel, settings: VadStageSettings | None = None) -> None:
        self.settings = settings if settings is not None else VadStageSettings(_env_file=None)
        self.vad = BatchedVad(model, self.settings)
        self.calls: dict[str, _Call] = {}
        self._out: list[SegmentOut] = []

    # -- state in and out --------------------------------------------------------------------------

    def has(self, call_id: str) -> bool:
        return call_id in self.calls

    def load(self, call_id: str, value: dict[str, Any], get_piece: Callable[[str], bytes | None]) -> None:
        """Rebuild a call from :meth:`export_call`'s value and its audio pieces."""
        if call_id in self.calls:
            self.forget(call_id)
        if not isinstance(value, dict) or value.get("v") != STATE_VERSION:
            raise ValueError(f"vad state of call {call_id} is not version {STATE_VERSION}")
        call = _Call(state=cs.CallState.from_dict(value["call"]), legs={})
        call.held = [base64.b64decode(h) for h in value.get("held", [])]
        for name, data in value["legs"].items():
            leg = LEG_BY_NAME[name]
            lg = _Leg(
                leg=leg, base=data["base"], cursor=data["cursor"], placed=data["placed"],
                last_seq=data["last_seq"], seq_base=data["seq_base"], segments=data["segments"],
                open=data["open"], ended=data["ended"],
            )
            for seq, pos, n in data["pieces"]:
                raw = get_piece(piece_key(call_id, leg, seq))
                if raw is None or len(raw) != 2 * n:
                    log.error("vad audio piece missing after recovery; silence instead",
                              extra={"stage": "vad", "call_id": call_id, "leg": name, "chunk_seq": seq})
                    raw = bytes(2 * n)
                lg.pieces.append(_Piece(seq, pos, np.frombuffer(raw, dtype="<i2").astype(np.int16)))
            if data["vad"] is not None:
                sid = stream_id(call_id, leg)
                try:
                    self.vad.import_state(sid, data["vad"])
                    lg.vad_open = True
                except ValueError as exc:
                    # e.g. the segmentation settings changed between runs: start the leg's VAD
                    # again from where its audio stands (what was open is lost, and said so).
                    log.error("vad stream state not importable; the leg's VAD restarts here",
                              extra={"stage": "vad", "call_id": call_id, "leg": name, "error": str(exc)})
                    lg.base = lg.cursor
                    lg.seq_base = lg.segments
                    lg.open = None
            call.legs[leg] = lg
        self.calls[call_id] = call

    def export_call(self, call_id: str) -> tuple[dict[str, Any] | None, dict[str, bytes], list[str]]:
        """``(value, pieces to write, piece keys to delete)``; value None = the call is gone.

        Drops the audio no segment can need any more first (see :meth:`_trim`)."""
        call = self.calls.get(call_id)
        if call is None:
            return None, {}, []
        legs = {}
        for leg, lg in call.legs.items():
            vad_state = self.vad.export_state(stream_id(call_id, leg)) if lg.vad_open else None
            self._trim(call, lg, vad_state)
            legs[LEG_NAMES[leg]] = {
                "base": lg.base, "cursor": lg.cursor, "placed": lg.placed, "last_seq": lg.last_seq,
                "seq_base": lg.seq_base, "segments": lg.segments, "open": lg.open, "ended": lg.ended,
                "pieces": [[p.seq, p.pos, int(p.samples.size)] for p in lg.pieces],
                "vad": vad_state,
            }
        value = {
            "v": STATE_VERSION,
            "call": call.state.to_dict(),
            "held": [base64.b64encode(h).decode("ascii") for h in call.held],
            "legs": legs,
        }
        live = {piece_key(call_id, leg, p.seq) for leg, lg in call.legs.items() for p in lg.pieces}
        new = {k: v for k, v in call.new_pieces.items() if k in live}
        # pieces made and forgotten since the last export were never written: nothing to delete
        gone = [k for k in call.gone_pieces if k not in live and k not in call.new_pieces]
        call.new_pieces, call.gone_pieces = {}, []
        return value, new, gone

    def forget(self, call_id: str) -> None:
        """Drop a call from memory (its table state stays as it is)."""
        call = self.calls.pop(call_id, None)
        if call is None:
            return
        for leg, lg in call.legs.items():
            if lg.vad_open:
                self.vad.discard(stream_id(call_id, leg))

    def clear(self) -> None:
        for call_id in list(self.calls):
            self.forget(call_id)
        self._out = []

    # -- records -------------------------------------------------------------------------------------

    def _call(self, call_id: str, partition: int | None, now: float) -> _Call:
        call = self.calls.get(call_id)
        if call is None:
            call = self.calls[call_id] = _Call(state=cs.new_state(call_id, now),
                                               legs={leg: _Leg(leg) for leg in LEGS})
        if call.state.partition is None:
            call.state.partition = partition
        return call

    def on_chunk(self, chunk: events_pb2.AudioChunk, raw: bytes, partition: int | None, now: float) -> str | None:
        """Apply a validated chunk; returns why it was not fed (None: fed or held)."""
        call = self._call(chunk.call_id, partition, now)
        if call.state.status != cs.OPEN:
            call.state.last_seen = now
            return "late"
        if not cs.apply_chunk(call.state, chunk, now):
            return "no_consent"
        if call.state.started is None:
            if len(call.held) >= self.settings.vad_max_held_chunks:
                raise records.BadRecord(
                    f"chunk {chunk.chunk_seq}: more than {self.settings.vad_max_held_chunks} chunks before the "
                    "call's started event; dropped", reason="held_overflow")
            call.held.append(bytes(raw))
            return None
        return self._place(call, chunk)

    def on_lifecycle(self, event: events_pb2.CallLifecycle, partition: int | None, now: float) -> None:
        call = self._call(event.call_id, partition, now)
        if call.state.status != cs.OPEN:
            call.state.last_seen = now
            return
        if event.WhichOneof("event") == "started":
            had_start = call.state.started is not None
            cs.apply_started(call.state, event.started, now)
            if had_start:
                return
            if not call.state.consent:
                call.held = []
                for leg, lg in call.legs.items():
                    self._drop_leg_audio(call, lg)
                return
            held, call.held = call.held, []
            for raw in held:
                chunk = events_pb2.AudioChunk()
                chunk.ParseFromString(raw)
                try:
                    self._place(call, chunk)
                except records.BadRecord as exc:
                    BAD_RECORDS.labels(exc.reason).inc()
                    log.warning("held chunk skipped", extra={"stage": "vad", "call_id": call.state.call_id,
                                                             "reason": exc.reason, "error": str(exc)})
        else:
            cs.apply_ended(call.state, event.ended, now)

    def _place(self, call: _Call, chunk: events_pb2.AudioChunk) -> str | None:
        lg = call.legs[chunk.leg]
        if lg.ended:
            return "late"
        if chunk.chunk_seq <= lg.last_seq:
            return "duplicate"
        rate = call.rate
        if chunk.sample_rate_hz != rate:
            raise records.BadRecord(
                f"chunk {chunk.chunk_seq} of leg {LEG_NAMES[chunk.leg]}: sample rate {chunk.sample_rate_hz} Hz "
                f"differs from the call's {rate} Hz", reason="rate_mismatch")
        pcm = decode_pcm16(chunk.payload, chunk.codec)
        n = int(pcm.size)
        pos = int(round((chunk.start_ts_us - call.origin_us) * rate / 1e6))
        tolerance = int(round(self.settings.recorder_align_tolerance_ms * rate / 1000.0))
        if lg.placed and abs(pos - lg.cursor) <= tolerance:
            pos = lg.cursor  # capture-timestamp jitter: contiguous
        if pos + n > self.settings.recorder_max_call_seconds * rate:
            raise records.BadRecord(
                f"chunk {chunk.chunk_seq} of leg {LEG_NAMES[chunk.leg]} ends {(pos + n) / rate:.1f} s after the "
                f"call start, beyond the {self.settings.recorder_max_call_seconds:.0f} s limit", reason="beyond_limit")
        lg.last_seq = int(chunk.chunk_seq)
        skip = max(0, lg.cursor - pos)
        if skip >= n:
            return "overlap"
        samples = pcm[skip:]
        start = pos + skip
        gap = start - lg.cursor
        sid = stream_id(call.state.call_id, chunk.leg)
        if gap > self.settings.vad_max_gap_s * rate:
            # Restart the leg's VAD at the new position: what is open closes where the audio stopped.
            if lg.vad_open:
                self._finish_stream(call, lg)
            lg.base = lg.cursor = start
            lg.seq_base = lg.segments
        elif gap > 0:
            self.vad.feed(sid, np.zeros(gap, dtype=np.int16), rate)
            lg.cursor = start
        self.vad.feed(sid, samples, rate)
        lg.vad_open = True
        lg.pieces.append(_Piece(int(chunk.chunk_seq), start, samples.astype(np.int16, copy=True)))
        call.new_pieces[piece_key(call.state.call_id, chunk.leg, int(chunk.chunk_seq))] = \
            samples.astype("<i2").tobytes()
        lg.cursor = start + samples.size
        lg.placed = True
        return None

    # -- the batched inference ------------------------------------------------------------------------

    def step(self, on_batch: Callable[[int], None] | None = None) -> list[SegmentOut]:
        """Run every ready window of every stream, one batched inference per step; the segments
        closed (FINAL) or snapshotted (PARTIAL) so far, in order per leg."""
        while True:
            results = self.vad.step()
            if not results:
                break
            if on_batch is not None:
                on_batch(len(results))
            for r in results:
                call_id, name = r.stream_id.rsplit(":", 1)
                call = self.calls[call_id]
                self._on_window(call, call.legs[LEG_BY_NAME[name]], r)
        out, self._out = self._out, []
        return out

    def _on_window(self, call: _Call, lg: _Leg, r: WindowResult) -> None:
        for e in r.events:
            self._on_event(call, lg, e)
        if lg.open is not None and r.probability == r.probability:  # not NaN: a real window
            processed = lg.base + r.start_sample + WINDOW_SAMPLES[call.rate]
            self._maybe_partial(call, lg, processed)

    def _on_event(self, call: _Call, lg: _Leg, e: SegmentEvent) -> None:
        seq = lg.seq_base + e.seq
        if e.kind == "start":
            lg.open = {"seq": seq, "start": lg.base + e.start_sample, "next_partial": 0}
            return
        start, end = lg.base + e.start_sample, lg.base + int(e.end_sample)  # type: ignore[arg-type]
        revision = lg.open["next_partial"] if lg.open is not None and lg.open["seq"] == seq else 0
        self._emit(call, lg, seq, KIND_FINAL, revision, start, end)
        lg.segments = seq + 1
        lg.open = None

    def _maybe_partial(self, call: _Call, lg: _Leg, processed: int) -> None:
        cfg = self.settings
        if cfg.vad_partial_after_s <= 0 or lg.open is None:
            return
        rate = call.rate
        start, k = lg.open["start"], lg.open["next_partial"]

        def boundary(i: int) -> int:
            return start + int(round((cfg.vad_partial_after_s + i * cfg.vad_partial_every_s) * rate))

        if boundary(k) > processed:
            return
        while boundary(k + 1) <= processed:  # a late start: only the latest snapshot is useful
            k += 1
        self._emit(call, lg, lg.open["seq"], KIND_PARTIAL, k, start, boundary(k))
        lg.open["next_partial"] = k + 1

    def _emit(self, call: _Call, lg: _Leg, seq: int, kind: int, revision: int, start: int, end: int) -> None:
        self._out.append(SegmentOut(
            call.state.call_id, lg.leg, seq, kind, revision, start, end, call.rate or 0,
            self._audio(lg, start, end).tobytes() if kind != KIND_END else b"", call.origin_us,
        ))

    def _audio(self, lg: _Leg, start: int, end: int) -> np.ndarray:
        out = np.zeros(max(0, end - start), dtype="<i2")
        for p in lg.pieces:
            lo, hi = max(start, p.pos), min(end, p.pos + p.samples.size)
            if lo < hi:
                out[lo - start: hi - start] = p.samples[lo - p.pos: hi - p.pos]
        return out

    def _trim(self, call: _Call, lg: _Leg, vad_state: dict[str, Any] | None) -> None:
        """Forget audio that no segment can still use: before the open segment's start, and
        before the earliest start a future segment can have (the segmenter's open raw start, or
        its next window, minus the padding; one window more for safety)."""
        rate = call.rate
        if rate is None:
            return
        keep = lg.cursor
        if lg.open is not None:
            keep = min(keep, lg.open["start"])
        if vad_state is not None:
            seg = vad_state["segmenter"]
            window = WINDOW_SAMPLES[rate]
            pad = int(self.settings.vad_speech_pad_ms * rate / 1000) + window
            keep = min(keep, lg.base + seg["windows"] * window - pad)
            if seg["open_start"] is not None:
                keep = min(keep, lg.base + seg["open_start"] - pad)
        kept = []
        for p in lg.pieces:
            if p.pos + p.samples.size <= keep:
                call.gone_pieces.append(piece_key(call.state.call_id, lg.leg, p.seq))
            else:
                kept.append(p)
        lg.pieces = kept

    # -- end of a call --------------------------------------------------------------------------------

    def _finish_stream(self, call: _Call, lg: _Leg) -> None:
        sid = stream_id(call.state.call_id, lg.leg)
        for r in self.vad.finish(sid):
            self._on_window(call, lg, r)
        lg.vad_open = False
        if lg.open is not None:  # cannot happen: finish() closes every segment
            log.error("segment left open at the end of a stream", extra={
                "stage": "vad", "call_id": call.state.call_id, "leg": LEG_NAMES[lg.leg]})
            lg.open = None

    def _drop_leg_audio(self, call: _Call, lg: _Leg) -> None:
        if lg.vad_open:
            self.vad.discard(stream_id(call.state.call_id, lg.leg))
            lg.vad_open = False
        for p in lg.pieces:
            call.gone_pieces.append(piece_key(call.state.call_id, lg.leg, p.seq))
        lg.pieces = []
        lg.open = None

    def due(self, call_id: str, now: float, *, alive_since: float, backlog: bool = False) -> str | None:
        call = self.calls.get(call_id)
        if call is None:
            return None
        return due_reason(call.state, now, self.settings, alive_since=alive_since, backlog=backlog)

    def check(self, call_id: str, now: float, *, alive_since: float, backlog: bool = False) -> str | None:
        """Finish the call if it is due, purge its tombstone if that is due; returns what was done
        ("finished:<reason>", "dropped:no_started_event", "purged") or None."""
        call = self.calls.get(call_id)
        if call is None:
            return None
        state = call.state
        if cs.purge_due(state, now, self.settings.vad_state_retention_seconds):
            self.forget(call_id)
            return "purged"
        reason = self.due(call_id, now, alive_since=alive_since, backlog=backlog)
        if reason is None:
            return None
        if reason == cs.REASON_NO_START:
            dropped = len(call.held)
            call.held = []
            cs.mark_done(state, {"recording_status": cs.SKIPPED, "reason": reason, "dropped_chunks": dropped}, now)
            return f"dropped:{reason}"
        self.finish(call_id, reason, now)
        return f"finished:{reason}"

    def finish(self, call_id: str, reason: str, now: float) -> None:
        """Close both legs: flush the open segments, emit END_OF_LEG per leg, keep a tombstone."""
        call = self.calls[call_id]
        segments = {}
        for leg in LEGS:
            lg = call.legs[leg]
            if lg.vad_open:
                self._finish_stream(call, lg)
            self._drop_leg_audio(call, lg)
            if not lg.ended:
                self._emit(call, lg, lg.segments, KIND_END, 0, lg.cursor, lg.cursor)
                lg.ended = True
            segments[LEG_NAMES[leg]] = lg.segments
        status = cs.RECORDED if call.state.consent else cs.SKIPPED
        cs.mark_done(call.state, {"recording_status": status, "reason": reason, "segments": segments}, now)

    def take_outputs(self) -> list[SegmentOut]:
        out, self._out = self._out, []
        return out


def due_reason(state: cs.CallState, now: float, settings: VadStageSettings, *, alive_since: float,
               backlog: bool = False) -> str | None:
    """The shared arrival rule (:func:`stream_processor.callstate.due_reason`) with the vad stage's own waits."""
    return cs.due_reason(state, now, grace_seconds=settings.vad_grace_seconds, idle_seconds=settings.vad_idle_seconds,
                         orphan_seconds=settings.vad_orphan_seconds, alive_since=alive_since, backlog=backlog)
