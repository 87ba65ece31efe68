"""Topics on Apache Kafka are created as configured, and a compacted topic really keeps only the
last value per key."""

import json
import time

import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from core.kafka import ensure_topics
from stream_app.demo import publish_catalog
from tests.integration.conftest import consume_until, event, ml100k_items, produce, run, topic_configs

pytestmark = pytest.mark.integration

COMPACTION_TIMEOUT_S = 90  # the log cleaner looks for work every 15 s (Kafka's log.cleaner.backoff.ms)


def alter_topic(settings, topic: str, configs: dict[str, str]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=configs)])
    finally:
        admin.close()


def test_worker_topics_and_changelog_have_the_configured_policies(settings, start_worker):
    settings = settings.replace(kafka={"min_insync_replicas": 1, "partitions": 2})
    run(publish_catalog(settings, ml100k_items(20)))
    start_worker(settings)
    run(produce(settings, settings.topics.events, [event(1, "u1", "1")]))
    run(consume_until(settings, settings.topics.recommendations, lambda rs: len(rs) >= 1))
    t = settings.topics
    changelog = f"{settings.worker.app_id}-windows-changelog"
    configs = topic_configs(settings, [t.events, t.items, t.recommendations, t.dlq, changelog])
    for compacted in (t.items, t.recommendations, changelog):
        assert configs[compacted]["cleanup.policy"] == "compact", compacted
    for plain in (t.events, t.dlq):
        assert configs[plain]["cleanup.policy"] == "delete", plain
    for topic in configs:
        assert configs[topic]["min.insync.replicas"] == "1", topic


def test_a_compacted_topic_keeps_the_last_value_per_key(settings):
    """Write five versions of each item, make the segment roll, wait for the cleaner: reading from
    the start gives exactly one record per key, the newest."""
    run(ensure_topics(settings))
    topic = settings.topics.items
    alter_topic(
        settings, topic, {"segment.ms": "200", "min.cleanable.dirty.ratio": "0.01", "cleanup.policy": "compact"}
    )
    keys = [f"item{i}" for i in range(20)]
    versions = [(k.encode(), json.dumps({"item_id": k, "title": f"v{v}"}).encode()) for v in range(5) for k in keys]
    run(produce(settings, topic, versions))
    time.sleep(0.5)
    run(produce(settings, topic, [(b"roll", b"{}")]))  # the first append after segment.ms rolls the segment

    deadline = time.monotonic() + COMPACTION_TIMEOUT_S
    while True:
        records = run(consume_until(settings, topic, lambda rs: any(r.key == b"roll" for r in rs)))
        per_key = {}
        for r in records:
            per_key.setdefault(r.key, []).append(json.loads(r.value)["title"] if r.key != b"roll" else None)
        if all(len(per_key[k.encode()]) == 1 for k in keys) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert {k: per_key[k.encode()] for k in keys} == {k: ["v4"] for k in keys}
    print(f"\ncompaction: {len(versions)} records for {len(keys)} keys -> {len(records) - 1} after cleaning")
