"""``lupita demo``: one simulated Spanish call pushed end to end through the real local stack.

Steps (each printed as it happens):
1. the local stack comes up (Kafka, Postgres, MinIO, Weaviate; installed on first use),
   the Postgres migrations and the Kafka topics are applied;
2. a media bridge and a stream-processor worker start as child processes
   (their JSON logs go to ``.stack/logs/demo-*.log``);
3. the call simulator synthesises a Spanish check-in call (espeak-ng, telephone band) and
   streams both legs through the bridge;
4. once the recorder has finished, the demo prints what landed in each store: the Kafka
   records, the WAV in the legal-archive bucket with its Object Lock retention, and the
   ``companion_calls`` row (phone as keyed hash + ciphertext only);
5. when the worker runs the understanding stages (vad, transcriber, understanding: the default
   ``LUPITA_STAGES``), it waits for ``companion_calls.processed_at`` and prints the speech
   segments the VAD found, the transcript with timings, the alerts, the analysis, the caller's
   ``user_facts`` and the ``LupitaConversation`` object in Weaviate (vector length, s3_uri).
   Otherwise it says so and stops after the recording (exit 0);
6. the voice agent's view: a ``lupita context-api`` child answers an ``assistant-request`` and a
   ``getUserContext`` tool call for the demo caller, printed as VAPI sends and receives them (the
   caller's number shown as ``[phone]``: it never goes to the terminal or a log).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from lupita_dev.stack import manager

STAGE = "[demo]"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--speed", type=float, default=4.0,
                        help="how much faster than real time the call is streamed (1 = real time; default 4)")
    parser.add_argument("--no-consent", action="store_true",
                        help="simulate a person who did not agree to be recorded")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds to wait for each result (the recording, then the analysis) before "
                             "giving up; the waits end as soon as the result is there (default 600: a first "
                             "run on a busy 2-core machine loads every model)")


def say(message: str) -> None:
    print(f"{STAGE} {message}", flush=True)


class Child:
    """A ``lupita`` sub-command running as a child process, logging to a file."""

    def __init__(self, name: str, args: list[str]) -> None:
        self.name = name
        self.log_path = manager.stack_dir() / "logs" / f"demo-{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        from loadgen.bridgeproc import lupita_command

        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([*lupita_command(), *args], stdout=log, stderr=subprocess.STDOUT)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def run(args: argparse.Namespace) -> int:
    say("bringing up the local stack (first run installs the servers: minutes)")
    env = manager.up()
    os.environ.update({k: v for k, v in env.items() if k not in os.environ})

    from lupita.config import CommonSettings
    from lupita.db import migrate
    from lupita.topics import ensure_topics

    settings = CommonSettings()
    applied = migrate(settings.postgres_dsn.get_secret_value())
    say(f"postgres migrations applied: {', '.join(applied) if applied else 'already up to date'}")
    ensure_topics(settings)
    say(f"kafka topics ready on {settings.kafka_bootstrap}")

    from loadgen.bridgeproc import BridgeProcess

    call_id = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    bridge = BridgeProcess(manager.stack_dir() / "logs" / "demo-bridge.log")
    worker: Child | None = None
    try:
        bridge.start()
        say(f"media bridge listening on {bridge.target} (log {bridge.log_path})")
        worker = Child("worker", ["worker", "--metrics-port", "0"])
        say(f"stream-processor worker started (log {worker.log_path})")

        say(f"streaming a synthesised Spanish call {call_id} at {args.speed:g}x real time")
        call = [*_lupita(), "call", "--target", bridge.target, "--call-id", call_id,
                "--speed", str(args.speed), "--json"]
        if args.no_consent:
            call.append("--no-consent")
        done = subprocess.run(call, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            say(f"the call failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
            return 1
        report = json.loads(done.stdout)
        _print_call_report(report)

        say("waiting for the recorder to write the call to S3 and Postgres")
        row = _wait_for_row(settings, call_id, args.timeout, worker)
        if row is None:
            say(f"no finished companion_calls row for {call_id} after {args.timeout:.0f}s; "
                f"see {worker.log_path}")
            return 1
        _print_kafka(settings, call_id)
        _print_s3(settings, row)
        _print_row(row)
        rc = _understanding(settings, call_id, row, args.timeout, worker)
        return rc if rc != 0 else _voice_agent_view(call_id)
    finally:
        if worker is not None:
            worker.stop()
        bridge.stop()


def _lupita() -> list[str]:
    from loadgen.bridgeproc import lupita_command

    return lupita_command()


def _print_call_report(report: dict) -> None:
    latency = report.get("ack_latency_ms") or {}
    say(f"call simulator: {report['ok']}/{report['calls']} call ok, {report['frames_sent']} frames sent, "
        f"{report['frames_acked']} acknowledged after Kafka had them "
        f"(ack latency p50 {latency.get('p50') or 0:.1f} ms, p99 {latency.get('p99') or 0:.1f} ms)")


def _wait_for_row(settings, call_id: str, timeout_s: float, worker: Child) -> dict | None:
    import psycopg
    from psycopg.rows import dict_row

    deadline = time.monotonic() + timeout_s
    with psycopg.connect(settings.postgres_dsn.get_secret_value(), row_factory=dict_row,
                         autocommit=True) as conn:
        while time.monotonic() < deadline:
            worker.check_alive()
            row = conn.execute(
                "SELECT * FROM companion_calls WHERE call_id = %s AND recording_status <> 'pending'",
                (call_id,),
            ).fetchone()
            if row:
                return row
            time.sleep(0.5)
    return None


def _print_kafka(settings, call_id: str) -> None:
    from loadgen.verify import ChunkTally
    from kafka import KafkaConsumer

    topic = settings.topic("audio.chunks")
    tally = ChunkTally([call_id])
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=3000, group_id=None)
    try:
        for record in consumer:
            if record.key == call_id.encode():
                tally.add(record.value)
    finally:
        consumer.close()
    say(f"kafka {topic}: {tally.records_of(call_id)} AudioChunk records (protobuf) holding "
        f"{tally.frames_of_leg(call_id, 1)} Lupita-leg and {tally.frames_of_leg(call_id, 2)} "
        f"person-leg frames")


def _print_s3(settings, row: dict) -> None:
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=settings.s3_endpoint, region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key.get_secret_value(),
        aws_secret_access_key=settings.s3_secret_key.get_secret_value(),
    )
    bucket = settings.s3_legal_bucket
    if not row.get("s3_legal_key"):
        say(f"no audio recorded ({row.get('recording_skipped_reason')}); "
            f"metadata: s3://{bucket}/{row.get('s3_metadata_key')}")
        return
    key = row["s3_legal_key"]
    head = s3.head_object(Bucket=bucket, Key=key)
    header = s3.get_object(Bucket=bucket, Key=key, Range="bytes=0-43")["Body"].read()
    channels = int.from_bytes(header[22:24], "little")
    rate = int.from_bytes(header[24:28], "little")
    data_bytes = int.from_bytes(header[40:44], "little")
    seconds = data_bytes / (rate * channels * 2) if rate and channels else 0.0
    say(f"recording: s3://{bucket}/{key}")
    say(f"  {head['ContentLength']} bytes, WAV {channels} channels at {rate} Hz, {seconds:.2f} s, "
        f"version {head.get('VersionId')}, encryption {head.get('ServerSideEncryption')}")
    say(f"  Object Lock {head.get('ObjectLockMode')} until {head.get('ObjectLockRetainUntilDate')}")
    for extra in ("s3_metadata_key",):
        if row.get(extra):
            say(f"  {extra.removeprefix('s3_').removesuffix('_key')}: s3://{bucket}/{row[extra]}")
    if row.get("s3_active_key"):
        say(f"  processing copy: s3://{settings.s3_active_bucket}/{row['s3_active_key']}")


def _print_row(row: dict) -> None:
    say("postgres companion_calls row:")
    for key, value in row.items():
        if key == "phone_encrypted" and value is not None:
            value = f"<{len(value)} bytes AES-256-GCM>"
        say(f"  {key:<26} {value}")


# --- the understanding stages (vad → transcriber → understanding) --------------------------------

UNDERSTANDING_STAGES = ("vad", "transcriber", "understanding")


def _stages_missing() -> tuple[list[str], str]:
    """The understanding stages the demo's worker will not run, and why (empty: all run)."""
    from stream_processor import settings as sp_settings

    known = getattr(sp_settings, "STAGES", ())
    absent = [s for s in UNDERSTANDING_STAGES if s not in known]
    if absent:
        return absent, f"this worker build has no {', '.join(absent)} stage"
    try:
        chosen = sp_settings.PipelineSettings().stage_set
    except Exception as exc:  # invalid LUPITA_STAGES: the worker would not start either
        return list(UNDERSTANDING_STAGES), f"the worker settings are invalid ({type(exc).__name__})"
    off = [s for s in UNDERSTANDING_STAGES if s not in chosen]
    return off, f"LUPITA_STAGES={','.join(sorted(chosen))} leaves out {', '.join(off)}" if off else ""


def _understanding(settings, call_id: str, row: dict, timeout_s: float, worker: Child) -> int:
    """Wait for the call's analysis (companion_calls.processed_at) and print what the
    understanding stages stored: segments, transcript, alerts, analysis, facts, Weaviate object."""
    missing, why = _stages_missing()
    if missing:
        say(f"the understanding stages are not running ({why}): no transcript or analysis for this call; "
            "stopping after the recording")
        return 0
    if row.get("recording_status") != "recorded":
        say(f"the call was not recorded ({row.get('recording_skipped_reason')}): nothing is derived from it")
        return 0
    say("waiting for the understanding stages (vad, transcriber, analysis) to store the call")
    done = _wait_for_processed(settings, call_id, timeout_s, worker)
    if done is None:
        say(f"companion_calls.processed_at of {call_id} still empty after {timeout_s:.0f}s; "
            f"see {worker.log_path}")
        return 1
    _print_segments(settings, call_id)
    _print_understanding(settings, call_id, done)
    _print_weaviate(call_id, done)
    return 0


def _wait_for_processed(settings, call_id: str, timeout_s: float, worker: Child) -> dict | None:
    import psycopg
    from psycopg.rows import dict_row

    deadline = time.monotonic() + timeout_s
    with psycopg.connect(settings.postgres_dsn.get_secret_value(), row_factory=dict_row,
                         autocommit=True) as conn:
        while time.monotonic() < deadline:
            worker.check_alive()
            row = conn.execute(
                "SELECT * FROM companion_calls WHERE call_id = %s AND processed_at IS NOT NULL", (call_id,),
            ).fetchone()
            if row:
                return row
            time.sleep(0.5)
    return None


def _print_segments(settings, call_id: str) -> None:
    """FINAL speech segments per leg, as the vad stage published them on speech.segments."""
    from kafka import KafkaConsumer

    from lupita.topics import SPEECH_SEGMENTS
    from lupita.v1 import events_pb2

    topic = settings.topic(SPEECH_SEGMENTS)
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=3000, group_id=None)
    per_leg = {"lupita": [], "person": []}
    names = {1: "lupita", 2: "person"}
    try:
        for record in consumer:
            if record.key != call_id.encode():
                continue
            seg = events_pb2.SpeechSegment()
            seg.ParseFromString(record.value)
            if seg.kind == events_pb2.SEGMENT_KIND_FINAL and seg.leg in names:
                per_leg[names[seg.leg]].append((seg.seq, seg.start_us / 1e6, seg.end_us / 1e6))
    finally:
        consumer.close()
    if not any(per_leg.values()):
        say(f"kafka {topic}: no FINAL segment of the call on the topic (see the transcript below)")
        return
    say(f"kafka {topic}: speech segments found by the VAD:")
    for leg, segs in per_leg.items():
        spans = ", ".join(f"{a:.2f}-{b:.2f}s" for _, a, b in sorted(set(segs)))
        say(f"  {leg:<7} {len(set(segs))} segment(s){': ' + spans if spans else ''}")


def _print_understanding(settings, call_id: str, row: dict) -> None:
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(settings.postgres_dsn.get_secret_value(), row_factory=dict_row,
                         autocommit=True) as conn:
        utts = conn.execute(
            "SELECT leg, seq, start_s, end_s, text, confidence FROM call_utterances WHERE call_id = %s "
            "ORDER BY start_s, leg, seq", (call_id,)).fetchall()
        alerts = conn.execute(
            "SELECT cue_id, severity, evidence, raised_at FROM call_alerts WHERE call_id = %s ORDER BY raised_at",
            (call_id,)).fetchall()
        facts = conn.execute(
            "SELECT fact_type, fact_key, fact_value, confidence, is_active FROM user_facts "
            "WHERE phone_number_hash = %s ORDER BY fact_type, fact_key, id",
            (row.get("phone_number_hash"),)).fetchall() if row.get("phone_number_hash") else []
    say(f"postgres call_utterances: the transcript ({len(utts)} utterances, call time in seconds):")
    for u in utts:
        conf = "" if u["confidence"] is None else f" (confidence {u['confidence']:.2f})"
        say(f"  [{u['start_s']:6.2f} - {u['end_s']:6.2f}] {u['leg']:<7} {u['text']}{conf}")
    say(f"postgres call_alerts: {len(alerts)} alert(s) raised during the call")
    for a in alerts:
        ev = a["evidence"] or {}
        say(f"  {a['severity']:<8} {a['cue_id']}: \"{ev.get('text', '')}\" ({ev.get('leg')} seq {ev.get('seq')}, "
            f"{float(ev.get('start_s') or 0):.2f}s)")
    analysis = row.get("analysis") or {}
    say("postgres companion_calls analysis:")
    say(f"  topics                     {row.get('topics')}")
    say(f"  emotion_primary            {row.get('emotion_primary')}")
    say(f"  behavioral_codes_triggered {row.get('behavioral_codes_triggered')}")
    say(f"  summary                    {row.get('summary')}")
    say(f"  analyzer                   {analysis.get('analyzer')}")
    say(f"  weaviate_id                {row.get('weaviate_id')}")
    say(f"  processed_at               {row.get('processed_at')}")
    say(f"postgres user_facts for the caller's phone hash: {len(facts)} row(s)")
    for f in facts:
        state = "" if f["is_active"] else " (superseded)"
        say(f"  {f['fact_type']:<11} {f['fact_key']:<20} {f['fact_value']!r} confidence {f['confidence']:.2f}{state}")


def _print_weaviate(call_id: str, row: dict) -> None:
    import weaviate

    from stream_processor.stages.understanding.settings import UnderstandingSettings

    s = UnderstandingSettings()
    if not row.get("weaviate_id"):
        say("weaviate: no object (the call has no utterance to embed)")
        return
    client = weaviate.connect_to_custom(
        http_host=s.weaviate_host, http_port=s.weaviate_http_port, http_secure=False,
        grpc_host=s.weaviate_host, grpc_port=s.weaviate_grpc_port, grpc_secure=False,
    )
    try:
        coll = client.collections.use(s.weaviate_conversation_collection)
        obj = coll.query.fetch_object_by_id(str(row["weaviate_id"]), include_vector=True)
        if obj is None:
            say(f"weaviate {s.weaviate_conversation_collection}: object {row['weaviate_id']} NOT FOUND")
            return
        vector = obj.vector.get("default") if isinstance(obj.vector, dict) else obj.vector
        p = obj.properties
        say(f"weaviate {s.weaviate_conversation_collection} object {obj.uuid}:")
        say(f"  vector length {len(vector or [])}, s3_uri {p.get('s3_uri')}")
        say(f"  topics {p.get('topics')}, emotion {p.get('emotion')}, duration {p.get('duration_seconds')} s, "
            f"region {p.get('region')}")
    finally:
        client.close()



# --- the voice agent's view (context-api) -----------------------------------------------------------


def _demo_phone() -> str:
    """The number the call simulator gave the demo call (``lupita call``'s first call)."""
    from loadgen.runner import synthetic_phone

    return synthetic_phone(0)


def _voice_agent_view(call_id: str) -> int:
    """Start ``lupita context-api`` and show what VAPI would get for the demo caller: the answer to
    an ``assistant-request`` and to a ``getUserContext`` tool call."""
    import secrets
    import urllib.request

    token = secrets.token_urlsafe(24)
    os.environ.setdefault("LUPITA_CONTEXT_API_ASSISTANT_ID", "lupita-demo-assistant")
    os.environ["LUPITA_CONTEXT_API_AUTH_MODE"] = "bearer"
    os.environ["LUPITA_CONTEXT_API_BEARER_TOKENS"] = token
    api = Child("context-api", ["context-api", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"])
    try:
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            api.check_alive()
            for line in api.log_path.read_text(errors="replace").splitlines():
                if '"context api listening"' in line:
                    port = json.loads(line)["port"]
            time.sleep(0.1)
        if port is None:
            say(f"the context API did not start; see {api.log_path}")
            return 1
        say(f"context API listening on 127.0.0.1:{port} (log {api.log_path}); the voice agent's view of the caller:")
        phone = _demo_phone()
        vapi_call = {"id": f"vapi-{uuid.uuid4()}", "type": "inboundPhoneCall",
                     "customer": {"number": phone}, "metadata": {"lupita_call_id": call_id}}
        requests = [
            {"message": {"type": "assistant-request", "timestamp": int(time.time() * 1000), "call": vapi_call}},
            {"message": {"type": "tool-calls", "timestamp": int(time.time() * 1000), "call": vapi_call,
                         "toolCallList": [{"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                                           "function": {"name": "getUserContext", "arguments": "{}"}}]}},
        ]
        for body in requests:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/vapi/webhook", data=json.dumps(body).encode(), method="POST",
                headers={"content-type": "application/json", "authorization": f"Bearer {token}"})
            started = time.perf_counter()
            with urllib.request.urlopen(req, timeout=10) as r:
                answer = json.loads(r.read())
            took = (time.perf_counter() - started) * 1000
            shown = json.loads(json.dumps(body).replace(phone, "[phone]"))
            say(f"VAPI → POST /vapi/webhook ({body['message']['type']}):")
            print(json.dumps(shown, indent=2, ensure_ascii=False), flush=True)
            say(f"context API → VAPI ({took:.1f} ms):")
            for result in answer.get("results", []):
                if "result" in result:  # the tool's result is a JSON string: shown decoded
                    result["result"] = json.loads(result["result"])
            print(json.dumps(answer, indent=2, ensure_ascii=False), flush=True)
        return 0
    finally:
        api.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
