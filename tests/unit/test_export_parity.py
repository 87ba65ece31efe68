"""Export + parity on the real MiniLM item tower and a small user tower; parity must be able to fail."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

import export.baseline
from core.errors import ParityError
from core.features import FeatureSpec
from encoders.config import RankerConfig
from encoders.ranker import Ranker
from export.baseline import SAMPLE_TEXTS, build_baseline_version, hf_tokenizer_of
from export.onnx_export import (
    OPSET,
    export_item_tower,
    export_onnx,
    export_ranker,
    export_user_tower,
    item_onnx_config,
    ranker_onnx_config,
    save_tokenizer,
    user_example_inputs,
    user_onnx_config,
)
from export.parity import (
    ParityReport,
    compare_rankings,
    raise_if_failed,
    validate_item_tower,
    validate_ranker,
    validate_user_tower,
)
from export.registry import Registry
from export.runtime import load_runtime

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-100k"
SMALL_ITEM_GRID = {"batch": (1, 3), "tokens": (1, 7, 32)}
SMALL_USER_GRID = {"batch": (1, 5, 64), "window": (1, 3, 12)}
SPEC = FeatureSpec(max_len=12)


def catalog_texts(n: int = 40) -> list[str]:
    """Real ml-100k titles + genres when the data is present, else fixed samples."""
    if not (DATA / "ml-100k.item").is_file():
        return SAMPLE_TEXTS
    from core.datasets import load_interactions

    return load_interactions(DATA, FeatureSpec()).item_texts[:n]


class StandInUserTower(nn.Module):
    """Small causal-attention stand-in with UserTower.forward's signature.

    Its `pos(torch.arange(T - 1, -1, -1))` is what onnxruntime's GatherToSliceFusion
    miscompiles (export.runtime.DISABLED_OPTIMIZERS): these tests fail if it comes back.
    """

    def __init__(self, dim: int = 16, spec: FeatureSpec = SPEC):
        super().__init__()
        self.event = nn.Embedding(spec.n_event_ids, dim, padding_idx=0)
        self.time = nn.Embedding(spec.n_time_buckets, dim, padding_idx=0)
        self.pos = nn.Embedding(spec.max_len, dim)
        self.qk = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, item_vectors, event_types, time_buckets, attention_mask):
        B, T, C = item_vectors.size()  # batch, window, channels
        x = item_vectors + self.event(event_types) + self.time(time_buckets) + self.pos(torch.arange(T - 1, -1, -1))
        q, k = self.qk(x).split(C, dim=2)
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        allowed = (causal & attention_mask[:, None, :]) | torch.eye(T, dtype=torch.bool)  # [B, T, T]
        att = (q @ k.transpose(1, 2) / C**0.5).masked_fill(~allowed, float("-inf")).softmax(-1)
        return self.out((att @ x)[:, -1])  # [B, D]


def perturb(src: Path, dst: Path, scale: float = 1e-2) -> Path:
    """Copy an ONNX model with noise added to its largest float initializer."""
    model = onnx.load(str(src))
    inits = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    target = max(inits, key=lambda t: np.prod(t.dims))
    w = numpy_helper.to_array(target)
    w = w + np.random.default_rng(0).normal(0, scale, w.shape).astype(np.float32)
    target.CopyFrom(numpy_helper.from_array(w, target.name))
    onnx.save_model(model, str(dst))
    return dst


def ranking_report(expected: np.ndarray, actual: np.ndarray) -> ParityReport:
    """compare_rankings at top-3 over [Q, N] scores; queries are rows."""
    report = ParityReport("item", atol=1e-4)
    compare_rankings(report, "scores", expected, actual, dataclasses.replace(item_onnx_config(32), top_k=3))
    return report


def tied_scores(n_queries: int = 8) -> np.ndarray:
    """Items 2 and 3 share the 3rd place (identical text, like ml-100k's 297 and 303, both "Ulee's Gold")."""
    row = np.array([0.9, 0.8, 0.5, 0.5 - 1e-6, 0.1, 0.0, -0.2], dtype=np.float32)
    return np.tile(row, (n_queries, 1))


def test_rankings_treat_items_tied_at_the_cut_as_interchangeable():
    expected = tied_scores()
    actual = expected.copy()
    actual[:, 3] += 2e-6  # ONNX Runtime's rounding puts the twin first: top-3 {0, 1, 3} vs torch's {0, 1, 2}
    report = ranking_report(expected, actual)
    assert report.ok, report.failures
    assert report.rankings[0]["agreement"] == 1.0
    assert report.rankings[0]["exact_set_agreement"] == 0.0


@pytest.mark.parametrize(
    "dropped, added, new_score",
    [(2, 4, 0.6), (0, 4, 0.95)],  # a distinct 3rd item swapped for a lower one; the best item dropped
    ids=["below-the-cut", "best-item"],
)
def test_rankings_still_fail_on_a_real_difference(dropped: int, added: int, new_score: float):
    expected = tied_scores()
    expected[:, 3] = 0.4  # no tie
    actual = expected.copy()
    actual[0, added] = new_score
    actual[0, dropped] = 0.3
    report = ranking_report(expected, actual)
    assert not report.ok
    assert report.rankings[0]["agreement"] == 7 / 8


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """MiniLM baseline tower, exported once for the module."""
    from encoders.item_tower import ItemTower, ItemTowerConfig

    tower = ItemTower(ItemTowerConfig(proj_dim=None, max_tokens=32)).eval()
    hf_tok = hf_tokenizer_of(tower)
    d = tmp_path_factory.mktemp("item")
    config = item_onnx_config(32)
    export_item_tower(tower, d / "item.onnx", config)
    save_tokenizer(hf_tok, d / "tokenizer.json", 32)
    return tower, hf_tok, config, d


def test_item_export_signature(minilm):
    _, _, config, d = minilm
    model = onnx.load(str(d / "item.onnx"), load_external_data=False)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in model.graph.output] == ["item_vectors"]
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {OPSET}
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert all(isinstance(x, str) and x for x in dims)  # batch and tokens both dynamic
    assert not list(d.glob("*.data"))  # single file, no external data


def test_item_parity_passes_on_real_text(minilm):
    tower, hf_tok, config, d = minilm
    report = validate_item_tower(
        tower,
        hf_tok,
        d / "item.onnx",
        d / "tokenizer.json",
        config,
        texts=catalog_texts(),
        max_tokens=32,
        grid=SMALL_ITEM_GRID,
    )
    assert report.ok, report.failures
    assert 0 < report.max_abs_diff <= 1e-4
    assert len(report.cases) == 7  # 6 grid cases + the catalog text
    assert report.rankings and report.rankings[0]["agreement"] == 1.0
    raise_if_failed(report)  # no-op


def test_item_parity_fails_when_onnx_weights_perturbed(minilm, tmp_path: Path):
    tower, hf_tok, config, d = minilm
    bad = perturb(d / "item.onnx", tmp_path / "item.onnx")
    report = validate_item_tower(
        tower,
        hf_tok,
        bad,
        d / "tokenizer.json",
        config,
        texts=SAMPLE_TEXTS,
        max_tokens=32,
        grid={"batch": (2,), "tokens": (5,)},
    )
    assert not report.ok
    assert report.max_abs_diff > 1e-4
    assert any("max |ort - torch|" in f for f in report.failures)
    with pytest.raises(ParityError, match=r"(?s)NOT registered.*grid batch=2 tokens=5.*catalog text"):
        raise_if_failed(report)


def test_item_parity_catches_a_wrong_tokenizer(minilm, tmp_path: Path):
    tower, hf_tok, config, d = minilm
    save_tokenizer(hf_tok, tmp_path / "tokenizer.json", 4)  # truncates differently from max_tokens=32
    report = validate_item_tower(
        tower,
        hf_tok,
        d / "item.onnx",
        tmp_path / "tokenizer.json",
        config,
        texts=SAMPLE_TEXTS,
        max_tokens=8,
        grid={"batch": (1,), "tokens": (2,)},
    )
    # load_tokenizer re-applies max_tokens=8, so ids agree; a *different vocabulary* must not:
    assert report.ok, report.failures
    spec = json.loads((d / "tokenizer.json").read_text())
    spec["normalizer"]["lowercase"] = False  # a cased tokenizer against an uncased model
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    report = validate_item_tower(
        tower,
        hf_tok,
        d / "item.onnx",
        tmp_path / "tokenizer.json",
        config,
        texts=["THE GODFATHER (1972)"],
        max_tokens=32,
        grid={"batch": (1,), "tokens": (2,)},
    )
    assert any("tokenizer.json disagrees" in f for f in report.failures)


@pytest.fixture(scope="module")
def user_tower(tmp_path_factory):
    torch.manual_seed(0)
    tower = StandInUserTower().eval()
    d = tmp_path_factory.mktemp("user")
    config = user_onnx_config(SPEC)
    export_user_tower(tower, d / "user.onnx", config, SPEC, 16)
    catalog = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    return tower, config, d / "user.onnx", catalog


def real_like_windows(n_items: int):
    from export.pipeline import synthetic_windows

    return synthetic_windows(n_items, SPEC, n=200)


def test_user_export_and_parity(user_tower):
    tower, config, path, catalog = user_tower
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["item_vectors", "event_types", "time_buckets", "attention_mask"]
    assert [o.name for o in model.graph.output] == ["user_vectors"]
    report = validate_user_tower(
        tower, path, config, SPEC, catalog_torch=catalog, windows=real_like_windows(len(catalog)), grid=SMALL_USER_GRID
    )
    assert report.ok, report.failures
    assert report.max_abs_diff <= 1e-4
    assert report.rankings[0]["queries"] == 200 and report.rankings[0]["agreement"] >= 0.999


def test_user_parity_fails_when_onnx_weights_perturbed(user_tower, tmp_path: Path):
    tower, config, path, catalog = user_tower
    bad = perturb(path, tmp_path / "user.onnx", scale=0.5)
    report = validate_user_tower(
        tower, bad, config, SPEC, catalog_torch=catalog, windows=real_like_windows(len(catalog)), grid=SMALL_USER_GRID
    )
    assert not report.ok
    assert any("max |ort - torch|" in f for f in report.failures)
    assert any("top-10 identical for only" in f for f in report.failures)
    with pytest.raises(ParityError):
        raise_if_failed(report)


def test_user_parity_fails_on_wrong_output_name(user_tower, tmp_path: Path):
    tower, config, _, catalog = user_tower
    wrong = user_onnx_config(SPEC)
    object.__setattr__(wrong, "outputs", {"user_embedding_out": "tensor(float)"})
    object.__setattr__(wrong, "dynamic_axes", {**wrong.dynamic_axes, "user_embedding_out": {0: "batch"}})
    del wrong.dynamic_axes["user_vectors"]
    export_onnx(tower, user_example_inputs(SPEC, 16), tmp_path / "user.onnx", wrong)
    report = validate_user_tower(
        tower, tmp_path / "user.onnx", config, SPEC, catalog_torch=catalog, grid=SMALL_USER_GRID
    )
    assert report.failures == ["user.onnx: output names ['user_embedding_out'] != expected ['user_vectors']"]


def test_real_user_tower_exports_if_present(tmp_path: Path):
    """The project's UserTower (encoders/user_tower.py), small config."""
    mod = pytest.importorskip("encoders.user_tower")
    torch.manual_seed(1)
    tower = mod.UserTower(
        mod.UserTowerConfig(
            dim=16, n_layers=1, max_len=SPEC.max_len, n_event_ids=SPEC.n_event_ids, n_time_buckets=SPEC.n_time_buckets
        )
    ).eval()
    config = user_onnx_config(SPEC)
    export_user_tower(tower, tmp_path / "user.onnx", config, SPEC, 16)
    catalog = np.random.default_rng(1).standard_normal((100, 16)).astype(np.float32)
    report = validate_user_tower(
        tower,
        tmp_path / "user.onnx",
        config,
        SPEC,
        catalog_torch=catalog,
        windows=real_like_windows(100),
        grid=SMALL_USER_GRID,
    )
    assert report.ok, report.failures


def test_baseline_version_end_to_end(minilm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """build_baseline_version -> registry -> load_runtime; reuses the module's export to stay fast."""
    _, _, _, d = minilm
    monkeypatch.setattr(
        export.baseline, "export_item_tower", lambda tower, path, config: shutil.copy(d / "item.onnx", path)
    )
    registry = Registry(tmp_path / "reg")
    ids_texts = [(f"i{i}", t) for i, t in enumerate(catalog_texts(12))]
    v = build_baseline_version(registry, ids_texts, parity_grid=SMALL_ITEM_GRID)
    assert v.config["kind"] == "baseline" and v.config["dim"] == 384 and not v.has("user.onnx")
    assert v.config["schema_version"] == 1 and v.model_config.normalized and v.model_config.max_tokens
    assert v.metrics["parity"]["item"]["ok"] and v.metrics["parity"]["item"]["max_abs_diff"] <= 1e-4
    rt = load_runtime(registry.load())
    assert rt.user_encoder is None and rt.catalog_ids == [i for i, _ in ids_texts]
    encoded = rt.item_encoder.encode([t for _, t in ids_texts])
    np.testing.assert_allclose(encoded, rt.catalog_vectors, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(encoded, axis=1), 1.0, atol=1e-5)

    empty = build_baseline_version(registry, None, make_latest=False, parity_grid=SMALL_ITEM_GRID)  # no catalog: [0, D]
    assert registry.load(empty.name).file("catalog_vectors.npy").is_file()
    assert np.load(empty.file("catalog_vectors.npy"), allow_pickle=False).shape == (0, 384)
    assert registry.latest() == v.name


def test_failing_export_registers_nothing(minilm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _, _, _, d = minilm
    bad = perturb(d / "item.onnx", tmp_path / "bad.onnx")
    monkeypatch.setattr(export.baseline, "export_item_tower", lambda tower, path, config: shutil.copy(bad, path))
    registry = Registry(tmp_path / "reg")
    with pytest.raises(ParityError, match="NOT registered"):
        build_baseline_version(registry, [("a", "Toy Story (1995)"), ("b", "Heat (1995)")], parity_grid=SMALL_ITEM_GRID)
    assert registry.versions() == [] and registry.latest() is None
    assert list(registry.root.iterdir()) == []  # staging removed


def test_residual_ranker_export_and_parity(tmp_path: Path):
    """With `residual`, the logits add the raw retrieval-gap column: the exported graph does too
    (the plain ranker's export: tests/unit/test_ranking_serving.py, a slow test)."""
    torch.manual_seed(0)
    ranker = Ranker(RankerConfig(residual=True))
    ranker.fit_standardisation(np.random.default_rng(0).normal(size=(50, ranker.config.features.n_features)))
    for p in ranker.parameters():
        nn.init.normal_(p, std=0.3)  # as if trained: the correction starts at zero
    config = ranker_onnx_config()
    path = export_ranker(ranker, tmp_path / "ranker.onnx", config)
    report = validate_ranker(ranker, path, config, grid={"batch": (1, 4), "candidates": (1, 17)})
    assert report.ok, report.failures
