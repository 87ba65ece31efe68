"""Trending items: exponentially decayed event counts, for users with no usable history.

Each worker counts the events of its own partitions. Events are partitioned by
user, so every partition is a random sample of users and the local ranking tracks
the global one without a shuffle.

Bounded (issue #14, item 5): at most `max_items` items are kept, however many distinct
ids the stream carries, and `top` walks a ranking rebuilt once after changes, not the
whole counter per call, so a cold-start answer costs the same after a million ids.
"""

from __future__ import annotations

import math
from collections.abc import Container

import numpy as np

from core.settings import DEFAULT_MAX_TRENDING_ITEMS

_MAX_EXPONENT = 200.0  # rebase before exp() of a score's growth factor could overflow


class TrendingCounter:
    """score(item) = sum of weight * 2^((ts - now) / half_life) over the item's events.

    Scores are stored relative to a reference time, growing with later events
    instead of decaying older ones, so an update touches one entry. Past `max_items`
    items the lowest-scoring quarter is dropped (amortised O(1) per event): those are
    the items with the least, and least recent, weight; one that comes back starts
    again from its next event.
    """

    def __init__(self, half_life_s: float, max_items: int = DEFAULT_MAX_TRENDING_ITEMS):
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self.rate = math.log(2.0) / half_life_s
        self.max_items = max_items
        self.reference = None  # event time (s) the stored scores are relative to
        self.scores: dict[str, float] = {}
        self._ranking: list[str] | None = None  # item ids by descending score; None: stale

    def __len__(self) -> int:
        return len(self.scores)

    def add(self, item_id: str, weight: float, ts: float) -> None:
        if self.reference is None:
            self.reference = ts
        exponent = self.rate * (ts - self.reference)
        if exponent > _MAX_EXPONENT:
            shrink = math.exp(-exponent)
            self.scores = {k: v * shrink for k, v in self.scores.items()}
            self.reference, exponent = ts, 0.0
        self.scores[item_id] = self.scores.get(item_id, 0.0) + weight * math.exp(exponent)
        if len(self.scores) > self.max_items:
            self._keep_best(self.max_items - self.max_items // 4)
        self._ranking = None

    def top(self, k: int, allowed: Container[str], exclude: Container[str]) -> list[tuple[str, float]]:
        """The `k` best items in `allowed` and not in `exclude`, best first."""
        if self._ranking is None:  # once per batch of events, not per cold-start user
            ids = list(self.scores)
            scores = np.fromiter(self.scores.values(), dtype=np.float64, count=len(ids))
            self._ranking = [ids[i] for i in np.argsort(-scores, kind="stable")]
        picks = []
        for item_id in self._ranking:
            if len(picks) == k:
                break
            if item_id in allowed and item_id not in exclude:
                picks.append((item_id, self.scores[item_id]))
        return picks

    def _keep_best(self, n: int) -> None:
        ids = list(self.scores)
        scores = np.fromiter(self.scores.values(), dtype=np.float64, count=len(ids))
        best = np.argpartition(-scores, n - 1)[:n]
        self.scores = {ids[i]: float(scores[i]) for i in best}
