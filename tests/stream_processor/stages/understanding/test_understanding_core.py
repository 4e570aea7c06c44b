"""CallUnderstanding (plain code, no Kafka) on scripted Spanish conversations against the REAL
Postgres and Weaviate of the local stack: the analysis, utterances, facts and the
LupitaConversation object are stored; finishing twice changes nothing; alerts for an alert
script, none for a calm one; no consent keeps nothing. Weaviate collections of this module's
own (unique suffix, dropped at the end)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import psycopg
import pytest
from sp_stores import weaviate_client
from weaviate.classes.query import Filter

from stream_processor.stages.understanding.core import CallUnderstanding, UnderstandingServices, finish_call
from stream_processor.stages.understanding.settings import UnderstandingSettings
from stream_processor.contracts import Utterance

pytestmark = pytest.mark.stack

L, P = "lupita", "person"
STARTED_US = int(datetime(2026, 2, 3, 15, 30, tzinfo=timezone.utc).timestamp() * 1e6)

CARMEN = [
    (L, "Buenos días, doña Carmen. ¿Cómo amaneció hoy?"),
    (P, "Ay, buenos días. Pues aquí ando, un poco triste. Mi hijo Miguel se fue al norte hace diez años y ya "
        "no lo he visto."),
    (L, "¿Y cómo se siente desde que su hijo Miguel se fue al norte?"),
    (P, "Lo extraño mucho. Me siento sola. Mi hija Rosa viene los domingos, pero vive lejos."),
    (L, "Entiendo que se sienta así, debe ser difícil. ¿Ya se tomó su pastilla de hoy?"),
    (P, "Sí, tomo metformina en la mañana porque tengo diabetes. Y también me tomo mi pastilla de la presión."),
    (L, "Qué bonito. La llamo mañana, doña Carmen."),
    (P, "Gracias, mija. Nomás me hace falta mi hijo."),
]

ALERT = [
    (L, "Buenas tardes, don Jorge. ¿Cómo se siente?"),
    (P, "Ay, Lupita, hoy en la mañana me caí en el baño."),
    (L, "¿Se lastimó? ¿Le duele algo?"),
    (P, "No sé... me aprieta el pecho y me falta el aire."),
    (P, "Me sigue doliendo. Me aprieta el pecho otra vez."),
]

CALM = [
    (L, "Buenos días, don Pedro. ¿Cómo está?"),
    (P, "Buenos días. Aquí ando, barriendo el patio."),
    (L, "¿Qué hizo ayer?"),
    (P, "Fui al mercado a comprar jitomates y regresé temprano."),
]


def script(call_id: str, lines: list[tuple[str, str]]) -> list[Utterance]:
    out, seq, t = [], {L: 0, P: 0}, 0.5
    for leg, text in lines:
        out.append(Utterance(call_id, leg, seq[leg], t, t + 3.0, text, 0.9))
        seq[leg] += 1
        t += 3.5
    return out


def new_call() -> str:
    return f"test-cu-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def settings(stack_env) -> UnderstandingSettings:
    suffix = uuid.uuid4().hex[:8]
    return UnderstandingSettings(
        weaviate_conversation_collection=f"TestCuConversation_{suffix}",
        weaviate_utterance_collection=f"TestCuUtterance_{suffix}",
        sink_retry_max_attempts=3, sink_retry_initial_seconds=0.05, sink_retry_max_elapsed_seconds=10,
    )


@pytest.fixture(scope="module")
def services(settings):
    from lupita.db import migrate

    migrate(settings.postgres_dsn.get_secret_value())
    svc = UnderstandingServices.from_settings(settings)
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def wv(settings):
    with weaviate_client(settings, drop=(settings.weaviate_conversation_collection,
                                         settings.weaviate_utterance_collection)) as c:
        yield c


@pytest.fixture(scope="module")
def db(settings):
    with psycopg.connect(settings.postgres_dsn.get_secret_value(), autocommit=True) as conn:
        yield conn


def run_call(services, call_id: str, lines, *, person: str | None, consent: bool = True, started_us: int = STARTED_US):
    cu = CallUnderstanding(call_id)
    cu.start(started_at_us=started_us, phone_hash=person, region="oaxaca", consent=consent,
             detector=services.detector)
    hits = []
    for u in script(call_id, lines):
        hits += cu.on_final(u, services.detector, services.sentiment_of)
    cu.end(started_us + 40_000_000)
    return cu, hits


def stored(db, wv, settings, call_id: str, person: str) -> dict:
    row = db.execute(
        "SELECT topics, emotion_primary, summary, transcript, processed_at, weaviate_id, analysis "
        "FROM companion_calls WHERE call_id = %s", (call_id,)).fetchone()
    utts = db.execute("SELECT leg, seq, start_s, end_s, text FROM call_utterances WHERE call_id = %s "
                      "ORDER BY leg, seq", (call_id,)).fetchall()
    facts = db.execute("SELECT fact_type, fact_key, fact_value, confidence, is_active, updated_at FROM user_facts "
                       "WHERE phone_number_hash = %s ORDER BY id", (person,)).fetchall()
    conv = wv.collections.use(settings.weaviate_conversation_collection)
    objs = conv.query.fetch_objects(filters=Filter.by_property("call_id").equal(call_id), include_vector=True).objects
    utt_objs = wv.collections.use(settings.weaviate_utterance_collection).query.fetch_objects(
        filters=Filter.by_property("call_id").equal(call_id), limit=100).objects
    return {"row": row, "utts": utts, "facts": facts,
            "objs": [(str(o.uuid), o.properties, o.vector["default"]) for o in objs],
            "utt_objs": sorted((o.properties["leg"], o.properties["seq"]) for o in utt_objs)}


def test_finish_stores_analysis_rows_facts_and_the_weaviate_object_once(services, settings, db, wv):
    call_id, person = new_call(), uuid.uuid4().hex * 2
    cu, hits = run_call(services, call_id, CARMEN, person=person)
    assert hits == []  # a sad call is not an emergency
    assert cu.conversation.summary()["turns"] == len(CARMEN)
    assert cu.conversation.sentiment < 0  # "triste", "sola", "me hace falta"

    result = finish_call(cu, services)
    assert result.postgres.call_row == "inserted"
    before = stored(db, wv, settings, call_id, person)

    topics, emotion, summary, transcript, processed_at, weaviate_id, analysis = before["row"]
    assert "familia" in topics and "salud" in topics
    assert emotion in ("tristeza", "soledad") and summary and processed_at is not None
    assert "metformina" in transcript and transcript.count("\n") == len(CARMEN) - 1
    assert str(weaviate_id) == result.weaviate_id and analysis["analyzer"] == "local"
    assert len(before["utts"]) == len(CARMEN)
    keys = {(f[0], f[1], f[2]) for f in before["facts"]}
    assert {("health", "medication.metformina", "metformina"), ("family", "daughter_name.rosa", "rosa"),
            ("family", "son_name.miguel", "miguel")} <= {(t, k, v.lower()) for t, k, v in keys}
    assert all(f[4] for f in before["facts"])

    [(oid, props, vector)] = before["objs"]
    assert oid == result.weaviate_id
    assert len(vector) == services.embedder.dim == result.vector_dim
    expected_uri = (f"s3://{settings.s3_legal_bucket}/calls/2026/02/03/{call_id}/audio-full.wav")
    assert props["s3_uri"] == result.s3_uri == expected_uri
    assert props["phone_number_hash"] == person and props["region"] == "oaxaca"
    assert props["duration_seconds"] == pytest.approx(40.0) and props["emotion"] == emotion
    assert sorted(props["topics"]) == sorted(topics)
    assert len(before["utt_objs"]) == len(CARMEN)

    # the same call again (redelivery, replay; also rebuilt from its table form): nothing changes
    again = finish_call(CallUnderstanding.from_dict(cu.to_dict()), services)
    assert again.postgres.call_row == "unchanged" and not again.postgres.changed
    assert again.weaviate_id == result.weaviate_id
    assert stored(db, wv, settings, call_id, person) == before


def past_row(db, person: str):
    return db.execute("SELECT anchor_call_id, anchor_weaviate_id::text, items FROM person_past_conversations "
                      "WHERE phone_number_hash = %s", (person,)).fetchone()


def test_finish_stores_the_persons_nearest_calls_for_the_context_api(services, db):
    """Each analysed call stores the person's calls nearest to it (theirs only, the call itself
    first); a later call replaces the answer, a replay of an older one does not."""
    person, other = uuid.uuid4().hex * 2, uuid.uuid4().hex * 2
    first, second, foreign = new_call(), new_call(), new_call()
    finish_call(run_call(services, foreign, CARMEN, person=other)[0], services)  # the same words, someone else
    r1 = finish_call(run_call(services, first, CARMEN, person=person)[0], services)
    anchor, wid, items = past_row(db, person)
    assert (anchor, wid) == (first, r1.weaviate_id)
    assert [i["call_id"] for i in items] == [first] and items[0]["distance"] == pytest.approx(0.0, abs=1e-4)
    assert items[0]["phone_number_hash"] == person and items[0]["summary"] and items[0]["started_at"]

    r2 = finish_call(run_call(services, second, CALM, person=person, started_us=STARTED_US + 86_400_000_000)[0],
                     services)
    anchor, wid, items = past_row(db, person)
    assert (anchor, wid) == (second, r2.weaviate_id)
    assert [i["call_id"] for i in items] == [second, first]  # nearest first; never the other person's
    assert {i["phone_number_hash"] for i in items} == {person}

    finish_call(run_call(services, first, CARMEN, person=person)[0], services)  # a replay of the older call
    assert past_row(db, person)[:2] == (second, r2.weaviate_id)


def test_alert_script_raises_each_cue_once_and_a_calm_script_none(services):
    _, hits = run_call(services, new_call(), ALERT, person=uuid.uuid4().hex * 2)
    # "me falta el aire" is a breathing cue of its own; the second chest pain is not raised again
    assert sorted((h.cue_id, h.evidence.seq) for h in hits) == [("cant_breathe", 1), ("chest_pain", 1), ("fall", 0)]
    fall = hits[0].evidence
    assert fall.text[fall.char_start:fall.char_end] == "me caí"
    _, calm = run_call(services, new_call(), CALM, person=uuid.uuid4().hex * 2)
    assert calm == []


def test_redelivered_utterances_raise_nothing_again(services):
    call_id = new_call()
    cu, hits = run_call(services, call_id, ALERT, person=None)
    assert len(hits) == 3
    for u in script(call_id, ALERT):
        assert cu.on_final(u, services.detector) == []
    assert len(cu.utterances()) == len(ALERT)


def test_transcripts_before_the_start_are_scanned_when_consent_arrives(services):
    call_id = new_call()
    cu = CallUnderstanding(call_id)
    for u in script(call_id, ALERT):
        assert cu.on_final(u, services.detector) == []  # consent unknown yet
    hits = cu.start(started_at_us=STARTED_US, phone_hash=None, region="", consent=True, detector=services.detector)
    assert sorted(h.cue_id for h in hits) == ["cant_breathe", "chest_pain", "fall"]


def test_no_consent_keeps_nothing_and_refuses_to_finish(services, db):
    call_id = new_call()
    cu, hits = run_call(services, call_id, ALERT, person=None, consent=False)
    assert hits == [] and cu.utterances() == []
    with pytest.raises(ValueError, match="no recording consent"):
        finish_call(cu, services)
    assert db.execute("SELECT count(*) FROM companion_calls WHERE call_id = %s", (call_id,)).fetchone()[0] == 0


def test_blank_finals_are_not_utterances_and_a_silent_call_has_no_weaviate_object(services, db, wv, settings):
    call_id = new_call()
    cu = CallUnderstanding(call_id)
    cu.start(started_at_us=STARTED_US, phone_hash=None, region="oaxaca", consent=True)
    assert cu.on_final(Utterance(call_id, P, 0, 1.0, 2.0, "   "), services.detector) == []
    assert cu.blank_finals == 1 and cu.utterances() == []
    result = finish_call(cu, services)
    assert result.weaviate_id is None and result.utterances == 0
    row = db.execute("SELECT weaviate_id, transcript, processed_at FROM companion_calls WHERE call_id = %s",
                     (call_id,)).fetchone()
    assert row[0] is None and row[1] == "" and row[2] is not None


def test_bad_call_id_is_refused():
    with pytest.raises(ValueError, match="invalid call id"):
        CallUnderstanding("../etc/passwd")


def test_postgres_down_raises_unavailable_within_the_budget_and_a_later_finish_completes(services, settings, db, wv):
    import socket

    from stream_processor.stores import PostgresSink, RetryPolicy, SinkUnavailable

    with socket.socket() as s:  # a port nobody listens on: Postgres is "down"
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = UnderstandingServices(
        analyzer=services.analyzer, embedder=services.embedder, weaviate=services.weaviate,
        postgres=PostgresSink.connect(f"postgresql://lupita@127.0.0.1:{port}/lupita", connect_timeout=1,
                                      policy=RetryPolicy(max_attempts=2, initial_delay_s=0.01, max_elapsed_s=5)),
        detector=services.detector, legal_bucket=services.legal_bucket,
    )
    call_id, person = new_call(), uuid.uuid4().hex * 2
    cu, _ = run_call(services, call_id, CALM, person=person)
    with pytest.raises(SinkUnavailable, match="postgres write_call_analysis: still failing after 2 attempt"):
        finish_call(cu, down)
    down.postgres.close()
    assert db.execute("SELECT count(*) FROM companion_calls WHERE call_id = %s", (call_id,)).fetchone()[0] == 0
    # Weaviate went first and holds the object; the retry later stores the rest and the same object
    result = finish_call(cu, services)
    after = stored(db, wv, settings, call_id, person)
    assert after["row"] is not None and str(after["row"][5]) == result.weaviate_id and len(after["objs"]) == 1
