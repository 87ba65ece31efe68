"""The live candidate set: item vectors in one contiguous matrix; top-k by exact BLAS for
catalogs below `ann_min_items`, by a FAISS IVF index (state/ann.py) from there on.

Rows are appended as items arrive and reused after removals, so exact scoring of a batch
of users is a single [B, D] x [D, N] matrix product over the whole catalog. Its cost grows
with N (tens of ms per user at 1M items, docs/benchmarks.md); the IVF scans a few lists.

Memory per item: its vector, with up to as much again of growth room (capacity doubles), a
copy in the IVF (two more, briefly, while the IVF rebuilds), and its id. The number of items
is bounded where they come in (`STREAMREC_WORKER__MAX_CATALOG_ITEMS`, stream_app/tasks/catalog.py);
the index holds vectors and each item's categories (for the category rules, stream_app/rules.py); the
item records are ServingState's.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from core.settings import DEFAULT_ANN_MIN_ITEMS
from state.ann import Ivf, IvfConfig, LiveAnn


class ItemIndex:
    def __init__(
        self,
        dim: int,
        capacity: int = 1024,
        ann_min_items: int | None = DEFAULT_ANN_MIN_ITEMS,
        ann: IvfConfig = IvfConfig(),
    ):
        """`ann_min_items`: catalog size from which top-k is approximate (None: always exact)."""
        self.dim = dim
        self.vectors = np.zeros((capacity, dim), dtype=np.float32)  # [capacity, D]
        self.live = np.zeros(capacity, dtype=bool)  # rows that are candidates
        self.row_bias = np.full(capacity, -np.inf, dtype=np.float32)  # added to every score: 0 live, -inf not
        self.row_of: dict[str, int] = {}
        self.ids: list[str | None] = [None] * capacity
        self.categories: list[tuple[str, ...]] = [()] * capacity  # of each row's item
        # The same as ids, for array work (`category_matrix`): [capacity, P], -1 past a row's last category;
        # P, the most categories of one item so far, grows as items need it.
        self.category_ids = np.full((capacity, 1), -1, dtype=np.int32)
        self.category_id: dict[str, int] = {}  # category -> its id, in the order first seen
        self.rows_in: dict[str, set[int]] = {}  # category -> rows of live items in it
        self._free: list[int] = list(range(capacity - 1, -1, -1))
        self._ann = LiveAnn(ann_min_items, ann) if ann_min_items is not None else None
        self._last_search_ann = False

    def __len__(self) -> int:
        return len(self.row_of)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.row_of

    def upsert(self, item_id: str, vector: np.ndarray, categories: Sequence[str] = ()) -> None:
        row = self.row_of.get(item_id)
        if row is None:
            if not self._free:
                self._grow()
            row = self._free.pop()
            self.row_of[item_id] = row
            self.ids[row] = item_id
        self._set_categories(row, tuple(dict.fromkeys(categories)))
        self.vectors[row] = vector
        self.live[row] = True
        self.row_bias[row] = 0.0
        if self._ann is not None:
            self._ann.touch(row, self.vectors, self.live, len(self))

    def remove(self, item_id: str) -> None:
        row = self.row_of.pop(item_id, None)
        if row is None:
            return
        self.live[row] = False
        self.row_bias[row] = -np.inf
        self.vectors[row] = 0.0
        self.ids[row] = None
        self._set_categories(row, ())
        self._free.append(row)
        if self._ann is not None:
            self._ann.touch(row, self.vectors, self.live, len(self))

    def vectors_of(self, item_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors [T, D] for `item_ids` and a mask [T] of those in the index (others are zeros)."""
        rows = np.array([self.row_of.get(i, -1) for i in item_ids], dtype=np.int64)
        known = rows >= 0
        vectors = np.zeros((len(item_ids), self.dim), dtype=np.float32)
        vectors[known] = self.vectors[rows[known]]
        return vectors, known

    def _set_categories(self, row: int, categories: tuple[str, ...]) -> None:
        for name in self.categories[row]:
            self.rows_in[name].discard(row)
            if not self.rows_in[name]:
                del self.rows_in[name]  # only live items' categories are known
        for name in categories:
            self.rows_in.setdefault(name, set()).add(row)
        self.categories[row] = categories
        ids = [self.category_id.setdefault(name, len(self.category_id)) for name in categories]
        if len(ids) > self.category_ids.shape[1]:
            wider = np.full((len(self.category_ids), len(ids) - self.category_ids.shape[1]), -1, dtype=np.int32)
            self.category_ids = np.concatenate([self.category_ids, wider], axis=1)
        self.category_ids[row] = -1
        self.category_ids[row, : len(ids)] = ids

    def categories_of(self, item_id: str) -> tuple[str, ...]:
        return self.categories[self.row_of[item_id]]

    def category_matrix(self, rows: np.ndarray) -> np.ndarray:
        """Index rows [M] (-1: none) -> [M, C] bool, whether each row's item is in each category (C: the
        categories of these rows, in any order; at least one column)."""
        ids = np.where(rows[:, None] >= 0, self.category_ids[rows], -1)  # [M, P]
        present = np.zeros(len(self.category_id) + 1, dtype=bool)  # [1 + categories], slot 0: none
        present[ids.ravel() + 1] = True
        present[0] = False
        column = np.cumsum(present) - 1  # [1 + categories] -> the matrix's column of each present one
        matrix = np.zeros((len(rows), max(int(present.sum()), 1)), dtype=bool)
        named = ids >= 0
        matrix[np.nonzero(named)[0], column[ids[named] + 1]] = True
        return matrix

    def category_mask(self, include: Collection[str], exclude: Collection[str]) -> np.ndarray | None:
        """Rows [capacity] of items in one of `include` (any item if empty) and in none of `exclude`;
        None when both are empty (no filter)."""
        if not include and not exclude:
            return None
        mask = np.zeros(len(self.live), dtype=bool) if include else self.live.copy()
        for name, value in [(n, True) for n in include] + [(n, False) for n in exclude]:
            mask[list(self.rows_in.get(name, ()))] = value
        return mask

    @property
    def uses_ann(self) -> bool:
        """Whether the last `top_k` searched the IVF (False: exact)."""
        return self._last_search_ann

    def top_k(
        self, queries: np.ndarray, k: int, exclude: list[set[str]], allowed: np.ndarray | None = None
    ) -> list[list[tuple[str, float]]]:
        """Best `k` live items per query [B, D] by dot product, skipping each query's `exclude` ids and,
        given a row mask `allowed` (`category_mask`), the rows outside it. Approximate once the catalog has
        `ann_min_items` items and the IVF is built, else exact; always exact with a mask (a filter
        masks the scores, it does not over-fetch from the IVF and hope enough pass)."""
        rows, scores = self.top_k_rows(queries, k, exclude, allowed)
        return [
            [(self.ids[r], s) for r, s in zip(row, row_scores) if r >= 0]
            for row, row_scores in zip(rows.tolist(), scores.tolist())
        ]

    def top_k_rows(
        self, queries: np.ndarray, k: int, exclude: list[set[str]], allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`top_k` as arrays, for callers that go on in NumPy: rows [B, k'] of the index (k' <= k) and their
        scores [B, k'] float32, best first; where a query has fewer than k' items, row -1 and score -inf."""
        self._last_search_ann = False
        if not len(self) or not len(queries):
            return np.zeros((len(queries), 0), dtype=np.int64), np.zeros((len(queries), 0), dtype=np.float32)
        excluded = [[row for row in map(self.row_of.get, ids) if row is not None] for ids in exclude]
        ann = self._ann.ready(self.vectors, self.live, len(self)) if self._ann is not None else None
        if ann is None or allowed is not None:
            return self._exact_top_k(queries, k, excluded, allowed)
        self._last_search_ann = True
        return self._ann_top_k(ann, queries, k, excluded)

    def _ann_top_k(self, ann: Ivf, queries: np.ndarray, k: int, excluded: list[list[int]]):
        # Over-fetch by the longest exclusion list in the batch so that k survive the filter
        # unless the probed lists hold too few items; such queries are answered exactly.
        scores, rows = ann.search(queries, k + max(map(len, excluded)))  # [B, k'] each
        top, best = np.full((len(queries), k), -1, dtype=np.int64), np.full((len(queries), k), -np.inf, np.float32)
        short = []
        for b, skip in enumerate(map(set, excluded)):
            kept = [(r, s) for r, s in zip(rows[b].tolist(), scores[b].tolist()) if r >= 0 and r not in skip][:k]
            if kept:
                top[b, : len(kept)], best[b, : len(kept)] = zip(*kept)
            if len(kept) < min(k, len(self) - len(skip)):
                short.append(b)
        if short:
            exact_top, exact_best = self._exact_top_k(queries[short], k, [excluded[b] for b in short])
            top[short], best[short] = -1, -np.inf
            top[short, : exact_top.shape[1]], best[short, : exact_top.shape[1]] = exact_top, exact_best
        return top, best

    def _exact_top_k(self, queries: np.ndarray, k: int, excluded: list[list[int]], allowed=None):
        scores = queries.astype(np.float32) @ self.vectors.T  # [B, capacity]
        scores += self.row_bias  # rows without a live item: -inf
        if allowed is not None:
            scores[:, ~allowed] = -np.inf
        for b, rows in enumerate(excluded):
            scores[b, rows] = -np.inf
        k_eff = min(k, scores.shape[1])
        batch = np.arange(len(scores))[:, None]  # [B, 1]
        top = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]  # [B, k] unordered
        top = top[batch, np.argsort(-scores[batch, top], axis=1)]  # [B, k] best first
        best = scores[batch, top]
        return np.where(np.isfinite(best), top, -1), best  # fewer than k live, non-excluded items: -1, -inf

    def _grow(self) -> None:
        old = len(self.live)
        self.vectors = np.concatenate([self.vectors, np.zeros_like(self.vectors)])
        self.live = np.concatenate([self.live, np.zeros(old, dtype=bool)])
        self.row_bias = np.concatenate([self.row_bias, np.full(old, -np.inf, dtype=np.float32)])
        self.ids.extend([None] * old)
        self.categories.extend([()] * old)
        self.category_ids = np.concatenate([self.category_ids, np.full_like(self.category_ids, -1)])
        self._free.extend(range(2 * old - 1, old - 1, -1))
