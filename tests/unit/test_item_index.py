import numpy as np

from state.item_index import ItemIndex
from state.popularity import TrendingCounter


def unit(*xs):
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_top_k_orders_by_dot_product_and_skips_excluded_and_removed():
    index = ItemIndex(dim=2, capacity=2)  # forces a grow
    index.upsert("a", unit(1, 0))
    index.upsert("b", unit(1, 1))
    index.upsert("c", unit(0, 1))
    index.upsert("d", unit(-1, 0))
    index.remove("d")
    (ranked,) = index.top_k(unit(1, 0.1)[None], k=3, exclude=[set()])
    assert [i for i, _ in ranked] == ["a", "b", "c"]
    (ranked,) = index.top_k(unit(1, 0.1)[None], k=3, exclude=[{"a"}])
    assert [i for i, _ in ranked] == ["b", "c"]


def test_removed_row_is_reused_and_vectors_of_marks_unknown():
    index = ItemIndex(dim=2, capacity=2)
    index.upsert("a", unit(1, 0))
    index.remove("a")
    index.upsert("b", unit(0, 1))
    assert len(index) == 1 and len(index.live) == 2
    vectors, known = index.vectors_of(["b", "zzz"])
    assert known.tolist() == [True, False]
    assert np.allclose(vectors[0], unit(0, 1)) and not vectors[1].any()


def test_trending_prefers_recent_events_and_survives_rebase():
    counter = TrendingCounter(half_life_s=60)
    counter.add("old", 3.0, ts=0)  # three half-lives older than "new": worth 3/8
    counter.add("new", 1.0, ts=180)
    assert [i for i, _ in counter.top(2, allowed={"old", "new"}, exclude=set())] == ["new", "old"]
    counter.add("later", 1.0, ts=180 + 60 * 400)  # far beyond the rebase threshold
    top = counter.top(3, allowed={"old", "new", "later"}, exclude={"new"})
    assert top[0][0] == "later" and np.isfinite(top[0][1])
