"""``lupita bridge`` as a real child process: SIGTERM drains live calls, then it exits 0.

Also checks what only a whole process shows: the Prometheus endpoint and the JSON log lines
(which must never hold the phone number).
"""

from __future__ import annotations

import asyncio
import signal

import grpc
import pytest
from procs import bridge_process, free_port, scrape
from waits import await_for

from bridgekit import (
    LUPITA, NOT_SERVING, PERSON, PHONE_FORMS, SERVING, CallClient, assert_leg_exact, bridge_settings,
    call_start, health_status, interleave, make_frames, read_call,
)

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]


async def start_child(tmp_path, *args: str):
    proc = bridge_process("sigterm-bridge", tmp_path, extra_args=list(args))
    await asyncio.to_thread(proc.start)
    return proc


async def wait_not_serving(channel: grpc.aio.Channel) -> None:
    async def not_serving() -> bool:
        return await health_status(channel) == NOT_SERVING

    await await_for("health to turn NOT_SERVING after SIGTERM", not_serving, timeout=10)


async def test_sigterm_lets_a_live_call_finish_refuses_new_ones_and_exits_0(stack_env, call_id, tmp_path):
    metrics_port = free_port()
    proc = await start_child(tmp_path, "--metrics-port", str(metrics_port), "--drain-seconds", "60")
    token = bridge_settings().tokens()[0]
    channel = grpc.aio.insecure_channel(proc.target)
    try:
        assert await health_status(channel) == SERVING
        frames = interleave(make_frames(LUPITA, 20, seed=31), make_frames(PERSON, 20, seed=32))
        live = CallClient(channel, token)
        await live.start(call_start(call_id))
        await live.send(frames[:20])
        await live.wait_acked({LUPITA: 10, PERSON: 10})

        text = await asyncio.to_thread(scrape, metrics_port)
        for line in (
            "lupita_bridge_active_calls 1.0",
            'lupita_bridge_frames_total{leg="person"} 10.0',
            'lupita_bridge_bytes_total{leg="lupita"} 3200.0',
            'lupita_bridge_chunks_total{leg="lupita"} 2.0',
            'lupita_bridge_errors_total{kind="seq"} 0.0',
            'lupita_bridge_errors_total{kind="auth"} 0.0',
        ):
            assert line in text.splitlines(), line
        assert "lupita_bridge_kafka_publish_seconds_bucket{le=" in text
        assert 'lupita_bridge_kafka_publish_seconds_count' in text

        proc.proc.send_signal(signal.SIGTERM)
        await wait_not_serving(channel)
        # draining: a new call is sent elsewhere ...
        newcomer = CallClient(channel, token)
        await newcomer.write(call_start(f"{call_id}-new"))
        assert await newcomer.status() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in newcomer.details
        # ... while the live call goes on to its normal end
        await live.send(frames[20:])
        assert await live.end() == grpc.StatusCode.OK, live.details
        assert (live.closed.frames_lupita, live.closed.frames_person) == (20, 20)

        assert await asyncio.to_thread(proc.proc.wait, 60) == 0
    finally:
        await channel.close()
        proc.stop()

    rec = await read_call(bridge_settings(), call_id)
    assert rec.ended().reason == "hangup"
    for leg in (LUPITA, PERSON):
        assert_leg_exact(rec, leg, frames)
    log = proc.log_path.read_bytes()
    assert b'"draining"' in log and b'"stopped"' in log and call_id.encode() in log
    for form in PHONE_FORMS:
        assert form not in log


async def test_sigterm_drain_deadline_ends_live_call_with_reason_shutdown_and_exits_0(stack_env, call_id, tmp_path):
    proc = await start_child(tmp_path, "--drain-seconds", "0.5")
    token = bridge_settings().tokens()[0]
    channel = grpc.aio.insecure_channel(proc.target)
    try:
        frames = interleave(make_frames(LUPITA, 10, seed=41), make_frames(PERSON, 10, seed=42))
        live = CallClient(channel, token)
        await live.start(call_start(call_id))
        await live.send(frames)
        await live.wait_acked({LUPITA: 10, PERSON: 10})
        proc.proc.send_signal(signal.SIGTERM)
        # the client keeps the call open past the deadline: the bridge ends it
        assert await live.status() == grpc.StatusCode.UNAVAILABLE
        assert "the call was ended with reason 'shutdown'" in live.details
        assert [e.code for e in live.errors] == ["UNAVAILABLE"]
        assert await asyncio.to_thread(proc.proc.wait, 60) == 0
    finally:
        await channel.close()
        proc.stop()

    rec = await read_call(bridge_settings(), call_id)
    ended = rec.ended()
    assert ended.reason == "shutdown"
    assert (ended.frames_lupita, ended.frames_person) == (10, 10)
    for leg in (LUPITA, PERSON):
        assert_leg_exact(rec, leg, frames)
