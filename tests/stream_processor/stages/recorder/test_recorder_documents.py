"""What the recorder writes next to the audio (pure): metadata.json, consent.json, the row."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

from lupita.v1 import audio_pb2, events_pb2
from stream_processor import callstate as cs
from stream_processor.stores.archive import ArchiveResult, call_keys
from stream_processor.stages.recorder.core import RecordingRules, build_documents, call_row, mux

L, P = audio_pb2.LEG_LUPITA, audio_pb2.LEG_PERSON
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
NOW = datetime(2026, 1, 1, 0, 5, tzinfo=timezone.utc)


def started(consent=True, rate=8000) -> events_pb2.CallStarted:
    return events_pb2.CallStarted(
        started_at_us=T0, direction=audio_pb2.DIRECTION_INBOUND, sample_rate_hz=rate,
        codec=audio_pb2.CODEC_PCM16, recording_consent=consent, consent_source="signed_form",
        phone_hash="cd" * 32, phone_encrypted=b"\x07" * 40, region="oaxaca", language="es-MX",
        bridge_instance="bridge-0",
    )


def chunk(leg, seq, start_ms, n=800, rate=8000):
    return events_pb2.AudioChunk(
        call_id="call-9", leg=leg, chunk_seq=seq, start_ts_us=T0 + start_ms * 1000, sample_rate_hz=rate,
        codec=audio_pb2.CODEC_PCM16, payload=np.full(n, 100, dtype="<i2").tobytes(), frame_count=n // 160,
    )


def state_with(consent=True, chunks=(), n_l=2, n_p=1) -> cs.CallState:
    st = cs.new_state("call-9", 0.0)
    cs.apply_started(st, started(consent), 0.0)
    for c in chunks:
        cs.apply_chunk(st, c, 0.0)
    cs.apply_ended(st, events_pb2.CallEnded(ended_at_us=T0 + 2_500_000, reason="hangup",
                                            chunks_lupita=n_l, chunks_person=n_p), 0.0)
    cs.start_finalizing(st, cs.REASON_COMPLETE if st.is_complete() else cs.REASON_GRACE, 1.0)
    return st


def test_metadata_of_a_recorded_call_describes_the_wav_and_the_gaps():
    chunks = [chunk(L, 0, 0), chunk(L, 1, 100), chunk(P, 0, 500)]
    st = state_with(chunks=chunks, n_p=2)  # person chunk 1 never arrived
    result = mux(st.started_msg(), chunks, RecordingRules())
    meta, consent = build_documents(st, mux_result=result, worker="w-1", now=NOW)
    rec = meta["recording"]
    assert rec["status"] == "recorded" and rec["reason"] is None
    assert rec["sample_rate_hz"] == 8000 and rec["frames"] == 4800  # person chunk ends at 600 ms
    assert rec["missing_chunks"] == {"person": [[1, 1]]}
    assert rec["legs"]["person"]["first_sample_offset"] == 4000
    assert meta["started_at"] == "2026-01-01T00:00:00Z" and meta["ended_at"] == "2026-01-01T00:00:02.500000Z"
    assert meta["duration_seconds"] == 2.5 and meta["direction"] == "inbound"
    assert meta["finalize_reason"] == cs.REASON_GRACE and meta["archived_by"]["instance"] == "w-1"
    assert consent == {
        "call_id": "call-9", "recording_consent": True, "consent_source": "signed_form",
        "phone_number_hash": "cd" * 32, "given_at": "2026-01-01T00:00:00Z", "captured_by": "bridge-0",
    }
    assert "phone_encrypted" not in str(meta)


def test_metadata_of_a_call_without_consent_says_why_and_has_no_audio_description():
    st = state_with(consent=False)
    meta, consent = build_documents(st, mux_result=None, worker="w-1", now=NOW)
    assert meta["recording"]["status"] == "skipped"
    assert meta["recording"]["reason"] == "no_recording_consent"
    assert "frames" not in meta["recording"] and meta["recording_consent"] is False
    assert consent["recording_consent"] is False


def test_consented_call_without_any_audio_is_skipped_as_no_audio():
    st = state_with(chunks=(), n_l=0, n_p=0)
    result = mux(st.started_msg(), [], RecordingRules())
    meta, _ = build_documents(st, mux_result=result, worker="w", now=NOW)
    assert (meta["recording"]["status"], meta["recording"]["reason"]) == ("skipped", "no_audio")


def test_chunks_that_cannot_be_placed_are_left_out_and_listed_not_fatal():
    good = chunk(L, 0, 0)
    wrong_rate = chunk(P, 0, 0, rate=16000)
    too_early = chunk(P, 1, -120_000)  # two minutes before the call start
    too_late = chunk(L, 1, 5_000_000)  # 83 minutes after it
    result = mux(started(), [good, wrong_rate, too_early, too_late], RecordingRules(max_call_seconds=3600))
    rejected = {(r["leg"], r["chunk_seq"]): r["error"] for r in result.rejected}
    assert set(rejected) == {("person", 0), ("person", 1), ("lupita", 1)}
    assert "16000 Hz differs" in rejected[("person", 0)]
    assert "before the call start" in rejected[("person", 1)]
    assert "beyond the 3600 s limit" in rejected[("lupita", 1)]
    assert result.plan.total_frames == 800


def test_row_comes_from_the_stored_metadata_and_holds_no_clear_phone():
    chunks = [chunk(L, 0, 0), chunk(L, 1, 100), chunk(P, 0, 500)]
    st = state_with(chunks=chunks)
    meta, _ = build_documents(st, mux_result=mux(st.started_msg(), chunks, RecordingRules()), worker="w", now=NOW)
    keys = call_keys("call-9", datetime(2026, 1, 1, tzinfo=timezone.utc))
    assert keys.audio == "calls/2026/01/01/call-9/audio-full.wav"
    row = call_row(st, meta, ArchiveResult(keys, meta, audio_written=True, already_archived=False))
    assert row.recording_status == "recorded" and row.s3_legal_key == keys.audio
    assert row.s3_metadata_key == keys.metadata and row.recording_skipped_reason is None
    assert row.phone_encrypted == b"\x07" * 40 and row.phone_number_hash == "cd" * 32
    assert row.started_at == datetime(2026, 1, 1, tzinfo=timezone.utc) and row.duration_seconds == 2.5
    assert "cd" * 32 not in repr(row)
    skipped = dict(meta, recording={"status": "skipped", "reason": "no_recording_consent"})
    row2 = call_row(st, skipped, ArchiveResult(keys, skipped, audio_written=False, already_archived=True))
    assert row2.s3_legal_key is None and row2.recording_skipped_reason == "no_recording_consent"
