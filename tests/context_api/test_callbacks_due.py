"""Due callbacks published to ``callbacks.due`` (context_api.callbacks_due) on the stack's real
Postgres and Kafka: in a schema of this module's own (migrated from 0001) and topics of its own
prefix, so no other test's callbacks are dispatched and no other test's records are read.

The guarantee tested: every due pending callback is published and marked once; two dispatchers
working at the same time never publish the same one; a cancelled one never; a dispatcher killed
after the broker's ack and before its commit leaves the row pending, and the next round
republishes it once with the same callback id (at-least-once, ``callback_id`` the dedupe key).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter

import psycopg
import pytest
from kafka_io import TopicReader, own_topic_prefix
from procs import ROOT
from waits import wait_for

SCHEMA_PREFIX = "test_cbdue_"


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
    from context_api.store import Pool

    after_ack = kw.pop("after_ack", None)
    s = settings(env, **kw)
    return Dispatcher(s, Pool(s.postgres_dsn.get_secret_value(), 2, 5000), after_ack=after_ack)


@pytest.fixture
def db(env):
    with psycopg.connect(env[0], autocommit=True) as conn:
        # every test starts with nothing due: what an earlier test left pending is cancelled
        conn.execute("UPDATE scheduled_callbacks SET status = 'cancelled' WHERE status = 'pending'")
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


def published(env) -> dict[int, list]:
    """The records of callbacks.due by callback id (the record key), read to the end."""
    from lupita.config import CommonSettings
    from lupita.topics import CALLBACKS_DUE

    reader = TopicReader(CommonSettings().kafka_bootstrap, env[1] + CALLBACKS_DUE).read_to_end()
    reader.consumer.close()
    out: dict[int, list] = {}
    for r in reader.records:
        out.setdefault(int(r.key.decode()), []).append(r)
    return out


def test_a_due_callback_is_published_once_with_its_fields(env, db):
    person = secrets.token_hex(32)
    due = add(db, person=person, reason="¿cómo sigue la cadera?")
    later = add(db, in_seconds=3600)
    d = dispatcher(env)
    try:
        assert d.run_once() == 1
        assert d.run_once() == 0  # nothing more is due: no second record
    finally:
        d.close()
    (rec,) = published(env)[due]
    body = json.loads(rec.value)
    r = row(db, due)
    assert body == {"schema": "lupita.callback_due.v1", "callback_id": due, "person_id": person,
                    "scheduled_for": r["scheduled_for"].isoformat(), "reason": "¿cómo sigue la cadera?",
                    "call_id": r["call_id"], "published_at": r["published_at"].isoformat()}
    assert rec.key == str(due).encode()
    assert (r["status"], r["kafka_partition"], r["kafka_offset"]) == ("dispatched", rec.partition, rec.offset)
    assert later not in published(env) and row(db, later)["status"] == "pending"


def test_two_dispatchers_publish_each_of_20_callbacks_exactly_once(env, db):
    ids = [add(db, in_seconds=-i) for i in range(20)]
    # both hold a claimed batch at the same moment (each waits for the other in its first
    # after_ack): the claims are disjoint while they overlap, not merely one after the other
    barrier = threading.Barrier(2, timeout=30)
    first = {0: True, 1: True}
    claimed: dict[int, list[int]] = {0: [], 1: []}

    def hook(i):
        def after_ack(acked):
            claimed[i].extend(p.callback_id for p in acked)
            if first[i]:
                first[i] = False
                barrier.wait()
        return after_ack

    ds = [dispatcher(env, after_ack=hook(i), context_api_callbacks_batch_size=3) for i in range(2)]
    errors: list[BaseException] = []

    def work(d):
        try:
            while d.run_once():
                pass
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(d,)) for d in ds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for d in ds:
        d.close()
    assert not errors, errors
    assert claimed[0] and claimed[1] and not set(claimed[0]) & set(claimed[1])
    recs = published(env)
    assert Counter({i: len(recs.get(i, [])) for i in ids}) == Counter({i: 1 for i in ids})
    for i in ids:
        r = row(db, i)
        assert (r["status"], r["kafka_partition"], r["kafka_offset"]) == \
            ("dispatched", recs[i][0].partition, recs[i][0].offset)
    assert sorted(claimed[0] + claimed[1]) == sorted(ids)


def test_a_callback_cancelled_before_it_falls_due_is_never_published(env, db):
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
        assert d.run_once() == 1
    finally:
        d.close()
    recs = published(env)
    assert len(recs[kept]) == 1 and cancelled not in recs
    assert row(db, cancelled)["status"] == "cancelled" and row(db, cancelled)["published_at"] is None


def test_a_cancel_during_a_round_waits_for_it_and_finds_the_callback_dispatched(env, db):
    from context_api.store import cancel_callback

    person = secrets.token_hex(32)
    cb = add(db, person=person)
    result: dict = {}
    app = f"cbdue-cancel-{uuid.uuid4().hex[:8]}"

    def cancel_while_held(acked):
        def cancel():
            with psycopg.connect(env[0], autocommit=True, application_name=app) as other:
                result["outcome"] = cancel_callback(other, person, cb)[0]
        t = threading.Thread(target=cancel)
        t.start()
        result["thread"] = t
        # the round goes on only once the cancel is blocked on this round's row lock
        wait_for("the cancel waiting on the row lock", lambda: db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
            (app,)).fetchone()[0] == 1, timeout=30)

    d = dispatcher(env, after_ack=cancel_while_held)
    try:
        assert d.run_once() == 1
    finally:
        d.close()
    result["thread"].join(30)
    assert result["outcome"] == "not_pending"  # the cancel came too late: one record, row dispatched
    assert len(published(env)[cb]) == 1 and row(db, cb)["status"] == "dispatched"


CHILD = r"""
import threading
from context_api.callbacks_due import Dispatcher
from context_api.settings import ContextApiSettings
from context_api.store import Pool
s = ContextApiSettings(context_api_assistant_id="asst-test", context_api_bearer_tokens="tok-child")
def hang(acked):
    print("ACKED", ",".join(str(p.callback_id) for p in acked), flush=True)
    threading.Event().wait()  # killed here: after the broker's ack, before the commit
Dispatcher(s, Pool(s.postgres_dsn.get_secret_value(), 1, 5000), after_ack=hang).run_once()
"""


def test_a_dispatcher_killed_after_the_ack_and_before_the_commit_republishes_the_same_id_once(env, db):
    cb = add(db)
    child_env = dict(os.environ, LUPITA_POSTGRES_DSN=env[0], LUPITA_TOPIC_PREFIX=env[1])
    proc = subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, env=child_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # the child's signal that the ack came (or EOF if it died)
        assert line.strip() == f"ACKED {cb}", proc.stderr.read() if proc.poll() is not None else line
        assert len(published(env)[cb]) == 1  # in Kafka, not yet marked
        assert row(db, cb)["status"] == "pending"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()
    # the killed session's row lock goes with its connection: the row is pending and claimable
    def claimable() -> bool:
        with db.transaction():
            return db.execute("SELECT id FROM scheduled_callbacks WHERE id = %s FOR UPDATE SKIP LOCKED",
                              (cb,)).fetchone() is not None
    wait_for("the killed dispatcher's row lock released", claimable, timeout=30)
    assert row(db, cb)["status"] == "pending"
    d = dispatcher(env)
    try:
        assert d.run_once() == 1
        assert d.run_once() == 0
    finally:
        d.close()
    first, second = published(env)[cb]
    a, b = json.loads(first.value), json.loads(second.value)
    assert a["callback_id"] == b["callback_id"] == cb
    assert {k: v for k, v in a.items() if k != "published_at"} == {k: v for k, v in b.items() if k != "published_at"}
    r = row(db, cb)
    assert (r["status"], r["kafka_partition"], r["kafka_offset"]) == ("dispatched", second.partition, second.offset)
    assert r["published_at"].isoformat() == b["published_at"] != a["published_at"]


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


def test_an_unreachable_broker_marks_nothing_and_the_next_round_publishes(env, db):
    from context_api.callbacks_due import KafkaUnavailable
    from procs import free_port

    cb = add(db)
    dead = dispatcher(env, kafka_bootstrap=f"127.0.0.1:{free_port()}",
                      context_api_callbacks_publish_timeout_seconds=1.0)
    try:
        with pytest.raises(KafkaUnavailable):
            dead.run_once()
    finally:
        dead.close()
    r = row(db, cb)
    assert (r["status"], r["published_at"], r["kafka_offset"]) == ("pending", None, None)
    assert cb not in published(env)
    d = dispatcher(env)
    try:
        assert d.run_once() == 1
    finally:
        d.close()
    assert len(published(env)[cb]) == 1 and row(db, cb)["status"] == "dispatched"


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
    assert row(db, cb)["status"] == "pending" and cb not in published(env)
