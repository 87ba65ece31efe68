"""`GET /windows/{user_id}`: the user's window as the worker holds it (read-only; for `streamrec console`)."""

from __future__ import annotations

from stream_app.context import WorkerContext
from stream_app.views.recommendations import owner_unreachable_is_503


def register(ctx: WorkerContext) -> None:
    # Routed by the events topic like /recommendations (views/recommendations.py says why not table_route).
    @ctx.app.page("/windows/{user_id}")
    @owner_unreachable_is_503
    @ctx.app.topic_route(topic=ctx.topics.events, match_info="user_id")
    async def window_of(web, request, user_id: str):
        """The user's events, oldest first, and the list they were last shown; 503 until tables are recovered."""
        if not ctx.can_serve() or ctx.app.rebalancing:
            return web.json({"error": "starting"}, status=503)
        window = ctx.windows.get(user_id)  # the table's default, an empty window, for an unknown user
        return web.json(
            {
                "user_id": user_id,
                "known_user": len(window) > 0,
                "events": [event._asdict() for event in window.events()],
                "last_shown": list(window.recommended),
            }
        )
