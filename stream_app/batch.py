"""`streamrec predict`: batch top-k for user histories through the worker's Recommender, under the
configured rules (the whole history counts as seen, up to `worker.seen_items_max` items, as in the worker).
With `stage="full"` and a ranking stage in the model, every input event is counted first for the
ranker's popularity, trend and age (as a worker that had read them), then the lists are re-ranked."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from core.contracts import Item, epoch_seconds, item_from_record
from core.settings import Settings
from state.window import UserWindow, WindowEvent
from stream_app.recommender import Recommender
from stream_app.serving import load_recommender

BATCH = 256


def _catalog_items(recommender: Recommender, catalog: Path | None) -> list[Item]:
    if catalog is None:  # the model's own catalog: ids only, vectors already computed
        return [Item(item_id=i, title=i) for i in recommender.runtime.catalog_ids]
    if catalog.is_dir():
        from core.datasets import read_records

        _, records = read_records(catalog)
    else:
        records = [json.loads(line) for line in catalog.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [item_from_record(r) for r in records]  # the `items` contract, as for a dataset's items.jsonl


def window_from_history(events: list[dict], settings: Settings) -> UserWindow:
    new = [
        WindowEvent(str(n), str(e["item_id"]), e.get("event_type", "view"), epoch_seconds(e["ts"]))
        for n, e in enumerate(events)
    ]
    w = settings.worker
    window = UserWindow().with_events(new, w.window_size, w.window_max_age_days * 86_400.0)
    # As the worker's window holds them: the newest `seen_items_max` items of the whole history.
    return window.with_seen(sorted(new, key=lambda e: e.ts), w.seen_items_max, w.event_weights)


def predict_file(
    settings: Settings,
    input_path: Path,
    out_path: Path,
    version: str | None,
    catalog: Path | None,
    stage: str = "full",
) -> int:
    recommender = load_recommender(settings, version)
    items = _catalog_items(recommender, catalog)
    if not items:
        raise SystemExit(f"model {recommender.model_version} has no catalog of its own: pass --catalog")
    recommender.add_items(items, recommender.embed_items(items))
    lines = [json.loads(line) for line in input_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if recommender.activity is not None and stage == "full":  # the ranker's popularity: the whole input, counted
        events = sorted((epoch_seconds(e["ts"]), str(e["item_id"])) for u in lines for e in u["events"])
        for ts, item_id in events:
            if item_id in recommender.index:
                recommender.activity.add(item_id, ts)
    with out_path.open("w", encoding="utf-8") as out:
        for start in tqdm(range(0, len(lines), BATCH), desc="predict", unit="batch"):
            chunk = lines[start : start + BATCH]
            windows = [window_from_history(u["events"], settings) for u in chunk]
            for user, recs in zip(chunk, recommender.recommend(windows, stage=stage)):
                line = {
                    "user_id": user["user_id"],
                    "items": [r.asdict() for r in recs],
                    "short": recommender.short_reason(recs),
                }
                out.write(json.dumps(line) + "\n")
    return len(lines)
