"""The ranking stage's inputs, NumPy only: one row of features per (user, retrieved candidate).

Shared by the trainer (encoders/ranker_train.py) and whatever serves the ranker, so both feed the
model the same numbers. A list is made right after the window's newest event ("now" is that
event's time), so every feature is what was known then:

- retrieval: the candidate's retrieval score, its gap to the user's best score, log of its rank;
- text similarity (cosine of the item vectors): to the mean of the newest `recent` items, the best
  over the window, and the best over the window's items of each event type (0 where the window has none);
- whether the candidate is in the window already;
- streaming popularity: log of event counts decayed with a long and a short half-life, and the trend
  (log short-half-life count minus log long-half-life count), from `ItemActivity` as of now;
- item age in the catalog: log days since the item's first event (0 and a flag for an item never seen);
- category overlap: share of the window's events whose item shares a category with the candidate;
- the user: log minutes between the newest event and the one before, log window length, and the
  event-type mix (share of each event type in the window).

In training, `ItemActivity` replays the event log in time order and is read at each case's "now",
so popularity, trend and age never see the future.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

_MAX_EXPONENT = 200.0  # rebase the stored counts before exp() of their growth could overflow


@dataclass(frozen=True)
class RankingFeatureSpec:
    """How the features are computed; saved with the ranker, so serving computes what training did."""

    n_event_types: int = 3  # event type ids 1..n (FeatureSpec: view, click, purchase); others count as none
    recent: int = 5  # the "recent items" are the window's newest this many
    long_half_life_s: float = 7 * 86_400.0  # popularity
    short_half_life_s: float = 86_400.0  # trend = short against long

    @property
    def names(self) -> tuple[str, ...]:
        """One per feature column, in order."""
        types = [f"sim_type_{t}" for t in range(1, self.n_event_types + 1)]
        mix = [f"share_type_{t}" for t in range(1, self.n_event_types + 1)]
        return (
            *("retrieval_score", "retrieval_gap", "log_rank"),
            *("sim_recent", "sim_max", *types, "in_window"),
            *("log_popularity", "log_popularity_short", "trend", "log_age_days", "never_seen"),
            *("category_overlap", "log_gap_minutes", "log_window_len", *mix),
        )

    @property
    def n_features(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RankingFeatureSpec:
        return cls(**data)


class ItemActivity:
    """Per item index: event counts decayed with the spec's two half-lives, and the first event's time.

    Counts are stored relative to a reference time and grow with later events (as
    state/popularity.py's TrendingCounter), so an event touches one entry; `at` decays them to a time.
    """

    def __init__(self, spec: RankingFeatureSpec, n_items: int):
        self.rates = math.log(2.0) / np.array([spec.long_half_life_s, spec.short_half_life_s])  # [2]
        self.reference: float | None = None
        self.counts = np.zeros((n_items, 2))  # [I, 2], relative to `reference`
        self.first_seen = np.full(n_items, np.nan)  # [I] seconds

    def add(self, item: int, ts: float) -> None:
        if item >= len(self.first_seen):
            self._grow(item + 1)
        if self.reference is None:
            self.reference = ts
        growth = self.rates * (ts - self.reference)  # [2]
        if growth.max() > _MAX_EXPONENT:
            self.counts *= np.exp(-growth)
            self.reference, growth = ts, np.zeros(2)
        self.counts[item] += np.exp(growth)
        if np.isnan(self.first_seen[item]):
            self.first_seen[item] = ts

    def at(self, items: np.ndarray, now: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """items [B, N] item indices, now [B] seconds -> (decayed counts [B, N, 2], first seen [B, N], NaN: never)."""
        if self.reference is None:
            return np.zeros((*items.shape, 2)), np.full(items.shape, np.nan)
        known = items < len(self.first_seen)
        rows = np.where(known, items, 0)
        decay = np.exp(-self.rates * (now[:, None] - self.reference))  # [B, 2]
        counts = self.counts[rows] * decay[:, None, :] * known[..., None]
        return counts, np.where(known, self.first_seen[rows], np.nan)

    def _grow(self, n: int) -> None:
        extra = max(n, 2 * len(self.first_seen)) - len(self.first_seen)
        self.counts = np.concatenate([self.counts, np.zeros((extra, 2))])
        self.first_seen = np.concatenate([self.first_seen, np.full(extra, np.nan)])


def ranking_features(
    spec: RankingFeatureSpec,
    retrieval: np.ndarray,
    candidate_vectors: np.ndarray,
    candidate_categories: np.ndarray,
    counts: np.ndarray,
    first_seen: np.ndarray,
    in_window: np.ndarray,
    window_vectors: np.ndarray,
    window_categories: np.ndarray,
    window_types: np.ndarray,
    window_times: np.ndarray,
    window_mask: np.ndarray,
) -> np.ndarray:
    """One feature row per candidate -> [B, N, F] float32 (F = spec.n_features, in spec.names' order).

    retrieval [B, N] retrieval scores, candidates in any order; candidate_vectors [B, N, D] item vectors;
    candidate_categories [B, N, C] bool; counts [B, N, 2] and first_seen [B, N] from `ItemActivity.at`;
    in_window [B, N] bool; window_vectors [B, T, D], window_categories [B, T, C] bool,
    window_types [B, T] event type ids, window_times [B, T] seconds, window_mask [B, T] bool: the window,
    left-padded (newest event at T-1; padding rows are ignored whatever they hold).
    """
    B, N = retrieval.shape
    mask = window_mask.astype(bool)
    n_events = mask.sum(1).clip(min=1)  # [B]
    now = window_times[:, -1]  # [B] the newest event's time, when the list is made
    # [B, 1 + E, T]: the window's events, then those of each event type
    groups = np.stack([mask, *(mask & (window_types == t) for t in range(1, spec.n_event_types + 1))], axis=1)

    best = retrieval.max(1, keepdims=True)  # [B, 1]
    rank = np.argsort(np.argsort(-retrieval, axis=1, kind="stable"), axis=1)  # [B, N] 0 = best

    win = _unit(window_vectors) * mask[..., None]  # [B, T, D]
    recent = mask.copy()
    recent[:, : -spec.recent] = False
    recent_mean = _unit((win * recent[..., None]).sum(1))  # [B, D]
    # Cosines of the window's items and of their recent mean to the raw candidate vectors in one batched
    # product, divided by the candidates' norms after (cheaper than normalising [B, N, D]); laid out
    # [B, T + 1, N] so that the best over a group of events reduces over rows of N, not along short rows of T.
    targets = np.concatenate([win, recent_mean[:, None, :]], axis=1)  # [B, T + 1, D]
    norms = np.sqrt(np.einsum("bnd,bnd->bn", candidate_vectors, candidate_vectors)).clip(min=1e-12)  # [B, N]
    cosines = (targets @ candidate_vectors.transpose(0, 2, 1)) / norms[:, None, :]  # [B, T + 1, N]
    outside = np.where(groups, 0.0, -np.inf).astype(np.float32)  # [B, 1 + E, T]: -inf off the group
    sim_best = (cosines[:, None, :-1, :] + outside[..., None]).max(2)  # [B, 1 + E, N]
    sim_best = np.where(np.isfinite(sim_best), sim_best, 0.0)  # 0 where the window has no such event

    log_counts = np.log1p(counts)  # [B, N, 2]
    age_days = (now[:, None] - first_seen) / 86_400.0  # [B, N], NaN: never seen
    never = np.isnan(first_seen)

    categories = candidate_categories.astype(np.float32), window_categories.astype(np.float32)
    shares_category = categories[0] @ categories[1].transpose(0, 2, 1) > 0  # [B, N, T]
    overlap = (shares_category & mask[:, None, :]).sum(2) / n_events[:, None]  # [B, N]

    previous = np.where(mask[:, -2], window_times[:, -2], now) if mask.shape[1] > 1 else now  # [B]
    gap_minutes = np.log1p(np.clip(now - previous, 0.0, None) / 60.0)  # [B]
    mix = groups[:, 1:].sum(2) / n_events[:, None]  # [B, E] share of each event type

    per_user = np.concatenate([gap_minutes[:, None], np.log1p(mask.sum(1))[:, None], mix], axis=1)  # [B, 2 + E]
    columns = [
        retrieval,
        retrieval - best,
        np.log1p(rank),
        cosines[:, -1],  # to the recent mean
        *sim_best.transpose(1, 0, 2),  # best over the window, then over each event type's items
        in_window,
        log_counts[..., 0],
        log_counts[..., 1],
        log_counts[..., 1] - log_counts[..., 0],
        np.log1p(np.nan_to_num(age_days, nan=0.0).clip(min=0.0)),
        never,
        overlap,
    ]
    features = np.concatenate(
        [np.stack(columns, axis=2), np.broadcast_to(per_user[:, None, :], (B, N, per_user.shape[1]))], axis=2
    )
    return features.astype(np.float32)


def blend(heads: np.ndarray, click_weight: float, purchase_weight: float) -> np.ndarray:
    """[..., 2] (P(click), P(purchase)) -> [...] the score a list is ordered by."""
    return click_weight * heads[..., 0] + purchase_weight * heads[..., 1]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
