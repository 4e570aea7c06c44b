"""Recorder state rules (pure): record validation, chunk bookkeeping, when a call is due."""

from __future__ import annotations

import pytest

from lupita.v1 import audio_pb2, events_pb2
from stream_processor import callstate as cs
from stream_processor import records

L, P = audio_pb2.LEG_LUPITA, audio_pb2.LEG_PERSON
RULES = dict(grace_seconds=30, idle_seconds=600, orphan_seconds=120, alive_since=0.0)


def chunk(call_id="call-1", leg=L, seq=0, **kw) -> events_pb2.AudioChunk:
    fields = dict(call_id=call_id, leg=leg, chunk_seq=seq, start_ts_us=1_700_000_000_000_000 + seq * 100_000,
                  sample_rate_hz=8000, codec=audio_pb2.CODEC_PCM16, payload=b"\x01\x00" * 800, frame_count=5)
    fields.update(kw)
    return events_pb2.AudioChunk(**fields)


def started(consent=True) -> events_pb2.CallStarted:
    return events_pb2.CallStarted(started_at_us=1_700_000_000_000_000, direction=audio_pb2.DIRECTION_OUTBOUND,
                                  sample_rate_hz=8000, codec=audio_pb2.CODEC_PCM16, recording_consent=consent,
                                  consent_source="ivr", phone_hash="ab" * 32, phone_encrypted=b"\x00" * 40)


def ended(n_l=2, n_p=2) -> events_pb2.CallEnded:
    return events_pb2.CallEnded(ended_at_us=1_700_000_001_000_000, reason="hangup", chunks_lupita=n_l,
                                chunks_person=n_p)


# -- parsing -------------------------------------------------------------------------------------


def test_a_valid_chunk_parses():
    c = chunk()
    assert records.parse_chunk(b"call-1", c.SerializeToString()) == c


@pytest.mark.parametrize(
    "key,value,reason,match",
    [
        (b"call-1", b"\x0a\xff\xff", "undecodable", "not an AudioChunk protobuf"),
        (b"", b"", "invalid_call_id", "not a valid call id"),
        (b"../x", chunk(call_id="../x").SerializeToString(), "invalid_call_id", "not a valid call id"),
        (b"other", chunk().SerializeToString(), "key_mismatch", "record key differs"),
        (None, chunk().SerializeToString(), "key_mismatch", "record key differs"),
        (b"call-1", chunk(leg=0).SerializeToString(), "invalid", "is not LEG_LUPITA or LEG_PERSON"),
        (b"call-1", chunk(sample_rate_hz=44100).SerializeToString(), "invalid", "sample rate 44100"),
        (b"call-1", chunk(codec=0).SerializeToString(), "invalid", "is not PCM16 or MULAW"),
        (b"call-1", chunk(payload=b"\x01").SerializeToString(), "invalid", "whole number of 2-byte samples"),
        (b"call-1", chunk(payload=b"").SerializeToString(), "invalid", "positive"),
        (b"call-1", chunk(start_ts_us=0).SerializeToString(), "invalid", "start_ts_us"),
        (b"call-1", chunk(seq=10**8).SerializeToString(), "invalid", "beyond"),
    ],
    ids=["undecodable", "empty", "path-in-call-id", "key-mismatch", "no-key", "leg", "rate", "codec",
         "odd-payload", "empty-payload", "timestamp", "seq"],
)
def test_bad_chunk_records_are_refused_with_reason_and_message(key, value, reason, match):
    with pytest.raises(records.BadRecord, match=match) as err:
        records.parse_chunk(key, value)
    assert err.value.reason == reason


def test_a_bad_call_id_is_never_echoed_in_the_error():
    secret = "+5219511234567"
    with pytest.raises(records.BadRecord) as err:
        records.parse_chunk(secret.encode(), chunk(call_id=secret).SerializeToString())
    assert "9511234567" not in str(err.value)


@pytest.mark.parametrize(
    "event,match",
    [
        (events_pb2.CallLifecycle(call_id="call-1"), "neither started nor ended"),
        (events_pb2.CallLifecycle(call_id="call-1", started=events_pb2.CallStarted(
            started_at_us=1, sample_rate_hz=11025, codec=1)), "sample rate 11025"),
        (events_pb2.CallLifecycle(call_id="call-1", started=events_pb2.CallStarted(
            started_at_us=0, sample_rate_hz=8000, codec=1)), "started_at_us"),
        (events_pb2.CallLifecycle(call_id="call-1", ended=events_pb2.CallEnded(ended_at_us=0)), "ended_at_us"),
    ],
    ids=["empty", "rate", "start-time", "end-time"],
)
def test_bad_lifecycle_records_are_refused(event, match):
    with pytest.raises(records.BadRecord, match=match):
        records.parse_lifecycle(b"call-1", event.SerializeToString())


# -- chunk bookkeeping ---------------------------------------------------------------------------


def test_intervals_merge_and_report_duplicates_and_missing_ranges():
    iv: list[list[int]] = []
    for n in (5, 0, 2, 1, 9, 3):
        assert cs.interval_add(iv, n)
    assert iv == [[0, 3], [5, 5], [9, 9]]
    assert not cs.interval_add(iv, 2)
    assert cs.interval_add(iv, 4) and iv == [[0, 5], [9, 9]]
    assert cs.interval_count(iv) == 7
    assert cs.interval_missing(iv, 12) == [[6, 8], [10, 11]]
    assert cs.interval_missing(iv, 4) == []
    assert cs.interval_members([[1, 3]]) == [1, 2, 3]


def test_complete_call_is_due_at_once_and_duplicates_are_counted():
    st = cs.new_state("call-1", 0.0)
    cs.apply_started(st, started(), 0.0)
    for leg in (L, P):
        for seq in (0, 1):
            assert cs.apply_chunk(st, chunk(leg=leg, seq=seq), 1.0)
    assert cs.apply_chunk(st, chunk(leg=P, seq=1), 1.0)  # duplicate: stored again, same key
    assert st.duplicates == 1
    assert cs.due_reason(st, 1.0, **RULES) is None  # no ended event yet
    cs.apply_ended(st, ended(), 1.0)
    assert cs.due_reason(st, 1.0, **RULES) == cs.REASON_COMPLETE


def test_missing_chunk_waits_for_grace_counted_from_the_last_record_of_the_call():
    st = cs.new_state("call-1", 0.0)
    cs.apply_started(st, started(), 0.0)
    cs.apply_chunk(st, chunk(leg=L, seq=0), 0.0)
    cs.apply_ended(st, ended(n_l=2, n_p=0), 10.0)
    assert st.missing() == {"lupita": [[1, 1]], "person": []}
    assert cs.due_reason(st, 39.0, **RULES) is None
    cs.apply_chunk(st, chunk(leg=L, seq=5), 30.0)  # something of the call still arrives
    assert cs.due_reason(st, 45.0, **RULES) is None
    assert cs.due_reason(st, 60.0, **RULES) == cs.REASON_GRACE


def test_backlog_defers_grace_and_orphan_but_not_the_idle_limit():
    st = cs.new_state("call-1", 0.0)
    cs.apply_started(st, started(), 0.0)
    cs.apply_ended(st, ended(), 0.0)
    assert cs.due_reason(st, 100.0, **RULES, backlog=True) is None
    assert cs.due_reason(st, 100.0, **RULES) == cs.REASON_GRACE
    assert cs.due_reason(st, 600.0, **RULES, backlog=True) == cs.REASON_GRACE
    orphan = cs.new_state("call-2", 0.0)
    cs.apply_chunk(orphan, chunk(call_id="call-2"), 0.0)
    assert cs.due_reason(orphan, 200.0, **RULES, backlog=True) is None
    assert cs.due_reason(orphan, 200.0, **RULES) == cs.REASON_NO_START


def test_a_restart_gives_every_call_its_full_waiting_time_again():
    st = cs.new_state("call-1", 0.0)
    cs.apply_started(st, started(), 0.0)
    cs.apply_ended(st, ended(), 0.0)
    rules = dict(RULES, alive_since=1000.0)
    assert cs.due_reason(st, 1010.0, **rules) is None
    assert cs.due_reason(st, 1030.0, **rules) == cs.REASON_GRACE


def test_call_without_ended_event_times_out_after_idle():
    st = cs.new_state("call-1", 0.0)
    cs.apply_started(st, started(), 0.0)
    cs.apply_chunk(st, chunk(), 5.0)
    assert cs.due_reason(st, 604.0, **RULES) is None
    assert cs.due_reason(st, 605.0, **RULES) == cs.REASON_TIMEOUT


def test_no_consent_drops_what_was_buffered_and_refuses_what_comes():
    st = cs.new_state("call-1", 0.0)
    assert cs.apply_chunk(st, chunk(), 0.0)  # before the started event: buffered
    assert cs.apply_started(st, started(consent=False), 0.0) is True  # -> drop the buffer
    assert cs.apply_chunk(st, chunk(seq=1), 0.0) is False
    assert st.dropped_no_consent == 1
    cs.apply_ended(st, ended(), 0.0)
    assert cs.due_reason(st, 0.0, **RULES) == cs.REASON_COMPLETE  # nothing to wait for


def test_first_started_wins_and_finalised_calls_ignore_everything():
    st = cs.new_state("call-1", 0.0)
    cs.apply_started(st, started(consent=True), 0.0)
    cs.apply_started(st, started(consent=False), 0.0)
    assert st.consent is True
    cs.start_finalizing(st, cs.REASON_COMPLETE, 1.0)
    assert cs.apply_chunk(st, chunk(), 1.0) is False
    cs.mark_done(st, {"recording_status": "recorded"}, 2.0)
    assert st.status == cs.RECORDED and st.received == {"lupita": [], "person": []}
    assert cs.apply_chunk(st, chunk(), 3.0) is False
    assert not cs.purge_due(st, 5.0, 10.0) and cs.purge_due(st, 12.0, 10.0)


def test_failed_finalisation_is_retried_with_backoff_or_at_once_after_a_restart():
    st = cs.new_state("call-1", 0.0)
    cs.start_finalizing(st, cs.REASON_COMPLETE, 100.0)
    args = dict(retry_seconds=10.0, alive_since=0.0)
    assert not cs.retry_due(st, 105.0, running=False, **args)
    assert cs.retry_due(st, 110.0, running=False, **args)
    assert not cs.retry_due(st, 500.0, running=True, **args)
    cs.mark_failed(st, 110.0)
    cs.mark_failed(st, 110.0)  # two failures: 40 s backoff
    assert not cs.retry_due(st, 140.0, running=False, **args)
    assert cs.retry_due(st, 150.0, running=False, **args)
    assert cs.retry_due(st, 111.0, running=False, retry_seconds=10.0, alive_since=120.0)


def test_state_survives_the_table_round_trip():
    st = cs.new_state("call-1", 0.0)
    cs.apply_started(st, started(), 0.0)
    cs.apply_chunk(st, chunk(leg=P, seq=3), 1.0)
    cs.apply_ended(st, ended(), 2.0)
    import json

    back = cs.CallState.from_dict(json.loads(json.dumps(st.to_dict())))
    assert back == st
    assert back.started_msg() == started() and back.ended_msg() == ended()
    assert back.chunk_seqs() == {L: [], P: [3]}
