"""End to end on the real stack (issue #3, "End to end"): one simulated Spanish call in through a
real ``lupita bridge`` child → Kafka → a real ``lupita worker`` child running every stage
(recorder, vad, transcriber, understanding) → one WAV in the legal bucket (Object Lock), one
``companion_calls`` row with its analysis, the expected user facts, one Weaviate
``LupitaConversation`` object whose ``s3_uri`` names that locked WAV. Then the call's own Kafka
records (every ``audio.chunks`` and ``call.lifecycle`` record of the call, read back from the
topics) are produced again, unchanged, twice: nothing changes anywhere. "Nothing changed" is
looked at once the worker has positively handled the replays (every stage counted them, its
consumer group committed every input topic to its end, no call open and no work in progress),
never after a fixed sleep.

The speech comes from espeak-ng through the telephone band (``loadgen.synth``). Which words
Whisper base hears depends on the voice (``bench/asr_wer.py`` measures it), so nothing here
depends on a recognised word: the analysis is checked for its structure and for consistency
with the stored transcript (the facts are exactly those the analyzer's rules find in the
call's stored utterances), not for a topic or a fact the script was written to produce.

The worker keeps its default state retention (an hour) here, so both replays are redeliveries the
worker still remembers: they must be recognised as late/duplicate by every stage. The other
path (a call replayed after the worker forgot it, where the stores' upserts alone must keep
everything unchanged) is tested per stage in tests/stream_processor.

Takes about 1-3 minutes on the 2 shared cores (Whisper base on CPU and three model loads).
"""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from kafka_io import own_topic_prefix, produce, records_of_call, wait_drained
from procs import bridge_process, start_worker, stop_worker  # short group timeouts: procs.WORKER_ENV
from sp_stores import weaviate_client
from waits import wait_for

pytestmark = [pytest.mark.stack, pytest.mark.timeout(600)]

PROCESS_TIMEOUT_S = 300  # Whisper on two shared cores is slow; a bound, not a speed assertion

# (leg, text, pause after): phrases without inner pauses except the last one's full stop.
SCRIPT = (
    ("lupita", "Buenos días doña Carmen", 0.6),
    ("person", "Tomo mis pastillas para el azúcar", 0.7),
    ("lupita", "Ya se tomó la pastilla de la presión con el desayuno esta mañana", 0.6),
    ("person", "Muy bien gracias. Me gusta el café con leche", 1.0),
)


# --------------------------------------------------------------------------------------- helpers


def produce_unchanged(bootstrap: str, records: list) -> None:
    """Produce consumed records again as they are (topic, key, value, headers), in this order."""
    produce(bootstrap, [(r.topic, r.key, r.value, r.headers) for r in records])


def idle(worker) -> bool:
    """No call open in the recorder or the vad, no segment being transcribed, no understanding
    work running or waiting."""
    return all(worker.metric(name, required=True) == 0 for name in (
        "lupita_recorder_open_calls", "lupita_vad_open_calls", "lupita_transcriber_in_flight",
        "lupita_understanding_work_in_progress"))


def call_row(db, call_id: str) -> dict | None:
    cur = db.execute("SELECT * FROM companion_calls WHERE call_id = %s", (call_id,))
    row = cur.fetchone()
    return None if row is None else dict(zip([d.name for d in cur.description], row))


def stores_snapshot(db, s3, wv, settings, call_id: str, row: dict) -> dict:
    """Everything the pipeline wrote for the call, in comparable form."""
    from weaviate.classes.query import Filter

    by_call = Filter.by_property("call_id").equal(call_id)
    conv = wv.collections.get(settings.weaviate_conversation_collection)
    utt = wv.collections.get(settings.weaviate_utterance_collection)
    conv_objs = conv.query.fetch_objects(filters=by_call, limit=100).objects
    utt_objs = utt.query.fetch_objects(filters=by_call, limit=1000).objects
    versions = s3.list_object_versions(Bucket=settings.s3_legal_bucket, Prefix=row["s3_legal_key"])
    return {
        "row": call_row(db, call_id),
        "utterances": db.execute(
            "SELECT leg, seq, start_s, end_s, text, confidence FROM call_utterances WHERE call_id = %s"
            " ORDER BY leg, seq", (call_id,)).fetchall(),
        "facts": db.execute(
            "SELECT * FROM user_facts WHERE source_call_id = %s ORDER BY id", (call_id,)).fetchall(),
        "alerts": db.execute("SELECT * FROM call_alerts WHERE call_id = %s ORDER BY cue_id", (call_id,)).fetchall(),
        "wav_versions": [(v["Key"], v["VersionId"]) for v in versions.get("Versions", [])
                         if v["Key"] == row["s3_legal_key"]],
        "wav_delete_markers": versions.get("DeleteMarkers", []),
        "weaviate_conversations": sorted((str(o.uuid), o.properties["s3_uri"]) for o in conv_objs),
        "weaviate_utterances": sorted(str(o.uuid) for o in utt_objs),
    }


# -------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def names() -> tuple[str, str]:
    """Own Weaviate collections for this run (removed afterwards): the shared ones stay clean."""
    suffix = uuid.uuid4().hex[:8]
    return f"TestE2eConversation_{suffix}", f"TestE2eUtterance_{suffix}"


@pytest.fixture(scope="module")
def own_topics(stack_env):
    """Topics of this module only: the worker below reads its topics from the beginning, and must
    not record every call the other test modules of the session produced."""
    with own_topic_prefix("e2e"):
        yield


@pytest.fixture(scope="module")
def settings(own_topics, names):
    from stream_processor.settings import PipelineSettings

    return PipelineSettings(weaviate_conversation_collection=names[0], weaviate_utterance_collection=names[1])


@pytest.fixture(scope="module")
def worker(settings, names, tmp_path_factory):
    """``lupita worker`` (``python -m stream_processor``) with every stage, its own consumer group."""
    env = {
        "LUPITA_STAGES": "recorder,vad,transcriber,understanding",
        # remember finished calls (tombstones) for the whole test: replays are redeliveries
        "LUPITA_RECORDER_STATE_RETENTION_SECONDS": "3600",
        "LUPITA_VAD_GRACE_SECONDS": "3",
        "LUPITA_VAD_TICK_SECONDS": "0.25",
        "LUPITA_UNDERSTANDING_RETRY_INITIAL_SECONDS": "1",
        "LUPITA_SINK_RETRY_MAX_ELAPSED_SECONDS": "10",
        "LUPITA_ASR_THREADS": "2",
        "LUPITA_WEAVIATE_CONVERSATION_COLLECTION": names[0],
        "LUPITA_WEAVIATE_UTTERANCE_COLLECTION": names[1],
    }
    w = start_worker(tmp_path_factory.mktemp("e2e-worker"), f"e2e-test-{uuid.uuid4().hex[:8]}",
                     timeout=240, env_extra=env)
    try:
        yield w
    finally:
        stop_worker(w)


@pytest.fixture(scope="module")
def bridge(settings, tmp_path_factory):
    with bridge_process("e2e-bridge", tmp_path_factory.mktemp("e2e-bridge")) as b:
        yield b


@pytest.fixture(scope="module")
def db(settings):
    with psycopg.connect(settings.postgres_dsn.get_secret_value(), autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def s3(settings):
    from stream_processor.stores.archive import s3_client

    return s3_client(settings)


@pytest.fixture(scope="module")
def wv(settings, names):
    with weaviate_client(settings, drop=names) as c:
        yield c


# ------------------------------------------------------------------------------------------ test


def test_one_spanish_call_end_to_end_and_replaying_its_events_twice_changes_nothing(
    worker, bridge, settings, db, s3, wv, tmp_path
):
    from loadgen import synth
    from loadgen.runner import run_calls, synthetic_phone
    from loadgen.settings import LoadgenSettings
    from lupita.privacy import phone_hash
    from lupita.topics import AUDIO_CHUNKS, CALL_LIFECYCLE, SPEECH_SEGMENTS, TRANSCRIPTS
    from lupita.v1 import audio_pb2, events_pb2
    from weaviate.classes.query import Filter

    call_id = f"e2e-{uuid.uuid4().hex[:16]}"
    rate = 8000
    stereo = synth.synthesize_dialogue([synth.Turn(*t) for t in SCRIPT], rate,
                                       cache_dir=LoadgenSettings().cache_dir)
    assert 8 <= len(stereo) / rate <= 20

    # 1. one call through the real bridge (as fast as its flow control allows)
    report = asyncio.run(run_calls(bridge.target, LoadgenSettings().first_token, stereo, rate,
                                   audio_pb2.CODEC_PCM16, calls=1, speed=0, call_ids=[call_id]))
    assert report.ok == 1 and report.failed == 0, report.to_dict()

    # 2. the worker records, transcribes, analyses and stores it
    row = wait_for("companion_calls.processed_at", lambda: (r := call_row(db, call_id)) and
                   r["processed_at"] is not None and r, timeout=PROCESS_TIMEOUT_S, interval=1.0,
                   alive=worker.alive)
    expected_hash = phone_hash(synthetic_phone(0), settings.hmac_key_bytes)
    assert row["phone_number_hash"] == expected_hash
    assert row["recording_status"] == "recorded" and row["recording_consent"] is True

    # one WAV in the legal bucket, locked in COMPLIANCE mode, exactly one version
    legal = settings.s3_legal_bucket
    head = s3.head_object(Bucket=legal, Key=row["s3_legal_key"])
    assert head["ObjectLockMode"] == "COMPLIANCE" and head["ContentLength"] > 44
    assert row["s3_legal_key"].endswith(f"/{call_id}/audio-full.wav")
    wav = s3.get_object(Bucket=legal, Key=row["s3_legal_key"])["Body"].read()
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"

    # the analysis: its structure, whatever words Whisper heard
    transcript = row["transcript"] or ""
    assert transcript.strip(), "empty transcript"
    assert isinstance(row["topics"], list) and all(isinstance(t, str) and t for t in row["topics"])
    assert row["emotion_primary"] and row["summary"]
    assert row["weaviate_id"] is not None

    # utterances of both legs in Postgres, each with text, and the transcript made of them
    utts = db.execute("SELECT leg, seq, start_s, end_s, text, confidence FROM call_utterances"
                      " WHERE call_id = %s ORDER BY leg, seq", (call_id,)).fetchall()
    assert {u[0] for u in utts} == {"lupita", "person"}, utts
    assert all(u[4].strip() and 0 <= u[2] <= u[3] for u in utts), utts
    assert all(u[4] in transcript for u in utts), (utts, transcript)

    # the facts learned in this call are exactly what the analyzer's rules find in its stored
    # utterances (the phone hash is the same synthetic number in every run, so facts are selected
    # by source_call_id: the last call that confirmed them; superseded rows included)
    from stream_processor.contracts import Utterance
    from stream_processor.models.analyzer.base import prepare_utterances
    from stream_processor.models.analyzer.facts import extract_facts

    stored = [Utterance(call_id, leg, seq, float(a), float(b), text, 1.0 if conf is None else float(conf))
              for leg, seq, a, b, text, conf in utts]
    # the worker weighs each fact by the recognition probabilities of its words (from the final
    # transcripts) and drops those under the analyzer's minimum: the same here
    from lupita.v1 import events_pb2
    from stream_processor.records import LEG_NAMES
    from stream_processor.stages.understanding.agent import words_of

    finals = [events_pb2.TranscriptEvent.FromString(r.value)
              for r in records_of_call(settings.kafka_bootstrap, settings.topic(TRANSCRIPTS), call_id)]
    words = {(LEG_NAMES[ev.leg], int(ev.seq)): words_of(ev) for ev in finals
             if not ev.is_partial and ev.text and words_of(ev)}
    expected_facts = {(f.fact_type, f.key, f.value) for f in extract_facts(
        prepare_utterances(call_id, stored), words, min_confidence=settings.analyzer_fact_min_confidence)}
    facts = db.execute(
        "SELECT fact_type, fact_key, fact_value FROM user_facts WHERE source_call_id = %s"
        " AND phone_number_hash = %s", (call_id, expected_hash)).fetchall()
    assert set(facts) == expected_facts and len(facts) == len(expected_facts), (facts, transcript)

    # one Weaviate object, our vector of the embedder's size, s3_uri of the locked WAV
    conv = wv.collections.get(settings.weaviate_conversation_collection)
    objs = conv.query.fetch_objects(filters=Filter.by_property("call_id").equal(call_id),
                                    include_vector=True).objects
    assert len(objs) == 1
    obj = objs[0]
    assert str(obj.uuid) == str(row["weaviate_id"])
    assert obj.properties["s3_uri"] == f"s3://{legal}/{row['s3_legal_key']}"
    assert obj.properties["phone_number_hash"] == expected_hash
    assert len(obj.vector["default"]) == settings.embed_dim
    assert sorted(obj.properties["topics"]) == sorted(row["topics"])

    # 3. replay: the call's own records, read back from Kafka, produced again unchanged (twice)
    bootstrap = settings.kafka_bootstrap
    lifecycle = records_of_call(bootstrap, settings.topic(CALL_LIFECYCLE), call_id)
    chunks = records_of_call(bootstrap, settings.topic(AUDIO_CHUNKS), call_id)
    kinds_of = []
    for r in lifecycle:
        ev = events_pb2.CallLifecycle()
        ev.ParseFromString(r.value)
        kinds_of.append(ev.WhichOneof("event"))
    assert kinds_of == ["started", "ended"] and len(chunks) > 10
    replay = [lifecycle[0], *chunks, lifecycle[1]]  # the bridge's order
    segments_before = len(records_of_call(bootstrap, settings.topic(SPEECH_SEGMENTS), call_id))
    transcripts_before = len(records_of_call(bootstrap, settings.topic(TRANSCRIPTS), call_id))
    assert segments_before > 0 and transcripts_before > 0
    before = stores_snapshot(db, s3, wv, settings, call_id, row)
    assert len(before["wav_versions"]) == 1 and not before["wav_delete_markers"]
    assert len(before["weaviate_conversations"]) == 1
    assert len(before["utterances"]) == len(before["weaviate_utterances"]) == len(utts)

    def consumed(stage: str) -> float:
        return (worker.metric(f"lupita_{stage}_records_total", topic=AUDIO_CHUNKS)
                + worker.metric(f"lupita_{stage}_records_total", topic=CALL_LIFECYCLE))

    for attempt in (1, 2):
        rec0, vad0 = consumed("recorder"), consumed("vad")
        late0 = worker.metric("lupita_understanding_records_total", kind="late")
        produce_unchanged(bootstrap, replay)
        wait_for(f"replay {attempt} to be consumed by every stage", lambda: (
            consumed("recorder") >= rec0 + len(replay) and consumed("vad") >= vad0 + len(replay)
            and worker.metric("lupita_understanding_records_total", kind="late") >= late0 + 2
        ), timeout=90, interval=0.5, alive=worker.alive)

    # anything the replays might have started (a re-opened call, a re-segmented leg, a
    # re-transcription, a second finish) has run its course once the worker's group has committed
    # every topic it reads to its end (its own segments and transcripts included) and no call is
    # open and no work in progress, twice in a row
    wait_drained(bootstrap, worker.group, [settings.topic(t) for t in (
        AUDIO_CHUNKS, CALL_LIFECYCLE, SPEECH_SEGMENTS, TRANSCRIPTS)], idle=lambda: idle(worker),
        alive=worker.alive)
    after = stores_snapshot(db, s3, wv, settings, call_id, row)
    for key in before:
        assert after[key] == before[key], f"{key} changed after the replays"
    assert len(records_of_call(bootstrap, settings.topic(SPEECH_SEGMENTS), call_id)) == segments_before
    assert len(records_of_call(bootstrap, settings.topic(TRANSCRIPTS), call_id)) == transcripts_before
    assert worker.metric("lupita_recorder_calls_total", outcome="recorded") == 1
    assert worker.metric("lupita_understanding_calls_total", outcome="analysed") == 1
