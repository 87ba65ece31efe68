"""`GET /recommendations/{user_id}`: the user's current top-k, from the worker that owns the user's partition."""

from __future__ import annotations

from state.window import UserWindow
from stream_app.context import WorkerContext


def register(ctx: WorkerContext) -> None:
    @ctx.app.page("/recommendations/{user_id}")
    @ctx.app.table_route(table=ctx.windows, match_info="user_id")
    async def recommendations_of(web, request, user_id: str):
        """The user's current top-k: their window scored by the serving model (what the next
        record would say); served only once tables are recovered."""
        if not ctx.can_serve():
            return web.json({"error": "starting"}, status=503)
        recommender = ctx.serving.recommender
        window = ctx.windows.get(user_id)
        (items,) = recommender.recommend([window or UserWindow()])
        return web.json(
            {
                "user_id": user_id,
                "items": [i.asdict() for i in items],
                "model_version": recommender.model_version,
                "known_user": window is not None,
            }
        )
