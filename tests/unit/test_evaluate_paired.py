"""The evaluate report's paired comparison: per-case NDCG@10 differences of two models on the same cases."""

import numpy as np

from encoders.evaluate import Evaluation, paired_ndcg10, paired_table


def runs_with_ranks(*ranks: list[int]) -> list[Evaluation]:
    return [Evaluation({}, {}, None, None, len(r), 0, ranks=list(r)) for r in ranks]


def test_identical_models_differ_by_nothing():
    ranks = list(np.random.default_rng(0).integers(0, 30, size=500))
    c = paired_ndcg10(runs_with_ranks(ranks), runs_with_ranks(ranks))
    assert (c.mean_diff, c.ci_low, c.ci_high, c.t, c.p) == (0.0, 0.0, 0.0, 0.0, 1.0)


def test_a_consistent_gain_is_significant_and_averaged_over_runs():
    """Every case one rank better: the per-case gain is known, so the mean difference is exact, and the
    interval excludes zero; runs are averaged per case before pairing."""
    rng = np.random.default_rng(1)
    ranks = rng.integers(1, 9, size=400)
    gain = np.mean(1 / np.log2(ranks + 1) - 1 / np.log2(ranks + 2))
    c = paired_ndcg10(runs_with_ranks(list(ranks)), runs_with_ranks(list(ranks - 1), list(ranks - 1)))
    assert np.isclose(c.mean_diff, gain) and 0 < c.ci_low < c.mean_diff < c.ci_high and c.p < 1e-6


def test_noise_alone_is_not_significant():
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 20, size=(2, 943))
    c = paired_ndcg10(runs_with_ranks(list(a)), runs_with_ranks(list(b)))
    assert c.ci_low < 0 < c.ci_high and c.p > 0.05


def test_table_pairs_every_other_row_with_the_reference():
    rng = np.random.default_rng(3)
    rows = {name: runs_with_ranks(list(rng.integers(0, 20, size=50))) for name in ("ref", "b", "c")}
    lines = paired_table(rows, "ref")
    assert [line.split(" | ")[0] for line in lines[4:]] == ["| b", "| c"]
