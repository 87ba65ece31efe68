"""Fine-tuning the top LM layer (`train_top_layers`) for real, with the real all-MiniLM-L6-v2: training moves
the top layer's weights and nothing below it, the checkpoint keeps them, and the exported item tower
(item.onnx, what the worker runs for an item without a trained vector) reproduces the fine-tuned torch tower,
text MLP included, not the pretrained one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.features import FeatureSpec
from encoders.config import ItemTowerConfig, RecommenderConfig, TrainConfig, UserTowerConfig
from encoders.item_tower import ItemTower
from encoders.recommender import load_checkpoint
from encoders.train import run
from export.pipeline import export_and_register
from export.runtime import load_runtime

GENRES = ["comedy", "drama", "horror", "action", "romance"]
SPEC = FeatureSpec(max_len=8)
MODEL = RecommenderConfig(
    item_tower=ItemTowerConfig(proj_dim=16, train_top_layers=1, text_mlp=8),
    user_tower=UserTowerConfig(dim=16, n_layers=1, max_len=8),
)
TRAIN = TrainConfig(epochs=2, batch_size=16, lm_lr=1e-3, patience=100, cold_items=0.2, features=SPEC)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """30 films; 40 users who walk the catalog in steps of +1 from a random start."""
    root = tmp_path_factory.mktemp("films")
    rng = np.random.default_rng(0)
    items = [{"item_id": f"i{i}", "title": f"Film number {i}", "categories": [GENRES[i % 5]]} for i in range(30)]
    events = [
        {"user_id": f"u{u}", "item_id": f"i{(start + t) % 30}", "event_type": "click", "ts": 1_700_000_000_000 + t}
        for u, start in enumerate(rng.integers(30, size=40))
        for t in range(12)
    ]
    (root / "items.jsonl").write_text("\n".join(map(json.dumps, items)))
    (root / "events.jsonl").write_text("\n".join(map(json.dumps, events)))
    return root


@pytest.fixture(scope="module")
def fine_tuned(data_dir, tmp_path_factory):
    """-> (checkpoint dir, loaded model, item texts); 20% of the catalog withheld, so some items are cold."""
    checkpoint = run(data_dir, tmp_path_factory.mktemp("ckpt") / "ckpt", MODEL, TRAIN)
    model, _, item_texts = load_checkpoint(checkpoint)
    return checkpoint, model, item_texts


def test_fine_tuning_moves_the_top_lm_layer_and_nothing_below(fine_tuned):
    _, model, _ = fine_tuned
    pretrained = dict(ItemTower(MODEL.item_tower).lm.named_parameters())
    top = f"encoder.layer.{len(model.item_tower.lm.encoder.layer) - 1}."
    moved, frozen = [], []
    for name, p in model.item_tower.lm.named_parameters():
        diff = (p - pretrained[name]).abs().max().item()
        (moved if name.startswith(top) else frozen).append((name, diff))
    print(f"top layer: {len(moved)} tensors, largest change {max(d for _, d in moved):.2e}; below: {len(frozen)}")
    assert all(d > 0 for _, d in moved), [n for n, d in moved if d == 0]  # every top-layer tensor trained
    assert all(d == 0 for _, d in frozen), [n for n, d in frozen if d > 0]


def test_exported_item_tower_reproduces_the_fine_tuned_tower(fine_tuned, data_dir, tmp_path):
    """What the worker computes for a new item (item.onnx over its text) equals what evaluation scores for a
    cold item (the fine-tuned tower through the text MLP), and differs from the pretrained LM's."""
    checkpoint, model, item_texts = fine_tuned
    version = export_and_register(checkpoint, tmp_path / "registry", data_dir=data_dir)  # parity inside
    served = load_runtime(version).item_encoder.encode(item_texts)  # [N, D]
    cold = ~model.warm
    assert cold.any() and model.warm.any()
    with torch.no_grad():
        scored = model.catalog_vectors()[cold].numpy()  # evaluation's vectors of the withheld items
        pretrained = ItemTower(MODEL.item_tower).eval()
        pretrained.proj.load_state_dict(model.item_tower.proj.state_dict())
        pretrained.mlp.load_state_dict(model.item_tower.mlp.state_dict())
        before = pretrained(*pretrained.tokenize(item_texts)).numpy()  # same heads over the pretrained LM
    parity, tuned = np.abs(served[cold] - scored).max(), np.abs(served - before).max()
    print(f"max |onnx - torch| over {int(cold.sum())} cold items {parity:.2e}; fine-tuned vs pretrained {tuned:.2e}")
    assert parity < 1e-4
    assert tuned > 100 * max(parity, 1e-6)
