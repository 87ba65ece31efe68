"""Asking the workers to forget a user (`streamrec forget`); the worker's `forget_users` agent
(stream_app/agents/control.py) carries it out. docs/topics.md: "Forgetting a user"."""

from __future__ import annotations

import json

from core.contracts import forget_request, parse_control
from core.kafka import ensure_topics
from core.settings import Settings
from stream_app.replay import producer


async def request_forget(settings: Settings, user_id: str) -> tuple[int, int]:
    """Publish a forget request for `user_id` on the control topic, keyed by the user id with the default
    (murmur2) partitioner, as `events` must be keyed; return its (partition, offset) once acknowledged.
    Raises InvalidRecord for a user id the worker would reject."""
    key, value = user_id.encode("utf-8"), json.dumps(forget_request(user_id)).encode()
    parse_control(key, value, max_bytes=settings.worker.max_record_bytes)  # what the worker would dead-letter
    await ensure_topics(settings)  # not auto-created: `control` must have as many partitions as `events`
    async with producer(settings) as p:
        sent = await p.send_and_wait(settings.topics.control, value, key=key)
    return sent.partition, sent.offset
