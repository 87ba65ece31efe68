"""Checkpoint -> ONNX -> parity -> registry: what `streamrec train` ends with and `streamrec export` runs.

    export both towers into a staging dir inside the registry root
    write tokenizer, catalog vectors/ids, config, metrics
    parity: item.onnx over a grid and the whole catalog's text; user.onnx over a grid
            and real behaviour windows (top-10 over the catalog)
    any failure -> ParityError, staging removed, nothing registered
    register (manifest + atomic rename), optionally switch `latest`

Torch side.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from core.errors import ConfigError, ParityError
from core.features import FeatureSpec
from core.model_config import ModelConfig
from encoders.ranker import HEADS
from export.artifacts import (
    CANARY_SIZE,
    copy_checkpoint,
    write_catalog,
    write_config,
    write_item_canary,
    write_json,
    write_user_canary,
)
from export.baseline import hf_tokenizer_of, versions_info
from export.onnx_export import (
    export_item_tower,
    export_ranker,
    export_user_tower,
    item_onnx_config,
    ranker_onnx_config,
    save_tokenizer,
    user_onnx_config,
)
from export.parity import (
    ParityReport,
    WindowBatch,
    raise_if_failed,
    torch_item_vectors,
    torch_user_vectors,
    validate_item_tower,
    validate_ranker,
    validate_user_tower,
)
from export.registry import ModelVersion, Registry

log = logging.getLogger(__name__)

CACHE_ATOL = 1e-3  # stored text cache vs a fresh forward of the same LM (torch vs torch)


def windows_from_data(data_dir: str | Path, item_ids: list[str], spec: FeatureSpec, seed: int = 0) -> WindowBatch:
    """Real windows of varied length: per user the newest `max_len` events, and one random earlier cut."""
    from core.datasets import load_interactions, make_windows

    data = load_interactions(data_dir, spec)
    index = {item_id: i for i, item_id in enumerate(item_ids)}
    to_ckpt = np.array([index.get(i, -1) for i in data.item_ids], dtype=np.int64)  # data index -> checkpoint index
    rng = np.random.default_rng(seed)
    items, events, times = [], [], []
    for seq, ev, ts in zip(data.items, data.events, data.times):
        mapped = to_ckpt[seq]
        keep = mapped >= 0
        seq, ev, ts = mapped[keep], ev[keep], ts[keep]
        if not len(seq):
            continue
        end = int(rng.integers(1, len(seq) + 1))
        start = max(0, end - int(rng.integers(1, spec.max_len + 1)))
        for a, b in ((max(0, len(seq) - spec.max_len), len(seq)), (start, end)):
            items.append(seq[a:b]), events.append(ev[a:b]), times.append(ts[a:b])
    w = make_windows(items, events, times, spec)
    return WindowBatch(
        w.items.astype(np.int64), w.event_types.astype(np.int64), w.time_buckets.astype(np.int64), w.mask.astype(bool)
    )


def synthetic_windows(n_items: int, spec: FeatureSpec, n: int = 1000, seed: int = 0) -> WindowBatch:
    """Without data: catalog items in random windows of every length 1..max_len."""
    from core.datasets import make_windows

    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, spec.max_len + 1, size=n)
    items = [rng.integers(0, n_items, size=k) for k in lengths]
    events = [rng.integers(1, spec.n_event_ids, size=k) for k in lengths]
    times = [np.sort(rng.uniform(0, 3e7, size=k)) for k in lengths]
    w = make_windows(items, events, times, spec)
    return WindowBatch(
        w.items.astype(np.int64), w.event_types.astype(np.int64), w.time_buckets.astype(np.int64), w.mask.astype(bool)
    )


def check_text_cache(model, fresh_text_vectors: np.ndarray, report: ParityReport) -> None:
    """Stored catalog text vectors must equal a fresh item-tower forward, or new items live in another space."""
    with torch.no_grad():
        cached = model.item_tower.new_item_vectors(model.text_emb).float().numpy()
    diff = float(np.abs(cached - fresh_text_vectors).max()) if cached.size else 0.0
    report.cases.append(
        {
            "case": "checkpoint text cache vs fresh torch forward (torch only)",
            "shape": list(cached.shape),
            "max_abs_diff": 0.0,
            "cache_diff": diff,
            "ok": diff <= CACHE_ATOL,
        }
    )
    if diff > CACHE_ATOL:
        report.fail(
            f"the checkpoint's catalog text cache differs from a fresh item-tower forward by {diff:.2e} "
            f"(> {CACHE_ATOL:.0e}): catalog vectors and newly embedded items would not share a space; "
            f"refresh the cache (Recommender.encode_catalog) before saving the checkpoint"
        )


RANKER_PARITY_CASES = 256  # real candidate sets checked (users' test cases)


def export_checkpoint_ranker(
    model, item_ids: list[str], checkpoint_dir: Path, staging: Path, data_dir: str | Path | None
):
    """The checkpoint's ranker (its `ranker/` dir), if any, as ranker.onnx (+ its training files) in `staging`,
    with its parity on a grid and, given the data it was trained on (the same catalog), on real candidate
    sets (the retrieval's top N for test cases) -> (the config.json `ranker` entry, parity report), or None
    without a ranker."""
    from encoders.ranker import load_ranker

    ranker_dir = checkpoint_dir / "ranker"
    if not ranker_dir.is_dir():
        return None
    ranker = load_ranker(ranker_dir)
    config = ranker_onnx_config()
    export_ranker(ranker, staging / "ranker.onnx", config)
    for name in ("ranker.json", "ranker.safetensors"):
        shutil.copyfile(ranker_dir / name, staging / name)
    candidate_sets = None
    data = None
    if data_dir is not None:
        from core.datasets import load_interactions

        data = load_interactions(data_dir, model.feature_spec)
    if data is not None and data.item_ids == item_ids:
        from encoders.ranker_train import item_categories, leave_one_out_cases, ranking_set

        cases = leave_one_out_cases(data, "test")
        cases.users, cases.positions = cases.users[:RANKER_PARITY_CASES], cases.positions[:RANKER_PARITY_CASES]
        categories = item_categories(data_dir, data.item_ids)
        candidate_sets = ranking_set(ranker.config, model, data, cases, categories).features
    report = validate_ranker(ranker, staging / "ranker.onnx", config, candidate_sets=candidate_sets)
    entry = {
        "features": ranker.config.features.to_dict(),
        "heads": list(HEADS),
        "n_candidates": ranker.config.n_candidates,
    }
    return entry, report


def export_and_register(
    checkpoint_dir: str | Path,
    registry_root: str | Path,
    *,
    make_latest: bool = True,
    data_dir: str | Path | None = None,
    version: str | None = None,
) -> ModelVersion:
    """Export a trained checkpoint, prove parity, register it; returns the registered version.

    data_dir: interactions (e.g. ml-100k) for real parity windows; without it, synthetic
    windows over the checkpoint's catalog are used. Raises ParityError (nothing registered).
    """
    from encoders.recommender import load_checkpoint

    checkpoint_dir = Path(checkpoint_dir)
    registry = Registry(registry_root)
    registry.check_writable()  # before loading and exporting anything
    model, item_ids, item_texts = load_checkpoint(checkpoint_dir)
    if model.item_tower is None:
        raise ConfigError(
            f"{checkpoint_dir} is an ID-only model (use_text=False): it cannot embed new items, so it "
            f"is not servable; train with use_text=True to export"
        )
    spec: FeatureSpec = model.feature_spec
    item_cfg, user_cfg = model.config.item_tower, model.config.user_tower
    dim, max_tokens = int(user_cfg.dim), int(item_cfg.max_tokens)
    if item_cfg.proj_dim != dim:
        raise ConfigError(
            f"item tower width {item_cfg.proj_dim} != user tower width {dim} in {checkpoint_dir}: "
            f"train with the item projection as wide as the user tower"
        )
    hf_tok = hf_tokenizer_of(model.item_tower)
    item_onnx, user_onnx = item_onnx_config(max_tokens), user_onnx_config(spec)

    with registry.staging() as staging:
        export_item_tower(model.item_tower, staging / "item.onnx", item_onnx)
        export_user_tower(model.user_tower, staging / "user.onnx", user_onnx, spec, dim)
        save_tokenizer(hf_tok, staging / "tokenizer.json", max_tokens)
        with torch.no_grad():
            catalog = model.catalog_vectors().float().numpy()  # [N, D], what the worker scores against
        write_catalog(staging, item_ids, catalog, dim)

        text_vectors = torch_item_vectors(model.item_tower, hf_tok, item_texts, max_tokens)  # [N, D] reference
        item_report = validate_item_tower(
            model.item_tower,
            hf_tok,
            staging / "item.onnx",
            staging / "tokenizer.json",
            item_onnx,
            texts=item_texts,
            max_tokens=max_tokens,
            torch_vectors=text_vectors,
        )
        check_text_cache(model, text_vectors, item_report)
        windows = (
            windows_from_data(data_dir, item_ids, spec)
            if data_dir is not None
            else synthetic_windows(len(item_ids), spec)
        )
        user_report = validate_user_tower(
            model.user_tower, staging / "user.onnx", user_onnx, spec, catalog_torch=catalog, windows=windows
        )
        reports = [item_report, user_report]
        ranker = export_checkpoint_ranker(model, item_ids, checkpoint_dir, staging, data_dir)
        if ranker is not None:
            reports.append(ranker[1])
        for r in reports:
            log.info("parity %s", r.summary())
        try:
            raise_if_failed(*reports)
        except ParityError:
            log.error("parity failed for %s; nothing registered", checkpoint_dir)
            raise
        write_item_canary(staging, item_texts, text_vectors)
        canary = windows.head(CANARY_SIZE)
        write_user_canary(
            staging,
            canary.items,
            canary.event_types,
            canary.time_buckets,
            canary.mask,
            torch_user_vectors(model.user_tower, canary.vectors(catalog), canary),
        )
        copy_checkpoint(checkpoint_dir, staging)

        write_config(
            staging,
            ModelConfig(
                kind="two_tower",
                dim=dim,
                max_tokens=max_tokens,
                normalized=False,  # score = dot product
                feature_spec=spec,
                item_tower=asdict(item_cfg),
                user_tower=asdict(user_cfg),
                id_residual=bool(model.config.id_residual),
                opset=item_onnx.opset,
                source_checkpoint=str(checkpoint_dir.resolve()),
                created_with=versions_info(),
                ranker=None if ranker is None else ranker[0],
            ),
        )
        trained = {}
        if (checkpoint_dir / "metrics.json").is_file():
            trained = json.loads((checkpoint_dir / "metrics.json").read_text(encoding="utf-8"))
            trained.pop("curves", None)  # per-epoch lists stay with the checkpoint
        write_json(
            staging / "metrics.json",
            {
                **trained,
                "parity": {
                    "item": item_report.to_dict(),
                    "user": user_report.to_dict(),
                    "windows": "data" if data_dir is not None else "synthetic",
                    **({"ranker": ranker[1].to_dict()} if ranker is not None else {}),
                },
            },
        )
        return registry.register(staging, version=version, make_latest=make_latest)
