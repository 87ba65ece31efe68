"""Scoring: a batch of user windows in, a batch of top-k lists out.

The one scoring path shared by the worker and `streamrec predict`. NumPy and
onnxruntime only: the user tower (or, for the zero-training baseline, a
recency- and event-weighted mean of the window's item vectors), then top-k over
the live item index (exact, or FAISS IVF from `ann_min_items` items on), minus what
each user already touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from core.contracts import Item, RecommendedItem
from core.features import item_text, left_pad, recency_buckets
from core.settings import DEFAULT_ANN_MIN_ITEMS, DEFAULT_MAX_TRENDING_ITEMS
from export.runtime import ModelRuntime
from state.item_index import ItemIndex
from state.popularity import TrendingCounter
from state.window import UserWindow

BASELINE_RECENCY_DECAY = 0.9  # each older event counts 10% less in the baseline user vector


@dataclass
class Recommender:
    runtime: ModelRuntime
    event_weights: dict[str, float]
    k: int
    index: ItemIndex
    trending: TrendingCounter
    catalog_row: dict[str, int]  # item id -> row of the model's own catalog vectors

    @classmethod
    def create(
        cls,
        runtime: ModelRuntime,
        event_weights: dict[str, float],
        k: int,
        trending_half_life_s: float,
        ann_min_items: int | None = DEFAULT_ANN_MIN_ITEMS,
        max_trending_items: int = DEFAULT_MAX_TRENDING_ITEMS,
    ):
        index = ItemIndex(int(runtime.version.config["dim"]), ann_min_items=ann_min_items)
        catalog_row = {item_id: row for row, item_id in enumerate(runtime.catalog_ids)}
        trending = TrendingCounter(trending_half_life_s, max_trending_items)
        return cls(runtime, event_weights, k, index, trending, catalog_row)

    @property
    def model_version(self) -> str:
        return self.runtime.version.name

    # -- catalog -------------------------------------------------------------------
    def embed_items(self, items: Sequence[Item]) -> np.ndarray:
        """Item vectors [N, D]: the trained vector where the model has one (it carries the
        learned ID residual), else the item tower over the item's text."""
        known = self.catalog_row
        vectors = np.zeros((len(items), self.index.dim), dtype=np.float32)
        unknown = [i for i, item in enumerate(items) if item.item_id not in known]
        for i, item in enumerate(items):
            if item.item_id in known:
                vectors[i] = self.runtime.catalog_vectors[known[item.item_id]]
        if unknown:
            texts = [item_text(items[i].title, items[i].description, items[i].categories) for i in unknown]
            vectors[unknown] = self.runtime.item_encoder.encode(texts)
        return vectors

    def add_items(self, items: Sequence[Item], vectors: np.ndarray) -> None:
        for item, vector in zip(items, vectors):
            self.index.upsert(item.item_id, vector)

    # -- users ---------------------------------------------------------------------
    def observe(self, item_id: str, event_type: str, ts: float) -> None:
        """Count the event for trending if its item is in the catalog: only those can be recommended,
        and ids nobody publishes (a hostile stream's) must neither take memory nor crowd real items out."""
        if item_id in self.index:
            self.trending.add(item_id, self.event_weights.get(event_type, 1.0), ts)

    def recommend(self, windows: Sequence[UserWindow]) -> list[list[RecommendedItem]]:
        spec = self.runtime.feature_spec
        histories = [w.item_ids[-spec.max_len :] for w in windows]
        vectors, known = zip(*(self.index.vectors_of(h) for h in histories)) if windows else ((), ())
        has_history = np.array([k.any() for k in known], dtype=bool)
        users = self._user_vectors(windows, vectors, known, has_history)  # [B, D]
        exclude = [set(w.item_ids) for w in windows]
        warm = np.flatnonzero(has_history).tolist()  # only they need the catalog scan; cold users get trending
        ranked = dict(zip(warm, self.index.top_k(users[warm], self.k, [exclude[b] for b in warm])))
        results = []
        for b in range(len(windows)):
            if has_history[b]:
                results.append(self._explain(ranked[b], histories[b], vectors[b], known[b]))
            else:
                results.append(self._cold_start(exclude[b]))
        return results

    def _cold_start(self, exclude: set[str]) -> list[RecommendedItem]:
        """Trending items, topped up from the catalog while too few items have events."""
        picks = self.trending.top(self.k, allowed=self.index.row_of.keys(), exclude=exclude)
        chosen = exclude | {i for i, _ in picks}
        for item_id in self.index.row_of:
            if len(picks) >= self.k:
                break
            if item_id not in chosen:
                picks.append((item_id, 0.0))
        return [RecommendedItem(i, s) for i, s in picks]

    def _user_vectors(self, windows, vectors, known, has_history) -> np.ndarray:
        users = np.zeros((len(windows), self.index.dim), dtype=np.float32)
        rows = np.flatnonzero(has_history)
        if not len(rows):
            return users
        if self.runtime.user_encoder is None:
            for b in rows:
                users[b] = self._weighted_mean(windows[b], vectors[b], known[b])
            return users
        spec = self.runtime.feature_spec
        # vectors/known cover each window's last max_len events; unknown items are dropped. Pad to
        # the longest window in the batch, not max_len: the tower's cost grows with T.
        T = max(int(known[b].sum()) for b in rows)
        seq = np.zeros((len(rows), T, self.index.dim), dtype=np.float32)  # [B', T, D], left-padded
        for j, b in enumerate(rows):
            v = vectors[b][known[b]]
            seq[j, T - len(v) :] = v
        types = left_pad(
            [
                np.array([spec.event_type_id(t) for t in windows[b].event_types[-spec.max_len :]])[known[b]]
                for b in rows
            ],
            T,
        )
        ts = left_pad([np.array(windows[b].ts[-spec.max_len :], dtype=np.float64)[known[b]] for b in rows], T)
        mask = types > 0
        buckets = recency_buckets(ts, mask, spec.n_time_buckets)
        users[rows] = self.runtime.user_encoder.encode(seq, types, buckets, mask)
        return users

    def _weighted_mean(self, window: UserWindow, vectors: np.ndarray, known: np.ndarray) -> np.ndarray:
        n = len(vectors)
        types = window.event_types[-n:]
        recency = BASELINE_RECENCY_DECAY ** np.arange(n - 1, -1, -1)  # newest event weighs 1
        weights = np.array([self.event_weights.get(t, 1.0) for t in types]) * recency * known
        return (weights[:, None] * vectors).sum(0) / weights.sum()

    def _explain(self, ranked, history: list[str], vectors: np.ndarray, known: np.ndarray) -> list[RecommendedItem]:
        """`because` = the history item most similar (cosine) to each recommended item."""
        if not ranked:
            return []
        hist = vectors[known]
        hist_ids = [h for h, k in zip(history, known) if k]
        recs, _ = self.index.vectors_of([i for i, _ in ranked])
        # The cosine's argmax over the history for one recommended item does not depend on that
        # item's own norm: only the history is normalised.
        best = (recs @ (hist / np.maximum(np.linalg.norm(hist, axis=1, keepdims=True), 1e-12)).T).argmax(axis=1)
        return [RecommendedItem(i, s, hist_ids[j]) for (i, s), j in zip(ranked, best.tolist())]
