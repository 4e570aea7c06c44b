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
   ``companion_calls`` row (phone as keyed hash + ciphertext only).
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

from lupita.stack import manager

STAGE = "[demo]"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--speed", type=float, default=4.0,
                        help="how much faster than real time the call is streamed (1 = real time; default 4)")
    parser.add_argument("--no-consent", action="store_true",
                        help="simulate a person who did not agree to be recorded")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="seconds to wait for the recording to land (default 180)")


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
        return 0
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
