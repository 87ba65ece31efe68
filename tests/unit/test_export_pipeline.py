"""export_and_register on a small real checkpoint (MiniLM + projection + user tower), and the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import export.pipeline
from core.errors import ParityError
from core.features import FeatureSpec
from export.registry import Registry
from export.runtime import load_runtime
from tests.support import ML100K as DATA
from tests.support import small_two_tower_checkpoint

SPEC = FeatureSpec(max_len=12)  # as in tests.support.small_two_tower_checkpoint

recommender = pytest.importorskip("encoders.recommender")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return small_two_tower_checkpoint(tmp_path_factory.mktemp("ckpt"))


def test_export_and_register_two_tower(checkpoint: Path, tmp_path: Path):
    data = DATA if DATA.is_dir() else None
    v = export.pipeline.export_and_register(checkpoint, tmp_path / "reg", data_dir=data)
    registry = Registry(tmp_path / "reg")
    assert registry.latest() == v.name and v.name.endswith("-tt")
    assert v.config["kind"] == "two_tower" and v.config["dim"] == 16 and v.config["max_tokens"] == 24
    assert v.config["feature_spec"] == {
        "event_types": ["view", "click", "purchase"],
        "n_time_buckets": 16,
        "max_len": 12,
    }
    assert (
        v.config["schema_version"] == 1
        and v.model_config.user_tower["dim"] == 16
        and v.model_config.id_residual is not None
    )
    parity = v.metrics["parity"]
    assert parity["item"]["ok"] and parity["user"]["ok"]
    assert parity["item"]["max_abs_diff"] <= 1e-4 and parity["user"]["max_abs_diff"] <= 1e-4
    assert all(r["agreement"] >= 0.999 for r in parity["user"]["rankings"])
    assert v.metrics["NDCG@10"] == 0.05 and "curves" not in v.metrics

    rt = load_runtime(registry.load())
    model, ids, texts = recommender.load_checkpoint(checkpoint)
    assert rt.catalog_ids == ids
    with torch.no_grad():
        np.testing.assert_allclose(rt.catalog_vectors, model.catalog_vectors().numpy(), atol=1e-6)
        cold = model.item_tower(*model.item_tower.tokenize(texts[-3:])).numpy()  # unwarmed: text only
    np.testing.assert_allclose(rt.item_encoder.encode(texts[-3:]), cold, atol=1e-4)

    B, T = 4, SPEC.max_len
    rng = np.random.default_rng(0)
    items = rng.integers(0, len(ids), (B, T))
    mask = np.ones((B, T), bool)
    mask[1, :7] = False
    ev = rng.integers(1, SPEC.n_event_ids, (B, T)) * mask
    tb = rng.integers(1, SPEC.n_time_buckets, (B, T)) * mask
    x = rt.catalog_vectors[items] * mask[..., None]
    with torch.no_grad():
        expected = model.user_tower(*(torch.from_numpy(a) for a in (x, ev, tb, mask))).numpy()
    np.testing.assert_allclose(rt.user_encoder.encode(x, ev, tb, mask), expected, atol=1e-4)


@pytest.mark.slow
def test_failing_user_export_registers_nothing(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from tests.unit.test_export_parity import perturb

    real = export.pipeline.export_user_tower

    def broken(tower, path, config, spec, dim):
        real(tower, path, config, spec, dim)
        shutil.move(path, path.with_suffix(".orig"))
        perturb(path.with_suffix(".orig"), path, scale=0.5)
        path.with_suffix(".orig").unlink()

    monkeypatch.setattr(export.pipeline, "export_user_tower", broken)
    with pytest.raises(ParityError, match="(?s)user.onnx.*max"):
        export.pipeline.export_and_register(checkpoint, tmp_path / "reg")
    assert Registry(tmp_path / "reg").versions() == [] and list((tmp_path / "reg").iterdir()) == []


def test_cli_models_list_and_export_errors(tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch):
    from export.cli import app

    runner = CliRunner()
    reg = tmp_path / "reg"
    out = runner.invoke(app, ["models", "list", "--registry", str(reg)])
    assert out.exit_code == 0 and "no model versions" in out.output

    def fail(*a, **k):
        raise ParityError("user.onnx: grid batch=1 window=1: max |ort - torch| = 1e-2 > atol 1e-04")

    monkeypatch.setattr(export.pipeline, "export_and_register", fail)
    out = runner.invoke(app, ["export", "--checkpoint", str(checkpoint), "--registry", str(reg)])
    assert out.exit_code == 1 and "max |ort - torch|" in out.output

    monkeypatch.setenv("STREAMREC_REGISTRY__PATH", str(reg))
    from tests.unit.test_export_registry import stage

    Registry(reg).register(stage(Registry(reg)), version="v1")
    out = runner.invoke(app, ["models", "list", "--verify"])
    assert out.exit_code == 0 and "* v1  baseline" in out.output and "verified" in out.output
