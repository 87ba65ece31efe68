"""Writing a version's plain artifacts into a staging dir: JSON and .npy, never pickles. Torch-free."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from export.features import FeatureSpec


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def write_catalog(staging: Path, ids: list[str], vectors: np.ndarray, dim: int) -> None:
    """catalog_ids.json + catalog_vectors.npy (float32 [N, D], same order); N may be 0."""
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"catalog item ids must be unique; duplicated: {dupes}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), dim)
    np.save(staging / "catalog_vectors.npy", vectors, allow_pickle=False)
    write_json(staging / "catalog_ids.json", ids)


def feature_spec_dict(spec: FeatureSpec) -> dict:
    d = asdict(spec)
    d["event_types"] = list(spec.event_types)
    return d
