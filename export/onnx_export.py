"""torch -> ONNX for the two towers (torch side; the worker never imports this).

After huggingface optimum's exporters: an `OnnxConfig` names the inputs and outputs,
their dynamic axes, pins the opset and carries the parity tolerance; `export_onnx`
only writes the file. Checking it is `export.parity`'s job, run separately.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch

from core.errors import ConfigError
from core.features import FeatureSpec

log = logging.getLogger(__name__)

OPSET = 18  # pinned; the torch.export-based exporter's lowest supported opset


@dataclass(frozen=True)
class OnnxConfig:
    """What an exported tower looks like from the outside, and how close it must stay to torch."""

    name: str  # file stem in the version dir: item.onnx, user.onnx
    inputs: dict[str, str]  # input name -> ONNX element type, in call order
    outputs: dict[str, str]  # output name -> ONNX element type
    dynamic_axes: dict[str, dict[int, str]]  # tensor name -> {axis: symbolic name}
    axis_max: dict[str, int] = field(default_factory=dict)  # symbolic name -> largest size allowed
    opset: int = OPSET
    atol: float = 1e-4  # max |onnxruntime - torch| per element, fp32
    top_k: int = 10  # rankings compared at this depth
    min_top_k_agreement: float = 0.999  # share of queries whose top-k must be identical


def item_onnx_config(max_tokens: int, atol: float = 1e-4) -> OnnxConfig:
    """item.onnx: input_ids, attention_mask int64 [B, L] -> item_vectors float32 [B, D]."""
    return OnnxConfig(
        name="item",
        inputs={"input_ids": "tensor(int64)", "attention_mask": "tensor(int64)"},
        outputs={"item_vectors": "tensor(float)"},
        dynamic_axes={
            "input_ids": {0: "batch", 1: "tokens"},
            "attention_mask": {0: "batch", 1: "tokens"},
            "item_vectors": {0: "batch"},
        },
        axis_max={"tokens": 512},  # BERT position table; runtime truncates to max_tokens anyway
        atol=atol,
    )


def user_onnx_config(spec: FeatureSpec, atol: float = 1e-4) -> OnnxConfig:
    """user.onnx: item_vectors f32 [B,T,D], event_types/time_buckets i64 [B,T], attention_mask bool [B,T] -> [B,D]."""
    seq = {0: "batch", 1: "window"}
    return OnnxConfig(
        name="user",
        inputs={
            "item_vectors": "tensor(float)",
            "event_types": "tensor(int64)",
            "time_buckets": "tensor(int64)",
            "attention_mask": "tensor(bool)",
        },
        outputs={"user_vectors": "tensor(float)"},
        dynamic_axes={
            "item_vectors": seq,
            "event_types": seq,
            "time_buckets": seq,
            "attention_mask": seq,
            "user_vectors": {0: "batch"},
        },
        axis_max={"window": spec.max_len},  # size of the position table
        atol=atol,
    )


def _dynamic_shapes(config: OnnxConfig) -> dict[str, dict[int, torch.export.Dim]]:
    dims: dict[str, torch.export.Dim] = {}
    for axes in config.dynamic_axes.values():
        for axis_name in axes.values():
            if axis_name not in dims:
                dims[axis_name] = torch.export.Dim(axis_name, min=1, max=config.axis_max.get(axis_name, 1 << 20))
    return {name: {axis: dims[a] for axis, a in config.dynamic_axes[name].items()} for name in config.inputs}


def export_onnx(
    module: torch.nn.Module,
    example_inputs: dict[str, torch.Tensor],
    path: str | Path,
    config: OnnxConfig,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write `module` as a single-file ONNX model with the config's names, axes and opset.

    `example_inputs` (keyed and ordered as config.inputs) only drive tracing; use sizes
    >= 2 on dynamic axes so the exporter does not specialise them to 1. `metadata`: extra
    metadata_props, beside the tower name, opset and torch version.
    """
    path = Path(path)
    if list(example_inputs) != list(config.inputs):
        raise ValueError(f"example inputs {list(example_inputs)} must match config inputs {list(config.inputs)}")
    module = module.eval()
    args = tuple(example_inputs.values())
    # onnx_ir and onnxscript log an INFO line per rewrite; torch warns about absent torchvision ops
    quiet = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx._internal.exporter._registration")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()) as out:
            warnings.simplefilter("ignore")  # exporter chatter (deprecations, axis renames); parity is the check
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                input_names=list(config.inputs),
                output_names=list(config.outputs),
                opset_version=config.opset,
                dynamic_shapes=_dynamic_shapes(config),
                external_data=False,
                optimize=True,
                verbose=False,
            )
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    log.debug("torch.onnx.export output for %s:\n%s", config.name, out.getvalue())
    model = program.model_proto
    model.doc_string = f"streamrec {config.name} tower"
    meta = {"streamrec.tower": config.name, "streamrec.opset": str(config.opset), "torch": torch.__version__}
    meta |= metadata or {}
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path))
    return path


def item_example_inputs(batch: int = 2, tokens: int = 8) -> dict[str, torch.Tensor]:
    ids = torch.randint(1000, 2000, (batch, tokens), dtype=torch.long)
    mask = torch.ones(batch, tokens, dtype=torch.long)
    mask[-1, tokens // 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def user_example_inputs(
    spec: FeatureSpec, dim: int, batch: int = 2, window: int | None = None
) -> dict[str, torch.Tensor]:
    T = window or min(8, spec.max_len)
    mask = torch.ones(batch, T, dtype=torch.bool)
    mask[-1, : T // 2] = False  # left padding
    return {
        "item_vectors": torch.randn(batch, T, dim),
        "event_types": torch.randint(1, spec.n_event_ids, (batch, T)) * mask,
        "time_buckets": torch.randint(1, spec.n_time_buckets, (batch, T)) * mask,
        "attention_mask": mask,
    }


def export_item_tower(tower: torch.nn.Module, path: str | Path, config: OnnxConfig) -> Path:
    """ItemTower (text -> vector, no ID residual) -> item.onnx. The pooling is part of the graph; it is also
    recorded as the model's metadata `streamrec.pooling`."""
    return export_onnx(tower, item_example_inputs(), path, config, {"streamrec.pooling": tower.config.pooling})


def export_user_tower(
    tower: torch.nn.Module, path: str | Path, config: OnnxConfig, spec: FeatureSpec, dim: int
) -> Path:
    """UserTower.forward -> user.onnx."""
    if spec.max_len < 2:
        raise ConfigError(
            f"feature_spec.max_len={spec.max_len}: the user tower needs windows of >= 2 to export; "
            f"train with --max-len 2 or more"
        )
    return export_onnx(tower, user_example_inputs(spec, dim), path, config)


def save_tokenizer(hf_tokenizer, path: str | Path, max_tokens: int) -> Path:
    """The trainer's own fast tokenizer as tokenizer.json, truncating to max_tokens, batch-longest padding."""
    backend = hf_tokenizer.backend_tokenizer  # a `tokenizers.Tokenizer`: exactly what the trainer ran
    tok = type(backend).from_str(backend.to_str())
    tok.enable_truncation(max_length=max_tokens)
    pad_id = hf_tokenizer.pad_token_id or 0
    tok.enable_padding(pad_id=pad_id, pad_token=hf_tokenizer.pad_token or "[PAD]")
    tok.save(str(path))
    return Path(path)


def ranker_onnx_config(atol: float = 1e-5) -> OnnxConfig:
    """ranker.onnx: features float32 [B, N, F] -> heads float32 [B, N, 2] (P(click), P(purchase))."""
    return OnnxConfig(
        name="ranker",
        inputs={"features": "tensor(float)"},
        outputs={"heads": "tensor(float)"},
        dynamic_axes={"features": {0: "batch", 1: "candidates"}, "heads": {0: "batch", 1: "candidates"}},
        atol=atol,
    )


def export_ranker(ranker: torch.nn.Module, path: str | Path, config: OnnxConfig) -> Path:
    """Ranker.forward (raw features in, both heads' probabilities out) -> ranker.onnx."""
    example = {"features": torch.randn(2, 3, ranker.config.features.n_features)}
    return export_onnx(ranker, example, path, config)
