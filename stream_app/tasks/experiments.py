"""`follow_experiments`: start and stop the online experiments announced on `experiments`
(docs/operations.md, "Online experiments"). Every worker reads the whole topic, so a restarted or
rebalanced worker serves the experiment in force with the same variants (the assignment is a hash)."""

from __future__ import annotations

import asyncio
import logging

from core.contracts import parse_experiment
from core.kafka import end_offsets, read_whole_topic
from stream_app.context import WorkerContext

log = logging.getLogger(__name__)


def register(ctx: WorkerContext) -> None:
    @ctx.app.task
    async def follow_experiments():
        """Apply the newest record of `experiments`. On start, the one in force is applied before the events
        agent starts (`experiments_loaded`), so that no user is served outside their variant meanwhile."""
        async with read_whole_topic(ctx.settings, ctx.settings.topics.experiments) as consumer:
            await ctx.catalog_ready.wait()
            partitions = list(consumer.assignment())
            reported = await consumer.end_offsets(partitions) if partitions else {}
            ends = await asyncio.to_thread(end_offsets, ctx.settings, reported)
            while True:
                records = await consumer.getmany(timeout_ms=500)
                messages = [m for batch in records.values() for m in batch]
                if messages:
                    await apply_experiment(ctx, messages[-1])
                if not ctx.experiments_loaded.is_set() and all(
                    [await consumer.position(tp) >= ends[tp] for tp in partitions]
                ):
                    ctx.experiments_loaded.set()  # the events agent may start: every user gets their variant


async def apply_experiment(ctx: WorkerContext, message) -> None:
    """Start or stop the experiment of one record. A record or variant this worker refuses leaves it
    serving production, with the reason in /health and `streamrec_experiment_refusals_total`."""
    serving, metrics = ctx.serving, ctx.metrics
    name = f"offset {message.offset}"
    try:
        record = parse_experiment(message.value)
        name = record.name
        if record.state == "stopped":
            serving.stop_experiment(record)
            metrics.experiment_serving.labels(name).set(0)
        elif serving.experiment is None or serving.experiment.record != record:
            await serving.start_experiment(ctx.settings, record)
            metrics.experiment_serving.labels(name).set(1)
    except Exception as e:  # a bad record or version must never take the worker down
        reason = f"{type(e).__name__}: {e}"
        log.error("refused experiment %s: %s; serving production, %s", name, reason, serving.recommender.model_version)
        serving.refused_experiments[name] = reason
        metrics.experiment_refusals.labels(name).inc()
        metrics.experiment_serving.labels(name).set(0)
