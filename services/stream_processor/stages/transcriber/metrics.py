"""Prometheus metrics of the transcriber stage (``lupita_transcriber_*``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SEGMENTS = Counter(
    "lupita_transcriber_segments_total",
    "speech.segments records handled, by kind and outcome (transcribed, empty, duplicate, stale, error)",
    ["kind", "outcome"],
)
BAD_RECORDS = Counter("lupita_transcriber_bad_records_total", "Records that are not valid SpeechSegments", ["reason"])
DECODE_SECONDS = Histogram(
    "lupita_transcriber_decode_seconds", "Time to transcribe one segment (thread pool)", ["kind"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
)
LAG_SECONDS = Histogram(
    "lupita_transcriber_lag_seconds",
    "From the vad publishing a segment to its transcript being published (queueing + decoding)", ["kind"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
)
IN_FLIGHT = Gauge("lupita_transcriber_in_flight", "Segments taken from Kafka and not yet done")

DECISIONS = Counter(
    "lupita_transcriber_schedule_decisions_total",
    "Scheduling decisions taken against arrival order: agent_waited (a person final ran while an agent "
    "final waited), partial_skipped (a partial refused because a final waited), partial_cancelled "
    "(a queued partial dropped before it ran, its final being due), agent_after_call (an agent final "
    "published after the person's leg had ended: the agent's leg waited until after the call), "
    "person_thread (a person final taken by a thread kept for the person's finals)",
    ["decision"],
)
WAITING = Gauge("lupita_transcriber_waiting", "Decodes waiting for a worker, by class", ["cls"])
QUEUE_SECONDS = Histogram(
    "lupita_transcriber_queue_seconds", "Time a decode waited for a worker, by class", ["cls"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128),
)
BATCH_REQUESTS = Histogram(
    "lupita_transcriber_batch_requests",
    "Requests (single finals or packed finals of one leg) decoded together in one batched call",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
)
PACKED = Counter("lupita_transcriber_packed_segments_total",
                 "Finals decoded together with other segments of their leg in one window")
GAP_WORDS = Counter(
    "lupita_transcriber_pack_gap_words_total",
    "Words a packed decode put in the silence between two segments: dropped, never given to either",
)
GUARD_ACTIONS = Counter(
    "lupita_transcriber_guard_actions_total",
    "What the ASR's guards did in a published transcript, by kind and action (the action's name without its "
    "detail): full_window (a trimmed-window decode the guard redid with the 30 s window and the fallback "
    "ladder), empty_retry, pack_retry, batch_redecode, quiet_audio, hallucination, repetition, ...; "
    "full_window / segments = the share of finals decoded twice",
    ["kind", "action"],
)
VOICED_FINALS = Counter("lupita_transcriber_voiced_finals_total",
                        "Final segments (audio the vad called speech) published, by leg", ["leg"])
EMPTY_FINALS = Counter(
    "lupita_transcriber_empty_finals_total",
    "Finals of voiced segments published without text, by leg and reason (error, quiet_audio, silence, "
    "hallucination, repetition, pack_gap, no_speech_decoded); / voiced_finals = the empty-final rate",
    ["leg", "reason"],
)
VOCABULARIES = Counter(
    "lupita_transcriber_call_vocabularies_total",
    "Call vocabularies built at a call's start, by outcome: facts (the person's facts + lexicon), no_facts, "
    "lexicon_only (no phone hash), read_failed (Postgres unreadable: lexicon alone)",
    ["outcome"],
)
