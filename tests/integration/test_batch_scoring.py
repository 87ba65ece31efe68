"""A micro-batch scores each user as if alone: the batch is padded to its longest window (not
max_len) and the user tower computes only the newest position, so neither may change a list."""

import numpy as np

from core.contracts import Item
from core.settings import Settings
from export.registry import Registry
from state.window import UserWindow, WindowEvent
from stream_app.serving import load_recommender


def window(item_ids: list[str], start: float) -> UserWindow:
    events = [
        WindowEvent(f"e{start}-{k}", i, ("view", "click", "purchase")[k % 3], start + 60.0 * k)
        for k, i in enumerate(item_ids)
    ]
    return UserWindow().with_events(events, 50, 1e9)


def test_a_batch_scores_each_window_as_if_alone(two_tower_registry):
    version = Registry(two_tower_registry).versions()[-1]
    recommender = load_recommender(Settings(registry={"path": two_tower_registry}), version)
    max_len = recommender.runtime.feature_spec.max_len
    items = [Item(item_id=str(i), title=f"Movie {i} (1995)", categories=["Drama"]) for i in range(1, 60)]
    recommender.add_items(items, recommender.embed_items(items))
    rng = np.random.default_rng(0)
    histories = [
        ["3"],
        [str(i) for i in rng.integers(1, 60, size=4)],
        [str(i) for i in rng.integers(1, 60, size=max_len + 9)],  # longer than the model's window
        ["unknown-a", *(str(i) for i in rng.integers(1, 60, size=max_len - 2)), "unknown-b"],  # items not in the index
        [],  # no history: trending, no tower
    ]
    windows = [window(h, 1_000.0 * n) for n, h in enumerate(histories)]

    together = recommender.recommend(windows)
    for w, batched in zip(windows, together):
        (alone,) = recommender.recommend([w])
        assert [i.item_id for i in batched] == [i.item_id for i in alone]
        np.testing.assert_allclose([i.score for i in batched], [i.score for i in alone], rtol=1e-5, atol=1e-5)
    assert all(len(lists) == recommender.k for lists in together)
