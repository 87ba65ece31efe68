"""The ceilings for bench/e2e.py: bare Faust agents on streamrec's engine, store and broker tuning.

Same Faust app settings as the worker (`stream_app.app.faust_app`: RocksDB store, fetch wait,
linger, session timeout), the same `windows` table of `UserWindow` updated with the same
`with_events` call, an output topic created exactly like `recommendations` — but no validation,
no model. Two idioms:

- per event (default): read and write the user's window and send one record per event, the bare
  Faust idiom;
- `--aiokafka`: the per-event idiom without Faust: one asyncio task on a plain aiokafka consumer (`getmany`)
  and producer (configured like Faust's), the windows in a `rocksdict` store with one changelog record per
  write, offsets committed every `broker_commit_interval` as Faust does; what the same work costs on a
  lighter runtime (fresh state only: no recovery, no rebalance handling);
- `--per-batch`: what streamrec does without the model: micro-batches from `take_events` (the
  worker's batch size and window), one record per user touched by a batch (triggered by the user's
  last event in it), sent (without waiting for the producer's linger) and acknowledged before each user's
  window is written once.

Each record is {"trigger_event_id", "user_id"} as JSON.

    STREAMREC_KAFKA__BROKER=kafka://127.0.0.1:9092 STREAMREC_WORKER__DATA_DIR=/tmp/bare \\
        STREAMREC_WORKER__WEB_PORT=6067 .venv/bin/python bench/bare_agent.py [--per-batch | --aiokafka]

Settings come from STREAMREC_* like the worker's; the consumer group and changelog are
`<app_id>-bare`, the output topic is OUTPUT_TOPIC.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import faust

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core.contracts import epoch_seconds  # noqa: E402
from core.kafka import ensure_topics, topic_configs, with_engine  # noqa: E402
from core.settings import Settings, load_settings  # noqa: E402
from state.window import UserWindow, WindowEvent  # noqa: E402
from stream_app.app import faust_app, freeze_heap, windows_table  # noqa: E402
from stream_app.faust_private import event_context, send_lingering  # noqa: E402

OUTPUT_TOPIC = "bare-out"


def build_bare_app(settings: Settings, partitions: int, per_batch: bool = False) -> faust.App:
    settings = with_engine(settings)  # as the worker does: Tansu gets no idempotent producer
    app = faust_app(settings.replace(worker={"app_id": f"{settings.worker.app_id}-bare"}), partitions)
    events = app.topic(settings.topics.events, key_serializer="raw", value_serializer="raw")
    output = app.topic(OUTPUT_TOPIC, key_serializer="raw", value_serializer="raw")
    windows = windows_table(app, settings, partitions)
    max_age_s = settings.worker.window_max_age_days * 86_400.0

    def window_with(user: str, values: list[dict]) -> UserWindow:
        new = [WindowEvent(e["event_id"], e["item_id"], e["event_type"], epoch_seconds(e["ts"])) for e in values]
        return windows[user].with_events(new, settings.worker.window_size, max_age_s)

    if not per_batch:

        @app.agent(events)
        async def forward(stream):
            async for value in stream:
                e = json.loads(value)
                windows[e["user_id"]] = window_with(e["user_id"], [e])
                await output.send(**answer(e["user_id"], e))

    else:

        @app.agent(events)
        async def forward_batches(stream):
            async for batch in stream.take_events(settings.worker.batch_size, within=settings.worker.batch_window_s):
                by_user: dict[str, list[tuple[dict, faust.EventT]]] = {}
                for event in batch:
                    e = json.loads(event.value)
                    by_user.setdefault(e["user_id"], []).append((e, event))
                updated = {}
                for user, pairs in by_user.items():
                    with event_context(stream, pairs[-1][1]):
                        updated[user] = window_with(user, [e for e, _ in pairs])
                sent = [await output.send(**answer(user, pairs[-1][0])) for user, pairs in by_user.items()]
                send_lingering(app)  # as the worker does: they are awaited next
                await asyncio.gather(*sent)
                for user, pairs in by_user.items():
                    with event_context(stream, pairs[-1][1]):
                        windows[user] = updated[user]

    return app


async def create_changelog(settings: Settings, topic: str, partitions: int) -> None:
    """A table's changelog for a runtime without Faust, created as Faust creates one (compacted)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        config = topic_configs(settings, compacted=True)
        await admin.create_topics(
            [NewTopic(topic, partitions, settings.kafka.replication_factor, topic_configs=config)]
        )
    finally:
        await admin.close()


def plain_clients(settings: Settings, group_id: str):
    """(consumer of the events topic, producer) on plain aiokafka, configured as the worker's Faust app
    configures its own: fetch wait, no auto-commit, linger, acks=all, idempotent on Kafka."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    consumer = AIOKafkaConsumer(
        settings.topics.events,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=settings.kafka.fetch_max_wait_ms,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        acks="all",
        enable_idempotence=settings.kafka.broker_engine == "kafka",  # as the worker: Tansu fails InitProducerId
        linger_ms=settings.kafka.producer_linger_ms,
    )
    return consumer, producer


def faust_commit_interval_s() -> float:
    """Faust's default `broker_commit_interval` (it has no public constant), so that a runtime without Faust
    commits its offsets as often as Faust does."""
    return faust.App("defaults").conf.broker_commit_interval


async def forward_without_faust(settings: Settings, partitions: int) -> None:
    """The per-event idiom on plain aiokafka and rocksdict: read, advance and write the user's window (and
    its changelog record), send one record, per event."""
    from rocksdict import Rdict

    app_id = f"{settings.worker.app_id}-bare"
    changelog = f"{app_id}-windows-changelog"  # Faust's name for the windows table's
    await create_changelog(settings, changelog, partitions)
    consumer, producer = plain_clients(settings, app_id)
    windows = Rdict(str(settings.worker.data_dir / "windows.rdb"))
    max_age_s = settings.worker.window_max_age_days * 86_400.0

    async def forward(records) -> None:
        for record in records:
            e = json.loads(record.value)
            stored = windows.get(record.key)
            window = UserWindow() if stored is None else UserWindow.decode(stored)
            event = WindowEvent(e["event_id"], e["item_id"], e["event_type"], epoch_seconds(e["ts"]))
            encoded = window.with_events([event], settings.worker.window_size, max_age_s).encode()
            windows[record.key] = encoded
            await producer.send(changelog, key=record.key, value=encoded, partition=record.partition)
            await producer.send(OUTPUT_TOPIC, **answer(e["user_id"], e))

    await plain_loop(consumer, producer, forward)


async def plain_loop(consumer, producer, on_records, max_records: int | None = None, timeout_ms: int = 1000) -> None:
    """Start the clients, then hand the records of each fetch (at most `max_records`, waiting up to `timeout_ms`
    for them) to `on_records`, committing the offsets every `broker_commit_interval` as Faust does."""
    commit_interval_s = faust_commit_interval_s()
    await consumer.start()
    await producer.start()
    freeze_heap()
    committed = time.monotonic()
    while True:
        fetched = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        records = [record for partition in fetched.values() for record in partition]
        if records:
            await on_records(records)
        if time.monotonic() - committed >= commit_interval_s:
            await consumer.commit()
            committed = time.monotonic()


def answer(user: str, trigger: dict) -> dict:
    return {
        "key": user.encode(),
        "value": json.dumps({"trigger_event_id": trigger["event_id"], "user_id": user}).encode(),
    }


def main() -> None:
    per_batch, plain = "--per-batch" in sys.argv[1:], "--aiokafka" in sys.argv[1:]
    sys.argv[1:] = [a for a in sys.argv[1:] if a not in ("--per-batch", "--aiokafka")]  # the rest is Faust's
    settings = load_settings()
    # The output topic is created as `recommendations` is (partitions, replication, configs), not by
    # the broker's auto-create defaults.
    partitions = asyncio.run(ensure_topics(settings.replace(topics={"recommendations": OUTPUT_TOPIC})))
    if plain:
        return asyncio.run(forward_without_faust(with_engine(settings), partitions))
    asyncio.set_event_loop(asyncio.new_event_loop())  # asyncio.run closed its loop; Faust needs one
    app = build_bare_app(settings, partitions, per_batch)
    freeze_heap()  # as the worker does before its first event (it has no catalog to wait for)
    faust.Worker(app, loglevel="info").execute_from_commandline()


if __name__ == "__main__":
    main()
