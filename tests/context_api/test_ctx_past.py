"""Relevant past conversations in the context, from the real Weaviate (collections of this module,
written by the stream processor's own Weaviate sink): only the caller's own objects — two people
with the same conversations never see each other's, also under concurrent requests —, ranked by
similarity to the latest conversation and by recency, the last calls already listed left out; and
a Weaviate that does not answer in time costs the context nothing but that part (said, counted)."""

from __future__ import annotations

import json
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from ctxkit import ContextApi, message, person_of, random_phone, results, tool_call, tool_calls, weaviate_collections
from profkit import store_past, write_call

pytestmark = pytest.mark.stack

DIM = 4
NEAR, FAR = [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]
ALMOST = [0.96, 0.04, 0.0, 0.0]


@pytest.fixture(scope="module")
def collections(migrated):
    tag = uuid.uuid4().hex[:10]
    return f"TestPastConv{tag}", f"TestPastUtt{tag}"


@pytest.fixture(scope="module")
def sink(collections):
    with weaviate_collections(*collections, DIM) as sink:
        yield sink


@pytest.fixture(scope="module")
def api(collections, sink):
    conv, utt = collections
    with ContextApi("context-api-past", {"LUPITA_WEAVIATE_CONVERSATION_COLLECTION": conv,
                                         "LUPITA_WEAVIATE_UTTERANCE_COLLECTION": utt,
                                         # generous: the machine is shared; the degrade test has its own server
                                         "LUPITA_CONTEXT_API_PAST_BUDGET_MS": "3000"}) as server:
        yield server


def analysed_call(sink, person: str, days_ago: float, vector: list[float], summary: str) -> str:
    """A call as the platform leaves it: Postgres rows (recorder + analysis, naming its Weaviate
    object) and the conversation object with its vector in Weaviate."""
    from stream_processor.contracts import Utterance
    from stream_processor.stores.weaviate import ConversationDoc, conversation_uuid

    call_id = f"test-past-{uuid.uuid4().hex[:10]}"
    write_call(person, days_ago=days_ago, topics=("familia",), summary=summary, weaviate_id=conversation_uuid(call_id),
               call_id=call_id)
    started = datetime.now(timezone.utc) - timedelta(days=days_ago)
    sink.write_call(ConversationDoc(call_id=call_id, s3_uri=None, phone_number_hash=person, topics=("familia",),
                                    started_at=started, summary=summary),
                    vector, [Utterance(call_id, "person", 0, 0.0, 2.0, summary, 0.9)], [vector])
    return call_id


def history(sink, person: str, who: str) -> dict[str, str]:
    """Six calls: three old ones (one like the latest 30 days ago, one as like it 90 days ago, one
    unlike it) and the three most recent (the last calls the context lists anyway)."""
    return {
        "like_90d": analysed_call(sink, person, 90, ALMOST, f"{who}: habló de su hijo en el norte (hace mucho)."),
        "unlike_40d": analysed_call(sink, person, 40, FAR, f"{who}: habló de la cosecha de maíz."),
        "like_30d": analysed_call(sink, person, 30, ALMOST, f"{who}: extraña a su hijo que se fue al norte."),
        "recent_3": analysed_call(sink, person, 3, FAR, f"{who}: fue al mercado."),
        "recent_2": analysed_call(sink, person, 2, FAR, f"{who}: le dolió la rodilla."),
        "latest": analysed_call(sink, person, 1, NEAR, f"{who}: su hijo no le ha llamado desde el norte."),
    }


def _ctx(api, phone: str) -> dict:
    out = results(api.post(tool_calls(phone, tool_call("getUserContext", {}))))
    assert "result" in out[0], out[0]
    return json.loads(out[0]["result"])["context"]


def test_past_conversations_are_the_callers_own_ranked_by_similarity_and_recency(api, sink):
    a, b = random_phone(), random_phone()
    calls_a = history(sink, person_of(a), "A")
    calls_b = history(sink, person_of(b), "B")  # the same conversations, vectors and dates: another person

    ctx_a, ctx_b = _ctx(api, a), _ctx(api, b)
    for ctx, calls, other in ((ctx_a, calls_a, calls_b), (ctx_b, calls_b, calls_a)):
        past = [c["call_id"] for c in ctx["past_conversations"]]
        # most similar to the latest conversation first, the more recent of two equally similar first;
        # the latest itself and the last calls (already in last_calls) are not repeated
        assert past == [calls["like_30d"], calls["like_90d"], calls["unlike_40d"]], ctx["past_conversations"]
        assert not set(past) & set(other.values())
        assert [c["call_id"] for c in ctx["last_calls"]] == [calls["latest"], calls["recent_2"], calls["recent_3"]]
        assert ctx["degraded"] == {}
    assert ctx_a["past_conversations"][0]["summary"].startswith("A: ")
    assert ctx_a["past_conversations"][0]["similarity"] > 0.9 > ctx_a["past_conversations"][2]["similarity"]

    # concurrent requests of both never cross
    phones = [a, b] * 12
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda p: (p, _ctx(api, p)), phones))
    for phone, ctx in got:
        own, other = (calls_a, calls_b) if phone == a else (calls_b, calls_a)
        ids = {c["call_id"] for c in ctx["past_conversations"]} | {c["call_id"] for c in ctx["last_calls"]}
        assert ids <= set(own.values()) and not ids & set(other.values())
    assert api.metric("lupita_context_api_past_conversations_total", outcome="foreign") == 0


def test_the_brief_names_a_similar_past_conversation(api, sink):
    phone = random_phone()
    calls = history(sink, person_of(phone), "C")
    out = results(api.post(tool_calls(phone, tool_call("getUserContext", {}))))
    brief = json.loads(out[0]["result"])["brief"]
    assert "Conversaciones parecidas: hace 4 semanas: C: extraña a su hijo que se fue al norte" in brief, brief
    assert calls


def test_a_weaviate_that_does_not_answer_costs_only_the_past_conversations(collections, sink):
    """Weaviate's HTTP port replaced by a socket that accepts and never answers: the context comes
    with everything Postgres has, without past conversations, says so, and the read is counted."""
    conv, utt = collections
    stalled = socket.socket()
    stalled.bind(("127.0.0.1", 0))
    stalled.listen(64)  # connections complete in the kernel; nothing is ever read or answered
    phone = random_phone()
    calls = history(sink, person_of(phone), "D")
    try:
        with ContextApi("context-api-past-stalled", {
                "LUPITA_WEAVIATE_CONVERSATION_COLLECTION": conv, "LUPITA_WEAVIATE_UTTERANCE_COLLECTION": utt,
                "LUPITA_WEAVIATE_HTTP_PORT": str(stalled.getsockname()[1]),
                "LUPITA_CONTEXT_API_PAST_BUDGET_MS": "100"}) as api:
            ctx = _ctx(api, phone)
            assert ctx["known"] and ctx["past_conversations"] == []
            assert ctx["degraded"] == {"past_conversations": "timeout"}
            assert [c["call_id"] for c in ctx["last_calls"]][0] == calls["latest"]
            # the assistant-request too: the full Postgres context, not the minimal one
            r = api.post(message("assistant-request", phone))
            assert r.status_code == 200
            text = r.json()["assistantOverrides"]["variableValues"]["user_context"]
            assert "su hijo no le ha llamado" in text
            assert api.metric("lupita_context_api_past_conversations_total", outcome="timeout") >= 2
            assert api.metric("lupita_context_api_assistant_request_degraded_total", reason="timeout") == 0
    finally:
        stalled.close()


def test_the_same_question_is_answered_from_the_cache_and_a_new_call_asks_a_new_one(api, sink):
    """A call's assistant-request and its getUserContext calls ask the same question: the second is
    answered from the process's cache. A newly analysed call is the new anchor: a new question,
    never the cached answer to the old one."""
    phone = random_phone()
    person = person_of(phone)
    calls = history(sink, person, "E")
    cached = api.metric("lupita_context_api_past_conversations_total", outcome="cached")
    first, again = _ctx(api, phone), _ctx(api, phone)
    assert first["past_conversations"] == again["past_conversations"]
    assert [c["call_id"] for c in first["past_conversations"]] == [calls["like_30d"], calls["like_90d"], calls["unlike_40d"]]
    assert api.metric("lupita_context_api_past_conversations_total", outcome="cached") == cached + 1

    newest = analysed_call(sink, person, 0.1, FAR, "E: habló de la milpa y la lluvia.")
    after = _ctx(api, phone)
    assert [c["call_id"] for c in after["last_calls"]] == [newest, calls["latest"], calls["recent_2"]]
    # like the newest (FAR): the market trip 3 days ago, then the harvest 40 days ago, then the rest
    assert [c["call_id"] for c in after["past_conversations"]] == \
        [calls["recent_3"], calls["unlike_40d"], calls["like_30d"]]


def stored_answer(sink, person: str, anchor_call: str, vector: list[float], days_ago: float, extra=()) -> None:
    """What the stream processor stores when it analyses ``anchor_call``: the person's calls nearest
    to it (its own sink's query), plus ``extra`` items."""
    from stream_processor.stages.understanding.core import past_item

    items = [past_item(h) for h in sink.similar_calls(vector, phone_number_hash=person, limit=16)] + list(extra)
    store_past(person, anchor_call, items, datetime.now(timezone.utc) - timedelta(days=days_ago))


def test_past_conversations_stored_at_analysis_are_read_without_asking_weaviate(api, sink):
    """The answer the stream processor stored for the person's latest call is the context's (the
    same as Weaviate's, no query); one about an older call is not used; an item of someone else
    in it is dropped and counted."""
    phone, other = random_phone(), random_phone()
    person = person_of(phone)
    calls = history(sink, person, "F")
    others = history(sink, person_of(other), "G")
    stored_answer(sink, person, calls["latest"], NEAR, 1)
    m = lambda o: api.metric("lupita_context_api_past_conversations_total", outcome=o)  # noqa: E731
    before = {o: m(o) for o in ("stored", "ok", "cached", "foreign")}
    ctx = _ctx(api, phone)
    assert [c["call_id"] for c in ctx["past_conversations"]] == [calls["like_30d"], calls["like_90d"], calls["unlike_40d"]]
    assert ctx["past_conversations"][0]["summary"].startswith("F: ") and ctx["degraded"] == {}
    assert {o: m(o) for o in before} == dict(before, stored=before["stored"] + 1)

    # someone else's conversation in the stored answer (it must never happen): dropped, counted
    from stream_processor.stages.understanding.core import past_item

    theirs = [past_item(h) for h in sink.similar_calls(NEAR, phone_number_hash=person_of(other), limit=2)]
    stored_answer(sink, person, calls["latest"], NEAR, 1, extra=theirs)
    ctx = _ctx(api, phone)
    assert not {c["call_id"] for c in ctx["past_conversations"]} & set(others.values())
    assert m("foreign") >= before["foreign"] + 2

    # a newer analysed call without its stored answer yet: Weaviate is asked (the stored one is stale)
    newest = analysed_call(sink, person, 0.1, FAR, "F: habló de la milpa.")
    ok = m("ok")
    after = _ctx(api, phone)
    assert [c["call_id"] for c in after["last_calls"]][0] == newest
    assert [c["call_id"] for c in after["past_conversations"]] == [calls["recent_3"], calls["unlike_40d"], calls["like_30d"]]
    assert m("ok") == ok + 1


def test_a_damaged_stored_answer_loses_only_its_damaged_items(api, sink):
    """A stored row whose items are not what the stream processor writes (not an object, a distance
    that is not a number, a time without its zone): the context still comes, without those items."""
    phone = random_phone()
    person = person_of(phone)
    calls = history(sink, person, "H")
    good = dict(call_id=calls["like_30d"], weaviate_id=None, phone_number_hash=person, summary="H: bien",
                topics=[], emotion="", distance=0.1,
                started_at=(datetime.now(timezone.utc) - timedelta(days=30)).isoformat())
    store_past(person, calls["latest"], [42, "x", dict(good, call_id=calls["like_90d"], distance="near"),
                                         dict(good, call_id=calls["unlike_40d"], started_at="2026-01-01T00:00:00"),
                                         good], datetime.now(timezone.utc) - timedelta(days=1))
    ctx = _ctx(api, phone)
    assert ctx["known"] and ctx["degraded"] == {}
    assert [c["call_id"] for c in ctx["past_conversations"]] == [calls["like_30d"]]
