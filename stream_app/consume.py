"""Reading the output topic (for `streamrec recommendations`, the demo and tests)."""

from __future__ import annotations

import json
from typing import AsyncIterator

from aiokafka import AIOKafkaConsumer

from stream_app.kafka import client_security
from stream_app.settings import Settings


async def read_recommendations(settings: Settings, follow: bool, idle_s: float = 1.0) -> AsyncIterator[dict]:
    """Every record from the start; without `follow`, stop once nothing new arrives for `idle_s`.

    Consumes until idle rather than to the reported end offset: the embedded broker
    can under-report end offsets (see docs/ARCHITECTURE.md).
    """
    consumer = AIOKafkaConsumer(
        settings.topics.recommendations, bootstrap_servers=settings.bootstrap_servers, group_id=None,
        auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=100,
        **client_security(settings.security),
    )
    await consumer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=int(idle_s * 1000))
            if not batch and not follow:
                return
            for messages in batch.values():
                for message in messages:
                    yield json.loads(message.value)
    finally:
        await consumer.stop()
