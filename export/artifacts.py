"""Writing a version's plain artifacts into a staging dir: JSON and .npy, never pickles. Torch-free."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from core.errors import DataError
from core.io import atomic_write_json
from core.model_config import CONFIG_FILE, ModelConfig


def write_json(path: Path, data: object) -> Path:
    return atomic_write_json(path, data)


def write_config(staging: Path, config: ModelConfig) -> Path:
    """The version's config.json (`core.model_config`: typed, schema_version stamped)."""
    return write_json(staging / CONFIG_FILE, config.to_dict())


def write_catalog(staging: Path, ids: list[str], vectors: np.ndarray, dim: int) -> None:
    """catalog_ids.json + catalog_vectors.npy (float32 [N, D], same order); N may be 0."""
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise DataError(
            f"catalog item ids must be unique; duplicated: {dupes}: fix the catalog (items.jsonl / "
            f"*.item) so each item_id appears once"
        )
    vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), dim)
    np.save(staging / "catalog_vectors.npy", vectors, allow_pickle=False)
    write_json(staging / "catalog_ids.json", ids)


CANARY_SIZE = 16  # inputs a worker re-runs before it serves a version


def write_item_canary(staging: Path, texts: list[str], torch_vectors: np.ndarray) -> None:
    """A few item texts and the vectors torch gave them (canary_items.json + .npy)."""
    write_json(staging / "canary_items.json", list(texts[:CANARY_SIZE]))
    np.save(
        staging / "canary_item_vectors.npy", np.asarray(torch_vectors[:CANARY_SIZE], np.float32), allow_pickle=False
    )


def write_user_canary(
    staging: Path,
    rows: np.ndarray,
    event_types: np.ndarray,
    time_buckets: np.ndarray,
    mask: np.ndarray,
    torch_user_vectors: np.ndarray,
) -> None:
    """A few windows as catalog rows [4, U, T] (rows, event types, buckets, mask) and torch's user vectors."""
    windows = np.stack([rows, event_types, time_buckets, mask.astype(np.int64)])[:, :CANARY_SIZE]
    np.save(staging / "canary_windows.npy", windows.astype(np.int64), allow_pickle=False)
    np.save(
        staging / "canary_user_vectors.npy",
        np.asarray(torch_user_vectors[:CANARY_SIZE], np.float32),
        allow_pickle=False,
    )


# Checkpoint files carried inside a version (renamed to stay apart from the serving config),
# so `streamrec retrain` can warm-start from whatever is in production.
CHECKPOINT_FILES = {
    "model.safetensors": "model.safetensors",
    "config.json": "checkpoint_config.json",
    "items.json": "checkpoint_items.json",
}


def copy_checkpoint(checkpoint_dir: Path, staging: Path) -> None:
    for source, target in CHECKPOINT_FILES.items():
        shutil.copyfile(Path(checkpoint_dir) / source, staging / target)


def restore_checkpoint(version_dir: Path, out_dir: Path) -> Path:
    """The version's training checkpoint as a directory `encoders.recommender.load_checkpoint` reads."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for source, target in CHECKPOINT_FILES.items():
        shutil.copyfile(Path(version_dir) / target, out_dir / source)
    return out_dir
