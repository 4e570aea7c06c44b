"""WeaviateSink against the real Weaviate of the local stack, in collections of this test
module's own (unique name suffix, dropped at the end: other processes share the server), and the
whole sink sequence of one call (Weaviate, then Postgres with the weaviate_id)."""

from __future__ import annotations

import random
import socket
import uuid
from datetime import datetime, timezone

import psycopg
import pytest
from sp_stores import weaviate_client
from weaviate.classes.config import Configure, DataType, Property
from weaviate.classes.data import DataObject
from weaviate.classes.query import Filter

from stream_processor.stores import (
    ConversationDoc,
    PostgresSink,
    RetryPolicy,
    SinkRejected,
    SinkUnavailable,
    VectorDimensionMismatch,
    WeaviateSink,
    conversation_uuid,
    retry_call,
    s3_uri,
    utterance_uuid,
)
from stream_processor.stores import weaviate as weaviate_sink
from stream_processor.stores.settings import SinkSettings
from stream_processor.contracts import CallAnalysis, UserFact, Utterance

pytestmark = pytest.mark.stack

DIM = 16
STARTED = datetime(2026, 1, 24, 16, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def names() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return f"TestSinksConversation_{suffix}", f"TestSinksUtterance_{suffix}"


@pytest.fixture(scope="module")
def settings(stack_env, names) -> SinkSettings:
    return SinkSettings(
        weaviate_conversation_collection=names[0],
        weaviate_utterance_collection=names[1],
        sink_retry_max_attempts=3,
        sink_retry_initial_seconds=0.05,
        sink_retry_max_elapsed_seconds=10,
    )


@pytest.fixture(scope="module")
def client(settings, names):
    with weaviate_client(settings, drop=names) as c:
        yield c


@pytest.fixture(scope="module")
def sink(settings, client):
    s = WeaviateSink.from_settings(settings)
    s.ensure_collections(DIM)
    yield s
    s.close()


def vec(seed: int, dim: int = DIM) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(-1, 1) for _ in range(dim)]


def utterances(call_id: str, n: int = 3) -> list[Utterance]:
    lines = [
        ("lupita", 0, 0.0, 2.1, "Hola doña Carmen, ¿cómo amaneció hoy?"),
        ("person", 0, 2.5, 6.0, "Bien, mija. Ya me tomé la metformina."),
        ("person", 1, 6.4, 9.8, "Mi hija Rosa viene el domingo."),
        ("lupita", 1, 10.0, 12.0, "¡Qué bonito!"),
    ]
    return [Utterance(call_id, *line) for line in lines[:n]]


def analysis(call_id: str) -> CallAnalysis:
    return CallAnalysis(
        call_id=call_id, topics=("salud", "familia"), emotion_primary="positive",
        behavioral_codes=("echo_open_question",),
        facts=(UserFact("health", "medication", "metformina", 0.8),),
        summary="Carmen está bien; tomó su medicina.",
    )


def doc(call_id: str, person: str) -> ConversationDoc:
    return ConversationDoc.from_analysis(
        analysis(call_id),
        s3_uri=s3_uri("saludcompartida-legal-archive", f"calls/2026/01/24/{call_id}/audio-full.wav"),
        phone_number_hash=person, duration_seconds=312.5, region="oaxaca", started_at=STARTED,
    )


def call_objects(client, name: str, call_id: str) -> dict:
    res = client.collections.use(name).query.fetch_objects(
        filters=Filter.by_property("call_id").equal(call_id), limit=100, include_vector=True
    )
    return {str(o.uuid): (dict(o.properties), o.vector["default"]) for o in res.objects}


def new_call() -> tuple[str, str]:
    return f"test-sinks-{uuid.uuid4().hex[:12]}", uuid.uuid4().hex * 2


def test_write_call_stores_the_conversation_and_its_utterances(sink, client, names):
    call_id, person = new_call()
    utts = utterances(call_id)
    wid = sink.write_call(doc(call_id, person), vec(1), utts, [vec(10 + i) for i in range(3)])
    assert wid == conversation_uuid(call_id)

    conv = call_objects(client, names[0], call_id)
    assert list(conv) == [str(wid)]
    props, vector = conv[str(wid)]
    assert len(vector) == DIM == sink.dim
    assert vector == pytest.approx(vec(1), abs=1e-6)
    assert props["s3_uri"] == f"s3://saludcompartida-legal-archive/calls/2026/01/24/{call_id}/audio-full.wav"
    assert props["phone_number_hash"] == person and props["region"] == "oaxaca"
    assert props["topics"] == ["salud", "familia"] and props["behavioral_codes"] == ["echo_open_question"]
    assert props["emotion"] == "positive" and props["duration_seconds"] == 312.5
    assert props["started_at"] == STARTED and props["summary"].startswith("Carmen")

    objs = call_objects(client, names[1], call_id)
    assert set(objs) == {str(utterance_uuid(call_id, u.leg, u.seq)) for u in utts}
    p, v = objs[str(utterance_uuid(call_id, "person", 1))]
    assert (p["leg"], p["seq"], p["start_s"], p["end_s"]) == ("person", 1, 6.4, 9.8)
    assert p["text"] == "Mi hija Rosa viene el domingo." and p["phone_number_hash"] == person
    assert len(v) == DIM


def test_the_same_write_twice_changes_nothing(sink, client, names):
    call_id, person = new_call()
    args = (doc(call_id, person), vec(2), utterances(call_id), [vec(20 + i) for i in range(3)])
    sink.write_call(*args)
    before = (call_objects(client, names[0], call_id), call_objects(client, names[1], call_id))
    sink.write_call(*args)
    after = (call_objects(client, names[0], call_id), call_objects(client, names[1], call_id))
    assert after == before and len(after[0]) == 1 and len(after[1]) == 3


def test_a_replay_with_fewer_utterances_deletes_the_stale_ones(sink, client, names):
    call_id, person = new_call()
    sink.write_call(doc(call_id, person), vec(3), utterances(call_id, 4), [vec(30 + i) for i in range(4)])
    assert len(call_objects(client, names[1], call_id)) == 4
    sink.write_call(doc(call_id, person), vec(3), utterances(call_id, 2), [vec(30 + i) for i in range(2)])
    left = call_objects(client, names[1], call_id)
    assert set(left) == {str(utterance_uuid(call_id, "lupita", 0)), str(utterance_uuid(call_id, "person", 0))}
    sink.write_call(doc(call_id, person), vec(3))
    assert call_objects(client, names[1], call_id) == {}
    assert len(call_objects(client, names[0], call_id)) == 1
    # another call's utterances are untouched by this call's replays
    other, _ = new_call()
    sink.write_call(doc(other, person), vec(4), utterances(other, 1), [vec(40)])
    sink.write_call(doc(call_id, person), vec(3))
    assert len(call_objects(client, names[1], other)) == 1


def test_near_vector_finds_the_call(sink):
    person = uuid.uuid4().hex * 2
    calls = {}
    for seed in (51, 52, 53):
        call_id, _ = new_call()
        sink.write_call(doc(call_id, person), vec(seed))
        calls[seed] = call_id
    hits = sink.similar_calls(vec(52), phone_number_hash=person, limit=3)
    assert [h.call_id for h in hits][0] == calls[52]
    assert hits[0].distance == pytest.approx(0.0, abs=1e-4)
    assert {h.call_id for h in hits} == set(calls.values())
    assert sink.similar_calls(vec(52), phone_number_hash="0" * 64) == []


def test_another_vector_size_is_refused(settings, sink):
    other = WeaviateSink.from_settings(settings)
    try:
        with pytest.raises(VectorDimensionMismatch) as info:
            other.ensure_collections(DIM * 2)
        text = str(info.value)
        assert f"holds {DIM}-d vectors" in text and f"makes {DIM * 2}-d vectors" in text
        call_id, person = new_call()
        with pytest.raises(VectorDimensionMismatch):
            sink.write_call(doc(call_id, person), vec(5, DIM + 1))
    finally:
        other.close()


def test_a_collection_without_our_marker_is_checked_by_its_stored_vectors(settings, client):
    suffix = uuid.uuid4().hex[:8]
    conv, utt = f"TestSinksForeignC_{suffix}", f"TestSinksForeignU_{suffix}"
    try:
        foreign = client.collections.create(
            conv, vector_config=Configure.Vectors.self_provided(),
            properties=[Property(name="call_id", data_type=DataType.TEXT)],
        )
        foreign.data.insert_many([DataObject(properties={"call_id": "x"}, vector=vec(6, 8))])
        s = WeaviateSink(host=settings.weaviate_host, http_port=settings.weaviate_http_port,
                         grpc_port=settings.weaviate_grpc_port, conversation_collection=conv,
                         utterance_collection=utt)
        try:
            with pytest.raises(VectorDimensionMismatch) as info:
                s.ensure_collections(DIM)
            assert "a stored object" in str(info.value)
            s.ensure_collections(8)  # the right size: the missing properties are added
            have = {p.name for p in client.collections.use(conv).config.get().properties}
            assert {"s3_uri", "phone_number_hash", "topics", "started_at", "summary"} <= have
            assert "[lupita vector_dim=8]" in client.collections.use(conv).config.get().description
        finally:
            s.close()
    finally:
        client.collections.delete([conv, utt])


def test_a_property_of_another_type_is_refused(settings, client):
    suffix = uuid.uuid4().hex[:8]
    conv, utt = f"TestSinksTypedC_{suffix}", f"TestSinksTypedU_{suffix}"
    try:
        client.collections.create(
            conv, vector_config=Configure.Vectors.self_provided(),
            properties=[Property(name="duration_seconds", data_type=DataType.TEXT)],
        )
        s = WeaviateSink(host=settings.weaviate_host, http_port=settings.weaviate_http_port,
                         grpc_port=settings.weaviate_grpc_port, conversation_collection=conv,
                         utterance_collection=utt)
        try:
            with pytest.raises(weaviate_sink.SchemaMismatch, match="duration_seconds is text, expected number"):
                s.ensure_collections(DIM)
        finally:
            s.close()
    finally:
        client.collections.delete([conv, utt])


def test_an_invalid_object_is_rejected_without_retry(client, names, sink):
    attempts = []

    def bad_insert():
        attempts.append(1)
        client.collections.use(names[1]).data.insert(
            properties={"call_id": "x", "seq": "not a number"}, vector=vec(7)
        )

    with pytest.raises(SinkRejected) as info:
        retry_call(bad_insert, policy=RetryPolicy(max_attempts=5, initial_delay_s=0.01), store="weaviate",
                   operation="probe", is_transient=weaviate_sink.is_transient)
    assert len(attempts) == 1 and info.value.__cause__.status_code == 422


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_closed_port_is_retried_then_reported_clearly():
    sink = WeaviateSink(
        http_port=closed_port(), grpc_port=closed_port(), init_timeout_s=1,
        policy=RetryPolicy(max_attempts=3, initial_delay_s=0.01, max_delay_s=0.02, max_elapsed_s=10),
    )
    seen: list[int] = []
    try:
        with pytest.raises(SinkUnavailable) as info:
            sink.ensure_collections(DIM, on_retry=lambda n, delay, exc: seen.append(n))
    finally:
        sink.close()
    err = info.value
    assert seen == [1, 2] and err.attempts == 3 and err.store == "weaviate"
    assert "weaviate ensure_collections: still failing after 3 attempt(s)" in str(err)
    assert "WeaviateConnectionError" in str(err)


def test_one_call_through_both_sinks(settings, sink, client, names):
    """Weaviate first, then Postgres with the weaviate_id; replaying the pair changes nothing."""
    from lupita.db import migrate

    dsn = settings.postgres_dsn.get_secret_value()
    migrate(dsn)
    call_id, person = new_call()
    a = analysis(call_id)
    utts = utterances(call_id)
    pg = PostgresSink.from_settings(settings)
    try:
        with psycopg.connect(dsn, autocommit=True) as db:
            try:
                for _ in range(2):
                    wid = sink.write_call(
                        ConversationDoc.from_analysis(
                            a, s3_uri=f"s3://legal/calls/2026/01/24/{call_id}/audio-full.wav",
                            phone_number_hash=person, duration_seconds=12.0, region="oaxaca", started_at=STARTED,
                        ),
                        vec(8), utts, [vec(80 + i) for i in range(len(utts))],
                    )
                    pg.write_call_analysis(call_id, a, "transcript", utts, wid, person, observed_at=STARTED)
                row = db.execute("SELECT weaviate_id, processed_at FROM companion_calls WHERE call_id = %s",
                                 (call_id,)).fetchone()
                assert row[0] == wid and row[1] is not None
                obj = client.collections.use(names[0]).query.fetch_object_by_id(row[0], include_vector=True)
                assert obj.properties["call_id"] == call_id and len(obj.vector["default"]) == DIM
                assert db.execute("SELECT count(*) FROM call_utterances WHERE call_id = %s",
                                  (call_id,)).fetchone()[0] == len(call_objects(client, names[1], call_id)) == 3
                assert db.execute("SELECT count(*) FROM user_facts WHERE phone_number_hash = %s",
                                  (person,)).fetchone()[0] == 1
            finally:
                db.execute("DELETE FROM user_facts WHERE phone_number_hash = %s", (person,))
                db.execute("DELETE FROM companion_calls WHERE call_id = %s", (call_id,))
    finally:
        pg.close()
