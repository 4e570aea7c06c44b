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
