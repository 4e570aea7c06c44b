"""Malformed input to the sinks gets a precise InvalidSinkInput before anything is sent.

The sinks here point at closed ports: if a bad value got past validation, the sink would try to
connect and the test would see SinkUnavailable instead."""

from __future__ import annotations

import socket
from dataclasses import replace

import pytest

from stream_processor.stores import (
    ConversationDoc,
    InvalidSinkInput,
    PostgresSink,
    RetryPolicy,
    VectorDimensionMismatch,
    WeaviateSink,
)
from stream_processor.stores.postgres import analysis_json, dedupe_facts
from stream_processor.contracts import AlertHit, CallAnalysis, EvidenceSpan, UserFact, Utterance

CALL = "call-validation-1"
HASH = "ab" * 32
NO_RETRY = RetryPolicy(max_attempts=1)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pg() -> PostgresSink:
    sink = PostgresSink.connect(f"postgresql://nobody@127.0.0.1:{closed_port()}/x", policy=NO_RETRY)
    yield sink
    sink.close()


@pytest.fixture(scope="module")
def wv() -> WeaviateSink:
    sink = WeaviateSink(http_port=closed_port(), grpc_port=closed_port(), policy=NO_RETRY)
    yield sink
    sink.close()


def utt(leg="person", seq=0, start=0.0, end=1.0, text="hola", conf=0.9, call=CALL) -> Utterance:
    return Utterance(call, leg, seq, start, end, text, conf)


def analysis(**kw) -> CallAnalysis:
    base = CallAnalysis(CALL, ("salud",), "positive", facts=(UserFact("health", "medication", "metformina", 0.8),))
    return replace(base, **kw)


@pytest.mark.parametrize(
    "args, message",
    [
        ({"call_id": "bad id!"}, "invalid call_id"),
        ({"analysis": analysis(call_id="other-call")}, "belongs to call 'other-call'"),
        ({"utterances": [utt(call="other-call")]}, "utterance #0 belongs to call"),
        ({"utterances": [utt(leg="caller")]}, "leg 'caller'"),
        ({"utterances": [utt(seq=-1)]}, "seq -1"),
        ({"utterances": [utt(start=2.0, end=1.0)]}, "end_s >= start_s"),
        ({"utterances": [utt(start=float("nan"))]}, "finite"),
        ({"utterances": [utt(conf=1.5)]}, "between 0 and 1"),
        ({"utterances": [utt(seq=1), utt(seq=1)]}, "repeats (person, seq 1)"),
        ({"utterances": [utt(text="a\x00b")]}, "NUL"),
        ({"transcript": "x\x00"}, "transcript contains a NUL"),
        ({"weaviate_id": "not-a-uuid"}, "is not a UUID"),
        ({"phone_number_hash": ""}, "phone_number_hash must not be empty"),
        ({"analysis": analysis(facts=(UserFact("health", "", "x", 0.5),))}, "fact #0 key must not be empty"),
        ({"analysis": analysis(facts=(UserFact("health", "k", "x", -0.1),))}, "fact #0 confidence"),
        ({"analysis": analysis(topics=("",))}, "topic #0 must not be empty"),
        ({"analysis": analysis(emotion_trend=((float("inf"), "sad"),))}, "non-finite time"),
    ],
)
def test_postgres_rejects_malformed_analysis(pg, args, message):
    kw = {
        "call_id": CALL, "analysis": analysis(), "transcript": "hola", "utterances": [utt()],
        "weaviate_id": None, "phone_number_hash": HASH,
    }
    kw.update(args)
    with pytest.raises(InvalidSinkInput) as info:
        pg.write_call_analysis(**kw)
    assert message in str(info.value)
    assert info.value.store == "postgres" and info.value.operation == "write_call_analysis"


@pytest.mark.parametrize(
    "hit, message",
    [
        (AlertHit("bad id", "fall", "high", EvidenceSpan("person", 0, 0, 1, "me caí")), "invalid call_id"),
        (AlertHit(CALL, "", "high", EvidenceSpan("person", 0, 0, 1, "me caí")), "cue_id must not be empty"),
        (AlertHit(CALL, "fall", "urgent", EvidenceSpan("person", 0, 0, 1, "me caí")), "severity 'urgent'"),
        (AlertHit(CALL, "fall", "high", None), "needs its EvidenceSpan"),
    ],
)
def test_postgres_rejects_malformed_alerts(pg, hit, message):
    with pytest.raises(InvalidSinkInput) as info:
        pg.write_alert(hit)
    assert message in str(info.value)


def doc(**kw) -> ConversationDoc:
    return replace(ConversationDoc(CALL, "s3://b/k.wav", HASH, ("salud",), "positive"), **kw)


@pytest.mark.parametrize(
    "args, error, message",
    [
        ({"vector": []}, InvalidSinkInput, "the call vector is empty"),
        ({"vector": [0.1, float("nan")]}, InvalidSinkInput, "NaN or infinity"),
        ({"vector": "abc"}, InvalidSinkInput, "not a sequence of numbers"),
        ({"utterances": [utt()], "utterance_vectors": []}, InvalidSinkInput, "1 utterances but 0 utterance vectors"),
        ({"utterances": [utt()], "utterance_vectors": [[0.1, 0.2, 0.3]]}, VectorDimensionMismatch, "has 3 dimensions, expected 2"),
        ({"utterances": [utt(call="x")], "utterance_vectors": [[0.1, 0.2]]}, InvalidSinkInput, "belongs to call 'x'"),
        ({"utterances": [utt(), utt()], "utterance_vectors": [[0.1, 0.2]] * 2}, InvalidSinkInput, "repeats"),
        ({"doc": doc(call_id="")}, InvalidSinkInput, "has no call_id"),
    ],
)
def test_weaviate_rejects_malformed_objects(wv, args, error, message):
    kw = {"doc": doc(), "vector": [0.1, 0.2], "utterances": (), "utterance_vectors": ()}
    kw.update(args)
    with pytest.raises(error) as info:
        wv.write_call(**kw)
    assert message in str(info.value)


def test_ensure_collections_needs_a_positive_size(wv):
    for bad in (0, -3, 1.5, True):
        with pytest.raises(InvalidSinkInput):
            wv.ensure_collections(bad)


def test_duplicate_facts_keep_the_most_confident():
    facts = [
        UserFact("health", "medication", "metformina", 0.6),
        UserFact("family", "daughter_name", "Rosa", 0.9),
        UserFact("health", "medication", "insulina", 0.8),
        UserFact("health", "medication", "aspirina", 0.8),  # tie: the later one wins
    ]
    kept, dropped = dedupe_facts(facts)
    assert dropped == 2
    assert [(f.key, f.value) for f in kept] == [("medication", "aspirina"), ("daughter_name", "Rosa")]


def test_analysis_document_keeps_what_has_no_column():
    a = analysis(emotion_trend=((1.5, "positive"), (9.0, "sad")), analyzer="anthropic->local", notes=("timeout",))
    doc_ = analysis_json(a)
    assert doc_["schema"] == "lupita.call-analysis/v1"
    assert doc_["analyzer"] == "anthropic->local" and doc_["notes"] == ["timeout"]
    assert doc_["emotion_trend"] == [{"start_s": 1.5, "emotion": "positive"}, {"start_s": 9.0, "emotion": "sad"}]
    assert doc_["facts"] == [{"type": "health", "key": "medication", "value": "metformina", "confidence": 0.8}]


def test_sink_settings_mix_into_the_worker_settings(monkeypatch):
    from stream_processor.settings import WorkerSettings
    from stream_processor.stores.settings import SinkSettings

    class Worker(WorkerSettings, SinkSettings):
        pass

    monkeypatch.setenv("LUPITA_SINK_RETRY_MAX_ATTEMPTS", "9")
    monkeypatch.setenv("LUPITA_SINK_RETRY_MAX_ELAPSED_SECONDS", "12.5")
    monkeypatch.setenv("LUPITA_WEAVIATE_CONVERSATION_COLLECTION", "CallsV2")
    s = Worker()
    assert (s.retry_policy.max_attempts, s.retry_policy.max_elapsed_s) == (9, 12.5)
    assert s.weaviate_conversation_collection == "CallsV2" and s.weaviate_utterance_collection == "LupitaUtterance"
    with pytest.raises(ValueError, match="must differ"):
        Worker(weaviate_utterance_collection="CallsV2")
    with pytest.raises(ValueError, match="LUPITA_KAFKA_HEARTBEAT_SECONDS"):  # the worker's check still runs
        Worker(kafka_heartbeat_seconds=20)
    monkeypatch.setenv("LUPITA_WEAVIATE_UTTERANCE_COLLECTION", "lowercase")
    with pytest.raises(ValueError, match="weaviate_utterance_collection"):
        Worker()
