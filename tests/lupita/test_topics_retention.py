"""Every topic that carries people's voice or words is created with a time limit
(``lupita.topics.RETENTION_MS``), the same one the production KafkaTopics declare
(k8s/kafka/topics.yaml); an erasure states these limits (the context-api reads them back)."""

from __future__ import annotations

import uuid
from pathlib import Path

import yaml
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from lupita import topics
from lupita.config import CommonSettings
from waits import wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_every_topic_has_the_retention_the_kubernetes_manifests_declare():
    declared = {}
    for doc in yaml.safe_load_all((ROOT / "k8s" / "kafka" / "topics.yaml").read_text()):
        if doc and doc.get("kind") == "KafkaTopic":
            name = doc["spec"]["topicName"].split(".", 1)[1]  # "prod.<topic>"
            declared[name] = int(doc["spec"]["config"]["retention.ms"])
    assert set(topics.RETENTION_MS) == set(topics.EVERY)
    assert declared == topics.RETENTION_MS


def test_a_caller_config_wins_over_the_default_retention():
    assert topics.topic_configs(topics.TRANSCRIPTS) == {"retention.ms": str(7 * topics.DAY_MS), "cleanup.policy": "delete"}
    assert topics.topic_configs(topics.ALERTS, {"retention.ms": "1000"})["retention.ms"] == "1000"
    assert topics.topic_configs("recorder-calls-changelog", {"cleanup.policy": "compact"}) == {"cleanup.policy": "compact"}


def test_topics_are_created_on_the_broker_with_their_retention(stack_env):
    settings = CommonSettings(topic_prefix=f"retention-{uuid.uuid4().hex[:8]}.")
    names = topics.EVERY
    created = topics.ensure_topics(settings, names)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="lupita-test-retention")
    try:
        assert sorted(created) == sorted(settings.topic(n) for n in names)
        resources = [ConfigResource(ConfigResourceType.TOPIC, settings.topic(n),
                                    configs={"retention.ms": None, "cleanup.policy": None}) for n in names]

        def described():  # a topic just created may answer with no configs until its metadata spreads
            got = admin.describe_configs(resources, config_filter="all").get("topic", {})
            return got if all(got.get(settings.topic(n)) for n in names) else None

        described = wait_for("the new topics' configs on the broker", described, timeout=30)
        for n in names:
            conf = described[settings.topic(n)]
            assert int(conf["retention.ms"]["value"]) == topics.RETENTION_MS[n], n
            assert conf["cleanup.policy"]["value"] == topics.CLEANUP_POLICY.get(n, "delete"), n
    finally:
        admin.delete_topics([settings.topic(n) for n in names])
        admin.close()
