"""Scoring: a batch of user windows in, a batch of top-k lists out.

The one scoring path shared by the worker and `streamrec predict`. NumPy and
onnxruntime only: the user tower (or, for the zero-training baseline, a
recency- and event-weighted mean of the window's item vectors), blended with the
user's stated interest if they have one (`blend_interest`), then top-k over the
live item index (exact, or FAISS IVF from `ann_min_items` items on), under the business
rules (stream_app/rules.py: what each user already touched, categories, a cap per category).
With a ranking stage in the version (ranker.onnx) and `stage="full"`, the best `ranker_candidates`
that pass the rules are re-scored (core/ranking_features.py, `StreamActivity` for popularity, trend
and age) and ordered by the blend of the heads before the top-k (and the cap per category) is cut.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import Collection, Sequence

import numpy as np

from core.contracts import Item, RecommendedItem
from core.features import item_text, left_pad, recency_buckets
from core.ranking_features import ItemActivity, RankingFeatureSpec, blend, ranking_features
from core.settings import (
    DEFAULT_ANN_MIN_ITEMS,
    DEFAULT_INTEREST_HANDOVER_EVENTS,
    DEFAULT_MAX_TRENDING_ITEMS,
    DEFAULT_RANKER_CANDIDATES,
    DEFAULT_RANKER_CLICK_WEIGHT,
    DEFAULT_RANKER_PURCHASE_WEIGHT,
)
from export.runtime import ModelRuntime
from state.item_index import ItemIndex
from state.popularity import TrendingCounter
from state.window import UserWindow
from stream_app.rules import Rules, at_most_per_category, excluded_items, short_reason

BASELINE_RECENCY_DECAY = 0.9  # each older event counts 10% less in the baseline user vector
INTEREST_CACHE_SIZE = 10_000  # embedded interests kept per model version (dim floats each; ~7 ms to embed one)
# With a cap per category, the greedy pick walks the best k x this many candidates; a user it leaves short
# is picked again from the whole (masked) catalog, so the figure trades speed only, never a list's length.
CAPPED_POOL_PER_ITEM = 20
STAGES = ("full", "retrieval")  # `recommend`'s stage: with the ranking stage where the version has one, or not


@dataclass
class Recommender:
    runtime: ModelRuntime
    event_weights: dict[str, float]
    k: int
    index: ItemIndex
    trending: TrendingCounter
    catalog_row: dict[str, int]  # item id -> row of the model's own catalog vectors
    interest_handover_events: float = DEFAULT_INTEREST_HANDOVER_EVENTS
    rules: Rules = Rules()  # the configured rules; a request may bring its own
    ranker_candidates: int = DEFAULT_RANKER_CANDIDATES  # the retrieval's best N the ranker re-scores
    ranker_weights: tuple[float, float] = (DEFAULT_RANKER_CLICK_WEIGHT, DEFAULT_RANKER_PURCHASE_WEIGHT)
    activity: StreamActivity | None = None  # the ranker's popularity, trend and age; None: no ranking stage

    def __post_init__(self) -> None:
        self.interest_vector = functools.lru_cache(INTEREST_CACHE_SIZE)(self._embed_interest)

    @classmethod
    def create(
        cls,
        runtime: ModelRuntime,
        event_weights: dict[str, float],
        k: int,
        trending_half_life_s: float,
        ann_min_items: int | None = DEFAULT_ANN_MIN_ITEMS,
        max_trending_items: int = DEFAULT_MAX_TRENDING_ITEMS,
        interest_handover_events: float = DEFAULT_INTEREST_HANDOVER_EVENTS,
        rules: Rules = Rules(),
        ranker_candidates: int = DEFAULT_RANKER_CANDIDATES,
        ranker_weights: tuple[float, float] = (DEFAULT_RANKER_CLICK_WEIGHT, DEFAULT_RANKER_PURCHASE_WEIGHT),
    ):
        index = ItemIndex(int(runtime.version.config["dim"]), ann_min_items=ann_min_items)
        catalog_row = {item_id: row for row, item_id in enumerate(runtime.catalog_ids)}
        trending = TrendingCounter(trending_half_life_s, max_trending_items)
        ranked = runtime.ranker is not None and ranker_candidates > 0  # 0 candidates: the stage is off
        activity = StreamActivity(runtime.ranker.spec) if ranked else None
        return cls(
            runtime, event_weights, k, index, trending, catalog_row, interest_handover_events, rules,
            ranker_candidates, ranker_weights, activity,
        )  # fmt: skip

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
            self.index.upsert(item.item_id, vector, item.categories or ())

    # -- users ---------------------------------------------------------------------
    def observe(self, item_id: str, event_type: str, ts: float) -> None:
        """Count the event for trending if its item is in the catalog: only those can be recommended,
        and ids nobody publishes (a hostile stream's) must neither take memory nor crowd real items out."""
        if item_id in self.index:
            self.trending.add(item_id, self.event_weights.get(event_type, 1.0), ts)
            if self.activity is not None:
                self.activity.add(item_id, ts)

    def recommend(
        self,
        windows: Sequence[UserWindow],
        interests: Sequence[str | None] | None = None,
        rules: Rules | None = None,
        stage: str = "full",
    ) -> list[list[RecommendedItem]]:
        """Each window's list under `rules` (default: the configured ones); `interests` (one per window, None:
        no profile) are blended in (`blend_interest`). `stage` "retrieval": the retrieval order even when the
        version has a ranker ("full": re-ranked, for the users with a history)."""
        rules = rules or self.rules
        spec = self.runtime.feature_spec
        histories = [w.item_ids[-spec.max_len :] for w in windows]
        vectors, known = zip(*(self.index.vectors_of(h) for h in histories)) if windows else ((), ())
        has_history = np.array([k.any() for k in known], dtype=bool)
        users = self._user_vectors(windows, vectors, known, has_history)  # [B, D]
        has_interest = np.array([i is not None for i in interests or [None] * len(windows)], dtype=bool)
        if has_interest.any():
            rows = np.flatnonzero(has_interest)
            stated = np.stack([self.interest_vector(interests[b]) for b in rows])
            n_known = np.array([known[b].sum() for b in rows], dtype=np.float32)
            users[rows] = blend_interest(users[rows], stated, n_known, self.interest_handover_events)
        exclude = [excluded_items(w, rules.repeat_policy, self.event_weights) for w in windows]
        allowed = self.index.category_mask(rules.categories, rules.exclude_categories)  # None: any category
        scanned = np.flatnonzero(has_history | has_interest).tolist()  # the others get trending
        reranked = [b for b in scanned if has_history[b]] if self.activity is not None and stage == "full" else []
        retrieved = sorted(set(scanned) - set(reranked))
        ranked = dict(zip(retrieved, self._top_k(users[retrieved], [exclude[b] for b in retrieved], allowed, rules)))
        ranked |= self._rank(reranked, windows, users, vectors, exclude, allowed, rules)
        cold_allowed = self.index.row_of.keys()  # the cold users' candidates: trending, then the catalog
        if allowed is not None and len(scanned) < len(windows):
            cold_allowed = {self.index.ids[r] for r in np.flatnonzero(allowed)}
        explained = self._explain(
            {b: ranked[b] for b in np.flatnonzero(has_history).tolist()}, histories, vectors, known
        )
        results = []
        for b in range(len(windows)):
            if has_history[b]:
                results.append(explained[b])
            elif has_interest[b]:
                results.append([RecommendedItem(item_id=i, score=s) for i, s in ranked[b]])
            else:
                results.append(self._cold_start(exclude[b], cold_allowed, rules))
        return results

    def _embed_interest(self, text: str) -> np.ndarray:
        """The item tower over a stated interest: a query in the item space, as a new item's text would be."""
        (vector,) = self.runtime.item_encoder.encode([text])
        vector.setflags(write=False)  # cached and shared
        return vector

    def short_reason(self, items: Sequence[RecommendedItem], rules: Rules | None = None) -> str | None:
        """Why `items`, a list this recommender made under `rules`, holds fewer than k items; None if it does not."""
        return short_reason(len(items), self.k, rules or self.rules)

    def _top_k(self, users: np.ndarray, exclude: list[set[str]], allowed: np.ndarray | None, rules: Rules):
        """The top k per user under the rules; with a cap per category, the greedy pick over a longer list."""
        cap = rules.max_per_category
        if not cap:
            return self.index.top_k(users, self.k, exclude, allowed)
        pool = CAPPED_POOL_PER_ITEM * self.k
        lists = []
        for b, ranked in enumerate(self.index.top_k(users, pool, exclude, allowed)):
            picks = at_most_per_category(ranked, self.k, cap, self.index.categories_of)
            if len(picks) < self.k and len(ranked) == pool:  # the pool ran out, maybe not the catalog
                (ranked,) = self.index.top_k(users[b : b + 1], len(self.index), exclude[b : b + 1], allowed)
                picks = at_most_per_category(ranked, self.k, cap, self.index.categories_of)
            lists.append(picks)
        return lists

    def _cold_start(self, exclude: set[str], allowed: Collection[str], rules: Rules) -> list[RecommendedItem]:
        """Trending items in `allowed`, topped up from the catalog while too few items have events."""
        cap = rules.max_per_category
        picks = self.trending.top(len(self.trending) if cap else self.k, allowed=allowed, exclude=exclude)
        chosen = exclude | {i for i, _ in picks}
        top_up = ((i, 0.0) for i in self.index.row_of if i not in chosen and i in allowed)
        ranked = at_most_per_category(chain(picks, top_up), self.k, cap, self.index.categories_of)
        return [RecommendedItem(item_id=i, score=s) for i, s in ranked]

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
        types = left_pad([spec.event_type_ids(windows[b].event_types[-spec.max_len :])[known[b]] for b in rows], T)
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

    def _explain(self, lists: dict[int, list[tuple]], histories, vectors, known) -> dict[int, list[RecommendedItem]]:
        """`because` of each window b's list: the history item most similar (cosine) to each recommended item,
        for all the lists at once."""
        users = [b for b, ranked in lists.items() if ranked]
        explained: dict[int, list[RecommendedItem]] = {b: [] for b in lists}
        if not users:
            return explained
        K, T = max(len(lists[b]) for b in users), max(len(vectors[b]) for b in users)
        recs = np.zeros((len(users), K), dtype=np.int64)  # [U, K] index rows; padding: row 0, never read
        hist = np.zeros((len(users), T, self.index.dim), dtype=np.float32)  # [U, T, D], right-padded
        in_index = np.zeros((len(users), T), dtype=bool)  # [U, T]
        for u, b in enumerate(users):
            recs[u, : len(lists[b])] = [self.index.row_of[i] for i, *_ in lists[b]]
            hist[u, : len(vectors[b])], in_index[u, : len(known[b])] = vectors[b], known[b]
        # The cosine's argmax over the history for one recommended item does not depend on that item's own
        # norm: only the history is normalised. Ties go to the earliest event, as np.argmax does.
        unit = hist / np.maximum(np.linalg.norm(hist, axis=2, keepdims=True), 1e-12)
        similarity = self.index.vectors[recs] @ unit.transpose(0, 2, 1)  # [U, K, T]
        best = np.where(in_index[:, None, :], similarity, -np.inf).argmax(axis=2).tolist()  # [U, K]
        for u, b in enumerate(users):
            history = histories[b]
            explained[b] = [RecommendedItem(i, s, history[t], *heads) for (i, s, *heads), t in zip(lists[b], best[u])]
        return explained

    def _rank(self, rows, windows, users, vectors, exclude, allowed, rules: Rules) -> dict[int, list[tuple]]:
        """The ranking stage for the windows `rows`: the best `ranker_candidates` under the rules, re-scored,
        ordered by the blend of the heads, cut to k (the cap per category on that order) -> {row: [(item id,
        blend, P(click), P(purchase)), ...]}. NumPy over [B, N] arrays of index rows: the per-id Python work
        left is one list and one dict lookup per candidate (its id, its activity row) and one per window event."""
        top, scores = self.index.top_k_rows(users[rows], self.ranker_candidates, [exclude[b] for b in rows], allowed)
        out: dict[int, list[tuple]] = {b: [] for b in rows}
        sizes = (top >= 0).sum(1)  # [B] candidates per window: fewer where the rules leave fewer
        live = [b for b, size in zip(rows, sizes.tolist()) if size]
        if not live:
            return out
        top, scores, sizes = top[sizes > 0], scores[sizes > 0], sizes[sizes > 0]
        B, N, T = len(live), int(sizes.max()), max(len(vectors[b]) for b in live)
        # Short pools: the last candidate repeated (its features are computed, its position never picked).
        last = np.minimum(np.arange(N), sizes[:, None] - 1)  # [B, N]
        candidates, retrieval = np.take_along_axis(top, last, 1), np.take_along_axis(scores, last, 1)  # [B, N]
        ids = [list(map(self.index.ids.__getitem__, row)) for row in candidates.tolist()]  # [B][N]
        row_of = self.index.row_of
        window_rows = left_pad(
            [np.fromiter(map(row_of.get, windows[b].item_ids[-len(vectors[b]) :], repeat(-1)), np.int64) for b in live],
            T,
            -1,
        )  # [B, T], -1: padding or an item not in the index
        spec = self.runtime.feature_spec
        mask = window_rows >= 0  # [B, T]
        types = left_pad([spec.event_type_ids(windows[b].event_types[-len(vectors[b]) :]) for b in live], T)
        times = left_pad([np.array(windows[b].ts[-len(vectors[b]) :], dtype=np.float64) for b in live], T, 0.0)
        window_vectors = np.where(mask[..., None], self.index.vectors[window_rows], 0.0)  # [B, T, D]
        categories = self.index.category_matrix(np.concatenate([candidates.ravel(), window_rows.ravel()]))
        in_window = (candidates[:, :, None] == window_rows[:, None, :]).any(2)  # [B, N]
        counts, first_seen = self.activity.at(ids, times[:, -1])
        features = ranking_features(
            self.runtime.ranker.spec, retrieval, self.index.vectors[candidates], categories[: B * N].reshape(B, N, -1),
            counts, first_seen, in_window, window_vectors, categories[B * N :].reshape(B, T, -1), types, times, mask,
        )  # fmt: skip
        heads = self.runtime.ranker.heads(features)  # [B, N, 2]
        order = np.where(np.arange(N) < sizes[:, None], blend(heads, *self.ranker_weights), -np.inf)  # [B, N]
        cap = rules.max_per_category
        best = np.argsort(-order, axis=1, kind="stable")[:, : N if cap else self.k]  # [B, N or k]
        for r, (b, size) in enumerate(zip(live, sizes.tolist())):
            picked = best[r, :size]
            scored = zip(
                (ids[r][n] for n in picked.tolist()),
                order[r, picked].tolist(),
                heads[r, picked, 0].tolist(),
                heads[r, picked, 1].tolist(),
            )
            if not cap:
                out[b] = list(scored)
                continue
            of = {i: rest for i, *rest in scored}  # id -> (blend, P(click), P(purchase))
            picks = at_most_per_category(((i, s) for i, (s, *_) in of.items()), self.k, cap, self.index.categories_of)
            out[b] = [(i, *of[i]) for i, _ in picks]
        return out


@dataclass
class StreamActivity:
    """`ItemActivity` over item ids (each id gets a row the first time it is counted): the ranker's
    popularity, trend and age, fed by `Recommender.observe` like trending, carried over a model swap."""

    spec: RankingFeatureSpec
    rows: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.activity = ItemActivity(self.spec, 1024)

    def add(self, item_id: str, ts: float) -> None:
        self.activity.add(self.rows.setdefault(item_id, len(self.rows)), ts)

    def at(self, ids: list[list[str]], now: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ids [B][N], now [B] -> (counts [B, N, 2], first seen [B, N]) (`ItemActivity.at`)."""
        never = np.iinfo(np.int64).max  # beyond every row: not counted yet
        rows = np.fromiter(map(self.rows.get, chain.from_iterable(ids), repeat(never)), np.int64)
        return self.activity.at(rows.reshape(len(ids), -1), now)


def blend_interest(
    behaviour: np.ndarray, interest: np.ndarray, n_known: np.ndarray, handover_events: float
) -> np.ndarray:
    """The query of users with a stated interest: [B, D] behaviour vectors (zero without history), [B, D]
    interest vectors (item tower over the text), [B] known events in each window -> [B, D].

    The behaviour weighs w = n / (n + handover_events): nothing for a new user, half after handover_events
    events, most of it after a few times that. Both are L2-normalised first, so that w is the share of the
    direction each one gets: the user tower's output and an item-tower vector live on different scales (the
    trained model's user vectors are several times longer), and mixed raw the longer one would win whatever w."""
    w = (n_known / (n_known + handover_events))[:, None]
    return ((1 - w) * _normalise(interest) + w * _normalise(behaviour)).astype(np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
