"""`forget_users`: forget requests from the control topic (`streamrec forget`, docs/topics.md)."""

from __future__ import annotations

import asyncio
import logging
import time

from faust.types import TP

from core.contracts import InvalidRecord, parse_control
from stream_app.context import WorkerContext
from stream_app.faust_private import event_context

log = logging.getLogger(__name__)

FORGET_CATCH_UP_TIMEOUT_S = 30.0  # how long a forget waits for the events sent before it


def register(ctx: WorkerContext) -> None:
    @ctx.app.agent(ctx.topics.control)
    async def forget_users(stream):
        """Forget requests: delete the user's window and profile (changelog tombstones, compacted away) and
        tombstone their key on `recommendations` and `profiles`. `control` is keyed by user and co-partitioned
        with `events`, so the request reaches the worker, stores and changelog partitions holding them."""
        await ctx.catalog_ready.wait()  # the events agent waits for it too; a forget waits for the events agent
        async for event in stream.events():
            await forget(ctx, stream, event)


async def forget(ctx: WorkerContext, stream, event) -> None:
    try:
        request = parse_control(event.message.key, event.value, max_bytes=ctx.settings.worker.max_record_bytes)
    except InvalidRecord as e:
        await ctx.send_to_dlq(event.message, e.reason)
        return
    user = request.user_id
    if not await events_caught_up(ctx, event.message.partition):
        log.warning(
            "forgetting user %r before this worker has processed the events sent before the "
            "request (rebalance or backlog): an older event processed later re-creates a "
            "window; send the request again once the lag is gone",
            user,
        )
    with event_context(stream, event):  # the table writes go to this partition's changelogs
        try:
            del ctx.windows[user]
        except KeyError:
            pass
        ctx.profiles.pop(user, None)
    await ctx.topics.recommendations.send(key=user.encode(), value=None)
    # The profile's text leaves the compacted `profiles` topic too; the profiles agent, reading the tombstone
    # after any older profile of the user, deletes again what such a profile stored meanwhile.
    await ctx.topics.profiles.send(key=user.encode(), value=None)
    ctx.metrics.users_forgotten.inc()
    log.info("forgot user %r (requested at %d)", user, request.requested_at)


async def events_caught_up(ctx: WorkerContext, partition: int) -> bool:
    """Wait until this worker has processed `events` partition `partition` up to its end offset now, so
    that events sent before a forget request cannot re-create the window after it (the two topics are
    read independently). False if that takes FORGET_CATCH_UP_TIMEOUT_S or a rebalance starts: the
    request is not held up longer (and a rebalance waits for it to be acknowledged)."""
    app = ctx.app
    tp = TP(ctx.settings.topics.events, partition)
    end = (await app.consumer.highwaters(tp)).get(tp) or 0
    deadline = time.monotonic() + FORGET_CATCH_UP_TIMEOUT_S
    while ctx.processed_offset(partition) < end:
        if app.rebalancing or time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True
