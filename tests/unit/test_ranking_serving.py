"""The ranking stage's production path without a broker: a checkpoint with a ranker exported (ranker.onnx,
parity on a grid, config.json `ranker`), loaded torch-free, and the Recommender re-ranking the retrieval's
candidates (items carry both heads, the score is their blend) unless asked for the retrieval order; a
runtime without a ranker serves the retrieval order (tests/integration/test_ranker.py: on Kafka)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from core.contracts import Item
from core.features import left_pad
from core.ranking_features import blend, ranking_features
from encoders.config import RankerConfig
from encoders.ranker import Ranker, save_ranker
from export.pipeline import export_and_register
from export.registry import Registry
from export.runtime import load_runtime
from state.window import UserWindow, WindowEvent
from stream_app.recommender import Recommender
from stream_app.rules import Rules, at_most_per_category
from tests.support import small_two_tower_checkpoint

pytestmark = pytest.mark.slow  # an export with MiniLM: 30-60 s


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Registry:
    """A version of a small checkpoint with an untrained ranker."""
    checkpoint = small_two_tower_checkpoint(tmp_path_factory.mktemp("ckpt"))
    root = tmp_path_factory.mktemp("reg")
    torch.manual_seed(0)
    ranker = Ranker(RankerConfig(n_candidates=20))
    ranker.fit_standardisation(np.random.default_rng(0).normal(size=(50, ranker.config.features.n_features)))
    save_ranker(ranker, checkpoint / "ranker", {})
    export_and_register(checkpoint, root, version="ranked")
    return Registry(root)


def recommender_of(registry: Registry, ranker: bool = True, **settings) -> Recommender:
    """The version served as is, or as a version without a ranker would be (`settings`: Recommender.create's)."""
    runtime = load_runtime(registry.load("ranked"))
    runtime = runtime if ranker else replace(runtime, ranker=None)
    recommender = Recommender.create(runtime, {"view": 1.0, "click": 2.0, "purchase": 4.0}, 5, 3_600.0, **settings)
    items = [Item(item_id=i, title=i, categories=["A" if n % 2 else "B"]) for n, i in enumerate(runtime.catalog_ids)]
    recommender.add_items(items, recommender.embed_items(items))
    for n, item in enumerate(runtime.catalog_ids[:20]):
        recommender.observe(item, "view", 1_000.0 + n)
    return recommender


def window(ids: list[str]) -> UserWindow:
    events = [WindowEvent(f"e{n}", i, "click" if n % 2 else "view", 1_000.0 + 60 * n) for n, i in enumerate(ids)]
    return UserWindow().with_events(events, 50, 1e9)


def test_the_version_records_its_ranker_and_its_parity(registry: Registry):
    version = registry.load("ranked")
    assert version.has("ranker.onnx") and version.model_config.ranker["heads"] == ["p_click", "p_purchase"]
    parity = version.metrics["parity"]["ranker"]
    assert parity["ok"] and parity["n_cases"] == 9 and parity["max_abs_diff"] <= 1e-5  # the 3 x 3 grid


def test_a_ranked_version_orders_by_the_blend_and_carries_the_heads(registry: Registry):
    recommender = recommender_of(registry)
    ids = recommender.runtime.catalog_ids
    windows = [window(ids[:6]), window(ids[10:13]), UserWindow()]
    full = recommender.recommend(windows)
    for items in full[:2]:
        assert len(items) == 5 and all(i.p_click is not None and i.p_purchase is not None for i in items)
        scores = [i.score for i in items]
        assert scores == sorted(scores, reverse=True)
        np.testing.assert_allclose(scores, blend(np.array([[i.p_click, i.p_purchase] for i in items]), 1.0, 1.0))
        assert all(i.because in ids for i in items) and not {i.item_id for i in items} & set(ids[:13])
    assert all(i.p_click is None for i in full[2])  # no history: trending, no ranker
    retrieval = recommender.recommend(windows, stage="retrieval")
    assert all(i.p_click is None and i.asdict()["p_purchase"] is None for items in retrieval for i in items)
    plain = recommender_of(registry, ranker=False).recommend(windows)
    assert [[i.item_id for i in items] for items in plain] == [[i.item_id for i in items] for items in retrieval]
    assert [i.item_id for i in full[0]] != [i.item_id for i in retrieval[0]]  # the ranker changed the order


def test_no_ranker_candidates_turn_the_ranking_stage_off(registry: Registry):
    ids = recommender_of(registry).runtime.catalog_ids
    windows = [window(ids[:6]), window(ids[10:13])]
    off = recommender_of(registry, ranker_candidates=0).recommend(windows)
    retrieval = recommender_of(registry).recommend(windows, stage="retrieval")
    assert [[i.item_id for i in items] for items in off] == [[i.item_id for i in items] for items in retrieval]
    assert all(i.p_click is None for items in off for i in items)


def test_the_ranker_sees_the_streams_popularity(registry: Registry, monkeypatch: pytest.MonkeyPatch):
    recommender = recommender_of(registry)
    seen = []
    real = recommender.runtime.ranker.heads
    monkeypatch.setattr(recommender.runtime.ranker, "heads", lambda f: seen.append(f) or real(f))
    ids = recommender.runtime.catalog_ids
    recommender.recommend([window(ids[30:33])])
    names = recommender.runtime.ranker.spec.names
    popularity = seen[0][0, :, names.index("log_popularity")]  # candidates 0..19 had a view each, others none
    assert (popularity > 0).any() and (popularity == 0).any()


def rank_one_id_at_a_time(self: Recommender, rows, windows, users, vectors, exclude, allowed, rules: Rules):
    """The ranking stage as first written (per-id Python loops over the candidates): the reference
    `Recommender._rank` must agree with."""
    pools = self.index.top_k(users[rows], self.ranker_candidates, [exclude[b] for b in rows], allowed)
    out = {b: [] for b in rows}
    live = [(b, pool) for b, pool in zip(rows, pools) if pool]
    if not live:
        return out
    N, T = max(len(p) for _, p in live), max(len(vectors[b]) for b, _ in live)
    ids = [[i for i, _ in p] + [p[-1][0]] * (N - len(p)) for _, p in live]
    retrieval = np.array([[s for _, s in p] + [p[-1][1]] * (N - len(p)) for _, p in live], dtype=np.float32)
    window_ids = [windows[b].item_ids[-len(vectors[b]) :] for b, _ in live]
    names = sorted({c for row in ids + window_ids for i in row if i in self.index for c in self.index.categories_of(i)})

    def categories(rows_of_ids, width):
        out = np.zeros((len(rows_of_ids), width, max(len(names), 1)), dtype=bool)
        for r, row in enumerate(rows_of_ids):
            for t, i in enumerate(row, width - len(row)):
                out[r, t, [names.index(c) for c in self.index.categories_of(i)] if i in self.index else []] = True
        return out

    spec = self.runtime.feature_spec
    mask = left_pad([np.array([i in self.index for i in w], dtype=bool) for w in window_ids], T, False)
    types = left_pad(
        [np.array([spec.event_type_id(t) for t in windows[b].event_types[-len(vectors[b]) :]]) for b, _ in live], T
    )
    times = left_pad([np.array(windows[b].ts[-len(vectors[b]) :], dtype=np.float64) for b, _ in live], T, 0.0)
    window_vectors = np.stack([np.pad(vectors[b], ((T - len(vectors[b]), 0), (0, 0))) for b, _ in live])
    candidate_vectors = np.stack([self.index.vectors_of(row)[0] for row in ids])
    in_window = np.array([[i in set(w) for i in row] for row, w in zip(ids, window_ids)])
    activity = self.activity
    never = np.iinfo(np.int64).max
    counts, first_seen = activity.activity.at(
        np.array([[activity.rows.get(i, never) for i in row] for row in ids]), times[:, -1]
    )
    features = ranking_features(
        self.runtime.ranker.spec, retrieval, candidate_vectors, categories(ids, N), counts, first_seen, in_window,
        window_vectors, categories(window_ids, T), types, times, mask,
    )  # fmt: skip
    heads = self.runtime.ranker.heads(features)
    order = blend(heads, *self.ranker_weights)
    for r, (b, pool) in enumerate(live):
        best = np.argsort(-order[r, : len(pool)], kind="stable")
        of = {ids[r][n]: (float(heads[r, n, 0]), float(heads[r, n, 1])) for n in best}
        ranked = ((ids[r][n], float(order[r, n])) for n in best)
        picks = at_most_per_category(ranked, self.k, rules.max_per_category, self.index.categories_of)
        out[b] = [(i, s, *of[i]) for i, s in picks]
    return out


# A cap of 3 (two categories, k = 5) bites and leaves the lists full; "allow" lets window items be candidates.
@pytest.mark.parametrize("rules", [Rules(), Rules(max_per_category=3), Rules(repeat_policy="allow")])
def test_the_vectorised_ranking_stage_matches_the_one_id_at_a_time_reference(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, rules: Rules
):
    recommender = recommender_of(registry)
    ids = recommender.runtime.catalog_ids
    rng = np.random.default_rng(0)
    # Windows of 1..50 events (some of items outside the index), so pools and windows differ in length.
    windows = [window([*rng.choice(ids, size=n).tolist(), "not-in-the-catalog"]) for n in rng.integers(1, 50, 12)]
    fast = recommender.recommend(windows, rules=rules)
    monkeypatch.setattr(Recommender, "_rank", rank_one_id_at_a_time)
    reference = recommender.recommend(windows, rules=rules)
    assert [[i.item_id for i in items] for items in fast] == [[i.item_id for i in items] for items in reference]
    assert all(len(items) == recommender.k for items in fast)
    for got, want in zip(fast, reference):
        np.testing.assert_allclose(
            [(i.score, i.p_click, i.p_purchase) for i in got],
            [(i.score, i.p_click, i.p_purchase) for i in want],
            atol=1e-5,
        )
        assert [i.because for i in got] == [i.because for i in want]


def test_predict_stage_option_refuses_an_unknown_stage(tmp_path: Path):
    from typer.testing import CliRunner

    from stream_app.cli import app

    (tmp_path / "in.jsonl").write_text("")
    result = CliRunner().invoke(app, ["predict", "--input", str(tmp_path / "in.jsonl"), "--out", "x", "--stage", "x"])
    assert result.exit_code != 0 and "--stage" in result.output
