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
from core.ranking_features import blend
from encoders.config import RankerConfig
from encoders.ranker import Ranker, save_ranker
from export.pipeline import export_and_register
from export.registry import Registry
from export.runtime import load_runtime
from state.window import UserWindow, WindowEvent
from stream_app.recommender import Recommender
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


def recommender_of(registry: Registry, ranker: bool = True) -> Recommender:
    """The version served as is, or as a version without a ranker would be."""
    runtime = load_runtime(registry.load("ranked"))
    runtime = runtime if ranker else replace(runtime, ranker=None)
    recommender = Recommender.create(runtime, {"view": 1.0, "click": 2.0, "purchase": 4.0}, 5, 3_600.0)
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


def test_predict_stage_option_refuses_an_unknown_stage(tmp_path: Path):
    from typer.testing import CliRunner

    from stream_app.cli import app

    (tmp_path / "in.jsonl").write_text("")
    result = CliRunner().invoke(app, ["predict", "--input", str(tmp_path / "in.jsonl"), "--out", "x", "--stage", "x"])
    assert result.exit_code != 0 and "--stage" in result.output
