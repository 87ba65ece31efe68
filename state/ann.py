"""Approximate top-k by inner product for the live item index: FAISS IVF-Flat kept in step
with the catalog.

Why IVF-Flat and not HNSW (figures in docs/benchmarks.md, "Retrieval"): an inverted file
can delete and re-file single vectors, HNSW cannot delete at all; an IVF over 1M items
builds in seconds, HNSW in minutes; and with the latency budget (5 ms per user) an IVF
that scans enough lists reaches the recall we want. IVF-Flat keeps full float vectors, so
its scores are exact dot products: only the candidate set is approximate.

Live changes. The item index tells `LiveAnn` which rows changed (`touch`); before each
search the changed rows are re-filed in one batch (removed by id, added again if still
live; one at a time would cost ~30 us each), so a search always sees the current catalog:
new items at once, removed ones never. Row numbers of the item index are the FAISS ids.

Centroids are trained at build time. A build starts at the upsert (or search) that finds
the catalog at the item index's threshold, and again whenever the catalog has grown
`rebuild_growth` times since the last build (its lists would get long). It runs on a copy
of the live rows in a background thread (FAISS releases the GIL) while the current index,
or the exact path, keeps serving; rows touched after the copy are re-filed into the new
index when it is adopted. So a worker loading a large catalog builds while it loads, and
usually serves its first batch from the IVF.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import Future
from dataclasses import dataclass

import faiss
import numpy as np


@dataclass(frozen=True)
class IvfConfig:
    # Inverted lists = this x sqrt(items at build). Twice sqrt(N) halves what nprobe lists hold, so a query
    # scans half as many vectors as with sqrt(N): under 1 ms per user at 1M items, at recall@10 0.97 instead
    # of 0.99 and a longer build (docs/benchmarks.md, "Retrieval").
    lists_per_sqrt_n: float = 2.0
    nprobe: int = 64  # lists scanned per query: the recall/latency knob
    train_per_list: int = 40  # k-means sample per list (FAISS asks for >= 39); more did not raise recall
    kmeans_iters: int = 10  # 20 iterations: same recall at 1M, +1.6 s of build
    rebuild_growth: float = 2.0  # rebuild once the catalog is this many times its size at the last build
    background: bool = True  # build in a thread while the exact path serves (False: in the calling upsert/top_k)
    seed: int = 0  # k-means sample and initialisation, so builds are reproducible


class Ivf:
    """An IVF-Flat inner-product index whose ids are item-index rows; rows can be re-filed."""

    def __init__(self, vectors: np.ndarray, rows: np.ndarray, config: IvfConfig):
        """Train on a sample of `vectors` [N, D] and add them under ids `rows` [N]. Blocking."""
        n, dim = vectors.shape
        nlist = max(1, min(n, round(config.lists_per_sqrt_n * math.sqrt(n))))
        self.built_size = n
        self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        self.index.nprobe = min(config.nprobe, nlist)
        self.index.cp.niter = config.kmeans_iters
        self.index.cp.seed = config.seed
        self.index.cp.min_points_per_centroid = 1  # small catalogs (tests) train without warnings
        self.index.set_direct_map_type(faiss.DirectMap.Hashtable)  # O(1) removal by id
        rng = np.random.default_rng(config.seed)
        sample = rng.choice(n, min(n, config.train_per_list * nlist), replace=False)
        self.index.train(vectors[np.sort(sample)])
        self.index.add_with_ids(vectors, rows.astype(np.int64))

    def refile(self, rows: np.ndarray, vectors: np.ndarray, live: np.ndarray) -> None:
        """Drop `rows` [R] wherever they are filed and add back those `live` [R] with `vectors` [R, D]."""
        ids = np.ascontiguousarray(rows, dtype=np.int64)
        # An IDSelectorArray lets the hash table find each id; a plain array would scan every list.
        self.index.remove_ids(faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids)))
        if live.any():
            self.index.add_with_ids(np.ascontiguousarray(vectors[live]), ids[live])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores [B, k] and rows [B, k] by inner product, best first; row -1 where lists ran out."""
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    @property
    def nbytes(self) -> int:
        """Serialized size: vectors, ids, centroids and the id map."""
        return faiss.serialize_index(self.index).nbytes


class LiveAnn:
    """The current IVF (if any), the rows changed since it was last brought up to date, and a
    build in progress with the rows changed since its snapshot."""

    def __init__(self, min_items: int, config: IvfConfig):
        self.min_items = min_items
        self.config = config
        self.current: Ivf | None = None
        self._stale: set[int] = set()  # rows to re-file into `current` before the next search
        self._building: Future[Ivf] | None = None
        self._stale_for_build: set[int] = set()  # rows to re-file into the build's result

    def touch(self, row: int, vectors: np.ndarray, live: np.ndarray, n_items: int) -> None:
        """Row `row` of `vectors` [capacity, D] / `live` [capacity] was upserted or removed;
        the catalog now has `n_items` items. Starts a build when one is due."""
        self._adopt_finished_build()
        if self.current is not None:
            self._stale.add(row)
        if self._building is not None:
            self._stale_for_build.add(row)
        self._build_if_due(vectors, live, n_items)

    def ready(self, vectors: np.ndarray, live: np.ndarray, n_items: int) -> Ivf | None:
        """The index to search (None: use the exact path), brought up to date first."""
        self._adopt_finished_build()
        self._build_if_due(vectors, live, n_items)
        if self.current is None or n_items < self.min_items:
            return None
        if self._stale:
            rows = np.fromiter(self._stale, dtype=np.int64, count=len(self._stale))
            self.current.refile(rows, vectors[rows], live[rows])
            self._stale.clear()
        return self.current

    def _build_if_due(self, vectors: np.ndarray, live: np.ndarray, n_items: int) -> None:
        if self._building is None and self._due(n_items):
            self._start_build(vectors, live)
            self._adopt_finished_build()  # a foreground build is finished already

    def _due(self, n_items: int) -> bool:
        if n_items < max(self.min_items, 1):
            return False
        return self.current is None or n_items >= self.config.rebuild_growth * self.current.built_size

    def _start_build(self, vectors: np.ndarray, live: np.ndarray) -> None:
        rows = np.flatnonzero(live)
        snapshot = vectors[rows]  # a copy: the build must not see later writes to the matrix
        future: Future[Ivf] = Future()

        def build() -> None:
            try:
                future.set_result(Ivf(snapshot, rows, self.config))
            except Exception as error:  # raised again on the caller's thread when adopted
                future.set_exception(error)

        self._building, self._stale_for_build = future, set()
        if self.config.background:
            threading.Thread(target=build, name="ann-build", daemon=True).start()
        else:
            build()

    def _adopt_finished_build(self) -> None:
        if self._building is None or not self._building.done():
            return
        future, self._building = self._building, None  # a failed build is retried at the next call
        self.current = future.result()
        self._stale, self._stale_for_build = self._stale_for_build, set()
