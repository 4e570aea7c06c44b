"""Prometheus metrics of the understanding stage (``lupita_understanding_*``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECORDS = Counter("lupita_understanding_records_total",
                  "Records handled, by kind (final, partial, blank, leg_complete, started, ended, duplicate, late)",
                  ["kind"])
BAD_RECORDS = Counter("lupita_understanding_bad_records_total", "Records that are not valid events", ["reason"])
ALERTS_RAISED = Counter("lupita_understanding_alerts_total", "Alerts published on the alerts topic",
                        ["cue_id", "severity"])
ALERT_LATENCY = Histogram("lupita_understanding_alert_latency_seconds",
                          "From the transcriber publishing a final to its alert being published",
                          buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5))
CALLS = Counter("lupita_understanding_calls_total", "Calls by outcome (analysed, skipped_no_consent, failed)",
                ["outcome"])
SPEECH_SECONDS = Counter("lupita_understanding_speech_seconds_total",
                         "Seconds of transcribed speech (final utterances) per leg", ["leg"])
FINISH_SECONDS = Histogram("lupita_understanding_finish_seconds",
                           "Analysis + embeddings + Weaviate + Postgres of one call (thread pool)",
                           buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64))
STORE_RETRIES = Counter("lupita_understanding_store_retries_total",
                        "Work put back after a store stayed down for the sinks' whole retry budget", ["work"])
IN_PROGRESS = Gauge("lupita_understanding_work_in_progress", "Alert writes and finishes running or waiting")
ERRORS = Counter("lupita_understanding_errors_total",
                 "Exceptions that are not a bad record nor a store or broker outage (bugs), by where: record, "
                 "work, write_alert", ["where"])
