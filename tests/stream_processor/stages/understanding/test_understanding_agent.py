"""The understanding stage end to end on the real stack: ``lupita worker`` with
``LUPITA_STAGES=understanding`` (a child process with its own consumer group and Weaviate
collections) consumes CallStarted/CallEnded (the bridge's own event builders) and
TranscriptEvents (finals, a partial, a blank final, leg_complete per leg) from the real Kafka;
an AlertEvent arrives on ``alerts`` for the alert utterance, a CallAnalysisEvent on
``call.analysis``, the Postgres and Weaviate rows exist; redelivering the same records changes
nothing; a call without recording consent derives nothing. "Nothing" is looked at once the
worker has positively handled the records (its consumer group committed past them, its
counters moved, no work in progress), never after a fixed sleep."""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest
from calls import simulate_call
from kafka_io import TopicReader, events_of, produce, wait_handled
from procs import start_worker, stop_worker
from sp_stores import weaviate_client
from waits import wait_for
from weaviate.classes.query import Filter

from lupita.v1 import analysis_pb2, audio_pb2, events_pb2
from media_bridge.publisher import ended_event

pytestmark = pytest.mark.stack

LUP, PER = audio_pb2.LEG_LUPITA, audio_pb2.LEG_PERSON
PHONE = "+52 951 555 0142"  # synthetic; never printed


@pytest.fixture(scope="module")
def names() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return f"TestUaConversation_{suffix}", f"TestUaUtterance_{suffix}"


@pytest.fixture(scope="module")
def settings(stack_env, names):
    from stream_processor.stages.understanding.settings import UnderstandingSettings

    return UnderstandingSettings(weaviate_conversation_collection=names[0], weaviate_utterance_collection=names[1])


@pytest.fixture(scope="module")
def worker(settings, names, tmp_path_factory):
    """``lupita worker`` running the understanding stage alone, on the session's topics."""
    w = start_worker(tmp_path_factory.mktemp("understanding-worker"), f"understanding-test-{uuid.uuid4().hex[:8]}",
                     stages="understanding", env_extra={
                         "LUPITA_WEAVIATE_CONVERSATION_COLLECTION": names[0],
                         "LUPITA_WEAVIATE_UTTERANCE_COLLECTION": names[1],
                         "LUPITA_SINK_RETRY_MAX_ELAPSED_SECONDS": "10",
                     })
    try:
        yield w
    finally:
        stop_worker(w)


@pytest.fixture(scope="module")
def wv(settings, names):
    with weaviate_client(settings, drop=names) as c:
        yield c


@pytest.fixture(scope="module")
def db(settings):
    with psycopg.connect(settings.postgres_dsn.get_secret_value(), autocommit=True) as conn:
        yield conn


def read_events(bootstrap: str, topic: str, message_type, call_id: str, *, until, timeout: float = 60.0) -> list:
    """The topic's records of ``call_id`` (decoded), read from the start until ``until(events)``."""
    with TopicReader(bootstrap, topic) as reader:
        return reader.wait(f"{topic} records of {call_id}",
                           lambda: (lambda evs: until(evs) and evs)(reader.decoded(call_id, message_type)),
                           timeout=timeout)


def idle(worker) -> bool:
    """No alert write or call finish running or waiting in the stage."""
    return worker.metric("lupita_understanding_work_in_progress", required=True) == 0


def transcript(call_id: str, leg: int, seq: int, start_s: float, text: str, *, partial: bool = False,
               revision: int = 0, leg_complete: bool = False, started_us: int = 0) -> events_pb2.TranscriptEvent:
    ev = events_pb2.TranscriptEvent(
        call_id=call_id, leg=leg, seq=seq, is_partial=partial, revision=revision, text=text, language="es",
        backend="local", emitted_at_us=time.time_ns() // 1000, segment_start_us=int(start_s * 1e6),
        segment_end_us=int((start_s + 3.0) * 1e6), leg_complete=leg_complete, call_started_at_us=started_us,
    )
    if text and not partial:
        ev.confidence = 0.9
    return ev


def call_records(settings, call_id: str, *, consent: bool = True) -> tuple[list, int]:
    sim = simulate_call(call_id, phone=PHONE, consent=consent)
    t0 = sim.started.started.started_at_us
    ended = ended_event(call_id, "hangup", ended_at_us=t0 + 30_000_000, chunks={}, frames={})
    tr = [
        transcript(call_id, LUP, 0, 0.5, "Buenas tardes, doña Carmen. ¿Cómo se siente hoy?", started_us=t0),
        transcript(call_id, PER, 0, 4.0, "Ay, Lupita, hoy en la mañana me", partial=True, started_us=t0),
        transcript(call_id, PER, 0, 4.0, "Ay, Lupita, hoy en la mañana me caí en el baño.", revision=1,
                   started_us=t0),
        transcript(call_id, LUP, 1, 8.0, "¿Se lastimó? ¿Ya tomó su pastilla de hoy?", started_us=t0),
        transcript(call_id, PER, 1, 12.0, "Sí, tomo metformina en la mañana porque tengo diabetes.",
                   started_us=t0),
        transcript(call_id, PER, 2, 16.0, "", started_us=t0),  # the ASR guards left nothing
        transcript(call_id, LUP, 2, 0.0, "", leg_complete=True, started_us=t0),
        transcript(call_id, PER, 3, 0.0, "", leg_complete=True, started_us=t0),
    ]
    key = call_id.encode()
    lifecycle, transcripts = settings.topic("call.lifecycle"), settings.topic("transcripts")
    records = ([(lifecycle, key, sim.started.SerializeToString())]
               + [(transcripts, key, t.SerializeToString()) for t in tr]
               + [(lifecycle, key, ended.SerializeToString())])
    return records, t0


def test_alerts_live_analysis_at_the_end_and_redelivery_changes_nothing(worker, settings, db, wv, names, call_id):
    bootstrap = settings.kafka_bootstrap
    records, t0 = call_records(settings, call_id)
    produce(bootstrap, records)

    alerts = read_events(bootstrap, settings.topic("alerts"), analysis_pb2.AlertEvent, call_id,
                         until=lambda evs: any(e.cue_id == "fall" for e in evs))
    fall = [e for e in alerts if e.cue_id == "fall"]
    assert len(fall) == 1, [e.cue_id for e in alerts]
    a = fall[0]
    assert a.severity == "high" and a.leg == PER and a.seq == 0 and a.start_us == 4_000_000
    assert a.evidence[a.char_start:a.char_end] == "me caí"
    assert a.raised_at_us >= a.transcript_emitted_at_us > 0

    done = read_events(bootstrap, settings.topic("call.analysis"), analysis_pb2.CallAnalysisEvent, call_id,
                       until=bool, timeout=90)
    assert len(done) == 1
    ca = done[0]
    assert ca.weaviate_id and ca.analyzer == "local" and ca.facts >= 1 and "salud" in ca.topics
    assert ca.s3_uri.startswith(f"s3://{settings.s3_legal_bucket}/calls/") and ca.s3_uri.endswith(
        f"/{call_id}/audio-full.wav")

    row = db.execute("SELECT weaviate_id, topics, emotion_primary, summary, transcript, processed_at, "
                     "phone_number_hash FROM companion_calls WHERE call_id = %s", (call_id,)).fetchone()
    assert row is not None and str(row[0]) == ca.weaviate_id and list(row[1]) == list(ca.topics)
    assert "me caí" in row[4] and "metformina" in row[4] and row[5] is not None and row[6]
    utts = db.execute("SELECT leg, seq FROM call_utterances WHERE call_id = %s ORDER BY leg, seq",
                      (call_id,)).fetchall()
    assert utts == [("lupita", 0), ("lupita", 1), ("person", 0), ("person", 1)]  # no partial, no blank
    assert db.execute("SELECT count(*) FROM user_facts WHERE source_call_id = %s", (call_id,)).fetchone()[0] >= 1
    assert db.execute("SELECT cue_id FROM call_alerts WHERE call_id = %s", (call_id,)).fetchall() == [("fall",)]
    objs = wv.collections.use(names[0]).query.fetch_objects(
        filters=Filter.by_property("call_id").equal(call_id), include_vector=True).objects
    assert len(objs) == 1 and str(objs[0].uuid) == ca.weaviate_id
    assert len(objs[0].vector["default"]) == 512 and objs[0].properties["s3_uri"] == ca.s3_uri
    assert worker.metric("lupita_understanding_records_total", kind="partial") >= 1
    assert worker.metric("lupita_understanding_records_total", kind="blank") >= 1

    # the same records again (a producer retry, a replayed topic): ignored, nothing changes
    late_before = worker.metric("lupita_understanding_records_total", kind="late")
    produced = produce(bootstrap, records)
    wait_for("the redelivered records to be counted as late",
             lambda: worker.metric("lupita_understanding_records_total", kind="late") >= late_before + len(records),
             timeout=60, alive=worker.alive)
    wait_handled(bootstrap, worker.group, produced, alive=worker.alive)
    wait_for("the stage to be idle", lambda: idle(worker), alive=worker.alive)
    again = db.execute("SELECT weaviate_id, topics, emotion_primary, summary, transcript, processed_at, "
                       "phone_number_hash FROM companion_calls WHERE call_id = %s", (call_id,)).fetchone()
    assert again == row
    assert len(events_of(bootstrap, settings.topic("call.analysis"), analysis_pb2.CallAnalysisEvent, call_id)) == 1
    assert len([e for e in events_of(bootstrap, settings.topic("alerts"), analysis_pb2.AlertEvent, call_id)
                if e.cue_id == "fall"]) == 1


def test_a_call_without_consent_derives_nothing(worker, settings, db):
    call_id = f"test-{uuid.uuid4().hex[:16]}"
    skipped = worker.metric("lupita_understanding_calls_total", outcome="skipped_no_consent")
    records, _ = call_records(settings, call_id, consent=False)
    produced = produce(settings.kafka_bootstrap, records)
    wait_for("the call to be skipped",
             lambda: worker.metric("lupita_understanding_calls_total", outcome="skipped_no_consent") >= skipped + 1,
             timeout=60, alive=worker.alive)
    # every record of the call, its last (ended) included, handled; nothing left running
    wait_handled(settings.kafka_bootstrap, worker.group, produced, alive=worker.alive)
    wait_for("the stage to be idle", lambda: idle(worker), alive=worker.alive)
    # (the recorder, when it shares these topics, may write its own 'skipped' row: no analysis in it)
    assert db.execute(
        "SELECT count(*) FROM companion_calls WHERE call_id = %s"
        " AND (processed_at IS NOT NULL OR analysis IS NOT NULL OR transcript IS NOT NULL)",
        (call_id,),
    ).fetchone()[0] == 0
    for table in ("call_alerts", "call_utterances"):
        assert db.execute(f"SELECT count(*) FROM {table} WHERE call_id = %s", (call_id,)).fetchone()[0] == 0
    assert events_of(settings.kafka_bootstrap, settings.topic("alerts"), analysis_pb2.AlertEvent, call_id) == []


def test_a_bad_transcript_record_is_dead_lettered(worker, settings):
    bad = worker.metric("lupita_understanding_bad_records_total")
    produce(settings.kafka_bootstrap, [(settings.topic("transcripts"), b"test-bad-key", b"\xff\xfenot a protobuf")])
    wait_for("the bad record to be counted",
             lambda: worker.metric("lupita_understanding_bad_records_total") >= bad + 1, timeout=30)
    from stream_processor.stages.understanding.agent import UNDERSTANDING_DEAD_LETTERS

    with TopicReader(settings.kafka_bootstrap, settings.topic(UNDERSTANDING_DEAD_LETTERS)) as reader:
        dead = reader.wait("the dead letter", lambda: reader.of("test-bad-key"), timeout=20)
    assert len(dead) == 1
    value, headers = dead[0].value, dict(dead[0].headers or [])
    assert value == b"\xff\xfenot a protobuf" and headers["lupita-reason"] == b"undecodable"


def test_parse_transcript_names_what_is_wrong():
    from stream_processor import records
    from stream_processor.stages.understanding.agent import parse_transcript

    ok = transcript("call-1", PER, 0, 1.0, "hola")
    assert parse_transcript(b"call-1", ok.SerializeToString()).text == "hola"
    with pytest.raises(records.BadRecord) as e:
        parse_transcript(b"call-2", ok.SerializeToString())
    assert e.value.reason == "key_mismatch"
    with pytest.raises(records.BadRecord, match="not a TranscriptEvent"):
        parse_transcript(b"call-1", b"\xff\xfe")
    no_leg = transcript("call-1", audio_pb2.LEG_UNSPECIFIED, 0, 1.0, "hola")
    with pytest.raises(records.BadRecord, match="leg"):
        parse_transcript(b"call-1", no_leg.SerializeToString())
    backwards = transcript("call-1", PER, 0, 1.0, "hola")
    backwards.segment_end_us = 0
    with pytest.raises(records.BadRecord, match="ends"):
        parse_transcript(b"call-1", backwards.SerializeToString())
