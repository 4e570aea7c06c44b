"""Telephony-gateway benchmark: N concurrent Twilio-format calls in real time through a real
``lupita gateway`` into a real ``lupita bridge`` and the real Kafka, against the same N calls sent
straight to the bridge by the call simulator in the same run.

Both phases use the same bridge child, the same audio (the synthesised Spanish dialogue cut to
``--seconds``, 8 kHz, 20 ms frames per leg) and real-time pacing. Measured:

- **gateway CPU-seconds per call-minute** (utime + stime of the gateway pid, /proc) and the bridge's
  in each phase;
- **source frame -> Kafka latency** per AudioChunk record: the record's Kafka timestamp (CreateTime,
  set by the bridge's producer when the chunk is handed to it) minus the wall-clock time the
  source wrote the record's last frame (each record closes when its last frame arrives, so this
  is the latency of the newest audio in a record). The source is the Twilio-format client in the
  gateway phase and a gRPC client on the simulator's wire code in the direct phase, both writing
  each frame at its real-time instant and noting when they did. "from capture time" uses the
  frame's capture timestamp instead (call start + offset), for comparison;
- the bridge's own figures: the direct client's ack latency (frame written -> bridge's Ack, i.e.
  durable in Kafka: includes waiting for the rest of its 100 ms chunk) and the direct phase's
  source -> Kafka latency. **Added latency** = gateway
  phase minus direct phase, at p50 and p99;
- lost frames: frames in Kafka per call vs frames sent (must be 0).

    .venv/bin/python bench/gateway.py                     # 20 calls x 20 s per phase (~1.5 min)
    .venv/bin/python bench/gateway.py --calls 50 --seconds 30 --json
    .venv/bin/python bench/gateway.py --chime             # a third phase: the same calls as Chime streams

``--chime`` adds a phase of the same calls as Amazon Chime SDK Voice Connector calls: each leg a
Kinesis Video stream of MKV fragments (1 s, producer timestamps = the wall clock) served in real
time by the GetMedia stand-in in this process (``telephony_gateway.kvs_sim``: each fragment's bytes
in 50 writes, each sent when the producer would have finished it on the wall clock, as KVS serves
a live stream: a reader that starts late gets the backlog at once), the streaming events posted to
the gateway's control API.
Measured: the gateway's and the bridge's CPU per call-minute, frames lost, and capture time ->
Kafka (the newest audio of each record; includes the stand-in's 20 ms write pacing). The events go
through Kafka (``telephony.chime.events``, one consumer group): each ``POST /chime/events`` answers
only after the broker acknowledged the call's two events; its latency (POST -> 202) is printed
against a baseline from the same run, a plain idempotent ``acks=all`` produce of two records of the
same size to a scratch topic of the same broker, as many times and as concurrently.

The local stack must be up (``lupita stack up``). Exit status 0 when every call completed and no
frame was lost, 1 otherwise, 2 for bad options or no stack.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FRAME_MS = 20
AUTH_TOKEN = "bench-twilio-auth-token"  # the gateway child's, for this run only
BENCH_PHONE = "+529510000001"  # synthetic (tests/kit/logscan.py lists it)


@dataclass
class Phase:
    name: str
    calls: int
    ok: int = 0
    call_minutes: float = 0.0
    wall_s: float = 0.0
    bridge_cpu_s: float = 0.0
    gateway_cpu_s: float | None = None
    frames_sent: int = 0  # 20 ms source frames, both legs
    frames_in_kafka: int = 0  # the same unit: samples in Kafka / 160
    lost_frames: int = 0
    kafka_records: int = 0
    nominal_ms: dict = field(default_factory=dict)  # p50/p99/max source -> Kafka (capture time)
    measured_ms: dict = field(default_factory=dict)  # p50/p99/max from the client's write time
    ack_ms: dict = field(default_factory=dict)  # the simulator's ack latency (direct phase)
    post_ms: dict = field(default_factory=dict)  # Chime: POST /chime/events -> 202 (the broker's ack inside)
    produce_ms: dict = field(default_factory=dict)  # Chime baseline: the same records produced directly

    def per_call_minute(self, cpu: float | None) -> float | None:
        return None if cpu is None or not self.call_minutes else cpu / self.call_minutes


def quantiles(values: list[float]) -> dict:
    if not values:
        return {}
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max()),
            "n": int(a.size)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=20, help="concurrent calls per phase (1..500, default 20)")
    p.add_argument("--seconds", type=float, default=20.0, help="audio per call (default 20)")
    p.add_argument("--ramp", type=float, default=20.0, metavar="CALLS_PER_S", help="call starts per second (default 20)")
    p.add_argument("--bridge-frame-ms", type=int, default=100, choices=[20, 40, 60, 80, 100, 200],
                   help="the gateway's LUPITA_GATEWAY_BRIDGE_FRAME_MS (default 100; 20 = no joining)")
    p.add_argument("--json", action="store_true", help=f"also write the results to {RESULTS_DIR}/")
    p.add_argument("--keep-topics", action="store_true", help="do not delete the run's Kafka topics")
    p.add_argument("--chime", action="store_true", help="add a phase of the same calls as Chime Voice Connector streams")
    args = p.parse_args(argv)
    if not 1 <= args.calls <= 500 or args.seconds <= 0 or args.ramp <= 0:
        p.error("--calls must be 1..500, --seconds and --ramp > 0")
    return args


async def read_chunks(bootstrap: str, topic: str) -> list[tuple[int, bytes]]:
    """(Kafka timestamp ms, value) of every record of ``topic`` present now."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20)
    await consumer.start()
    try:
        while not consumer.assignment():
            await asyncio.sleep(0.1)
        tps = sorted(consumer.assignment())
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: list[tuple[int, bytes]] = []
        remaining = {tp for tp in tps if end[tp] > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=10000)
            for tp, msgs in batches.items():
                out += [(m.timestamp, m.value) for m in msgs]
            remaining = {tp for tp in remaining if await consumer.position(tp) < end[tp]}
        return out
    finally:
        await consumer.stop()


async def direct_phase(args, stereo, target: str, token: str) -> tuple[list, dict, list]:
    """The same calls straight to the bridge: the simulator's wire code (loadgen.client, through
    telephony_gateway.bridge_client.BridgeCall) writing each frame at its real-time instant and
    noting when it wrote it."""
    from loadgen.frames import slice_frames
    from lupita.v1 import audio_pb2, media_bridge_pb2 as pb
    from telephony_gateway.bridge_client import BridgeCall, make_channel

    frames = slice_frames(stereo, 8000, audio_pb2.CODEC_PCM16, FRAME_MS)
    sent: dict = {}
    results = []

    async def one(i: int):
        await asyncio.sleep(i / args.ramp)
        call_id = f"bench-direct-{uuid.uuid4().hex[:12]}"
        channel = make_channel(target)
        start = pb.CallStart(call_id=call_id, direction=audio_pb2.DIRECTION_OUTBOUND, sample_rate_hz=8000,
                             codec=audio_pb2.CODEC_PCM16, recording_consent=True, started_at_us=time.time_ns() // 1000,
                             caller=pb.CallerMetadata(phone_number=BENCH_PHONE, region="oaxaca", consent_source="bench"))
        call = BridgeCall(channel, token, start, close_timeout_s=120)
        try:
            await call.open()
            t0_perf, t0_us = time.perf_counter(), time.time_ns() // 1000
            for fr in frames:
                delay = t0_perf + fr.offset_us / 1e6 - time.perf_counter()
                if delay > 0.001:
                    await asyncio.sleep(delay)
                await call.send(pb.AudioFrame(leg=fr.leg, seq=fr.seq, capture_ts_us=t0_us + fr.offset_us, payload=fr.payload))
                sent[(call_id, fr.leg, fr.seq)] = t0_us / 1000 + (time.perf_counter() - t0_perf) * 1000
            await call.end("completed", t0_us + len(stereo) * 125)
            results.append(call.result)
        except Exception as exc:  # noqa: BLE001 (reported as a failed call)
            print(f"[direct] call failed: {exc!r}", file=sys.stderr)
        finally:
            await channel.close()
        return call_id

    ids = await asyncio.gather(*(one(i) for i in range(args.calls)))
    return list(ids), sent, results


async def twilio_phase(args, stereo, gateway_url: str, signed_url: str) -> tuple[list, list]:
    from telephony_gateway import twilio_sim

    params = {"phone": BENCH_PHONE, "consent": "true", "consentSource": "bench", "region": "oaxaca"}
    calls = [twilio_sim.build_call(stereo, params) for _ in range(args.calls)]

    async def one(i: int, call):
        await asyncio.sleep(i / args.ramp)
        return await twilio_sim.stream(gateway_url, call.messages, auth_token=AUTH_TOKEN, sign_as=signed_url,
                                       speed=1.0, media_index=call.media, close_timeout_s=120)

    results = await asyncio.gather(*(one(i, c) for i, c in enumerate(calls)))
    return calls, results


CONTROL_TOKEN = "bench-control-token"  # the gateway child's control API, for this run only
KVS_ENV = {"AWS_ACCESS_KEY_ID": "bench-kvs", "AWS_SECRET_ACCESS_KEY": "bench-kvs", "AWS_EC2_METADATA_DISABLED": "true"}


def scrape(metrics_port: int, name: str, **labels: str) -> float:
    """Sum of a metric's samples with these labels on the gateway child's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def produce_baseline(bootstrap: str, topic: str, calls: int, ramp: float, size: int) -> list[float]:
    """ms per call to get two ``size``-byte records acknowledged (idempotent, acks=all), the calls
    ramped as the Chime phase's POSTs are: what the control API's publish costs at the least."""
    from aiokafka import AIOKafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    def create() -> None:  # the broker does not create topics on first use
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="lupita-bench-gw")
        try:
            admin.create_topics([NewTopic(topic, 1, 1)])
        except TopicAlreadyExistsError:
            pass
        finally:
            admin.close()

    await asyncio.to_thread(create)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    out: list[float] = []
    try:
        await producer.send_and_wait(topic, b"warm-up")

        async def one(i: int):
            await asyncio.sleep(i / ramp)
            t0 = time.perf_counter()
            key = uuid.uuid4().hex.encode()
            acks = [await producer.send(topic, b"x" * size, key=key) for _ in range(2)]
            await asyncio.gather(*acks)
            out.append((time.perf_counter() - t0) * 1000)

        await asyncio.gather(*(one(i) for i in range(calls)))
    finally:
        await producer.stop()
    return out


async def run_chime(args, stereo, kvs_port: int, control_port: int, metrics_port: int, phase=None,
                    bootstrap: str = "", scratch_topic: str = "") -> list:
    from telephony_gateway import kvs_sim

    server = await kvs_sim.KvsServer().start(kvs_port)
    try:
        before = scrape(metrics_port, "lupita_gateway_calls_total", source="chime")
        post_ms: list[float] = []
        calls = await chime_phase(args, stereo, control_port, {"server": server}, post_ms)
        if phase is not None:
            phase.post_ms = quantiles(post_ms)
            if bootstrap:  # the baseline, in the same run, while the calls stream
                phase.produce_ms = quantiles(await produce_baseline(bootstrap, scratch_topic, args.calls, args.ramp, 420))
        deadline = time.monotonic() + len(stereo) / 8000 + 120
        while scrape(metrics_port, "lupita_gateway_calls_total", source="chime") - before < len(calls):
            if time.monotonic() > deadline:
                print("[chime] calls did not all end in time", file=sys.stderr)
                break
            await asyncio.sleep(0.5)
        return calls
    finally:
        await server.close()


async def chime_phase(args, stereo, control_port: int, kvs_holder: dict, post_ms: list | None = None) -> list:
    """The same calls as Chime Voice Connector calls: two KVS streams each (Lupita = the callee of
    an inbound call), served in real time by the stand-in; returns the calls and their ends."""
    import aiohttp

    from telephony_gateway import kvs_sim

    kvs = kvs_holder["server"]
    calls = []

    async def one(i: int):
        await asyncio.sleep(i / args.ramp)
        txn, cid = str(uuid.uuid4()), str(uuid.uuid4())
        tags = kvs_sim.chime_tags(txn, cid)
        now_ms = time.time_ns() // 1_000_000
        legs = []
        for caller, column, first in ((True, 1, 10_000), (False, 0, 20_000)):
            items = kvs_sim.fragments_of(stereo[:, column], first_number=first, start_ms=now_ms, tags=tags)
            stream = kvs.add(kvs_sim.KvsStream(kvs_sim.stream_arn(f"{txn}-{int(caller)}"), items, speed=1.0, pieces=50,
                                               wall_t0_ms=now_ms))
            legs.append(kvs_sim.streaming_event("STARTED", transaction_id=txn, call_id=cid, stream_arn=stream.arn,
                                                is_caller=caller, start_fragment_number=str(first),
                                                from_number=BENCH_PHONE, to_number="+15555550100", start_ms=now_ms))
        calls.append(f"chime-{txn}")
        async with aiohttp.ClientSession() as http:
            t0 = time.perf_counter()
            async with http.post(f"http://127.0.0.1:{control_port}/chime/events", json=legs,
                                 headers={"Authorization": f"Bearer {CONTROL_TOKEN}"}) as resp:
                assert resp.status == 202, resp.status
            if post_ms is not None:
                post_ms.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(one(i) for i in range(args.calls)))
    return calls


def start_gateway(bridge_target: str, env: dict, log_path: Path, frame_ms: int,
                  kvs_url: str = "") -> tuple[subprocess.Popen, int, int, int]:
    from loadgen.bridgeproc import lupita_command

    port, metrics, control = free_port(), free_port(), free_port()
    genv = {**env, "LUPITA_GATEWAY_TWILIO_AUTH_TOKEN": AUTH_TOKEN, "LUPITA_BRIDGE_TARGET": bridge_target,
            "LUPITA_GATEWAY_METRICS_HOST": "127.0.0.1", "LUPITA_GATEWAY_MAX_CALLS": "1000",
            "LUPITA_GATEWAY_BRIDGE_FRAME_MS": str(frame_ms), "LUPITA_GATEWAY_CONTROL_PORT": str(control),
            "LUPITA_GATEWAY_CONTROL_TOKENS": CONTROL_TOKEN, "LUPITA_GATEWAY_CHIME_KVS_ENDPOINT": kvs_url,
            "LUPITA_GATEWAY_CHIME_RECORDING_CONSENT": "true", "LUPITA_GATEWAY_CHIME_CONSENT_SOURCE": "bench", **KVS_ENV}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*lupita_command(), "gateway", "--host", "127.0.0.1", "--port", str(port),
                                 "--metrics-port", str(metrics)], stdout=log, stderr=subprocess.STDOUT, env=genv)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return proc, port, metrics, control
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"gateway did not become ready: {log_path.read_text(errors='replace')[-2000:]}")


def main(argv=None) -> int:
    args = parse_args(argv)
    from lupita.cli import load_stack_env

    load_stack_env()
    from loadgen import synth
    from loadgen.bridgeproc import BridgeProcess, proc_cpu_seconds
    from loadgen.frames import fit_duration
    from loadgen.settings import LoadgenSettings
    from lupita.topics import AUDIO_CHUNKS, CALL_LIFECYCLE, CHIME_CHECKPOINTS, CHIME_EVENTS, ensure_topics
    from lupita.v1 import audio_pb2, events_pb2

    settings = LoadgenSettings().model_copy(update={"topic_prefix": f"bench-gw-{uuid.uuid4().hex[:8]}."})
    token = settings.first_token
    if not token:
        print("error: no bearer token: run `lupita stack up` (writes .stack/env)", file=sys.stderr)
        return 2
    try:
        ensure_topics(settings, (AUDIO_CHUNKS, CALL_LIFECYCLE))
    except Exception as exc:  # noqa: BLE001
        print(f"error: Kafka not reachable ({exc!r}); start the stack with `lupita stack up`", file=sys.stderr)
        return 2
    stereo = fit_duration(synth.synthesize_dialogue(synth.DEFAULT_SCRIPT, 8000, cache_dir=settings.cache_dir),
                          8000, args.seconds)
    env = {**os.environ, "LUPITA_TOPIC_PREFIX": settings.topic_prefix}
    load_before = os.getloadavg()
    direct, via = Phase("direct (simulator -> bridge)", args.calls), Phase("Twilio -> gateway -> bridge", args.calls)
    chime = Phase("Chime KVS -> gateway -> bridge", args.calls)
    chime_ids: list[str] = []
    kvs_port = free_port()
    direct_ids: list[str] = []
    direct_sent: dict = {}
    call_minutes = args.calls * len(stereo) / 8000 / 60
    exit_code = 0
    with tempfile.TemporaryDirectory(prefix="lupita-bench-gw-") as logs:
        bridge = BridgeProcess(Path(logs) / "bridge.log", env=env).start()
        gw = None
        try:
            gw, port, metrics_port, control_port = start_gateway(bridge.target, env, Path(logs) / "gateway.log",
                                                                 args.bridge_frame_ms, f"http://127.0.0.1:{kvs_port}")
            # phase 1: the bridge's own figures
            print(f"[direct] {args.calls} calls x {args.seconds:g} s, real time ...", file=sys.stderr, flush=True)
            cpu0, t0 = bridge.cpu_seconds(), time.monotonic()
            direct_ids, direct_sent, direct_results = asyncio.run(direct_phase(args, stereo, bridge.target, token))
            direct.wall_s, direct.bridge_cpu_s = time.monotonic() - t0, bridge.cpu_seconds() - cpu0
            direct.ok, direct.call_minutes = sum(r.ok for r in direct_results), call_minutes
            direct.frames_sent = sum(r.frames_sent for r in direct_results)
            direct.ack_ms = quantiles([x * 1000 for r in direct_results for x in r.latencies_s])
            # phase 2: the same calls as Twilio Media Streams through the gateway
            print(f"[gateway] {args.calls} calls x {args.seconds:g} s, real time ...", file=sys.stderr, flush=True)
            cpu0, gcpu0, t0 = bridge.cpu_seconds(), proc_cpu_seconds(gw.pid), time.monotonic()
            calls, results = asyncio.run(twilio_phase(args, stereo, f"ws://127.0.0.1:{port}/twilio",
                                                      f"wss://127.0.0.1:{port}/twilio"))
            via.wall_s = time.monotonic() - t0
            via.bridge_cpu_s, via.gateway_cpu_s = bridge.cpu_seconds() - cpu0, proc_cpu_seconds(gw.pid) - gcpu0
            via.ok, via.call_minutes = sum(r.close_code == 1000 for r in results), call_minutes
            via.frames_sent = sum(len(c.media) for c in calls)
            if args.chime:  # phase 3: the same calls as Chime Voice Connector streams
                print(f"[chime] {args.calls} calls x {args.seconds:g} s, real time ...", file=sys.stderr, flush=True)
                cpu0, gcpu0, t0 = bridge.cpu_seconds(), proc_cpu_seconds(gw.pid), time.monotonic()
                ok0 = scrape(metrics_port, "lupita_gateway_calls_total", source="chime", outcome="completed")
                chime_ids = asyncio.run(run_chime(args, stereo, kvs_port, control_port, metrics_port, chime,
                                                  settings.kafka_bootstrap, settings.topic("bench-produce-baseline")))
                chime.wall_s = time.monotonic() - t0
                chime.bridge_cpu_s, chime.gateway_cpu_s = bridge.cpu_seconds() - cpu0, proc_cpu_seconds(gw.pid) - gcpu0
                chime.ok = int(scrape(metrics_port, "lupita_gateway_calls_total", source="chime", outcome="completed") - ok0)
                chime.call_minutes = call_minutes
                chime.frames_sent = len(chime_ids) * 2 * (len(stereo) // (8000 * FRAME_MS // 1000))
        finally:
            if gw is not None and gw.poll() is None:
                gw.send_signal(signal.SIGTERM)
                gw.wait(60)
            bridge.stop()
        records = asyncio.run(read_chunks(settings.kafka_bootstrap, settings.topic(AUDIO_CHUNKS)))
        lifecycle = asyncio.run(read_chunks(settings.kafka_bootstrap, settings.topic(CALL_LIFECYCLE)))

    # per-record latencies. A record's newest audio is its last 20 ms source frame: it starts
    # `dur - 20 ms` after the record's capture time (records may hold frames of 20 ms or, from the
    # gateway, joined frames of up to 100 ms).
    started_at = {}  # call id -> CallStarted.started_at_us (the gateway's clock origin of the call)
    for _, value in lifecycle:
        ev = events_pb2.CallLifecycle.FromString(value)
        if ev.WhichOneof("event") == "started":
            started_at[ev.call_id] = ev.started.started_at_us
    sent_index = {}  # (call id, leg, Twilio chunk) -> wall ms of the client's write (gateway phase)
    for call, res in zip(calls, results):
        call_id = f"twilio-{call.call_sid}"
        for idx, track, chunk, _ in call.media:
            if idx in res.sent_at:
                leg = audio_pb2.LEG_PERSON if track == "inbound" else audio_pb2.LEG_LUPITA
                sent_index[(call_id, leg, chunk)] = res.sent_wall_ms(idx)
    direct_set = set(direct_ids)
    chime_set = set(chime_ids)
    samples = defaultdict(int)
    lat = {"direct": [], "via": [], "direct_measured": [], "via_measured": []}
    for ts_ms, value in records:
        chunk = events_pb2.AudioChunk.FromString(value)
        n = len(chunk.payload) // 2
        samples[chunk.call_id] += n
        last_us = chunk.start_ts_us + n * 125 - FRAME_MS * 1000  # capture time of the newest 20 ms
        nominal = ts_ms - last_us / 1000
        if chunk.call_id in direct_set:
            direct.kafka_records += 1
            lat["direct"].append(nominal)
            sent = direct_sent.get((chunk.call_id, chunk.leg, chunk.last_frame_seq))
            if sent is not None:
                lat["direct_measured"].append(ts_ms - sent)
        elif chunk.call_id in chime_set:
            chime.kafka_records += 1
            lat.setdefault("chime", []).append(nominal)
        elif chunk.call_id.startswith("twilio-"):
            via.kafka_records += 1
            lat["via"].append(nominal)
            origin = started_at.get(chunk.call_id)
            if origin is not None:
                twilio_chunk = round((last_us - origin) / 20_000) + 1
                sent = sent_index.get((chunk.call_id, chunk.leg, twilio_chunk))
                if sent is not None:
                    lat["via_measured"].append(ts_ms - sent)
    per_frame = 8000 * FRAME_MS // 1000
    direct.frames_in_kafka = sum(samples[c] for c in direct_set) // per_frame
    via.frames_in_kafka = sum(samples[f"twilio-{c.call_sid}"] for c in calls) // per_frame
    direct.lost_frames = direct.frames_sent - direct.frames_in_kafka
    via.lost_frames = via.frames_sent - via.frames_in_kafka
    chime.frames_in_kafka = sum(samples[c] for c in chime_set) // per_frame
    chime.lost_frames = chime.frames_sent - chime.frames_in_kafka
    chime.nominal_ms = quantiles(lat.get("chime", []))
    direct.nominal_ms, via.nominal_ms = quantiles(lat["direct"]), quantiles(lat["via"])
    direct.measured_ms, via.measured_ms = quantiles(lat["direct_measured"]), quantiles(lat["via_measured"])
    if not args.keep_topics:
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        try:
            existing = set(admin.list_topics())
            admin.delete_topics([t for t in (settings.topic(AUDIO_CHUNKS), settings.topic(CALL_LIFECYCLE),
                                             settings.topic(CHIME_EVENTS), settings.topic(CHIME_CHECKPOINTS),
                                             settings.topic("bench-produce-baseline")) if t in existing])
        finally:
            admin.close()
    load_after = os.getloadavg()

    def f(x, nd=1):
        return "-" if x is None else f"{x:.{nd}f}"

    rows = [
        ("calls ok", direct.ok, via.ok),
        ("call-minutes", f(direct.call_minutes, 2), f(via.call_minutes, 2)),
        ("frames lost", direct.lost_frames, via.lost_frames),
        ("Kafka records", direct.kafka_records, via.kafka_records),
        ("source -> Kafka p50 ms", f(direct.measured_ms.get("p50")), f(via.measured_ms.get("p50"))),
        ("source -> Kafka p99 ms", f(direct.measured_ms.get("p99")), f(via.measured_ms.get("p99"))),
        ("source -> Kafka max ms", f(direct.measured_ms.get("max")), f(via.measured_ms.get("max"))),
        ("  same, from capture time p50 / p99", f"{f(direct.nominal_ms.get('p50'))} / {f(direct.nominal_ms.get('p99'))}",
         f"{f(via.nominal_ms.get('p50'))} / {f(via.nominal_ms.get('p99'))}"),
        ("bridge ack p50 / p99 ms (frame -> Ack)", f"{f(direct.ack_ms.get('p50'))} / {f(direct.ack_ms.get('p99'))}", "-"),
        ("bridge CPU-s / call-minute", f(direct.per_call_minute(direct.bridge_cpu_s), 3),
         f(via.per_call_minute(via.bridge_cpu_s), 3)),
        ("gateway CPU-s / call-minute", "-", f(via.per_call_minute(via.gateway_cpu_s), 3)),
    ]
    both = via.measured_ms and direct.measured_ms
    added50 = via.measured_ms["p50"] - direct.measured_ms["p50"] if both else None
    added99 = via.measured_ms["p99"] - direct.measured_ms["p99"] if both else None
    width = max(len(r[0]) for r in rows)
    print(f"telephony-gateway benchmark: {args.calls} concurrent calls x {args.seconds:g} s per phase, real time, "
          f"8 kHz, 20 ms source frames (Twilio: mu-law in, PCM16 to the bridge in {args.bridge_frame_ms} ms frames; "
          f"direct: 20 ms frames)")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {load_before[0]:.2f} before / {load_after[0]:.2f} after")
    print(f"{'':{width}}  {'direct':>18}  {'via gateway':>18}")
    for name, a, b in rows:
        print(f"{name:{width}}  {str(a):>18}  {str(b):>18}")
    print(f"added by the gateway (via - direct, from the source's write): p50 {f(added50)} ms, p99 {f(added99)} ms")
    if args.chime:
        print(f"Chime (KVS stand-in -> gateway -> bridge): calls ok {chime.ok}/{args.calls}, frames lost "
              f"{chime.lost_frames}, Kafka records {chime.kafka_records}, capture -> Kafka p50 / p99 / max "
              f"{f(chime.nominal_ms.get('p50'))} / {f(chime.nominal_ms.get('p99'))} / {f(chime.nominal_ms.get('max'))} ms, "
              f"gateway CPU-s / call-minute {f(chime.per_call_minute(chime.gateway_cpu_s), 3)}, "
              f"bridge {f(chime.per_call_minute(chime.bridge_cpu_s), 3)}")
        print(f"Chime events: POST /chime/events -> 202 (2 events, the broker's ack inside) p50 / p99 / max "
              f"{f(chime.post_ms.get('p50'))} / {f(chime.post_ms.get('p99'))} / {f(chime.post_ms.get('max'))} ms; "
              f"baseline, 2 records produced directly (acks=all) p50 / p99 / max {f(chime.produce_ms.get('p50'))} / "
              f"{f(chime.produce_ms.get('p99'))} / {f(chime.produce_ms.get('max'))} ms")
        if chime.ok != args.calls or chime.lost_frames:
            exit_code = 1
    if direct.ok != args.calls or via.ok != args.calls or direct.lost_frames or via.lost_frames:
        exit_code = 1
    if args.json:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out = RESULTS_DIR / f"gateway-{time.strftime('%Y%m%d-%H%M%S')}-{args.calls}calls.json"
        out.write_text(json.dumps({"bench": "gateway", "args": vars(args), "loadavg_before": load_before,
                                   "loadavg_after": load_after,
                                   "phases": [asdict(direct), asdict(via)] + ([asdict(chime)] if args.chime else []),
                                   "added_ms": {"p50": added50, "p99": added99}}, indent=2))
        print(f"results written to {out}")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
