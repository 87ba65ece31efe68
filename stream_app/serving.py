"""The model a worker serves, the live catalog, and swapping to a new model version.

A swap is prepared off to the side — verify the version, warm it up, check its canary
batch, embed the whole live catalog with its item tower — and then made by replacing
one reference between micro-batches: no event is skipped or scored twice because of it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from core.contracts import ExperimentRecord, Item
from core.errors import RegistryError
from core.settings import Settings
from export.registry import Registry
from export.runtime import check_canary, load_runtime
from state.popularity import TrendingCounter
from stream_app.experiments import LiveExperiment
from stream_app.recommender import Recommender, StreamActivity
from stream_app.rules import Rules

log = logging.getLogger(__name__)


def load_recommender(
    settings: Settings,
    version: str | None = None,
    trending: TrendingCounter | None = None,
    activity: StreamActivity | None = None,
) -> Recommender:
    """A verified, warmed-up, canary-checked version (None = the registry's latest). Blocking."""
    w = settings.worker
    runtime = load_runtime(Registry(settings.registry.path).load(version), intra_op_threads=w.inference_threads)
    worst = check_canary(runtime)
    log.info("model %s passed its canary batch (max diff %.2e)", runtime.version.name, worst)
    recommender = Recommender.create(
        runtime,
        w.event_weights,
        w.top_k,
        w.trending_half_life_s,
        w.ann_min_items,
        w.max_trending_items,
        w.interest_handover_events,
        Rules.from_settings(w),
        w.ranker_candidates,
        (w.ranker_click_weight, w.ranker_purchase_weight),
    )
    if trending is not None:
        recommender.trending = trending  # popularity is about the stream, not the model
    if activity is not None and recommender.activity is not None and activity.spec == recommender.activity.spec:
        recommender.activity = activity  # likewise the ranker's, when the new ranker reads the same
    return recommender


def load_at_start(settings: Settings) -> tuple[Recommender, dict[str, str]]:
    """What a starting worker serves: the latest version, or — if that one is refused (missing or
    corrupt file, checksum mismatch, canary failure) — the newest older version that passes.

    Returns the recommender and the refused versions with their reasons (for /health). Raises
    RegistryError, naming every version tried and why it failed, if nothing can be served. Blocking.
    """
    registry = Registry(settings.registry.path)
    latest = registry.latest()
    if latest is None:
        return load_recommender(settings), {}  # raises: no latest version, and how to make one
    refused: dict[str, str] = {}
    for version in [latest] + [v for v in reversed(registry.versions()) if v != latest]:
        try:
            recommender = load_recommender(settings, version)
        except Exception as e:  # any failure refuses the version; the next one may serve
            refused[version] = f"{type(e).__name__}: {e}"
            log.error(
                "refusing model version %s%s: %s", version, " (latest)" if version == latest else "", refused[version]
            )
            continue
        if refused:
            log.error("serving model version %s instead of the latest, %s, which was refused", version, latest)
        return recommender, refused
    raise RegistryError(
        f"no model version in {settings.registry.path} can be served; refused:\n"
        + "\n".join(f"- {v}: {reason}" for v, reason in refused.items())
    )


@dataclass
class ServingState:
    """Shared by the agents of one worker."""

    recommender: Recommender  # production: what serves outside an experiment
    catalog: dict[str, Item] = field(default_factory=dict)  # every live item, as last published
    refused: dict[str, str] = field(default_factory=dict)  # announced versions we would not serve, and why
    experiment: LiveExperiment | None = None  # the running online experiment, if this worker serves it
    refused_experiments: dict[str, str] = field(default_factory=dict)  # experiment name -> why it is not served

    def models(self) -> list[Recommender]:
        """Every model this worker serves now (production, the experiment's variants), each once."""
        models = [self.recommender, *(self.experiment.recommenders.values() if self.experiment else ())]
        return list({id(m): m for m in models}.values())

    async def upsert_items(self, items: list[Item]) -> None:
        models = self.models()
        vectors = [await asyncio.to_thread(m.embed_items, items) for m in models]  # onnxruntime releases the GIL
        for item in items:
            self.catalog[item.item_id] = item
        for recommender, embedded in zip(models, vectors):
            recommender.add_items(items, embedded)

    def remove_item(self, item_id: str) -> None:
        self.catalog.pop(item_id, None)
        for recommender in self.models():
            recommender.index.remove(item_id)

    async def swap_to(self, settings: Settings, version: str, sha256: str) -> None:
        """Serve `version` once it is loaded and has embedded the live catalog."""
        candidate = await self._load(settings, version, sha256)
        await self._catch_up([candidate])
        previous, self.recommender = self.recommender.model_version, candidate  # no await since the catch-up
        log.info("swapped model %s -> %s (%d items)", previous, version, len(candidate.index))

    async def start_experiment(self, settings: Settings, record: ExperimentRecord) -> None:
        """Serve `record`'s variants once both are loaded, checked and have embedded the live catalog as a
        swap's version would; a variant on the production version shares its model. Raises, serving
        production, if either variant is refused."""
        self.experiment = None  # production serves while the variants load
        variants = {}
        for variant, wanted in record.variants.items():
            if (
                wanted.version == self.recommender.model_version
                and wanted.sha256 == self.recommender.runtime.version.sha256
            ):
                variants[variant] = self.recommender
            else:
                variants[variant] = await self._load(settings, wanted.version, wanted.sha256)
        await self._catch_up([m for m in variants.values() if m is not self.recommender])
        self.experiment = LiveExperiment(record, variants)  # no await since the catch-up
        self.refused_experiments.pop(record.name, None)
        log.info(
            "serving experiment %s (%s): %s",
            record.name,
            record.mode,
            {v: m.model_version for v, m in variants.items()},
        )

    def stop_experiment(self, record: ExperimentRecord) -> None:
        """End the experiment `record` stops; with `promote`, its variant's model becomes production now
        (the version is announced on model-updates too, for the workers that did not serve it)."""
        live, self.experiment = self.experiment, None
        self.refused_experiments.pop(record.name, None)
        if live is not None and live.name == record.name and record.promote:
            self.recommender = live.recommenders[record.promote]
        log.info("experiment %s stopped; serving %s", record.name, self.recommender.model_version)

    async def _load(self, settings: Settings, version: str, sha256: str) -> Recommender:
        """`version` loaded, warmed up and canary-checked, if its manifest is the announced one. Raises if not."""
        candidate = await asyncio.to_thread(
            load_recommender, settings, version, self.recommender.trending, self.recommender.activity
        )
        if candidate.runtime.version.sha256 != sha256:
            raise RegistryError(
                f"model {version}: manifest sha256 {candidate.runtime.version.sha256} differs "
                f"from the announced {sha256}"
            )
        return candidate

    async def _catch_up(self, candidates: list[Recommender]) -> None:
        """Give the candidates every live item, and only those. Ends without an await after the last check,
        so the caller can start serving them before another item arrives."""
        while True:  # items may arrive while we embed; catch up until nothing is missing
            missing = {id(c): [item for i, item in self.catalog.items() if i not in c.index] for c in candidates}
            if not any(missing.values()):
                break
            for candidate in candidates:
                if items := missing[id(candidate)]:
                    candidate.add_items(items, await asyncio.to_thread(candidate.embed_items, items))
        for candidate in candidates:
            for item_id in [i for i in candidate.index.row_of if i not in self.catalog]:
                candidate.index.remove(item_id)
