"""`follow_catalog`: every worker keeps the whole catalog (the `items` topic) in its item index.

Up to `STREAMREC_WORKER__MAX_CATALOG_ITEMS`: the catalog is the one per-item structure a producer
of `items` grows at will, and each item costs its vectors and its record, so new items beyond the
bound are dead-lettered ("catalog full"), counted and left out; changes to items already in the
catalog and removals still apply, and a removal frees a place.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Collection, Iterable

from core.kafka import end_offsets, read_whole_topic
from stream_app.context import WorkerContext
from stream_app.steps import catalog_changes

log = logging.getLogger(__name__)


def register(ctx: WorkerContext) -> None:
    @ctx.app.task
    async def follow_catalog():
        """Every worker keeps the whole catalog: read `items` from the start, no consumer group."""
        settings = ctx.settings
        async with read_whole_topic(settings, settings.topics.items) as consumer:
            partitions = sorted(consumer.assignment())
            end = await asyncio.to_thread(end_offsets, settings, await consumer.end_offsets(partitions))
            while True:
                records = await consumer.getmany(timeout_ms=200, max_records=512)
                for tp, messages in records.items():
                    await apply_catalog_records(ctx, messages)
                if not ctx.catalog_ready.is_set() and all(
                    [await consumer.position(tp) >= end[tp] for tp in partitions]
                ):
                    log.info("catalog loaded: %d items", len(ctx.serving.catalog))
                    freeze_heap()  # modules, model and catalog: all built before the first event
                    ctx.catalog_ready.set()


async def apply_catalog_records(ctx: WorkerContext, messages) -> None:
    """Removals, dead letters (invalid records, new items beyond the bound), then the upserts (embedded
    in one call)."""
    worker = ctx.settings.worker
    changes = catalog_changes([(m.key, m.value) for m in messages], max_bytes=worker.max_record_bytes)
    for item_id in changes.removals:
        ctx.serving.remove_item(item_id)
    for index, reason in changes.rejects:
        await ctx.send_to_dlq(messages[index], reason)
    for item_id in beyond_capacity(changes.upserts, ctx.serving.catalog, worker.max_catalog_items):
        del changes.upserts[item_id]
        reason = f"catalog full (STREAMREC_WORKER__MAX_CATALOG_ITEMS={worker.max_catalog_items})"
        await ctx.send_to_dlq(messages[changes.upsert_records[item_id]], reason)
    if changes.upserts:
        await ctx.serving.upsert_items(list(changes.upserts.values()))


def beyond_capacity(item_ids: Iterable[str], catalog: Collection[str], max_items: int) -> list[str]:
    """The ids among `item_ids` (in order) that would take the catalog past `max_items`: new ones once
    it is full. Ids already in the catalog are updates and always fit."""
    new = [i for i in item_ids if i not in catalog]
    return new[max(0, max_items - len(catalog)) :]


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
