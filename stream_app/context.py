"""What the agents, tasks and views of one worker share: a `WorkerContext`, built by `build_app`
and handed to each module's `register(ctx)`."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Sequence

import faust
from faust.exceptions import ConsumerNotStarted
from faust.types import TP

from core.settings import Settings
from stream_app.faust_private import committed_offset
from stream_app.metrics import WorkerMetrics
from stream_app.serving import ServingState
from stream_app.steps import dlq_headers, stalled_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerTopics:
    events: faust.TopicT
    recommendations: faust.TopicT  # encoded Recommendation records (raw: None is a tombstone, not the JSON `null`)
    dlq: faust.TopicT
    control: faust.TopicT
    profiles: faust.TopicT  # raw, like control; None sent is a tombstone

    @classmethod
    def create(cls, app: faust.App, settings: Settings) -> "WorkerTopics":
        topics = settings.topics
        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        return cls(
            events=app.topic(topics.events, **raw),
            recommendations=app.topic(topics.recommendations, **raw),
            dlq=app.topic(topics.dlq, **raw),
            control=app.topic(topics.control, **raw),
            profiles=app.topic(topics.profiles, **raw),
        )


@dataclass
class Progress:
    """Is the events agent keeping up? The agent marks each completed micro-batch; the broker watch
    counts every few seconds the events waiting in this worker's partitions (`/health` "stalled")."""

    last_batch_at: float = field(default_factory=time.monotonic)  # the worker's start until a batch completes
    waiting: int = 0  # events not processed yet, as of the last count
    waiting_since: float | None = None  # since when events have waited without a break (None: none wait)

    def batch_done(self) -> None:
        self.last_batch_at = time.monotonic()

    def observe_waiting(self, waiting: int) -> None:
        self.waiting = waiting
        if not waiting:
            self.waiting_since = None
        elif self.waiting_since is None:
            self.waiting_since = time.monotonic()

    def seconds_since_last_batch(self) -> float:
        return time.monotonic() - self.last_batch_at

    def stalled_for(self, timeout_s: float) -> float | None:
        return stalled_for(time.monotonic(), self.last_batch_at, self.waiting_since, timeout_s)


@dataclass
class WorkerContext:
    settings: Settings
    app: faust.App
    serving: ServingState
    metrics: WorkerMetrics
    topics: WorkerTopics
    windows: faust.Table  # user id -> UserWindow
    profiles: faust.Table  # user id -> the interest they stated (str), co-partitioned with windows
    catalog_ready: asyncio.Event = field(default_factory=asyncio.Event)  # the catalog present at start is loaded
    experiments_loaded: asyncio.Event = field(default_factory=asyncio.Event)  # the start-up experiment applied
    broker_up: asyncio.Event = field(default_factory=asyncio.Event)  # the last probe was answered
    events_done: dict[int, int] = field(default_factory=dict)  # events partition -> offset after the last processed
    progress: Progress = field(default_factory=Progress)

    def __post_init__(self) -> None:
        self.metrics.seconds_since_last_batch.set_function(self.progress.seconds_since_last_batch)

    async def send_to_dlq(self, message, reason: str) -> None:
        """Dead-letter a record: its key and value as they came, where it came from and why in headers."""
        await self.dead_letter([message], reason)

    async def dead_letter(self, messages: Sequence, reason: str) -> None:
        """Dead-letter records that failed for one reason (logged once): each one's key and value as
        they came, where it came from and why in headers."""
        where = ", ".join(f"{m.topic}[{m.partition}]@{m.offset}" for m in messages)
        log.warning("dead-lettered %s: %s", where, reason)
        for message in messages:
            self.metrics.events_dlq.labels(message.topic).inc()
            await self.topics.dlq.send(
                key=message.key,
                value=message.value,
                headers=dlq_headers(message.topic, message.partition, message.offset, reason),
            )

    def processed_offset(self, partition: int) -> int:
        """How far the events agent has got in an events partition: the offset after the last event it
        processed, or that Faust committed (a partition not processed since this worker got it)."""
        tp = TP(self.settings.topics.events, partition)
        return max(self.events_done.get(partition, 0), committed_offset(self.app, tp))

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
