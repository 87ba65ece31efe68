"""`GET /recommendations/{user_id}`: the user's current top-k, from the worker that owns the user's partition.

Query parameters: `interest` stands in for the user's stored profile in this one answer; `categories`,
`exclude_categories`, `max_per_category`, `repeat_policy` override the configured business rules
(stream_app/rules.py, docs/topics.md); `stage=retrieval` answers in the retrieval order even when the model
has a ranking stage (default `full`). An unknown or malformed one is a 400 with the reason."""

from __future__ import annotations

import asyncio
from functools import wraps

import aiohttp
from faust.web.exceptions import ServiceUnavailable

from core.contracts import InvalidRecord, interest_query
from core.errors import InvalidRequest
from stream_app.context import WorkerContext
from stream_app.recommender import STAGES
from stream_app.rules import from_query


def register(ctx: WorkerContext) -> None:
    # Routed by the events topic, not the windows table (`table_route`): a window lives in the
    # partition its user's events arrive on (the raw user id hashed), while a table route hashes the
    # table's JSON key ('"u1"'), another partition for most users: it asked a worker without the window.
    @ctx.app.page("/recommendations/{user_id}")
    @owner_unreachable_is_503
    @ctx.app.topic_route(topic=ctx.topics.events, match_info="user_id")
    async def recommendations_of(web, request, user_id: str):
        """The user's current top-k: their window and stated interest scored by the serving model (what
        the next record would say); served only once tables are recovered. `?interest=` replaces the stored
        interest for this answer (400, with the reason, if the contract refuses it)."""
        # During a rebalance too: Faust routes a newly assigned partition here before it marks its
        # recovery started (and `can_serve` reads the recovery done), so the empty partition answered
        # "unknown user" for a few ms; `rebalancing` lasts from the revoke to the recovered tables.
        if not ctx.can_serve() or ctx.app.rebalancing:
            return web.json({"error": "starting"}, status=503)
        interest = request.query.get("interest")
        if interest is not None:
            try:
                interest = interest_query(user_id, interest)
            except InvalidRecord as e:
                return web.json({"error": e.reason}, status=400)
        stage = request.query.get("stage", "full")
        if stage not in STAGES:
            return web.json({"error": f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}"}, status=400)
        recommender = ctx.serving.recommender
        try:
            rules = from_query(
                [(name, value) for name, value in request.query.items() if name not in ("interest", "stage")],
                recommender.rules,
                recommender.index.rows_in,
                ctx.settings.worker.event_weights,
            )
        except InvalidRequest as e:
            return web.json({"error": str(e)}, status=400)
        window = ctx.windows.get(user_id)  # the table's default, an empty window, for an unknown user
        interest = interest if interest is not None else ctx.profiles.get(user_id)
        if interest is not None:
            await asyncio.to_thread(recommender.interest_vector, interest)  # the item tower (~7 ms) off the loop
        (items,) = recommender.recommend([window], [interest], rules, stage)
        return web.json(
            {
                "user_id": user_id,
                "items": [i.asdict() for i in items],
                "model_version": recommender.model_version,
                "known_user": len(window) > 0,
                "interest": interest,  # the stated interest the list was blended with; null: none
                "short": recommender.short_reason(items, rules),
            }
        )


def owner_unreachable_is_503(handler):
    """A request forwarded to the owner the group last named, when that worker is gone (killed,
    until the group notices and rebalances), is a 503 the client retries, not a 500."""

    @wraps(handler)
    async def forward_or_503(view, request, *args, **kwargs):
        try:
            return await handler(view, request, *args, **kwargs)
        except aiohttp.ClientError as e:
            raise ServiceUnavailable("owner unreachable") from e

    return forward_or_503
