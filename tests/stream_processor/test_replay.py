"""``lupita replay`` against the REAL stack: a synthesised Spanish call is recorded the way the
recorder does it (``record_call``: stereo WAV in the locked legal bucket + ``companion_calls``
row), then replayed from S3 through VadCore, the local transcriber, the analyzer, the embedder
and the sinks. Replaying twice changes nothing; an unknown call id is a usage error (exit 2);
a call without consent is skipped with the reason. Weaviate collections of this module's own
(unique suffix, dropped at the end)."""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest
from calls import SCRIPT, dialogue, make_call
from sp_stores import weaviate_client
from weaviate.classes.query import Filter

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def env(stack_env):
    """Module-own Weaviate collections, through the environment (replay reads its settings there)."""
    suffix = uuid.uuid4().hex[:8]
    mp = pytest.MonkeyPatch()
    mp.setenv("LUPITA_WEAVIATE_CONVERSATION_COLLECTION", f"TestReplayConversation_{suffix}")
    mp.setenv("LUPITA_WEAVIATE_UTTERANCE_COLLECTION", f"TestReplayUtterance_{suffix}")
    from stream_processor.replay import ReplaySettings

    settings = ReplaySettings()
    try:
        with weaviate_client(settings, drop=(settings.weaviate_conversation_collection,
                                             settings.weaviate_utterance_collection)) as wv:
            yield settings, wv
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def db(env):
    from lupita.db import migrate

    settings, _ = env
    dsn = settings.postgres_dsn.get_secret_value()
    migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


def record(settings, call_id: str, *, consent: bool = True):
    """Archive a synthesised call exactly as the recorder agent does (record_call)."""
    from stream_processor import callstate as cs
    from stream_processor.stores.archive import Archive, s3_client
    from stream_processor.stores.calls_db import CallStore
    from stream_processor.stages.recorder.core import RecordingRules, record_call

    stereo, truth = dialogue(SCRIPT[:3])  # ~11 s: greeting, answer, medication question
    assert len(stereo) <= 15 * 8000
    call = make_call(call_id, stereo, truth)
    if not consent:
        call.started.started.recording_consent = False
    now = time.time()
    state = cs.new_state(call_id, now)
    cs.apply_started(state, call.started.started, now)
    for c in call.chunks:
        cs.apply_chunk(state, c, now)
    cs.apply_ended(state, call.ended.ended, now)
    state.finalize_reason = "complete"
    archive = Archive(s3_client(settings), legal_bucket=settings.s3_legal_bucket,
                      active_bucket=settings.s3_active_bucket, part_size=settings.part_size_bytes,
                      retention_days=settings.legal_retention_days)
    store = CallStore(settings.postgres_dsn.get_secret_value())
    try:
        return record_call(state, list(call.chunks) if consent else [], archive=archive, store=store,
                           rules=RecordingRules(), worker="replay-test")
    finally:
        store.close()


def replay(capsys, *argv: str) -> tuple[int, str, str]:
    from lupita.cli import main

    code = main(["replay", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def stored(db, settings, wv, call_id: str) -> dict:
    row = db.execute(
        "SELECT processed_at, weaviate_id, summary, topics, emotion_primary, behavioral_codes_triggered, transcript, "
        "phone_number_hash FROM companion_calls WHERE call_id = %s", (call_id,)).fetchone()
    utts = db.execute("SELECT leg, seq, start_s, end_s, text, confidence FROM call_utterances WHERE call_id = %s "
                      "ORDER BY leg, seq", (call_id,)).fetchall()
    facts = db.execute("SELECT id, fact_type, fact_key, fact_value, confidence, is_active FROM user_facts "
                       "WHERE phone_number_hash = %s ORDER BY id", (row[7],)).fetchall() if row else []
    conv = wv.collections.use(settings.weaviate_conversation_collection)
    objs = conv.query.fetch_objects(filters=Filter.by_property("call_id").equal(call_id),
                                    include_vector=True).objects
    utt_objs = wv.collections.use(settings.weaviate_utterance_collection).query.fetch_objects(
        filters=Filter.by_property("call_id").equal(call_id), limit=200).objects
    return {"row": row, "utts": utts, "facts": facts,
            "objs": [(str(o.uuid), dict(o.properties), list(o.vector["default"])) for o in objs],
            "utt_objs": sorted((o.properties["leg"], o.properties["seq"], o.properties["text"]) for o in utt_objs)}


def test_replay_stores_the_derived_data_once_and_again_changes_nothing(env, db, capsys):
    settings, wv = env
    call_id = f"test-replay-{uuid.uuid4().hex[:12]}"
    outcome = record(settings, call_id)
    assert outcome["recording_status"] == "recorded"
    before = db.execute("SELECT processed_at FROM companion_calls WHERE call_id = %s", (call_id,)).fetchone()
    assert before == (None,)

    code, out, err = replay(capsys, call_id)
    assert code == 0, out + err
    assert f"{call_id} ok:" in out and "1 replayed, 0 skipped, 0 failed" in out
    assert "1/1 calls" in err and "transcribing segment" in err  # the progress on stderr
    assert "+52" not in out + err and "5219515550100" not in out + err

    first = stored(db, settings, wv, call_id)
    assert first["row"][0] is not None  # processed_at
    assert len(first["utts"]) >= 2
    legs = {u[0] for u in first["utts"]}
    assert legs == {"lupita", "person"}
    # every utterance has text (which words Whisper hears depends on the voice: bench/asr_wer.py)
    assert all(u[4].strip() for u in first["utts"]), first["utts"]
    assert len(first["objs"]) == 1
    obj_id, props, vector = first["objs"][0]
    assert obj_id == str(first["row"][1])
    assert props["s3_uri"] == f"s3://{settings.s3_legal_bucket}/{outcome['audio_key']}"
    assert len(vector) > 0
    assert len(first["utt_objs"]) == len(first["utts"])

    code, out, err = replay(capsys, call_id)
    assert code == 0, out + err
    assert "postgres row unchanged" in out and "deleted 0" in out
    second = stored(db, settings, wv, call_id)
    assert second == first  # same rows, same values, same processed_at, same Weaviate objects


def test_unknown_call_id_is_a_usage_error_naming_it(env, capsys):
    missing = f"test-nope-{uuid.uuid4().hex[:12]}"
    code, out, err = replay(capsys, missing)
    assert code == 2
    assert f"unknown call id (no companion_calls row): {missing}" in err
    code, _, err = replay(capsys, "bad id/../x")
    assert code == 2 and "not a valid call id" in err
    code, _, err = replay(capsys)
    assert code == 2 and "CALL_ID" in err


def test_call_without_consent_is_skipped_with_the_reason(env, db, capsys):
    settings, _ = env
    call_id = f"test-replay-nc-{uuid.uuid4().hex[:10]}"
    assert record(settings, call_id, consent=False)["recording_status"] == "skipped"
    code, out, _ = replay(capsys, call_id)
    assert code == 0
    assert f"{call_id} skipped: not recorded: recording_status skipped (no_recording_consent)" in out
    assert "0 replayed, 1 skipped, 0 failed" in out
    row = db.execute("SELECT processed_at FROM companion_calls WHERE call_id = %s", (call_id,)).fetchone()
    assert row == (None,)
    assert db.execute("SELECT count(*) FROM call_utterances WHERE call_id = %s", (call_id,)).fetchone() == (0,)
