"""What fine-tuning the top LM layers costs per training step on this machine, against the frozen LM.

One ml-100k training step as `encoders.train.train` runs it (batch 64 windows of T = 50, full softmax over
the 1,682-item catalog, backward, AdamW step), for the frozen LM (the default: projected cached sentence
embeddings) and for `--train-top-layers N` (the top N LM layers re-run over the whole catalog's cached token
states every step, as `encoders.train.catalog_fn` does). The variants alternate step by step, so load from
other processes hits them alike; the median step time of each is reported with the step count that fits in
the 10-minute training budget.

    .venv/bin/python -m bench.finetune_cost [--text-model-dir NAME] [--layers 0 1 2] [--steps 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.datasets import load_interactions, split_leave_one_out
from encoders.config import ItemTowerConfig, RecommenderConfig, TrainConfig
from encoders.train import batch_tensors, build_model, catalog_fn, epoch_windows, next_item_loss, sized_for

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-100k"
BUDGET_MINUTES = 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--text-model-dir", default="")
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = TrainConfig()
    split = split_leave_one_out(load_interactions(args.data, config.features))
    windows = epoch_windows(split.train, config.features.max_len, np.random.default_rng(0))
    batch = batch_tensors(split.train, windows[: config.batch_size], config.features)
    steps_per_epoch = -(-len(windows) // config.batch_size)

    variants = {}
    for n in args.layers:
        item = ItemTowerConfig(text_model_dir=args.text_model_dir, train_top_layers=n)
        model_config = sized_for(replace(RecommenderConfig(), item_tower=item), config.features, split.train.n_items)
        model = build_model(model_config, config.features, split)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
        variants[n] = (model.train(), catalog_fn(model, split.train.item_texts), optimizer, [])

    def step(model, catalog, optimizer) -> None:
        text, residual = catalog()
        vectors = text + residual
        states = model.user_states(vectors, batch["items"], batch["event_types"], batch["time_buckets"], batch["mask"])
        repeat = model.repeat_scores(batch["items"], batch["event_types"], batch["mask"])
        loss = next_item_loss(states, vectors, repeat, batch["targets"], model.warm, config, None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for n, (model, catalog, optimizer, _) in variants.items():
        step(model, catalog, optimizer)  # warm-up
    for _ in range(args.steps):
        for model, catalog, optimizer, times in variants.values():
            start = time.perf_counter()
            step(model, catalog, optimizer)
            times.append(time.perf_counter() - start)

    print(f"{steps_per_epoch} steps per epoch (batch {config.batch_size}), {args.threads} thread(s)")
    print("| LM layers tuned | trainable LM parameters | s / step (median) | s / epoch | epochs in 10 min |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for n, (model, _, _, times) in variants.items():
        lm = sum(p.numel() for p in model.item_tower.lm.parameters() if p.requires_grad)
        per_step = statistics.median(times)
        epochs = BUDGET_MINUTES * 60 / (per_step * steps_per_epoch)
        print(f"| {n} | {lm / 1e6:.2f} M | {per_step:.3f} | {per_step * steps_per_epoch:.0f} | {epochs:.1f} |")


if __name__ == "__main__":
    main()
