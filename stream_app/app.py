"""The Faust application: topics, the windows table, and the agents.

`build_app` wires a Recommender (model + item index) into a Faust app; the
agents stay short and delegate to pure functions (schemas, state.window,
stream_app.recommender) that are tested without Kafka.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from contextlib import contextmanager

import faust
from mode.utils.objects import cached_property
from mode.utils.queues import FlowControlEvent
from faust.exceptions import ConsumerNotStarted
from faust.types import TP
from aiokafka import AIOKafkaConsumer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from state.window import UserWindow, WindowEvent
from stream_app.kafka import (client_security, end_offsets, faust_credentials, read_whole_topic, topic_configs,
                              tuned_transport)
from stream_app.metrics import WorkerMetrics
from stream_app.schemas import InvalidRecord, ModelUpdate, Recommendation, parse_control, parse_event, parse_item
from stream_app.serving import ServingState
from stream_app.settings import Settings

log = logging.getLogger(__name__)

BROKER_PROBE_INTERVAL_S = 2.0
BROKER_PROBE_TIMEOUT_MS = 3_000
FORGET_CATCH_UP_TIMEOUT_S = 30.0  # how long a forget waits for the events sent before it (forget_users)


class KeepQueuedOnResume(FlowControlEvent):
    """Faust's flow control empties every stream queue when it resumes after a rebalance. It
    resumes *after* seeking the new partitions to their committed offsets, so records fetched in
    between (past the seek, hence never fetched again) were thrown away: a worker restarted after
    kill -9 lost a run of events (tests/reliability/test_crash.py). The queues are still emptied
    when partitions are revoked (`clear()`, before the seek); what is queued at resume belongs to
    the new assignment. Records fetched before the seek come again after it: duplicates, which
    the windows drop by event id."""

    def resume(self) -> None:
        self._suspend.clear()
        self._resume.set()


class StreamrecApp(faust.App):
    transport_class: type  # set by build_app: stream_app.kafka.tuned_transport

    def _new_transport(self):
        return self.transport_class(self.conf.broker_consumer, self)

    @cached_property
    def flow_control(self) -> FlowControlEvent:
        return KeepQueuedOnResume(loop=self.loop)


@contextmanager
def event_context(stream: faust.StreamT, event: faust.EventT):
    """Make `event` the stream's current event while writing to a table.

    Table reads and writes use the RocksDB store and changelog partition of the
    current event (the partition this user's events arrive on, whatever
    partitioner the producer used). `take_events()` hands over a batch without
    setting one per event, so we set it per access — the same call Faust's own
    per-event iteration makes.
    """
    previous = stream.current_event  # the stream's own buffering reads it too: put it back
    stream._set_current_event(event)
    try:
        yield
    finally:
        stream._set_current_event(previous)


def freeze_heap() -> None:
    """Leave everything alive now out of the garbage collector's full passes.

    A full (generation 2) pass walks every tracked object; with Faust, aiokafka, onnxruntime
    and the catalog loaded that stalled the event loop for 30-110 ms, a few times a minute,
    and every event in flight with it (bench/e2e.py: the p99). Frozen objects are still freed
    by reference counting; only cycles among them would stay. Call once the long-lived state
    is built.
    """
    gc.collect()
    gc.freeze()


def _announced_version(message) -> str:
    try:
        return str(json.loads(message.value)["version"])
    except Exception:
        return f"offset {message.offset}"


def dlq_headers(message, reason: str) -> list[tuple[str, bytes]]:
    return [
        ("dlq.reason", reason.encode("utf-8")),
        ("dlq.topic", message.topic.encode()),
        ("dlq.partition", str(message.partition).encode()),
        ("dlq.offset", str(message.offset).encode()),
    ]


def faust_app(settings: Settings, partitions: int) -> StreamrecApp:
    """A Faust app with streamrec's store, group, producer/consumer tuning and web settings,
    and no agents (`build_app` adds streamrec's; bench/bare_agent.py a bare one)."""
    app = StreamrecApp(
        settings.app_id,
        broker=settings.broker,
        broker_credentials=faust_credentials(settings.security),
        store="rocksdb://",
        datadir=str(settings.data_dir),
        topic_partitions=partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_request_timeout=max(40.0, settings.session_timeout_s + 5),
        producer_linger=settings.producer_linger_ms / 1000.0,
        producer_acks=-1,
        topic_replication_factor=settings.replication_factor,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_host=settings.web_host,
    )
    app.transport_class = tuned_transport(settings)
    return app


def windows_table(app: faust.App, settings: Settings, partitions: int) -> faust.Table:
    """The per-user `UserWindow` table (RocksDB, changelog-backed), with bounded RocksDB memory."""
    rocksdb = {"write_buffer_size": settings.rocksdb_write_buffer_mb << 20,
               "block_cache_size": settings.rocksdb_block_cache_mb << 20}
    return app.Table("windows", key_type=str, value_type=UserWindow, default=UserWindow, partitions=partitions,
                     options=rocksdb, extra_topic_configs=topic_configs(settings))


def build_app(settings: Settings, serving: ServingState, partitions: int,
              metrics: WorkerMetrics | None = None) -> StreamrecApp:
    metrics = metrics or WorkerMetrics()
    app = faust_app(settings, partitions)
    topics = settings.topics
    events_topic = app.topic(topics.events, key_serializer="raw", value_serializer="raw")
    recommendations_topic = app.topic(topics.recommendations, key_serializer="raw", value_type=Recommendation)
    dlq_topic = app.topic(topics.dlq, key_serializer="raw", value_serializer="raw")
    control_topic = app.topic(topics.control, key_serializer="raw", value_serializer="raw")
    # Raw, for tombstones: the Recommendation-typed topic would send None as the JSON `null`, not a tombstone.
    recommendation_tombstones = app.topic(topics.recommendations, key_serializer="raw", value_serializer="raw")
    windows = windows_table(app, settings, partitions)
    events_done: dict[int, int] = {}  # events partition -> offset after the last event this worker processed
    catalog_ready = asyncio.Event()
    event_types = set(settings.event_weights)
    max_age_s = settings.window_max_age_days * 86_400.0

    async def send_to_dlq(message, reason: str) -> None:
        log.warning("dead-lettered %s[%s]@%s: %s", message.topic, message.partition, message.offset, reason)
        metrics.events_dlq.labels(message.topic).inc()
        await dlq_topic.send(key=message.key, value=message.value, headers=dlq_headers(message, reason))

    @app.agent(events_topic)
    async def recommend_on_events(stream):
        """Micro-batches of events -> updated windows -> one recommendation per touched user."""
        await catalog_ready.wait()
        async for batch in stream.take_events(settings.batch_size, within=settings.batch_window_s):
            metrics.batch_size.observe(len(batch))
            touched = await valid_events_by_user(batch)
            if touched:
                await recommend_for(stream, touched)
            for event in batch:  # what a forget request waits for (forget_users)
                events_done[event.message.partition] = event.message.offset + 1

    async def valid_events_by_user(batch) -> dict[str, tuple[list[WindowEvent], faust.EventT]]:
        """The batch's valid events grouped by user (with each user's last Faust event); DLQ the rest."""
        touched: dict[str, tuple[list[WindowEvent], faust.EventT]] = {}
        for event in batch:
            metrics.events_in.inc()
            try:
                parsed = parse_event(event.value, max_bytes=settings.max_record_bytes, event_types=event_types,
                                     max_future_skew_s=settings.max_future_skew_s)
            except InvalidRecord as e:
                await send_to_dlq(event.message, e.reason)
                continue
            new, _ = touched.get(parsed.user_id, ([], None))
            new.append(WindowEvent(parsed.event_id, parsed.item_id, parsed.event_type, parsed.ts))
            touched[parsed.user_id] = (new, event)
        return touched

    async def recommend_for(stream, touched: dict[str, tuple[list[WindowEvent], faust.EventT]]) -> None:
        recommender = serving.recommender  # a model swap takes effect between batches
        users = list(touched)
        updated = []
        for user in users:
            new, event = touched[user]
            with event_context(stream, event):  # reads, too, go to the event's partition store
                window = windows[user]
            for e in new:
                recommender.observe(e.item_id, e.event_type, e.ts)
                if window.recommended:
                    metrics.observe_hit(e.item_id in window.recommended)
            updated.append(window.with_events(new, settings.window_size, max_age_s))
        lists = recommender.recommend(updated)
        now = time.time()
        for user, window, items in zip(users, updated, lists):
            new, event = touched[user]
            with event_context(stream, event):
                windows[user] = window.derive(recommended=[i.item_id for i in items])
            record = Recommendation(user_id=user, items=items, model_version=recommender.model_version,
                                    generated_at=int(now * 1000), trigger_event_id=new[-1].event_id)
            await recommendations_topic.send(key=user.encode(), value=record)
            metrics.latency.observe(max(0.0, now - event.message.timestamp))
        metrics.recommendations_out.inc(len(users))

    @app.agent(control_topic)
    async def forget_users(stream):
        """Forget requests: delete the user's window (a changelog tombstone, compacted away) and tombstone
        their key on `recommendations`. `control` is keyed by user and co-partitioned with `events`, so the
        request reaches the worker, store and changelog partition holding the window."""
        await catalog_ready.wait()  # the events agent waits for it too; a forget waits for the events agent
        async for event in stream.events():
            try:
                request = parse_control(event.message.key, event.value, max_bytes=settings.max_record_bytes)
            except InvalidRecord as e:
                await send_to_dlq(event.message, e.reason)
                continue
            user = request.user_id
            if not await events_caught_up(event.message.partition):
                log.warning("forgetting user %r before this worker has processed the events sent before the "
                            "request (rebalance or backlog): an older event processed later re-creates a "
                            "window; send the request again once the lag is gone", user)
            with event_context(stream, event):  # the table write goes to this partition's changelog
                try:
                    del windows[user]
                except KeyError:
                    pass
            await recommendation_tombstones.send(key=user.encode(), value=None)
            metrics.users_forgotten.inc()
            log.info("forgot user %r (requested at %d)", user, request.requested_at)

    async def events_caught_up(partition: int) -> bool:
        """Wait until this worker has processed `events` partition `partition` up to its end offset now, so
        that events sent before a forget request cannot re-create the window after it (the two topics are
        read independently). False if that takes FORGET_CATCH_UP_TIMEOUT_S or a rebalance starts: the
        request is not held up longer (and a rebalance waits for it to be acknowledged)."""
        tp = TP(topics.events, partition)
        end = (await app.consumer.highwaters(tp)).get(tp) or 0
        deadline = time.monotonic() + FORGET_CATCH_UP_TIMEOUT_S
        while max(events_done.get(partition, 0), app.consumer._committed_offset.get(tp) or 0) < end:
            if app.rebalancing or time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    @app.task
    async def follow_catalog():
        """Every worker keeps the whole catalog: read `items` from the start, no consumer group."""
        async with read_whole_topic(settings, topics.items) as consumer:
            partitions = sorted(consumer.assignment())
            end = await asyncio.to_thread(end_offsets, settings, await consumer.end_offsets(partitions))
            while True:
                records = await consumer.getmany(timeout_ms=200, max_records=512)
                for tp, messages in records.items():
                    await apply_catalog_records(messages)
                if not catalog_ready.is_set() and all([await consumer.position(tp) >= end[tp] for tp in partitions]):
                    log.info("catalog loaded: %d items", len(serving.catalog))
                    freeze_heap()  # modules, model and catalog: all built before the first event
                    catalog_ready.set()

    async def apply_catalog_records(messages) -> None:
        upserts = {}
        for message in messages:
            try:
                item = parse_item(message.value, max_bytes=settings.max_record_bytes) if message.value else None
            except InvalidRecord as e:
                await send_to_dlq(message, e.reason)
                continue
            if item is not None and item.available:
                upserts[item.item_id] = item
                continue
            item_id = item.item_id if item else (message.key or b"").decode("utf-8", "replace")  # tombstone: key
            upserts.pop(item_id, None)
            serving.remove_item(item_id)
        if upserts:
            await serving.upsert_items(list(upserts.values()))

    @app.task
    async def follow_model_updates():
        """Swap to each version announced on `model-updates` (the last one, on start)."""
        async with read_whole_topic(settings, topics.model_updates) as consumer:
            await catalog_ready.wait()
            while True:
                records = await consumer.getmany(timeout_ms=500)
                messages = [m for batch in records.values() for m in batch]
                if messages:
                    await apply_model_update(messages[-1])  # only the newest announcement matters

    async def apply_model_update(message) -> None:
        try:
            update = ModelUpdate.loads(message.value, serializer="json")
            if update.version != serving.recommender.model_version:
                await serving.swap_to(settings, update.version, update.sha256)
        except Exception as e:  # a bad version must never take the worker down
            reason = f"{type(e).__name__}: {e}"
            log.error("refused model update at offset %s: %s; still serving %s",
                      message.offset, reason, serving.recommender.model_version)
            serving.refused[_announced_version(message)] = reason
            metrics.model_refusals.inc()

    broker_up = asyncio.Event()

    @app.task
    async def watch_broker():
        """A metadata request every couple of seconds: is the broker answering?"""
        probe = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                 request_timeout_ms=BROKER_PROBE_TIMEOUT_MS, **client_security(settings.security))
        await probe.start()
        try:
            while True:
                try:
                    await asyncio.wait_for(probe.topics(), BROKER_PROBE_TIMEOUT_MS / 1000)
                    broker_up.set()
                except Exception as e:
                    if broker_up.is_set():
                        log.error("broker %s is not answering: %r", settings.broker, e)
                    broker_up.clear()
                metrics.broker_up.set(broker_up.is_set())
                await asyncio.sleep(BROKER_PROBE_INTERVAL_S)
        finally:
            await probe.stop()

    def owned_event_partitions() -> list[int]:
        try:
            return sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == topics.events)
        except ConsumerNotStarted:  # between start-up and the first assignment
            return []

    def can_serve() -> bool:
        """Tables recovered and catalog loaded: HTTP answers are complete."""
        return catalog_ready.is_set() and app.tables.recovery.completed.is_set() and not app.in_recovery

    def ready() -> bool:
        return can_serve() and broker_up.is_set()

    @app.page("/health")
    async def health(web, request):
        """200 while the broker answers, tables are recovered and the catalog is loaded; else 503."""
        status = "ok" if ready() else ("broker unreachable" if not broker_up.is_set() else "starting")
        body = {"status": status, "model_version": serving.recommender.model_version,
                "catalog_items": len(serving.recommender.index), "refused_versions": serving.refused,
                "partitions": owned_event_partitions()}
        return web.json(body, status=200 if ready() else 503)

    @app.page("/metrics")
    async def prometheus(web, request):
        metrics.model.info({"version": serving.recommender.model_version})
        metrics.windows.set(len(windows))
        for partition in owned_event_partitions():
            tp = TP(topics.events, partition)
            metrics.lag.labels(str(partition)).set(max(0, app.consumer.highwater(tp) - await app.consumer.position(tp)))
        return web.bytes(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/recommendations/{user_id}")
    @app.table_route(table=windows, match_info="user_id")
    async def recommendations_of(web, request, user_id: str):
        """The user's current top-k: their window scored by the serving model (what the next
        record would say); served only once tables are recovered."""
        if not can_serve():
            return web.json({"error": "starting"}, status=503)
        recommender = serving.recommender
        window = windows.get(user_id)
        (items,) = recommender.recommend([window or UserWindow()])
        return web.json({"user_id": user_id, "items": [i.asdict() for i in items],
                         "model_version": recommender.model_version, "known_user": window is not None})

    return app
