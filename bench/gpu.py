"""GPU checks and figures, on a machine with an NVIDIA GPU (bench/gpu.sh runs it; CI never does).

1. The CUDA execution provider is really used: onnxruntime sessions for both towers are built with
   `device="cuda"` (export.runtime.make_session, which raises if CUDA cannot be initialised) and
   report CUDAExecutionProvider first.
2. Parity on the GPU: both towers of the registry's latest version on CUDA against the same towers
   on the CPU (the served path there), on real ml-100k titles and on a grid of user windows (batch
   1..4,096, window lengths 1..T); max |GPU - CPU| against the canary tolerance.
3. User tower: users/s and latency per call (p50/p99) at batch 1 .. 4,096, CPU vs GPU.
4. Item tower: titles/s over the ml-100k catalog at batch 64 and 256, CPU vs GPU.
5. One training epoch on the GPU vs the CPU (`streamrec train --device`, seconds per epoch from
   the checkpoint's metrics.json).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/gpu.py [--registry .streamrec/registry] [--write-docs]

Exits 1 if CUDA is not used or a parity check fails; `--allow-cpu` runs every step with the CPU in
place of the GPU (to check the script itself on a machine without one; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.report import cpu, write_section  # noqa: E402
from core.datasets import read_records  # noqa: E402
from core.features import item_text, recency_buckets  # noqa: E402
from core.settings import load_settings  # noqa: E402
from export.registry import Registry  # noqa: E402
from export.runtime import CANARY_TOLERANCE, CUDA, ItemEncoder, UserEncoder, load_tokenizer, make_session  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "ml-100k"
USER_BATCHES = [1, 16, 256, 1024, 4096]


def user_inputs(batch: int, T: int, dim: int, spec, rng: np.random.Generator):
    """A grid of user windows: every length from 1 to T, left-padded, random item vectors and types."""
    lengths = (np.arange(batch) % T) + 1
    mask = np.arange(T)[None, :] >= (T - lengths)[:, None]  # [B, T] left-padded
    vectors = (rng.standard_normal((batch, T, dim)) * mask[..., None]).astype(np.float32)
    types = np.where(mask, rng.integers(1, 4, size=(batch, T)), 0).astype(np.int64)
    ts = np.where(mask, np.cumsum(rng.exponential(3600.0, size=(batch, T)), axis=1), 0.0)
    return vectors, types, recency_buckets(ts, mask, spec.n_time_buckets), mask


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up (CUDA kernels, allocator)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", help="registry root (default: the settings')")
    parser.add_argument("--allow-cpu", action="store_true", help="no GPU: run every step on the CPU (a dry run)")
    parser.add_argument("--no-train", action="store_true", help="skip the training epoch")
    parser.add_argument("--write-docs", action="store_true", help='write "## GPU" in docs/benchmarks.md')
    args = parser.parse_args()
    settings = load_settings()
    version = Registry(Path(args.registry) if args.registry else settings.registry.path).load()
    gpu = "cpu" if args.allow_cpu else "cuda"
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    # 1. the CUDA execution provider
    sessions = {}
    for tower in ("item", "user"):
        path = version.file(f"{tower}.onnx")
        sessions[tower] = (make_session(path, 1, device="cpu"), make_session(path, 1, device=gpu))
        provider = sessions[tower][1].get_providers()[0]
        say(f"- {tower}.onnx on the GPU side: {provider}")
        if provider != CUDA and not args.allow_cpu:
            print(f"FAILED: {tower}.onnx does not run on {CUDA}", file=sys.stderr)
            return 1
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        smi = "nvidia-smi not found"
    say(f"- GPU: {smi}")

    # 2. parity, GPU vs CPU
    config, spec = version.model_config, version.model_config.feature_spec
    _, items = read_records(DATA)
    titles = [item_text(i["title"], i.get("description"), i.get("categories")) for i in items]
    tokenizer = load_tokenizer(version.file("tokenizer.json"), config.max_tokens)
    item_cpu, item_gpu = (ItemEncoder(s, tokenizer, config.dim) for s in sessions["item"])
    worst_item = float(np.abs(item_gpu.encode(titles) - item_cpu.encode(titles)).max())
    rng = np.random.default_rng(0)
    worst_user = 0.0
    for batch in USER_BATCHES:
        inputs = user_inputs(batch, spec.max_len, config.dim, spec, rng)
        on = [UserEncoder(s, config.dim, spec, batch_size=batch).encode(*inputs) for s in sessions["user"]]
        worst_user = max(worst_user, float(np.abs(on[1] - on[0]).max()))
    parity_ok = max(worst_item, worst_user) <= CANARY_TOLERANCE
    say(
        f"- parity GPU vs CPU: item tower max |diff| {worst_item:.2e} over {len(titles)} titles, user tower "
        f"{worst_user:.2e} over batches {USER_BATCHES} (tolerance {CANARY_TOLERANCE:g}): {'ok' if parity_ok else 'FAILED'}"
    )

    # 3. user tower speed
    say("")
    say("| user tower batch | CPU users/s | CPU p50 / p99 ms | GPU users/s | GPU p50 / p99 ms |")
    say("| ---: | ---: | ---: | ---: | ---: |")
    for batch in USER_BATCHES:
        inputs = user_inputs(batch, spec.max_len, config.dim, spec, rng)
        cells = []
        for session in sessions["user"]:
            encoder = UserEncoder(session, config.dim, spec, batch_size=batch)
            times = timed(lambda: encoder.encode(*inputs), repeats=max(5, 2000 // batch))
            p50, p99 = np.percentile(times, [50, 99]) * 1000
            cells += [f"{batch / statistics.median(times):,.0f}", f"{p50:.2f} / {p99:.2f}"]
        say(f"| {batch} | " + " | ".join(cells) + " |")

    # 4. item tower speed
    say("")
    say("| item tower batch | CPU titles/s | GPU titles/s |")
    say("| ---: | ---: | ---: |")
    for batch in (64, 256):
        cells = []
        for encoder in (item_cpu, item_gpu):
            encoder.batch_size = batch
            times = timed(lambda: encoder.encode(titles), repeats=3)
            cells.append(f"{len(titles) / statistics.median(times):,.0f}")
        say(f"| {batch} | " + " | ".join(cells) + " |")

    # 5. one training epoch
    if not args.no_train:
        say("")
        for device in ("cpu", gpu):
            with tempfile.TemporaryDirectory() as out:
                command = [
                    sys.executable,
                    "-m",
                    "encoders.cli",
                    "train",
                    "--data",
                    str(DATA),
                    "--out",
                    out,
                    "--epochs",
                    "1",
                    "--device",
                    device,
                    "--no-export",
                    "--threads",
                    "8",
                ]
                start = time.perf_counter()
                done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
                seconds = time.perf_counter() - start
                if done.returncode:
                    say(f"- training on {device}: failed ({done.stderr.strip().splitlines()[-1:]})")
                    continue
                metrics = json.loads((Path(out) / "metrics.json").read_text())
                say(
                    f"- one training epoch on {device}: {metrics.get('seconds_per_epoch') or float('nan'):.1f} s "
                    f"(the whole command {seconds:.0f} s, with data loading and the text cache)"
                )

    if args.write_docs:
        section = (
            f"## GPU\n\nMeasured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `bench/gpu.sh` on {cpu()} "
            f"with model `{version.name}`.\n\n" + "\n".join(lines) + "\n"
        )
        write_section(ROOT / "docs" / "benchmarks.md", "## GPU", section)
    return 0 if parity_ok else 1


if __name__ == "__main__":
    sys.exit(main())
