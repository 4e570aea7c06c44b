"""Prometheus metrics of the vad stage (``lupita_vad_*``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECORDS = Counter("lupita_vad_records_total", "Kafka records consumed by the vad stage", ["topic"])
BAD_RECORDS = Counter(
    "lupita_vad_bad_records_total",
    "Records or chunks the vad stage could not use (undecodable, invalid_call_id, key_mismatch, invalid, "
    "rate_mismatch, beyond_limit, held_overflow, unknown_call, error)",
    ["reason"],
)
SKIPPED_CHUNKS = Counter(
    "lupita_vad_skipped_chunks_total",
    "Chunks not fed to the VAD on purpose (duplicate = replayed or redelivered, overlap = all its samples "
    "already placed, late = after the call was finished, no_consent)",
    ["reason"],
)
SEGMENTS = Counter("lupita_vad_segments_total", "speech.segments records published", ["kind", "leg"])
BATCH_STREAMS = Histogram(
    "lupita_vad_batch_streams", "Streams (call legs) in one batched VAD inference",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
BATCH_SECONDS = Histogram(
    "lupita_vad_batch_seconds", "Time to apply one batch of records (decode, feed, batched drain)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
OPEN_CALLS = Gauge("lupita_vad_open_calls", "Calls whose legs are being segmented on this worker")
UNREADABLE_STATES = Counter("lupita_vad_unreadable_states_total",
                            "vad_calls table entries that could not be read (dead-lettered, the call starts afresh)")
