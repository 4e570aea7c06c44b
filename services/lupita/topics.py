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
        wanted = [settings.topic(n) for n in names if settings.topic(n) not in existing]
        created = []
        for name in wanted:
            try:
                admin.create_topics(
                    [NewTopic(name, settings.topic_partitions, settings.topic_replication,
                              topic_configs=dict(configs or {}))]
                )
                created.append(name)
            except TopicAlreadyExistsError:
                pass
        if created:
            log.info("created topics", extra={"topics": created})
        return created
    finally:
        admin.close()
