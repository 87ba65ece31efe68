"""streamrec's work per micro-batch on plain aiokafka: what the events path would cost without Faust.

For bench/e2e.py (`--ceilings batch-model-aiokafka`). The steps of `stream_app/agents/events.py`, on the worker's
model and settings: validate a micro-batch's events (the bad ones dead-lettered), read and advance the touched
users' windows, score them in one call, build one record per user, send them and wait for their
acknowledgements, then write each window once (RocksDB and one changelog record), with the worker's metrics.
The runtime is one asyncio task over a plain aiokafka consumer (`getmany` batches of at most `worker.batch_size`)
and producer configured like the worker's (bench/bare_agent.plain_clients), windows in a `rocksdict` store,
offsets committed every `broker_commit_interval` as Faust commits them; the catalog is read from `items` once,
before the first event.

It is a measurement, not a worker: no recovery on a rebalance, no standby, no profiles, experiments, forget
requests or HTTP pages. Records go to bench/bare_agent.OUTPUT_TOPIC, created as `recommendations` is.

    STREAMREC_KAFKA__BROKER=kafka://127.0.0.1:9092 STREAMREC_WORKER__DATA_DIR=/tmp/plain \\
        .venv/bin/python bench/plain_worker.py
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bare_agent import OUTPUT_TOPIC, create_changelog, plain_clients, plain_loop  # noqa: E402

from core.kafka import end_offsets, ensure_topics, read_whole_topic, with_engine  # noqa: E402
from core.settings import Settings, load_settings  # noqa: E402
from state.window import UserWindow  # noqa: E402
from stream_app.agents.events import event_limits, score  # noqa: E402
from stream_app.faust_private import flush_open_batches  # noqa: E402
from stream_app.metrics import WorkerMetrics  # noqa: E402
from stream_app.recommender import Recommender  # noqa: E402
from stream_app.serving import load_at_start  # noqa: E402
from stream_app.steps import (  # noqa: E402
    advance_windows,
    build_records,
    catalog_changes,
    dlq_headers,
    group_valid_events,
    oversized,
    remember_shown,
)
from stream_app.worker import limit_threads  # noqa: E402

LARGEST_RECORD = 1_048_576  # aiokafka's default max_request_size: the largest record the producer sends


async def load_catalog(settings: Settings, recommender: Recommender) -> None:
    """The whole `items` topic into the recommender's index, as the worker's `follow_catalog` loads it."""
    async with read_whole_topic(settings, settings.topics.items) as consumer:
        partitions = sorted(consumer.assignment())
        end = await asyncio.to_thread(end_offsets, settings, await consumer.end_offsets(partitions))
        while not all([await consumer.position(tp) >= end[tp] for tp in partitions]):
            for messages in (await consumer.getmany(timeout_ms=200, max_records=512)).values():
                changes = catalog_changes(
                    [(m.key, m.value) for m in messages], max_bytes=settings.worker.max_record_bytes
                )
                items = list(changes.upserts.values())
                recommender.add_items(items, recommender.embed_items(items))


async def recommend_without_faust(settings: Settings, partitions: int) -> None:
    from rocksdict import Rdict

    limit_threads(settings.worker.inference_threads)
    recommender, _ = load_at_start(settings)
    app_id = f"{settings.worker.app_id}-plain"
    changelog = f"{app_id}-windows-changelog"
    await create_changelog(settings, changelog, partitions)
    await load_catalog(settings, recommender)
    consumer, producer = plain_clients(settings, app_id)
    windows = Rdict(str(settings.worker.data_dir / "windows.rdb"))
    worker, metrics = settings.worker, WorkerMetrics()
    limits = event_limits(settings)

    async def recommend(batch) -> None:
        await on_batch(settings, recommender, metrics, producer, windows, changelog, batch, limits)

    await plain_loop(consumer, producer, recommend, max_records=worker.batch_size)


async def on_batch(settings, recommender, metrics, producer, windows, changelog, batch, limits) -> None:
    """`events.on_batch` and `events.recommend_for` without the profiles, experiments and failure paths."""
    worker, taken = settings.worker, time.time()
    for record in batch:
        metrics.event_wait.observe(max(0.0, taken - record.timestamp / 1000))
    metrics.batch_size.observe(len(batch))
    metrics.events_in.inc(len(batch))
    touched, rejects = group_valid_events([record.value for record in batch], **limits)
    for index, reason in rejects:
        r = batch[index]
        headers = dlq_headers(r.topic, r.partition, r.offset, reason)
        await producer.send(settings.topics.dlq, key=r.key, value=r.value, headers=headers)
    stored = {}
    for user in touched:
        raw = windows.get(user)
        stored[user] = UserWindow() if raw is None else UserWindow.decode(raw)
    for user in stored:
        for event in touched[user].events:
            recommender.observe(event.item_id, event.event_type, event.ts)
    updated, hits = advance_windows(
        touched,
        stored,
        worker.window_size,
        worker.window_max_age_days * 86_400.0,
        worker.seen_items_max,
        worker.event_weights,
    )
    for hit in hits:
        metrics.observe_hit(hit)
    failed: dict[str, tuple[str, str]] = {}
    with metrics.scoring.time():
        lists = score(recommender, updated, {}, failed)
    now = time.time()
    short = {user: why for user, items in lists.items() if (why := recommender.short_reason(items))}
    records = build_records(touched, lists, recommender.model_version, now, short, {})
    with metrics.delivery.time():
        too_large = oversized(records, LARGEST_RECORD, OUTPUT_TOPIC)  # not sent, as in the worker
        sends = {
            r.user_id: await producer.send(OUTPUT_TOPIC, key=r.key, value=r.value)
            for r in records
            if r.user_id not in too_large
        }
        flush_open_batches(producer)  # as the worker's send_lingering: they are awaited next
        await asyncio.gather(*sends.values())
    shown = remember_shown(updated, lists)
    for user in sends:
        last = batch[touched[user].last]
        metrics.latency.observe(max(0.0, now - last.timestamp / 1000))
        encoded = shown[user].encode()
        windows[user] = encoded
        await producer.send(changelog, key=user.encode(), value=encoded, partition=last.partition)
    metrics.recommendations_out.inc(len(sends))
    metrics.batch_seconds.observe(time.time() - taken)


def main() -> None:
    settings = with_engine(load_settings())
    partitions = asyncio.run(ensure_topics(settings.replace(topics={"recommendations": OUTPUT_TOPIC})))
    asyncio.run(recommend_without_faust(settings, partitions))


if __name__ == "__main__":
    main()
