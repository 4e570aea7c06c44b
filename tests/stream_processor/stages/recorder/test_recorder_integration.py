"""The recorder end to end on the real stack: Kafka → Faust worker (child process) → MinIO
(Object Lock) + Postgres. Records are made by the media bridge's own functions."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from botocore.exceptions import ClientError
from calls import LUPITA, PERSON, SimCall, simulate_call
from kafka_io import TopicReader, produce
from sp_stores import exists, get_json, keys_of, read_wav, row_of, versions
from waits import wait_for

from lupita.privacy import decrypt_phone, phone_hash
from lupita.v1 import audio_pb2, events_pb2

pytestmark = pytest.mark.stack


def new_call_id() -> str:
    return f"rec-{uuid.uuid4().hex[:16]}"


def new_phone() -> str:
    # a fresh, unlikely number per call (digits only matter)
    return "+52951" + str(uuid.uuid4().int)[:7]


def record(call: SimCall, topics, recorder_worker, s3, settings, **kw) -> dict:
    """Publish a call as the bridge would and wait until its metadata.json is in the archive."""
    produce(settings.kafka_bootstrap, call.records(topics, **kw))
    keys = keys_of(call)
    return wait_for(
        f"metadata.json of {call.call_id}",
        lambda: recorder_worker.alive() and get_json(s3, settings.s3_legal_bucket, keys.metadata),
        timeout=60,
    )


@pytest.fixture(scope="module")
def recorded_call(recorder_worker, topics, s3, recorder_settings, pg) -> tuple[SimCall, dict]:
    """One consented 8 kHz PCM16 call, recorded once and looked at by several tests."""
    call = simulate_call(new_call_id(), phone=new_phone())
    meta = record(call, topics, recorder_worker, s3, recorder_settings)
    wait_for("the Postgres row", lambda: row_of(pg, call.call_id), timeout=15)
    return call, meta


# -- the recording -------------------------------------------------------------------------------


def test_wav_on_s3_decodes_to_exactly_the_frames_sent_on_both_channels_aligned(recorded_call, s3, recorder_settings):
    call, meta = recorded_call
    keys = keys_of(call)
    params, frames, body = read_wav(s3, recorder_settings.s3_legal_bucket, keys.audio)
    assert (params.nchannels, params.sampwidth, params.framerate) == (2, 2, 8000)
    assert frames.shape == call.expected.shape
    # left = Lupita from t=0, right = person from 200 ms with 100 ms of lost frames (silence)
    np.testing.assert_array_equal(frames[:, 0], call.expected[:, 0])
    np.testing.assert_array_equal(frames[:, 1], call.expected[:, 1])
    gap = slice((200 + 300) * 8, (200 + 400) * 8)
    assert not frames[gap, 1].any() and frames[gap, 0].any()
    assert not frames[: 200 * 8, 1].any()
    # the processing copy in the active bucket is the same file
    active = s3.get_object(Bucket=recorder_settings.s3_active_bucket, Key=keys.audio)["Body"].read()
    assert active == body
    rec = meta["recording"]
    assert rec["status"] == "recorded" and rec["channels"] == {"left": "lupita", "right": "person"}
    assert rec["frames"] == len(call.expected) and rec["bytes"] == len(body)
    assert rec["legs"]["person"]["gaps_filled"] == 2  # before the first chunk and the lost frames
    assert rec["expected_chunks"] == {"lupita": len(call.chunks_of(LUPITA)), "person": len(call.chunks_of(PERSON))}
    assert rec["missing_chunks"] == {}
    assert meta["finalize_reason"] == "complete" and meta["end_reason"] == "hangup"
    consent = get_json(s3, recorder_settings.s3_legal_bucket, keys.consent)
    assert consent["recording_consent"] is True and consent["consent_source"] == "ivr_prompt_v2"


def test_postgres_rows_hold_hash_and_encrypted_phone_never_the_clear_number(recorded_call, pg, recorder_settings):
    call, meta = recorded_call
    row = row_of(pg, call.call_id)
    keys = keys_of(call)
    assert row["recording_status"] == "recorded" and row["recording_skipped_reason"] is None
    assert row["s3_legal_key"] == keys.audio and row["s3_active_key"] == keys.audio
    assert row["s3_metadata_key"] == keys.metadata
    assert row["phone_number_hash"] == phone_hash(call.phone, recorder_settings.hmac_key_bytes)
    assert decrypt_phone(bytes(row["phone_encrypted"]), recorder_settings.encryption_key_bytes) == call.phone
    digits = call.phone.lstrip("+")
    assert all(digits not in str(v) for k, v in row.items() if k != "phone_encrypted")
    assert row["direction"] == "outbound" and row["region"] == "oaxaca" and row["recording_consent"] is True
    assert row["started_at"] == datetime.fromtimestamp(call.started_at_us / 1e6, tz=timezone.utc)
    assert float(row["duration_seconds"]) == pytest.approx(1.0)
    consent = pg.execute(
        "SELECT recording_consent, phone_number_hash, consent_source FROM consent_records WHERE call_id = %s",
        (call.call_id,),
    ).fetchall()
    assert consent == [(True, row["phone_number_hash"], "ivr_prompt_v2")]


def test_deleting_the_locked_audio_version_is_refused_by_s3(recorded_call, s3, recorder_settings):
    call, _ = recorded_call
    bucket, key = recorder_settings.s3_legal_bucket, keys_of(call).audio
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"] > datetime.now(timezone.utc) + timedelta(days=360)
    with pytest.raises(ClientError) as err:
        s3.delete_object(Bucket=bucket, Key=key, VersionId=head["VersionId"])
    # AWS answers AccessDenied; MinIO answers InvalidRequest "Object is WORM protected ..."
    error = err.value.response["Error"]
    assert error["Code"] == "AccessDenied" or (
        error["Code"] == "InvalidRequest" and "WORM protected" in error["Message"]
    ), error
    with pytest.raises(ClientError):  # nor can the retention be shortened
        s3.put_object_retention(
            Bucket=bucket, Key=key, VersionId=head["VersionId"],
            Retention={"Mode": "COMPLIANCE", "RetainUntilDate": datetime.now(timezone.utc) + timedelta(days=1)},
        )
    assert s3.head_object(Bucket=bucket, Key=key, VersionId=head["VersionId"])["ContentLength"] > 44


def test_redelivered_call_makes_no_second_version_and_no_second_row(
    recorder_worker, topics, s3, pg, recorder_settings
):
    call = simulate_call(new_call_id(), phone=new_phone())
    record(call, topics, recorder_worker, s3, recorder_settings)
    keys = keys_of(call)
    legal = recorder_settings.s3_legal_bucket
    before = {v["Key"]: v["VersionId"] for v in versions(s3, legal, keys.prefix)}
    assert set(before) == {keys.audio, keys.metadata, keys.consent}

    # 1. while the worker still remembers the call (state retention: 6 s in these tests): every
    #    redelivered chunk is recognised and ignored
    late = recorder_worker.metric("lupita_recorder_bad_records_total", reason="late")
    produce(recorder_settings.kafka_bootstrap, call.records(topics))
    wait_for(
        "the redelivered chunks to be seen",
        lambda: recorder_worker.metric("lupita_recorder_bad_records_total", reason="late") >= late + len(call.chunks),
    )

    # 2. after the worker forgot it (state retention): re-recorded, and the archive keeps the first
    wait_for("the call state to be purged",
             lambda: any(r["msg"] == "call state purged" for r in recorder_worker.logs(call.call_id)))
    produce(recorder_settings.kafka_bootstrap, call.records(topics))
    archived = wait_for(
        "the second finalisation",
        lambda: [r for r in recorder_worker.logs(call.call_id) if r["msg"] == "call archived"][1:],
    )
    assert archived[0]["already_archived"] is True
    after = versions(s3, legal, keys.prefix)
    assert {v["Key"]: v["VersionId"] for v in after} == before  # one version each, the same ones
    assert len(after) == 3
    assert pg.execute("SELECT count(*) FROM companion_calls WHERE call_id = %s", (call.call_id,)).fetchone()[0] == 1
    assert pg.execute("SELECT count(*) FROM consent_records WHERE call_id = %s", (call.call_id,)).fetchone()[0] == 1
    assert len(versions(s3, recorder_settings.s3_active_bucket, keys.prefix)) == 3


@pytest.mark.parametrize(
    "rate,codec,seconds", [(16000, audio_pb2.CODEC_MULAW, 90)], ids=["16k-mulaw-90s-multipart"]
)
def test_long_mulaw_call_is_uploaded_in_parts_and_decodes_exactly(
    rate, codec, seconds, recorder_worker, topics, s3, recorder_settings
):
    call = simulate_call(new_call_id(), phone=new_phone(), rate=rate, codec=codec,
                         lupita_ms=seconds * 1000, person_ms=seconds * 1000 - 1000)
    meta = record(call, topics, recorder_worker, s3, recorder_settings)
    keys = keys_of(call)
    params, frames, body = read_wav(s3, recorder_settings.s3_legal_bucket, keys.audio)
    assert params.framerate == rate and params.nchannels == 2
    np.testing.assert_array_equal(frames, call.expected)
    assert len(body) > recorder_worker.part_size_bytes  # so it went up as more than one part
    parts = s3.head_object(Bucket=recorder_settings.s3_legal_bucket, Key=keys.audio, PartNumber=1)
    assert int(parts.get("PartsCount", 1)) >= 2
    assert meta["recording"]["source_codec"] == "mulaw"


# -- calls that must not be recorded -------------------------------------------------------------


def test_call_without_consent_has_no_audio_object_and_metadata_says_why(
    recorder_worker, topics, s3, pg, recorder_settings
):
    call = simulate_call(new_call_id(), phone=new_phone(), consent=False)
    # chunks before the started event too: they must be dropped once the refusal is known
    early = call.records(topics, chunks=call.chunks[:3], started=False, ended=False)
    produce(recorder_settings.kafka_bootstrap, early)
    meta = record(call, topics, recorder_worker, s3, recorder_settings, chunks=call.chunks[3:])
    row = wait_for("the Postgres row", lambda: row_of(pg, call.call_id), timeout=15)  # written last
    keys = keys_of(call)
    assert meta["recording"]["status"] == "skipped"
    assert meta["recording"]["reason"] == "no_recording_consent"
    assert meta["recording_consent"] is False
    for bucket in (recorder_settings.s3_legal_bucket, recorder_settings.s3_active_bucket):
        assert not exists(s3, bucket, keys.audio)
        assert exists(s3, bucket, keys.metadata)
    consent = get_json(s3, recorder_settings.s3_legal_bucket, keys.consent)
    assert consent["recording_consent"] is False
    assert row["recording_status"] == "skipped"
    assert row["recording_skipped_reason"] == "no_recording_consent"
    assert row["s3_legal_key"] is None and row["s3_metadata_key"] == keys.metadata


def test_chunks_of_a_call_that_never_started_are_dropped_and_counted(
    recorder_worker, topics, s3, pg, recorder_settings
):
    call = simulate_call(new_call_id(), phone=new_phone())
    before = recorder_worker.metric("lupita_recorder_bad_records_total", reason="unknown_call")
    produce(recorder_settings.kafka_bootstrap, call.records(topics, started=False, ended=False))
    wait_for(
        "the unknown call to be dropped",
        lambda: [r for r in recorder_worker.logs(call.call_id) if r["msg"].startswith("records of an unknown call")],
    )
    assert recorder_worker.metric("lupita_recorder_bad_records_total", reason="unknown_call") == before + len(call.chunks)
    assert versions(s3, recorder_settings.s3_legal_bucket, keys_of(call).prefix) == []
    assert row_of(pg, call.call_id) is None


def test_missing_chunks_are_waited_for_then_recorded_as_silence_and_listed(
    recorder_worker, topics, s3, recorder_settings
):
    call = simulate_call(new_call_id(), phone=new_phone(), person_gap_ms=None)
    lost = call.chunks_of(PERSON)[2]
    meta = record(call, topics, recorder_worker, s3, recorder_settings,
                  chunks=[c for c in call.chunks if c is not lost])
    assert meta["finalize_reason"] == "grace_expired"
    assert meta["recording"]["missing_chunks"] == {"person": [[2, 2]]}
    _, frames, _ = read_wav(s3, recorder_settings.s3_legal_bucket, keys_of(call).audio)
    expected = call.expected.copy()
    start = (lost.start_ts_us - call.started_at_us) * call.rate // 1_000_000
    expected[start : start + len(lost.payload) // 2, 1] = 0
    np.testing.assert_array_equal(frames, expected)


# -- bad input -----------------------------------------------------------------------------------


def test_bad_records_are_counted_dead_lettered_and_do_not_stop_the_worker(
    recorder_worker, topics, s3, recorder_settings
):
    good = simulate_call(new_call_id(), phone=new_phone())
    unsafe = events_pb2.AudioChunk(call_id="../../etc/passwd", leg=LUPITA, chunk_seq=0, start_ts_us=1,
                                   sample_rate_hz=8000, codec=audio_pb2.CODEC_PCM16, payload=b"\0\0")
    mismatch = good.chunks[0]
    bad = [
        (topics.chunks, b"x", b"\x0a\xff\xff"),  # truncated protobuf
        (topics.lifecycle, b"x", b"\xff\xff\xff\xff"),
        (topics.chunks, b"../../etc/passwd", unsafe.SerializeToString()),
        (topics.chunks, b"another-call", mismatch.SerializeToString()),
    ]
    reasons = ("undecodable", "invalid_call_id", "key_mismatch")
    before = {r: recorder_worker.metric("lupita_recorder_bad_records_total", reason=r) for r in reasons}
    dead_before = {r: recorder_worker.metric("lupita_stream_dead_letters_total", stage="recorder", reason=r)
                   for r in reasons}
    produce(recorder_settings.kafka_bootstrap, bad)
    record(good, topics, recorder_worker, s3, recorder_settings)  # the worker goes on
    expected = {"undecodable": before["undecodable"] + 2, "invalid_call_id": before["invalid_call_id"] + 1,
                "key_mismatch": before["key_mismatch"] + 1}

    def counted() -> dict:
        return {r: recorder_worker.metric("lupita_recorder_bad_records_total", reason=r) for r in reasons}

    # the bad records sit on other partitions than the good call: they may be read after it
    wait_for("the bad records to be counted", lambda: counted() == expected, timeout=15)
    with TopicReader(recorder_settings.kafka_bootstrap, topics.dead_letters) as reader:
        reader.wait("the dead letters", lambda: len(reader.records) >= len(bad), timeout=20)
        dead = [(r.value, list(r.headers)) for r in reader.records]
    got = {(v, dict(h)["lupita-reason"]) for v, h in dead}
    assert got == {
        (b"\x0a\xff\xff", b"undecodable"), (b"\xff\xff\xff\xff", b"undecodable"),
        (unsafe.SerializeToString(), b"invalid_call_id"), (mismatch.SerializeToString(), b"key_mismatch"),
    }
    assert all(dict(h)["lupita-source"].startswith(b"test-") for _, h in dead)
    # and counted by stage and reason (what the dead-letter alerts name)
    wait_for("the dead letters to be counted by reason", lambda: {
        r: recorder_worker.metric("lupita_stream_dead_letters_total", stage="recorder", reason=r) - dead_before[r]
        for r in reasons} == {"undecodable": 2, "invalid_call_id": 1, "key_mismatch": 1}, timeout=10)


def test_worker_logs_and_metrics_never_contain_a_phone_number(recorder_worker, recorded_call):
    call, _ = recorded_call
    text = recorder_worker.log_path.read_text(errors="replace") + recorder_worker.metrics_text()
    assert call.call_id in text  # the logs do talk about the call
    assert call.phone.lstrip("+") not in text
    assert call.phone.lstrip("+")[-7:] not in text


def test_a_refused_row_is_reported_without_quoting_it(pg, recorder_settings):
    from stream_processor.stores.calls_db import CallRow, CallStore
    from stream_processor.errors import safe_error

    row = CallRow(
        call_id=new_call_id(), phone_encrypted=b"\x01" * 40, phone_number_hash="ee" * 32, region=None,
        direction="sideways", recording_consent=True, consent_source=None, s3_legal_key=None,
        s3_active_key=None, s3_metadata_key="k", recording_status="recorded", recording_skipped_reason=None,
        started_at=datetime.now(timezone.utc), ended_at=None, duration_seconds=None, end_reason=None,
    )
    store = CallStore(recorder_settings.postgres_dsn.get_secret_value())
    try:
        with pytest.raises(Exception) as err:
            store.write_call(row)
        assert "ee" * 32 in str(err.value)  # Postgres quotes the failing row in its DETAIL ...
        message = safe_error(err.value)
        assert "23514" in message and "companion_calls_direction_check" in message
        assert "ee" * 32 not in message  # ... which never reaches the logs
        assert row_of(pg, row.call_id) is None
    finally:
        store.close()


def test_two_writers_racing_on_one_call_leave_exactly_one_version_of_each_object(s3, recorder_settings):
    import threading

    from stream_processor.stores.archive import Archive, call_keys

    archive = Archive(s3, legal_bucket=recorder_settings.s3_legal_bucket,
                      active_bucket=recorder_settings.s3_active_bucket, part_size=5 * 1024 * 1024)
    call_id = new_call_id()
    started_at = datetime.now(timezone.utc)
    audio = b"RIFF" + bytes(range(256)) * 64
    barrier = threading.Barrier(2)
    results, errors = [], []

    def write(writer: str) -> None:
        try:
            barrier.wait(timeout=10)
            results.append(archive.archive_call(
                call_id, started_at, audio=iter([audio]), metadata={"writer": writer}, consent={"writer": writer}))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    keys = call_keys(call_id, started_at)
    found = versions(s3, recorder_settings.s3_legal_bucket, keys.prefix)
    assert sorted(v["Key"] for v in found) == sorted([keys.audio, keys.metadata, keys.consent])
    assert sum(r.audio_written for r in results) == 1
    # both writers report the metadata that is stored, whoever wrote it
    assert results[0].metadata == results[1].metadata == get_json(s3, recorder_settings.s3_legal_bucket, keys.metadata)
