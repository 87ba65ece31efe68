"""ONNX Runtime vs torch parity, separate from export (torch side).

After huggingface optimum's `validate_model_outputs`, in order: input and output
names and types, dynamic axes, then for every case output shapes and values
(max |ort - torch| reported, failing above `OnnxConfig.atol`), then rankings
(top-k identical, up to tied scores, for at least `min_top_k_agreement` of the queries). Every failure
is collected; `raise_if_failed` raises one ParityError listing them all. A tolerance
failure is never a warning.

Cases are a grid of batch sizes x sequence lengths with random content, plus real
inputs: the whole catalog's text (through the runtime's own tokenizer and batching)
and real behaviour windows of varied length.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from core.errors import ParityError
from core.features import FeatureSpec
from core.ranking_features import blend
from export.onnx_export import OnnxConfig
from export.runtime import ItemEncoder, UserEncoder, load_tokenizer, make_session

ITEM_GRID = {"batch": (1, 2, 8, 32), "tokens": (1, 3, 9, 32)}
USER_GRID = {"batch": (1, 2, 32, 256), "window": (1, 2, 17, 50)}


@dataclass
class ParityReport:
    """Outcome of one tower's validation; `to_dict()` goes into metrics.json."""

    model: str
    atol: float
    cases: list[dict] = field(default_factory=list)  # {"case", "shape", "max_abs_diff", "ok"}
    rankings: list[dict] = field(
        default_factory=list
    )  # {"case", "queries", "top_k", "agreement", "exact_set_agreement", "ordered_agreement", "ok"}
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def max_abs_diff(self) -> float:
        return max((c["max_abs_diff"] for c in self.cases), default=0.0)

    def fail(self, message: str) -> None:
        self.failures.append(f"{self.model}: {message}")

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "atol": self.atol,
            "max_abs_diff": self.max_abs_diff,
            "n_cases": len(self.cases),
            "rankings": self.rankings,
            "failures": self.failures,
        }

    def summary(self) -> str:
        ranks = "; ".join(
            f"{r['case']}: top-{r['top_k']} identical for {r['agreement']:.4%} of {r['queries']}" for r in self.rankings
        )
        return (
            f"{self.model}: {'OK' if self.ok else 'FAILED'}, max |ort - torch| = {self.max_abs_diff:.2e} "
            f"(atol {self.atol:.0e}) over {len(self.cases)} cases" + (f"; {ranks}" if ranks else "")
        )


def raise_if_failed(*reports: ParityReport) -> None:
    """One ParityError carrying every failure of every report."""
    failures = [f for r in reports for f in r.failures]
    if failures:
        shown = failures[:30] + ([f"... and {len(failures) - 30} more"] if len(failures) > 30 else [])
        raise ParityError(
            "ONNX Runtime output differs from torch; the model was NOT registered:\n  - "
            + "\n  - ".join(shown)
            + "\nCheck the exporter/opset (export/onnx_export.py) or the tolerance in the OnnxConfig; "
            "do not loosen atol to make this pass without understanding the difference."
        )


# --- checks --------------------------------------------------------------------------------


def check_signature(session: ort.InferenceSession, config: OnnxConfig, report: ParityReport) -> bool:
    """Names and element types of inputs/outputs, then that declared dynamic axes are symbolic."""
    got_in = {i.name: i for i in session.get_inputs()}
    got_out = {o.name: o for o in session.get_outputs()}
    ok = True
    for kind, want, got in (("input", config.inputs, got_in), ("output", config.outputs, got_out)):
        if list(got) != list(want):
            report.fail(f"{kind} names {list(got)} != expected {list(want)}")
            ok = False
        for name, dtype in want.items():
            if name in got and got[name].type != dtype:
                report.fail(f"{kind} {name!r} has type {got[name].type}, expected {dtype}")
                ok = False
    for name, axes in config.dynamic_axes.items():
        meta = got_in.get(name) or got_out.get(name)
        if meta is None:
            continue
        for axis, axis_name in axes.items():
            dim = meta.shape[axis] if axis < len(meta.shape) else None
            if not isinstance(dim, str):
                report.fail(f"{name} axis {axis} ({axis_name}) should be dynamic but is {dim!r}")
                ok = False
    return ok


def compare(report: ParityReport, case: str, expected: np.ndarray, actual: np.ndarray) -> None:
    """Shape, then finiteness, then max abs diff against atol."""
    entry = {"case": case, "shape": list(expected.shape), "max_abs_diff": float("inf"), "ok": False}
    report.cases.append(entry)
    if actual.shape != expected.shape:
        report.fail(f"{case}: output shape {list(actual.shape)} != torch {list(expected.shape)}")
        return
    if actual.dtype != np.float32:
        report.fail(f"{case}: output dtype {actual.dtype}, expected float32")
    if not np.isfinite(actual).all() or not np.isfinite(expected).all():
        report.fail(
            f"{case}: non-finite values (onnx {int((~np.isfinite(actual)).sum())}, "
            f"torch {int((~np.isfinite(expected)).sum())})"
        )
        return
    diff = float(np.abs(actual.astype(np.float64) - expected).max()) if expected.size else 0.0
    entry.update(max_abs_diff=diff, ok=diff <= report.atol)
    if diff > report.atol:
        report.fail(f"{case}: max |ort - torch| = {diff:.3e} > atol {report.atol:.0e}")


def attempt(report: ParityReport, case: str, fn: Callable[[], np.ndarray]) -> np.ndarray | None:
    """fn(), or None with its error recorded as a failure of this case (and checking goes on)."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - a graph that crashes on valid inputs is a parity failure
        report.cases.append({"case": case, "shape": None, "max_abs_diff": float("inf"), "ok": False})
        report.fail(f"{case}: onnxruntime failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
        return None


def run(session: ort.InferenceSession, report: ParityReport, case: str, feeds: dict) -> np.ndarray | None:
    return attempt(report, case, lambda: session.run(None, feeds)[0])


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """[Q, N] -> [Q, k] indices, best first."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def same_top_k(expected: np.ndarray, te: np.ndarray, ta: np.ndarray, tie_tol: float) -> np.ndarray:
    """[Q] bool: ta (actual's top-k indices) is te (expected's, best first) up to ties: every item in one
    and not the other scores, by `expected`, within tie_tol of expected's k-th score. Items with identical
    text have identical vectors, so which of them makes the cut is arbitrary in either runtime."""
    kth = np.take_along_axis(expected, te[:, -1:], axis=1)  # [Q, 1]
    dropped = ~(te[:, :, None] == ta[:, None, :]).any(axis=2)  # [Q, k] expected's items actual left out
    added = ~(ta[:, :, None] == te[:, None, :]).any(axis=2)  # [Q, k] actual's items expected left out
    tied_dropped = np.take_along_axis(expected, te, axis=1) <= kth + tie_tol
    tied_added = np.take_along_axis(expected, ta, axis=1) >= kth - tie_tol
    return (~dropped | tied_dropped).all(axis=1) & (~added | tied_added).all(axis=1)


def compare_rankings(
    report: ParityReport, case: str, expected: np.ndarray, actual: np.ndarray, config: OnnxConfig
) -> None:
    """Top-k of two score matrices [Q, N]: the same k items (as a set, items whose expected scores tie with
    the k-th within config.atol being interchangeable) for >= min_top_k_agreement of queries."""
    k = config.top_k
    if expected.shape != actual.shape:
        report.fail(f"{case}: score shapes differ {expected.shape} vs {actual.shape}")
        return
    if expected.shape[0] == 0 or expected.shape[1] <= k:
        return  # nothing to rank
    te, ta = top_k(expected, k), top_k(actual, k)
    same_set = same_top_k(expected, te, ta, config.atol)
    agreement, ordered = float(same_set.mean()), float((te == ta).all(axis=1).mean())
    exact = float((np.sort(te, axis=1) == np.sort(ta, axis=1)).all(axis=1).mean())
    ok = agreement >= config.min_top_k_agreement
    report.rankings.append(
        {
            "case": case,
            "queries": int(len(te)),
            "top_k": k,
            "agreement": agreement,
            "exact_set_agreement": exact,
            "ordered_agreement": ordered,
            "ok": ok,
        }
    )
    if not ok:
        bad = np.flatnonzero(~same_set)
        report.fail(
            f"{case}: top-{k} identical for only {agreement:.4%} of {len(te)} queries, items tied with the k-th "
            f"counted as interchangeable (need {config.min_top_k_agreement:.1%}); first differing queries: "
            f"{bad[:5].tolist()}"
        )


# --- item tower ----------------------------------------------------------------------------


@torch.no_grad()
def torch_item_vectors(
    tower: torch.nn.Module, hf_tokenizer, texts: list[str], max_tokens: int, batch_size: int = 64
) -> np.ndarray:
    """The reference: the trainer's tokenizer + torch forward."""
    out = []
    for s in range(0, len(texts), batch_size):
        batch = hf_tokenizer(
            texts[s : s + batch_size], padding=True, truncation=True, max_length=max_tokens, return_tensors="pt"
        )
        out.append(tower(batch["input_ids"], batch["attention_mask"]).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def validate_item_tower(
    tower: torch.nn.Module,
    hf_tokenizer,
    onnx_path: Path,
    tokenizer_path: Path,
    config: OnnxConfig,
    *,
    texts: list[str],
    max_tokens: int,
    grid: dict[str, tuple[int, ...]] = ITEM_GRID,
    seed: int = 0,
    torch_vectors: np.ndarray | None = None,
) -> ParityReport:
    """item.onnx vs the torch item tower: signature, random grid, the whole catalog, neighbour rankings.

    torch_vectors: `torch_item_vectors(tower, hf_tokenizer, texts, max_tokens)` if already computed.
    """
    report = ParityReport("item.onnx", config.atol)
    tower = tower.eval()
    session = make_session(onnx_path, device="cpu")
    if not check_signature(session, config, report):
        return report  # feeding wrong names would only add noise
    rng = np.random.default_rng(seed)
    vocab = hf_tokenizer.vocab_size
    with torch.no_grad():
        for B in grid["batch"]:
            for L in grid["tokens"]:
                ids = rng.integers(1000, vocab, size=(B, L), dtype=np.int64)
                lengths = rng.integers(1, L + 1, size=B)
                lengths[0] = L
                mask = (np.arange(L)[None, :] < lengths[:, None]).astype(np.int64)
                expected = tower(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
                actual = run(session, report, f"grid batch={B} tokens={L}", {"input_ids": ids, "attention_mask": mask})
                if actual is not None:
                    compare(report, f"grid batch={B} tokens={L}", expected, actual)

    if texts:
        tokenizer = load_tokenizer(tokenizer_path, max_tokens)
        runtime_ids = [e.ids[: sum(e.attention_mask)] for e in tokenizer.encode_batch(list(texts))]
        trainer_ids = hf_tokenizer(list(texts), truncation=True, max_length=max_tokens)["input_ids"]
        mismatched = [i for i, (a, b) in enumerate(zip(runtime_ids, trainer_ids)) if list(a) != list(b)]
        if mismatched:
            i = mismatched[0]
            report.fail(
                f"tokenizer.json disagrees with the trainer's tokenizer on {len(mismatched)} of {len(texts)} "
                f"texts, e.g. {texts[i]!r}: {list(runtime_ids[i])[:12]} vs {list(trainer_ids[i])[:12]}"
            )
        expected = (
            torch_item_vectors(tower, hf_tokenizer, texts, max_tokens) if torch_vectors is None else torch_vectors
        )
        encoder = ItemEncoder(session, tokenizer, expected.shape[1])  # the worker's own encode path
        case = f"catalog text ({len(texts)} items, runtime tokenizer + batching)"
        actual = attempt(report, case, lambda: encoder.encode(texts))
        if actual is not None:
            compare(report, case, expected, actual)
        if actual is not None and actual.shape == expected.shape:
            q = slice(0, 2000)  # item -> item neighbours of up to 2000 query items
            compare_rankings(
                report, "catalog item-to-item neighbours", expected[q] @ expected.T, actual[q] @ actual.T, config
            )
    return report


# --- user tower ----------------------------------------------------------------------------


@dataclass
class WindowBatch:
    """Real behaviour windows as catalog indices, left-padded [U, T] (T <= max_len)."""

    items: np.ndarray  # int64
    event_types: np.ndarray  # int64
    time_buckets: np.ndarray  # int64
    mask: np.ndarray  # bool

    def __len__(self) -> int:
        return len(self.items)

    def vectors(self, catalog: np.ndarray) -> np.ndarray:
        """[U, T, D] item vectors, zeros at padding."""
        return (catalog[self.items] * self.mask[..., None]).astype(np.float32)

    def head(self, n: int) -> "WindowBatch":
        return WindowBatch(self.items[:n], self.event_types[:n], self.time_buckets[:n], self.mask[:n])


def random_windows(spec: FeatureSpec, n_items: int, batch: int, window: int, rng: np.random.Generator) -> WindowBatch:
    """Random content, left-padded with varied lengths (row 0 full, row 1 length 1 when B > 1)."""
    lengths = rng.integers(1, window + 1, size=batch)
    lengths[0] = window
    if batch > 1:
        lengths[1] = 1
    mask = np.arange(window)[None, :] >= (window - lengths)[:, None]
    items = rng.integers(0, max(n_items, 1), size=(batch, window)) * mask
    events = rng.integers(1, spec.n_event_ids, size=(batch, window)) * mask
    buckets = rng.integers(1, spec.n_time_buckets, size=(batch, window)) * mask
    return WindowBatch(items.astype(np.int64), events.astype(np.int64), buckets.astype(np.int64), mask)


@torch.no_grad()
def torch_user_vectors(tower: Callable, vectors: np.ndarray, w: WindowBatch, batch_size: int = 256) -> np.ndarray:
    out = []
    for s in range(0, len(w), batch_size):
        e = s + batch_size
        out.append(
            tower(
                torch.from_numpy(vectors[s:e]),
                torch.from_numpy(w.event_types[s:e]),
                torch.from_numpy(w.time_buckets[s:e]),
                torch.from_numpy(w.mask[s:e]),
            )
            .float()
            .numpy()
        )
    return np.concatenate(out)


def validate_user_tower(
    tower: torch.nn.Module,
    onnx_path: Path,
    config: OnnxConfig,
    spec: FeatureSpec,
    *,
    catalog_torch: np.ndarray,
    catalog_onnx: np.ndarray | None = None,
    windows: WindowBatch | None = None,
    grid: dict[str, tuple[int, ...]] = USER_GRID,
    seed: int = 0,
) -> ParityReport:
    """user.onnx vs the torch user tower: signature, random grid, real windows, top-k over the catalog.

    catalog_torch [N, D]: torch item vectors (the reference); catalog_onnx: the same items
    through item.onnx, used for the end-to-end ranking check (default: catalog_torch).
    """
    report = ParityReport("user.onnx", config.atol)
    tower = tower.eval()
    session = make_session(onnx_path, device="cpu")
    if not check_signature(session, config, report):
        return report
    D = catalog_torch.shape[1]
    encoder = UserEncoder(session, D, spec)
    rng = np.random.default_rng(seed)
    pool = catalog_torch if len(catalog_torch) else rng.standard_normal((64, D)).astype(np.float32)
    for B in grid["batch"]:
        for T in sorted({min(t, spec.max_len) for t in grid["window"]}):
            w = random_windows(spec, len(pool), B, T, rng)
            x = w.vectors(pool)
            expected = torch_user_vectors(tower, x, w)
            actual = run(
                session,
                report,
                f"grid batch={B} window={T}",
                {
                    "item_vectors": x,
                    "event_types": w.event_types,
                    "time_buckets": w.time_buckets,
                    "attention_mask": w.mask,
                },
            )
            if actual is not None:
                compare(report, f"grid batch={B} window={T}", expected, actual)

    if windows is not None and len(windows):
        expected = torch_user_vectors(tower, windows.vectors(catalog_torch), windows)
        lengths = windows.mask.sum(1)
        case = f"real windows ({len(windows)}, lengths {int(lengths.min())}-{int(lengths.max())})"
        actual = attempt(
            report,
            case,
            lambda: encoder.encode(
                windows.vectors(catalog_torch), windows.event_types, windows.time_buckets, windows.mask
            ),
        )
        if actual is not None:
            compare(report, case, expected, actual)
            onnx_catalog = catalog_torch if catalog_onnx is None else catalog_onnx
            if catalog_onnx is not None:  # both towers through ONNX Runtime
                actual = encoder.encode(
                    windows.vectors(onnx_catalog), windows.event_types, windows.time_buckets, windows.mask
                )
            compare_rankings(
                report, "real windows, user . catalog", expected @ catalog_torch.T, actual @ onnx_catalog.T, config
            )
    return report


# --- ranker --------------------------------------------------------------------------------

RANKER_GRID = {"batch": (1, 2, 32), "candidates": (1, 17, 200)}


@torch.no_grad()
def validate_ranker(
    ranker: torch.nn.Module,
    onnx_path: Path,
    config: OnnxConfig,
    *,
    candidate_sets: np.ndarray | None = None,
    grid: dict[str, tuple[int, ...]] = RANKER_GRID,
    seed: int = 0,
) -> ParityReport:
    """ranker.onnx vs the torch ranker: signature, a grid of random feature sets (drawn around the training
    features' mean and spread), and real candidate sets [B, N, F] with the order of the blended heads."""
    report = ParityReport("ranker.onnx", config.atol)
    ranker = ranker.eval()
    session = make_session(onnx_path, device="cpu")
    if not check_signature(session, config, report):
        return report
    rng = np.random.default_rng(seed)
    mean, scale = ranker.mean.numpy(), ranker.scale.numpy()
    sets = [
        (f"grid batch={B} candidates={N}", (mean + scale * rng.standard_normal((B, N, len(mean)))).astype(np.float32))
        for B in grid["batch"]
        for N in grid["candidates"]
    ]
    if candidate_sets is not None:
        sets.append((f"real candidate sets ({candidate_sets.shape[0]} x {candidate_sets.shape[1]})", candidate_sets))
    for case, features in sets:
        expected = ranker(torch.from_numpy(features)).numpy()
        actual = run(session, report, case, {"features": features})
        if actual is not None:
            compare(report, case, expected, actual)
    if candidate_sets is not None and actual is not None:
        weights = (ranker.config.click_weight, ranker.config.purchase_weight)
        compare_rankings(
            report, "real candidate sets, blended heads", blend(expected, *weights), blend(actual, *weights), config
        )
    return report
