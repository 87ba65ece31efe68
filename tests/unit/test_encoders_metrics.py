"""Ranking metrics against hand-computed cases."""

import math

import numpy as np
import pytest

from core.datasets import Interactions
from encoders.evaluate import evaluate_scores
from encoders.metrics import hit_rate, mrr, ndcg, ranking_metrics, target_ranks


def test_target_ranks_counts_items_scored_at_least_as_high():
    scores = np.array(
        [
            [0.1, 0.9, 0.5, 0.3],
            [0.4, 0.4, 0.4, 0.4],  # all tied: ties count against the target
            [1.0, 0.0, 0.0, 0.0],
        ]
    )
    assert target_ranks(scores, np.array([2, 0, 0])).tolist() == [1, 3, 0]


def test_metrics_by_hand():
    ranks = np.array([0, 1, 9, 10, 19, 30])
    assert hit_rate(ranks, 10) == pytest.approx(3 / 6)
    assert hit_rate(ranks, 20) == pytest.approx(5 / 6)
    assert ndcg(ranks, 10) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(11)) / 6)
    assert ndcg(ranks, 20) == pytest.approx(
        (1 + 1 / math.log2(3) + 1 / math.log2(11) + 1 / math.log2(12) + 1 / math.log2(21)) / 6
    )
    assert mrr(ranks, 10) == pytest.approx((1 + 1 / 2 + 1 / 10) / 6)
    assert set(ranking_metrics(ranks)) == {"HR@10", "NDCG@10", "MRR@10", "HR@20", "NDCG@20"}


def test_product_setting_excludes_history_and_cold_cases_are_counted():
    # 12 items; user 0 has seen items 0..3, which outscore its target 11.
    scores = np.array([np.arange(12, 0, -1, dtype=float)])  # item 0 best ... item 11 worst
    scores[0, 11] = 8.5  # target: rank 4 with history, rank 0 without it
    history = Interactions(
        [str(i) for i in range(12)], [""] * 12, ["u"], [np.arange(4)], [np.ones(4, int)], [np.zeros(4)]
    )
    warm = np.ones(12, dtype=bool)
    warm[11] = False
    ev = evaluate_scores(scores, history, np.array([11]), warm)
    assert ev.recbole["MRR@10"] == pytest.approx(1 / 5)
    assert ev.product["MRR@10"] == pytest.approx(1.0)
    assert (ev.n_cold, ev.cold_hr10) == (1, 1.0)
