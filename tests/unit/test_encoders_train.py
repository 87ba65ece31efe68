"""Training on a small fixture: loss goes down, seeds reproduce, checkpoints round-trip."""

import itertools
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from core.datasets import load_interactions, split_leave_one_out
from core.features import FeatureSpec
from encoders.evaluate import (
    cold_scale,
    cold_target_share,
    demand_matched_scale,
    evaluate_model,
    evaluate_popularity,
    validation_by_cold_scale,
    withhold_items,
)
from encoders.item_tower import ItemTowerConfig
from encoders.recommender import Recommender, RecommenderConfig, load_checkpoint, save_checkpoint
from encoders.train import TrainConfig, residual_dropout_at, run, train
from encoders.user_tower import UserTowerConfig
from tests.support import ML100K

GENRES = ["comedy", "drama", "horror", "action", "romance"]
SPEC = FeatureSpec(max_len=8)
MODEL = RecommenderConfig(
    item_tower=ItemTowerConfig(proj_dim=16), user_tower=UserTowerConfig(dim=16, max_len=8, dropout=0.1)
)
FAST = TrainConfig(epochs=6, batch_size=16, lr=5e-3, patience=100, features=SPEC)


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory) -> Path:
    """30 items; 40 users who walk the catalog in steps of +1 from a random start."""
    root = tmp_path_factory.mktemp("fixture")
    rng = np.random.default_rng(0)
    items = [{"item_id": f"i{i}", "title": f"Film number {i}", "categories": [GENRES[i % 5]]} for i in range(30)]
    events = []
    for u in range(40):
        start = int(rng.integers(30))
        for t in range(12):
            events.append(
                {
                    "event_id": f"{u}-{t}",
                    "user_id": f"u{u}",
                    "item_id": f"i{(start + t) % 30}",
                    "event_type": ["view", "click", "purchase"][t % 3],
                    "ts": 1_700_000_000_000 + 60_000 * t,
                }
            )
    (root / "items.jsonl").write_text("\n".join(json.dumps(i) for i in items))
    (root / "events.jsonl").write_text("\n".join(json.dumps(e) for e in events))
    return root


@pytest.fixture(scope="module")
def split(fixture_dir):
    data = load_interactions(fixture_dir, SPEC)
    return split_leave_one_out(data)


def configured(split, **kw):
    return replace(MODEL, n_items=split.train.n_items, **kw)


def test_training_lowers_loss_and_beats_popularity(split):
    model, metrics = train(configured(split), FAST, split, progress=False)
    loss = metrics["curves"]["loss"]
    assert loss[-1] < loss[0] - 0.5
    assert metrics["valid"]["recbole"]["HR@10"] > evaluate_popularity(split).recbole["HR@10"]


def test_the_progress_bar_counts_down_the_time_budget_not_the_epochs(split, capsys):
    train(configured(split), replace(FAST, epochs=2, max_minutes=0.5), split)
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "/30 s of the budget" in bar and "epoch=2" in bar, bar


def test_the_budget_stops_training_mid_epoch(split, monkeypatch: pytest.MonkeyPatch):
    """A clock that moves 1 s per reading: the 3 s budget ends the first epoch after a few of its steps."""
    import encoders.train

    clock, steps = itertools.count(), []
    monkeypatch.setattr(encoders.train, "time", SimpleNamespace(monotonic=lambda: float(next(clock))))
    loss = encoders.train.next_item_loss
    monkeypatch.setattr(encoders.train, "next_item_loss", lambda *a: steps.append(1) or loss(*a))
    _, metrics = train(configured(split), replace(FAST, batch_size=4, max_minutes=0.05), split, progress=False)
    steps_per_epoch = -(-sum(1 for _ in split.train.items) // 4)  # at least one window per user
    assert metrics["epochs_run"] == 1 and len(steps) < steps_per_epoch, (len(steps), steps_per_epoch)
    assert metrics["seconds_per_epoch"] is None  # no whole epoch to time


def test_same_seed_same_model(split):
    short = replace(FAST, epochs=2)
    a, ma = train(configured(split), short, split, progress=False)
    b, mb = train(configured(split), short, split, progress=False)
    assert ma["curves"] == mb["curves"]
    torch.testing.assert_close(a.catalog_vectors(), b.catalog_vectors())


@pytest.mark.parametrize(
    "variant",
    [
        {"use_text": False},  # ID-only baseline
        {"id_residual": False},
        {"item_tower": ItemTowerConfig(proj_dim=16, train_top_layers=1)},  # fine-tune the top LM layer
        {"align_weight": 0.1, "align_loss": "infonce"},
        {"text_loss_weight": 0.5},
    ],
)
def test_variants_train(split, variant):
    model, metrics = train(configured(split, **variant), replace(FAST, epochs=2), split, progress=False)
    assert np.isfinite(metrics["curves"]["loss"]).all()
    assert model.catalog_vectors().shape == (30, 16)


def test_repeat_beta_goes_negative_without_repeats(split):
    """Nobody in the fixture meets an item twice, so the model learns to push seen items down."""
    model, metrics = train(configured(split, use_text=False), replace(FAST, epochs=3), split, progress=False)
    used = [SPEC.event_type_id(e) for e in ("view", "click", "purchase")]
    assert all(metrics["repeat_beta"][i] < -0.5 for i in used)


def test_sampled_softmax_trains(split):
    _, metrics = train(configured(split), replace(FAST, loss="sampled", n_negatives=8), split, progress=False)
    assert metrics["curves"]["loss"][-1] < metrics["curves"]["loss"][0]


def test_unseen_items_get_text_only_vectors(split):
    """An item never trained on is scored by what item.onnx serves for a new item: its text vector (linear
    projection + text MLP) times the cold scale; a warm item's text part is not scaled."""
    model, _ = train(configured(split), replace(FAST, epochs=2), split, progress=False)
    assert model.warm.all()  # every fixture item occurs in training
    assert model.item_tower.mlp is not None and model.item_tower.config.cold_scale != 1.0  # the defaults
    model.warm[3] = False
    with torch.no_grad():
        text_only = model.item_tower.project(model.text_emb[3])
        ids, mask = model.item_tower.tokenize([split.train.item_texts[3]])
        torch.testing.assert_close(model.catalog_vectors()[3], model.item_tower.config.cold_scale * text_only)
        torch.testing.assert_close(model.catalog_vectors()[3], model.item_tower(ids, mask)[0])  # as served
        torch.testing.assert_close(
            model.catalog_vectors()[4], model.item_tower.project(model.text_emb[4]) + model.id_emb.weight[4]
        )


def test_the_cold_scale_sweep_raises_cold_exposure_and_restores_the_model(split):
    """The demand-matched cold scale's ingredients: a larger scale gives cold items more of the top-10 slots, the
    matched scale is the one whose cold share is nearest the targets', and the model keeps its own scale after."""
    cold_split = withhold_items(split, 0.3, seed=0)
    model, _ = train(configured(cold_split), replace(FAST, epochs=2), cold_split, progress=False)
    trained_scale = model.item_tower.config.cold_scale
    runs = validation_by_cold_scale(model, cold_split, [0.1, 1.0, 10.0])
    shares = [runs[scale].cold_top10_share for scale in (0.1, 1.0, 10.0)]
    assert shares == sorted(shares) and shares[0] < shares[-1]
    target = cold_target_share(runs)
    matched = demand_matched_scale(runs)
    assert all(abs(runs[matched].cold_top10_share - target) <= abs(r.cold_top10_share - target) for r in runs.values())
    assert model.item_tower.config.cold_scale == trained_scale
    with pytest.raises(RuntimeError), cold_scale(model, 5.0):
        assert model.item_tower.config.cold_scale == 5.0
        raise RuntimeError
    assert model.item_tower.config.cold_scale == trained_scale


def test_residual_dropout_only_in_training(split):
    model = Recommender(configured(split, residual_dropout=1.0), SPEC)
    model.encode_catalog(split.train.item_texts)
    model.warm[:] = True
    with torch.no_grad():
        model.id_emb.weight.normal_()
        text_only = model.item_tower.project(model.text_emb)
        torch.testing.assert_close(model.train().item_vectors(), text_only)  # every residual dropped
        torch.testing.assert_close(model.eval().item_vectors(), text_only + model.id_emb.weight)


def test_residual_dropout_warms_up_linearly_then_stays():
    model_config = replace(MODEL, residual_dropout=0.5)
    rates = [residual_dropout_at(e, model_config, replace(FAST, residual_dropout_warmup=4)) for e in range(6)]
    assert rates == [0.125, 0.25, 0.375, 0.5, 0.5, 0.5]
    assert residual_dropout_at(0, model_config, FAST) == 0.5  # no warm-up: the rate from the first epoch


def test_report_rows_name_the_residual_dropout_warm_up(split):
    """A warm-up run trains another model from the same config: `evaluate` must not pool it with the others."""
    from encoders.cli import _variant_name

    model = Recommender(configured(split), SPEC)
    constant, warmed = _variant_name(model, {}), _variant_name(model, {"residual_dropout_warmup": 10})
    assert "warm-up" not in constant and "residual dropout 0.2 (warm-up 10 epochs)" in warmed


def test_infonce_alignment_asks_each_text_vector_for_its_own_item():
    """The contrastive alignment is low when every warm item's text vector points at its own full vector
    and high when they point at other items'; it trains the text side only, and ignores cold items."""
    model = Recommender(RecommenderConfig(n_items=6, align_loss="infonce", align_weight=1.0), SPEC)
    model.warm[:4] = True
    with torch.no_grad():
        model.id_emb.weight.copy_(5 * torch.eye(6, 64))  # full vector of item i: its text + 5 e_i
    text = torch.zeros(6, 64, requires_grad=True)
    with torch.no_grad():
        text[:4] = torch.eye(6, 64)[:4]  # each warm item's text already points at its own full vector
    own = model.alignment_loss(text)
    own.backward()
    shuffled = model.alignment_loss(text[[1, 2, 3, 0, 4, 5]].detach())
    assert own < 0.01 < shuffled
    assert text.grad[4:].abs().sum() == 0 and model.id_emb.weight.grad is None  # cold rows; ID side held fixed


def test_text_only_loss_reaches_the_text_side_and_is_saved(split, tmp_path):
    """`text_loss_weight` adds a next-item loss where items are scored by their text vectors alone (as a cold
    item is): from the same seed it trains another text projection, and a checkpoint keeps the weight."""
    plain, _ = train(configured(split, residual_dropout=0.0), replace(FAST, epochs=2), split, progress=False)
    model, _ = train(
        configured(split, residual_dropout=0.0, text_loss_weight=1.0), replace(FAST, epochs=2), split, progress=False
    )
    text = [m.item_parts()[0].detach() for m in (plain, model)]
    assert not torch.allclose(*text)
    save_checkpoint(model, split.train.item_ids, split.train.item_texts, tmp_path / "ckpt", {})
    assert load_checkpoint(tmp_path / "ckpt")[0].config.text_loss_weight == 1.0


def test_checkpoint_round_trip(split, fixture_dir, tmp_path):
    out = run(fixture_dir, tmp_path / "ckpt", MODEL, replace(FAST, epochs=2))
    assert {p.name for p in out.iterdir()} == {
        "model.safetensors",
        "config.json",
        "items.json",
        "metrics.json",
        "curves.png",
    }
    model, item_ids, item_texts = load_checkpoint(out)
    assert item_ids[:2] == ["i0", "i1"] and item_texts[0] == "Film number 0. comedy"
    assert model.feature_spec == SPEC
    first = evaluate_model(model, split, "test")
    save_checkpoint(model, item_ids, item_texts, tmp_path / "again", {})
    again, _, _ = load_checkpoint(tmp_path / "again")
    torch.testing.assert_close(again.catalog_vectors(), model.catalog_vectors())
    assert evaluate_model(again, split, "test") == first
    assert json.loads((out / "metrics.json").read_text())["test"]["n_cases"] == 40


def test_cli_imports_without_torch():
    code = "import sys, encoders.cli; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def ml100k_split():
    if not ML100K.exists():
        pytest.fail(f"MovieLens-100k not at {ML100K} (see README: how to get it)")
    data = load_interactions(ML100K, FeatureSpec())
    return data, split_leave_one_out(data)


@pytest.mark.slow
def test_ml100k_beats_popularity():
    data, split = ml100k_split()
    model, metrics = train(RecommenderConfig(n_items=data.n_items), TrainConfig(max_minutes=3), split, progress=False)
    pop = evaluate_popularity(split)
    assert metrics["test"]["recbole"]["NDCG@10"] > pop.recbole["NDCG@10"]
    assert metrics["test"]["recbole"]["HR@10"] > pop.recbole["HR@10"]


@pytest.mark.slow
def test_ml100k_default_model_recalls_cold_items():
    """10% of the catalog never seen in training: the default model still ranks those items
    into the top 10 far more often than chance (popularity never does)."""
    data, split = ml100k_split()
    split = withhold_items(split, 0.1)
    model, _ = train(RecommenderConfig(n_items=data.n_items), TrainConfig(max_minutes=3), split, progress=False)
    hits = cases = 0
    for stage in ("valid", "test"):
        evaluation = evaluate_model(model, split, stage)
        hits += round(evaluation.cold_hr10 * evaluation.n_cold)
        cases += evaluation.n_cold
    chance = 10 / data.n_items
    assert hits / cases > 4 * chance, f"cold HR@10 {hits}/{cases} vs chance {chance:.4f}"


def test_transplant_keeps_residuals_by_item_id_and_starts_new_items_text_only(tmp_path):
    import torch

    from encoders.recommender import load_checkpoint, transplant
    from tests.support import small_two_tower_checkpoint

    source, ids, texts = load_checkpoint(small_two_tower_checkpoint(tmp_path / "ckpt", n_items=20))
    new_ids = [ids[5], "brand-new", ids[0]]
    model = transplant(source, ids, new_ids, [texts[5], "Brand New Movie (2026). Drama", texts[0]])
    with torch.no_grad():
        old, new = source.catalog_vectors(), model.catalog_vectors()
        torch.testing.assert_close(new[0], old[5])
        torch.testing.assert_close(new[2], old[0])
        assert not model.warm[1] and torch.equal(model.id_emb.weight[1], torch.zeros(16))
        source.repeat.copy_(torch.tensor([0.0, -1.0, -2.0, -3.0, -4.0]))
        torch.testing.assert_close(transplant(source, ids, new_ids, texts[:3]).repeat, source.repeat)
        torch.testing.assert_close(new[1], model.item_tower.new_item_vectors(model.text_emb[1:2])[0])
