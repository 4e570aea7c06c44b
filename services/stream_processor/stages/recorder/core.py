"""Finalising one call: WAV → S3 legal archive (+ active copy) → Postgres (synchronous).

:func:`record_call` is what the Faust agent runs in its thread pool once a call is due; the
same function can be called by a replay tool or a benchmark. It is idempotent: the archive
writes each legal object at most once and returns the stored metadata when it already exists,
and the Postgres rows are upserts built from that stored metadata, so running it twice for a
call (redelivery, a worker that died half-way) yields the same objects and the same rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from lupita.v1 import audio_pb2, events_pb2

from stream_processor.stores.archive import Archive, ArchiveResult
from stream_processor.callstate import RECORDED, SKIPPED, CallState
from stream_processor.stores.calls_db import CallRow, CallStore
from stream_processor.stages.recorder.wav import LEG_NAMES, LEGS, InvalidChunk, MuxPlan, StereoMuxer

log = logging.getLogger(__name__)

SCHEMA = "lupita.call-metadata/v1"
SKIP_NO_CONSENT = "no_recording_consent"
SKIP_NO_AUDIO = "no_audio"

DIRECTIONS = {
    audio_pb2.DIRECTION_OUTBOUND: "outbound",
    audio_pb2.DIRECTION_INBOUND: "inbound",
}
CODEC_NAMES = {audio_pb2.CODEC_PCM16: "pcm16", audio_pb2.CODEC_MULAW: "mulaw"}


@dataclass(frozen=True)
class RecordingRules:
    max_call_seconds: float = 4 * 3600
    align_tolerance_ms: float = 10.0
    # A chunk captured this long before the call start is refused (a clock gone wrong).
    early_tolerance_seconds: float = 60.0


@dataclass
class MuxResult:
    muxer: StereoMuxer | None
    plan: MuxPlan | None
    rejected: list[dict[str, Any]] = field(default_factory=list)


def utc(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc)


def iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def mux(started: events_pb2.CallStarted, chunks: list[events_pb2.AudioChunk], rules: RecordingRules) -> MuxResult:
    """Place the chunks; a chunk that cannot be placed is left out and listed (never fatal)."""
    muxer = StereoMuxer(
        sample_rate=started.sample_rate_hz,
        call_started_us=started.started_at_us,
        align_tolerance_ms=rules.align_tolerance_ms,
        max_seconds=rules.max_call_seconds,
    )
    rejected: list[dict[str, Any]] = []

    def reject(chunk_leg: int, seq: int, why: str) -> None:
        rejected.append({"leg": LEG_NAMES.get(chunk_leg, str(chunk_leg)), "chunk_seq": seq, "error": why})

    earliest = started.started_at_us - int(rules.early_tolerance_seconds * 1e6)
    for chunk in chunks:
        if chunk.start_ts_us < earliest:
            reject(chunk.leg, chunk.chunk_seq, "captured more than "
                   f"{rules.early_tolerance_seconds:.0f} s before the call start")
            continue
        try:
            muxer.add(chunk)
        except InvalidChunk as exc:
            reject(chunk.leg, chunk.chunk_seq, str(exc))
    for _ in range(len(chunks) + 1):
        try:
            plan = muxer.plan()
            break
        except InvalidChunk as exc:
            if exc.leg is None or exc.chunk_seq is None:
                raise
            reject(exc.leg, exc.chunk_seq, str(exc))
            muxer.remove(exc.leg, exc.chunk_seq)
    else:  # pragma: no cover - each round removes one chunk
        raise RuntimeError("could not plan the recording")
    return MuxResult(muxer, plan, rejected)


def build_documents(
    state: CallState,
    *,
    mux_result: MuxResult | None,
    worker: str,
    now: datetime,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """metadata.json and consent.json of a call (pure). ``mux_result`` is None without consent."""
    started = state.started_msg()
    assert started is not None, "a call is finalised with documents only after its started event"
    ended = state.ended_msg()
    started_at = utc(started.started_at_us)
    plan = mux_result.plan if mux_result else None
    if ended is not None and ended.ended_at_us > 0:
        ended_at = utc(ended.ended_at_us)
    elif plan is not None and plan.total_frames:
        ended_at = utc(plan.origin_us + int(plan.duration_seconds * 1e6))
    else:
        ended_at = None
    duration = None if ended_at is None else max(0.0, (ended_at - started_at).total_seconds())

    if not started.recording_consent:
        status, reason = SKIPPED, SKIP_NO_CONSENT
    elif plan is None or plan.total_frames == 0:
        status, reason = SKIPPED, SKIP_NO_AUDIO
    else:
        status, reason = RECORDED, None

    expected = state.expected_chunks()
    recording: dict[str, Any] = {"status": status, "reason": reason}
    if status == RECORDED:
        assert plan is not None and mux_result is not None
        recording.update(
            format="wav",
            encoding="pcm_s16le",
            channels={"left": "lupita", "right": "person"},
            sample_rate_hz=plan.sample_rate,
            source_codec=CODEC_NAMES.get(started.codec, str(started.codec)),
            frames=plan.total_frames,
            audio_seconds=round(plan.duration_seconds, 6),
            timeline_origin=iso(utc(plan.origin_us)),
            legs={LEG_NAMES[leg]: plan.stats[leg].as_dict() for leg in LEGS},
        )
    if status == RECORDED or reason == SKIP_NO_AUDIO:
        recording.update(
            expected_chunks=expected,
            missing_chunks={k: v for k, v in state.missing().items() if v} if expected else None,
            rejected_chunks=mux_result.rejected if mux_result else [],
            duplicate_chunks=state.duplicates,
        )
    if reason == SKIP_NO_CONSENT:
        recording["dropped_chunks"] = state.dropped_no_consent

    metadata = {
        "schema": SCHEMA,
        "call_id": state.call_id,
        "started_at": iso(started_at),
        "ended_at": iso(ended_at),
        "duration_seconds": None if duration is None else round(duration, 3),
        "end_reason": ended.reason if ended is not None else None,
        "finalize_reason": state.finalize_reason,
        "direction": DIRECTIONS.get(started.direction, "unspecified"),
        "region": started.region or None,
        "language": started.language or None,
        "family_plan_id": started.family_plan_id or None,
        "phone_number_hash": started.phone_hash or None,
        "bridge_instance": started.bridge_instance or None,
        "frames_announced": (
            {"lupita": ended.frames_lupita, "person": ended.frames_person} if ended is not None else None
        ),
        "recording_consent": bool(started.recording_consent),
        "recording": recording,
        "archived_by": {"service": "stream-processor", "agent": "recorder", "instance": worker},
        "archived_at": iso(now),
    }
    consent = {
        "call_id": state.call_id,
        "recording_consent": bool(started.recording_consent),
        "consent_source": started.consent_source or None,
        "phone_number_hash": started.phone_hash or None,
        "given_at": iso(started_at),
        "captured_by": started.bridge_instance or None,
    }
    return metadata, consent


def call_row(state: CallState, stored: dict[str, Any], result: ArchiveResult) -> CallRow:
    """The Postgres row, from the metadata as stored (the first writer's, on a replay)."""
    started = state.started_msg()
    assert started is not None
    rec = stored.get("recording", {})
    recorded = rec.get("status") == RECORDED

    def ts(value: str | None) -> datetime | None:
        return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))

    started_at = ts(stored.get("started_at"))
    assert started_at is not None
    return CallRow(
        call_id=state.call_id,
        phone_encrypted=bytes(started.phone_encrypted) or None,
        phone_number_hash=started.phone_hash or None,
        region=started.region or None,
        direction=stored.get("direction") or "unspecified",
        recording_consent=bool(stored.get("recording_consent")),
        consent_source=started.consent_source or None,
        s3_legal_key=result.keys.audio if recorded else None,
        s3_active_key=result.keys.audio if recorded else None,
        s3_metadata_key=result.keys.metadata,
        recording_status=RECORDED if recorded else SKIPPED,
        recording_skipped_reason=None if recorded else rec.get("reason"),
        started_at=started_at,
        ended_at=ts(stored.get("ended_at")),
        duration_seconds=stored.get("duration_seconds"),
        end_reason=stored.get("end_reason"),
    )


def record_call(
    state: CallState,
    chunks: list[events_pb2.AudioChunk],
    *,
    archive: Archive,
    store: CallStore,
    rules: RecordingRules,
    worker: str,
) -> dict[str, Any]:
    """Mux, archive and register one call; returns the outcome kept in the call's state."""
    started = state.started_msg()
    if started is None:
        raise ValueError("record_call needs the call's started event")
    mux_result = mux(started, chunks, rules) if started.recording_consent else None
    metadata, consent = build_documents(
        state, mux_result=mux_result, worker=worker, now=datetime.now(timezone.utc)
    )
    audio = None
    if metadata["recording"]["status"] == RECORDED:
        assert mux_result is not None and mux_result.muxer is not None
        audio = mux_result.muxer.iter_wav(mux_result.plan)
    result = archive.archive_call(
        state.call_id, utc(started.started_at_us), audio=audio, metadata=metadata, consent=consent
    )
    stored = result.metadata
    store.write_call(call_row(state, stored, result))
    rec = stored.get("recording", {})
    return {
        "recording_status": rec.get("status"),
        "reason": rec.get("reason"),
        "audio_key": result.keys.audio if rec.get("status") == RECORDED else None,
        "metadata_key": result.keys.metadata,
        "version_id": rec.get("version_id"),
        "bytes": rec.get("bytes"),
        "audio_seconds": rec.get("audio_seconds"),
        "audio_written": result.audio_written,
        "already_archived": result.already_archived,
        "rejected_chunks": len((mux_result.rejected if mux_result else [])),
    }
