"""Encoder throughput and latency: torch eager vs ONNX Runtime, same weights, same inputs.

User tower: users/s and latency per batch at batch 1, 32, 256 (T = 50 events, left-padded
windows of varied length). Item tower (MiniLM): titles/s over ml-100k titles, tokenization
included on both sides (transformers tokenizer for torch, `tokenizers` for the runtime), and the
same batching on both sides (ItemEncoder.encode's: one tokenizer call, titles sorted by token
count, each batch cut to its longest title). Other text models: bench/text_encoders.py.
Both sides use the same thread count (default 1, the worker's default; see DESIGN.md).
Timed rounds alternate torch and ONNX Runtime so load from other processes hits both alike.

    .venv/bin/python bench/encoders.py [--checkpoint DIR] [--threads 1] [--write-docs]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import cpu, write_section  # noqa: E402
from core.features import FeatureSpec  # noqa: E402
from export.onnx_export import export_item_tower, export_user_tower, item_onnx_config, save_tokenizer, user_onnx_config  # noqa: E402
from export.parity import random_windows  # noqa: E402
from export.runtime import ItemEncoder, load_tokenizer, make_session, provider  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-100k"


def timed_rounds(fns: dict[str, callable], rounds: int, min_seconds: float) -> dict[str, list[float]]:
    """Per-call seconds for each fn; each round runs every fn for >= min_seconds / rounds, alternating."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        for _ in range(3):
            fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            while True:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
                if time.perf_counter() - start >= min_seconds / rounds and len(times[name]) >= 3:
                    break
    return times


def user_tower(checkpoint: str | None, spec: FeatureSpec):
    if checkpoint:
        from encoders.recommender import load_checkpoint

        model, _, _ = load_checkpoint(checkpoint)
        return model.user_tower.eval(), model.feature_spec, model.config.user_tower.dim, f"checkpoint {checkpoint}"
    from encoders.user_tower import UserTower, UserTowerConfig

    config = UserTowerConfig(max_len=spec.max_len, n_event_ids=spec.n_event_ids, n_time_buckets=spec.n_time_buckets)
    torch.manual_seed(0)
    tower = UserTower(config).eval()
    return (
        tower,
        spec,
        config.dim,
        (
            f"UserTower default config (dim {config.dim}, {config.n_layers} layers, "
            f"{config.n_heads} heads, untrained: speed does not depend on weights)"
        ),
    )


def bench_user(args, workdir: Path) -> tuple[list[dict], str]:
    tower, spec, dim, what = user_tower(args.checkpoint, FeatureSpec(max_len=args.window))
    T = min(args.window, spec.max_len)
    path = export_user_tower(tower, workdir / "user.onnx", user_onnx_config(spec), spec, dim)
    session = make_session(path, intra_op_threads=args.threads)
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((2000, dim)).astype(np.float32)
    rows = []
    for B in args.batches:
        w = random_windows(spec, len(pool), B, T, rng)
        x = w.vectors(pool)
        feeds = {
            "item_vectors": x,
            "event_types": w.event_types,
            "time_buckets": w.time_buckets,
            "attention_mask": w.mask,
        }
        tensors = [torch.from_numpy(a) for a in feeds.values()]

        def run_torch():
            with torch.inference_mode():
                return tower(*tensors).numpy()

        def run_ort():
            return session.run(["user_vectors"], feeds)[0]

        np.testing.assert_allclose(run_ort(), run_torch(), atol=1e-4)  # benchmark the same function
        times = timed_rounds({"torch": run_torch, "onnx": run_ort}, args.rounds, args.seconds)
        row = {"batch": B}
        for name, ts in times.items():
            med = statistics.median(ts)
            row[name] = {
                "p50_ms": med * 1e3,
                "p90_ms": float(np.percentile(ts, 90)) * 1e3,
                "per_s": B / med,
                "calls": len(ts),
            }
        row["speedup"] = row["torch"]["p50_ms"] / row["onnx"]["p50_ms"]
        rows.append(row)
        print(
            f"  user tower B={B:<4} torch {row['torch']['p50_ms']:8.3f} ms  onnx {row['onnx']['p50_ms']:8.3f} ms  "
            f"x{row['speedup']:.2f}",
            flush=True,
        )
    return rows, f"{what}; T={T}; ONNX on {provider(session)}"


def bench_item(args, workdir: Path) -> tuple[dict, str]:
    from encoders.item_tower import ItemTower, ItemTowerConfig
    from export.baseline import hf_tokenizer_of

    max_tokens = 32
    tower = ItemTower(ItemTowerConfig(proj_dim=None, max_tokens=max_tokens)).eval()
    hf_tok = hf_tokenizer_of(tower)
    export_item_tower(tower, workdir / "item.onnx", item_onnx_config(max_tokens))
    save_tokenizer(hf_tok, workdir / "tokenizer.json", max_tokens)
    encoder = ItemEncoder(
        make_session(workdir / "item.onnx", intra_op_threads=args.threads),
        load_tokenizer(workdir / "tokenizer.json", max_tokens),
        tower.lm.config.hidden_size,
        batch_size=args.item_batch,
    )
    if (Path(args.data) / "ml-100k.item").is_file():
        from core.datasets import load_interactions

        texts = load_interactions(args.data, FeatureSpec()).item_texts[: args.titles]
        source = f"{len(texts)} ml-100k titles (title + year + genres)"
    else:
        texts = [f"Movie {i} (199{i % 10}). Drama, Comedy" for i in range(args.titles)]
        source = f"{len(texts)} synthetic titles"

    def run_torch():  # batched as ItemEncoder.encode batches
        with torch.inference_mode():
            b = hf_tok(texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
            ids, mask = b["input_ids"], b["attention_mask"]
            lengths = mask.sum(1)
            order = torch.argsort(lengths, stable=True)  # shortest texts together: less padding per batch
            for s in range(0, len(texts), args.item_batch):
                idx = order[s : s + args.item_batch]
                L = max(int(lengths[idx].max()), 1)
                tower(ids[idx, :L], mask[idx, :L])

    def run_ort():
        encoder.encode(texts)

    times = timed_rounds({"torch": run_torch, "onnx": run_ort}, max(2, args.rounds // 2), args.seconds)
    result = {name: len(texts) / statistics.median(ts) for name, ts in times.items()}
    result["speedup"] = result["onnx"] / result["torch"]
    print(
        f"  item tower  torch {result['torch']:8.1f} titles/s  onnx {result['onnx']:8.1f} titles/s  "
        f"x{result['speedup']:.2f}",
        flush=True,
    )
    what = (
        f"all-MiniLM-L6-v2 {tower.config.pooling}-pooled, batch {args.item_batch}, max_tokens {max_tokens}, "
        f"titles sorted by token count on both sides; {source}"
    )
    return result, what


def machine() -> str:
    return (
        f"{cpu()}; Python {platform.python_version()}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"
    )


def markdown(args, user_rows, user_what, item, item_what, command: str) -> str:
    lines = [
        "## Encoders",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}.",
        f"Threads: torch `set_num_threads({args.threads})`, onnxruntime intra-op {args.threads}. "
        "Median of per-call times, torch and ONNX Runtime alternating in rounds.",
        "",
        f"User tower: {user_what}.",
        "",
        "| batch | torch eager p50 (ms) | ONNX Runtime p50 (ms) | torch p90 | ORT p90 | torch users/s | ORT users/s | speed-up |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in user_rows:
        t, o = r["torch"], r["onnx"]
        lines.append(
            f"| {r['batch']} | {t['p50_ms']:.3f} | {o['p50_ms']:.3f} | {t['p90_ms']:.3f} | {o['p90_ms']:.3f} | "
            f"{t['per_s']:,.0f} | {o['per_s']:,.0f} | {r['speedup']:.2f}x |"
        )
    if item:
        lines += [
            "",
            f"Item tower: {item_what}; tokenization included.",
            "",
            "| | torch eager | ONNX Runtime | speed-up |",
            "| --- | ---: | ---: | ---: |",
            f"| titles/s | {item['torch']:,.1f} | {item['onnx']:,.1f} | {item['speedup']:.2f}x |",
        ]
    speedups = [f"{r['speedup']:.2f}x at batch {r['batch']}" for r in user_rows]
    lines += [
        "",
        f"ONNX Runtime over torch eager in this run: user tower {', '.join(speedups)}"
        + (f"; item tower {item['speedup']:.2f}x" if item else "")
        + ". The machine is shared with other jobs, so a repeated run differs; within a run the two engines "
        "alternate, so their ratio is the figure to read.",
        "",
        "Reproduce:",
        "",
        "```",
        command,
        "```",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="trained checkpoint (default: an untrained UserTower, default config)")
    p.add_argument("--threads", type=int, default=1, help="torch threads = onnxruntime intra-op threads")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    p.add_argument("--window", type=int, default=50, help="events per user window (T)")
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per engine per configuration")
    p.add_argument("--rounds", type=int, default=8, help="alternating rounds")
    p.add_argument("--titles", type=int, default=512, help="titles for the item tower")
    p.add_argument("--item-batch", type=int, default=64)
    p.add_argument("--no-item", action="store_true", help="skip the item tower")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--write-docs", action="store_true", help="write the results into docs/benchmarks.md (Encoders)")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    command = "HF_HUB_OFFLINE=1 .venv/bin/python bench/encoders.py " + shlex.join(sys.argv[1:])

    with tempfile.TemporaryDirectory() as tmp:
        print(f"machine: {machine()}", flush=True)
        user_rows, user_what = bench_user(args, Path(tmp))
        item, item_what = (None, "") if args.no_item else bench_item(args, Path(tmp))
    section = markdown(args, user_rows, user_what, item, item_what, command.strip())
    print()
    print(section)
    if args.write_docs:
        write_section(ROOT / "docs" / "benchmarks.md", "## Encoders", section)
        print(f"written to {ROOT / 'docs' / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
