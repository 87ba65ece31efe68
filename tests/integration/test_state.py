"""User windows live in RocksDB and survive restarts; an empty state dir is rebuilt
from the changelog — on Tansu too, including the tail its end offsets hide."""

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from core.kafka import broker_engine, end_offsets, ensure_topics
from stream_app.demo import publish_catalog
from tests.integration.conftest import (
    consume_until,
    event,
    latest_by_user,
    ml100k_items,
    produce,
    read_windows,
    run,
)

pytestmark = pytest.mark.integration

USERS = [f"u{i}" for i in range(6)]


def produce_round(settings, round_no: int) -> dict[str, str]:
    """One event per user, sent together so the worker writes them in one micro-batch
    (and Faust's producer packs the changelog writes into multi-record batches)."""
    records = [event(round_no * 100 + i, user, str(1 + round_no * 10 + i)) for i, user in enumerate(USERS)]
    run(produce(settings, settings.topics.events, records))
    return {user: f"{user}-{round_no * 100 + i}" for i, user in enumerate(USERS)}


def wait_for(settings, triggers):
    def done(records):
        latest = latest_by_user(records)
        return all(latest.get(u, {}).get("trigger_event_id") == e for u, e in triggers.items())

    run(consume_until(settings, settings.topics.recommendations, done))


def test_windows_survive_restart_and_rebuild_from_changelog(settings_on_each_broker, start_worker, tmp_path):
    settings = settings_on_each_broker  # the Tansu smoke suite runs this too
    run(publish_catalog(settings, ml100k_items(60)))

    worker = start_worker(settings)
    run(produce(settings, settings.topics.events, [event(99, "cold", "not-in-the-catalog")]))
    wait_for(settings, {"cold": "cold-99", **produce_round(settings, 0)})
    worker.stop()
    first = read_windows(settings.worker.data_dir)
    assert first.pop("cold").item_ids == ["not-in-the-catalog"]  # unknown items are kept, not dropped
    assert {u: w.event_ids for u, w in first.items()} == {u: [f"{u}-{i}"] for i, u in enumerate(USERS)}

    worker = start_worker(settings)  # same state dir: windows kept
    wait_for(settings, produce_round(settings, 1))
    worker.stop()
    kept = read_windows(settings.worker.data_dir)
    del kept["cold"]
    assert {u: w.event_ids for u, w in kept.items()} == {u: [f"{u}-{i}", f"{u}-{100 + i}"] for i, u in enumerate(USERS)}

    rebuilt_settings = settings.replace(worker={"data_dir": tmp_path / "empty-state"})
    worker = start_worker(rebuilt_settings)  # empty dir: recovered from the changelog
    wait_for(settings, produce_round(settings, 2))
    worker.stop()
    rebuilt = read_windows(rebuilt_settings.worker.data_dir)
    assert rebuilt.pop("cold").event_ids == ["cold-99"]
    assert {u: w.event_ids for u, w in rebuilt.items()} == {
        u: [f"{u}-{i}", f"{u}-{100 + i}", f"{u}-{200 + i}"] for i, u in enumerate(USERS)
    }


async def _send_one_batch(settings, topic: str, n: int) -> int:
    async with AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, linger_ms=50) as producer:
        sent = [await producer.send(topic, b"v", key=b"k") for _ in range(n)]
        for future in sent:
            await future
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        return (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()


def test_tansu_under_reports_end_offsets_and_the_probe_corrects_them(tansu_settings):
    """Why core.kafka.tansu_end_offsets exists; if Tansu fixes this, the test says so."""
    settings = tansu_settings
    run(ensure_topics(settings))
    reported = run(_send_one_batch(settings, settings.topics.dlq, 5))
    assert reported < 5, "end offsets are right now: the Tansu workaround can go"
    tp = TopicPartition(settings.topics.dlq, 0)
    assert end_offsets(settings, {tp: reported}) == {tp: 5}


def test_kafka_reports_end_offsets_and_gets_no_workaround(settings):
    """On Apache Kafka the reported end is the end, and `end_offsets` passes it through unprobed."""
    run(ensure_topics(settings))
    reported = run(_send_one_batch(settings, settings.topics.dlq, 5))
    assert reported == 5
    tp = TopicPartition(settings.topics.dlq, 0)
    assert broker_engine(settings) == "kafka"
    assert end_offsets(settings, {tp: 4}) == {tp: 4}  # no probe: a wrong end would stay wrong
