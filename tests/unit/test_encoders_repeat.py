"""The repeat term (beta per event type for items already in the window) and the cold-item split."""

import math

import numpy as np
import pytest
import torch

from core.datasets import Interactions, Split
from core.features import FeatureSpec
from encoders.evaluate import evaluate_model, evaluate_scores, warm_items, withhold_items
from encoders.recommender import Recommender, RecommenderConfig
from encoders.train import TrainConfig, next_item_loss
from encoders.user_tower import UserTowerConfig

SPEC = FeatureSpec(max_len=4)
N = 6  # catalog size


def id_model(beta: list[float] | None = None) -> Recommender:
    """A small ID-only model (no language model to load); beta per event id if given."""
    torch.manual_seed(0)
    config = RecommenderConfig(
        use_text=False,
        n_items=N,
        user_tower=UserTowerConfig(
            dim=8, n_layers=1, max_len=SPEC.max_len, n_event_ids=SPEC.n_event_ids, n_time_buckets=SPEC.n_time_buckets
        ),
    )
    model = Recommender(config, SPEC)
    model.warm[:] = True
    if beta is not None:
        with torch.no_grad():
            model.repeat.copy_(torch.tensor(beta))
    return model


BETA = [0.0, -1.0, -2.0, -3.0, -4.0]  # one value per event id (0 = padding, never used)
ITEMS = torch.tensor(
    [
        [0, 0, 3, 5],  # two padding slots (item index 0 there is not a real event)
        [2, 4, 2, 1],
    ]
)  # item 2 twice: first with event 1, then with event 3
EVENTS = torch.tensor([[0, 0, 2, 1], [1, 2, 3, 1]])
MASK = torch.tensor([[False, False, True, True], [True, True, True, True]])


def test_repeat_scores_by_hand():
    r = id_model(BETA).repeat_scores(ITEMS, EVENTS, MASK)
    assert r.shape == (2, 4, N)
    assert torch.all(r[0, :2] == 0)  # nothing seen yet; padding never counts (item 0 stays 0 throughout)
    assert r[0, 3].tolist() == [0, 0, 0, -2, 0, -1]
    assert r[1, 0].tolist() == [0, 0, -1, 0, 0, 0]
    assert r[1, 2].tolist() == [0, 0, -3, 0, -2, 0]  # the latest event on item 2 decides
    assert r[1, 3].tolist() == [0, -1, -3, 0, -2, 0]


def test_last_repeat_scores_are_the_newest_position():
    g = torch.Generator().manual_seed(2)
    items, events = torch.randint(0, N, (6, 4), generator=g), torch.randint(1, 5, (6, 4), generator=g)
    mask = torch.ones(6, 4, dtype=torch.bool)
    mask[0, :2] = False
    model = id_model(BETA)
    assert model.last_repeat_scores(ITEMS, EVENTS, MASK).tolist() == [[0, 0, 0, -2, 0, -1], [0, -1, -3, 0, -2, 0]]
    torch.testing.assert_close(
        model.last_repeat_scores(items, events, mask), model.repeat_scores(items, events, mask)[:, -1], rtol=0, atol=0
    )


def test_repeat_window_is_the_causal_prefix():
    g = torch.Generator().manual_seed(1)
    items, events = torch.randint(0, N, (5, 4), generator=g), torch.randint(1, 5, (5, 4), generator=g)
    mask = torch.ones(5, 4, dtype=torch.bool)
    mask[0, :3] = False
    r = id_model([-1.0] * 5).repeat_scores(items, events, mask)
    for b in range(5):
        for t in range(4):
            seen = {int(i) for i, m in zip(items[b, : t + 1], mask[b, : t + 1]) if m}
            assert set(torch.nonzero(r[b, t]).flatten().tolist()) == seen  # never an item after t


def test_beta_is_pushed_down_when_nothing_repeats():
    model = id_model()
    items = torch.tensor([[1, 2, 3, 4], [5, 4, 3, 2]])  # no item twice in a window
    events = torch.tensor([[1, 2, 3, 1], [2, 3, 1, 2]])
    targets = torch.tensor([[2, 3, 4, 5], [4, 3, 2, 1]])  # always a new item
    mask = torch.ones(2, 4, dtype=torch.bool)
    states = model.user_states(model.item_vectors(), items, events, torch.ones_like(items), mask)
    loss = next_item_loss(
        states,
        model.item_vectors(),
        model.repeat_scores(items, events, mask),
        targets,
        model.warm,
        TrainConfig(),
        torch.zeros(N),
    )
    loss.backward()
    assert torch.all(model.repeat.grad[1:4] > 0)  # gradient descent lowers beta for every event type seen
    assert model.repeat.grad[0] == 0 and model.repeat.grad[4] == 0  # padding / unused ids get nothing


def test_items_never_trained_on_are_not_negatives():
    states, catalog = torch.randn(1, 2, 8), torch.randn(N, 8)
    targets = torch.tensor([[2, 3]])
    candidates = torch.tensor([False, True, True, True, True, False])
    loss = next_item_loss(states, catalog, torch.zeros(1, 2, N), targets, candidates, TrainConfig(), torch.zeros(N))
    logits = states[0] @ catalog[1:5].T  # [2, 4] candidates only
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, targets[0] - 1))


def history_split(items: list[list[int]], targets: list[int]) -> Split:
    """One test case per user: history `items[u]` (event type 1, 1 s apart) and target `targets[u]`."""

    def interactions(seqs):
        return Interactions(
            [f"i{i}" for i in range(N)],
            [f"item {i}" for i in range(N)],
            [f"u{u}" for u in range(len(seqs))],
            [np.array(s) for s in seqs],
            [np.ones(len(s), dtype=np.int64) for s in seqs],
            [np.arange(len(s), dtype=np.float64) for s in seqs],
        )

    h = interactions(items)
    return Split(h, h, np.array(targets), h, np.array(targets))


def test_model_scores_carry_the_repeat_term():
    """With beta very negative, nothing hidden ranks like history excluded (when the history fits the window)."""
    split = history_split([[1, 2, 3], [4, 0]], [5, 3])
    ev = evaluate_model(id_model([-1e4] * 5), split, "test")
    assert ev.recbole == ev.product
    plain = evaluate_model(id_model([0.0] * 5), split, "test")
    assert plain.product == ev.product


def test_withhold_items_and_cold_metrics_by_hand():
    """20 items, every user's training has them all; 10% = 2 items lose all their training events."""
    n, train_seq = 20, list(range(20))
    seqs = [np.array(train_seq), np.array(train_seq[::-1])]
    train = Interactions(
        [f"i{i}" for i in range(n)],
        [f"item {i}" for i in range(n)],
        ["u0", "u1"],
        seqs,
        [np.ones(n, dtype=np.int64)] * 2,
        [np.arange(n, dtype=np.float64)] * 2,
    )
    split = Split(train, train, np.array([0, 1]), train, np.array([0, 1]))
    cold_split = withhold_items(split, 0.1)
    held_out = np.flatnonzero(~warm_items(cold_split.train))
    assert (
        len(held_out) == 2 and withhold_items(split, 0.1).train.items[0].tolist() == cold_split.train.items[0].tolist()
    )
    for before, after in zip(seqs, cold_split.train.items):
        assert after.tolist() == [i for i in before if i not in held_out]  # order kept, held-out events gone
    assert cold_split.test_history is split.test_history  # cases unchanged

    warm_target = next(i for i in range(n) if i not in held_out)
    targets = np.array([held_out[0], warm_target])
    scores = np.zeros((2, n))
    scores[0, held_out[0]], scores[0, warm_target], scores[0, held_out[1]] = 1.0, 2.0, 3.0  # cold target ranked 3rd
    scores[1, warm_target] = 1.0
    ev = evaluate_scores(scores, cold_split.test_history, targets, warm_items(cold_split.train))
    assert ev.n_cold == 1 and ev.cold_hr10 == 1.0
    assert ev.cold_ndcg10 == pytest.approx(1 / math.log2(4))
