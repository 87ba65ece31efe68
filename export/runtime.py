"""ONNX Runtime inference for the worker: sessions, item and user encoders. No torch.

`make_session` is the one place that builds an `onnxruntime.InferenceSession`:

- CUDA when it can really run. `onnxruntime-gpu` lists CUDAExecutionProvider in
  `get_available_providers()` even on a machine without a GPU or CUDA libraries, so
  that list proves nothing. We ask the driver for a device first (no driver, no GPU:
  straight to CPU, silently), then check which provider the session actually got.
- All graph optimisations on (but one that miscompiles, see DISABLED_OPTIMIZERS); intra-op threads from the caller, default 1: two threads
  help ~1.5x on an idle machine but collapse when another process competes for the
  cores (docs/DESIGN: torch at batch 1 went from 0.35 ms to 170 ms). Spinning off, so an
  idle worker does not burn the cores it shares.
- One warm-up run, so the first real batch does not pay for lazy initialisation.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from core.errors import ConfigError, ParityError, RegistryError
from core.features import FeatureSpec
from core.ranking_features import RankingFeatureSpec
from export.registry import ModelVersion

log = logging.getLogger(__name__)

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
Device = Literal["auto", "cpu", "cuda"]
# onnxruntime 1.31.1's GatherToSliceFusion rewrites Gather(table, Range(T-1, -1, -1)) into
# Slice(table, T-1, -1, -1), but Slice reads end=-1 as "the last row", so the result is empty:
# a user tower indexing positions "from the newest event" (torch.arange(T-1, -1, -1)) fails.
# Found by the parity tests (tests/unit/test_export_parity.py::StandInUserTower).
DISABLED_OPTIMIZERS = ["GatherToSliceFusion"]
_NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
    "tensor(int32)": np.int32,
    "tensor(double)": np.float64,
}


@cache
def cuda_device_count() -> int:
    """GPUs the CUDA driver reports (0 without a driver or a device); never raises."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    except (OSError, AttributeError):
        return 0


def session_options(intra_op_threads: int = 1, inter_op_threads: int = 1) -> ort.SessionOptions:
    if intra_op_threads < 1 or inter_op_threads < 1:
        raise ConfigError(
            f"thread counts must be >= 1, got intra={intra_op_threads} inter={inter_op_threads}: "
            f"set STREAMREC_WORKER__INFERENCE_THREADS to 1 or more"
        )
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = inter_op_threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3  # errors only
    return so


def _try_cuda(path: str, so: ort.SessionOptions) -> ort.InferenceSession | None:
    """A CUDA session if the provider really initialises, else None (its load errors muted)."""
    ort.set_default_logger_severity(4)  # a failed CUDA provider load logs an ERROR per session
    try:
        session = ort.InferenceSession(
            path, sess_options=so, providers=[CUDA, CPU], disabled_optimizers=DISABLED_OPTIMIZERS
        )
    except Exception as e:  # noqa: BLE001 - any failure here means "use the CPU"
        log.info("CUDA session for %s failed (%s); using the CPU", path, e)
        return None
    finally:
        ort.set_default_logger_severity(2)  # onnxruntime's default: warnings
    if session.get_providers()[0] != CUDA:
        log.info("onnxruntime could not initialise CUDA for %s (got %s); using the CPU", path, session.get_providers())
        return None
    return session


def make_session(
    path: str | Path,
    intra_op_threads: int = 1,
    *,
    inter_op_threads: int = 1,
    device: Device = "auto",
    warmup: bool = True,
) -> ort.InferenceSession:
    """The one place that builds an InferenceSession (see module docstring)."""
    path = str(path)
    if not os.path.isfile(path):
        raise RegistryError(f"ONNX model {path} does not exist")
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    so = session_options(intra_op_threads, inter_op_threads)
    session = None
    wants_cuda = device != "cpu" and CUDA in ort.get_available_providers()
    if wants_cuda and cuda_device_count() > 0:
        session = _try_cuda(path, so)
    if session is None:
        if device == "cuda":
            raise ConfigError(
                f"device='cuda' requested but CUDA is not usable here for {path} "
                f"(driver devices: {cuda_device_count()}); use device='auto' or 'cpu'"
            )
        session = ort.InferenceSession(path, sess_options=so, providers=[CPU], disabled_optimizers=DISABLED_OPTIMIZERS)
    log.info("onnxruntime session %s on %s (intra-op threads %d)", path, session.get_providers()[0], intra_op_threads)
    if warmup:
        warm_up(session)
    return session


def warm_up(session: ort.InferenceSession, dims: dict[str, int] | None = None) -> None:
    """Run once on ones-filled inputs; symbolic axes take `dims[name]` or 2."""
    dims = dims or {}
    feeds = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else dims.get(str(d), 2) for d in inp.shape]
        feeds[inp.name] = np.ones(shape, dtype=_NP_TYPES.get(inp.type, np.float32))
    session.run(None, feeds)


def provider(session: ort.InferenceSession) -> str:
    """The execution provider the session actually runs on."""
    return session.get_providers()[0]


# --- encoders --------------------------------------------------------------------------------


def load_tokenizer(path: str | Path, max_tokens: int) -> Tokenizer:
    """tokenizer.json, truncating to `max_tokens` and padding each batch to its longest text."""
    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(max_length=max_tokens)
    pad_id = tok.token_to_id("[PAD]")
    pad_id = 0 if pad_id is None else pad_id
    tok.enable_padding(pad_id=pad_id, pad_token=tok.id_to_token(pad_id) or "[PAD]")
    return tok


class ItemEncoder:
    """Text -> item vectors: `tokenizers` + item.onnx. Inputs input_ids/attention_mask int64 [B, L]."""

    def __init__(self, session: ort.InferenceSession, tokenizer: Tokenizer, dim: int, batch_size: int = 64):
        self.session, self.tokenizer, self.dim, self.batch_size = session, tokenizer, dim, batch_size

    @classmethod
    def from_version(cls, version: ModelVersion, intra_op_threads: int = 1, **session_kw) -> ItemEncoder:
        config = version.model_config
        if config.max_tokens is None:
            raise RegistryError(
                f"model version {version.name}: config.json has no max_tokens (tokens per item text); re-export it"
            )
        tokenizer = load_tokenizer(version.file("tokenizer.json"), config.max_tokens)
        session = make_session(version.file("item.onnx"), intra_op_threads, **session_kw)
        return cls(session, tokenizer, config.dim)

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """texts -> (input_ids, attention_mask), int64 [B, L], L = longest text (<= max_tokens)."""
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return ids, mask

    def encode(self, texts: list[str]) -> np.ndarray:
        """[N] texts -> [N, D] float32; batches internally, shortest texts together."""
        if isinstance(texts, str):
            raise TypeError("ItemEncoder.encode takes a list of texts, not one string")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids, mask = self.tokenize(texts)  # right-padded to the longest text overall
        lengths = mask.sum(axis=1)
        order = np.argsort(lengths, kind="stable")  # similar lengths together: less padding per batch
        for start in range(0, len(texts), self.batch_size):
            idx = order[start : start + self.batch_size]
            L = max(int(lengths[idx].max()), 1)
            out[idx] = self.session.run(
                ["item_vectors"],
                {
                    "input_ids": np.ascontiguousarray(ids[idx, :L]),
                    "attention_mask": np.ascontiguousarray(mask[idx, :L]),
                },
            )[0]
        return out


class UserEncoder:
    """Behaviour windows -> user vectors with user.onnx (inputs left-padded, see core/features.py)."""

    def __init__(self, session: ort.InferenceSession, dim: int, spec: FeatureSpec, batch_size: int = 256):
        self.session, self.dim, self.spec, self.batch_size = session, dim, spec, batch_size

    @classmethod
    def from_version(cls, version: ModelVersion, intra_op_threads: int = 1, **session_kw) -> UserEncoder:
        session = make_session(version.file("user.onnx"), intra_op_threads, **session_kw)
        return cls(session, version.model_config.dim, version.model_config.feature_spec)

    def encode(
        self, item_vectors: np.ndarray, event_types: np.ndarray, time_buckets: np.ndarray, attention_mask: np.ndarray
    ) -> np.ndarray:
        """item_vectors [B,T,D] f32, event_types/time_buckets [B,T] i64, attention_mask [B,T] bool -> [B,D] f32."""
        x = np.ascontiguousarray(item_vectors, dtype=np.float32)
        ev = np.ascontiguousarray(event_types, dtype=np.int64)
        tb = np.ascontiguousarray(time_buckets, dtype=np.int64)
        m = np.ascontiguousarray(attention_mask, dtype=np.bool_)
        if (
            x.ndim != 3
            or x.shape[2] != self.dim
            or ev.shape != x.shape[:2]
            or tb.shape != ev.shape
            or m.shape != ev.shape
        ):
            raise ValueError(
                f"user tower inputs must be item_vectors [B,T,{self.dim}] and [B,T] features; got "
                f"{x.shape}, {ev.shape}, {tb.shape}, {m.shape}"
            )
        if x.shape[1] > self.spec.max_len:
            raise ValueError(
                f"window length T={x.shape[1]} exceeds the model's max_len={self.spec.max_len}; "
                f"keep the last {self.spec.max_len} events (core.features.left_pad)"
            )
        out = np.empty((x.shape[0], self.dim), dtype=np.float32)
        for s in range(0, x.shape[0], self.batch_size):
            e = s + self.batch_size
            out[s:e] = self.session.run(
                ["user_vectors"],
                {
                    "item_vectors": x[s:e],
                    "event_types": ev[s:e],
                    "time_buckets": tb[s:e],
                    "attention_mask": m[s:e],
                },
            )[0]
        return out


class RankerScorer:
    """Ranking features -> (P(click), P(purchase)) with ranker.onnx (core/ranking_features.py)."""

    def __init__(self, session: ort.InferenceSession, spec: RankingFeatureSpec):
        self.session, self.spec = session, spec

    @classmethod
    def from_version(cls, version: ModelVersion, intra_op_threads: int = 1, **session_kw) -> RankerScorer:
        session = make_session(version.file("ranker.onnx"), intra_op_threads, **session_kw)
        return cls(session, RankingFeatureSpec.from_dict(version.model_config.ranker["features"]))

    def heads(self, features: np.ndarray) -> np.ndarray:
        """features [B, N, F] float32 -> [B, N, 2]."""
        return self.session.run(["heads"], {"features": np.ascontiguousarray(features, dtype=np.float32)})[0]


@dataclass
class ModelRuntime:
    """Everything a worker needs from one registered version, warmed up."""

    version: ModelVersion
    item_encoder: ItemEncoder
    user_encoder: UserEncoder | None  # None for a baseline version (no user.onnx)
    catalog_ids: list[str]
    catalog_vectors: np.ndarray  # [N, D] float32, same order as catalog_ids
    feature_spec: FeatureSpec
    ranker: RankerScorer | None = None  # None: the version has no ranking stage (retrieval order)


def load_catalog(version: ModelVersion) -> tuple[list[str], np.ndarray]:
    """catalog_ids.json + catalog_vectors.npy (allow_pickle=False), shapes checked."""
    ids = json.loads(version.file("catalog_ids.json").read_text(encoding="utf-8"))
    vectors = np.load(version.file("catalog_vectors.npy"), allow_pickle=False)
    dim = version.model_config.dim
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise RegistryError(f"{version.path}/catalog_ids.json must be a JSON list of strings")
    if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape != (len(ids), dim):
        raise RegistryError(
            f"{version.path}/catalog_vectors.npy is {vectors.dtype} {vectors.shape}; expected "
            f"float32 ({len(ids)}, {dim}) to match catalog_ids.json and config dim; re-export"
        )
    return ids, vectors


def load_runtime(version: ModelVersion, intra_op_threads: int = 1, **session_kw) -> ModelRuntime:
    """Sessions, tokenizer and catalog of a verified version, each session warmed up."""
    spec = version.model_config.feature_spec
    item = ItemEncoder.from_version(version, intra_op_threads, **session_kw)
    item.encode(["warm-up title (1995)"])
    user = None
    if version.has("user.onnx"):
        user = UserEncoder.from_version(version, intra_op_threads, **session_kw)
        T = spec.max_len
        user.encode(
            np.zeros((1, T, user.dim), np.float32),
            np.ones((1, T), np.int64),
            np.ones((1, T), np.int64),
            np.ones((1, T), np.bool_),
        )
    ids, vectors = load_catalog(version)
    ranker = None
    if version.has("ranker.onnx") and version.model_config.ranker is not None:
        ranker = RankerScorer.from_version(version, intra_op_threads, **session_kw)
    return ModelRuntime(version, item, user, ids, vectors, spec, ranker)


CANARY_TOLERANCE = 1e-4  # max |onnxruntime here - torch at export| on the canary inputs (fp32)


def check_canary(runtime: ModelRuntime, tolerance: float = CANARY_TOLERANCE) -> float:
    """Re-run the version's canary inputs on this machine's onnxruntime and compare with
    what torch produced at export; return the worst difference, ParityError beyond tolerance."""
    version = runtime.version
    texts = json.loads(version.file("canary_items.json").read_text(encoding="utf-8"))
    expected_items = np.load(version.file("canary_item_vectors.npy"), allow_pickle=False)
    diffs = {"item tower": float(np.abs(runtime.item_encoder.encode(texts) - expected_items).max())}
    if runtime.user_encoder is not None:
        rows, event_types, time_buckets, mask = np.load(version.file("canary_windows.npy"), allow_pickle=False)
        mask = mask.astype(bool)
        vectors = (runtime.catalog_vectors[rows] * mask[..., None]).astype(np.float32)
        users = runtime.user_encoder.encode(vectors, event_types, time_buckets, mask)
        expected_users = np.load(version.file("canary_user_vectors.npy"), allow_pickle=False)
        diffs["user tower"] = float(np.abs(users - expected_users).max())
    worst = max(diffs.values())
    if not worst <= tolerance:
        raise ParityError(
            f"model {version.name}: onnxruntime here differs from torch at export on the canary "
            f"batch by {diffs} (tolerance {tolerance}); not serving it"
        )
    return worst
