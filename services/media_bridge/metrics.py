"""Prometheus metrics of the media bridge (names ``lupita_bridge_<thing>_<unit>``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ACTIVE_CALLS = Gauge("lupita_bridge_active_calls", "Calls currently streaming through this bridge")
FRAMES = Counter("lupita_bridge_frames_total", "Audio frames accepted", ["leg"])
BYTES = Counter("lupita_bridge_bytes_total", "Audio payload bytes accepted", ["leg"])
CHUNKS = Counter("lupita_bridge_chunks_total", "AudioChunk records acknowledged by Kafka", ["leg"])
KAFKA_PUBLISH = Histogram(
    "lupita_bridge_kafka_publish_seconds",
    "Time from handing a record to the producer until Kafka acknowledged it",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ERRORS = Counter("lupita_bridge_errors_total", "Calls ended by an error, by kind", ["kind"])
CALLS = Counter("lupita_bridge_calls_total", "Call streams finished, by outcome", ["outcome"])
