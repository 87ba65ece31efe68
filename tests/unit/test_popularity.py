"""Trending (state/popularity.py) and what feeds it (`Recommender.observe`): decayed counts, and the
bound on them — however many distinct item ids a stream carries, the counter keeps at most
`max_items` entries, only catalog items get one, and a cold-start answer walks a ranking instead of
the whole counter (the worker under such a stream: tests/reliability/test_bounded_memory.py)."""

from types import SimpleNamespace

import numpy as np
import pytest

from core.features import FeatureSpec
from state.item_index import ItemIndex
from state.popularity import TrendingCounter
from state.window import UserWindow
from stream_app.recommender import Recommender


def test_trending_prefers_recent_events_and_survives_rebase():
    counter = TrendingCounter(half_life_s=60)
    counter.add("old", 3.0, ts=0)  # three half-lives older than "new": worth 3/8
    counter.add("new", 1.0, ts=180)
    assert [i for i, _ in counter.top(2, allowed={"old", "new"}, exclude=set())] == ["new", "old"]
    counter.add("later", 1.0, ts=180 + 60 * 400)  # far beyond the rebase threshold
    top = counter.top(3, allowed={"old", "new", "later"}, exclude={"new"})
    assert top[0][0] == "later" and np.isfinite(top[0][1])


def test_trending_never_keeps_more_than_max_items_and_keeps_the_popular_ones():
    counter = TrendingCounter(half_life_s=3_600, max_items=100)
    popular = [f"hit{i}" for i in range(10)]
    sizes = []
    for n in range(20_000):
        counter.add(popular[n // 4 % 10] if n % 4 == 0 else f"once{n}", 1.0, ts=n * 0.01)
        sizes.append(len(counter))
    assert max(sizes) == 100 and min(sizes[1_000:]) == 75  # pruned to 3/4 when it would pass the bound
    everything = set(counter.scores) | set(popular)
    assert {i for i, _ in counter.top(10, allowed=everything, exclude=set())} == set(popular)


def test_top_follows_every_add_and_skips_excluded_and_unknown_items():
    counter = TrendingCounter(half_life_s=3_600, max_items=10)
    for item, weight in [("a", 3.0), ("b", 2.0), ("c", 1.0)]:
        counter.add(item, weight, ts=0)
    assert counter.top(2, allowed={"a", "b", "c"}, exclude={"a"}) == [("b", 2.0), ("c", 1.0)]
    counter.add("c", 5.0, ts=0)  # the ranking is rebuilt after a change
    assert [i for i, _ in counter.top(3, allowed={"b", "c"}, exclude=set())] == ["c", "b"]


def test_max_items_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        TrendingCounter(half_life_s=60, max_items=0)


def cold_start_recommender(n_items: int, max_trending_items: int) -> Recommender:
    """A Recommender over `n_items` catalog items; cold-start scoring needs no model, only the feature spec."""
    index = ItemIndex(dim=4)
    for i in range(n_items):
        index.upsert(f"item{i}", np.eye(4, dtype=np.float32)[i % 4])
    runtime = SimpleNamespace(feature_spec=FeatureSpec(), user_encoder=None)
    weights = {"view": 1.0, "purchase": 4.0}
    return Recommender(runtime, weights, 5, index, TrendingCounter(3_600, max_trending_items), catalog_row={})


def test_observe_counts_only_catalog_items_and_cold_users_get_the_trending_ones():
    recommender = cold_start_recommender(n_items=50, max_trending_items=20)
    for n in range(50_000):  # distinct unknown ids, and now and then a purchase of a catalog item
        item = f"item{n // 100 % 50}" if n % 100 == 0 else f"unknown{n}"
        recommender.observe(item, "purchase" if n % 500 == 0 else "view", ts=n * 0.01)
    assert 15 <= len(recommender.trending) <= 20 and all(i.startswith("item") for i in recommender.trending.scores)

    (cold,) = recommender.recommend([UserWindow(item_ids=["unknown7"], event_ids=["e"], event_types=["view"], ts=[0])])
    best = recommender.trending.top(5, allowed=recommender.index, exclude=set())
    assert [(r.item_id, r.score, r.because) for r in cold] == [(i, s, None) for i, s in best]
