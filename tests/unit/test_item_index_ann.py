"""The approximate (IVF) path of ItemIndex against the exact one on small clustered catalogs."""

import threading
import time

import numpy as np
import pytest

from state import ann as ann_module
from state.ann import IvfConfig
from state.item_index import ItemIndex

DIM = 32
FOREGROUND = IvfConfig(nprobe=8, background=False)  # builds in the upsert that makes them due: deterministic


def clustered(n: int, seed: int = 0, clusters: int = 40) -> np.ndarray:
    """Unit vectors [n, DIM] around `clusters` random centres (a Gaussian mixture)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM))
    x = centres[rng.integers(clusters, size=n)] + 0.8 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def filled(vectors: np.ndarray, **kwargs) -> ItemIndex:
    index = ItemIndex(DIM, **kwargs)
    for i, v in enumerate(vectors):
        index.upsert(str(i), v)
    return index


def ids(ranked_lists) -> list[list[str]]:
    return [[i for i, _ in ranked] for ranked in ranked_lists]


def test_ann_top10_matches_exact_with_exclusions():
    items = clustered(20_000)
    queries = clustered(200, seed=1)
    rng = np.random.default_rng(2)
    exclude = [{str(i) for i in rng.integers(len(items), size=30)} for _ in queries]
    exact = filled(items, ann_min_items=None)
    ann = filled(
        items, ann_min_items=len(items), ann=IvfConfig(lists_per_sqrt_n=1, nprobe=32, background=False)
    )  # 141 lists
    truth = ids(exact.top_k(queries, 10, exclude))
    found = ids(ann.top_k(queries, 10, exclude))
    assert ann.uses_ann and not exact.uses_ann
    assert all(len(f) == 10 and not set(f) & skip for f, skip in zip(found, exclude))
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    assert recall >= 0.95, recall


def test_removed_items_never_returned_and_new_items_found_at_once():
    items = clustered(5_000)
    index = filled(items, ann_min_items=4_000, ann=FOREGROUND)  # stays above it after the removals
    query = items[:1]
    (before,) = ids(index.top_k(query, 10, [set()]))
    assert index.uses_ann
    for item_id in before[:5]:
        index.remove(item_id)
    index.upsert("new", 2 * query[0])  # the best match by far, reusing a freed row
    index.upsert(before[5], -query[0])  # moved to the far side: must be re-filed, not found
    (after,) = ids(index.top_k(query, 10, [set()]))
    assert index.uses_ann
    assert after[0] == "new" and not set(after) & set(before[:6]) and len(after) == 10


def test_too_few_candidates_in_probed_lists_falls_back_to_exact(monkeypatch):
    items = clustered(400)
    exact = filled(items, ann_min_items=None)
    # One build at 400 items: 100 lists of at most 14, one probed, so no query gets its 20 from the IVF.
    ann = filled(items, ann_min_items=400, ann=IvfConfig(lists_per_sqrt_n=5, nprobe=1, background=False))
    fallbacks = []
    exact_top_k = ann._exact_top_k
    monkeypatch.setattr(ann, "_exact_top_k", lambda q, *a: fallbacks.append(len(q)) or exact_top_k(q, *a))
    queries = items[:20]
    exclude = [{str(i) for i in range(q, q + 5)} for q in range(len(queries))]
    assert ids(ann.top_k(queries, 20, exclude)) == ids(exact.top_k(queries, 20, exclude))
    assert ann.uses_ann and fallbacks == [20]


def test_threshold_selects_exact_below_and_ann_from_it():
    items = clustered(1_200)
    index = filled(items[:999], ann_min_items=1_000, ann=FOREGROUND)
    index.top_k(items[:2], 10, [set(), set()])
    assert not index.uses_ann
    index.upsert("999", items[999])
    index.top_k(items[:2], 10, [set(), set()])
    assert index.uses_ann
    index.remove("0")
    index.top_k(items[:2], 10, [set(), set()])
    assert not index.uses_ann  # back below the threshold: exact, the IVF kept up to date
    never = filled(items, ann_min_items=None)
    never.top_k(items[:2], 10, [set(), set()])
    assert not never.uses_ann


def test_background_build_serves_exact_until_adopted_then_has_changes_made_meanwhile(monkeypatch):
    release = threading.Event()

    class HeldIvf(ann_module.Ivf):  # the build waits until the test has made its changes
        def __init__(self, *args):
            release.wait(timeout=10)
            super().__init__(*args)

    monkeypatch.setattr(ann_module, "Ivf", HeldIvf)
    items = clustered(2_000)
    index = filled(items[:1_000], ann_min_items=1_000, ann=IvfConfig(nprobe=8))  # the last upsert starts it
    query = items[:1]
    index.top_k(query, 10, [set()])
    assert not index.uses_ann
    index.upsert("late", 2 * query[0])  # after the build's snapshot
    index.remove("0")
    release.set()
    ranked = wait_for_ann(index, query)
    assert ranked[0] == "late" and "0" not in ranked
    for i in range(1_000, 1_999):  # 1,999 live items: short of 2x the built size
        index.upsert(str(i), items[i])
    assert index._ann.current.built_size == 1_000
    index.upsert("one more", items[1_999])  # 2,000: a rebuild starts
    deadline = time.monotonic() + 10
    while index._ann.current.built_size == 1_000:
        assert time.monotonic() < deadline, "rebuild did not finish"
        time.sleep(0.01)
        index.top_k(query, 10, [set()])  # adopts the build once finished
    assert wait_for_ann(index, query)[0] == "late"


def wait_for_ann(index: ItemIndex, query: np.ndarray) -> list[str]:
    """Search until the IVF serves (builds run in a thread); the last result's ids."""
    deadline = time.monotonic() + 10
    while True:
        (ranked,) = ids(index.top_k(query, 10, [set()]))
        if index.uses_ann:
            return ranked
        assert time.monotonic() < deadline, "background build did not finish"
        time.sleep(0.01)


@pytest.mark.parametrize("n", [1, 2, 50])
def test_tiny_catalogs_build_and_answer(n):
    items = clustered(n)
    index = filled(items, ann_min_items=1, ann=FOREGROUND)
    (ranked,) = ids(index.top_k(items[:1], 10, [set()]))
    assert index.uses_ann and len(ranked) == min(10, n) and ranked[0] == "0"
