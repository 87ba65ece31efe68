"""`recommend_on_events`: micro-batches of events -> updated windows -> one recommendation per
touched user. The decisions are `stream_app.steps`; this module does the I/O around them.

A failure after parsing costs only the users it hits. A user whose window cannot be read or scored,
whose record is too large for the recommendations topic or is refused, gets no record and keeps the
window it had: their events of the batch go to the dead-letter topic with the reason (logged once,
counted in `streamrec_recommendation_failures_total{stage}`), and the agent goes on with the others.
A window takes a batch's events only once the record answering them is delivered, so a dead-lettered
event is in neither (replayed from the DLQ, it is processed as new). If the window write itself fails,
the record is out and the events are dead-lettered too, so that none is lost from the history.
Retriable send errors are retried by the producer for as long as they last; the agent waits for them
(/health reports "stalled" if that takes longer than `worker.stall_timeout_s`).
"""

from __future__ import annotations

import asyncio
import logging
import time

import faust

from core.kafka import max_message_bytes
from core.settings import Settings
from state.window import UserWindow
from stream_app.agents.profiles import stated_interests
from stream_app.context import WorkerContext
from stream_app.faust_private import event_context, send_lingering
from stream_app.recommender import Recommender
from stream_app.steps import (
    OutgoingRecord,
    UserEvents,
    advance_windows,
    build_records,
    group_valid_events,
    next_offsets,
    oversized,
    remember_shown,
    score_one_by_one,
)

log = logging.getLogger(__name__)

Failed = dict[str, tuple[str, str]]  # user -> (stage, reason): the users a batch produced no record for


def register(ctx: WorkerContext) -> None:
    settings = ctx.settings
    limits = event_limits(settings)

    @ctx.app.agent(ctx.topics.events)
    async def recommend_on_events(stream):
        """Micro-batches of events -> updated windows -> one recommendation per touched user."""
        await ctx.catalog_ready.wait()
        await ctx.experiments_loaded.wait()  # served (or refused) before any user is: users keep their variant
        largest = await largest_record(ctx)
        async for batch in stream.take_events(settings.worker.batch_size, within=settings.worker.batch_window_s):
            await on_batch(ctx, stream, batch, limits, largest)


def event_limits(settings: Settings) -> dict:
    """`group_valid_events`' checks, from the worker's settings."""
    return {
        "max_bytes": settings.worker.max_record_bytes,
        "event_types": set(settings.worker.event_weights),
        "max_future_skew_s": settings.worker.max_future_skew_s,
    }


async def on_batch(
    ctx: WorkerContext, stream: faust.StreamT, batch: list[faust.EventT], limits: dict, largest: int
) -> None:
    """Dead-letter the invalid events, recommend for the users of the valid ones."""
    metrics, taken = ctx.metrics, time.time()
    for event in batch:
        metrics.event_wait.observe(max(0.0, taken - event.message.timestamp))
    metrics.batch_size.observe(len(batch))
    metrics.events_in.inc(len(batch))
    touched, rejects = group_valid_events([event.value for event in batch], **limits)
    for index, reason in rejects:
        await ctx.send_to_dlq(batch[index].message, reason)
    if touched:
        await recommend_for(ctx, stream, batch, touched, largest)
    # What a forget request waits for (agents/control.py), and the progress /health watches.
    ctx.events_done.update(next_offsets((e.message.partition, e.message.offset) for e in batch))
    ctx.progress.batch_done()
    metrics.batch_seconds.observe(time.time() - taken)


async def recommend_for(
    ctx: WorkerContext, stream: faust.StreamT, batch: list[faust.EventT], touched: dict[str, UserEvents], largest: int
) -> None:
    """Read the touched windows, advance them, score them in one call, send a record per user and, once
    it is delivered, write the user's window (each table access in the context of the user's last
    event). The users a step fails for are dead-lettered at the end."""
    settings, metrics = ctx.settings, ctx.metrics
    recommender = ctx.serving.recommender  # a model swap takes effect between batches
    experiment = ctx.serving.experiment  # so does an experiment's start or stop
    failed: Failed = {}
    stored = read_windows(ctx, stream, batch, touched, failed)
    for user in stored:
        for event in touched[user].events:
            recommender.observe(event.item_id, event.event_type, event.ts)
    updated, hits = advance_windows(
        {user: touched[user] for user in stored},
        stored,
        settings.worker.window_size,
        settings.worker.window_max_age_days * 86_400.0,
        settings.worker.seen_items_max,
        settings.worker.event_weights,
    )
    for hit in hits:
        metrics.observe_hit(hit)
    interests = stated_interests(ctx, stream, batch, touched)
    if experiment is None:
        with metrics.scoring.time():
            lists, served = score(recommender, updated, interests, failed), {}
    else:
        events = {user: [(e.item_id, e.event_type) for e in touched[user].events] for user in stored}
        for credit in experiment.credits(stored, events):
            metrics.observe_credit(experiment.name, credit)
        triggers = {user: touched[user].events[-1].event_id for user in updated}
        with metrics.scoring.time():
            served = experiment.serve(
                updated, triggers, lambda model, windows: score(model, windows, interests, failed)
            )
        lists = {user: s.items for user, s in served.items()}
    now = time.time()
    short = {user: why for user, items in lists.items() if (why := recommender.short_reason(items))}
    records = build_records(touched, lists, recommender.model_version, now, short, served)
    with metrics.delivery.time():
        delivered = await deliver(ctx, records, largest, failed)
    shown = remember_shown(updated, lists)
    for user in delivered:
        event = batch[touched[user].last]
        metrics.latency.observe(max(0.0, now - event.message.timestamp))
        try:
            with event_context(stream, event):
                ctx.windows[user] = shown[user]
        except Exception as e:
            failed[user] = ("table", f"window not written (its record was sent): {e!r}")
    metrics.recommendations_out.inc(len(delivered))
    for user in delivered if experiment else ():
        metrics.experiment_exposures.labels(experiment.name, served[user].variant).inc()
    for user, (stage, reason) in failed.items():
        metrics.recommendation_failures.labels(stage).inc()
        await ctx.dead_letter([batch[i].message for i in touched[user].indices], reason)


def read_windows(
    ctx: WorkerContext, stream: faust.StreamT, batch: list[faust.EventT], touched: dict[str, UserEvents], failed: Failed
) -> dict[str, UserWindow]:
    """The stored window of each touched user (those that cannot be read go in `failed`)."""
    stored = {}
    for user, user_events in touched.items():
        try:
            with event_context(stream, batch[user_events.last]):  # reads, too, go to the event's partition store
                stored[user] = ctx.windows[user]
        except Exception as e:
            failed[user] = ("table", f"window not read: {e!r}")
    return stored


def score(recommender: Recommender, windows: dict, interests: dict, failed: Failed) -> dict:
    """The users' lists (with their stated interests), scored in one call; if that raises, user by user
    (those that fail go in `failed`)."""
    if not windows:
        return {}
    try:
        return dict(zip(windows, recommender.recommend(list(windows.values()), [interests.get(u) for u in windows])))
    except Exception:
        log.warning("scoring %d users together failed; scoring them one by one", len(windows), exc_info=True)
    lists, reasons = score_one_by_one(recommender.recommend, windows, interests)
    failed.update((user, ("scoring", reason)) for user, reason in reasons.items())
    return lists


async def deliver(ctx: WorkerContext, records: list[OutgoingRecord], largest: int, failed: Failed) -> list[str]:
    """Send the records and wait for the broker's acknowledgements (the producer retries retriable errors
    meanwhile) -> the users whose record was delivered; the others go in `failed`."""
    # A record too large is not sent: the broker would refuse the whole producer batch it lands in, and
    # aiokafka's idempotent producer could not send to that partition again (a gap in its sequence numbers).
    too_large = oversized(records, largest, ctx.settings.topics.recommendations)
    failed.update((user, ("send", reason)) for user, reason in too_large.items())
    deliveries = {}
    for record in records:
        if record.user_id in failed:
            continue
        try:
            deliveries[record.user_id] = await ctx.topics.recommendations.send(key=record.key, value=record.value)
        except Exception as e:
            failed[record.user_id] = ("send", f"record not sent: {e!r}")
    send_lingering(ctx.app)  # they are awaited below: a linger would only delay them
    results = await asyncio.gather(*deliveries.values(), return_exceptions=True)
    for user, result in zip(deliveries, results):
        if isinstance(result, BaseException):
            failed[user] = ("send", f"record not delivered: {result!r}")
    return [user for user in deliveries if user not in failed]


async def largest_record(ctx: WorkerContext) -> int:
    """The largest recommendation record (with its batch framing) the producer sends and the topic takes.
    Read once, at the agent's start: a topic whose limit is lowered later needs a worker restart."""
    topic, conf = ctx.settings.topics.recommendations, ctx.app.conf
    largest = conf.producer_max_request_size
    if ctx.settings.kafka.broker_engine == "tansu":
        return largest  # Tansu answers DescribeConfigs by closing the connection
    try:
        largest = min(largest, await asyncio.to_thread(max_message_bytes, ctx.settings, topic))
    except Exception as e:
        log.warning("max.message.bytes of %s unknown (%r): records up to %d bytes are sent", topic, e, largest)
    if largest < conf.producer_max_batch_size:
        log.warning(
            "%s takes records of at most %d bytes, fewer than a producer batch holds (%d): the broker refuses "
            "a batch of small records over that size whole",
            topic,
            largest,
            conf.producer_max_batch_size,
        )
    return largest
