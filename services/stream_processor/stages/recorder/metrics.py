"""Prometheus metrics of the recorder stage (``lupita_recorder_*``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECORDS = Counter("lupita_recorder_records_total", "Kafka records consumed by the recorder", ["topic"])
BAD_RECORDS = Counter(
    "lupita_recorder_bad_records_total",
    "Records skipped because they cannot be used (undecodable, invalid_call_id, key_mismatch, "
    "invalid, unknown_call, late)",
    ["reason"],
)
CHUNKS = Counter("lupita_recorder_chunks_total", "Audio chunks buffered for a recording", ["leg"])
DUPLICATE_CHUNKS = Counter("lupita_recorder_duplicate_chunks_total", "Chunks received more than once")
CALLS = Counter(
    "lupita_recorder_calls_total", "Calls finalised, by outcome (recorded, skipped, failed)", ["outcome"]
)
FINALIZE = Histogram(
    "lupita_recorder_finalize_seconds",
    "Time to mux, upload and register one call",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
AUDIO_SECONDS = Counter("lupita_recorder_audio_seconds_total", "Seconds of stereo audio archived")
OPEN_CALLS = Gauge("lupita_recorder_open_calls", "Calls buffered and not yet finalised on this worker")
RUNNING = Gauge("lupita_recorder_finalizations_running", "Finalisations running in the thread pool")
PURGED = Counter("lupita_recorder_calls_purged_total", "Finished calls whose state was removed")
