"""`GET /health`: 200 while the worker can answer completely and the broker answers; else 503."""

from __future__ import annotations

from stream_app.context import WorkerContext


def register(ctx: WorkerContext) -> None:
    @ctx.app.page("/health")
    async def health(web, request):
        """200 while the broker answers, tables are recovered and the catalog is loaded; else 503."""
        body, status = health_body(ctx)
        return web.json(body, status=status)


def health_body(ctx: WorkerContext) -> tuple[dict, int]:
    ready, recommender = ctx.ready(), ctx.serving.recommender
    status = "ok" if ready else ("broker unreachable" if not ctx.broker_up.is_set() else "starting")
    body = {
        "status": status,
        "model_version": recommender.model_version,
        "catalog_items": len(recommender.index),
        "refused_versions": ctx.serving.refused,
        "partitions": ctx.owned_event_partitions(),
    }
    return body, 200 if ready else 503
