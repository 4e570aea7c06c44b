"""``lupita gateway`` as a real child process (health, metrics, SIGTERM drain), and backpressure
against a real bridge child that is paused (SIGSTOP) under a live call."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
from procs import bridge_process, free_port, metric_value, scrape
from waits import await_for

import logscan
from bridgekit import LUPITA, PERSON, read_call
from gwkit import AUTH_TOKEN, PARAMS, mulaw_round_trip, pcm_bytes, random_stereo, running_gateway
from lupita.config import CommonSettings
from telephony_gateway import twilio_sim

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(240)]


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


@pytest.fixture
def bridge_child(stack_env, tmp_path):
    with bridge_process("gateway-test-bridge", tmp_path) as b:
        yield b


def start_gateway_child(bridge, tmp_path, *, drain_seconds: float) -> tuple[subprocess.Popen, int, int]:
    port, metrics_port = free_port(), free_port()
    env = dict(os.environ, LUPITA_GATEWAY_TWILIO_AUTH_TOKEN=AUTH_TOKEN, LUPITA_BRIDGE_TARGET=bridge.target,
               LUPITA_GATEWAY_METRICS_HOST="127.0.0.1")
    log_path = logscan.log_path("gateway", tmp_path)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lupita.cli", "gateway", "--host", "127.0.0.1", "--port", str(port),
             "--metrics-port", str(metrics_port), "--drain-seconds", str(drain_seconds)],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    return proc, port, metrics_port


async def test_health_metrics_and_sigterm_ending_a_live_call_with_reason_shutdown(bridge_child, tmp_path):
    proc, port, metrics_port = start_gateway_child(bridge_child, tmp_path, drain_seconds=1.0)
    try:
        base = f"http://127.0.0.1:{port}"
        await await_for("/readyz 200 (the bridge is serving)", lambda: http_status(base + "/readyz") == 200, timeout=30)
        assert http_status(base + "/livez") == 200
        assert http_status(base + "/nowhere") == 404
        text = await asyncio.to_thread(scrape, metrics_port)
        for series in ('lupita_gateway_live_calls{source="twilio"} 0.0',
                       'lupita_gateway_bad_input_total{kind="stalled",source="twilio"} 0.0',
                       'lupita_gateway_calls_total{outcome="shutdown",source="twilio"} 0.0'):
            assert series in text.splitlines(), series

        stereo = random_stereo(30.0, seed=20)
        call = twilio_sim.build_call(stereo, PARAMS)
        url = f"ws://127.0.0.1:{port}/twilio"
        live = asyncio.create_task(twilio_sim.stream(url, call.messages, auth_token=AUTH_TOKEN,
                                                     sign_as=f"wss://127.0.0.1:{port}/twilio", speed=1.0,
                                                     media_index=call.media))
        await await_for("the live call's frames", lambda: metric_value(
            scrape(metrics_port), "lupita_gateway_frames_total", source="twilio", leg="person") >= 25, timeout=20)
        assert metric_value(scrape(metrics_port), "lupita_gateway_live_calls", source="twilio") == 1

        proc.send_signal(signal.SIGTERM)
        await await_for("/readyz 503 while draining", lambda: http_status(base + "/readyz") == 503, timeout=10)
        result = await asyncio.wait_for(live, 60)
        assert result.close_code == 1001  # going away: the drain deadline passed
        assert await asyncio.to_thread(proc.wait, 30) == 0
        recs = await read_call(CommonSettings(), f"twilio-{call.call_sid}")
        assert recs.ended().reason == "shutdown"
        # what arrived before the end is there, exact and in order
        got = np.frombuffer(recs.leg_payload(PERSON), dtype="<i2")
        assert 0 < len(got) < len(stereo)
        assert np.array_equal(got, mulaw_round_trip(stereo[: len(got), 1]))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def test_a_paused_bridge_stops_the_gateway_reading_and_the_call_resumes_whole(bridge_child):
    stereo = random_stereo(60.0, seed=21)  # 6,000 media messages, sent as fast as the socket takes them
    call = twilio_sim.build_call(stereo, PARAMS)
    window = 32
    async with running_gateway(bridge_child, _token(), gateway_reorder_window=window,
                               gateway_idle_timeout_seconds=60) as gw:
        sent = {"n": 0}

        async def play():
            return await twilio_sim.stream(f"ws://127.0.0.1:{gw.port}/twilio", call.messages, auth_token=AUTH_TOKEN,
                                           sign_as=f"wss://127.0.0.1:{gw.port}/twilio", progress=sent)

        task = asyncio.create_task(play())
        await await_for("frames to flow", lambda: gw.sessions and next(iter(gw.sessions)).report.frames.get("person", 0) > 50,
                        timeout=30)
        session = next(iter(gw.sessions))
        os.kill(bridge_child.pid, signal.SIGSTOP)
        try:
            # positive signal: the client keeps writing while the gateway has stopped reading, so the
            # backlog builds up in the socket buffers, not in the gateway
            await await_for("a backlog outside the gateway", lambda: sent["n"] > session.report.messages + 1000, timeout=30)
            forwarded = sum(session.report.frames.values())
            # read = forwarded + what the reorder window may hold + connected/start + the one in hand;
            # the sender is stuck on the paused bridge (out of credits, or gRPC's own flow-control
            # window full), so nothing more is read
            assert session.report.messages <= forwarded + window + 3
        finally:
            os.kill(bridge_child.pid, signal.SIGCONT)
        result = await asyncio.wait_for(task, 120)
    assert result.close_code == 1000, result.close_reason
    recs = await read_call(CommonSettings(), f"twilio-{call.call_sid}")
    assert recs.leg_payload(LUPITA) == pcm_bytes(mulaw_round_trip(stereo[:, 0]))
    assert recs.leg_payload(PERSON) == pcm_bytes(mulaw_round_trip(stereo[:, 1]))


async def test_a_paused_bridge_stops_the_gateway_reading_kvs_and_the_chime_call_resumes_whole(bridge_child):
    """Chime: the GetMedia threads stop reading once their bounded queues are full, so the backlog
    stays in KVS (the stand-in's writes wait on TCP), never in the gateway."""
    from chimekit import aws_env, build_call, chime_settings, ended, post_events, restore_env

    from telephony_gateway import chime as chime_mod, kvs_sim

    rng = np.random.default_rng(23)
    person, lupita = (rng.integers(-12000, 12000, 8000 * 240, dtype=np.int16) for _ in range(2))
    saved = aws_env()
    kvs = await kvs_sim.KvsServer().start()
    try:
        call = build_call(kvs, lupita, person, lupita_fragment_ms=1000)  # served as fast as the reader takes
        total = sum(len(d) for _, d in call.person.items)
        async with running_gateway(bridge_child, _token(), **chime_settings(kvs, gateway_chime_idle_seconds=60)) as gw:
            await post_events(gw, call.events)
            await await_for("frames to flow", lambda: gw.chime.sessions.get(call.key) is not None and
                            gw.chime.sessions[call.key].report.frames.get("person", 0) > 500, timeout=30)
            session = gw.chime.sessions[call.key]
            os.kill(bridge_child.pid, signal.SIGSTOP)
            try:
                legs = session._kvs
                await await_for("the GetMedia reader blocked on a full queue",
                                lambda: any(k.queue.qsize() >= chime_mod.QUEUE_ITEMS for k in legs), timeout=30)
                person_legs = [k for k in legs if k.arn == call.person.arn]
                read = sum(k.read_bytes for k in person_legs)
                # the gateway stopped taking bytes off the connection well before the stream's end:
                # the rest waits in KVS (the stand-in) and the kernel's socket buffers
                assert read < total // 2
                # what it holds for the leg: at most its queue of reads and the parser's partial element
                forwarded = session.report.frames["person"] * 320
                assert read - forwarded <= (chime_mod.QUEUE_ITEMS + 2) * chime_mod.READ_BYTES + 64 * 1024
            finally:
                os.kill(bridge_child.pid, signal.SIGCONT)
            [report] = await ended(gw, call, timeout=180)
    finally:
        await kvs.close()
        restore_env(saved)
    assert report.outcome == "completed"
    recs = await read_call(CommonSettings(), call.key)
    assert recs.leg_payload(PERSON) == pcm_bytes(person)
    assert recs.leg_payload(LUPITA) == pcm_bytes(lupita)


def _token() -> str:
    from loadgen.settings import LoadgenSettings

    return LoadgenSettings().first_token
