"""Kafka topic names and creation. Every topic is keyed by call_id (UTF-8)."""

from __future__ import annotations

import logging

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from .config import CommonSettings

log = logging.getLogger(__name__)

AUDIO_CHUNKS = "audio.chunks"
CALL_LIFECYCLE = "call.lifecycle"
SPEECH_SEGMENTS = "speech.segments"
TRANSCRIPTS = "transcripts"
CALL_ANALYSIS = "call.analysis"
ALERTS = "alerts"

ALL = (AUDIO_CHUNKS, CALL_LIFECYCLE, SPEECH_SEGMENTS, TRANSCRIPTS, CALL_ANALYSIS, ALERTS)

# Callbacks that fell due, published by the context API's dispatcher for an outbound dialer. Keyed
# by the callback id (never a phone number). Not in ALL (the stream topics every service
# creates): the context API creates it itself (CONTEXT_API); k8s/kafka/topics.yaml declares both.
CALLBACKS_DUE = "callbacks.due"
CONTEXT_API = (CALLBACKS_DUE,)

# The telephony gateway's Chime path, created by the gateway itself (TELEPHONY_GATEWAY), not in ALL:
# the Voice Connector's streaming events as the gateway's control API took them (keyed by the
# transaction id; the person's number encrypted), consumed by the gateway pods as one group, and the
# calls' checkpoints (keyed by call, compacted: the latest state of each call; "compact,delete" so
# the end markers of finished calls go after the retention too).
CHIME_EVENTS = "telephony.chime.events"
CHIME_CHECKPOINTS = "telephony.chime.checkpoints"
# Records of the events topic a pod cannot use (not an event, an unknown status, a number that does
# not decrypt with this key), as they were, with their reason and source in headers (below).
CHIME_DEAD_LETTERS = "telephony.chime.dead-letters"
TELEPHONY_GATEWAY = (CHIME_EVENTS, CHIME_CHECKPOINTS, CHIME_DEAD_LETTERS)
CLEANUP_POLICY = {CHIME_CHECKPOINTS: "compact,delete"}

# Every topic the platform uses, whoever creates it: the set k8s/kafka/topics.yaml declares.
EVERY = ALL + CONTEXT_API + TELEPHONY_GATEWAY

# How long each topic keeps its records (retention.ms; cleanup.policy delete). Records carry
# people's voice and words (audio, segments, transcripts, the analysis, alerts with the sentence
# said) and cannot be deleted one by one: an erasure (context-api) states these, read back from the
# broker. The same values as k8s/kafka/topics.yaml (a test compares them).
DAY_MS = 24 * 3600 * 1000
RETENTION_MS = {
    AUDIO_CHUNKS: 3 * DAY_MS, SPEECH_SEGMENTS: 3 * DAY_MS, CALL_LIFECYCLE: 7 * DAY_MS, TRANSCRIPTS: 7 * DAY_MS,
    CALL_ANALYSIS: 7 * DAY_MS, ALERTS: 14 * DAY_MS, CALLBACKS_DUE: 7 * DAY_MS,
    CHIME_EVENTS: 1 * DAY_MS, CHIME_CHECKPOINTS: 1 * DAY_MS, CHIME_DEAD_LETTERS: 7 * DAY_MS,
}

# Headers of a dead letter (a record put as it was on a dead-letter topic): why, and where it was
# read (``topic/partition/offset``). The stream stages (faust_kit) and the gateway write the same.
REASON_HEADER = "lupita-reason"
SOURCE_HEADER = "lupita-source"


def topic_configs(name: str, configs: dict[str, str] | None = None) -> dict[str, str]:
    """The configs a topic is created with: its retention (RETENTION_MS) unless ``configs`` says otherwise."""
    out = ({"retention.ms": str(RETENTION_MS[name]), "cleanup.policy": CLEANUP_POLICY.get(name, "delete")}
           if name in RETENTION_MS else {})
    out.update(configs or {})
    return out


def ensure_topics(settings: CommonSettings, names: tuple[str, ...] = ALL,
                  configs: dict[str, str] | None = None) -> list[str]:
    """Create the topics that are missing, with the configured partition count (and the topic
    ``configs``, e.g. ``{"cleanup.policy": "compact"}``).

    Source topics must exist before Faust starts (auto-created topics get one partition and
    Faust then stops with PartitionsMismatch). Returns the topics created.
    """
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="lupita-admin")
    try:
        existing = set(admin.list_topics())
        wanted = [(settings.topic(n), n) for n in names if settings.topic(n) not in existing]
        created = []
        for name, base in wanted:
            try:
                admin.create_topics(
                    [NewTopic(name, settings.topic_partitions, settings.topic_replication,
                              topic_configs=topic_configs(base, configs))]
                )
                created.append(name)
            except TopicAlreadyExistsError:
                pass
        if created:
            log.info("created topics", extra={"topics": created})
        return created
    finally:
        admin.close()


def delete_prefixed(settings: CommonSettings, prefix: str, client_id: str = "lupita-admin") -> list[str]:
    """Delete every topic whose name starts with ``prefix`` (a benchmark's or test's own run,
    e.g. Faust's changelogs too); returns the names deleted."""
    if not prefix:
        raise ValueError("an empty prefix would delete every topic")
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id=client_id)
    try:
        doomed = [t for t in admin.list_topics() if t.startswith(prefix)]
        if doomed:
            admin.delete_topics(doomed)
        return doomed
    finally:
        admin.close()
