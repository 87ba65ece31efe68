"""`GET /health`: 200 while the worker can answer completely, the broker answers and the events agent
keeps up; else 503, saying which."""

from __future__ import annotations

from stream_app.context import WorkerContext
from stream_app.experiments import LiveExperiment


def register(ctx: WorkerContext) -> None:
    @ctx.app.page("/health")
    async def health(web, request):
        """200 while the broker answers, tables are recovered, the catalog is loaded and no events have
        waited `worker.stall_timeout_s` without a micro-batch completing; else 503."""
        body, status = health_body(ctx)
        return web.json(body, status=status)


def health_body(ctx: WorkerContext) -> tuple[dict, int]:
    recommender, progress = ctx.serving.recommender, ctx.progress
    stalled_for = progress.stalled_for(ctx.settings.worker.stall_timeout_s)
    if not ctx.broker_up.is_set():
        status = "broker unreachable"
    elif not ctx.can_serve():
        status = "starting"
    elif stalled_for is not None:
        status = "stalled"  # a stuck agent, or a broker that answers metadata but serves no fetches
    else:
        status = "ok"
    body = {
        "status": status,
        "model_version": recommender.model_version,
        "catalog_items": len(recommender.index),
        "refused_versions": ctx.serving.refused,
        "experiment": experiment_body(ctx.serving.experiment),
        "refused_experiments": ctx.serving.refused_experiments,
        "partitions": ctx.owned_event_partitions(),
        "events_waiting": progress.waiting,
        "seconds_since_last_batch": round(progress.seconds_since_last_batch(), 1),
    }
    if status == "stalled":
        body["stalled_for_s"] = round(stalled_for, 1)
    return body, 200 if status == "ok" else 503


def experiment_body(experiment: LiveExperiment | None) -> dict | None:
    """The experiment this worker serves: its name, mode, share and each variant's version."""
    if experiment is None:
        return None
    record = experiment.record
    return {
        "name": record.name,
        "mode": record.mode,
        "treatment_share": record.treatment_share,
        "variants": {variant: model.model_version for variant, model in experiment.recommenders.items()},
    }
