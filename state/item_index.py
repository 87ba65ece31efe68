"""The live candidate set: item vectors in one contiguous matrix, exact top-k by BLAS.

Rows are appended as items arrive and reused after removals, so scoring a batch
of users is a single [B, D] x [D, N] matrix product over the whole catalog.
"""

from __future__ import annotations

import numpy as np


class ItemIndex:
    def __init__(self, dim: int, capacity: int = 1024):
        self.dim = dim
        self.vectors = np.zeros((capacity, dim), dtype=np.float32)  # [capacity, D]
        self.live = np.zeros(capacity, dtype=bool)  # rows that are candidates
        self.row_of: dict[str, int] = {}
        self.ids: list[str | None] = [None] * capacity
        self.titles: dict[str, str] = {}
        self._free: list[int] = list(range(capacity - 1, -1, -1))

    def __len__(self) -> int:
        return len(self.row_of)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.row_of

    def upsert(self, item_id: str, vector: np.ndarray, title: str = "") -> None:
        row = self.row_of.get(item_id)
        if row is None:
            if not self._free:
                self._grow()
            row = self._free.pop()
            self.row_of[item_id] = row
            self.ids[row] = item_id
        self.vectors[row] = vector
        self.live[row] = True
        self.titles[item_id] = title

    def remove(self, item_id: str) -> None:
        row = self.row_of.pop(item_id, None)
        if row is None:
            return
        self.live[row] = False
        self.vectors[row] = 0.0
        self.ids[row] = None
        self.titles.pop(item_id, None)
        self._free.append(row)

    def vectors_of(self, item_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors [T, D] for `item_ids` and a mask [T] of those in the index (others are zeros)."""
        rows = np.array([self.row_of.get(i, -1) for i in item_ids], dtype=np.int64)
        known = rows >= 0
        vectors = np.zeros((len(item_ids), self.dim), dtype=np.float32)
        vectors[known] = self.vectors[rows[known]]
        return vectors, known

    def top_k(self, queries: np.ndarray, k: int, exclude: list[set[str]]) -> list[list[tuple[str, float]]]:
        """Best `k` live items per query [B, D] by dot product, skipping each query's `exclude` ids."""
        if not len(self) or not len(queries):
            return [[] for _ in range(len(queries))]
        scores = queries.astype(np.float32) @ self.vectors.T  # [B, capacity]
        scores[:, ~self.live] = -np.inf
        for b, ids in enumerate(exclude):
            rows = [self.row_of[i] for i in ids if i in self.row_of]
            scores[b, rows] = -np.inf
        k_eff = min(k, scores.shape[1])
        top = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]  # [B, k] unordered
        results = []
        for b in range(len(queries)):
            rows = top[b][np.argsort(-scores[b, top[b]])]
            results.append([(self.ids[r], float(scores[b, r])) for r in rows if np.isfinite(scores[b, r])])
        return results

    def _grow(self) -> None:
        old = len(self.live)
        self.vectors = np.concatenate([self.vectors, np.zeros_like(self.vectors)])
        self.live = np.concatenate([self.live, np.zeros(old, dtype=bool)])
        self.ids.extend([None] * old)
        self._free.extend(range(2 * old - 1, old - 1, -1))
