"""Registry: round trip, refusal of corrupt/missing/escaping versions, atomic `latest`."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from core.errors import RegistryError, StreamrecError
from export.registry import MANIFEST, ModelVersion, Registry


def stage(registry: Registry, kind: str = "baseline", dim: int = 4, n: int = 3, **extra_config) -> Path:
    """A minimal, structurally complete version (contents are placeholders; the registry does not parse ONNX)."""
    d = registry.new_staging_dir()
    (d / "item.onnx").write_bytes(b"item-onnx-placeholder")
    if kind == "two_tower":
        (d / "user.onnx").write_bytes(b"user-onnx-placeholder")
    (d / "tokenizer.json").write_text("{}")
    np.save(d / "catalog_vectors.npy", np.ones((n, dim), np.float32), allow_pickle=False)
    (d / "catalog_ids.json").write_text(json.dumps([f"i{i}" for i in range(n)]))
    (d / "config.json").write_text(json.dumps({"kind": kind, "dim": dim, "max_tokens": 8, **extra_config}))
    (d / "metrics.json").write_text(json.dumps({"NDCG@10": 0.1}))
    return d


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


def test_round_trip(registry: Registry):
    v = registry.register(stage(registry, note="hello"))
    assert isinstance(v, ModelVersion)
    assert re.fullmatch(r"\d{8}T\d{6}Z-base", v.name)
    assert registry.versions() == [v.name] and registry.latest() == v.name
    loaded = registry.load()  # None = latest
    assert loaded.name == v.name and loaded.path == registry.root / v.name
    assert loaded.config["note"] == "hello" and loaded.metrics == {"NDCG@10": 0.1}
    assert loaded.file("item.onnx").read_bytes() == b"item-onnx-placeholder"
    assert np.load(loaded.file("catalog_vectors.npy"), allow_pickle=False).shape == (3, 4)
    manifest = json.loads((loaded.path / MANIFEST).read_text())
    assert set(manifest["files"]) == {
        "item.onnx",
        "tokenizer.json",
        "catalog_vectors.npy",
        "catalog_ids.json",
        "config.json",
        "metrics.json",
    }
    assert all(len(e["sha256"]) == 64 for e in manifest["files"].values())
    assert len(v.sha256) == 64
    assert not [p for p in registry.root.iterdir() if p.name.startswith(".")]  # staging and temp files gone


def test_baseline_has_no_user_tower(registry: Registry):
    v = registry.register(stage(registry))
    assert not v.has("user.onnx")
    with pytest.raises(RegistryError, match="no file 'user.onnx'"):
        v.file("user.onnx")


def test_versions_sorted_oldest_first_and_latest_optional(registry: Registry):
    for name in ("zeta", "alpha", "mid"):
        registry.register(stage(registry), version=name, make_latest=name == "zeta")
    assert registry.versions() == ["zeta", "alpha", "mid"]  # registration order, not alphabetical
    assert registry.latest() == "zeta"
    registry.set_latest("mid")
    assert registry.load().name == "mid"


def test_corrupt_file_refused(registry: Registry):
    v = registry.register(stage(registry))
    path = v.path / "catalog_vectors.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match=r"(?s)corrupt.*catalog_vectors.npy: checksum mismatch"):
        registry.load(v.name)


def test_missing_file_refused(registry: Registry):
    v = registry.register(stage(registry, kind="two_tower"))
    (v.path / "user.onnx").unlink()
    with pytest.raises(RegistryError, match="user.onnx: missing"):
        registry.load(v.name)


def test_all_problems_reported_at_once(registry: Registry):
    v = registry.register(stage(registry))
    (v.path / "tokenizer.json").unlink()
    (v.path / "item.onnx").write_bytes(b"tampered")
    with pytest.raises(RegistryError) as err:
        registry.load(v.name)
    assert "tokenizer.json: missing" in str(err.value) and "item.onnx: checksum mismatch" in str(err.value)


def test_incomplete_version_refused_and_not_listed(registry: Registry):
    d = stage(registry)
    os.rename(d, registry.root / "half-written")  # no manifest: never registered
    assert registry.versions() == []
    with pytest.raises(RegistryError, match="incomplete"):
        registry.load("half-written")
    with pytest.raises(RegistryError, match="incomplete"):
        registry.set_latest("half-written")


def test_unknown_and_no_latest(registry: Registry):
    with pytest.raises(RegistryError, match="no latest version.*bootstrap"):
        registry.load()
    registry.register(stage(registry), version="v1")
    with pytest.raises(RegistryError, match=r"'v2' not found.*versions: v1"):
        registry.load("v2")


@pytest.mark.parametrize("name", ["../x", "..", "/etc", "/tmp/x", "a/b", "", ".hidden", "latest", "x\n", "a\\b"])
def test_path_escape_refused(registry: Registry, name: str):
    registry.register(stage(registry), version="ok")
    for call in (
        lambda: registry.load(name),
        lambda: registry.set_latest(name),
        lambda: registry.register(stage(registry), version=name),
        lambda: registry.version_path(name),
    ):
        with pytest.raises(RegistryError, match="invalid model version name"):
            call()


def test_latest_pointer_cannot_escape(registry: Registry, tmp_path: Path):
    registry.register(stage(registry), version="ok")
    (registry.root / "latest").write_text("../outside\n")
    with pytest.raises(RegistryError, match="invalid model version name"):
        registry.load()


def test_symlinked_version_outside_root_refused(registry: Registry, tmp_path: Path):
    registry.register(stage(registry), version="real")
    outside = tmp_path / "outside"
    os.rename(registry.root / "real", outside)
    (registry.root / "real").symlink_to(outside)
    with pytest.raises(RegistryError, match="outside the registry root"):
        registry.load("real")


def test_register_refuses_pickles_and_missing_parts(registry: Registry):
    d = stage(registry)
    (d / "weights.pkl").write_bytes(b"\x80\x04")
    with pytest.raises(RegistryError, match=r"weights.pkl: not an allowed artifact type"):
        registry.register(d)
    d2 = stage(registry, kind="two_tower")
    (d2 / "user.onnx").unlink()
    with pytest.raises(RegistryError, match="user.onnx: required for kind 'two_tower'"):
        registry.register(d2)
    d3 = stage(registry, kind="mystery")
    with pytest.raises(RegistryError, match="kind 'mystery'"):
        registry.register(d3)
    assert registry.versions() == [] and registry.latest() is None


def test_register_refuses_existing_name(registry: Registry):
    registry.register(stage(registry), version="v1")
    with pytest.raises(RegistryError, match="already exists"):
        registry.register(stage(registry), version="v1")


def test_register_copies_staging_from_outside_root(registry: Registry, tmp_path: Path):
    d = stage(registry)
    outside = tmp_path / "elsewhere"
    os.rename(d, outside)
    v = registry.register(outside, version="copied")
    assert registry.load("copied").file("item.onnx").is_file() and v.name == "copied"


def test_latest_switch_is_atomic(registry: Registry, monkeypatch: pytest.MonkeyPatch):
    registry.register(stage(registry), version="a")
    registry.register(stage(registry), version="b", make_latest=False)
    assert registry.latest() == "a"

    # readers racing the switch only ever see a complete name
    seen, stop = set(), threading.Event()

    def read():
        while not stop.is_set():
            seen.add(registry.latest())

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(200):
        registry._write_latest("b" if i % 2 else "a")
    stop.set()
    reader.join()
    assert seen <= {"a", "b"}

    # a crash at the rename leaves the old pointer and no temp file
    registry.set_latest("a")

    def boom(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        registry.set_latest("b")
    monkeypatch.undo()
    assert registry.latest() == "a"
    assert [p.name for p in registry.root.iterdir() if p.is_file()] == ["latest"]


def test_errors_share_a_base():
    assert issubclass(RegistryError, StreamrecError)
