"""The ranking stage's features (core/ranking_features.py), read as of a case's time in training
(encoders/ranker_train.py: no event after the window's newest counts), its labels, and the re-ordering
of the retrieval's candidates; the ranker learns from a feature that decides the label."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from core.datasets import Interactions
from core.features import FeatureSpec
from core.ranking_features import ItemActivity, RankingFeatureSpec, ranking_features
from encoders.config import RankerConfig
from encoders.ranker_train import (
    Cases,
    RankingSet,
    activity_at,
    candidate_ranks,
    ranker_loss,
    ranking_set,
    reranked_scores,
    train_ranker,
    training_cases,
)

SPEC = RankingFeatureSpec(long_half_life_s=100.0, short_half_life_s=10.0)
DAY = 86_400.0


def column(features: np.ndarray, name: str) -> np.ndarray:
    return features[..., SPEC.names.index(name)]


def test_activity_decays_each_half_life_and_remembers_the_first_event():
    activity = ItemActivity(SPEC, n_items=2)
    activity.add(0, 1_000.0)
    activity.add(0, 1_100.0)
    activity.add(5, 1_100.0)  # beyond the catalog it was made for: it grows
    counts, first = activity.at(np.array([[0, 1, 5, 9]]), np.array([1_200.0]))
    np.testing.assert_allclose(counts[0, 0], [0.25 + 0.5, 2.0**-20 + 2.0**-10])
    np.testing.assert_allclose(counts[0, [1, 3]], 0.0)
    assert first[0, 0] == 1_000.0 and first[0, 2] == 1_100.0 and np.isnan(first[0, [1, 3]]).all()


def test_activity_rebases_without_overflow_over_a_long_log():
    activity = ItemActivity(SPEC, n_items=1)
    for day in range(400):  # 400 days = 34,560 short half-lives
        activity.add(0, day * DAY)
    counts, _ = activity.at(np.array([[0]]), np.array([399 * DAY]))
    assert np.isfinite(counts).all()
    np.testing.assert_allclose(counts[0, 0], [1 / (1 - 2.0 ** (-DAY / 100)), 1.0], rtol=1e-6)


def features_of_one_window():
    """A window of 3 events (view of item 0, click of item 1, purchase of item 2, newest last), padded to
    T = 4, and two candidates: item 1 (in the window, category A) and item 3 (new, category B)."""
    vectors = np.array([[1, 0], [0, 1], [1, 1], [-1, 0]], dtype=np.float32)
    categories = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=bool)  # A, A, B, B
    window = np.array([[0, 0, 1, 2]])  # padding first
    mask = np.array([[False, True, True, True]])
    types = np.array([[0, 1, 2, 3]])
    times = np.array([[0.0, 0.0, 60.0, 3_660.0]])  # the newest 1 h after the one before
    candidates = np.array([[1, 3]])
    counts = np.array([[[4.0, 1.0], [0.0, 0.0]]])
    first_seen = np.array([[3_660.0 - 2 * DAY, np.nan]])
    return ranking_features(
        SPEC,
        np.array([[2.0, 0.5]]),
        vectors[candidates],
        categories[candidates],
        counts,
        first_seen,
        np.array([[True, False]]),
        vectors[window],
        categories[window],
        types,
        times,
        mask,
    )


def test_features_of_a_window_and_two_candidates():
    f = features_of_one_window()
    assert f.shape == (1, 2, SPEC.n_features) and f.dtype == np.float32
    np.testing.assert_allclose(column(f, "retrieval_gap")[0], [0.0, -1.5])
    np.testing.assert_allclose(column(f, "log_rank")[0], [0.0, np.log(2)])
    np.testing.assert_allclose(column(f, "sim_type_1")[0], [0.0, -1.0], atol=1e-6)  # to the viewed item 0
    np.testing.assert_allclose(column(f, "sim_type_2")[0], [1.0, 0.0], atol=1e-6)  # to the clicked item 1
    np.testing.assert_allclose(column(f, "sim_max")[0], [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(column(f, "in_window")[0], [1.0, 0.0])
    np.testing.assert_allclose(column(f, "trend")[0], [np.log(2) - np.log(5), 0.0], rtol=1e-6)
    np.testing.assert_allclose(column(f, "log_age_days")[0], [np.log(3), 0.0], rtol=1e-6)
    np.testing.assert_allclose(column(f, "never_seen")[0], [0.0, 1.0])
    np.testing.assert_allclose(column(f, "category_overlap")[0], [2 / 3, 1 / 3], rtol=1e-6)  # padding not counted
    np.testing.assert_allclose(column(f, "log_gap_minutes")[0], np.log1p(60.0), rtol=1e-6)
    np.testing.assert_allclose(column(f, "log_window_len")[0], np.log(4), rtol=1e-6)
    np.testing.assert_allclose([column(f, f"share_type_{t}")[0, 0] for t in (1, 2, 3)], [1 / 3] * 3, rtol=1e-6)


def test_best_similarity_per_event_type_skips_padding_and_is_zero_for_a_type_the_window_lacks():
    """Two windows of T = 3: A (padding that holds the candidate itself, a view of item 0, a purchase of item 2)
    and B (views of items 0 and 1, a click of item 1: no purchase); candidates item 3 and item 1 for both."""
    vectors = np.array([[1, 0], [0, 1], [1, 1], [-1, 0]], dtype=np.float32)
    window = np.array([[3, 0, 2], [0, 1, 1]])
    mask = np.array([[False, True, True], [True, True, True]])
    types = np.array([[3, 1, 3], [1, 1, 2]])  # A's padding claims a purchase: it must not count
    candidates = np.array([[3, 1], [3, 1]])
    no_category = np.zeros((2, 3, 1), dtype=bool)
    f = ranking_features(
        SPEC, np.zeros((2, 2)), vectors[candidates], no_category[:, :2], np.zeros((2, 2, 2)), np.full((2, 2), np.nan),
        np.zeros((2, 2), dtype=bool), vectors[window], no_category, types, np.zeros((2, 3)), mask,
    )  # fmt: skip
    half = np.sqrt(0.5)
    np.testing.assert_allclose(column(f, "sim_max"), [[-half, half], [0.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(column(f, "sim_type_1"), [[-1.0, 0.0], [0.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(column(f, "sim_type_2"), [[0.0, 0.0], [0.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(column(f, "sim_type_3"), [[-half, half], [0.0, 0.0]], atol=1e-6)


def log(*users: list[tuple[int, str, float]]) -> Interactions:
    """Users' (item, event type, time) lists -> Interactions over 4 items."""
    spec = FeatureSpec()
    return Interactions(
        [f"i{i}" for i in range(4)],
        [f"item {i}" for i in range(4)],
        [f"u{u}" for u in range(len(users))],
        [np.array([e[0] for e in u], dtype=np.int64) for u in users],
        [np.array([spec.event_type_id(e[1]) for e in u], dtype=np.int64) for u in users],
        [np.array([e[2] for e in u], dtype=np.float64) for u in users],
    )


def test_training_reads_the_activity_before_the_target_even_in_the_same_second():
    data = log(
        [(1, "view", 100.0)],  # another user's event on item 1, the same second: known
        [(0, "view", 100.0), (1, "click", 100.0), (1, "view", 200.0)],  # the target (item 1) shares the second
    )
    counts, first_seen = activity_at(data, Cases(np.array([1, 1]), np.array([1, 2])), np.array([[1], [1]]), SPEC)
    np.testing.assert_allclose(counts[:, 0, 0], [1.0, 2.0])  # case 1: user 0's event only; case 2: + user 1's click
    np.testing.assert_allclose(first_seen[:, 0], [100.0, 100.0])


class IdModel:
    """Stands in for the retrieval model: fixed scores over 4 items, ID vectors."""

    feature_spec = FeatureSpec(max_len=4)

    def catalog_vectors(self):
        import torch

        return torch.eye(4)


def test_labels_click_for_a_click_or_purchase_target_purchase_only_for_a_purchase(monkeypatch):
    import encoders.ranker_train as ranker_train

    data = log(
        [(0, "view", 1.0), (1, "click", 2.0)],
        [(0, "view", 1.0), (1, "purchase", 2.0)],
        [(0, "view", 1.0), (1, "view", 2.0)],
    )
    scores = np.tile(np.array([0.0, 3.0, 2.0, 1.0], dtype=np.float32), (3, 1))
    monkeypatch.setattr(ranker_train, "model_scores", lambda model, history: scores)
    config = RankerConfig(n_candidates=3, features=SPEC)
    s = ranking_set(config, IdModel(), data, Cases(np.arange(3), np.ones(3, dtype=np.int64)), np.eye(4, dtype=bool))
    assert s.candidates.tolist() == [[1, 2, 3]] * 3  # the retrieval's best 3, best first
    assert s.click.tolist() == [[True, False, False], [True, False, False], [False, False, False]]
    assert s.purchase.tolist() == [[False, False, False], [True, False, False], [False, False, False]]
    assert s.features.shape == (3, 3, SPEC.n_features)


def test_reranking_moves_the_candidates_above_the_rest_in_the_ranker_order():
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    candidates = np.array([[0, 1, 2]])
    order = np.array([[0.1, 0.2, 0.9]])  # the ranker puts item 2 first
    full = reranked_scores(scores, candidates, order)
    assert np.argsort(-full[0]).tolist() == [2, 1, 0, 3, 4]
    assert candidate_ranks(order, candidates, np.array([2])).tolist() == [0]
    assert candidate_ranks(order, candidates, np.array([4])).tolist() == [3]  # not a candidate: N


@pytest.mark.parametrize("loss", ["pointwise", "listwise"])
@pytest.mark.parametrize("head", ["click", "purchase"])
def test_the_ranker_learns_a_feature_that_decides_the_label(head, loss):
    rng = np.random.default_rng(0)
    C, N = 300, 20
    features = rng.normal(size=(C, N, SPEC.n_features)).astype(np.float32)
    picked = features[..., SPEC.names.index("sim_recent")].argmax(1)  # the user picks the most similar
    label = np.zeros((C, N), dtype=bool)
    label[np.arange(C), picked] = True
    none = np.zeros_like(label)
    s = RankingSet(np.tile(np.arange(N), (C, 1)), features, label if head == "click" else none, label)
    weights = {"click_weight": 1.0, "purchase_weight": 0.0} if head == "click" else {"click_weight": 0.0}
    config = replace(RankerConfig(features=SPEC, epochs=15, patience=15, lr=1e-2, batch_size=16, loss=loss), **weights)
    _, metrics = train_ranker(config, s, s, picked)
    assert metrics["valid_ndcg10"] > 0.6  # random order: about 0.2


def test_listwise_loss_is_the_picked_candidates_cross_entropy_and_ignores_a_viewed_target():
    import torch
    import torch.nn.functional as F

    logits = torch.randn(3, 5, 2, generator=torch.Generator().manual_seed(0))  # [B, N, heads]
    labels = torch.zeros(3, 5, 2)
    labels[0, 3] = 1.0  # case 0: bought candidate 3 (a positive of both heads)
    labels[1, 1, 0] = 1.0  # case 1: clicked candidate 1
    # case 2: its target was only viewed (no positive): in neither head's loss
    click = F.cross_entropy(logits[:2, :, 0], torch.tensor([3, 1]))
    purchase = F.cross_entropy(logits[:1, :, 1], torch.tensor([3]))
    assert ranker_loss("listwise", logits, labels).item() == pytest.approx((click + purchase).item(), rel=1e-6)


def test_an_untrained_residual_ranker_keeps_the_retrieval_order():
    import torch

    from encoders.ranker import Ranker, blend

    rng = np.random.default_rng(0)
    features = rng.normal(size=(4, 30, SPEC.n_features)).astype(np.float32)
    features[..., SPEC.names.index("retrieval_gap")] = -rng.exponential(size=(4, 30))
    ranker = Ranker(RankerConfig(features=SPEC, residual=True))
    ranker.fit_standardisation(features)
    with torch.no_grad():
        order = blend(ranker(torch.from_numpy(features)).numpy(), 1.0, 1.0)
    gap = features[..., SPEC.names.index("retrieval_gap")]
    assert (np.argsort(-order, axis=1) == np.argsort(-gap, axis=1)).all()


def test_training_cases_are_every_training_event_after_the_first_or_the_newest_few():
    six = [(i % 4, "view", float(t)) for t, i in enumerate(range(6))]
    data = log(six, six)
    warm = np.ones(4, dtype=bool)
    every = training_cases(data, 0, warm)  # 6 events: 0..3 are training, 4 and 5 valid and test targets
    assert every.users.tolist() == [0, 0, 0, 1, 1, 1] and every.positions.tolist() == [1, 2, 3] * 2
    assert training_cases(data, 2, warm).positions.tolist() == [2, 3] * 2
