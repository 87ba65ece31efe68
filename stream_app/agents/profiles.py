"""`store_profiles`: users' free-text interests from the `profiles` topic (docs/topics.md), and the interests
the events agent blends into its users' queries (`stated_interests`).

A profile is what a user says they like ("I love horror movies"). It is kept in the `profiles` table (RocksDB,
changelog-backed), embedded by the item tower into the item space, and blended with the user's behaviour
vector, the interest weighing less with every event (`stream_app.recommender.blend_interest`). `profiles` is
keyed by user and co-partitioned with `events`, so the worker holding a user's window holds their profile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Mapping, Sequence

import faust

from core.contracts import InvalidRecord, ProfileChange, Recommendation, profile_change
from state.window import UserWindow
from stream_app.context import WorkerContext
from stream_app.faust_private import event_context
from stream_app.steps import UserEvents, profile_trigger

log = logging.getLogger(__name__)


def register(ctx: WorkerContext) -> None:
    @ctx.app.agent(ctx.topics.profiles)
    async def store_profiles(stream):
        """Store or remove each user's profile, and send the user a list that reflects it at once."""
        await ctx.catalog_ready.wait()  # scoring needs the catalog
        async for event in stream.events():
            await on_profile(ctx, stream, event)


async def on_profile(ctx: WorkerContext, stream: faust.StreamT, event: faust.EventT) -> None:
    """Dead-letter an invalid record; else store (or, for a tombstone, delete) the profile and send the
    user's new list. A failure after parsing dead-letters the record with the reason and the agent goes on,
    as the events agent does."""
    message = event.message
    try:
        change = profile_change(message.key, event.value, max_bytes=ctx.settings.worker.max_record_bytes)
    except InvalidRecord as e:
        await ctx.send_to_dlq(message, e.reason)
        return
    try:
        changed, window = store(ctx, stream, event, change)
    except Exception as e:
        await ctx.send_to_dlq(message, f"profile not stored: {e!r}")
        return
    if not changed:
        return
    try:
        await answer(ctx, change, window, profile_trigger(message.partition, message.offset))
    except Exception as e:
        await ctx.send_to_dlq(message, f"profile stored, no list sent: {e!r}")


def store(
    ctx: WorkerContext, stream: faust.StreamT, event: faust.EventT, change: ProfileChange
) -> tuple[bool, UserWindow | None]:
    """Write the change to the profiles table -> (whether anything changed, the user's window)."""
    user, interest = change
    with event_context(stream, event):  # this partition's store and changelog (as the user's window)
        if interest is not None:
            ctx.profiles[user] = interest
        elif ctx.profiles.pop(user, None) is None:
            return False, None  # no profile to remove (a forget request removed it already)
        return True, ctx.windows[user]


async def answer(ctx: WorkerContext, change: ProfileChange, window: UserWindow, trigger: str) -> None:
    """Send the user's list with their new interest. A removed profile of a user without events leaves
    nothing to recommend from: their list is tombstoned (so a profile stored after a forget request, read
    before the tombstone that request sent, is forgotten again)."""
    user, interest = change
    if interest is None and not len(window):
        await ctx.topics.recommendations.send(key=user.encode(), value=None)
        return
    recommender = ctx.serving.recommender
    if interest is not None:
        await asyncio.to_thread(recommender.interest_vector, interest)  # the item tower (~7 ms) off the loop
    (items,) = recommender.recommend([window], [interest])
    record = Recommendation(user, items, recommender.model_version, int(time.time() * 1000), trigger)
    await ctx.topics.recommendations.send(key=user.encode(), value=record.encode())


def stated_interests(
    ctx: WorkerContext, stream: faust.StreamT, batch: Sequence[faust.EventT], touched: Mapping[str, UserEvents]
) -> dict[str, str]:
    """The stated interest of each touched user who has one (read in the context of the user's last event in
    `batch`, whose partition holds their profile). A profile that cannot be read is left out: the user is
    answered from their behaviour alone (logged)."""
    interests = {}
    for user, user_events in touched.items():
        try:
            with event_context(stream, batch[user_events.last]):
                interest = ctx.profiles.get(user)
        except Exception:
            log.warning("profile of user %r not read; answering from their events alone", user, exc_info=True)
            continue
        if interest is not None:
            interests[user] = interest
    return interests
