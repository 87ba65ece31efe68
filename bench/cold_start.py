"""Cold-start scoring time and trending memory against the number of distinct item ids seen.

A user with no known item in the window gets trending items (`Recommender._cold_start`). A hostile
stream of distinct unknown item ids must not grow the trending state, nor the time to answer such
a user (issue #14, item 5). For each row this script builds a fresh `Recommender` from the
registry's latest version (as the worker loads it, with the worker's settings), loads the
version's own catalog into its item index (as `follow_catalog` would), and observes N events: each
a distinct unknown item id, and one in ten a catalog item, so that trending has real items to
rank. It then times `Recommender.recommend` on batches of empty windows (every user cold), each
call after one more event, as in the worker, which observes a micro-batch's events before it
scores the batch's users. Each row runs in a fresh process, so that its RSS growth is its own.
Printed per row: the trending entries kept, the RSS growth while observing, observe time per
event, and ms per cold user (median of the calls).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/cold_start.py [--ids 0 100000 1000000] [--registry PATH]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import cpu  # noqa: E402
from core.contracts import Item  # noqa: E402
from core.options import command_settings  # noqa: E402
from state.window import UserWindow  # noqa: E402
from stream_app.serving import load_recommender  # noqa: E402

CATALOG_EVERY = 10  # one observed event in ten is a catalog item
BATCH = 32  # cold users per timed recommend() call
ROUNDS = 5


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def measure(settings, n_ids: int) -> dict:
    recommender = load_recommender(settings)
    runtime = recommender.runtime
    items = [Item(item_id=i, title=i) for i in runtime.catalog_ids]
    recommender.add_items(items, runtime.catalog_vectors)
    rss_before = rss_mb()
    start = time.perf_counter()
    for n in range(n_ids):
        item_id = runtime.catalog_ids[n // CATALOG_EVERY % len(items)] if n % CATALOG_EVERY == 0 else f"unknown-{n}"
        recommender.observe(item_id, "view", 1_700_000_000.0 + n * 0.01)
    observe_s = time.perf_counter() - start
    rss_growth = rss_mb() - rss_before
    per_user_ms = []
    for r in range(ROUNDS):
        recommender.observe(runtime.catalog_ids[r], "view", 1_700_000_000.0 + n_ids * 0.01)  # as between batches
        start = time.perf_counter()
        lists = recommender.recommend([UserWindow() for _ in range(BATCH)])
        per_user_ms.append((time.perf_counter() - start) * 1000 / BATCH)
        assert all(len(ranked) == recommender.k for ranked in lists)
    return {
        "ids": n_ids,
        "trending": len(recommender.trending.scores),
        "rss_growth_mb": rss_growth,
        "observe_us": observe_s * 1e6 / n_ids if n_ids else 0.0,
        "cold_ms": statistics.median(per_user_ms),
        "catalog": len(items),
        "version": recommender.model_version,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", type=int, nargs="+", default=[0, 100_000, 1_000_000], help="distinct ids observed")
    parser.add_argument("--registry", type=Path, help="model registry (default: STREAMREC_REGISTRY__PATH)")
    args = parser.parse_args()
    settings = command_settings({"registry.path": args.registry})
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn, max_tasks_per_child=1) as pool:
        rows = [pool.submit(measure, settings, n).result() for n in args.ids]
    print(
        f"cold start, model {rows[0]['version']} ({rows[0]['catalog']} catalog items), k={settings.worker.top_k}, "
        f"{BATCH} cold users per call, median of {ROUNDS} calls; {cpu()}"
    )
    print("| distinct ids observed | trending entries | RSS growth MB | observe µs/event | ms per cold user |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['ids']:,} | {r['trending']:,} | {r['rss_growth_mb']:.0f} | {r['observe_us']:.2f} | "
            f"{r['cold_ms']:.3f} |"
        )


if __name__ == "__main__":
    main()
