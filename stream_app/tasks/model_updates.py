"""`follow_model_updates`: swap to each model version announced on `model-updates` (hot swap,
docs/ARCHITECTURE.md "Models in production")."""

from __future__ import annotations

import logging

from core.contracts import ModelUpdate
from core.kafka import read_whole_topic
from stream_app.context import WorkerContext
from stream_app.steps import announced_version

log = logging.getLogger(__name__)


def register(ctx: WorkerContext) -> None:
    @ctx.app.task
    async def follow_model_updates():
        """Swap to each version announced on `model-updates` (the last one, on start)."""
        async with read_whole_topic(ctx.settings, ctx.settings.topics.model_updates) as consumer:
            await ctx.catalog_ready.wait()
            while True:
                records = await consumer.getmany(timeout_ms=500)
                messages = [m for batch in records.values() for m in batch]
                if messages:
                    await apply_model_update(ctx, messages[-1])  # only the newest announcement matters


async def apply_model_update(ctx: WorkerContext, message) -> None:
    serving = ctx.serving
    try:
        update = ModelUpdate.loads(message.value, serializer="json")
        if update.version != serving.recommender.model_version:
            await serving.swap_to(ctx.settings, update.version, update.sha256)
    except Exception as e:  # a bad version must never take the worker down
        reason = f"{type(e).__name__}: {e}"
        log.error(
            "refused model update at offset %s: %s; still serving %s",
            message.offset,
            reason,
            serving.recommender.model_version,
        )
        serving.refused[announced_version(message.value, message.offset)] = reason
        ctx.metrics.model_refusals.inc()
