"""Trending items: exponentially decayed event counts, for users with no usable history.

Each worker counts the events of its own partitions. Events are partitioned by
user, so every partition is a random sample of users and the local ranking tracks
the global one without a shuffle.
"""

from __future__ import annotations

import math

import numpy as np

_MAX_EXPONENT = 200.0  # rebase before exp() of a score's growth factor could overflow


class TrendingCounter:
    """score(item) = sum of weight * 2^((ts - now) / half_life) over the item's events.

    Scores are stored relative to a reference time, growing with later events
    instead of decaying older ones, so an update touches one entry.
    """

    def __init__(self, half_life_s: float):
        self.rate = math.log(2.0) / half_life_s
        self.reference = None  # event time (s) the stored scores are relative to
        self.scores: dict[str, float] = {}

    def add(self, item_id: str, weight: float, ts: float) -> None:
        if self.reference is None:
            self.reference = ts
        exponent = self.rate * (ts - self.reference)
        if exponent > _MAX_EXPONENT:
            shrink = math.exp(-exponent)
            self.scores = {k: v * shrink for k, v in self.scores.items()}
            self.reference, exponent = ts, 0.0
        self.scores[item_id] = self.scores.get(item_id, 0.0) + weight * math.exp(exponent)

    def top(self, k: int, allowed: set[str], exclude: set[str]) -> list[tuple[str, float]]:
        candidates = [(i, s) for i, s in self.scores.items() if i in allowed and i not in exclude]
        if len(candidates) > k:
            scores = np.fromiter((s for _, s in candidates), dtype=np.float64, count=len(candidates))
            keep = np.argpartition(-scores, k)[:k]
            candidates = [candidates[i] for i in keep]
        return sorted(candidates, key=lambda c: -c[1])
