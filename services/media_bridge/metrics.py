"""Prometheus metrics of the media bridge (names ``lupita_bridge_<thing>_<unit>``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Every ``kind`` a Violation or failure can carry (validation.py, server.py): exported at 0
# from the start so dashboards and alerts see each series before its first error.
ERROR_KINDS = (
    "auth", "call_id", "sample_rate", "codec", "direction", "phone", "timestamp", "empty_message", "undecodable",
    "before_start", "second_start", "after_end", "no_end", "leg", "seq", "payload", "credits",
    "duplicate_call", "too_many_calls", "kafka",
)
OUTCOMES = ("completed", "disconnect", "shutdown", "error", "rejected", "kafka_error")
LEGS = ("lupita", "person")

ACTIVE_CALLS = Gauge("lupita_bridge_active_calls", "Calls currently streaming through this bridge")
FRAMES = Counter("lupita_bridge_frames_total", "Audio frames accepted", ["leg"])
BYTES = Counter("lupita_bridge_bytes_total", "Audio payload bytes accepted", ["leg"])
CHUNKS = Counter("lupita_bridge_chunks_total", "AudioChunk records acknowledged by Kafka", ["leg"])
KAFKA_PUBLISH = Histogram(
    "lupita_bridge_kafka_publish_seconds",
    "Time from handing a record to the producer until Kafka acknowledged it",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ERRORS = Counter("lupita_bridge_errors_total", "Streams refused or ended by an error, by kind", ["kind"])
CALLS = Counter("lupita_bridge_calls_total", "Call streams finished, by outcome", ["outcome"])

for _kind in ERROR_KINDS:
    ERRORS.labels(_kind)
for _outcome in OUTCOMES:
    CALLS.labels(_outcome)
for _leg in LEGS:
    FRAMES.labels(_leg)
    BYTES.labels(_leg)
    CHUNKS.labels(_leg)
