"""What the agents, tasks and views of one worker share: a `WorkerContext`, built by `build_app`
and handed to each module's `register(ctx)`."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import faust
from faust.exceptions import ConsumerNotStarted

from core.contracts import Recommendation
from core.settings import Settings
from stream_app.metrics import WorkerMetrics
from stream_app.serving import ServingState
from stream_app.steps import dlq_headers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerTopics:
    events: faust.TopicT
    recommendations: faust.TopicT  # Recommendation records
    recommendation_tombstones: faust.TopicT  # the same topic, raw: None is a tombstone, not the JSON `null`
    dlq: faust.TopicT
    control: faust.TopicT

    @classmethod
    def create(cls, app: faust.App, settings: Settings) -> "WorkerTopics":
        topics = settings.topics
        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        return cls(
            events=app.topic(topics.events, **raw),
            recommendations=app.topic(topics.recommendations, key_serializer="raw", value_type=Recommendation),
            recommendation_tombstones=app.topic(topics.recommendations, **raw),
            dlq=app.topic(topics.dlq, **raw),
            control=app.topic(topics.control, **raw),
        )


@dataclass
class WorkerContext:
    settings: Settings
    app: faust.App
    serving: ServingState
    metrics: WorkerMetrics
    topics: WorkerTopics
    windows: faust.Table  # user id -> UserWindow
    catalog_ready: asyncio.Event = field(default_factory=asyncio.Event)  # the catalog present at start is loaded
    broker_up: asyncio.Event = field(default_factory=asyncio.Event)  # the last probe was answered
    events_done: dict[int, int] = field(default_factory=dict)  # events partition -> offset after the last processed

    async def send_to_dlq(self, message, reason: str) -> None:
        """Dead-letter a record: its key and value as they came, where it came from and why in headers."""
        log.warning("dead-lettered %s[%s]@%s: %s", message.topic, message.partition, message.offset, reason)
        self.metrics.events_dlq.labels(message.topic).inc()
        await self.topics.dlq.send(
            key=message.key,
            value=message.value,
            headers=dlq_headers(message.topic, message.partition, message.offset, reason),
        )

    def owned_event_partitions(self) -> list[int]:
        try:
            return sorted(
                tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.settings.topics.events
            )
        except ConsumerNotStarted:  # between start-up and the first assignment
            return []

    def can_serve(self) -> bool:
        """Tables recovered and catalog loaded: HTTP answers are complete."""
        return self.catalog_ready.is_set() and self.app.tables.recovery.completed.is_set() and not self.app.in_recovery

    def ready(self) -> bool:
        return self.can_serve() and self.broker_up.is_set()
