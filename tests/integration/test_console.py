"""The console's readers over a real Apache Kafka broker, no worker (docs/operations.md, "Console"): records
produced to the topics show in the pages' JSON (a hostile dead letter escaped, a user's emitted records
titled, an announcement), the lag per partition is the topic's end minus what the group committed, a worker
that does not answer is shown as such, and looking creates no topic (the experiments topic stays absent)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiohttp import test_utils
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata

from console.records import escaped
from console.server import console_app
from core.kafka import ensure_topics
from stream_app.demo import free_port
from tests.integration.conftest import dumps, event, produce

pytestmark = pytest.mark.integration

HOSTILE = b"<script>alert(1)</script><img src=x onerror=alert(2)>\x00\xff"
DLQ_HEADERS = [("dlq.reason", b"not UTF-8"), ("dlq.topic", b"events"), ("dlq.partition", b"0"), ("dlq.offset", b"4")]


async def commit(settings, offset: int) -> None:
    """The worker group's committed offset of events partition 0, as if a worker had processed that far."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, group_id=settings.worker.app_id)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(settings.topics.events, 0)])
        await consumer.commit({TopicPartition(settings.topics.events, 0): OffsetAndMetadata(offset, "")})
    finally:
        await consumer.stop()


async def topics_on(settings) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def test_the_console_shows_the_topics_and_the_groups_lag(settings):
    settings = settings.replace(
        console={"poll_interval_s": 0.5, "workers": [f"http://127.0.0.1:{free_port()}"]}  # no worker there
    )
    t = settings.topics

    async def scenario() -> tuple[dict, dict, dict, dict, set[str]]:
        # Every topic a worker creates but the experiments one, which the console must not create by looking.
        await ensure_topics(settings.replace(topics={"experiments": f"{t.experiments}-elsewhere"}))
        await produce(settings, t.items, [(b"i1", dumps({"item_id": "i1", "title": "Toy Story (1995)"}))])
        await produce(settings, t.events, [event(n, "u1", "i1") for n in range(5)])
        await commit(settings, 2)
        recommendation = {"user_id": "u1", "items": [{"item_id": "i1", "score": 0.5, "because": None}],
                          "model_version": "v1", "generated_at": 1_795_000_000_000, "trigger_event_id": "u1-4"}  # fmt: skip
        await produce(settings, t.recommendations, [(b"u1", dumps(recommendation))])
        update = {
            "version": "v2",
            "path": "v2",
            "sha256": "ab" * 32,
            "created_at": "2026-11-29T10:00:00Z",
            "metrics": {},
        }
        await produce(settings, t.model_updates, [(b"v2", dumps(update))])
        from stream_app.replay import producer

        async with producer(settings) as p:
            await p.send_and_wait(t.dlq, HOSTILE, key=b"<b>k</b>", headers=DLQ_HEADERS)

        started = time.monotonic()
        async with test_utils.TestClient(test_utils.TestServer(console_app(settings))) as client:

            async def api(path: str) -> dict:
                return await (await client.get(path)).json()

            while True:
                live, dead, user, models = [
                    await api(p) for p in ("/api/live", "/api/dead-letters", "/api/user/u1", "/api/models")
                ]
                ready = (
                    live["partitions"] and live["workers"] and dead["records"] and user["emitted"]
                    and models["announcements"] and user["emitted"][0]["items"][0]["title"]
                )  # fmt: skip
                if ready or time.monotonic() - started > 30:
                    break
                await asyncio.sleep(0.25)
            print(f"console ready after {time.monotonic() - started:.1f}s; readers {live['readers']}")
        return live, dead, user, models, await topics_on(settings)

    live, dead, user, models, topics = asyncio.run(scenario())
    print(json.dumps({"partitions": live["partitions"], "broker": live["broker"], "worker": live["workers"]}))
    print(json.dumps(dead["records"][0]))
    assert live["partitions"] == [{"partition": 0, "end": 5, "committed": 2, "lag": 3, "owner": None}]
    assert live["broker"]["status"] == "up" and live["broker"]["brokers"] == 1
    assert live["workers"][0]["status"].startswith("unreachable")
    (record,) = dead["records"]
    assert record["value"] == escaped(HOSTILE) and record["value"].endswith("\\x00\\xff")
    assert record["reason"] == "not UTF-8" and record["source"] == {"topic": "events", "partition": "0", "offset": "4"}
    assert user["emitted"][0]["items"][0]["title"] == "Toy Story (1995)"
    assert user["window"]["error"].startswith("no worker answered")
    assert models["announcements"][0]["version"] == "v2"
    assert live["readers"][settings.topics.experiments] == "no such topic (yet)"
    assert settings.topics.experiments not in topics  # looking for it did not create it
