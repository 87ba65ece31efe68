"""`because`: each recommended item names the history item most similar (cosine) to it, for every list of a
batch at once, whatever the windows' lengths and however many of their items the index lacks."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from core.features import FeatureSpec
from state.item_index import ItemIndex
from state.popularity import TrendingCounter
from state.window import UserWindow, WindowEvent
from stream_app.recommender import Recommender

WEIGHTS = {"view": 1.0, "click": 2.0, "purchase": 4.0}


def test_because_is_the_most_similar_known_history_item_for_every_list_of_a_batch():
    rng = np.random.default_rng(0)
    index = ItemIndex(dim=8)
    vectors = {f"i{n}": rng.normal(size=8).astype(np.float32) for n in range(60)}
    for item, vector in vectors.items():
        index.upsert(item, vector)
    runtime = SimpleNamespace(feature_spec=FeatureSpec(), user_encoder=None)  # the baseline's user vector
    model = Recommender(runtime, WEIGHTS, 5, index, TrendingCounter(3_600), catalog_row={})
    histories = [
        [*rng.choice(list(vectors), size=n).tolist(), "not-in-the-index"] for n in (1, 3, 12, 40, 7)
    ]  # lengths differ, so the batch pads; an item the index lacks ends each window
    windows = [
        UserWindow().with_events([WindowEvent(f"e{t}", i, "view", 1e9 + t) for t, i in enumerate(h)], 50, 1e12)
        for h in histories
    ]
    for history, items in zip(histories, model.recommend(windows)):
        known = [i for i in history if i in vectors]
        unit = np.stack([vectors[i] / np.linalg.norm(vectors[i]) for i in known])
        assert len(items) == 5
        for item in items:
            assert item.because == known[int(np.argmax(unit @ vectors[item.item_id]))]


def test_because_names_a_known_item_even_when_every_known_one_points_away():
    # The window's one known item points away from every candidate: its cosines are all negative, while an item
    # the index lacks (and the batch's padding) would score 0 if they were not left out.
    index = ItemIndex(dim=2)
    index.upsert("seen", np.array([1.0, 0.0], dtype=np.float32))
    for n in range(6):
        index.upsert(f"away{n}", np.array([-1.0, 0.1 * n], dtype=np.float32))
    runtime = SimpleNamespace(feature_spec=FeatureSpec(), user_encoder=None)
    model = Recommender(runtime, WEIGHTS, 3, index, TrendingCounter(3_600), catalog_row={})
    short = UserWindow().with_events(
        [WindowEvent("e0", "missing", "view", 1e9), WindowEvent("e1", "seen", "view", 1e9 + 1)], 50, 1e12
    )
    longer = UserWindow().with_events([WindowEvent(f"f{t}", "seen", "view", 1e9 + t) for t in range(4)], 50, 1e12)
    for items in model.recommend([short, longer]):
        assert [i.because for i in items] == ["seen"] * 3
