"""Context API benchmark: getUserContext over HTTP at fixed request rates, against a fan-out baseline.

Seeds a Postgres schema of its own (migrated from 0001, dropped at the end) with ``--people``
people × ``--facts`` facts (current, protected medications among them, one observation each; every
10th person with an open question) × ``--calls`` analysed calls, an alert for every 5th person and a
pending callback each; and a Weaviate collection of its own with a vector per call for the first
``--weaviate-people`` people. Then, for each rate in ``--rates``, it drives ``getUserContext`` tool
calls (VAPI's ``tool-calls`` message, a random seeded caller each) from this process, open loop:
request *i* is due at ``t0 + i / rate`` and its latency runs from that due time to the answer, so a
server that falls behind pays for the queue (no coordinated omission). Two servers, same requests,
same run:

- ``context-api``: a real ``lupita context-api`` child (its indexed reads with limits); with
  ``--workers 1,2`` also ``context-api x2``, the same with two worker processes;
- ``fan-out``: the baseline, a child of this script answering the same message by reading the base
  tables whole (every fact row and its observations, every call, every alert, every callback of the
  person) and a Weaviate near-vector query filtered to the person, then building the same context.

and a third, ``context-api fanout``: the same service with ``LUPITA_CONTEXT_API_CONTEXT_SOURCE=fanout``,
which computes the person's profile from the base tables per request (the database functions the
profile triggers use) instead of reading the ``person_profiles`` row — the same answer, so the pair
measures exactly what the profile saves. With ``--past`` > 0 (default 3) the seed also stores, for
every person with Weaviate objects, what the stream processor stores at each analysed call (the
person's calls nearest to the latest one, ``person_past_conversations``; timed per person as
``stored_past``): ``context-api`` reads them with the profile, and a fourth server,
``context-api weaviate-past`` (``LUPITA_CONTEXT_API_PAST_SOURCE=weaviate``), asks Weaviate per
request (``nearObject`` on the latest call, the person's objects only) as ``context-api fanout`` does.
The seed fills the tables with the profile triggers off and then builds every profile in one pass
(as migration 0008's backfill does), timed as ``profile_backfill_s``.

Requests are drawn from the people that have Weaviate objects, so the baseline does its full work.
Goal (issue #8): p99 ≤ 25 ms at 300 rps on the 2-core machine; the summary gives the highest rate
tested with p99 ≤ 50 ms and ≤ 25 ms. The machine's cores are shared by the servers, Postgres and the
driver: ``--driver`` sends each level from this process (``aiohttp``) and/or from vegeta (Go,
``go install``-ed into the download cache on first use), and every level reports the CPU time per
request of the server's process tree, of Postgres and of the whole machine, and the driver's own.

The dispatcher phase (first; ``--dispatcher N``, 0 = skip): ``callbacks.due`` published per second by
``context_api.callbacks_due`` (exactly once: lock, two short Postgres commits around one Kafka
transaction) against the at-least-once round it replaced (one Postgres transaction, idempotent
producer, no Kafka transaction; ``PlainDispatcher`` here), same libraries, same run, alternating,
in a schema and topic prefix of their own: N due callbacks drained round after round per batch size.

    .venv/bin/python bench/context.py                               # 10,000 people; 100/300/1000 rps x 10 s
    .venv/bin/python bench/context.py --dispatcher-only             # the dispatcher phase alone
    .venv/bin/python bench/context.py --people 2000 --seconds 5     # quicker
    .venv/bin/python bench/context.py --json                        # also bench/results/context-*.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
sys.path[:0] = [str(ROOT / "services"), str(ROOT / "tests" / "kit")]

DIM = 64
TOKEN = "bench-" + secrets.token_urlsafe(16)


# --------------------------------------------------------------------------- seed


def phones(n: int) -> list[str]:
    """n distinct valid Mexico City mobile numbers (made up, deterministic)."""
    import phonenumbers

    out, i = [], 0
    while len(out) < n:
        number = f"+5255{20000000 + i * 7:08d}"
        i += 1
        if phonenumbers.is_valid_number(phonenumbers.parse(number)):
            out.append(number)
    return out


SEED_SQL = """
INSERT INTO companion_calls (call_id, phone_number_hash, recording_status, started_at, ended_at, summary,
                             emotion_primary, topics, behavioral_codes_triggered, processed_at)
SELECT 'bench-' || p.i || '-' || c, p.h, 'recorded',
       now() - make_interval(days => c, hours => p.i % 24), now() - make_interval(days => c, hours => p.i % 24) + interval '6 minutes',
       'Llamada ' || c || ': habló de su familia, de cómo durmió y de su medicina; se le oyó tranquila.',
       (ARRAY['positive', 'neutral', 'negative'])[1 + (p.i + c) % 3], '["familia", "salud"]', '["echo_open_question"]', now()
FROM bench_people p, generate_series(1, :CALLS:) c;

INSERT INTO user_facts (phone_number_hash, fact_type, fact_key, fact_value, confidence, source, source_call_id,
                        first_call_id, valid_from, observed_at, status, is_active, multi_valued, protected)
SELECT p.h, CASE WHEN f <= 4 THEN 'health' ELSE 'family' END,
       CASE WHEN f <= 4 THEN 'medication.med_' || f ELSE 'child_name.hijo_' || f END,
       CASE WHEN f <= 4 THEN 'medicina ' || f || ' de 850 mg' ELSE 'Hijo número ' || f END,
       0.5 + (f % 5) / 10.0, 'analysis', 'bench-' || p.i || '-1', 'bench-' || p.i || '-1',
       now() - interval '60 days', now() - make_interval(days => f), 'current', true, true, f <= 4
FROM bench_people p, generate_series(1, :FACTS:) f;

INSERT INTO user_facts (phone_number_hash, fact_type, fact_key, fact_value, confidence, source, source_call_id,
                        first_call_id, valid_from, observed_at, status, is_active, multi_valued, protected, proposal,
                        conflicts_with)
SELECT f.phone_number_hash, f.fact_type, f.fact_key, f.fact_value, 0.6, 'analysis', f.source_call_id, f.source_call_id,
       now() - interval '1 day', now() - interval '1 day', 'to_confirm', false, true, true, 'retraction', f.id
FROM user_facts f JOIN bench_people p ON p.h = f.phone_number_hash
WHERE p.i % 10 = 0 AND f.fact_key = 'medication.med_1';

INSERT INTO user_fact_observations (fact_id, observation, source, call_id, observed_at, confidence)
SELECT id, 'analysis:' || source_call_id, 'analysis', source_call_id, observed_at, confidence FROM user_facts;

INSERT INTO call_alerts (call_id, cue_id, severity, evidence, raised_at)
SELECT 'bench-' || p.i || '-1', 'fall', 'high', '{"text": "me caí en el baño"}', now() - interval '2 days'
FROM bench_people p WHERE p.i % 5 = 0;

INSERT INTO scheduled_callbacks (phone_number_hash, scheduled_for, reason)
SELECT h, date_trunc('minute', now()) + interval '1 day' + make_interval(mins => i % 600), 'seguimiento'
FROM bench_people;
"""


def seed_postgres(dsn: str, hashes: list[str], args: argparse.Namespace) -> float:
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_people (i int PRIMARY KEY, h text NOT NULL)")
        with conn.cursor().copy("COPY bench_people (i, h) FROM STDIN") as copy:
            for i, h in enumerate(hashes):
                copy.write_row((i, h))
        with conn.transaction():
            # bulk rows without the profile triggers (one refresh per person afterwards, as the backfill)
            for table in PROFILE_TABLES:
                conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
            conn.execute(SEED_SQL.replace(":CALLS:", str(int(args.calls))).replace(":FACTS:", str(int(args.facts))))
            for table in PROFILE_TABLES:
                conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
        conn.execute("ANALYZE")
    return time.perf_counter() - started


PROFILE_TABLES = ("companion_calls", "user_facts", "call_alerts")


def link_weaviate_and_build_profiles(dsn: str, hashes: list[str], calls: int) -> float:
    """Name each seeded call's Weaviate object in its row (as the sink does), then build every
    person's profile (``lupita_profile_refresh``, migration 0008's backfill); returns the seconds
    the profiles took."""
    import psycopg
    from weaviate.util import generate_uuid5

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE bench_wv (call_id text PRIMARY KEY, id uuid NOT NULL)")
        with conn.cursor().copy("COPY bench_wv (call_id, id) FROM STDIN") as copy:
            for i in range(len(hashes)):
                for c in range(1, calls + 1):
                    copy.write_row((f"bench-{i}-{c}", generate_uuid5(f"bench-{i}-{c}")))
        with conn.transaction():
            for table in PROFILE_TABLES:
                conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
            conn.execute("UPDATE companion_calls c SET weaviate_id = w.id FROM bench_wv w WHERE w.call_id = c.call_id")
            for table in PROFILE_TABLES:
                conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
        started = time.perf_counter()
        conn.execute("SELECT count(lupita_profile_refresh(h, 'all')) FROM bench_people")
        conn.execute("ANALYZE person_profiles")
    return time.perf_counter() - started


def store_past_conversations(dsn: str, collection: str, hashes: list[str], limit: int = 16) -> dict:
    """What the stream processor does at each call's analysis: the person's calls nearest to their
    latest one (Weaviate, filtered on the person's hash) stored in ``person_past_conversations``
    (its own item shape and SQL), for every seeded person with Weaviate objects; returns the time
    per person (query + write), the cost moved from each request to each analysed call."""
    import psycopg
    from psycopg.types.json import Jsonb
    from weaviate.classes.query import Filter, MetadataQuery
    from weaviate.util import generate_uuid5

    from stream_processor.stages.understanding.core import past_item
    from stream_processor.stores.postgres import _UPSERT_PAST
    from stream_processor.stores.weaviate import SimilarCall

    took = []
    with weaviate_client() as client, psycopg.connect(dsn, autocommit=True) as conn:
        coll = client.collections.use(collection)
        for i, h in enumerate(hashes):
            t = time.perf_counter()
            anchor = generate_uuid5(f"bench-{i}-1")  # call 1 is each person's latest
            res = coll.query.near_object(near_object=anchor, limit=limit, return_metadata=MetadataQuery(distance=True),
                                         filters=Filter.by_property("phone_number_hash").equal(h))
            items = [past_item(SimilarCall(str(o.properties.get("call_id")), o.uuid, o.metadata.distance,
                                           dict(o.properties))) for o in res.objects]
            started = next(it["started_at"] for it in items if it["call_id"] == f"bench-{i}-1")
            conn.execute(_UPSERT_PAST, {"person": h, "call_id": f"bench-{i}-1", "weaviate_id": anchor,
                                        "started_at": started, "items": Jsonb(items)})
            took.append(time.perf_counter() - t)
    took.sort()
    return {"people": len(took), "seconds": round(sum(took), 1), "p50_ms": round(took[len(took) // 2] * 1000, 2),
            "p99_ms": round(took[int(len(took) * 0.99)] * 1000, 2)}


def weaviate_client():
    import weaviate
    from lupita.config import CommonSettings

    s = CommonSettings()
    return weaviate.connect_to_custom(http_host=s.weaviate_host, http_port=s.weaviate_http_port, http_secure=False,
                                      grpc_host=s.weaviate_host, grpc_port=s.weaviate_grpc_port, grpc_secure=False)


def seed_weaviate(collection: str, hashes: list[str], calls: int) -> float:
    from datetime import datetime, timedelta, timezone

    from weaviate.classes.config import Configure, DataType, Property, Tokenization
    from weaviate.classes.data import DataObject
    from weaviate.util import generate_uuid5

    started = time.perf_counter()
    rnd = random.Random(7)
    now = datetime.now(timezone.utc)
    with weaviate_client() as client:
        coll = client.collections.create(
            collection, vector_config=Configure.Vectors.self_provided(),
            properties=[Property(name="call_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
                        Property(name="phone_number_hash", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
                        Property(name="topics", data_type=DataType.TEXT_ARRAY, tokenization=Tokenization.FIELD),
                        Property(name="emotion", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
                        Property(name="started_at", data_type=DataType.DATE),
                        Property(name="summary", data_type=DataType.TEXT)])
        batch: list = []
        for i, h in enumerate(hashes):
            for c in range(1, calls + 1):
                batch.append(DataObject(properties={"call_id": f"bench-{i}-{c}", "phone_number_hash": h,
                                                    "topics": ["familia", "salud"], "emotion": "neutral",
                                                    "started_at": now - timedelta(days=c, hours=i % 24),
                                                    "summary": f"Llamada {c}: familia y salud."},
                                        uuid=generate_uuid5(f"bench-{i}-{c}"),
                                        vector=[rnd.uniform(-1, 1) for _ in range(DIM)]))
                if len(batch) == 1000:
                    res = coll.data.insert_many(batch)
                    if res.has_errors:
                        raise RuntimeError(f"weaviate insert failed: {list(res.errors.values())[:1]}")
                    batch = []
        if batch:
            coll.data.insert_many(batch)
    return time.perf_counter() - started


def _function_sql(migration: str, name: str) -> str:
    """``CREATE OR REPLACE`` text of function ``name`` as ``migration`` (a file of lupita's) defines it."""
    from lupita.db import MIGRATIONS_DIR

    text = (MIGRATIONS_DIR / migration).read_text()
    at = text.index(f"FUNCTION {name}(")
    end = text.index("$$;", text.index("AS $$", at) + 5) + 3
    return "CREATE OR REPLACE " + text[at:end]


def write_cost(dsn: str, hashes: list[str], n: int) -> dict:
    """What the profile costs a writer: ``lupita.facts.record`` of a new value of a single-valued key
    (the superseding path: the old row closed, a new row and its observation, then the profile's
    facts section) for random people, in alternating blocks of 25 (same people, same run):
    ``triggers_on`` (the profile as migrated: refreshed once at commit, migration 0010),
    ``per_statement`` (0008's trigger function put back in this bench schema: a refresh after every
    statement) and ``triggers_off``. Milliseconds per write."""
    from datetime import datetime, timezone

    import psycopg
    from lupita import facts

    rnd = random.Random(5)
    states = ("triggers_on", "per_statement", "triggers_off")
    lat: dict[str, list[float]] = {s: [] for s in states}
    once_sql = _function_sql("0010_profile_refresh_once.sql", "lupita_profile_on_facts")
    per_statement_sql = _function_sql("0008_person_profiles.sql", "lupita_profile_on_facts")
    batch: dict[str, list[float]] = {s: [] for s in states}  # a call's facts in one transaction

    def observation(key: str) -> facts.Observation:
        return facts.Observation(fact_type="routine", key=key,
                                 value=f"{rnd.randrange(5, 10)}:{rnd.randrange(60):02d}", confidence=0.7,
                                 observed_at=datetime.now(timezone.utc), source="agent")

    with psycopg.connect(dsn, autocommit=True) as conn:
        for block in range(3 * max(1, n // 25)):
            state = states[block % 3]
            conn.execute(f"ALTER TABLE user_facts {'DISABLE' if state == 'triggers_off' else 'ENABLE'} TRIGGER USER")
            conn.execute(per_statement_sql if state == "per_statement" else once_sql)
            for _ in range(25):
                obs = observation("bench_wake_up_time")
                t = time.perf_counter()
                facts.record(conn, rnd.choice(hashes), obs)
                lat[state].append(time.perf_counter() - t)
            for _ in range(5):  # as the analysis sink writes a call's facts: 8 superseding writes, one commit
                person = rnd.choice(hashes)
                t = time.perf_counter()
                with conn.transaction():
                    for k in range(8):
                        facts.record(conn, person, observation(f"bench_key_{k}"))
                batch[state].append(time.perf_counter() - t)
        conn.execute(once_sql)
        conn.execute("ALTER TABLE user_facts ENABLE TRIGGER USER")
        stale = conn.execute("SELECT count(*) FROM bench_people p JOIN person_profiles pp ON pp.phone_number_hash = p.h "
                             "WHERE pp.facts IS DISTINCT FROM lupita_profile_facts(p.h)").fetchone()[0]
    out = {}
    for state, xs in lat.items():
        xs.sort()
        out[state] = {"writes": len(xs), "p50_ms": round(xs[len(xs) // 2] * 1000, 2),
                      "p99_ms": round(xs[min(len(xs) - 1, int(0.99 * len(xs)))] * 1000, 2)}
    for state, xs in batch.items():
        xs.sort()
        out[f"{state}_8_facts_one_transaction"] = {"transactions": len(xs), "p50_ms": round(xs[len(xs) // 2] * 1000, 2),
                                                   "p99_ms": round(xs[min(len(xs) - 1, int(0.99 * len(xs)))] * 1000, 2)}
    # the writes made with the triggers off left those people's profiles behind: said, then rebuilt
    out["profiles_behind_after_off_writes"] = stale
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT count(lupita_profile_refresh(h, 'facts')) FROM bench_people")
    return out


# --------------------------------------------------------------------------- the fan-out baseline server


def serve_fanout(port: int, dsn: str, collection: str) -> None:
    """The baseline: every request reads the person's base tables whole and asks Weaviate."""
    from datetime import datetime, timezone

    import uvicorn
    from psycopg.rows import dict_row
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from weaviate.classes.query import Filter

    from context_api.context import build
    from context_api.phones import person_hash
    from context_api.store import Pool, Snapshot
    from context_api.settings import ContextApiSettings

    settings = ContextApiSettings()
    pool = Pool(dsn, settings.context_api_db_pool_size, settings.context_api_db_timeout_ms)
    client = weaviate_client()
    coll = client.collections.use(collection)
    query_vector = [0.1] * DIM

    def work(person: str) -> str:
        with pool.connection(2.0) as conn:
            cur = conn.cursor(row_factory=dict_row)
            facts = cur.execute("SELECT * FROM user_facts WHERE phone_number_hash = %s", (person,)).fetchall()
            cur.execute("SELECT o.* FROM user_fact_observations o JOIN user_facts f ON f.id = o.fact_id "
                        "WHERE f.phone_number_hash = %s", (person,)).fetchall()
            calls = cur.execute("SELECT * FROM companion_calls WHERE phone_number_hash = %s", (person,)).fetchall()
            alerts = cur.execute(
                "SELECT a.call_id, a.cue_id, a.severity, a.evidence ->> 'text' AS text, a.raised_at FROM call_alerts a "
                "JOIN companion_calls c ON c.call_id = a.call_id WHERE c.phone_number_hash = %s", (person,)).fetchall()
            callbacks = cur.execute("SELECT * FROM scheduled_callbacks WHERE phone_number_hash = %s",
                                    (person,)).fetchall()
        similar = coll.query.near_vector(query_vector, limit=5,
                                         filters=Filter.by_property("phone_number_hash").equal(person)).objects
        now = datetime.now(timezone.utc)
        by_id = {f["id"]: f for f in facts}
        live = [dict(f, current_value=by_id.get(f["conflicts_with"], {}).get("fact_value"))
                for f in facts if f["status"] in ("current", "to_confirm")]
        live.sort(key=lambda f: (not f["protected"], -f["confidence"], -f["observed_at"].timestamp()))
        calls.sort(key=lambda c: c["started_at"], reverse=True)
        pending = sorted((c for c in callbacks if c["status"] == "pending" and c["scheduled_for"] >= now),
                         key=lambda c: c["scheduled_for"])
        snap = Snapshot(live[: settings.context_api_max_facts], calls[: settings.context_api_recent_calls],
                        sorted(alerts, key=lambda a: a["raised_at"], reverse=True)[:10], pending[:5])
        ctx, brief = build(snap, now, settings.tz, settings.context_api_brief_max_chars)
        ctx["similar_calls"] = [o.properties["call_id"] for o in similar]
        return json.dumps({"brief": brief, "context": ctx}, ensure_ascii=False, separators=(",", ":"), default=str)

    async def webhook(request):  # a Starlette request
        message = (await request.json())["message"]
        person = person_hash(message["call"]["customer"]["number"], settings.hmac_key_bytes)
        result = await asyncio.to_thread(work, person)
        call = message["toolCallList"][0]
        return JSONResponse({"results": [{"toolCallId": call["id"], "name": "getUserContext", "result": result}]})

    app = Starlette(routes=[Route("/vapi/webhook", webhook, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --------------------------------------------------------------------------- the callbacks dispatcher


class PlainDispatcher:
    """The baseline of the dispatcher phase: the at-least-once round #8 had before Kafka transactions
    (one Postgres transaction: claim ``FOR UPDATE SKIP LOCKED``, publish with an idempotent producer,
    wait for the acks, mark, commit), on the same libraries as ``context_api.callbacks_due``."""

    CLAIM = ("SELECT id, phone_number_hash, scheduled_for, reason, call_id FROM scheduled_callbacks "
             "WHERE status = 'pending' AND scheduled_for <= now() ORDER BY scheduled_for, id LIMIT %s "
             "FOR UPDATE SKIP LOCKED")
    MARK = ("UPDATE scheduled_callbacks SET status = 'dispatched', published_at = %s, kafka_partition = %s, "
            "kafka_offset = %s, updated_at = now() WHERE id = %s AND status = 'pending'")
    BACKLOG = "SELECT count(*) FROM scheduled_callbacks WHERE status = 'pending' AND scheduled_for <= now()"

    def __init__(self, settings) -> None:
        from lupita.topics import CALLBACKS_DUE

        self.settings = settings
        self.topic = settings.topic(CALLBACKS_DUE)
        self.conn = self.producer = None

    async def run_once(self) -> int:
        from datetime import datetime, timezone

        import psycopg
        from aiokafka import AIOKafkaProducer

        from context_api.callbacks_due import record

        if self.conn is None:
            self.conn = await psycopg.AsyncConnection.connect(self.settings.postgres_dsn.get_secret_value(),
                                                              autocommit=True)
            self.producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, acks="all",
                                             enable_idempotence=True, linger_ms=0)
            await self.producer.start()
        async with self.conn.transaction():
            rows = await (await self.conn.execute(self.CLAIM, (self.settings.context_api_callbacks_batch_size,))).fetchall()
            at = datetime.now(timezone.utc)
            futures = [await self.producer.send(self.topic, key=str(r[0]).encode(), value=record(r, at)) for r in rows]
            for r, m in zip(rows, await asyncio.gather(*futures)):
                await self.conn.execute(self.MARK, (at, m.partition, m.offset, r[0]))
        await self.conn.execute(self.BACKLOG)  # as the old round did (the metric's gauge)
        return len(rows)

    async def aclose(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
        if self.conn is not None:
            await self.conn.close()


def dispatcher_phase(base: str, n: int, batches: list[int], repeats: int) -> list[dict]:
    """Callbacks dispatched per second, exactly-once (``context_api.callbacks_due``: advisory lock,
    two Postgres commits around one Kafka transaction) against the at-least-once baseline, in a
    schema and topic prefix of their own: ``n`` due callbacks inserted, then rounds back to back
    until none is left, each mode ``repeats`` times, alternating, per batch size."""
    import psycopg
    from kafka.admin import KafkaAdminClient

    from context_api.callbacks_due import Dispatcher
    from context_api.settings import ContextApiSettings
    from lupita.db import migrate
    from lupita.topics import CALLBACKS_DUE, ensure_topics

    tag = uuid.uuid4().hex[:8]
    schema, prefix = f"bench_cb_{tag}", f"bench-cb-{tag}."
    dsn = psycopg.conninfo.make_conninfo(base, options=f"-c search_path={schema}")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    out: list[dict] = []
    try:
        migrate(dsn)
        for batch in batches:
            settings = ContextApiSettings(postgres_dsn=dsn, topic_prefix=prefix, context_api_assistant_id="bench",
                                          context_api_bearer_tokens=TOKEN, context_api_callbacks_batch_size=batch)
            ensure_topics(settings, (CALLBACKS_DUE,))
            for rep in range(repeats):
                for mode in ("exactly-once", "at-least-once") if rep % 2 == 0 else ("at-least-once", "exactly-once"):
                    with psycopg.connect(dsn, autocommit=True) as conn:
                        conn.execute(
                            "INSERT INTO scheduled_callbacks (phone_number_hash, call_id, scheduled_for, reason) "
                            "SELECT encode(sha256(gen_random_uuid()::text::bytea), 'hex'), 'bench-' || g, "
                            "now() - make_interval(secs => g), 'preguntar cómo sigue' FROM generate_series(1, %s) g",
                            (n,))
                    d = Dispatcher(settings) if mode == "exactly-once" else PlainDispatcher(settings)

                    async def drain() -> tuple[float, int]:
                        await d.run_once()  # connect, lock, producer start (and topic check) outside the timing
                        t0, total = time.perf_counter(), 0
                        while (k := await d.run_once()) > 0:
                            total += k
                        took = time.perf_counter() - t0
                        await d.aclose()
                        return took, total

                    took, total = asyncio.run(drain())
                    with psycopg.connect(dsn, autocommit=True) as conn:
                        left = conn.execute("SELECT count(*) FROM scheduled_callbacks WHERE status <> 'dispatched'"
                                            ).fetchone()[0]
                    level = {"mode": mode, "batch": batch, "callbacks": total, "seconds": round(took, 3),
                             "per_second": round(total / took, 1) if took else None, "not_dispatched": left,
                             "load_average_1m": float(Path("/proc/loadavg").read_text().split()[0])}
                    out.append(level)
                    print(f"dispatcher {mode:13s} batch {batch:3d}: {total} callbacks in {level['seconds']} s = "
                          f"{level['per_second']}/s  (not dispatched {left})  load {level['load_average_1m']}",
                          flush=True)
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        try:
            admin = KafkaAdminClient(bootstrap_servers=ContextApiSettings(
                context_api_assistant_id="bench", context_api_bearer_tokens=TOKEN).kafka_bootstrap)
            admin.delete_topics([prefix + CALLBACKS_DUE])
            admin.close()
        except Exception as exc:  # noqa: BLE001
            print(f"could not delete the topic {prefix}{CALLBACKS_DUE}: {type(exc).__name__}")
    return out


# --------------------------------------------------------------------------- driver


def message(phone: str) -> bytes:
    return json.dumps({"message": {
        "type": "tool-calls", "call": {"id": f"vapi-{secrets.token_hex(6)}", "customer": {"number": phone}},
        "toolCallList": [{"id": f"call_{secrets.token_hex(4)}", "type": "function",
                          "function": {"name": "getUserContext", "arguments": "{}"}}]}}).encode()


async def drive(url: str, callers: list[str], rate: float, seconds: float, warmup: float) -> dict:
    import aiohttp

    headers = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    lat: list[float] = []
    errors = {"http": 0, "tool_error": 0, "exception": 0}
    rnd = random.Random(11)

    async def one(session, due: float, measured: bool) -> None:
        try:
            async with session.post(url, data=message(rnd.choice(callers)), headers=headers) as r:
                body = await r.read()
                # an answer for a KNOWN person (the result is JSON inside the JSON: its quotes escaped)
                ok = r.status == 200 and b'\\"known\\":true' in body
                if not ok and os.environ.get("BENCH_DEBUG"):
                    print(body[:400], flush=True)
                if measured:
                    if r.status != 200:
                        errors["http"] += 1
                    elif not ok:
                        errors["tool_error"] += 1
                    else:
                        lat.append(time.perf_counter() - due)
        except Exception:  # noqa: BLE001
            if measured:
                errors["exception"] += 1

    cpu0 = time.process_time()
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        tasks = []
        total = int((warmup + seconds) * rate)
        t0 = time.perf_counter() + 0.05
        for i in range(total):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, due, i >= warmup * rate)))
        sent_window = time.perf_counter() - (t0 + warmup)
        await asyncio.gather(*tasks)
    driver_cpu = time.process_time() - cpu0
    return {"rate": rate, "sent": int(seconds * rate), "errors": errors,
            "achieved_rps": round(int(seconds * rate) / max(sent_window, 1e-9), 1), **latency_summary(lat),
            "driver": "aiohttp", "driver_cpu_s": round(driver_cpu, 2)}


def latency_summary(lat: list[float]) -> dict:
    """``ok`` (answers counted) and p50/p95/p99/max in ms of latencies in seconds."""
    lat = sorted(lat)
    n = len(lat)

    def pct(p: float) -> float | None:
        return round(lat[min(n - 1, int(p * n))] * 1000, 2) if n else None

    return {"ok": n, "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99), "max_ms": pct(1.0)}


DRIVERS = ("aiohttp", "vegeta")


def parse_drivers(text: str) -> list[str]:
    """``--driver``: a comma-separated, non-empty subset of :data:`DRIVERS`, in the order given."""
    drivers = [d.strip() for d in text.split(",") if d.strip()]
    if not drivers:
        raise SystemExit(f"--driver {text!r}: name at least one of {', '.join(DRIVERS)}")
    if unknown := [d for d in drivers if d not in DRIVERS]:
        raise SystemExit(f"--driver {text!r}: unknown {', '.join(unknown)} (one of {', '.join(DRIVERS)})")
    return list(dict.fromkeys(drivers))


VEGETA = "github.com/tsenart/vegeta/v12@v12.13.0"


def vegeta_binary() -> str:
    """The vegeta load generator (Go), installed once by ``go install`` into the stack's download cache."""
    import shutil

    from lupita_dev.stack.install import cache_dir

    name = VEGETA.split("@")[0].split("/")[2]
    binary = cache_dir() / "tools" / VEGETA.split("@")[1] / name
    if binary.exists():
        return str(binary)
    go = shutil.which("go")
    if go is None:
        raise SystemExit(f"--driver vegeta needs Go to install {VEGETA} (go install); no `go` on PATH")
    print(f"installing {VEGETA} into {binary.parent}", flush=True)
    subprocess.run([go, "install", VEGETA], check=True, env=dict(os.environ, GOBIN=str(binary.parent)))
    return str(binary)


def drive_vegeta(url: str, callers: list[str], rate: float, seconds: float, warmup: float) -> dict:
    """The same open-loop level as :func:`drive`, sent by vegeta, a compiled driver whose clock does not
    share Python's event loop with the answers it times (at 100-300 rps it costs the cores about what
    the Python driver does: bench/README.md). Each request's latency runs from the moment vegeta's
    pacer sends it (vegeta starts a new worker whenever all are busy, so a slow server does not slow the
    sending); every answer is checked for a known person as in :func:`drive`. ``driver_cpu_s`` is the
    driver's own CPU time over the warm-up and the measured window."""
    import base64
    import tempfile

    rnd = random.Random(11)
    headers = {"Authorization": [f"Bearer {TOKEN}"], "Content-Type": ["application/json"]}
    binary = vegeta_binary()
    cpu0 = os.times()

    def attack(duration: float, tmp: Path, name: str) -> list[dict]:
        targets = tmp / f"{name}.targets"
        with targets.open("w") as fh:
            for _ in range(int(duration * rate)):
                fh.write(json.dumps({"method": "POST", "url": url, "header": headers,
                                     "body": base64.b64encode(message(rnd.choice(callers))).decode()}) + "\n")
        attack = subprocess.run([binary, "attack", "-format=json", f"-targets={targets}", f"-rate={rate:g}/1s",
                                 f"-duration={duration:g}s", "-timeout=10s", "-keepalive=true"],
                                check=True, capture_output=True)
        encoded = subprocess.run([binary, "encode", "-to=json"], input=attack.stdout, check=True,
                                 capture_output=True)
        return [json.loads(line) for line in encoded.stdout.splitlines() if line.strip()]

    with tempfile.TemporaryDirectory(prefix="bench-vegeta-") as d:
        if warmup > 0:
            attack(warmup, Path(d), "warmup")
        t_start = time.perf_counter()
        rows = attack(seconds, Path(d), "measured")
        wall = time.perf_counter() - t_start
    cpu1 = os.times()
    driver_cpu = (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system)
    lat: list[float] = []
    errors = {"http": 0, "tool_error": 0, "exception": 0}
    for r in rows:
        if r.get("error") and not r.get("code"):
            errors["exception"] += 1
        elif r.get("code") != 200:
            errors["http"] += 1
        elif b'\\"known\\":true' not in base64.b64decode(r.get("body") or ""):
            errors["tool_error"] += 1
        else:
            lat.append(r["latency"] / 1e9)
    stamps = sorted(_stamp(r["timestamp"]) for r in rows)
    span = stamps[-1] - stamps[0] if stamps else 0
    return {"rate": rate, "sent": len(rows), "errors": errors,
            "achieved_rps": round((len(rows) - 1) / span, 1) if span > 0 else None, **latency_summary(lat),
            "driver": "vegeta", "driver_cpu_s": round(driver_cpu, 2), "wall_s": round(wall, 1)}


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) of process ``root`` and every live descendant, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0.0))[1]
        todo += [child for child, (parent, _) in stats.items() if parent == pid]
    return total


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: everything but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def _stamp(rfc3339: str) -> float:
    """A vegeta result's RFC 3339 send time (nanoseconds, any zone) as POSIX seconds."""
    import re
    from datetime import datetime

    head, frac, zone = re.fullmatch(r"([^.]+?)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", rfc3339).groups()
    base = datetime.fromisoformat(head + ("+00:00" if zone == "Z" else zone)).timestamp()
    return base + (int(frac) / 10 ** len(frac) if frac else 0.0)


async def sequential(url: str, callers: list[str], n: int) -> dict:
    """``n`` requests one after another (no queue: each request's own service time)."""
    import aiohttp

    headers = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    rnd = random.Random(13)
    lat, errors = [], 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for i in range(n + 20):
            t = time.perf_counter()
            async with session.post(url, data=message(rnd.choice(callers)), headers=headers) as r:
                body = await r.read()
            if i < 20:
                continue  # warm-up
            if r.status == 200 and b'\\"known\\":true' in body:
                lat.append(time.perf_counter() - t)
            else:
                errors += 1
    return {"sequential": n, "errors": errors, **latency_summary(lat)}


def wait_http(url: str, timeout: float = 90) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--people", type=int, default=10_000)
    ap.add_argument("--facts", type=int, default=20)
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--weaviate-people", type=int, default=1_000)
    ap.add_argument("--rates", default="100,300,1000")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--driver", default="aiohttp", metavar="D[,D...]",
                    help="load drivers, each level run by each in turn: aiohttp (this process, Python) and/or "
                         "vegeta (Go, installed by `go install` into the download cache on first use)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the schema and the Weaviate collection")
    ap.add_argument("--write-cost", type=int, default=200, metavar="N",
                    help="fact writes per trigger state to measure what the profile costs a writer (0 = skip)")
    ap.add_argument("--sequential", type=int, default=0, metavar="N",
                    help="first N requests one at a time per server (service time without a queue)")
    ap.add_argument("--past", type=int, default=3,
                    help="past conversations the context-api children read from Weaviate (0 = off: Postgres only)")
    ap.add_argument("--servers", default="",
                    help="comma-separated subset of: context-api, context-api xN, context-api fanout, fan-out")
    ap.add_argument("--workers", default="1", metavar="N[,N...]",
                    help="one profile-path context-api per count, with LUPITA_CONTEXT_API_WORKERS=N (named "
                         "'context-api' for 1, 'context-api xN' otherwise); the fanout-source one keeps 1")
    ap.add_argument("--dispatcher", type=int, default=2000, metavar="N",
                    help="callbacks.due dispatcher phase: N due callbacks per run, exactly-once vs at-least-once "
                         "(0 = skip)")
    ap.add_argument("--dispatcher-batches", default="50,1", metavar="B[,B...]",
                    help="dispatcher batch sizes (rows per round); the batch-1 runs use N/10 callbacks")
    ap.add_argument("--dispatcher-repeats", type=int, default=2, help="runs of each dispatcher mode, alternating")
    ap.add_argument("--dispatcher-only", action="store_true", help="the dispatcher phase alone (no seed, no HTTP)")
    ap.add_argument("--serve-fanout", nargs=3, metavar=("PORT", "DSN_ENV", "COLLECTION"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    drivers = parse_drivers(args.driver)  # refused before minutes of seeding
    if args.serve_fanout:
        port, dsn_env, collection = args.serve_fanout
        serve_fanout(int(port), os.environ[dsn_env], collection)
        return 0

    import psycopg
    from lupita_dev.stack import manager

    os.environ.update(manager.up())  # idempotent: the running stack's settings
    from context_api.phones import person_hash
    from lupita.config import CommonSettings
    from lupita.db import migrate
    from procs import free_port

    settings = CommonSettings()
    base = settings.postgres_dsn.get_secret_value()
    tag = uuid.uuid4().hex[:8]
    schema, collection = f"bench_ctx_{tag}", f"BenchCtx{tag}"
    dsn = psycopg.conninfo.make_conninfo(base, options=f"-c search_path={schema}")
    numbers = phones(args.people)
    hashes = [person_hash(p, settings.hmac_key_bytes) for p in numbers]
    callers = numbers[: args.weaviate_people]
    procs: list[subprocess.Popen] = []
    fan_log = None
    results: dict = {"people": args.people, "facts": args.facts, "calls": args.calls,
                     "weaviate_people": args.weaviate_people, "past_conversations": args.past, "levels": []}
    if args.dispatcher:
        results["dispatcher"] = []
        for b in [int(b) for b in args.dispatcher_batches.split(",") if b.strip()]:
            results["dispatcher"] += dispatcher_phase(base, args.dispatcher if b > 1 else max(1, args.dispatcher // 10),
                                                      [b], args.dispatcher_repeats)
    if args.dispatcher_only:
        results.pop("levels")
        write_results(results, args.json)
        return 0
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        migrate(dsn)
        results["seed_postgres_s"] = round(seed_postgres(dsn, hashes, args), 1)
        results["seed_weaviate_s"] = round(seed_weaviate(collection, hashes[: args.weaviate_people], args.calls), 1)
        results["profile_backfill_s"] = round(
            link_weaviate_and_build_profiles(dsn, hashes[: args.weaviate_people], args.calls), 1)
        if args.past:
            results["stored_past"] = store_past_conversations(dsn, collection, hashes[: args.weaviate_people])
            sp = results["stored_past"]
            print(f"past conversations stored for {sp['people']} people (as at each analysis): per person p50 "
                  f"{sp['p50_ms']} ms p99 {sp['p99_ms']} ms", flush=True)
        print(f"seeded {args.people} people x {args.facts} facts x {args.calls} calls in "
              f"{results['seed_postgres_s']} s; Weaviate {args.weaviate_people} x {args.calls} in "
              f"{results['seed_weaviate_s']} s; {args.people} profiles built in {results['profile_backfill_s']} s",
              flush=True)
        if args.write_cost:
            results["write_cost"] = write_cost(dsn, hashes, args.write_cost)
            wc = results["write_cost"]
            print(f"fact write (facts.record, supersede): profile once at commit (0010) p50 "
                  f"{wc['triggers_on']['p50_ms']} ms p99 {wc['triggers_on']['p99_ms']} ms; per statement (0008) p50 "
                  f"{wc['per_statement']['p50_ms']} ms p99 {wc['per_statement']['p99_ms']} ms; "
                  f"off p50 {wc['triggers_off']['p50_ms']} ms "
                  f"p99 {wc['triggers_off']['p99_ms']} ms ({wc['triggers_on']['writes']} writes each); 8 facts in one "
                  f"transaction p50 {wc['triggers_on_8_facts_one_transaction']['p50_ms']} / "
                  f"{wc['per_statement_8_facts_one_transaction']['p50_ms']} / "
                  f"{wc['triggers_off_8_facts_one_transaction']['p50_ms']} ms; load "
                  f"{Path('/proc/loadavg').read_text().split()[0]}", flush=True)
        env = dict(os.environ, LUPITA_POSTGRES_DSN=dsn, LUPITA_CONTEXT_API_ASSISTANT_ID="bench",
                   LUPITA_CONTEXT_API_BEARER_TOKENS=TOKEN, LUPITA_LOG_LEVEL="WARNING", BENCH_DSN=dsn,
                   PYTHONPATH=str(ROOT / "services"), LUPITA_WEAVIATE_CONVERSATION_COLLECTION=collection,
                   LUPITA_CONTEXT_API_CALLBACKS_ENABLED="false",
                   LUPITA_CONTEXT_API_ERASURE_SWEEP_INTERVAL_SECONDS="0",
                   LUPITA_CONTEXT_API_PAST_CONVERSATIONS=str(args.past))
        worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
        api_ports = {w: free_port() for w in worker_counts}
        sql_port, fan_port = free_port(), free_port()
        devnull = subprocess.DEVNULL
        live_ports = {w: free_port() for w in worker_counts} if args.past else {}
        for port, source, workers, past_source in (
                [(p, "profile", w, "stored") for w, p in api_ports.items()]
                + [(p, "profile", w, "weaviate") for w, p in live_ports.items()] + [(sql_port, "fanout", 1, "weaviate")]):
            procs.append(subprocess.Popen([sys.executable, "-m", "context_api", "--host", "127.0.0.1", "--port",
                                           str(port), "--metrics-port", "0"],
                                          env=dict(env, LUPITA_CONTEXT_API_CONTEXT_SOURCE=source,
                                                   LUPITA_CONTEXT_API_PAST_SOURCE=past_source,
                                                   LUPITA_CONTEXT_API_WORKERS=str(workers)), cwd=ROOT,
                                          stdout=devnull, stderr=devnull))
        fan_log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-context-fanout-{tag}.log", "wb")
        procs.append(subprocess.Popen([sys.executable, __file__, "--serve-fanout", str(fan_port), "BENCH_DSN",
                                       collection], env=env, cwd=ROOT, stdout=fan_log, stderr=subprocess.STDOUT))
        for port in [*api_ports.values(), *live_ports.values()]:
            wait_http(f"http://127.0.0.1:{port}/livez")
        wait_http(f"http://127.0.0.1:{sql_port}/livez")
        wait_http(f"http://127.0.0.1:{fan_port}/vapi/webhook")
        results["workers"] = worker_counts
        servers = [("context-api" if w == 1 else f"context-api x{w}", f"http://127.0.0.1:{p}/vapi/webhook")
                   for w, p in api_ports.items()]
        servers += [("context-api" + (f" x{w}" if w > 1 else "") + " weaviate-past", f"http://127.0.0.1:{p}/vapi/webhook")
                    for w, p in live_ports.items()]
        servers += [("context-api fanout", f"http://127.0.0.1:{sql_port}/vapi/webhook"),
                   ("fan-out", f"http://127.0.0.1:{fan_port}/vapi/webhook")]
        only = {n.strip() for n in args.servers.split(",")} if args.servers else None
        servers = [s for s in servers if only is None or s[0] in only]
        port_pid = dict(zip([*api_ports.values(), *live_ports.values(), sql_port, fan_port], [p.pid for p in procs]))
        pids = {name: port_pid[int(url.split(":")[2].split("/")[0])] for name, url in servers}
        postgres_pid = int((manager.stack_dir() / "run" / "postgres.pid").read_text())
        if args.sequential:
            for name, url in servers:
                seq = asyncio.run(sequential(url, callers, args.sequential))
                seq["server"] = name
                seq["load_average_1m"] = float(Path("/proc/loadavg").read_text().split()[0])
                results.setdefault("sequential", []).append(seq)
                print(f"{name:18s} sequential x{args.sequential}  ok {seq['ok']}  errors {seq['errors']}  "
                      f"p50 {seq['p50_ms']} ms  p99 {seq['p99_ms']} ms  load {seq['load_average_1m']}", flush=True)
        if "vegeta" in drivers:
            vegeta_binary()  # installed before any level runs
        for rate in [float(r) for r in args.rates.split(",") if r.strip()]:
            for (name, url), driver in [(s, d) for s in servers for d in drivers]:
                before = (tree_cpu_s(pids[name]), tree_cpu_s(postgres_pid), machine_busy_s())
                if driver == "vegeta":
                    level = drive_vegeta(url, callers, rate, args.seconds, args.warmup)
                else:
                    level = asyncio.run(drive(url, callers, rate, args.seconds, args.warmup))
                after = (tree_cpu_s(pids[name]), tree_cpu_s(postgres_pid), machine_busy_s())
                # per request over warm-up + measured window, both drivers send the same count
                requests = int((args.warmup + args.seconds) * rate)
                level["cpu_ms_per_request"] = {
                    what: round((a - b) * 1000 / requests, 2)
                    for what, a, b in zip(("server", "postgres", "machine"), after, before)}
                level["server"] = name
                level["load_average_1m"] = float(Path("/proc/loadavg").read_text().split()[0])
                results["levels"].append(level)
                e = level["errors"]
                print(f"{name:18s} {driver:7s} {rate:7.0f} rps  achieved {level['achieved_rps']:7.1f}  ok {level['ok']:6d}  "
                      f"errors {sum(e.values()):5d}  p50 {level['p50_ms']} ms  p95 {level['p95_ms']} ms  "
                      f"p99 {level['p99_ms']} ms  max {level['max_ms']} ms  driver CPU {level['driver_cpu_s']} s  "
                      f"CPU ms/request {level['cpu_ms_per_request']}  "
                      f"load {level['load_average_1m']}  "
                      f"{e if sum(e.values()) else ''}", flush=True)
        for (name, _), driver in [(s, d) for s in servers for d in drivers]:
            mine = [lv for lv in results["levels"] if lv["server"] == name and lv["driver"] == driver
                    and lv["p99_ms"] is not None and sum(lv["errors"].values()) == 0]
            suffix = "" if len(drivers) == 1 else f" ({driver})"
            for bound in (50, 25):
                good = [lv["rate"] for lv in mine if lv["p99_ms"] <= bound]
                results[f"{name}{suffix}_highest_rate_p99_le_{bound}ms"] = max(good) if good else None
                print(f"{name}{suffix}: highest rate tested with p99 <= {bound} ms and no errors: "
                      f"{max(good) if good else 'none'}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        if fan_log is not None:
            fan_log.close()
        if not args.keep:
            with psycopg.connect(base, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            try:
                with weaviate_client() as client:
                    client.collections.delete(collection)
            except Exception as exc:  # noqa: BLE001
                print(f"could not delete the Weaviate collection {collection}: {type(exc).__name__}")
    write_results(results, args.json)
    return 0


def write_results(results: dict, wanted: bool) -> None:
    if wanted:
        RESULTS_DIR.mkdir(exist_ok=True)
        out = RESULTS_DIR / f"context-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps(results, indent=2))
        print(f"written {out}")


if __name__ == "__main__":
    sys.exit(main())
