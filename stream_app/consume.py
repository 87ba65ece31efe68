"""Reading the output topic (for `streamrec recommendations`, the demo and tests)."""

from __future__ import annotations

import json
from typing import AsyncIterator

from core.kafka import read_whole_topic
from core.settings import Settings


async def read_recommendations(settings: Settings, follow: bool, idle_s: float = 1.0) -> AsyncIterator[dict]:
    """Every record from the start; without `follow`, stop once nothing new arrives for `idle_s`.

    Consumes until idle rather than to the reported end offset: the embedded broker
    can under-report end offsets (see docs/ARCHITECTURE.md). Tombstones (a forgotten user) are skipped.
    """
    async with read_whole_topic(settings, settings.topics.recommendations) as consumer:
        while True:
            batch = await consumer.getmany(timeout_ms=int(idle_s * 1000))
            if not batch and not follow:
                return
            for messages in batch.values():
                for message in messages:
                    if message.value is not None:
                        yield json.loads(message.value)
