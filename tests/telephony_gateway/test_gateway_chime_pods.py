"""Chime calls across several gateway pods: EventBridge's POSTs land on any pod, the events go
through Kafka (one consumer group), the owner of a call's partition runs it, and a pod that stops
or dies hands its calls to another, which goes on from the checkpoint.

Real Kafka, a real bridge, the KVS stand-in; the "pods" are gateways of their own (in this
process, or a child process for the SIGKILL) sharing one events topic, checkpoint topic and group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import pytest
from chimekit import CONTROL_TOKEN, T0_MS, build_call, chime_settings, consuming, mono, post_events, transaction_ids
from procs import free_port, metric_value, scrape
from waits import await_for

import logscan
from bridgekit import LUPITA, PERSON, read_call
from gwkit import AUTH_TOKEN, Deltas, pcm_bytes, running_gateway, target_of
from lupita.config import CommonSettings
pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(240),
              pytest.mark.usefixtures("chime_aws")]


@contextlib.asynccontextmanager
async def running_gateway_bus(settings):
    """A gateway's Kafka side alone (topics, producer, checkpoint table), no calls."""
    from telephony_gateway.chime import ChimeCalls
    from telephony_gateway.chime_bus import ChimeBus

    bus = ChimeBus(settings, ChimeCalls(type("G", (), {"settings": settings, "channel": None})()))
    bus.start()
    try:
        await await_for("the bus consuming", lambda: bus.consuming, timeout=60)
        yield bus
    finally:
        await bus.close()


def finished(gws, key: str) -> list:
    return [r for gw in gws for r in gw.chime.finished.get(key, [])]


def owner(gws, key: str):
    return next((gw for gw in gws if key in gw.chime.sessions), None)


async def test_legs_posted_to_two_pods_become_one_paired_call_run_once(bridge, kvs):
    """STARTED of one leg to pod A, of the other to pod B, ENDED to A: one bridge call with both
    legs, exact, run by exactly one pod (the owner of the call's partition)."""
    person, lupita = mono(3.0, 61), mono(3.0, 62)
    call = build_call(kvs, lupita, person, live=True)
    settings = chime_settings(kvs)
    d = Deltas(("lupita_gateway_chime_events_published_total", {"result": "ok"}))
    async with running_gateway(bridge, bridge.token, **settings) as a, \
            running_gateway(bridge, bridge.token, **settings) as b:
        await consuming(a, 2), await consuming(b, 2)  # the topic's 4 partitions shared
        assert (await post_events(a, call.events[0])) == (202, {"accepted": 1, "refused": []})
        assert (await post_events(b, call.events[1])) == (202, {"accepted": 1, "refused": []})
        run_by = await await_for("the call running on one pod", lambda: owner((a, b), call.key))
        await await_for("both legs forwarded",
                        lambda: sum(run_by.chime.sessions[call.key].report.frames.values()) >= 300
                        if call.key in run_by.chime.sessions else True, timeout=30)
        assert (await post_events(a, call.ended()))[0] == 202
        await await_for("the call ended", lambda: finished((a, b), call.key), timeout=60)
        reports = finished((a, b), call.key)
        other = b if run_by is a else a
        assert not other.chime.finished.get(call.key) and not other.chime.pending
    assert d("lupita_gateway_chime_events_published_total", result="ok") == 3
    [report] = reports
    assert report.outcome == "completed" and report.call_id == call.key, report
    assert report.bad_input.get("unpaired") is None
    recs = await read_call(CommonSettings(), call.key)
    assert recs.ended().reason == "completed"
    assert recs.leg_payload(PERSON) == pcm_bytes(person)
    assert recs.leg_payload(LUPITA) == pcm_bytes(lupita)


async def test_the_owner_stopping_mid_call_hands_it_to_the_other_pod_with_nothing_lost_or_twice(bridge, kvs):
    """The owner gets SIGTERM mid-call (mid-fragment: the producer writes each fragment in 5
    pieces, in real time): it pauses both legs between two frames, checkpoints that exact point,
    leaves the group and ends its part with ``handoff``; the other pod takes the partition, replays
    the STARTED events and goes on as part 2 from that point. Part 1 + part 2 = the source."""
    person, lupita = mono(5.0, 63), mono(5.0, 64)
    call = build_call(kvs, lupita, person, live=True, speed=1.0, pieces=5)
    settings = chime_settings(kvs, gateway_chime_idle_seconds=10, gateway_chime_end_grace_seconds=3)
    d = Deltas(("lupita_gateway_chime_handoffs_total", {"direction": "out"}),
               ("lupita_gateway_chime_handoffs_total", {"direction": "in"}))
    async with running_gateway(bridge, bridge.token, **settings) as a, \
            running_gateway(bridge, bridge.token, **settings) as b:
        await consuming(a, 2), await consuming(b, 2)
        await post_events(b, call.events)
        first = await await_for("the call running on one pod", lambda: owner((a, b), call.key))
        other = b if first is a else a
        await await_for("1.5 s of both legs forwarded",
                        lambda: sum(first.chime.sessions[call.key].report.frames.values()) >= 300, timeout=30)
        await first.shutdown()  # what SIGTERM runs
        await await_for("the other pod running part 2", lambda: owner((other,), call.key), timeout=60)
        assert (await post_events(other, call.ended()))[0] == 202
        [report2] = await await_for("part 2 ended", lambda: other.chime.finished.get(call.key), timeout=60)
        [report1] = first.chime.finished[call.key]
    assert report1.outcome == "handoff" and report2.outcome == "completed", (report1, report2)
    assert report2.call_id == f"{call.key}-p2"
    assert d("lupita_gateway_chime_handoffs_total", direction="out") == 1
    assert d("lupita_gateway_chime_handoffs_total", direction="in") == 1
    part1 = await read_call(CommonSettings(), call.key)
    part2 = await read_call(CommonSettings(), f"{call.key}-p2")
    assert part1.ended().reason == "handoff"
    for leg, audio in ((PERSON, person), (LUPITA, lupita)):
        got1, got2 = part1.leg_payload(leg), part2.leg_payload(leg)
        assert got1 and got2, leg
        want = pcm_bytes(audio)
        both = got1 + got2
        if both != want:
            i = next((j for j in range(min(len(both), len(want))) if both[j] != want[j]), None)
            c1 = [(c.start_ts_us - T0_MS * 1000, len(c.payload)) for c in part1.leg_chunks(leg)][-3:]
            c2 = [(c.start_ts_us - T0_MS * 1000, len(c.payload)) for c in part2.leg_chunks(leg)][:3]
            raise AssertionError(f"leg {leg}: part 1 + part 2 are not the source: len1 {len(got1)} len2 {len(got2)} want {len(want)} first diff {i} c1 {c1} c2 {c2}")
        # part 2 starts on the same clock exactly where part 1 stopped
        last = part1.leg_chunks(leg)[-1]
        assert part2.leg_chunks(leg)[0].start_ts_us == last.start_ts_us + len(last.payload) // 2 * 125


async def test_a_pod_joining_mid_call_moves_some_partitions_and_every_call_stays_whole(bridge, kvs):
    """Scale-out (KEDA): a second pod joins while the first runs calls. Partitions that stay keep
    their calls (paused for the rebalance, then on: one part); partitions that move hand theirs
    off (two parts). Either way each leg's parts, in order, are the source exactly."""
    calls, audio = [], {}
    for seed, txn in enumerate(transaction_ids(4, 1)):  # a call on each of the 4 partitions
        person, lupita = mono(4.0, 100 + seed), mono(4.0, 200 + seed)
        c = build_call(kvs, lupita, person, live=True, speed=1.0, pieces=5, transaction_id=txn)
        calls.append(c)
        audio[c.key] = {PERSON: person, LUPITA: lupita}
    settings = chime_settings(kvs, gateway_chime_idle_seconds=10, gateway_chime_end_grace_seconds=3)
    d = Deltas(*(("lupita_gateway_chime_handoffs_total", {"direction": x}) for x in ("out", "in", "kept")))
    async with running_gateway(bridge, bridge.token, **settings) as a:
        await consuming(a, 4)
        await post_events(a, [e for c in calls for e in c.events])
        await await_for("every call forwarding", lambda: all(
            c.key in a.chime.sessions and sum(a.chime.sessions[c.key].report.frames.values()) >= 100 for c in calls),
            timeout=60)
        async with running_gateway(bridge, bridge.token, **settings) as b:
            await consuming(b, 2)
            await consuming(a, 2)
            await post_events(b, [c.ended() for c in calls])
            await await_for("every call ended", lambda: all(
                any(r.outcome == "completed" for r in finished((a, b), c.key)) for c in calls), timeout=90)
            parts = {c.key: finished((a, b), c.key) for c in calls}
    # sticky assignment: the first pod keeps 2 partitions, the second gets 2 (a call on each)
    assert d("lupita_gateway_chime_handoffs_total", direction="out") == 2
    assert d("lupita_gateway_chime_handoffs_total", direction="in") == 2
    assert d("lupita_gateway_chime_handoffs_total", direction="kept") == 2
    for c in calls:
        reports = parts[c.key]
        assert [r.outcome for r in reports] in (["completed"], ["handoff", "completed"]), reports
        got = {PERSON: b"", LUPITA: b""}
        for r in reports:
            recs = await read_call(CommonSettings(), r.call_id)
            for leg in got:
                got[leg] += recs.leg_payload(leg)
        for leg in got:
            assert got[leg] == pcm_bytes(audio[c.key][leg]), (c.key, leg, [r.call_id for r in reports])


async def test_a_killed_owner_s_calls_resume_on_another_pod_from_the_last_checkpointed_fragment(bridge, kvs, tmp_path):
    """SIGKILL: no hand-off. Once the dead pod's session times out, the other pod is given its
    partitions, replays the call's STARTED events (the committed offset never passed them) and goes
    on from the last fragment checkpointed: part 2 is exactly the audio after it; part 1 (ended
    ``disconnect`` by the bridge) holds everything before it and at most the fragment in flight."""
    person, lupita = mono(6.0, 65), mono(6.0, 66)
    call = build_call(kvs, lupita, person, live=True, speed=1.0, pieces=5, lupita_fragment_ms=1000)
    settings = chime_settings(kvs, gateway_chime_idle_seconds=20, gateway_chime_end_grace_seconds=3)
    metrics_port = free_port()
    control_port = free_port()
    env = dict(os.environ, LUPITA_GATEWAY_TWILIO_AUTH_TOKEN=AUTH_TOKEN, LUPITA_BRIDGE_TARGET=target_of(bridge),
               LUPITA_BRIDGE_TOKENS=bridge.token, LUPITA_GATEWAY_METRICS_HOST="127.0.0.1",
               LUPITA_GATEWAY_CONTROL_PORT=str(control_port), LUPITA_GATEWAY_CONTROL_TOKENS=CONTROL_TOKEN,
               **{f"LUPITA_{k.upper()}": str(v) for k, v in settings.items()
                  if k not in ("gateway_control_port", "gateway_control_tokens")})
    log_path = logscan.log_path("gateway-killed", tmp_path)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lupita.cli", "gateway", "--host", "127.0.0.1", "--port", str(free_port()),
             "--metrics-port", str(metrics_port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        def child_metric(name: str, **labels) -> float:
            try:
                return metric_value(scrape(metrics_port), name, **labels)
            except OSError:
                return 0.0

        await await_for("the child pod owning every partition",
                        lambda: proc.poll() is None and child_metric("lupita_gateway_chime_partitions") == 4, timeout=60)

        assert (await post_events(control_port, call.events))[0] == 202
        await await_for("2 s of the person's leg forwarded by the child",
                        lambda: child_metric("lupita_gateway_frames_total", source="chime", leg="person") >= 100,
                        timeout=30)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        async with running_gateway(bridge, bridge.token, **settings) as b:
            await consuming(b, 4, timeout=90)  # after the dead member's session timed out
            await await_for("the call resumed here", lambda: call.key in b.chime.sessions or
                            b.chime.finished.get(call.key), timeout=30)
            assert (await post_events(b, call.ended()))[0] == 202
            [report] = await await_for("part 2 ended", lambda: b.chime.finished.get(call.key), timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert report.outcome == "completed" and report.call_id == f"{call.key}-p2", report
    part1 = await read_call(CommonSettings(), call.key)
    part2 = await read_call(CommonSettings(), f"{call.key}-p2")
    assert part1.ended().reason == "disconnect"  # the bridge saw the stream break
    fragment = 8000  # samples per 1 s fragment
    for leg, audio in ((PERSON, person), (LUPITA, lupita)):
        first_us = part2.leg_chunks(leg)[0].start_ts_us
        k, rest = divmod(first_us - T0_MS * 1000, 1_000_000)
        assert rest == 0 and k >= 1, (leg, first_us)  # part 2 starts at a fragment boundary after one checkpointed
        got2 = part2.leg_payload(leg)
        assert got2 == pcm_bytes(audio[k * fragment:]), (leg, k, len(got2), len(audio[k * fragment:]) * 2)
        got1 = part1.leg_payload(leg)
        assert got1[:k * fragment * 2] == pcm_bytes(audio[:k * fragment]), leg
        assert len(got1) <= (k + 1) * fragment * 2, leg  # at most the fragment in flight twice


async def test_kafka_down_at_the_post_answers_503_and_acknowledges_nothing(bridge, kvs):
    call = build_call(kvs, mono(1.0, 67), mono(1.0, 68))
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    settings = chime_settings(kvs, kafka_bootstrap=dead, gateway_chime_publish_timeout_seconds=1.0)
    d = Deltas(("lupita_gateway_chime_events_published_total", {"result": "failed"}),
               ("lupita_gateway_chime_events_published_total", {"result": "ok"}))
    async with running_gateway(bridge, bridge.token, **settings) as gw:
        status, body = await post_events(gw, call.events, wait=False)
        assert status == 503 and "accepted" not in body, body
        assert gw.chime_bus.state in ("starting", "kafka unavailable")
        assert not gw.chime.sessions and not gw.chime.pending
    assert d("lupita_gateway_chime_events_published_total", result="failed") == 2
    assert d("lupita_gateway_chime_events_published_total", result="ok") == 0


async def test_readyz_reports_the_chime_consumer(bridge, kvs):
    import aiohttp

    settings = chime_settings(kvs)
    async with running_gateway(bridge, bridge.token, **settings) as gw:
        await consuming(gw, 4)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{gw.port}/readyz") as resp:
                text = await resp.text()
    assert "chime consumer: consuming, 4 partitions" in text, text



async def test_a_replay_after_a_crash_resumes_the_live_call_and_not_the_finished_one(bridge, kvs):
    """Two calls on one partition: the long one still live holds the committed offset at its first
    event, so a new owner replays the short one's events too; the short one's end marker makes its
    replayed STARTED start nothing, and only the live one goes on (as part 2)."""
    long_txn, short_txn = transaction_ids(4, 2)[:2]  # the first two land on the same partition
    person, lupita = mono(4.0, 69), mono(4.0, 70)
    live = build_call(kvs, lupita, person, live=True, speed=1.0, pieces=5, transaction_id=long_txn)
    short = build_call(kvs, mono(1.0, 71), mono(1.0, 72), transaction_id=short_txn)
    settings = chime_settings(kvs, gateway_chime_idle_seconds=20, gateway_chime_end_grace_seconds=3)
    d = Deltas(("lupita_gateway_chime_events_consumed_total", {"result": "replayed"}))
    async with running_gateway(bridge, bridge.token, **settings) as a:
        await post_events(a, live.events)
        await post_events(a, short.events)
        [done] = await await_for("the short call over", lambda: a.chime.finished.get(short.key), timeout=60)
        await await_for("its end marker written", lambda: short.key not in a.chime.sessions)
        await await_for("a fragment of the live call checkpointed", lambda: any(
            leg["doneThrough"] for leg in (a.chime.store.get(live.key) or {"legs": []})["legs"]), timeout=30)
        await a.chime_bus.commit(a.chime_bus.assigned)  # what the loop does every second, now
    assert done.outcome == "completed"
    # crash-like: no hand-off; the next pod replays the partition from the live call's first event
    async with running_gateway(bridge, bridge.token, **settings) as b:
        await await_for("the live call resumed", lambda: live.key in b.chime.sessions, timeout=60)
        assert short.key not in b.chime.sessions and not b.chime.pending
        assert (await post_events(b, live.ended()))[0] == 202
        [report] = await await_for("part 2 ended", lambda: b.chime.finished.get(live.key), timeout=60)
        assert not b.chime.finished.get(short.key)
    assert report.outcome == "completed" and report.call_id == f"{live.key}-p2"
    # replayed: the short call's two STARTEDs (over) and the live call's second (its first resumed it)
    assert d("lupita_gateway_chime_events_consumed_total", result="replayed") == 3


async def test_a_checkpoint_of_an_older_part_is_refused_and_ignored(kvs):
    """Fencing: once part 2 of a call is on the topic, a write of part 1 (a pod that lost the call
    without knowing it yet) is refused, and a reader of the topic keeps part 2."""
    from telephony_gateway.checkpoint import CheckpointTable, Fenced
    from telephony_gateway.settings import GatewaySettings

    settings = GatewaySettings(**chime_settings(kvs, gateway_allow_unsigned=True))
    async with running_gateway_bus(settings) as bus:
        writer, reader = bus.table, CheckpointTable(settings.kafka_bootstrap, bus.checkpoints_topic)
        await (await writer.save("chime-fence", {"part": 2, "legs": []}))
        with pytest.raises(Fenced):
            await writer.save("chime-fence", {"part": 1, "legs": []})
        # a record of part 1 that still reached the topic (written before part 2 was known) is ignored
        await (await bus.producer.send(bus.checkpoints_topic, b'{"part": 1, "legs": []}', key=b"chime-fence"))
        await reader.start(bus.producer)
        try:
            await reader.caught_up()
            assert reader.get("chime-fence") == {"part": 2, "legs": []}
        finally:
            await reader.close()


async def test_a_draining_pod_answers_503_so_eventbridge_retries_elsewhere(bridge, kvs):
    call = build_call(kvs, mono(1.0, 73), mono(1.0, 74))
    d = Deltas(("lupita_gateway_chime_events_published_total", {"result": "ok"}))
    async with running_gateway(bridge, bridge.token, **chime_settings(kvs)) as gw:
        await consuming(gw)
        gw.draining = True  # the first thing SIGTERM's shutdown() does (it then closes the port within ms)
        status, body = await post_events(gw, call.events, wait=False)
        assert status == 503 and "accepted" not in body
        assert not gw.chime.sessions and not gw.chime.pending
    assert d("lupita_gateway_chime_events_published_total", result="ok") == 0


async def test_records_a_pod_cannot_use_are_dead_lettered_and_the_call_after_them_runs(bridge, kvs):
    """Three records on a call's partition ahead of its events — not an event, an unknown status,
    a STARTED whose number was encrypted with another key — each go to the dead-letter topic as
    they were, with their reason and source offset, are counted, and do not hold the partition:
    the call posted after them runs, and the committed offset passes them."""
    import base64
    import json

    from aiokafka import AIOKafkaConsumer, TopicPartition

    from lupita.privacy import encrypt_phone
    from lupita.topics import CHIME_DEAD_LETTERS, REASON_HEADER, SOURCE_HEADER
    from telephony_gateway import chime_events as ce

    call = build_call(kvs, mono(1.0, 75), mono(1.0, 76))
    started = ce.parse(call.events[0])
    other_key = bytes(range(32))
    foreign = ce.to_record(started, lambda p: base64.b64encode(encrypt_phone(p, other_key)).decode())
    unknown = json.dumps({**json.loads(foreign), "status": "PAUSED"}).encode()
    bad = [(b"not json {", "malformed_json"), (unknown, "unknown_event"), (foreign, "undecryptable")]
    settings = chime_settings(kvs)
    d = Deltas(*(("lupita_gateway_chime_dead_letters_total", {"reason": r}) for _, r in bad),
               ("lupita_gateway_chime_events_consumed_total", {"result": "bad"}))
    async with running_gateway(bridge, bridge.token, **settings) as gw:
        await consuming(gw)
        bus = gw.chime_bus
        producer = await bus._producer()
        sent = [await producer.send_and_wait(bus.events_topic, value, key=ce.record_key(started)) for value, _ in bad]
        assert (await post_events(gw, call.events))[0] == 202
        [report] = await await_for("the call after the bad records ended", lambda: gw.chime.finished.get(call.key),
                                   timeout=60)
        tp = TopicPartition(bus.events_topic, sent[0].partition)
        await bus.commit(bus.assigned)
        assert await bus.consumer.committed(tp) > sent[-1].offset
    assert report.outcome == "completed"
    assert {r: d("lupita_gateway_chime_dead_letters_total", reason=r) for _, r in bad} == {r: 1 for _, r in bad}
    assert d("lupita_gateway_chime_events_consumed_total", result="bad") == 3
    consumer = AIOKafkaConsumer(bootstrap_servers=gw.settings.kafka_bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.subscribe([gw.settings.topic(CHIME_DEAD_LETTERS)])
        got: list = []
        for _ in range(30):  # the three are there already (the counter counts after the broker's ack)
            if len(got) >= len(bad):
                break
            got += [r for recs in (await consumer.getmany(timeout_ms=1000)).values() for r in recs]
    finally:
        await consumer.stop()
    assert [(r.value, dict(r.headers)[REASON_HEADER].decode()) for r in got] == bad
    assert [dict(r.headers)[SOURCE_HEADER].decode() for r in got] == [
        f"{bus.events_topic}/{s.partition}/{s.offset}" for s in sent]
    assert all(r.key == ce.record_key(started) for r in got)
