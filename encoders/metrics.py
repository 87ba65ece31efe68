"""Top-k ranking metrics for one held-out target per case (leave-one-out).

The rank of the target is the number of catalog items scored at least as high as
it, other than itself (0 = first place). Ties count against the target, so a model
that scores everything equally gets zero, never a perfect score.
"""

from __future__ import annotations

import numpy as np

METRICS = ("HR@10", "NDCG@10", "MRR@10", "HR@20", "NDCG@20")


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """scores [B, N], targets [B] item indices -> [B] int64 zero-based ranks."""
    target_scores = scores[np.arange(len(targets)), targets][:, None]  # [B, 1]
    return (scores >= target_scores).sum(axis=1).astype(np.int64) - 1


def hit_rate(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(ranks < k))


def ndcg(ranks: np.ndarray, k: int) -> float:
    """One relevant item per case, so the ideal DCG is 1."""
    return float(np.mean(np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)))


def mrr(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(np.where(ranks < k, 1.0 / (ranks + 1.0), 0.0)))


def ranking_metrics(ranks: np.ndarray) -> dict[str, float]:
    """All METRICS from [B] ranks."""
    return {
        "HR@10": hit_rate(ranks, 10),
        "NDCG@10": ndcg(ranks, 10),
        "MRR@10": mrr(ranks, 10),
        "HR@20": hit_rate(ranks, 20),
        "NDCG@20": ndcg(ranks, 20),
    }
