"""Text models for the item tower side by side: what the worker pays for each, and how far the pure text
gets on its own (the text kNN peer).

Per text model (default: all-MiniLM-L6-v2, the default, and all-mpnet-base-v2 from `make setup-encoders`):

- the zero-training baseline version over the ml-100k catalog, built as `streamrec models bootstrap`
  builds it (export/baseline.py: export, ONNX Runtime vs torch parity over every title, registration)
  and loaded as the worker loads it (export/runtime.py `load_runtime`, 1 intra-op thread);
- ONNX item tower titles/s at batch 1 and batch 64 over ml-100k titles, tokenization included
  (`ItemEncoder.encode`, the worker's call), and the latency to embed one new item (batch 1);
- item.onnx size, its parameter count (initializer elements), the vector width and the pooling;
- the text kNN peer (encoders.evaluate.text_knn_scores) over that version's own catalog vectors: warm =
  every leave-one-out case, cold = the cases whose target is in the 10% of the catalog that
  `withhold_items(split, 0.1, seed)` takes out of training, for seed 0 (the harness's, which trained models
  are measured on) and as the mean over --cold-seeds (about 100 cold cases per set, so one set is noisy);
  validation and test; HR@10 and NDCG@10 with the user's history excluded (as the worker does) and with
  nothing hidden (the harness's cold columns).

Timed rounds alternate the models so load from other processes hits them alike, and run holding the
shared lock (--lock, /tmp/streamrec-heavy.lock) that heavy tests on this machine take, so none runs beside
them; building the versions (minutes for mpnet) runs before, without it.

    .venv/bin/python -m bench.text_encoders [--models NAME_OR_DIR ...] [--write-docs]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.encoders import machine
from bench.report import write_section
from core.datasets import load_interactions, split_leave_one_out
from core.features import FeatureSpec
from encoders.evaluate import Evaluation, evaluate_text_knn, withhold_items
from encoders.item_tower import text_model_name
from export.baseline import build_baseline_version
from export.registry import Registry
from export.runtime import ModelRuntime, load_runtime

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-100k"
STAGES = ("valid", "test")


@dataclass
class Measured:
    name: str
    runtime: ModelRuntime
    build_s: float  # export + parity + registration
    parity: float  # max |onnxruntime - torch| over the parity cases
    onnx_mb: float
    params: int
    batch1_s: list[float]  # seconds per one-title call
    batch64_rounds: list[float]  # seconds per round of encoding the batch-64 titles
    warm: dict[str, Evaluation]  # stage -> text kNN, leave-one-out
    cold: dict[str, list[Evaluation]]  # stage -> text kNN per withheld 10% of the catalog (per cold seed)


def build(name: str, catalog: list[tuple[str, str]], registry: Registry) -> tuple[ModelRuntime, float, float]:
    start = time.perf_counter()
    version = build_baseline_version(registry, catalog, text_model=name, make_latest=False)
    build_s = time.perf_counter() - start
    parity = float(json.loads(version.file("metrics.json").read_text())["parity"]["item"]["max_abs_diff"])
    return load_runtime(version, intra_op_threads=1), build_s, parity


def onnx_parameters(path: Path) -> int:
    return sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)


@contextmanager
def exclusive(lock: str):
    """Hold `lock` (flock, as `flock LOCK command` takes it) for the block; '' = no lock."""
    if not lock:
        yield
        return
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def time_rounds(args, measured: list[Measured], titles: list[str]) -> None:
    """Alternating rounds: per model, a share of the batch-1 titles one call each, then one batch-64 pass."""
    for _ in range(args.rounds):
        for m in measured:
            encoder = m.runtime.item_encoder
            for title in titles[: args.batch1_titles // args.rounds]:
                t0 = time.perf_counter()
                encoder.encode([title])
                m.batch1_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            encoder.encode(titles[: args.batch64_titles])  # ItemEncoder.batch_size = 64
            m.batch64_rounds.append(time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["all-MiniLM-L6-v2", "all-mpnet-base-v2"], help="names or dirs")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--batch1-titles", type=int, default=200, help="titles embedded one at a time")
    p.add_argument("--batch64-titles", type=int, default=512, help="titles per batch-64 round")
    p.add_argument("--rounds", type=int, default=3, help="alternating timed rounds")
    p.add_argument("--cold-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="withheld sets; first = table's")
    p.add_argument("--lock", default="/tmp/streamrec-heavy.lock", help="held while timing ('' = none)")
    p.add_argument("--write-docs", action="store_true", help="write the section '## Text encoders' of docs/model.md")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    command = "HF_HUB_OFFLINE=1 .venv/bin/python -m bench.text_encoders " + shlex.join(sys.argv[1:])

    data = load_interactions(args.data, FeatureSpec())
    split = split_leave_one_out(data)
    cold_splits = [withhold_items(split, 0.1, seed) for seed in args.cold_seeds]
    catalog = list(zip(data.item_ids, data.item_texts))
    titles = data.item_texts
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}", flush=True)

    measured: list[Measured] = []
    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry(Path(tmp) / "registry")
        for name in args.models:
            runtime, build_s, parity = build(name, catalog, registry)
            vectors = runtime.catalog_vectors  # the pretrained embeddings, L2-normalised, catalog order
            m = Measured(
                text_model_name(name),
                runtime,
                build_s,
                parity,
                runtime.version.file("item.onnx").stat().st_size / 2**20,
                onnx_parameters(runtime.version.file("item.onnx")),
                [],
                [],
                {stage: evaluate_text_knn(split, vectors, stage) for stage in STAGES},
                {stage: [evaluate_text_knn(s, vectors, stage) for s in cold_splits] for stage in STAGES},
            )
            print(
                f"{m.name}: built, checked and registered in {build_s:.0f} s, parity max |ort - torch| {parity:.1e}, "
                f"item.onnx {m.onnx_mb:.0f} MiB, {m.params / 1e6:.1f} M parameters, dim {vectors.shape[1]}",
                flush=True,
            )
            measured.append(m)
        with exclusive(args.lock):
            load_timed = os.getloadavg()[0]
            time_rounds(args, measured, titles)
    for m in measured:
        print(
            f"{m.name}: batch 1 {1 / statistics.mean(m.batch1_s):.1f} titles/s (one new item p50 "
            f"{np.percentile(m.batch1_s, 50) * 1e3:.1f} ms, p90 {np.percentile(m.batch1_s, 90) * 1e3:.1f} ms, "
            f"max {max(m.batch1_s) * 1e3:.1f} ms); batch 64 "
            f"{args.batch64_titles / statistics.median(m.batch64_rounds):.1f} titles/s",
            flush=True,
        )
        for stage in STAGES:
            w, c = m.warm[stage], m.cold[stage]
            print(
                f"{m.name} text kNN {stage}: warm HR@10 {w.product['HR@10']:.4f} NDCG@10 {w.product['NDCG@10']:.4f} "
                f"(history excluded); cold, seed by seed: HR@10 {[round(e.cold_product_hr10, 4) for e in c]} "
                f"of {[e.n_cold for e in c]} cases (history excluded), {[round(e.cold_hr10, 4) for e in c]} "
                "(nothing hidden)",
                flush=True,
            )
    section = markdown(args, measured, command, load_timed)
    print()
    print(section)
    if args.write_docs:
        write_section(ROOT / "docs" / "model.md", "## Text encoders", section)
        print(f"written to {ROOT / 'docs' / 'model.md'}")


def markdown(args, measured: list[Measured], command: str, load_timed: float) -> str:
    lines = [
        "## Text encoders",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `bench/text_encoders.py` on {machine()}. "
        f"Load: 1-minute load average {load_timed:.1f} when timing started (other jobs on the 2 cores); the "
        f"timed rounds held `{args.lock}`, which the heavy tests take, so none of those ran beside them. "
        "ONNX Runtime with 1 intra-op thread, as the worker runs; tokenization included.",
        "",
        "Serving cost of the zero-training baseline version of each text model (its item tower is the trained "
        "model's, less the projection):",
        "",
        "| text model | pooling | dim | parameters | item.onnx | titles/s, batch 1 | titles/s, batch 64 "
        "| one new item p50 / p90 / max | parity max \\|ort − torch\\| |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in measured:
        b1 = m.batch1_s
        lines.append(
            f"| {m.name} | {m.runtime.version.model_config.item_tower['pooling']} | {m.runtime.item_encoder.dim} "
            f"| {m.params / 1e6:.1f} M | {m.onnx_mb:.0f} MiB | {1 / statistics.mean(b1):.1f} "
            f"| {args.batch64_titles / statistics.median(m.batch64_rounds):.1f} "
            f"| {np.percentile(b1, 50) * 1e3:.1f} / {np.percentile(b1, 90) * 1e3:.1f} / {max(b1) * 1e3:.1f} ms "
            f"| {m.parity:.1e} |"
        )
    first = measured[0]
    lines += [
        "",
        f"Batch 1: {len(first.batch1_s)} ml-100k titles embedded one at a time; batch 64: the first "
        f"{args.batch64_titles} titles, median of {args.rounds} rounds; the models alternate round by round.",
        "",
        "The text kNN peer (no training: user = mean of the L2-normalised pretrained embeddings of the window's "
        f"items, cosine to every item). Warm: all {first.warm['test'].n_cases} leave-one-out cases. Cold: the "
        "cases whose target is one of the 10% of the catalog withheld from training (`--cold-items 0.1`): seed 0, "
        f"the set trained models are measured on ({first.cold['valid'][0].n_cold} validation, "
        f"{first.cold['test'][0].n_cold} test cases), and mean ± std over the sets of seeds "
        f"{', '.join(map(str, args.cold_seeds))}. HR@10 and NDCG@10 exclude the user's history (the product "
        "setting, the worker's); the harness's cold columns (`streamrec evaluate`) show it, and the kNN's top 10 "
        "then fills with the user's own items:",
        "",
        "| text model | cases | HR@10 | NDCG@10 | HR@10, history shown | cold HR@10 | cold NDCG@10 "
        "| cold HR@10, history shown | cold HR@10, all sets | cold NDCG@10, all sets |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in measured:
        for stage in STAGES:
            w, c = m.warm[stage], m.cold[stage]
            hr, nd = [e.cold_product_hr10 for e in c], [e.cold_product_ndcg10 for e in c]
            lines.append(
                f"| {m.name} | {'validation' if stage == 'valid' else 'test'} | {w.product['HR@10']:.4f} "
                f"| {w.product['NDCG@10']:.4f} | {w.recbole['HR@10']:.4f} | {hr[0]:.4f} | {nd[0]:.4f} "
                f"| {c[0].cold_hr10:.4f} | {np.mean(hr):.4f} ± {np.std(hr):.4f} | {np.mean(nd):.4f} ± {np.std(nd):.4f} |"
            )
    lines += ["", "Reproduce:", "", "```bash", command.strip(), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
