"""The ranking stage's cost per micro-batch, apart from retrieval: features (NumPy) and ranker.onnx.

Issue #16 (item 4). Loads a version with a ranker (the registry's latest, or --version) as the worker does
(`stream_app.serving.load_recommender`, with the worker's thread limits), its own catalog with the data's categories, counts every event of
the data for the ranker's popularity, and scores batches of real ml-100k windows (each user's newest 50
events) through `Recommender.recommend`, timing per batch: the whole call in the retrieval order
(`stage="retrieval"`), the whole call re-ranked (`stage="full"`), and inside the latter the features
(`core.ranking_features.ranking_features`) and the ONNX run (`RankerScorer.heads`). Medians over --repeats.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/ranker_cost.py --registry PATH [--batch 1 16 64 256]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import stream_app.recommender as scoring  # noqa: E402
from core.contracts import Item, epoch_seconds  # noqa: E402
from core.datasets import read_records  # noqa: E402
from core.options import command_settings  # noqa: E402
from stream_app.batch import window_from_history  # noqa: E402
from stream_app.serving import load_recommender  # noqa: E402
from stream_app.worker import limit_threads  # noqa: E402


def timed(fn, spent: list[float]):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        spent.append(time.perf_counter() - start)
        return out

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ml-100k")
    parser.add_argument("--registry", type=Path, default=None)
    parser.add_argument("--version", default=None)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    settings = command_settings({"registry.path": args.registry})
    limit_threads(settings.worker.inference_threads)  # as the worker scores: one BLAS and FAISS thread
    recommender = load_recommender(settings, args.version)
    if recommender.runtime.ranker is None:
        raise SystemExit(f"model {recommender.model_version} has no ranker: export one (streamrec train --ranker)")
    events, items = read_records(args.data)
    categories = {str(i["item_id"]): i.get("categories") or [] for i in items}
    catalog = [Item(item_id=i, title=i, categories=categories.get(i, [])) for i in recommender.runtime.catalog_ids]
    recommender.add_items(catalog, recommender.embed_items(catalog))
    histories: dict[str, list[dict]] = defaultdict(list)
    for e in sorted(events, key=lambda e: e["ts"]):
        histories[e["user_id"]].append(e)
        if e["item_id"] in recommender.index:
            recommender.activity.add(e["item_id"], epoch_seconds(e["ts"]))
    windows = [window_from_history(h, settings) for h in histories.values()]

    features, onnx = [], []
    scoring.ranking_features = timed(scoring.ranking_features, features)
    recommender.runtime.ranker.heads = timed(recommender.runtime.ranker.heads, onnx)
    print(
        f"model {recommender.model_version}, {len(catalog)} items, N = {recommender.ranker_candidates} candidates, "
        f"k = {recommender.k}; median ms per batch over {args.repeats} batches"
    )
    print("| users per batch | retrieval order | re-ranked | ranking stage | of which features | of which ONNX |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for size in args.batch:
        runs = {"retrieval": [], "full": []}
        features.clear(), onnx.clear()
        for r in range(args.repeats):
            batch = [windows[(r * size + j) % len(windows)] for j in range(size)]
            for stage, spent in runs.items():
                timed(recommender.recommend, spent)(batch, stage=stage)
        ms = {name: 1000 * statistics.median(v) for name, v in {**runs, "features": features, "onnx": onnx}.items()}
        print(
            f"| {size} | {ms['retrieval']:.2f} | {ms['full']:.2f} | {ms['full'] - ms['retrieval']:.2f} "
            f"| {ms['features']:.2f} | {ms['onnx']:.2f} |"
        )


if __name__ == "__main__":
    main()
