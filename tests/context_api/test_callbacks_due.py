"""Due callbacks published to ``callbacks.due`` (context_api.callbacks_due) on the stack's real
Postgres and Kafka: in a schema of this module's own (migrated from 0001) and topics of its own
prefix, so no other test's callbacks are dispatched and no other test's records are read.

The guarantee tested: a ``read_committed`` reader of the topic sees every due callback exactly
once — in a normal round; with two dispatchers running (only the lock holder publishes, the other
takes over when it stops); with a dispatcher SIGKILLed after the Kafka commit and before the
Postgres commit (the next holder's reconcile marks the row, no second record); with one killed
before the Kafka commit (its records aborted by the next holder's fencing, sent again once); with
a zombie holder fenced in the middle of a round; with the broker unreachable (nothing marked,
retried). A cancelled callback is never published, and a callback whose record may be in Kafka is
never shown as cancelled.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import uuid
from collections import Counter

import psycopg
import pytest
from context_api import metrics
from kafka_io import own_topic_prefix
from procs import ROOT
from waits import await_for, wait_for

SCHEMA_PREFIX = "test_cbdue_"


def holding() -> float:
    """This process's ``lupita_context_api_callbacks_dispatcher_holder``."""
    return metrics.CALLBACKS_HOLDER._value.get()


@pytest.fixture(scope="module")
def env(stack_env):
    """(scoped DSN, topic prefix): a fresh schema and topic prefix, dropped/left afterwards."""
    from lupita.config import CommonSettings
    from lupita.db import migrate
    from lupita.topics import CALLBACKS_DUE, ensure_topics

    base = CommonSettings().postgres_dsn.get_secret_value()
    schema = f"{SCHEMA_PREFIX}{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    scoped = psycopg.conninfo.make_conninfo(base, options=f"-c search_path={schema}")
    try:
        migrate(scoped)
        with own_topic_prefix("cbdue") as prefix:
            ensure_topics(CommonSettings(), (CALLBACKS_DUE,))
            yield scoped, prefix
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def settings(env, **over):
    from context_api.settings import ContextApiSettings

    dsn, prefix = env
    values = dict(context_api_assistant_id="asst-test", context_api_bearer_tokens="tok-" + secrets.token_hex(8),
                  postgres_dsn=dsn, topic_prefix=prefix, context_api_callbacks_batch_size=5)
    values.update(over)
    return ContextApiSettings(**values)


def dispatcher(env, **kw):
    from context_api.callbacks_due import Dispatcher

    hooks = {k: kw.pop(k) for k in ("after_ack", "before_commit") if k in kw}
    return Dispatcher(settings(env, **kw), **hooks)


@pytest.fixture
def db(env):
    with psycopg.connect(env[0], autocommit=True) as conn:
        # every test starts with nothing due: what an earlier test left is cancelled
        conn.execute("UPDATE scheduled_callbacks SET status = 'cancelled' WHERE status IN ('pending', 'dispatching')")
        yield conn


def add(db, *, in_seconds: float = -60, reason: str = "preguntar por la cadera", person: str | None = None) -> int:
    person = person or secrets.token_hex(32)
    return db.execute(
        "INSERT INTO scheduled_callbacks (phone_number_hash, call_id, scheduled_for, reason) "
        "VALUES (%s, %s, now() + make_interval(secs => %s), %s) RETURNING id",
        (person, f"test-{uuid.uuid4().hex[:12]}", in_seconds, reason)).fetchone()[0]


def row(db, callback_id: int) -> dict:
    cur = db.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute("SELECT * FROM scheduled_callbacks WHERE id = %s", (callback_id,)).fetchone()


def published(env, isolation: str = "read_committed") -> dict[int, list]:
    """The records of callbacks.due by callback id (the record key), read from the beginning to the
    end (the last stable offset for ``read_committed``, the high watermark otherwise)."""
    from kafka import KafkaConsumer, TopicPartition
    from lupita.config import CommonSettings
    from lupita.topics import CALLBACKS_DUE

    topic = env[1] + CALLBACKS_DUE
    consumer = KafkaConsumer(bootstrap_servers=CommonSettings().kafka_bootstrap, enable_auto_commit=False,
                             isolation_level=isolation, client_id="test-cbdue-reader")
    out: dict[int, list] = {}
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        assert tps, f"{topic} has no partitions"
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)

        def poll() -> None:
            for records in consumer.poll(timeout_ms=200).values():
                for r in records:
                    out.setdefault(int(r.key.decode()), []).append(r)

        wait_for(f"{topic} read to its end", lambda: all(consumer.position(tp) >= end[tp] for tp in tps),
                 before=poll, interval=0)
    finally:
        consumer.close()
    return out


async def take_lock(d, what: str = "the dispatcher holds the lock") -> int:
    """Rounds until ``d`` holds the lock (a killed holder's session ends a moment after the kill):
    the number the round that took it published."""
    done: list[int] = []

    async def round_() -> bool:
        n = await d.run_once()
        if d.holder:
            done.append(n)
        return d.holder

    await await_for(what, round_, timeout=60, interval=0.1)
    return done[0]


def start_child(env, where: str, ids: list[int]) -> subprocess.Popen:
    """A dispatcher process that stops in its hook ``where`` (after_ack: the Kafka transaction
    committed, the rows not marked; before_commit: the records sent, not committed) and waits
    there to be killed; returns once it is there."""
    child_env = dict(os.environ, LUPITA_POSTGRES_DSN=env[0], LUPITA_TOPIC_PREFIX=env[1])
    proc = subprocess.Popen([sys.executable, "-c", CHILD, where], cwd=ROOT, env=child_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # the child's signal (or EOF if it died)
    if line.strip() != f"AT {','.join(map(str, ids))}":
        proc.kill()
        proc.wait(30)
        raise AssertionError(f"child: {line!r} {proc.stderr.read()[-3000:]}")
    return proc


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    proc.stdout.close()
    proc.stderr.close()


CHILD = r"""
import asyncio, sys
from context_api.callbacks_due import Dispatcher
from context_api.settings import ContextApiSettings

async def stop_here(published):
    print("AT", ",".join(str(p.callback_id) for p in published), flush=True)
    await asyncio.Event().wait()  # SIGKILLed here

s = ContextApiSettings(context_api_assistant_id="asst-test", context_api_bearer_tokens="tok-child")
asyncio.run(Dispatcher(s, **{sys.argv[1]: stop_here}).run_once())
"""


async def test_a_due_callback_is_published_once_with_its_fields(env, db):
    person = secrets.token_hex(32)
    due = add(db, person=person, reason="¿cómo sigue la cadera?")
    later = add(db, in_seconds=3600)
    d = dispatcher(env)
    try:
        assert await d.run_once() == 1
        assert d.holder
        assert await d.run_once() == 0  # nothing more is due: no second record
    finally:
        await d.aclose()
    (rec,) = published(env)[due]
    body = json.loads(rec.value)
    r = row(db, due)
    assert body == {"schema": "lupita.callback_due.v1", "callback_id": due, "person_id": person,
                    "scheduled_for": r["scheduled_for"].isoformat(), "reason": "¿cómo sigue la cadera?",
                    "call_id": r["call_id"], "published_at": r["published_at"].isoformat()}
    assert rec.key == str(due).encode()
    assert (r["status"], r["kafka_partition"], r["kafka_offset"]) == ("dispatched", rec.partition, rec.offset)
    assert later not in published(env) and row(db, later)["status"] == "pending"
    # the reconcile position is past the record: a later reconcile does not read it again
    (next_offset,) = db.execute("SELECT next_offset FROM callbacks_due_offsets WHERE topic = %s AND "
                                "kafka_partition = %s", (env[1] + "callbacks.due", rec.partition)).fetchone()
    assert next_offset == rec.offset + 1


async def test_two_dispatchers_only_the_lock_holder_publishes_and_the_other_takes_over(env, db):
    ids = [add(db, in_seconds=-i) for i in range(12)]
    ds = [dispatcher(env, context_api_callbacks_batch_size=3) for _ in range(2)]
    counts = {0: 0, 1: 0}

    async def work(i: int) -> None:
        # both race round after round until nothing is due; only one can hold the lock
        while db.execute("SELECT count(*) FROM scheduled_callbacks WHERE id = ANY(%s) AND status <> 'dispatched'",
                         (ids,)).fetchone()[0]:
            counts[i] += await ds[i].run_once()
            await asyncio.sleep(0)

    try:
        await asyncio.wait_for(asyncio.gather(work(0), work(1)), 120)
        holders = [i for i in (0, 1) if ds[i].holder]
        assert len(holders) == 1, holders
        assert holding() == 1  # the holder gauge counts the one lock holder of this process
        (h,) = holders
        other = 1 - h
        assert (counts[h], counts[other]) == (12, 0)
        # the holder stops (its lock goes with its session): the other takes over
        await ds[h].aclose()
        more = [add(db) for _ in range(2)]
        assert await take_lock(ds[other], "the standby takes over") == 2
    finally:
        for d in ds:
            await d.aclose()
    assert holding() == 0  # every dispatcher closed: none holds the lock
    recs = published(env)
    assert Counter({i: len(recs.get(i, [])) for i in ids + more}) == Counter({i: 1 for i in ids + more})
    for i in ids + more:
        r = row(db, i)
        assert (r["status"], r["kafka_partition"], r["kafka_offset"]) == \
            ("dispatched", recs[i][0].partition, recs[i][0].offset)


async def test_a_callback_cancelled_before_it_falls_due_is_never_published(env, db):
    from context_api.store import cancel_callback

    person = secrets.token_hex(32)
    cancelled = add(db, person=person, in_seconds=1)
    kept = add(db, in_seconds=1)
    assert cancel_callback(db, person, cancelled)[0] == "cancelled"
    wait_for("both callbacks due", lambda: db.execute(
        "SELECT bool_and(scheduled_for <= now()) FROM scheduled_callbacks WHERE id IN (%s, %s)",
        (cancelled, kept)).fetchone()[0], timeout=30)
    d = dispatcher(env)
    try:
        assert await d.run_once() == 1
    finally:
        await d.aclose()
    recs = published(env)
    assert len(recs[kept]) == 1 and cancelled not in recs
    assert row(db, cancelled)["status"] == "cancelled" and row(db, cancelled)["published_at"] is None


async def test_a_cancel_during_a_round_finds_the_callback_not_pending(env, db):
    from context_api.store import cancel_callback

    person = secrets.token_hex(32)
    cb = add(db, person=person)
    seen: dict = {}

    def cancel_now(published_):
        # the Kafka transaction is committed, the row not yet marked: it is 'dispatching'
        with psycopg.connect(env[0], autocommit=True) as other:
            seen["outcome"], seen["row"] = cancel_callback(other, person, cb)

    d = dispatcher(env, after_ack=cancel_now)
    try:
        assert await d.run_once() == 1
    finally:
        await d.aclose()
    assert seen["outcome"] == "not_pending" and seen["row"]["status"] == "dispatching"
    assert len(published(env)[cb]) == 1 and row(db, cb)["status"] == "dispatched"


async def test_killed_after_the_kafka_commit_the_next_holder_marks_it_and_sends_no_second_copy(env, db):
    from context_api.store import cancel_callback

    person = secrets.token_hex(32)
    cb = add(db, person=person)
    proc = start_child(env, "after_ack", [cb])
    try:
        (first,) = published(env)[cb]  # committed in Kafka, not marked in Postgres
        assert row(db, cb)["status"] == "dispatching"
        assert cancel_callback(db, person, cb)[0] == "not_pending"  # it may be dialled: never "cancelled"
    finally:
        kill(proc)
    d = dispatcher(env)
    reconciled_before = metrics.CALLBACKS_RECONCILED._value.get()
    try:
        assert await take_lock(d, "the killed dispatcher's lock released") == 0  # nothing sent again
        assert d.reconciled == 1
        assert metrics.CALLBACKS_RECONCILED._value.get() - reconciled_before == 1
        assert await d.run_once() == 0
    finally:
        await d.aclose()
    assert [(r.partition, r.offset) for r in published(env)[cb]] == [(first.partition, first.offset)]
    r = row(db, cb)
    assert (r["status"], r["kafka_partition"], r["kafka_offset"]) == ("dispatched", first.partition, first.offset)
    assert r["published_at"].isoformat() == json.loads(first.value)["published_at"]


async def test_killed_before_the_kafka_commit_its_records_stay_invisible_and_are_sent_once(env, db):
    cb = add(db)
    proc = start_child(env, "before_commit", [cb])
    try:
        # the record is in the log (a read_uncommitted reader sees it) but not committed
        assert len(published(env, "read_uncommitted")[cb]) == 1
        assert cb not in published(env)
        assert row(db, cb)["status"] == "dispatching"
    finally:
        kill(proc)
    d = dispatcher(env)
    try:
        # the new holder's producer start aborts the open transaction; reconcile finds nothing
        assert await take_lock(d, "the killed dispatcher's lock released") == 1
        assert d.reconciled == 0
    finally:
        await d.aclose()
    (rec,) = published(env)[cb]
    assert len(published(env, "read_uncommitted")[cb]) == 2  # the aborted copy is there, invisible
    r = row(db, cb)
    assert (r["status"], r["kafka_partition"], r["kafka_offset"]) == ("dispatched", rec.partition, rec.offset)


async def test_a_fenced_holder_commits_nothing_and_its_next_round_sends_once(env, db):
    from aiokafka import AIOKafkaProducer
    from context_api.callbacks_due import KafkaUnavailable
    from lupita.config import CommonSettings

    cb = add(db)
    intruder: list = []

    async def fence(published_):
        # another producer of the shared transactional id starts (as a new holder would): this
        # round's producer is fenced before its commit
        p = AIOKafkaProducer(bootstrap_servers=CommonSettings().kafka_bootstrap,
                             transactional_id=d.transactional_id, acks="all")
        await p.start()
        intruder.append(p)

    d = dispatcher(env, before_commit=fence)
    try:
        with pytest.raises(KafkaUnavailable):
            await d.run_once()
        assert not d.holder  # it let the lock go
        assert cb not in published(env) and row(db, cb)["status"] in ("pending", "dispatching")
        d.before_commit = None
        assert await take_lock(d) == 1
    finally:
        await d.aclose()
        for p in intruder:
            await p.stop()
    (rec,) = published(env)[cb]
    assert (row(db, cb)["status"], row(db, cb)["kafka_offset"]) == ("dispatched", rec.offset)


async def test_an_unreachable_broker_marks_nothing_and_the_next_round_publishes(env, db):
    from context_api.callbacks_due import KafkaUnavailable
    from procs import free_port

    cb = add(db)
    dead = dispatcher(env, kafka_bootstrap=f"127.0.0.1:{free_port()}",
                      context_api_callbacks_publish_timeout_seconds=1.0)
    try:
        for _ in range(2):  # retried: each round fails the same way, nothing changes
            with pytest.raises(KafkaUnavailable):
                await dead.run_once()
            r = row(db, cb)
            assert (r["status"], r["published_at"], r["kafka_offset"]) == ("pending", None, None)
            assert not dead.holder  # a failed holder lets the lock go to another replica
    finally:
        await dead.aclose()
    assert cb not in published(env)
    d = dispatcher(env)
    try:
        assert await d.run_once() == 1
    finally:
        await d.aclose()
    assert len(published(env)[cb]) == 1 and row(db, cb)["status"] == "dispatched"


async def test_the_dispatcher_works_under_the_context_api_role(env, db):
    cb = add(db)
    as_role = psycopg.conninfo.make_conninfo(
        env[0], options=psycopg.conninfo.conninfo_to_dict(env[0])["options"] + " -c role=lupita_context_api")
    d = dispatcher(env, postgres_dsn=as_role)
    try:
        assert await d.run_once() == 1
    finally:
        await d.aclose()
    assert len(published(env)[cb]) == 1 and row(db, cb)["status"] == "dispatched"


def test_the_service_dispatches_while_it_serves(env, db):
    from ctxkit import ContextApi

    cb = add(db)
    with ContextApi("context-api-callbacks", env={
            "LUPITA_POSTGRES_DSN": env[0], "LUPITA_TOPIC_PREFIX": env[1],
            "LUPITA_CONTEXT_API_CALLBACKS_POLL_INTERVAL_SECONDS": "0.2"}) as server:
        wait_for("the service published the due callback", lambda: row(db, cb)["status"] == "dispatched", timeout=60)
        later = add(db, in_seconds=0.5)
        wait_for("it publishes one that falls due while it runs", lambda: row(db, later)["status"] == "dispatched",
                 timeout=60)
        assert server.metric("lupita_context_api_callbacks_published_total") == 2
        assert server.metric("lupita_context_api_callbacks_due_backlog") == 0
        logs = [r for r in server.logs() if r.get("msg") == "callback published"]
        assert sorted(r["callback_id"] for r in logs) == sorted([cb, later])
    assert server.proc.returncode == 0
    recs = published(env)
    assert len(recs[cb]) == 1 and len(recs[later]) == 1


def test_two_service_replicas_publish_each_callback_once_from_the_lock_holder(env, db):
    from ctxkit import ContextApi

    ids = [add(db, in_seconds=-i) for i in range(6)]
    replica = {"LUPITA_POSTGRES_DSN": env[0], "LUPITA_TOPIC_PREFIX": env[1],
               "LUPITA_CONTEXT_API_CALLBACKS_POLL_INTERVAL_SECONDS": "0.2",
               "LUPITA_CONTEXT_API_CALLBACKS_BATCH_SIZE": "2"}
    with ContextApi("context-api-replica-a", env=replica) as a, ContextApi("context-api-replica-b", env=replica) as b:
        wait_for("the replicas published the due callbacks", lambda: db.execute(
            "SELECT bool_and(status = 'dispatched') FROM scheduled_callbacks WHERE id = ANY(%s)", (ids,)).fetchone()[0],
            timeout=60)
        later = [add(db, in_seconds=0.5) for _ in range(3)]
        wait_for("and those that fall due while they run", lambda: db.execute(
            "SELECT bool_and(status = 'dispatched') FROM scheduled_callbacks WHERE id = ANY(%s)",
            (later,)).fetchone()[0], timeout=60)
        by = {name: [r["callback_id"] for r in s.logs() if r.get("msg") == "callback published"]
              for name, s in (("a", a), ("b", b))}
        standing = {name for name, s in (("a", a), ("b", b))
                    if any(r.get("msg") == "callbacks dispatcher standing by" for r in s.logs())}
    assert sorted(by["a"] + by["b"]) == sorted(ids + later)
    assert sorted(len(v) for v in by.values()) == [0, 9]  # one holder published all; the other stood by
    assert standing == {"a" if not by["a"] else "b"}
    recs = published(env)
    assert Counter({i: len(recs.get(i, [])) for i in ids + later}) == Counter({i: 1 for i in ids + later})


def test_the_service_backs_off_while_the_broker_is_unreachable(env, db):
    from ctxkit import ContextApi
    from procs import free_port

    cb = add(db)
    with ContextApi("context-api-callbacks-down", env={
            "LUPITA_POSTGRES_DSN": env[0], "LUPITA_TOPIC_PREFIX": env[1],
            "LUPITA_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
            "LUPITA_CONTEXT_API_CALLBACKS_POLL_INTERVAL_SECONDS": "0.1",
            "LUPITA_CONTEXT_API_CALLBACKS_PUBLISH_TIMEOUT_SECONDS": "1"}) as server:
        wait_for("two failed rounds", lambda: server.metric(
            "lupita_context_api_callbacks_publish_retries_total", reason="kafka") >= 2, timeout=60)
        assert server.client.get("/readyz").status_code == 200  # the API keeps serving
        assert server.metric("lupita_context_api_callbacks_published_total") == 0
        warned = [r for r in server.logs() if r.get("msg") == "callbacks round failed"]
        assert warned and all(r["reason"] == "kafka" and r["retry_in_s"] > 0 for r in warned)
    r = row(db, cb)
    assert (r["status"], r["published_at"]) == ("pending", None) and cb not in published(env)
