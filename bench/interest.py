"""Free-text interest for new users on ml-100k: a sentence a user might write, against trending and random.

For each user, a sentence is built from the genres of their first 10 items (the three most frequent, ties in
order of appearance: "I like Drama, Comedy and Thriller movies"), and every list is scored against the items of
their next 10 (HR@10: at least one in the top 10; NDCG@10 over the 10 relevant items). Compared, for a user
with no events, nothing excluded from the list:

- interest: the served path, `Recommender.recommend` on an empty window with the sentence as the stated
  interest (item tower over the sentence, top 10 over the catalog's item vectors);
- trending: the catalog by its number of interactions, all users', up to the moment of the user's 10th item
  (the user's cut), most first: the popularity a worker would have counted by then;
- random: a uniformly random list (seed 0).

Then the handover (`worker.interest_handover_events`, k): the user states the sentence, then their next n
events arrive (items 11..10+n), and the list is scored against the 10 items after those, with the window's
items excluded as the worker does. Rows: behaviour alone (no interest), the interest alone, and the blend
for several k (behaviour weight n / (n + k)). Users with at least 30 events, so every n has its 10 targets.

Caveat: a trained model has seen every user's early events in training (leave-one-out holds out only the
last two), so its behaviour rows read training sequences; the zero-training baseline has no such advantage.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/interest.py [--registry PATH ...] [--data DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import cpu  # noqa: E402
from core.contracts import item_from_record  # noqa: E402
from core.datasets import read_records  # noqa: E402
from core.options import command_settings  # noqa: E402
from core.settings import DEFAULT_INTEREST_HANDOVER_EVENTS  # noqa: E402
from state.window import UserWindow  # noqa: E402
from stream_app.recommender import Recommender  # noqa: E402
from stream_app.serving import load_recommender  # noqa: E402

FIRST, NEXT, K = 10, 10, 10  # sentence from the first 10 items, targets the next 10, lists of 10
GENRES_IN_SENTENCE = 3
HANDOVER_EVENTS = (0, 1, 3, 5, 10)  # events after the sentence (n)
HANDOVER_K = (0.5, 1.0, 2.0, 5.0, 20.0)


def sentence(genres: list[str]) -> str:
    named = [g for g, _ in Counter(genres).most_common(GENRES_IN_SENTENCE)]  # ties: first seen first
    return f"I like {' and '.join([', '.join(named[:-1]), named[-1]] if len(named) > 1 else named)} movies"


def metrics(lists: list[list[str]], targets: list[list[str]]) -> tuple[float, float]:
    """HR@K and NDCG@K (binary relevance, ideal DCG with min(K, |targets|) relevant items) over users."""
    discount = 1.0 / np.log2(np.arange(K) + 2)
    hr, ndcg = [], []
    for ranked, relevant in zip(lists, targets):
        gains = np.array([item in relevant for item in ranked[:K]], dtype=float)
        hr.append(gains.any())
        ndcg.append(float(gains @ discount[: len(gains)]) / discount[: min(K, len(relevant))].sum())
    return float(np.mean(hr)), float(np.mean(ndcg))


def trending_at_cuts(events: list[dict], cuts: list[float], catalog: list[str]) -> list[list[str]]:
    """For each cut (epoch seconds), the catalog's top K by interactions up to and including it."""
    row = {item: r for r, item in enumerate(catalog)}
    stream = sorted((e["ts"], row[e["item_id"]]) for e in events if e["item_id"] in row)
    counts = np.zeros(len(catalog), dtype=np.int64)
    lists: list[list[str]] = [[] for _ in cuts]
    position = 0
    for u in np.argsort(cuts, kind="stable"):
        while position < len(stream) and stream[position][0] <= cuts[u]:
            counts[stream[position][1]] += 1
            position += 1
        lists[u] = [catalog[r] for r in np.argsort(-counts, kind="stable")[:K]]
    return lists


def window_of(history: list[dict]) -> UserWindow:
    return UserWindow(
        event_ids=[f"{e['item_id']}@{e['ts']}" for e in history],
        item_ids=[e["item_id"] for e in history],
        event_types=[e["event_type"] for e in history],
        ts=[e["ts"] for e in history],
    )


def ids(recommended) -> list[list[str]]:
    return [[i.item_id for i in items] for items in recommended]


def measure(settings, data: Path) -> dict:
    events, items = read_records(data)
    catalog = [item_from_record(record) for record in items]
    genres = {item.item_id: item.categories or [] for item in catalog}
    titles = {item.item_id: item.title for item in catalog}
    by_user: dict[str, list[dict]] = {}
    for e in events:
        by_user.setdefault(e["user_id"], []).append(e)
    sequences = [sorted(seq, key=lambda e: e["ts"]) for seq in by_user.values()]  # stable, as core.datasets
    users = [seq for seq in sequences if len(seq) >= FIRST + NEXT]

    recommender: Recommender = load_recommender(settings)
    recommender.add_items(catalog, recommender.embed_items(catalog))
    stated = [sentence([g for e in seq[:FIRST] for g in genres[e["item_id"]]]) for seq in users]
    targets = [[e["item_id"] for e in seq[FIRST : FIRST + NEXT]] for seq in users]

    distinct = sorted(set(stated))
    start = time.perf_counter()
    for text in distinct:
        recommender.interest_vector(text)  # the item tower, one text at a time as the worker embeds a profile
    embed_ms = (time.perf_counter() - start) * 1000 / len(distinct)
    interest = ids(recommender.recommend([UserWindow()] * len(users), stated))
    trending = trending_at_cuts(events, [seq[FIRST - 1]["ts"] for seq in users], [i.item_id for i in catalog])
    rng = np.random.default_rng(0)
    item_ids = np.array([i.item_id for i in catalog])
    random = [list(rng.choice(item_ids, K, replace=False)) for _ in users]
    in_stated_genre = np.mean(
        [sum(any(g in s for g in genres[i]) for i in ranked) / K for ranked, s in zip(interest, stated)]
    )
    cold = {name: metrics(lists, targets) for name, lists in [("interest", interest), ("trending", trending)]}
    cold["random"] = metrics(random, targets)

    long = [(seq, s) for seq, s in zip(users, stated) if len(seq) >= FIRST + max(HANDOVER_EVENTS) + NEXT]
    sentences = [s for _, s in long]
    queries = {"behaviour alone": None, "interest alone": float("inf"), **{f"blend, k = {k:g}": k for k in HANDOVER_K}}
    handover: dict[str, list[float | None]] = {name: [] for name in queries}
    for n in HANDOVER_EVENTS:
        windows = [window_of(seq[FIRST : FIRST + n]) for seq, _ in long]
        later = [[e["item_id"] for e in seq[FIRST + n : FIRST + n + NEXT]] for seq, _ in long]
        for name, k in queries.items():
            if k is None and n == 0:
                handover[name].append(None)  # no behaviour yet: the worker's trending (the first table)
                continue
            recommender.interest_handover_events = k or DEFAULT_INTEREST_HANDOVER_EVENTS
            lists = recommender.recommend(windows, None if k is None else sentences)
            handover[name].append(metrics(ids(lists), later)[1])
    return {
        "version": recommender.model_version,
        "users": len(users),
        "long_users": len(long),
        "cold": cold,
        "in_stated_genre": in_stated_genre,
        "embed_ms": embed_ms,
        "distinct": len(distinct),
        "handover": handover,
        "example": (stated[0], [titles[i] for i in interest[0][:3]]),
    }


def report(results: list[dict], command: str) -> str:
    lines = [
        "## Free-text interest",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `bench/interest.py` on {cpu()}. "
        f"Every ml-100k user with at least {FIRST + NEXT} events ({results[0]['users']}): a sentence from the genres "
        f"of their first {FIRST} items, lists of {K} scored against their next {NEXT} (see the script's docstring).",
        "",
        "| model | list for a new user | HR@10 | NDCG@10 | top 10 in a stated genre | ms to embed a sentence |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        for name, (hr, ndcg) in r["cold"].items():
            extra = f"{r['in_stated_genre']:.2f} | {r['embed_ms']:.1f}" if name == "interest" else " | "
            lines.append(f"| {r['version']} | {name} | {hr:.4f} | {ndcg:.4f} | {extra} |")
    sentence_, titles = results[0]["example"]
    lines += [
        "",
        f'{results[0]["distinct"]} distinct sentences. Example: "{sentence_}" → {", ".join(titles)}, …',
        "",
    ]
    lines += [
        f"Handover: the sentence, then the user's next n events; NDCG@10 on the 10 items after them, the window "
        f"excluded ({results[0]['long_users']} users with at least {FIRST + max(HANDOVER_EVENTS) + NEXT} events). "
        f"k = `STREAMREC_WORKER__INTEREST_HANDOVER_EVENTS` (default {DEFAULT_INTEREST_HANDOVER_EVENTS:g}); "
        "behaviour weight n / (n + k).",
        "",
        "| model | query | " + " | ".join(f"n = {n}" for n in HANDOVER_EVENTS) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in HANDOVER_EVENTS) + " |",
    ]
    for r in results:
        for name, row in r["handover"].items():
            cells = ["—" if ndcg is None else f"{ndcg:.4f}" for ndcg in row]
            lines.append(f"| {r['version']} | {name} | " + " | ".join(cells) + " |")
    lines += ["", "Reproduce:", "", "```bash", command, "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--registry", type=Path, action="append", help="model registry, repeatable (default: STREAMREC_REGISTRY__PATH)"
    )
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ml-100k")
    args = parser.parse_args()
    results = [
        measure(command_settings({"registry.path": registry}), args.data) for registry in args.registry or [None]
    ]
    print(report(results, "HF_HUB_OFFLINE=1 .venv/bin/python bench/interest.py " + " ".join(sys.argv[1:])))


if __name__ == "__main__":
    main()
