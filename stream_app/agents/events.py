"""`recommend_on_events`: micro-batches of events -> updated windows -> one recommendation per
touched user. The decisions are `stream_app.steps`; this module does the I/O around them."""

from __future__ import annotations

import time

import faust

from stream_app.context import WorkerContext
from stream_app.faust_private import event_context
from stream_app.steps import (
    UserEvents,
    advance_windows,
    build_records,
    group_valid_events,
    next_offsets,
    remember_shown,
)


def register(ctx: WorkerContext) -> None:
    settings = ctx.settings
    limits = {
        "max_bytes": settings.worker.max_record_bytes,
        "event_types": set(settings.worker.event_weights),
        "max_future_skew_s": settings.worker.max_future_skew_s,
    }

    @ctx.app.agent(ctx.topics.events)
    async def recommend_on_events(stream):
        """Micro-batches of events -> updated windows -> one recommendation per touched user."""
        await ctx.catalog_ready.wait()
        async for batch in stream.take_events(settings.worker.batch_size, within=settings.worker.batch_window_s):
            await on_batch(ctx, stream, batch, limits)


async def on_batch(ctx: WorkerContext, stream: faust.StreamT, batch: list[faust.EventT], limits: dict) -> None:
    """Dead-letter the invalid events, recommend for the users of the valid ones."""
    ctx.metrics.batch_size.observe(len(batch))
    ctx.metrics.events_in.inc(len(batch))
    touched, rejects = group_valid_events([event.value for event in batch], **limits)
    for index, reason in rejects:
        await ctx.send_to_dlq(batch[index].message, reason)
    if touched:
        await recommend_for(ctx, stream, batch, touched)
    # What a forget request waits for (agents/control.py).
    ctx.events_done.update(next_offsets((e.message.partition, e.message.offset) for e in batch))


async def recommend_for(
    ctx: WorkerContext, stream: faust.StreamT, batch: list[faust.EventT], touched: dict[str, UserEvents]
) -> None:
    """Read the touched windows, advance them, score them in one call, write them back and send a
    record per user (each table access in the context of the user's last event)."""
    settings, metrics = ctx.settings, ctx.metrics
    recommender = ctx.serving.recommender  # a model swap takes effect between batches
    stored = {}
    for user, (events, last) in touched.items():
        with event_context(stream, batch[last]):  # reads, too, go to the event's partition store
            stored[user] = ctx.windows[user]
        for e in events:
            recommender.observe(e.item_id, e.event_type, e.ts)
    updated, hits = advance_windows(
        touched, stored, settings.worker.window_size, settings.worker.window_max_age_days * 86_400.0
    )
    for hit in hits:
        metrics.observe_hit(hit)
    lists = dict(zip(updated, recommender.recommend(list(updated.values()))))
    now = time.time()
    shown = remember_shown(updated, lists)
    records = build_records(touched, lists, recommender.model_version, now)
    for (user, (_, last)), (key, record) in zip(touched.items(), records):
        event = batch[last]
        with event_context(stream, event):
            ctx.windows[user] = shown[user]
        await ctx.topics.recommendations.send(key=key, value=record)
        metrics.latency.observe(max(0.0, now - event.message.timestamp))
    metrics.recommendations_out.inc(len(touched))
