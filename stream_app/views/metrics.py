"""`GET /metrics`: the worker's Prometheus metrics (`stream_app.metrics`), with the gauges read per scrape."""

from __future__ import annotations

from faust.types import TP
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream_app.context import WorkerContext


def register(ctx: WorkerContext) -> None:
    @ctx.app.page("/metrics")
    async def prometheus(web, request):
        await refresh_gauges(ctx)
        return web.bytes(generate_latest(ctx.metrics.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])


async def refresh_gauges(ctx: WorkerContext) -> None:
    """Model version, windows held, trending items kept, and consumer lag of each events partition this
    worker owns."""
    metrics, consumer = ctx.metrics, ctx.app.consumer
    metrics.model.info({"version": ctx.serving.recommender.model_version})
    metrics.windows.set(len(ctx.windows))
    metrics.trending_items.set(len(ctx.serving.recommender.trending))
    for partition in ctx.owned_event_partitions():
        tp = TP(ctx.settings.topics.events, partition)
        metrics.lag.labels(str(partition)).set(max(0, consumer.highwater(tp) - await consumer.position(tp)))
