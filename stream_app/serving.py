"""The model a worker serves, the live catalog, and swapping to a new model version.

A swap is prepared off to the side — verify the version, warm it up, check its canary
batch, embed the whole live catalog with its item tower — and then made by replacing
one reference between micro-batches: no event is skipped or scored twice because of it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from core.contracts import Item
from core.errors import RegistryError
from core.settings import Settings
from export.registry import Registry
from export.runtime import check_canary, load_runtime
from state.popularity import TrendingCounter
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

    recommender: Recommender
    catalog: dict[str, Item] = field(default_factory=dict)  # every live item, as last published
    refused: dict[str, str] = field(default_factory=dict)  # announced versions we would not serve, and why

    async def upsert_items(self, items: list[Item]) -> None:
        recommender = self.recommender
        vectors = await asyncio.to_thread(recommender.embed_items, items)  # onnxruntime releases the GIL
        for item in items:
            self.catalog[item.item_id] = item
        recommender.add_items(items, vectors)

    def remove_item(self, item_id: str) -> None:
        self.catalog.pop(item_id, None)
        self.recommender.index.remove(item_id)

    async def swap_to(self, settings: Settings, version: str, sha256: str) -> None:
        """Serve `version` once it is loaded and has embedded the live catalog."""
        candidate = await asyncio.to_thread(
            load_recommender, settings, version, self.recommender.trending, self.recommender.activity
        )
        if candidate.runtime.version.sha256 != sha256:
            raise RegistryError(
                f"model {version}: manifest sha256 {candidate.runtime.version.sha256} differs "
                f"from the announced {sha256}"
            )
        while True:  # items may arrive while we embed; catch up until nothing is missing
            missing = [item for item_id, item in self.catalog.items() if item_id not in candidate.index]
            if not missing:
                break
            candidate.add_items(missing, await asyncio.to_thread(candidate.embed_items, missing))
        for item_id in [i for i in candidate.index.row_of if i not in self.catalog]:
            candidate.index.remove(item_id)
        previous, self.recommender = self.recommender.model_version, candidate  # no await since the last check
        log.info("swapped model %s -> %s (%d items)", previous, version, len(candidate.index))
