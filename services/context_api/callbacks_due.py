"""The callbacks dispatcher: every due ``pending`` row of ``scheduled_callbacks`` is published to the
``callbacks.due`` topic for the outbound dialer, and marked ``dispatched`` with where it landed.

One round (:meth:`Dispatcher.run_once`), in ONE Postgres transaction:

1. claim at most ``batch_size`` due pending rows, oldest first, ``FOR UPDATE SKIP LOCKED`` — another
   replica's round skips the rows this one holds, and a cancel (``UPDATE … WHERE status = 'pending'``)
   waits for the round and then finds the row no longer pending;
2. publish one record per row (idempotent producer, ``acks=all``) and wait for the broker's acks;
3. mark each ACKED row ``dispatched`` with ``published_at`` and the record's partition/offset;
4. commit. A row whose record was not acked stays pending (the round reports a Kafka failure and
   the loop backs off): a Kafka outage never marks a row.

Guarantee (at-least-once with a dedupe key, exactly-once in effect for a dialer that dedupes):
two dispatchers never publish the same row from two rounds that overlap (the row lock), and a
row is marked only after its record is acked. The one window is a crash (or lost Postgres
connection) after the ack and before the commit: the lock goes with the connection, the row is
pending again, and the next round publishes it again — the same ``callback_id`` and fields, with a
later ``published_at``. The same happens when an ack is not seen in time (publish timeout) though
the broker did write the record. The dialer must therefore treat ``callback_id`` (also the record
key) as its idempotency key; the row's ``kafka_partition``/``kafka_offset`` name the copy kept. Kafka transactions would not close this window: the Postgres commit and the
Kafka commit are still two commits, one of which can be lost between them.

The record (JSON, key = the callback id as text; no phone number, no person data besides the
opaque person id the JSON API uses)::

    {"schema": "lupita.callback_due.v1", "callback_id": 17, "person_id": "<64 hex>",
     "scheduled_for": "...+00:00", "reason": "...", "call_id": "..." | null, "published_at": "..."}
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import psycopg

from context_api import metrics
from context_api.settings import ContextApiSettings
from context_api.store import Pool, StoreUnavailable
from lupita.topics import CALLBACKS_DUE

log = logging.getLogger("context_api")

SCHEMA = "lupita.callback_due.v1"

_CLAIM = """
SELECT id, phone_number_hash, scheduled_for, reason, call_id FROM scheduled_callbacks
WHERE status = 'pending' AND scheduled_for <= now()
ORDER BY scheduled_for, id LIMIT %s
FOR UPDATE SKIP LOCKED
"""
_MARK = """
UPDATE scheduled_callbacks SET status = 'dispatched', published_at = %s, kafka_partition = %s,
    kafka_offset = %s, updated_at = now()
WHERE id = %s AND status = 'pending'
"""
_BACKLOG = "SELECT count(*) FROM scheduled_callbacks WHERE status = 'pending' AND scheduled_for <= now()"


class KafkaUnavailable(RuntimeError):
    """The broker did not ack (or could not be reached); the rows concerned stay pending."""


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


class Dispatcher:
    """Publishes due callbacks, one batch per :meth:`run_once` (blocking: run it in a thread).

    ``after_ack`` is called with the acked records before the rows are marked and committed — the
    place where a crash republishes (the tests kill a process there); ``None`` in the service.
    """

    def __init__(self, settings: ContextApiSettings, pool: Pool, *,
                 after_ack: Callable[[list[Published]], None] | None = None) -> None:
        self.settings = settings
        self.pool = pool
        self.topic = settings.topic(CALLBACKS_DUE)
        self.after_ack = after_ack
        self._producer: Any = None
        self._lock = threading.Lock()  # one round at a time; close() waits for it

    # -- Kafka ------------------------------------------------------------------------------------

    def _kafka(self) -> Any:
        if self._producer is None:
            from kafka import KafkaProducer
            from kafka.errors import KafkaError

            timeout_ms = int(self.settings.context_api_callbacks_publish_timeout_seconds * 1000)
            try:
                self._producer = KafkaProducer(
                    bootstrap_servers=self.settings.kafka_bootstrap, client_id="lupita-context-api-callbacks",
                    acks="all", enable_idempotence=True, linger_ms=0, max_block_ms=timeout_ms,
                    bootstrap_timeout_ms=timeout_ms,
                    request_timeout_ms=min(timeout_ms, 30000), retry_backoff_ms=200)
            except KafkaError as exc:
                raise KafkaUnavailable(f"kafka unreachable ({type(exc).__name__})") from None
        return self._producer

    def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=1)
            except Exception:  # noqa: BLE001 - it failed already; a new one is made next round
                pass

    def ensure_topic(self) -> None:
        from lupita.topics import ensure_topics

        with self._lock:
            # the producer first: it gives up after the publish timeout when the broker is down,
            # where the admin client would wait its fixed 30 s
            self._kafka()
        try:
            ensure_topics(self.settings, (CALLBACKS_DUE,))
        except Exception as exc:  # noqa: BLE001 - kafka-python raises several kinds; retried next round
            raise KafkaUnavailable(f"could not create {self.topic} ({type(exc).__name__})") from None

    # -- one round --------------------------------------------------------------------------------

    def run_once(self) -> int:
        """Publish at most ``batch_size`` due callbacks; returns how many were published and marked.

        Raises :class:`KafkaUnavailable` (after committing the rows that were acked) or
        :class:`StoreUnavailable` / ``psycopg.Error``: the caller backs off and calls again.
        """
        with self._lock:
            return self._round()

    def _round(self) -> int:
        from kafka.errors import KafkaError

        timeout = self.settings.context_api_callbacks_publish_timeout_seconds
        failure: str | None = None
        acked: list[Published] = []
        lags: list[float] = []
        with self.pool.connection(self.settings.context_api_db_timeout_ms / 1000) as conn:
            with conn.transaction():
                rows = conn.execute(_CLAIM, (self.settings.context_api_callbacks_batch_size,)).fetchall()
                if not rows:  # due rows may still exist, held by another replica's round
                    metrics.CALLBACKS_BACKLOG.set(conn.execute(_BACKLOG).fetchone()[0])
                    return 0
                published_at = datetime.now(timezone.utc)
                sent: list[tuple[tuple, Any]] = []
                try:
                    producer = self._kafka()
                    for row in rows:
                        sent.append((row, producer.send(self.topic, key=str(row[0]).encode(),
                                                        value=record(row, published_at))))
                except KafkaError as exc:  # metadata not had in time: nothing of the rest is sent
                    failure = type(exc).__name__
                except KafkaUnavailable as exc:
                    failure = str(exc)
                for row, future in sent:
                    try:
                        meta = future.get(timeout=timeout)
                    except KafkaError as exc:
                        failure = failure or type(exc).__name__
                        continue
                    acked.append(Published(row[0], meta.partition, meta.offset))
                    lags.append((datetime.now(timezone.utc) - row[2]).total_seconds())
                if failure is not None:
                    self._drop_producer()
                if self.after_ack is not None and acked:
                    self.after_ack(acked)
                for p in acked:
                    conn.execute(_MARK, (published_at, p.partition, p.offset, p.callback_id))
            backlog = conn.execute(_BACKLOG).fetchone()[0]
        metrics.CALLBACKS_BACKLOG.set(backlog)
        metrics.CALLBACKS_PUBLISHED.inc(len(acked))
        for lag in lags:
            metrics.CALLBACKS_LAG.observe(max(lag, 0.0))
        for p in acked:
            log.info("callback published", extra={"stage": "callbacks", "callback_id": p.callback_id,
                                                  "partition": p.partition, "offset": p.offset})
        if failure is not None:
            raise KafkaUnavailable(f"{len(rows) - len(acked)} of {len(rows)} due callbacks not acked ({failure})")
        return len(acked)

    def backlog(self) -> int:
        with self.pool.connection(self.settings.context_api_db_timeout_ms / 1000) as conn:
            n = conn.execute(_BACKLOG).fetchone()[0]
        metrics.CALLBACKS_BACKLOG.set(n)
        return n

    def close(self) -> None:
        with self._lock:
            self._drop_producer()


async def dispatch_callbacks(dispatcher: Dispatcher) -> None:
    """The service's loop: rounds back to back while full batches come, else every poll interval;
    after a failure, an exponential back-off with jitter up to ``callbacks_backoff_max_seconds``
    (the rows stay pending meanwhile). Cancel the task to stop it; then :meth:`Dispatcher.close`."""
    settings = dispatcher.settings
    poll = settings.context_api_callbacks_poll_interval_seconds
    failures = 0
    topic_ready = False
    while True:
        try:
            if not topic_ready:
                await asyncio.to_thread(dispatcher.ensure_topic)
                topic_ready = True
            n = await asyncio.to_thread(dispatcher.run_once)
            failures = 0
            if n >= settings.context_api_callbacks_batch_size:
                continue  # more may be due: no wait
            delay = poll
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
