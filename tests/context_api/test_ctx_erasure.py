"""Erasure (POST /v1/erasure) of a person on the real stack: Postgres rows, Weaviate objects in both
collections (collections of this test), S3 active copies deleted and the legal archive's locked
objects retained and queued with their real retention date; another person untouched; a second
erasure finds nothing left linked."""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from ctxkit import ContextApi, dsn, person_of, query, random_phone, weaviate_collections
from profkit import store_past

pytestmark = pytest.mark.stack

DIM = 4


@pytest.fixture(scope="module")
def collections(migrated):
    tag = uuid.uuid4().hex[:10]
    return f"TestErasureConv{tag}", f"TestErasureUtt{tag}"


@pytest.fixture(scope="module")
def sink(collections):
    with weaviate_collections(*collections, DIM) as sink:
        yield sink


@pytest.fixture(scope="module")
def api(collections, sink):
    conv, utt = collections
    with ContextApi("context-api-erasure", {"LUPITA_WEAVIATE_CONVERSATION_COLLECTION": conv,
                                            "LUPITA_WEAVIATE_UTTERANCE_COLLECTION": utt}) as server:
        yield server


def s3():
    import boto3
    from botocore.config import Config
    from lupita.config import CommonSettings

    s = CommonSettings()
    return s, boto3.client("s3", endpoint_url=s.s3_endpoint, region_name=s.s3_region,
                           aws_access_key_id=s.s3_access_key.get_secret_value(),
                           aws_secret_access_key=s.s3_secret_key.get_secret_value(),
                           config=Config(s3={"addressing_style": "path"}))


def seed_call(sink, person: str, *, recorded: bool) -> str:
    """A finished, analysed call of ``person``: rows, utterances, alert, consent, Weaviate objects,
    and (recorded) its three objects in the legal archive (locked by the bucket default) and active copies."""
    from stream_processor.contracts import Utterance
    from stream_processor.stores.weaviate import ConversationDoc

    call_id = f"test-erase-{secrets.token_hex(6)}"
    started = datetime.now(timezone.utc) - timedelta(days=1)
    folder = f"calls/{started:%Y/%m/%d}/{call_id}"
    keys = {n: f"{folder}/{n}" for n in ("audio-full.wav", "consent.json", "metadata.json")}
    if recorded:
        settings, client = s3()
        for name, key in keys.items():
            client.put_object(Bucket=settings.s3_legal_bucket, Key=key, Body=b"RIFF test " + name.encode())
            client.put_object(Bucket=settings.s3_active_bucket, Key=key, Body=b"copy")
    with psycopg.connect(dsn(), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO companion_calls (call_id, phone_encrypted, phone_number_hash, recording_status, s3_legal_key, "
            "s3_active_key, s3_metadata_key, started_at, summary, transcript, analysis, topics) VALUES "
            "(%s, %s, %s, %s, %s, %s, %s, %s, 'Habló de su cadera.', 'me caí en el baño', '{}', '[\"salud\"]')",
            (call_id, b"\x01" * 40, person, "recorded" if recorded else "skipped",
             keys["audio-full.wav"] if recorded else None, keys["audio-full.wav"] if recorded else None,
             keys["metadata.json"] if recorded else None, started))
        conn.execute("INSERT INTO call_utterances (call_id, leg, seq, start_s, end_s, text) VALUES "
                     "(%s, 'person', 0, 1.0, 2.0, 'me caí en el baño')", (call_id,))
        conn.execute("INSERT INTO call_alerts (call_id, cue_id, severity, evidence) VALUES (%s, 'fall', 'high', "
                     "'{\"text\": \"me caí\"}')", (call_id,))
        conn.execute("INSERT INTO consent_records (call_id, phone_number_hash, recording_consent, recorded_at) "
                     "VALUES (%s, %s, true, now())", (call_id, person))
        conn.execute("INSERT INTO vapi_calls (vapi_call_id, call_id, phone_number_hash) VALUES (%s, %s, %s)",
                     (f"vapi-{secrets.token_hex(6)}", call_id, person))
    sink.write_call(ConversationDoc(call_id=call_id, s3_uri=None, phone_number_hash=person, summary="cadera"),
                    [0.1, 0.2, 0.3, 0.4], [Utterance(call_id, "person", 0, 1.0, 2.0, "me caí en el baño")],
                    [[0.4, 0.3, 0.2, 0.1]])
    return call_id


def seed_person(api, sink, phone: str) -> dict:
    person = person_of(phone)
    calls = [seed_call(sink, person, recorded=True), seed_call(sink, person, recorded=False)]
    base = {"authorization": f"Bearer {api.token}"}
    assert api.client.post("/v1/facts", json={"phone": phone, "type": "health", "key": "medication",
                                              "value": "metformina"}, headers=base).status_code == 201
    when = (datetime.now(timezone.utc) + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    assert api.client.post("/v1/callbacks", json={"phone": phone, "when": when.isoformat(), "reason": "cadera"},
                           headers=base).status_code == 201
    return {"person": person, "calls": calls}


def weaviate_count(collection: str, **match) -> int:
    import weaviate
    from lupita.config import CommonSettings
    from weaviate.classes.query import Filter

    s = CommonSettings()
    (prop, value), = match.items()
    with weaviate.connect_to_custom(http_host=s.weaviate_host, http_port=s.weaviate_http_port, http_secure=False,
                                    grpc_host=s.weaviate_host, grpc_port=s.weaviate_grpc_port,
                                    grpc_secure=False) as client:
        res = client.collections.use(collection).query.fetch_objects(
            filters=Filter.by_property(prop).equal(value), limit=100)
        return len(res.objects)


def broker_retention_ms(topic: str) -> int:
    """The topic's retention.ms as the broker says it (kcat-free: kafka-python's admin client)."""
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
    from lupita.config import CommonSettings

    admin = KafkaAdminClient(bootstrap_servers=CommonSettings().kafka_bootstrap)
    try:
        got = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": None})],
                                     config_filter="all")
    finally:
        admin.close()
    return int(got["topic"][topic]["retention.ms"]["value"])


def past_of(person: str, call_id: str) -> None:
    """A stored past-conversations row of the person (as the stream processor keeps one)."""
    from stream_processor.stores.weaviate import conversation_uuid

    item = {"call_id": call_id, "weaviate_id": str(conversation_uuid(call_id)), "phone_number_hash": person,
            "summary": "habló de su familia", "topics": ["familia"], "emotion": "", "distance": 0.0,
            "started_at": datetime.now(timezone.utc).isoformat()}
    store_past(person, call_id, [item], datetime.now(timezone.utc))


def linked_rows(person: str, calls: list[str]) -> dict[str, int]:
    checks = {
        "user_facts": ("SELECT count(*) FROM user_facts WHERE phone_number_hash = %s", (person,)),
        "scheduled_callbacks": ("SELECT count(*) FROM scheduled_callbacks WHERE phone_number_hash = %s", (person,)),
        "companion_calls": ("SELECT count(*) FROM companion_calls WHERE phone_number_hash = %s", (person,)),
        "consent_records": ("SELECT count(*) FROM consent_records WHERE phone_number_hash = %s", (person,)),
        "vapi_calls": ("SELECT count(*) FROM vapi_calls WHERE phone_number_hash = %s OR call_id = ANY(%s)",
                       (person, calls)),
        "call_utterances": ("SELECT count(*) FROM call_utterances WHERE call_id = ANY(%s)", (calls,)),
        "call_alerts": ("SELECT count(*) FROM call_alerts WHERE call_id = ANY(%s)", (calls,)),
        "person_past_conversations": ("SELECT count(*) FROM person_past_conversations WHERE phone_number_hash = %s",
                                      (person,)),
    }
    return {name: query(sql, args)[0][0] for name, (sql, args) in checks.items()}


def test_erasure_removes_everything_but_the_locked_recording_and_says_so(api, sink, collections):
    conv, utt = collections
    a, b = random_phone(), random_phone()
    seeded_a, seeded_b = seed_person(api, sink, a), seed_person(api, sink, b)
    person, (recorded, unrecorded) = seeded_a["person"], seeded_a["calls"]
    for seeded in (seeded_a, seeded_b):  # as the stream processor stores them with a call's analysis
        past_of(seeded["person"], seeded["calls"][0])
    assert all(linked_rows(person, seeded_a["calls"]).values())
    assert weaviate_count(conv, phone_number_hash=person) == 2 and weaviate_count(utt, phone_number_hash=person) == 2
    # the profile the database keeps of the person (migration 0008) holds their calls, fact and alerts
    profile = query("SELECT jsonb_array_length(last_calls), jsonb_array_length(facts), jsonb_array_length(alerts) "
                    "FROM person_profiles WHERE phone_number_hash = %s", (person,))
    assert profile == [(2, 1, 2)]

    from lupita import topics
    from lupita.config import CommonSettings

    common = CommonSettings()
    topics.ensure_topics(common, topics.TELEPHONY_GATEWAY)  # as a gateway with the Chime path creates them
    headers = {"authorization": f"Bearer {api.token}"}
    assert api.client.post("/v1/erasure", json={"phone": a}, headers=headers).status_code == 422  # no confirm
    r = api.client.post("/v1/erasure", json={"phone": a, "confirm": True}, headers=headers, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["person_id"] == person
    removed = out["removed"]
    assert removed["weaviate"] == {conv: 2, utt: 2}
    assert removed["s3_objects"] == 3  # the active copies
    assert (removed["user_facts"], removed["user_fact_observations"], removed["scheduled_callbacks"]) == (1, 1, 1)
    assert (removed["call_utterances"], removed["call_alerts"], removed["vapi_calls"]) == (2, 2, 2)
    assert (removed["companion_calls"], removed["companion_calls_reduced_to_stub"], removed["phone_encrypted"]) == \
        (1, 1, 2)
    assert removed["consent_records"] == 1  # the recorded call's consent stays with its recording
    assert removed["person_profiles"] == 1 and removed["person_past_conversations"] == 1
    # Kafka: the topics that carry the person's voice, words or (encrypted) number, with the
    # retention the broker has
    by_topic = {k["topic"]: k for k in out["kafka"]}
    for topic in ("transcripts", "call.analysis", "alerts", "audio.chunks", "speech.segments", *topics.TELEPHONY_GATEWAY):
        item = by_topic[common.topic(topic)]  # the session's topics exist: the broker is asked and answers
        assert item["carries"] and item["retention_source"]
        assert item["cleanup_policy"] == topics.CLEANUP_POLICY.get(topic, "delete"), topic
        assert item["retention_ms"] == broker_retention_ms(item["topic"]) > 0
        until = datetime.fromisoformat(item["until"])
        assert until == datetime.fromisoformat(out["erased_at"]) + timedelta(milliseconds=item["retention_ms"])
    assert len(by_topic) == 9  # audio, segments, transcripts, analysis, alerts, lifecycle, the gateway's three
    # retained: the three locked objects of the recorded call, with the date S3 reports
    settings, client = s3()
    retained = sorted(out["retained"], key=lambda o: o["key"])
    assert [o["key"].rsplit("/", 1)[1] for o in retained] == ["audio-full.wav", "consent.json", "metadata.json"]
    for o in retained:
        assert o["call_id"] == recorded and o["bucket"] == settings.s3_legal_bucket and o["lock_mode"] == "COMPLIANCE"
        head = client.head_object(Bucket=o["bucket"], Key=o["key"], VersionId=o["version_id"])
        assert datetime.fromisoformat(o["until"]) == head["ObjectLockRetainUntilDate"]
        assert datetime.fromisoformat(o["until"]) > datetime.now(timezone.utc) + timedelta(days=300)
        assert "COMPLIANCE" in o["why"]
    queued = query("SELECT count(*) FROM erasure_retained_objects WHERE erasure_id = %s AND deleted_at IS NULL",
                   (out["erasure_id"],))
    assert queued == [(3,)]

    # nothing linked to the person is left anywhere, the profile neither
    assert linked_rows(person, seeded_a["calls"]) == dict.fromkeys(linked_rows(person, []), 0)
    assert query("SELECT count(*) FROM person_profiles WHERE phone_number_hash = %s", (person,)) == [(0,)]
    assert query("SELECT count(*) FROM person_profiles WHERE phone_number_hash = %s", (seeded_b["person"],)) == [(1,)]
    assert query("SELECT count(*) FROM person_past_conversations WHERE phone_number_hash = %s",
                 (seeded_b["person"],)) == [(1,)]
    assert weaviate_count(conv, phone_number_hash=person) == 0 and weaviate_count(utt, phone_number_hash=person) == 0
    stub = query("SELECT phone_encrypted, phone_number_hash, summary, transcript, analysis, s3_legal_key "
                 "FROM companion_calls WHERE call_id = %s", (recorded,))
    assert stub and stub[0][:5] == (None, None, None, None, None) and stub[0][5].endswith("audio-full.wav")
    assert query("SELECT count(*) FROM companion_calls WHERE call_id = %s", (unrecorded,)) == [(0,)]
    for o in retained:
        assert client.list_objects_v2(Bucket=settings.s3_active_bucket, Prefix=o["key"]).get("KeyCount") == 0
        assert client.list_objects_v2(Bucket=settings.s3_legal_bucket, Prefix=o["key"]).get("KeyCount") == 1
    # the other person is untouched
    assert all(linked_rows(seeded_b["person"], seeded_b["calls"]).values())
    assert weaviate_count(conv, phone_number_hash=seeded_b["person"]) == 2

    # asked again: nothing is linked any more
    again = api.client.post("/v1/erasure", json={"person_id": person, "confirm": True}, headers=headers,
                            timeout=120).json()
    assert again["retained"] == [] and again["removed"]["user_facts"] == 0 and again["removed"]["s3_objects"] == 0
    assert api.client.post("/v1/facts/list", json={"phone": a}, headers=headers).json()["facts"] == []


def test_the_sweeper_deletes_a_retained_recording_once_its_retention_ends(api, sink):
    """A recording whose COMPLIANCE retention ends in seconds: retained by the erasure, refused by
    S3 while still locked (the sweep leaves it for later), deleted by the sweep once due, and then
    the call stub goes too."""
    import time

    from context_api.erasure import Eraser
    from context_api.settings import ContextApiSettings
    from context_api.store import Pool

    phone = random_phone()
    person = person_of(phone)
    call_id = seed_call(sink, person, recorded=False)
    settings, client = s3()
    folder = f"calls/{datetime.now(timezone.utc):%Y/%m/%d}/{call_id}"
    until = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=4)
    for name in ("audio-full.wav", "metadata.json"):
        client.put_object(Bucket=settings.s3_legal_bucket, Key=f"{folder}/{name}", Body=b"short-lived",
                          ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=until)
    query_key = f"{folder}/audio-full.wav"
    with psycopg.connect(dsn(), autocommit=True) as conn:
        conn.execute("UPDATE companion_calls SET s3_legal_key = %s, recording_status = 'recorded' WHERE call_id = %s",
                     (query_key, call_id))
    headers = {"authorization": f"Bearer {api.token}"}
    out = api.client.post("/v1/erasure", json={"phone": phone, "confirm": True}, headers=headers, timeout=120).json()
    assert sorted(o["key"] for o in out["retained"]) == [f"{folder}/audio-full.wav", f"{folder}/metadata.json"]
    assert {datetime.fromisoformat(o["until"]) for o in out["retained"]} == {until}

    eraser = Eraser(ContextApiSettings(context_api_assistant_id="t", context_api_bearer_tokens="t"))
    pool = Pool(dsn(), 1, 5000)
    try:
        early = eraser.sweep(pool, 10, now=until + timedelta(seconds=1))  # our clock says due; S3's lock says no
        assert early["deleted"] == 0 and early["failed"] >= 2
        deadline = time.monotonic() + 30
        while datetime.now(timezone.utc) <= until + timedelta(seconds=1) and time.monotonic() < deadline:
            time.sleep(0.2)  # polling the clock until the retention has really ended
        swept = eraser.sweep(pool, 10)
    finally:
        pool.close()
    assert swept["deleted"] >= 2 and swept["calls_closed"] >= 1
    versions = client.list_object_versions(Bucket=settings.s3_legal_bucket, Prefix=folder + "/")
    assert versions.get("Versions", []) == []
    assert query("SELECT count(*) FROM companion_calls WHERE call_id = %s", (call_id,)) == [(0,)]
    assert query("SELECT count(*) FROM erasure_retained_objects WHERE call_id = %s AND deleted_at IS NULL",
                 (call_id,)) == [(0,)]
