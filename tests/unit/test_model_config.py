"""A model version's config.json: typed (core.model_config.ModelConfig), versioned, written by both
exporters; a config written before schema_version existed still reads, a newer one is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.errors import ConfigError, RegistryError
from core.features import FeatureSpec
from core.model_config import SCHEMA_VERSION, ModelConfig
from export.registry import Registry, sha256_file

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# config.json files as the exporters wrote them before schema_version (copied from real versions)
OLD = {"two_tower": FIXTURES / "config_v0_two_tower.json", "baseline": FIXTURES / "config_v0_baseline.json"}


def old_config(kind: str) -> dict:
    return json.loads(OLD[kind].read_text(encoding="utf-8"))


def test_old_two_tower_config_reads_as_version_0():
    config = ModelConfig.from_dict(old_config("two_tower"))
    assert config.schema_version == 0 and config.kind == "two_tower"
    assert config.dim == 64 and config.max_tokens == 32 and config.normalized is False and config.opset == 18
    assert config.feature_spec == FeatureSpec(("view", "click", "purchase"), 16, 50)
    assert config.user_tower["n_layers"] == 2 and config.item_tower["proj_dim"] == 64 and config.id_residual
    assert config.created_with["onnxruntime"] == "1.31.1"


def test_old_baseline_config_reads_as_version_0():
    config = ModelConfig.from_dict(old_config("baseline"))
    assert (config.schema_version, config.kind, config.dim, config.normalized) == (0, "baseline", 384, True)
    assert config.user_tower is None and config.text_model.startswith("all-MiniLM-L6-v2")


def test_version_0_fills_what_old_readers_defaulted():
    config = ModelConfig.from_dict({"kind": "baseline", "dim": 4})  # the smallest config the registry took
    assert config.feature_spec == FeatureSpec() and config.max_tokens is None


@pytest.mark.parametrize("kind", ["two_tower", "baseline"])
def test_what_the_exporters_write_now_is_version_1_with_the_same_values(kind):
    old = old_config(kind)
    new = ModelConfig(**{**old, "feature_spec": FeatureSpec.from_dict(old["feature_spec"])}).to_dict()
    assert new == {**old, "schema_version": SCHEMA_VERSION}  # only the version stamp is new
    assert ModelConfig.from_dict(new).schema_version == 1


def test_version_1_must_be_complete():
    complete = {**old_config("two_tower"), "schema_version": 1}
    ModelConfig.from_dict(complete)
    with pytest.raises(ConfigError, match=r"requires \['user_tower'\]"):
        ModelConfig.from_dict({k: v for k, v in complete.items() if k != "user_tower"})


def test_a_newer_schema_version_is_refused_clearly():
    with pytest.raises(ConfigError, match=r"schema_version 2, newer than this streamrec reads \(up to 1\).*Upgrade"):
        ModelConfig.from_dict({**old_config("baseline"), "schema_version": SCHEMA_VERSION + 1})


@pytest.mark.parametrize("bad", [-1, "1", True, 1.5])
def test_schema_version_must_be_a_non_negative_integer(bad):
    with pytest.raises(ConfigError, match="schema_version must be a non-negative integer"):
        ModelConfig.from_dict({**old_config("baseline"), "schema_version": bad})


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"dim": 0}, "dim"),
        ({"kind": "three_tower"}, "kind"),
        ({"feature_spec": {"max_len": "long"}}, "max_len"),
        ({"feature_spec": {"colour": 1}}, "unknown fields"),
    ],
)
def test_invalid_configs_name_the_field(change, problem):
    with pytest.raises(ConfigError, match=problem):
        ModelConfig.from_dict({**old_config("two_tower"), **change})


def test_extra_keys_are_kept():
    config = ModelConfig.from_dict({**old_config("baseline"), "note": "hello"})
    assert config.to_dict()["note"] == "hello"


def staged(registry: Registry, config: dict) -> Path:
    d = registry.new_staging_dir()
    for name in ("item.onnx", "user.onnx"):
        (d / name).write_bytes(b"placeholder")
    (d / "tokenizer.json").write_text("{}")
    np.save(d / "catalog_vectors.npy", np.ones((2, config["dim"]), np.float32), allow_pickle=False)
    (d / "catalog_ids.json").write_text('["a", "b"]')
    (d / "config.json").write_text(json.dumps(config))
    return d


def test_registry_loads_a_version_exported_before_schema_version(tmp_path):
    registry = Registry(tmp_path / "registry")
    d = staged(registry, old_config("two_tower"))
    shutil.copyfile(OLD["two_tower"], d / "config.json")  # byte for byte as the old exporter wrote it
    registry.register(d, version="old")
    v = registry.load("old")
    assert v.model_config.schema_version == 0 and v.kind == "two_tower" and v.config == old_config("two_tower")
    assert v.model_config.feature_spec.max_len == 50


def test_registry_refuses_a_version_from_a_newer_streamrec(tmp_path):
    registry = Registry(tmp_path / "registry")
    registry.register(staged(registry, old_config("two_tower")), version="v1")
    with pytest.raises(RegistryError, match="schema_version 2"):  # not even registered
        registry.register(staged(registry, {**old_config("two_tower"), "schema_version": 2}), version="v2")
    # a version that arrived some other way (copied in by a newer trainer) is refused on load, and says why
    config = registry.root / "v1" / "config.json"
    config.write_text(json.dumps({**old_config("two_tower"), "schema_version": 2}))
    manifest = json.loads((registry.root / "v1" / "manifest.json").read_text())
    manifest["files"]["config.json"] = {"sha256": sha256_file(config), "bytes": config.stat().st_size}
    (registry.root / "v1" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        RegistryError,
        match=r"'v1' .* cannot be served here: config.json has schema_version 2, "
        r"newer than this streamrec reads",
    ):
        registry.load("v1")


# --- FeatureSpec: one (de)serialiser ---------------------------------------------------------------


def test_feature_spec_round_trip():
    spec = FeatureSpec(("view", "like"), n_time_buckets=8, max_len=12)
    assert spec.to_dict() == {"event_types": ["view", "like"], "n_time_buckets": 8, "max_len": 12}
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    assert json.loads(json.dumps(spec.to_dict())) == spec.to_dict()


def test_feature_spec_missing_keys_take_defaults_and_unknown_keys_are_refused():
    assert FeatureSpec.from_dict({"max_len": 7}) == FeatureSpec(max_len=7)
    assert FeatureSpec.from_dict(None) == FeatureSpec()
    with pytest.raises(ConfigError, match="unknown fields"):
        FeatureSpec.from_dict({"max_len": 7, "n_positions": 3})
    with pytest.raises(ConfigError, match="event_types must be a list of strings"):
        FeatureSpec.from_dict({"event_types": "view"})
