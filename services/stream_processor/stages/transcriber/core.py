"""The transcriber stage's pure core (no Kafka, no stores): :func:`parse_segment` validates a
``speech.segments`` record, :func:`order_key` orders the records of one (call, leg) so a
redelivery is recognised, :func:`transcript_event` turns a
:class:`~stream_processor.models.asr.TranscriptResult` into the ``TranscriptEvent`` (times shifted
from segment time to call time), :func:`stale_partial` says when a partial is not worth decoding
any more."""

from __future__ import annotations

import re

import numpy as np

from lupita.audio import SUPPORTED_RATES
from lupita.v1 import events_pb2

from stream_processor import records
from stream_processor.models.asr.base import TranscriptResult
from stream_processor.records import KIND_END, KIND_FINAL, KIND_PARTIAL, LEG_NAMES

_RANK = {KIND_PARTIAL: 0, KIND_FINAL: 1, KIND_END: 2}
MAX_SEGMENT_SECONDS = 31.0

# ================================================================================================
# pure parts
# ================================================================================================


def parse_segment(key: bytes | None, value: bytes | None) -> events_pb2.SpeechSegment:
    """Decode and validate a ``speech.segments`` record; raises :class:`~stream_processor.records.BadRecord`."""
    seg = events_pb2.SpeechSegment()
    try:
        seg.ParseFromString(value or b"")
    except Exception as exc:
        raise records.BadRecord(f"speech.segments value is not a SpeechSegment protobuf: {exc}",
                           reason="undecodable") from exc
    records.check_call_id(seg.call_id, key)
    if seg.leg not in LEG_NAMES:
        raise records.BadRecord(f"segment {seg.seq}: leg {seg.leg} is not LEG_LUPITA or LEG_PERSON")
    if seg.kind not in _RANK:
        raise records.BadRecord(f"segment {seg.seq}: kind {seg.kind} is not FINAL, PARTIAL or END_OF_LEG")
    if seg.kind == KIND_END:
        return seg
    if seg.sample_rate_hz not in SUPPORTED_RATES:
        raise records.BadRecord(f"segment {seg.seq}: sample rate {seg.sample_rate_hz} not in {SUPPORTED_RATES}")
    if not seg.pcm16 or len(seg.pcm16) % 2:
        raise records.BadRecord(f"segment {seg.seq}: pcm16 of {len(seg.pcm16)} bytes is not a positive whole "
                           "number of 2-byte samples")
    if len(seg.pcm16) > 2 * seg.sample_rate_hz * MAX_SEGMENT_SECONDS:
        raise records.BadRecord(f"segment {seg.seq}: {len(seg.pcm16) / 2 / seg.sample_rate_hz:.1f} s of audio, "
                           f"more than {MAX_SEGMENT_SECONDS:.0f} s")
    if seg.end_us <= seg.start_us or seg.start_us < 0:
        raise records.BadRecord(f"segment {seg.seq}: start_us {seg.start_us} / end_us {seg.end_us} are not a "
                           "non-negative, increasing pair")
    return seg


def stream_key(seg: events_pb2.SpeechSegment) -> str:
    return f"{seg.call_id}:{LEG_NAMES[seg.leg]}"


def order_key(seg: events_pb2.SpeechSegment) -> tuple[int, int, int]:
    """Total order of one leg's records as the vad emits them: by seq, then partial snapshots
    (by revision) before the final, and END_OF_LEG (seq = number of segments) last."""
    return (int(seg.seq), _RANK[seg.kind], int(seg.revision))


def stale_partial(seg: events_pb2.SpeechSegment, waiting: list[events_pb2.SpeechSegment]) -> bool:
    """A partial is stale when a newer record of the same leg is already waiting behind it."""
    return seg.kind == KIND_PARTIAL and any(order_key(w) > order_key(seg) for w in waiting)


def _us(seconds: float) -> int:
    return int(round(seconds * 1_000_000))


def transcript_event(seg: events_pb2.SpeechSegment, result: TranscriptResult | None, *,
                     emitted_at_us: int, error: str | None = None) -> events_pb2.TranscriptEvent:
    """The TranscriptEvent of a segment; words move from segment time to call time.

    ``result`` None with ``error``: the segment could not be transcribed (the final is still
    published, empty, so downstream never waits for it; ``guard_actions`` names the error)."""
    ev = events_pb2.TranscriptEvent(
        call_id=seg.call_id, leg=seg.leg, seq=seg.seq, is_partial=seg.kind == KIND_PARTIAL,
        revision=seg.revision, emitted_at_us=emitted_at_us, segment_start_us=seg.start_us,
        segment_end_us=seg.end_us, call_started_at_us=seg.call_started_at_us,
    )
    if result is None:
        ev.guard_actions.append(f"error:{error or 'unknown'}")
        return ev
    moved = result.shifted(seg.start_us / 1_000_000)
    ev.text = moved.text
    ev.language = moved.language
    ev.backend = moved.backend
    ev.model = moved.model
    ev.guard_actions.extend(moved.guard_actions)
    if moved.fallback_from:
        ev.fallback_from = moved.fallback_from
    if moved.confidence is not None:
        ev.confidence = float(moved.confidence)
    for w in moved.words:
        tw = ev.words.add(word=w.text, start_us=_us(w.start), end_us=_us(w.end))
        if w.probability is not None:
            tw.probability = float(w.probability)
    return ev


def empty_reason(ev: events_pb2.TranscriptEvent) -> str:
    """Why a final came out without text, from its guard actions: ``error``, ``quiet_audio``
    (below the level decoded at all), ``silence`` / ``hallucination`` / ``repetition`` (a guard
    removed what Whisper wrote), ``pack_gap`` (every word of a packed decode fell in a gap), or
    ``no_speech_decoded`` (Whisper wrote nothing). For the empty-final rate on voiced segments."""
    actions = list(ev.guard_actions)
    for prefix, reason in (("error:", "error"), ("quiet_audio", "quiet_audio"), ("silence", "silence"),
                           ("hallucination", "hallucination"), ("repetition", "repetition"),
                           ("compression", "repetition"), ("pack_gap_word", "pack_gap")):
        if any(a.startswith(prefix) for a in actions):
            return reason
    return "no_speech_decoded"


def guard_action_name(action: str) -> str:
    """A guard action without its detail, for a metric label: ``hallucination:gracias`` ->
    ``hallucination``, ``compression_ratio>2.4`` -> ``compression_ratio`` (a bounded set of names)."""
    return re.split(r"[:>]", action, maxsplit=1)[0] or "unknown"


def leg_complete_event(seg: events_pb2.SpeechSegment, *, emitted_at_us: int) -> events_pb2.TranscriptEvent:
    return events_pb2.TranscriptEvent(
        call_id=seg.call_id, leg=seg.leg, seq=seg.seq, leg_complete=True, emitted_at_us=emitted_at_us,
        segment_start_us=seg.start_us, segment_end_us=seg.end_us, call_started_at_us=seg.call_started_at_us,
    )


def segment_seconds(seg: events_pb2.SpeechSegment) -> float:
    """Seconds of audio a segment record carries (0 for END_OF_LEG)."""
    return len(seg.pcm16) / 2 / seg.sample_rate_hz if seg.sample_rate_hz else 0.0


def segment_audio(seg: events_pb2.SpeechSegment) -> np.ndarray:
    return np.frombuffer(seg.pcm16, dtype="<i2").astype(np.int16)
