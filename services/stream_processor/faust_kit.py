"""The Faust plumbing every stage agent shares, written once.

- :func:`build_app`: the one Faust app of a worker (consumer group = ``<topic prefix><app id>``,
  at-least-once, acks from every replica, table store and standby replicas from the settings);
- :class:`TrackedTable` (every ``app.Table``) and :class:`RawValueTable` (values are bytes kept as
  they are): changelog-backed tables whose every change is tracked until the broker has it;
- :func:`acknowledge` / :func:`changes_delivered`: a source record is acknowledged (its offset may
  be committed) only once every table change made so far is on the broker, and a changelog write
  the broker refused is sent again (Faust itself only logs it, and its pre-commit flush gives up
  after 0.1 s without progress: a worker killed then lost table changes of committed records);
- :func:`in_partition_of`: make a record Faust's current event while writing tables, so the
  change goes to the changelog partition of the call's own partition;
- :func:`dead_letter`: a record that cannot be used goes to the stage's dead-letter topic, as it
  was, with its reason and source in headers;
- :func:`send_command` / :func:`parse_command`: the internal control topics (keyed by call id,
  sent to the call's partition) through which timers and background work ask the agent to act,
  so every table write happens while a record of the call's own partition is processed;
- :func:`backlog_partitions`: the partitions whose source records are not all processed yet
  (a call must not be declared idle or orphaned while its records still wait in Kafka);
- :func:`timer`: a stage's periodic check (due calls, purges), run only while the worker is
  ready and the broker answers, and never allowed to die on an error (it is what ends stuck calls);
- :class:`BrokerWatch` (:func:`broker_watch`): whether the broker answers, and since when the
  worker has its partitions and the broker: a call's idle clock starts no earlier than that, so
  a broker outage (the bridge holds its calls meanwhile) or a slow start never makes calls look idle;
- :func:`track_readiness`: the worker's ``/readyz`` follows its partitions (ready once they are
  assigned and the tables recovered, not ready while they are being revoked);
- :func:`deliver`: run a delivery to Kafka (a publish, a flush) until the broker has it: a
  broker error is retried with backoff (``lupita_stream_broker_retries_total``), never turned into
  a dead letter or an acknowledgement; only ``stopped()`` (the partition was revoked, the worker
  is stopping) ends the loop, with :class:`Abandoned`, and the record it was for then stays
  unacknowledged (it is redelivered);
- :func:`publish`: one record to a topic, waiting for the broker's acknowledgement.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeVar

import faust
from aiokafka.errors import KafkaError
from faust import streams
from faust.exceptions import PartitionsMismatch, ProducerSendError
from prometheus_client import Counter

from lupita.topics import REASON_HEADER, SOURCE_HEADER
from stream_processor import records
from stream_processor.retry import RetryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")

RAW = {"key_serializer": "raw", "value_serializer": "raw"}
# A broker that is down, unreachable or electing a leader, or whose metadata the worker does not
# have right yet (a table's changelog whose partitions it has not seen: PartitionsMismatch): tried
# again, never a bad record. A mismatch that lasts (a misconfigured topic) keeps the records
# waiting, logged and counted, rather than dead-lettering every one.
BROKER_ERRORS: tuple[type[BaseException], ...] = (KafkaError, ProducerSendError, PartitionsMismatch,
                                                  asyncio.TimeoutError, OSError)


def is_broker_error(exc: BaseException) -> bool:
    return isinstance(exc, BROKER_ERRORS)
# Waits between delivery attempts: 0.2 s doubling to 10 s, for as long as it takes.
BROKER_RETRY = RetryPolicy(max_attempts=None, max_elapsed_s=None, initial_delay_s=0.2, max_delay_s=10.0)

TIMER_ERRORS = Counter("lupita_stream_timer_errors_total", "Timer passes that failed (and were retried at the next tick)",
                       ["stage"])
DEAD_LETTERS = Counter(
    "lupita_stream_dead_letters_total",
    "Records put on a stage's dead-letter topic, by stage and reason",
    ["stage", "reason"],
)
BROKER_RETRIES = Counter(
    "lupita_stream_broker_retries_total",
    "Deliveries to Kafka tried again after a broker error, by stage and what was delivered",
    ["stage", "what"],
)


class Abandoned(Exception):
    """A delivery was given up because ``stopped()`` said so (partition revoked, worker
    stopping): the record it was for must stay unacknowledged."""


def build_app(settings: Any) -> faust.App:
    """The worker's Faust app from its :class:`~stream_processor.settings.WorkerSettings`."""
    return faust.App(
        settings.faust_app_id,
        Table=TrackedTable,
        broker=[f"kafka://{h.strip()}" for h in settings.kafka_bootstrap.split(",") if h.strip()],
        store=settings.table_store,
        datadir=str(settings.data_dir),
        autodiscover=False,
        web_enabled=False,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        table_standby_replicas=settings.table_standby_replicas,
        broker_session_timeout=settings.kafka_session_timeout_seconds,
        broker_heartbeat_interval=settings.kafka_heartbeat_seconds,
        broker_rebalance_timeout=settings.kafka_rebalance_timeout_seconds,
        broker_commit_interval=settings.kafka_commit_interval_seconds,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # changelog records carry audio chunks (~1.6-3.2 KB): big batches, a short linger
        producer_max_batch_size=512 * 1024,
        producer_linger=0.005,
        processing_guarantee="at_least_once",
    )


class ChangeTracker:
    """The table changes of one app that the broker has not confirmed yet.

    Each changelog write is a future; a failed one stays here until it is sent again. Sending
    again sends the key's value as the table holds it *now* (never the failed old value, which
    could land after a newer one and leave the compacted changelog stale)."""

    SLOW_S = 30.0

    def __init__(self) -> None:
        self.pending: dict[Any, tuple[Any, Any, int | None]] = {}  # future -> (table, key, partition)
        self.resent: dict[Any, Any] = {}  # failed future -> the future of its new send
        # the record each change was made for (Faust's current event): what its acknowledgement waits for
        self.by_event: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()
        self.acks: set[asyncio.Task] = set()

    def track(self, fut: Any, table: Any, key: Any, partition: int | None, event: Any = None) -> None:
        self.pending[fut] = (table, key, partition)
        fut.add_done_callback(self._done)
        if event is not None:
            self.by_event.setdefault(event, []).append(fut)

    def _done(self, fut: Any) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self.pending.pop(fut, None)

    def _resend(self, fut: Any) -> Any:
        """The future of ``fut``'s change sent again (None: another waiter's new send of it
        already reached the broker)."""
        if fut in self.resent:  # another waiter sent it again already
            return self.resent[fut]
        if fut not in self.pending:
            return None
        table, key, partition = self.pending.pop(fut)
        try:
            value = table.data[key]
        except KeyError:  # deleted since (or the failed write was the deletion)
            new = table.send_changelog(partition, key, None, value_serializer="raw")
        else:
            new = table.send_changelog(partition, key, value)
        self.resent[fut] = new
        new.add_done_callback(lambda f, old=fut: self.resent.pop(old, None) if not f.cancelled()
                              and f.exception() is None else None)
        return new

    async def delivered(self, futures: list[Any], *, stage: str, stopped: Callable[[], bool] = lambda: False,
                        policy: RetryPolicy | None = None) -> None:
        """Return once the broker has every change in ``futures`` (failed ones are sent again with
        backoff, counted as broker retries); :class:`Abandoned` once ``stopped()``."""
        policy = policy or BROKER_RETRY
        todo, n = list(futures), 0
        while todo:
            if stopped():
                raise Abandoned(f"{stage}: table changes abandoned")
            _, waiting = await asyncio.wait(todo, timeout=self.SLOW_S)
            if waiting:  # a producer that stopped sending would hold every record: say so
                log.warning("table changes not yet confirmed by the broker; their records stay "
                            "unacknowledged", extra={"stage": stage, "changes": len(waiting),
                                                     "waited_s": self.SLOW_S})
                await asyncio.wait(todo)
            failed = [f for f in todo if f.cancelled() or f.exception() is not None]
            if not failed:
                return
            n += 1
            BROKER_RETRIES.labels(stage, "changelog").inc(len(failed))
            if n == 1 or n % 10 == 0:
                f = failed[0]
                log.warning("table changes not accepted by the broker; sent again (their records stay "
                            "unacknowledged)", extra={
                                "stage": stage, "what": "changelog", "attempt": n, "changes": len(failed),
                                "error": "cancelled" if f.cancelled() else
                                f"{type(f.exception()).__name__}: {f.exception()}"[:300]})
            await asyncio.sleep(policy.delay(n))
            todo = [new for new in map(self._resend, failed) if new is not None]


def _per_app(app: Any, attr: str, make: Callable[[], T]) -> T:
    """One ``make()`` per app, kept on the app under ``attr`` (made on first use)."""
    value = getattr(app, attr, None)
    if value is None:
        value = make()
        setattr(app, attr, value)
    return value


def changes(app: faust.App) -> ChangeTracker:
    """The app's :class:`ChangeTracker`."""
    return _per_app(app, "_lupita_changes", ChangeTracker)


class TrackedTable(faust.Table):
    """A Faust table whose changelog writes are tracked by the app's :class:`ChangeTracker`
    (:func:`build_app` makes it the class of every ``app.Table``)."""

    def send_changelog(self, partition: int | None, key: Any, value: Any, key_serializer: Any = None,
                       value_serializer: Any = None) -> Any:
        fut = super().send_changelog(partition, key, value, key_serializer, value_serializer)
        changes(self.app).track(fut, self, key, fut.message.partition, streams.current_event())
        return fut


async def changes_delivered(app: faust.App, *, stage: str, stopped: Callable[[], bool] = lambda: False) -> None:
    """Return once every table change made so far by this app is on the broker."""
    tracker = changes(app)
    await tracker.delivered(list(tracker.pending), stage=stage, stopped=stopped)


def acknowledge(event: Any, *, stage: str) -> None:
    """Acknowledge ``event`` once the table changes made for it (while it was Faust's current
    event) are on the broker: at once when none is pending, else from a task (the agent goes on).
    The changes of the records before it need not be waited for: offsets are committed only up to
    the first record not acknowledged yet, so a worker killed meanwhile redoes from there."""
    tracker = changes(event.app)
    pending = [f for f in tracker.by_event.pop(event, ()) if f in tracker.pending or f in tracker.resent]
    if not pending:
        event.ack()
        return

    async def ack_after() -> None:
        await tracker.delivered(pending, stage=stage)
        event.ack()

    task = asyncio.ensure_future(ack_after())
    tracker.acks.add(task)
    task.add_done_callback(tracker.acks.discard)


class RawValueTable(TrackedTable):
    """A table whose values are bytes stored as they are (Faust derives "json" from any type).

    The serializer must be set before the table is added to the app: that is when its
    changelog topic, which also decodes the records during recovery, is built."""

    def __init__(self, app: faust.App, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.value_serializer = "raw"


def raw_table(app: faust.App, name: str, partitions: int) -> RawValueTable:
    return app.tables.add(RawValueTable(app, name=name, key_type=str, value_type=bytes, partitions=partitions))


@contextlib.contextmanager
def in_partition_of(event: Any) -> Iterator[None]:
    """Make ``event`` Faust's current event while writing tables.

    Faust writes a table change to the changelog partition of the current event (the record
    being processed). A batch from ``take_events`` holds records of several partitions, and
    agents write after awaiting the producer or from background work, so they name the record
    of the call's partition themselves. This sets the context variable Faust's own stream
    iteration sets."""
    token = streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        streams._current_event.reset(token)


async def publish(topic: Any, key: bytes, value: bytes, **kwargs: Any) -> Any:
    """Send one record and wait until the broker has it (raises what the producer raises)."""
    fut = await topic.send(key=key, value=value, **kwargs)
    return await fut


def _never() -> bool:
    return False


async def deliver(attempt: Callable[[], Awaitable[T]], *, stage: str, what: str, call_id: str | None = None,
                  stopped: Callable[[], bool] = _never, policy: RetryPolicy = BROKER_RETRY) -> T:
    """``await attempt()`` until it succeeds; a broker error (:data:`BROKER_ERRORS`) is logged
    (the first time and every tenth), counted and tried again after the policy's wait. Raises
    :class:`Abandoned` once ``stopped()`` is true; any other error is raised as it is."""
    n = 0
    while True:
        if n and stopped():  # asked before each new try (the first always runs)
            raise Abandoned(f"{stage}: delivery of {what} abandoned")
        try:
            return await attempt()
        except BROKER_ERRORS as exc:
            n += 1
            BROKER_RETRIES.labels(stage, what).inc()
            wait = policy.delay(n)
            if n == 1 or n % 10 == 0:
                log.warning("broker unavailable; delivery tried again (the record stays unacknowledged)", extra={
                    "stage": stage, "what": what, "attempt": n, "retry_in_s": round(wait, 2),
                    **({"call_id": call_id} if call_id else {}), "error": f"{type(exc).__name__}: {exc}"[:300]})
            await asyncio.sleep(wait)


async def dead_letter(topic: Any, msg: Any, key: bytes | None, value: bytes | None, reason: str,
                      *, stage: str, stopped: Callable[[], bool] = _never) -> None:
    """Put a record that cannot be used on the dead-letter ``topic`` as it was, with its reason
    and ``topic/partition/offset`` in headers; returns once the broker has it (broker errors are
    retried: see :func:`deliver`), so the caller may then acknowledge the record."""
    headers = [
        (REASON_HEADER, reason.encode()),
        (SOURCE_HEADER, f"{msg.topic}/{msg.partition}/{msg.offset}".encode()),
    ]
    await deliver(lambda: publish(topic, key, value, headers=headers), stage=stage, what="dead_letter",
                  stopped=stopped)
    DEAD_LETTERS.labels(stage, reason).inc()


async def send_command(topic: Any, call_id: str, partition: int | None, cmd: str, **extra: Any) -> None:
    """Ask the agent (through its control topic) to act on ``call_id`` in its own partition."""
    body = json.dumps({"cmd": cmd, "call_id": call_id, **extra}).encode()
    await topic.send(key=call_id.encode(), value=body, partition=partition)


def parse_command(key: bytes | None, value: bytes | None, *, allowed: Iterable[str], stage: str) -> dict[str, Any]:
    """A control record as ``{"cmd", "call_id", ...}``; raises :class:`~.records.BadRecord`."""
    try:
        cmd = json.loads(value or b"")
        call_id = cmd["call_id"]
        kind = cmd["cmd"]
    except (ValueError, KeyError, TypeError) as exc:
        raise records.BadRecord(f"control record is not a {stage} command: {exc}", reason="invalid") from exc
    if not isinstance(call_id, str) or key != call_id.encode() or not records.is_valid_call_id(call_id):
        raise records.BadRecord("control record key/call_id invalid", reason="invalid_call_id")
    if kind not in allowed:
        raise records.BadRecord(f"control command {str(kind)[:40]!r} is not one of {sorted(allowed)}",
                                reason="invalid")
    return cmd


async def backlog_partitions(app: faust.App, processed: dict[Any, int], assigned: Iterable[Any],
                             source_topics: Iterable[str]) -> set[int]:
    """Partition numbers (of ``source_topics``) where the consumer has not yet processed
    everything the broker holds. ``processed``: last offset handled per topic-partition."""
    consumer = app.consumer
    topics = set(source_topics)
    backlog: set[int] = set()
    for tp in assigned:
        if tp.topic not in topics:
            continue
        try:
            high = consumer.highwater(tp)  # offset the next record will get
            if high is None:
                continue
            done = processed.get(tp)
            if done is None:  # nothing processed since assignment: where the fetcher stands
                position = await consumer.position(tp)
                behind = position is not None and position < high
            else:
                behind = done + 1 < high
        except Exception:  # not (or no longer) assigned: no opinion
            continue
        if behind:
            backlog.add(tp.partition)
    return backlog


class BrokerWatch:
    """Whether the broker answers a metadata request, and since when the worker has its
    partitions and the broker (``since``: the last assignment with its tables recovered, or the end
    of the last outage it saw). Probed by the timers, at most once a second."""

    PROBE_TIMEOUT_S = 5.0

    def __init__(self) -> None:
        self.since = time.time()
        self.up = True
        self._probed_at = -1e9
        self._lock = asyncio.Lock()

    async def probe(self, app: faust.App) -> bool:
        async with self._lock:
            if time.monotonic() - self._probed_at < 1.0:
                return self.up
            try:
                client = app.producer._producer.client  # aiokafka's client of the app's producer
                await asyncio.wait_for(client.fetch_all_metadata(), self.PROBE_TIMEOUT_S)
            except Exception as exc:
                if self.up:
                    log.warning("broker unreachable: idle clocks paused until it answers again", extra={
                        "stage": "broker", "error": f"{type(exc).__name__}: {exc}"[:300]})
                self.up = False
            else:
                if not self.up:
                    self.since = time.time()
                    log.info("broker answers again: idle clocks restart now", extra={"stage": "broker"})
                self.up = True
            self._probed_at = time.monotonic()
            return self.up


def broker_watch(app: faust.App) -> BrokerWatch:
    """The app's :class:`BrokerWatch`."""
    return _per_app(app, "_lupita_broker_watch", BrokerWatch)


def timer(app: faust.App, seconds: float, *, name: str, stage: str, probes: Any,
          check: Callable[[], Awaitable[None]]) -> None:
    """Run ``check()`` every ``seconds`` while the worker is ready and the broker answers
    (:class:`BrokerWatch`); an error is logged, counted and the next tick tries again."""
    watch = broker_watch(app)

    async def tick() -> None:
        if probes is not None and not probes.ready.is_set():
            return
        if not await watch.probe(app):
            return  # nothing is due while the broker is away (and no command could be sent)
        try:
            await check()
        except Exception as exc:  # the timer is what ends stuck calls: never let it die
            TIMER_ERRORS.labels(stage).inc()
            log.error("timer pass failed", extra={"stage": stage, "error": f"{type(exc).__name__}: {exc}"[:300]})

    app.timer(seconds, name=name)(tick)


def track_readiness(app: faust.App, probes: Any) -> None:
    """``probes`` ready once the partitions are assigned and the tables recovered; not ready
    from the moment partitions are revoked until the next assignment completes, nor once the
    worker is shutting down."""

    async def assigned(sender: Any, **kwargs: Any) -> None:
        # Faust sends this right before it resumes the source partitions and seeks them to their
        # committed offsets, with the flow already running (it ran for the table recovery): records
        # fetched from where the fetcher stood were handed over while the seek happened, and the
        # fetcher's read offsets then skipped the redelivered ones (a restarted vad lost chunks,
        # a restarted understanding stage saw a leg's end before its last finals, commits jumped
        # over unprocessed records). Stopped here, the flow resumes once the seek is done (Faust
        # resumes it right after), so the first record handed over is the committed one.
        app.consumer.stop_flow()
        # a call's idle clock starts again now: the time it took to start (or to take the
        # partitions over) and to recover the tables is not silence of the call
        broker_watch(app).since = time.time()
        probes.set_ready(True)
        log.info("partitions assigned and tables recovered", extra={"stage": "rebalance"})

    async def revoked(sender: Any, revoked: Any = None, **kwargs: Any) -> None:
        probes.set_ready(False)

    app.on_rebalance_complete.connect(assigned)
    app.on_partitions_revoked.connect(revoked)
    app.on_before_shutdown.connect(revoked)  # SIGTERM: no new traffic while draining
