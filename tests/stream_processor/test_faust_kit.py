"""The shared Faust plumbing's pure parts: deliveries retried on broker errors (never given up
unless told), control commands refused precisely."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
from prometheus_client import REGISTRY

from stream_processor import faust_kit, records
from stream_processor.retry import RetryPolicy

FAST = RetryPolicy(max_attempts=None, max_elapsed_s=None, initial_delay_s=0.0, max_delay_s=0.0)


def retries(stage: str, what: str) -> float:
    return REGISTRY.get_sample_value("lupita_stream_broker_retries_total", {"stage": stage, "what": what}) or 0.0


def test_a_delivery_is_tried_again_after_broker_errors_until_the_broker_has_it():
    calls = []

    async def attempt():
        calls.append(1)
        if len(calls) == 1:
            raise KafkaConnectionError("broker down")
        if len(calls) == 2:
            raise KafkaTimeoutError()
        return "offset-7"

    before = retries("test", "alert")
    got = asyncio.run(faust_kit.deliver(attempt, stage="test", what="alert", call_id="c-1", policy=FAST))
    assert got == "offset-7" and len(calls) == 3
    assert retries("test", "alert") - before == 2


def test_a_delivery_is_abandoned_only_when_stopped_and_then_says_so():
    calls = []
    stop = {"now": False}

    async def attempt():
        calls.append(1)
        if len(calls) == 3:
            stop["now"] = True  # e.g. the partition was revoked meanwhile
        raise KafkaConnectionError("broker down")

    with pytest.raises(faust_kit.Abandoned, match="delivery of segments abandoned"):
        asyncio.run(faust_kit.deliver(attempt, stage="test", what="segments", stopped=lambda: stop["now"],
                                      policy=FAST))
    assert len(calls) == 3


def test_an_error_that_is_not_the_brokers_is_raised_at_once():
    calls = []

    async def attempt():
        calls.append(1)
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        asyncio.run(faust_kit.deliver(attempt, stage="test", what="x", policy=FAST))
    assert len(calls) == 1


def test_the_broker_policy_never_gives_up_and_waits_at_most_ten_seconds():
    p = faust_kit.BROKER_RETRY
    assert p.max_attempts is None and p.max_elapsed_s is None
    assert p.delay(1) <= 0.2 and max(p.delay(n) for n in range(1, 200)) <= 10.0


@pytest.mark.parametrize("key, value, reason, match", [
    (b"c-1", b"not json", "invalid", "not a vad command"),
    (b"c-1", json.dumps({"cmd": "check"}).encode(), "invalid", "not a vad command"),
    (b"c-2", json.dumps({"cmd": "check", "call_id": "c-1"}).encode(), "invalid_call_id", "key/call_id"),
    (b"bad id", json.dumps({"cmd": "check", "call_id": "bad id"}).encode(), "invalid_call_id", "key/call_id"),
    (b"c-1", json.dumps({"cmd": "purge-all", "call_id": "c-1"}).encode(), "invalid", "is not one of"),
])
def test_a_control_record_that_is_not_a_command_is_refused_with_its_reason(key, value, reason, match):
    with pytest.raises(records.BadRecord, match=match) as info:
        faust_kit.parse_command(key, value, allowed=("check",), stage="vad")
    assert info.value.reason == reason


def test_a_control_command_round_trips():
    cmd = faust_kit.parse_command(b"c-1", json.dumps({"cmd": "done", "call_id": "c-1", "outcome": {"a": 1}}).encode(),
                                  allowed=("check", "done"), stage="recorder")
    assert cmd == {"cmd": "done", "call_id": "c-1", "outcome": {"a": 1}}


# -- table changes: a record is acknowledged only once its table changes are on the broker -------------


class _Table:
    """The two things the tracker uses of a Faust table: its store and its changelog send (each
    send is a future the test resolves as the broker would)."""

    def __init__(self, tracker: faust_kit.ChangeTracker) -> None:
        self.tracker = tracker
        self.data: dict[str, object] = {}
        self.sent: list[tuple[str, object, asyncio.Future]] = []

    def send_changelog(self, partition, key, value, key_serializer=None, value_serializer=None):
        fut = asyncio.get_running_loop().create_future()
        self.sent.append((key, value, fut))
        self.tracker.track(fut, self, key, partition, self.event)
        return fut

    event = None  # the record being processed (Faust's current event)

    def write(self, key, value, event=None):
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value
        self.event = event
        try:
            return self.send_changelog(0, key, value)
        finally:
            self.event = None


class _Event:
    def __init__(self, app):
        self.app = app
        self.acked = asyncio.Event()

    def ack(self):
        self.acked.set()


class _App:
    pass


def test_a_record_is_acknowledged_only_after_the_broker_has_its_table_changes():
    async def main():
        app = _App()
        tracker = faust_kit.changes(app)
        table = _Table(tracker)
        event, other = _Event(app), _Event(app)
        table.write("call-2", {"v": 0}, other)  # another record's change, still in flight
        table.write("call-1", {"v": 1}, event)
        faust_kit.acknowledge(event, stage="test")
        await asyncio.sleep(0)
        assert not event.acked.is_set()  # its change is still in flight
        table.sent[1][2].set_result("offset-1")
        await asyncio.wait_for(event.acked.wait(), 5)  # the other record's change is not waited for
        assert not other.acked.is_set()
        # a record whose changes are all on the broker is acknowledged at once
        table.sent[0][2].set_result("offset-0")
        await asyncio.sleep(0)
        faust_kit.acknowledge(other, stage="test")
        later = _Event(app)
        faust_kit.acknowledge(later, stage="test")
        assert other.acked.is_set() and later.acked.is_set() and not tracker.pending

    asyncio.run(main())


def test_a_change_the_broker_refused_is_sent_again_with_the_current_value_and_counted():
    async def main():
        app = _App()
        tracker = faust_kit.changes(app)
        table = _Table(tracker)
        old = table.write("call-1", {"v": 1})
        newer = table.write("call-1", {"v": 2})
        gone = table.write("call-2", "x")
        table.write("call-2", None)  # deleted since
        before = retries("test", "changelog")
        waiter = asyncio.ensure_future(tracker.delivered(list(tracker.pending), stage="test", policy=FAST))
        second = asyncio.ensure_future(tracker.delivered(list(tracker.pending), stage="test", policy=FAST))
        old.set_exception(KafkaTimeoutError())
        gone.set_exception(KafkaConnectionError("down"))
        newer.set_result("ok")
        table.sent[3][2].set_result("ok")
        for _ in range(50):  # until both failed changes were sent again
            await asyncio.sleep(0)
            if len(table.sent) == 6:
                break
        assert [(k, v) for k, v, _ in table.sent[4:]] == [("call-1", {"v": 2}), ("call-2", None)]
        assert not waiter.done()  # the new sends are not confirmed yet
        for _, _, fut in table.sent[4:]:
            fut.set_result("ok")
        await asyncio.wait_for(asyncio.gather(waiter, second), 5)
        assert len(table.sent) == 6  # both waiters saw the failures: each change was sent again once
        assert retries("test", "changelog") - before == 4  # 2 failed changes, counted by each waiter
        assert not tracker.pending

    asyncio.run(main())


def test_waiting_for_table_changes_is_abandoned_when_stopped():
    async def main():
        app = _App()
        tracker = faust_kit.changes(app)
        table = _Table(tracker)
        fut = table.write("call-1", 1)
        fut.set_exception(KafkaTimeoutError())
        with pytest.raises(faust_kit.Abandoned, match="table changes abandoned"):
            await tracker.delivered([fut], stage="test", stopped=lambda: True, policy=FAST)

    asyncio.run(main())
