"""The callbacks dispatcher: every due ``pending`` row of ``scheduled_callbacks`` is published to the
``callbacks.due`` topic for the outbound dialer EXACTLY ONCE (as a ``read_committed`` consumer sees
the topic), also across crashes, restarts and several replicas, and marked ``dispatched`` with
where its record landed (migrations 0007, 0011).

**One dispatcher at a time.** Every replica (and worker 0 of each) runs :class:`Dispatcher`; the one
that holds the session-level Postgres advisory lock ``(LOCK_CLASS, hashtext(schema/topic))`` on
its own connection dispatches, the others poll for the lock and stand by. All of them share ONE
Kafka transactional id (``LUPITA_CONTEXT_API_CALLBACKS_TRANSACTIONAL_ID``, by default derived from
the topic). A new holder starts its transactional producer after taking the lock; starting it
(InitProducerId, ``init_transactions`` in Kafka's terms) fences every earlier producer of that id —
a crashed or cut-off holder can no longer commit — and completes or aborts its open transaction.
Every Postgres write of a round goes through the lock's connection: a holder that lost the
connection lost the lock, and can change nothing in Postgres either.

**A round** (:meth:`Dispatcher.run_once`, holder only):

1. *reconcile*, at the first round after taking the lock and only when rows are ``dispatching``
   (a round that did not finish; a failed round always lets the lock go): read
   ``callbacks.due`` ``read_committed`` from ``callbacks_due_offsets`` to the end, mark the rows
   whose records are there ``dispatched`` (that record's partition, offset and ``published_at``),
   advance the offsets; the ``dispatching`` rows not found were never committed to Kafka;
2. *claim*, committed at once: up to ``batch_size`` rows — the ``dispatching`` ones left by step
   1, then due ``pending`` ones oldest first — become ``dispatching`` (``FOR UPDATE SKIP LOCKED``: a
   cancel in progress is passed over; a cancel after this finds them "not pending");
3. *publish*: one Kafka transaction with one record per row; commit it;
4. *mark*: one Postgres transaction: the rows ``dispatched`` with partition, offset and
   ``published_at``; ``callbacks_due_offsets`` past the records.

What each failure leaves:

- Kafka unreachable or a send not acked (before step 3's commit was asked): the transaction is
  aborted (or, unreachable, aborted by the next holder's fencing), the rows go back to
  ``pending``; nothing is visible to a ``read_committed`` reader, nothing marked; retried.
- The commit's outcome unknown (no answer in time), a crash or a lost Postgres connection after
  it: the rows stay ``dispatching`` and the next round (the next holder after a crash) reconciles —
  the record that was committed is found and marked, never sent twice; one that was not is sent.
- A crash before the Kafka commit: the next holder's producer start aborts the open transaction;
  its records are never visible to ``read_committed``; reconcile finds nothing and the rows are
  sent once, by the next holder.

After any failure the dispatcher drops its producer and its lock (another replica may take over),
and the service loop backs off. Every Kafka wait is bounded by
``callbacks_publish_timeout_seconds``; Postgres statements by ``context_api_db_timeout_ms``.

Consumers of ``callbacks.due`` must read with ``isolation.level=read_committed`` (a
``read_uncommitted`` reader also sees aborted records). ``callback_id`` stays the record key.

The record (JSON, key = the callback id as text; no phone number, no person data besides the
opaque person id the JSON API uses)::

    {"schema": "lupita.callback_due.v1", "callback_id": 17, "person_id": "<64 hex>",
     "scheduled_for": "...+00:00", "reason": "...", "call_id": "..." | null, "published_at": "..."}
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import psycopg

from context_api import metrics
from context_api.settings import ContextApiSettings
from context_api.store import StoreUnavailable
from lupita.topics import CALLBACKS_DUE

log = logging.getLogger("context_api")

SCHEMA = "lupita.callback_due.v1"

# pg_try_advisory_lock(class, hashtext(schema || '/' || topic)): the dispatcher of one schema and topic
LOCK_CLASS = 0x6C757064  # 'lupd'
_TRY_LOCK = "SELECT pg_try_advisory_lock(%s, hashtext(current_schema() || '/' || %s))"

_IN_DOUBT = "SELECT EXISTS (SELECT 1 FROM scheduled_callbacks WHERE status = 'dispatching')"
_CLAIM = """
UPDATE scheduled_callbacks SET status = 'dispatching', updated_at = now()
WHERE id IN (SELECT id FROM scheduled_callbacks
             WHERE status = 'dispatching' OR (status = 'pending' AND scheduled_for <= now())
             ORDER BY status = 'dispatching' DESC, scheduled_for, id LIMIT %s
             FOR UPDATE SKIP LOCKED)
  AND status IN ('pending', 'dispatching')
RETURNING id, phone_number_hash, scheduled_for, reason, call_id
"""
_UNCLAIM = """
UPDATE scheduled_callbacks SET status = 'pending', updated_at = now()
WHERE id = ANY(%s) AND status = 'dispatching'
"""
_MARK = """
UPDATE scheduled_callbacks SET status = 'dispatched', published_at = %s, kafka_partition = %s,
    kafka_offset = %s, updated_at = now()
WHERE id = %s AND status IN ('dispatching', 'pending')
"""
_OFFSETS = "SELECT kafka_partition, next_offset FROM callbacks_due_offsets WHERE topic = %s"
_ADVANCE = """
INSERT INTO callbacks_due_offsets (topic, kafka_partition, next_offset) VALUES (%s, %s, %s)
ON CONFLICT (topic, kafka_partition) DO UPDATE
SET next_offset = GREATEST(callbacks_due_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()
WHERE EXCLUDED.next_offset > callbacks_due_offsets.next_offset
"""
_BACKLOG = """
SELECT count(*) FROM scheduled_callbacks
WHERE (status = 'pending' AND scheduled_for <= now()) OR status = 'dispatching'
"""

Hook = Callable[[list["Published"]], Awaitable[None] | None]


class KafkaUnavailable(RuntimeError):
    """The broker could not be reached, did not ack, or did not confirm a commit in time; the rows
    concerned are not marked (pending again, or dispatching until the next reconcile)."""


@dataclass(frozen=True)
class Published:
    callback_id: int
    partition: int
    offset: int


def record(row: tuple, published_at: datetime) -> bytes:
    """The ``callbacks.due`` value of one claimed row."""
    callback_id, person, scheduled_for, reason, call_id = row
    return json.dumps({
        "schema": SCHEMA, "callback_id": callback_id, "person_id": person,
        "scheduled_for": scheduled_for.isoformat(), "reason": reason, "call_id": call_id,
        "published_at": published_at.isoformat(),
    }, ensure_ascii=False, separators=(",", ":")).encode()


def transactional_id(settings: ContextApiSettings) -> str:
    """The Kafka transactional id every dispatcher of this topic shares."""
    return (settings.context_api_callbacks_transactional_id
            or f"lupita-context-api-callbacks.{settings.topic(CALLBACKS_DUE)}")


async def _call(hook: Hook | None, published: list[Published]) -> None:
    if hook is not None:
        result = hook(published)
        if inspect.isawaitable(result):
            await result


class Dispatcher:
    """Publishes due callbacks, one batch per ``await`` :meth:`run_once`, while it holds the lock.

    Hooks (``None`` in the service; the tests kill a process in them): ``before_commit`` with the
    records sent in the open Kafka transaction, before it is committed; ``after_ack`` with the
    committed records, before the rows are marked. It works on its own Postgres connection, the
    one that holds the lock (not the service's pool).
    """

    def __init__(self, settings: ContextApiSettings, *,
                 after_ack: Hook | None = None, before_commit: Hook | None = None) -> None:
        self.settings = settings
        self.topic = settings.topic(CALLBACKS_DUE)
        self.transactional_id = transactional_id(settings)
        self.after_ack = after_ack
        self.before_commit = before_commit
        self.timeout = settings.context_api_callbacks_publish_timeout_seconds
        self._conn: psycopg.AsyncConnection | None = None
        self._holding = False
        self._in_doubt_checked = False  # since the lock was taken
        self._standby_logged = False
        self._producer: Any = None
        self._topic_ready = False
        self._closed = False
        self._round_lock: asyncio.Lock | None = None
        self.reconciled = 0  # rows marked by reconciles of this dispatcher (the tests read it)

    @property
    def holder(self) -> bool:
        """Whether this dispatcher held the lock at its last round."""
        return self._holder

    @property
    def _holder(self) -> bool:
        return self._holding

    @_holder.setter
    def _holder(self, holding: bool) -> None:
        if holding != self._holding:
            metrics.CALLBACKS_HOLDER.inc(1 if holding else -1)
        self._holding = holding

    # -- Postgres: the lock's connection ----------------------------------------------------------

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            self._conn, self._holder = None, False
            dsn = self.settings.postgres_dsn.get_secret_value()
            timeout_ms = self.settings.context_api_db_timeout_ms
            given = psycopg.conninfo.conninfo_to_dict(dsn).get("options") or ""
            try:
                self._conn = await psycopg.AsyncConnection.connect(
                    dsn, autocommit=True, connect_timeout=max(1, round(timeout_ms / 1000)),
                    options=f"{given} -c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}".strip(),
                    application_name="lupita-context-api-callbacks")
            except psycopg.Error as exc:
                raise StoreUnavailable(f"postgres unreachable ({type(exc).__name__})") from None
        return self._conn

    async def _lock(self) -> psycopg.AsyncConnection | None:
        """The lock's connection, or ``None`` while another dispatcher holds the lock."""
        conn = await self._connection()
        if not self._holder:
            got = (await (await conn.execute(_TRY_LOCK, (LOCK_CLASS, self.topic))).fetchone())[0]
            if not got:
                if not self._standby_logged:
                    self._standby_logged = True
                    log.info("callbacks dispatcher standing by", extra={"stage": "callbacks", "topic": self.topic})
                return None
            self._holder, self._standby_logged, self._in_doubt_checked = True, False, False
            await self._drop_producer()  # a new holder fences its predecessors with a fresh producer
            log.info("callbacks dispatcher holds the lock", extra={"stage": "callbacks", "topic": self.topic})
        return conn

    # -- Kafka ------------------------------------------------------------------------------------

    async def _kafka(self) -> Any:
        if self._producer is None:
            from aiokafka import AIOKafkaProducer
            from aiokafka.errors import KafkaError

            producer = AIOKafkaProducer(
                bootstrap_servers=self.settings.kafka_bootstrap, client_id="lupita-context-api-callbacks",
                transactional_id=self.transactional_id, enable_idempotence=True, acks="all", linger_ms=0,
                request_timeout_ms=int(min(self.timeout, 30) * 1000), retry_backoff_ms=200,
                # an open transaction of a holder that died with no successor is aborted after this
                transaction_timeout_ms=int(min(max(3 * self.timeout, 10), 900) * 1000))
            try:
                # InitProducerId: fences the earlier producers of this id, ends their open transaction
                await asyncio.wait_for(producer.start(), self.timeout)
            except (KafkaError, OSError, asyncio.TimeoutError) as exc:
                await self._stop(producer)
                raise KafkaUnavailable(f"kafka unreachable ({type(exc).__name__})") from None
            self._producer = producer
            if not self._topic_ready:
                from lupita.topics import ensure_topics

                try:
                    await asyncio.wait_for(asyncio.to_thread(ensure_topics, self.settings, (CALLBACKS_DUE,)),
                                           self.timeout + 30)
                except Exception as exc:  # noqa: BLE001 - kafka-python raises several kinds; retried next round
                    raise KafkaUnavailable(f"could not create {self.topic} ({type(exc).__name__})") from None
                self._topic_ready = True
        return self._producer

    async def _stop(self, client: Any) -> None:
        try:
            await asyncio.wait_for(client.stop(), self.timeout)
        except Exception:  # noqa: BLE001 - it failed already; a successor fences what it left
            pass

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._stop(producer)

    async def _reset(self) -> None:
        """After a failure: no producer, no lock (the next round starts as a new holder would)."""
        await self._drop_producer()
        conn, self._conn, self._holder = self._conn, None, False
        if conn is not None:
            try:
                await conn.close()  # the lock goes with the session
            except Exception:  # noqa: BLE001 - a broken connection is gone anyway
                pass

    # -- one round --------------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Publish at most ``batch_size`` due callbacks; returns how many this round published and
        marked (0 on a standby). Raises :class:`KafkaUnavailable`, :class:`StoreUnavailable` or
        ``psycopg.Error`` after dropping the lock: the caller backs off and calls again."""
        if self._round_lock is None:
            self._round_lock = asyncio.Lock()
        async with self._round_lock:
            if self._closed:
                return 0
            try:
                return await self._round()
            except BaseException:
                await self._reset()
                raise

    async def _round(self) -> int:
        conn = await self._lock()
        if conn is None:
            await self._backlog(await self._connection())
            return 0
        producer = await self._kafka()
        if not self._in_doubt_checked:
            # rows in doubt are left only by a round that failed, and a failed round lets the lock
            # go: once per lock taken is enough (the claim sends what the reconcile did not find)
            if (await (await conn.execute(_IN_DOUBT)).fetchone())[0]:
                await self._reconcile(conn, producer)
            self._in_doubt_checked = True
        rows = sorted(await (await conn.execute(_CLAIM, (self.settings.context_api_callbacks_batch_size,))).fetchall(),
                      key=lambda r: (r[2], r[0]))
        if not rows:
            await self._backlog(conn)
            return 0
        published, at = await self._publish(conn, producer, rows)
        await _call(self.after_ack, published)
        async with conn.transaction():
            for p in published:
                await conn.execute(_MARK, (at, p.partition, p.offset, p.callback_id))
            await self._advance(conn, {p.partition: p.offset + 1 for p in sorted(published, key=lambda p: p.offset)})
        now = datetime.now(timezone.utc)
        metrics.CALLBACKS_PUBLISHED.inc(len(published))
        for row in rows:
            metrics.CALLBACKS_LAG.observe(max((now - row[2]).total_seconds(), 0.0))
        for p in published:
            log.info("callback published", extra={"stage": "callbacks", "callback_id": p.callback_id,
                                                  "partition": p.partition, "offset": p.offset})
        await self._backlog(conn)
        return len(published)

    async def _publish(self, conn: psycopg.AsyncConnection, producer: Any,
                       rows: list[tuple]) -> tuple[list[Published], datetime]:
        """One Kafka transaction with the rows' records, committed: where each landed, and when."""
        from aiokafka.errors import KafkaError

        published_at = datetime.now(timezone.utc)
        try:
            await producer.begin_transaction()
            futures = [await producer.send(self.topic, key=str(row[0]).encode(), value=record(row, published_at))
                       for row in rows]
            metas = await asyncio.wait_for(asyncio.gather(*futures), self.timeout)
            published = [Published(row[0], m.partition, m.offset) for row, m in zip(rows, metas)]
            await _call(self.before_commit, published)
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            # not committed: invisible to read_committed readers, whatever happens to the transaction
            try:
                await asyncio.wait_for(producer.abort_transaction(), self.timeout)
            except Exception:  # noqa: BLE001 - the next holder's producer start aborts it
                pass
            try:
                await conn.execute(_UNCLAIM, ([row[0] for row in rows],))
            except psycopg.Error:  # they stay dispatching: the next round's reconcile finds nothing and sends them
                pass
            raise KafkaUnavailable(f"{len(rows)} due callbacks not acked ({type(exc).__name__})") from None
        try:
            await asyncio.wait_for(producer.commit_transaction(), self.timeout)
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            # committed or not: the rows stay dispatching, the next round's reconcile tells
            raise KafkaUnavailable(f"commit of {len(rows)} due callbacks not confirmed ({type(exc).__name__})") from None
        return published, published_at

    async def _advance(self, conn: psycopg.AsyncConnection, positions: dict[int, int]) -> None:
        for partition, position in sorted(positions.items()):
            await conn.execute(_ADVANCE, (self.topic, partition, position))

    async def _reconcile(self, conn: psycopg.AsyncConnection, producer: Any) -> int:
        """Mark the ``dispatching`` rows whose records a ``read_committed`` reader finds in the topic
        (from the stored offsets to the end); returns how many were marked."""
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.errors import KafkaError

        started = time.monotonic()
        stored = dict(await (await conn.execute(_OFFSETS, (self.topic,))).fetchall())
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap, client_id="lupita-context-api-callbacks-reconcile",
            group_id=None, enable_auto_commit=False, isolation_level="read_committed",
            auto_offset_reset="earliest", request_timeout_ms=int(min(self.timeout, 30) * 1000) + 1000)
        found: dict[int, tuple[int, int, datetime]] = {}
        try:
            partitions = await asyncio.wait_for(producer.partitions_for(self.topic), self.timeout)
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            await asyncio.wait_for(consumer.start(), self.timeout)
            consumer.assign(tps)
            for tp in tps:
                if tp.partition in stored:
                    consumer.seek(tp, stored[tp.partition])
                else:
                    await consumer.seek_to_beginning(tp)
            end = await asyncio.wait_for(consumer.end_offsets(tps), self.timeout)  # the last stable offsets
            positions = {tp: await consumer.position(tp) for tp in tps}
            progress = time.monotonic()
            while behind := [tp for tp in tps if positions[tp] < end[tp]]:
                if time.monotonic() - progress > self.timeout:
                    raise KafkaUnavailable(f"reconcile of {self.topic} made no progress in {self.timeout} s")
                batch = await consumer.getmany(*behind, timeout_ms=200)
                for tp, records in batch.items():
                    for r in records:
                        self._found(found, r)
                for tp in behind:
                    now_at = await consumer.position(tp)
                    if now_at > positions[tp]:
                        positions[tp], progress = now_at, time.monotonic()
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            raise KafkaUnavailable(f"reconcile of {self.topic} failed ({type(exc).__name__})") from None
        finally:
            await self._stop(consumer)
        marked = 0
        async with conn.transaction():
            for callback_id, (partition, offset, at) in sorted(found.items()):
                marked += (await conn.execute(_MARK, (at, partition, offset, callback_id))).rowcount
            await self._advance(conn, {tp.partition: pos for tp, pos in positions.items()})
        left = (await (await conn.execute(
            "SELECT count(*) FROM scheduled_callbacks WHERE status = 'dispatching'")).fetchone())[0]
        self.reconciled += marked
        metrics.CALLBACKS_PUBLISHED.inc(marked)
        metrics.CALLBACKS_RECONCILED.inc(marked)
        log.warning("callbacks reconciled", extra={
            "stage": "callbacks", "marked": marked, "records_read": len(found), "to_send_again": left,
            "took_ms": round((time.monotonic() - started) * 1000)})
        return marked

    @staticmethod
    def _found(found: dict[int, tuple[int, int, datetime]], r: Any) -> None:
        try:
            callback_id = int(r.key.decode())
            at = datetime.fromisoformat(json.loads(r.value)["published_at"])
        except (AttributeError, ValueError, KeyError, TypeError):
            log.warning("callbacks.due record not ours skipped", extra={
                "stage": "callbacks", "partition": r.partition, "offset": r.offset})
            return
        found.setdefault(callback_id, (r.partition, r.offset, at))  # the first copy is the one kept

    async def _backlog(self, conn: psycopg.AsyncConnection) -> int:
        n = (await (await conn.execute(_BACKLOG)).fetchone())[0]
        metrics.CALLBACKS_BACKLOG.set(n)
        return n

    async def backlog(self) -> int:
        """Due callbacks not yet marked dispatched (pending or in doubt)."""
        return await self._backlog(await self._connection())

    async def aclose(self) -> None:
        """Stop: waits for a round in flight, then drops the producer and the lock."""
        if self._round_lock is None:
            self._round_lock = asyncio.Lock()
        async with self._round_lock:
            self._closed = True
            await self._reset()

    def close(self) -> None:
        """The service's synchronous stop, after :func:`dispatch_callbacks` ended (which closed the
        dispatcher in its own loop): only marks it closed."""
        self._closed = True
        if self._conn is not None or self._producer is not None:
            log.warning("callbacks dispatcher closed while open", extra={"stage": "callbacks"})


async def dispatch_callbacks(dispatcher: Dispatcher) -> None:
    """The service's loop: rounds back to back while full batches come, else every poll interval
    (a standby polls for the lock at the same pace); after a failure, an exponential back-off with
    jitter up to ``callbacks_backoff_max_seconds``. Cancel the task to stop it: the round in flight
    ends first (each of its waits is bounded), then the dispatcher is closed (lock released)."""
    settings = dispatcher.settings
    poll = settings.context_api_callbacks_poll_interval_seconds
    failures = 0
    try:
        while True:
            current = asyncio.ensure_future(dispatcher.run_once())
            try:
                n = await asyncio.shield(current)
                failures = 0
                if n >= settings.context_api_callbacks_batch_size:
                    continue  # more may be due: no wait
                delay = poll
            except asyncio.CancelledError:
                await asyncio.gather(current, return_exceptions=True)
                raise
            except (KafkaUnavailable, StoreUnavailable, psycopg.Error) as exc:
                failures += 1
                reason = "kafka" if isinstance(exc, KafkaUnavailable) else "store"
                metrics.CALLBACKS_RETRIES.labels(reason).inc()
                delay = min(settings.context_api_callbacks_backoff_max_seconds, poll * 2 ** min(failures, 16))
                delay *= random.uniform(0.5, 1.0)
                log.warning("callbacks round failed", extra={
                    "stage": "callbacks", "reason": reason, "error": exc.__class__.__name__,
                    "detail": str(exc) if reason == "kafka" else None, "retry_in_s": round(delay, 2)})
            await asyncio.sleep(delay)  # the poll schedule / back-off itself, not a wait for an event
    finally:
        await dispatcher.aclose()
