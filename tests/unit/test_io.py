"""core.io: the one atomic-write helper (temp file in the same directory, fsync, os.replace)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from core.io import atomic_write_bytes, atomic_write_json, atomic_write_text, json_text


def test_writes_replace_the_whole_file_world_readable(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "a much longer first version\n")
    atomic_write_text(path, "short\n")
    assert path.read_text() == "short\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    atomic_write_bytes(path, b"\x00\x01", mode=0o600)
    assert path.read_bytes() == b"\x00\x01" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temp file left


def test_json_layout(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"b": 1, "a": ["é"]})
    assert (tmp_path / "x.json").read_text(encoding="utf-8") == json_text({"b": 1, "a": ["é"]})
    assert json_text({"b": 1, "a": 2}) == '{\n  "a": 2,\n  "b": 1\n}\n'
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": ["é"], "b": 1}


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "latest"
    atomic_write_text(path, "old\n")

    def boom(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write_text(path, "new\n")
    monkeypatch.undo()
    with pytest.raises(TypeError):
        atomic_write_json(path, {"not serialisable": object()})
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]
