"""A client that vanishes mid-call: what was acknowledged is in Kafka and the call ends with
reason "disconnect"."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from bridgekit import LUPITA, PERSON, call_start, interleave, make_frames, read_call, wait_for_condition

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]


# The client as its own process, so the test can kill it: the bridge then sees the TCP
# connection drop (no gRPC cancellation is sent).
CLIENT = """
import asyncio, sys, grpc
from bridgekit import LUPITA, PERSON, CallClient, call_start, interleave, make_frames

async def main(target, token, call_id):
    sent = interleave(*(make_frames(leg, 13, seed=leg) for leg in (LUPITA, PERSON)))
    c = CallClient(grpc.aio.insecure_channel(target), token)
    await c.start(call_start(call_id))
    await c.send(sent[:20])
    await c.wait_acked({LUPITA: 10, PERSON: 10})
    await c.send(sent[20:])
    print("acked", flush=True)
    await asyncio.sleep(60)

asyncio.run(main(*sys.argv[1:]))
"""


async def _client_killed(bridge, call_id: str) -> None:
    kit = Path(__file__).parents[1] / "kit"  # bridgekit and the rest of the test kit
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(kit), os.environ.get("PYTHONPATH", "")])}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, f"127.0.0.1:{bridge.bridge.port}", bridge.token, call_id,
        stdout=subprocess.PIPE, env=env,
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line == b"acked\n", "the client process did not get its acks"
    finally:
        proc.kill()
        await proc.wait()


async def _stream_cancelled(bridge, call_id: str, sent) -> None:
    c = bridge.client()
    await c.start(call_start(call_id))
    await c.send(sent[:20])  # 10 frames per leg: two whole chunks per leg
    await c.wait_acked({LUPITA: 10, PERSON: 10})
    await c.send(sent[20:])  # 3 more per leg, in a partial chunk, not acknowledged
    c.cancel()
    assert await c.status() == grpc.StatusCode.CANCELLED


@pytest.mark.parametrize("how", ["stream_cancelled", "client_process_killed"])
async def test_disconnect_mid_call_publishes_acked_frames_and_ended_disconnect(bridge, call_id, how):
    frames = {leg: make_frames(leg, 13, seed=leg) for leg in (LUPITA, PERSON)}
    sent = interleave(frames[LUPITA], frames[PERSON])
    active_before = REGISTRY.get_sample_value("lupita_bridge_active_calls")
    if how == "stream_cancelled":
        await _stream_cancelled(bridge, call_id, sent)
    else:
        await _client_killed(bridge, call_id)

    rec = await read_call(bridge.settings, call_id)
    ended = rec.ended()
    assert ended.reason == "disconnect"
    assert [e.WhichOneof("event") for e in rec.lifecycle] == ["started", "ended"]
    for leg, counted in ((LUPITA, ended.frames_lupita), (PERSON, ended.frames_person)):
        payload = rec.leg_payload(leg)
        acked = b"".join(f.payload for f in frames[leg][:10])
        everything = b"".join(f.payload for f in frames[leg])
        # every acknowledged frame is there, followed by at most the unacknowledged ones, in order
        assert payload.startswith(acked) and everything.startswith(payload)
        assert counted == sum(ch.frame_count for ch in rec.leg_chunks(leg)) >= 10
        assert [ch.chunk_seq for ch in rec.leg_chunks(leg)] == list(range(len(rec.leg_chunks(leg))))
    assert (ended.chunks_lupita, ended.chunks_person) == (len(rec.leg_chunks(LUPITA)), len(rec.leg_chunks(PERSON)))
    # the gauge drops once the call's last record is out (the end runs in the background)
    await wait_for_condition(lambda: REGISTRY.get_sample_value("lupita_bridge_active_calls") == active_before, "active calls back")

    # the id is spent: a reconnect with it is refused rather than writing a second call
    again = bridge.client()
    await again.write(call_start(call_id))
    assert await again.status() == grpc.StatusCode.ALREADY_EXISTS
