"""The zero-training baseline version: plain pretrained sentence embeddings, no user tower.

`ItemTower(proj_dim=None)` (the text model's own pooling, L2-normalised; all-MiniLM-L6-v2
unless `text_model` names another) is exported as
item.onnx with its tokenizer; there is no user.onnx (kind "baseline"), so the worker
builds user vectors from item vectors itself. Same route as a trained model: export,
parity, then register; a parity failure registers nothing. Torch side.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import asdict

import numpy as np
import onnxruntime
import torch

from core.features import FeatureSpec
from core.model_config import ModelConfig
from encoders.item_tower import DEFAULT_TEXT_MODEL, ItemTower, ItemTowerConfig, text_model_dir
from export.artifacts import CANARY_SIZE, write_catalog, write_config, write_item_canary, write_json
from export.onnx_export import export_item_tower, item_onnx_config, save_tokenizer
from export.parity import ITEM_GRID, raise_if_failed, torch_item_vectors, validate_item_tower
from export.registry import ModelVersion, Registry

log = logging.getLogger(__name__)

# Checked through the runtime tokenizer when there is no catalog: accents, case, long text.
SAMPLE_TEXTS = [
    "Toy Story (1995). Animation, Children's, Comedy",
    "Amélie (2001). Comedy, Romance",
    "THE GODFATHER (1972)",
    "a very long description that goes on " * 8,
    "",
]


def hf_tokenizer_of(tower: ItemTower):
    """The tower's own Hugging Face tokenizer (what training tokenizes with)."""
    tok = getattr(tower, "tokenizer", None)
    if tok is None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(text_model_dir(tower.config.text_model_dir), local_files_only=True)
    return tok


def versions_info() -> dict:
    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def build_baseline_version(
    registry: Registry,
    catalog: list[tuple[str, str]] | None = None,
    *,
    text_model: str = "",
    max_tokens: int = ItemTowerConfig.max_tokens,
    make_latest: bool = True,
    version: str | None = None,
    parity_grid: dict | None = None,
) -> ModelVersion:
    """Export, check and register the baseline. catalog: (item_id, text) pairs, may be empty.

    text_model: a name in encoders.item_tower.TEXT_MODELS or a local Hugging Face encoder dir ("" = MiniLM).

    parity_grid: {"batch": (...), "tokens": (...)} for the random-input cases (default ITEM_GRID).
    """
    catalog = list(catalog or [])
    registry.check_writable()  # before loading and exporting anything
    tower = ItemTower(ItemTowerConfig(text_model_dir=text_model, proj_dim=None, max_tokens=max_tokens)).eval()
    hf_tok = hf_tokenizer_of(tower)
    dim = int(tower.lm.config.hidden_size)
    onnx_config = item_onnx_config(max_tokens)
    ids, texts = [i for i, _ in catalog], [t for _, t in catalog]

    with registry.staging() as staging:
        export_item_tower(tower, staging / "item.onnx", onnx_config)
        save_tokenizer(hf_tok, staging / "tokenizer.json", max_tokens)
        vectors = torch_item_vectors(tower, hf_tok, texts, max_tokens) if texts else np.zeros((0, dim), np.float32)
        write_catalog(staging, ids, vectors, dim)

        report = validate_item_tower(
            tower,
            hf_tok,
            staging / "item.onnx",
            staging / "tokenizer.json",
            onnx_config,
            texts=texts or SAMPLE_TEXTS,
            max_tokens=max_tokens,
            grid=parity_grid or ITEM_GRID,
            torch_vectors=vectors if texts else None,
        )
        log.info("parity %s", report.summary())
        raise_if_failed(report)
        if texts:  # the catalog's own vectors serve as the canary's reference
            write_item_canary(staging, texts, vectors)
        else:
            write_item_canary(
                staging, SAMPLE_TEXTS, torch_item_vectors(tower, hf_tok, SAMPLE_TEXTS[:CANARY_SIZE], max_tokens)
            )

        write_config(
            staging,
            ModelConfig(
                kind="baseline",
                dim=dim,
                max_tokens=max_tokens,
                normalized=True,  # item vectors are unit length: dot product = cosine
                feature_spec=FeatureSpec(),
                item_tower=asdict(tower.config),
                text_model=f"{text_model or DEFAULT_TEXT_MODEL}, {tower.config.pooling} pooling",
                opset=onnx_config.opset,
                created_with=versions_info(),
            ),
        )
        write_json(staging / "metrics.json", {"parity": {"item": report.to_dict()}})
        return registry.register(staging, version=version, make_latest=make_latest)
