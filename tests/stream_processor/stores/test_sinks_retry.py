"""Retry helper of the sinks (pure: fake clock and sleep) and the transient / permanent
classification of real Postgres and Weaviate client errors."""

from __future__ import annotations

import random
import socket
import threading

import httpx
import psycopg
import pytest
from weaviate.exceptions import (
    UnexpectedStatusCodeError,
    WeaviateBatchError,
    WeaviateConnectionError,
    WeaviateInsertManyAllFailedError,
    WeaviateQueryError,
)

from stream_processor.stores import postgres as postgres_sink
from stream_processor.stores import weaviate as weaviate_sink
from stream_processor.stores.retry import (
    RetryPolicy,
    SinkRejected,
    SinkUnavailable,
    Stopped,
    retry_call,
)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


class Flaky:
    """Fails ``failures`` times with ``error``, then returns "ok"; counts the calls."""

    def __init__(self, failures: int, error: BaseException) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


def run(fn, policy, t: FakeTime, transient=lambda e: isinstance(e, ConnectionError), **kw):
    return retry_call(
        fn, policy=policy, is_transient=transient, store="teststore", operation="op",
        sleep=t.sleep, clock=t.clock, rng=random.Random(7), **kw,
    )


def test_transient_errors_are_retried_until_success_with_growing_waits():
    t = FakeTime()
    fn = Flaky(3, ConnectionError("refused"))
    policy = RetryPolicy(max_attempts=5, max_elapsed_s=100, initial_delay_s=1, max_delay_s=100, jitter=0.5)
    assert run(fn, policy, t) == "ok"
    assert fn.calls == 4
    assert len(t.sleeps) == 3
    # each wait lies within [base/2, base] of 1, 2, 4 s
    for wait, base in zip(t.sleeps, (1, 2, 4)):
        assert base / 2 <= wait <= base


def test_waits_are_capped_by_max_delay_and_jittered():
    policy = RetryPolicy(initial_delay_s=1, max_delay_s=3, multiplier=2, jitter=1.0)
    assert [policy.backoff(n) for n in (1, 2, 3, 4, 10)] == [1, 2, 3, 3, 3]
    rng = random.Random(1)
    waits = {round(policy.delay(5, rng), 6) for _ in range(20)}
    assert len(waits) > 1 and all(0 <= w <= 3 for w in waits)


def test_gives_up_after_max_attempts_with_a_clear_error():
    t = FakeTime()
    fn = Flaky(100, ConnectionError("connection refused"))
    seen = []
    policy = RetryPolicy(max_attempts=4, max_elapsed_s=1000, initial_delay_s=0.1)
    with pytest.raises(SinkUnavailable) as info:
        run(fn, policy, t, on_retry=lambda n, d, e: seen.append(n))
    err = info.value
    assert fn.calls == 4 and err.attempts == 4 and seen == [1, 2, 3]
    assert isinstance(err.__cause__, ConnectionError)
    text = str(err)
    assert "teststore op" in text and "4 attempt(s)" in text and "max 4 attempts" in text
    assert "ConnectionError: connection refused" in text


def test_never_waits_past_max_elapsed():
    t = FakeTime()
    fn = Flaky(100, ConnectionError("down"))
    policy = RetryPolicy(max_attempts=100, max_elapsed_s=5, initial_delay_s=1, max_delay_s=100, jitter=0)
    with pytest.raises(SinkUnavailable) as info:
        run(fn, policy, t)
    # waits 1 + 2 = 3 s; the next (4 s) would end at 7 s > 5 s: give up after 3 attempts
    assert t.sleeps == [1, 2]
    assert info.value.attempts == 3 and "max 5 s elapsed" in str(info.value)
    assert t.now <= 5


def test_permanent_errors_are_not_retried():
    t = FakeTime()
    fn = Flaky(1, ValueError("bad row"))
    with pytest.raises(SinkRejected) as info:
        run(fn, RetryPolicy(max_attempts=5), t)
    assert fn.calls == 1 and t.sleeps == []
    assert isinstance(info.value.__cause__, ValueError)
    assert "permanent error, not retried" in str(info.value)


def test_a_stop_event_ends_the_wait():
    stop = threading.Event()
    stop.set()
    fn = Flaky(5, ConnectionError("down"))
    with pytest.raises(Stopped):
        retry_call(
            fn, policy=RetryPolicy(initial_delay_s=60, max_elapsed_s=600), store="s", operation="o",
            is_transient=lambda e: True, stop=stop,
        )
    assert fn.calls == 1


def test_policy_rejects_nonsense():
    for bad in ({"max_attempts": 0}, {"multiplier": 0.5}, {"jitter": 2}, {"max_elapsed_s": -1}):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)


# -- classification of real client errors ------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_postgres_connection_refused_is_transient():
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(f"postgresql://nobody@127.0.0.1:{closed_port()}/x", connect_timeout=2)
    assert postgres_sink.is_transient(info.value)


@pytest.mark.parametrize(
    "error, transient",
    [
        (psycopg.errors.UniqueViolation("dup"), False),  # IntegrityError
        (psycopg.errors.CheckViolation("check"), False),
        (psycopg.errors.InvalidTextRepresentation("bad"), False),  # DataError
        (psycopg.errors.UndefinedTable("no table"), False),  # ProgrammingError
        (psycopg.errors.InvalidPassword("auth"), False),  # OperationalError, class 28
        (psycopg.errors.InvalidCatalogName("no db"), False),  # OperationalError, class 3D
        (psycopg.errors.DeadlockDetected("deadlock"), True),
        (psycopg.errors.SerializationFailure("race"), True),
        (psycopg.errors.AdminShutdown("restart"), True),
        (psycopg.errors.QueryCanceled("timeout"), True),
        (psycopg.InterfaceError("the connection is closed"), True),
        (ValueError("x"), False),
    ],
)
def test_postgres_error_classes(error, transient):
    assert postgres_sink.is_transient(error) is transient


def _http_error(code: int) -> UnexpectedStatusCodeError:
    req = httpx.Request("POST", "http://127.0.0.1/v1/objects")
    return UnexpectedStatusCodeError("Object was not added", httpx.Response(code, json={"error": []}, request=req))


@pytest.mark.parametrize(
    "error, transient",
    [
        (_http_error(422), False),
        (_http_error(400), False),
        (_http_error(404), False),
        (_http_error(500), True),
        (_http_error(503), True),
        (_http_error(429), True),
        (WeaviateConnectionError("refused"), True),
        (WeaviateQueryError("<_InactiveRpcError StatusCode.UNAVAILABLE>", "GRPC search"), True),
        (WeaviateQueryError("no such prop with name 'x' found in class", "GRPC search"), False),
        # Weaviate restarting under a batch write (the fault suite's weaviate-outage): try again
        (WeaviateBatchError("Query call with protocol GRPC batch failed with message Channel closed!"), True),
        (WeaviateInsertManyAllFailedError("vector dimensions do not match the index dimensions"), False),
        (ValueError("x"), False),
    ],
)
def test_weaviate_error_classes(error, transient):
    assert weaviate_sink.is_transient(error) is transient
