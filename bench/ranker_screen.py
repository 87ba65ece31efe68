"""Screen ranker variants on one retrieval checkpoint at equal epochs (docs/model.md "Ranking").

First the shift the ranker trains across: the retrieval order's HR@10 / NDCG@10 on the training cases (targets
the retrieval model was trained on) against the validation cases (targets it never saw). Then each variant
(RankerConfig fields, `--variant name:field=value,...`) trains for exactly `--epochs` epochs and reports its
best validation NDCG@10 of the blend, the epoch it was reached, and its purchase-only figure, beside the
retrieval order's on the same cases. The ranking sets are built once per `cases_per_user` and shared.

    .venv/bin/python -m bench.ranker_screen --checkpoint ckpt/rank/loo_s0 --data $DATA --epochs 8 \\
        --variant base: --variant listwise:loss=listwise --variant residual:residual=true
"""

from __future__ import annotations

import argparse
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch

from encoders.config import RankerConfig
from encoders.evaluate import warm_items
from encoders.metrics import hit_rate, ndcg
from encoders.ranker import blend
from encoders.ranker_train import (
    candidate_ranks,
    checkpoint_split,
    head_values,
    item_categories,
    leave_one_out_cases,
    ranking_set,
    train_ranker,
    training_cases,
)


def parse_variant(text: str) -> tuple[str, dict]:
    """ "name:field=value,field=value" -> (name, RankerConfig overrides typed as the fields are)."""
    name, _, body = text.partition(":")
    types = {f.name: type(getattr(RankerConfig(), f.name)) for f in fields(RankerConfig)}
    overrides = {}
    for item in filter(None, body.split(",")):
        key, value = item.split("=")
        overrides[key] = value.lower() == "true" if types[key] is bool else types[key](value)
    return name, overrides


def order_metrics(order: np.ndarray, candidates: np.ndarray, targets: np.ndarray, keep=None) -> tuple[float, float]:
    ranks = candidate_ranks(order, candidates, targets)
    ranks = ranks if keep is None else ranks[keep]
    return hit_rate(ranks, 10), ndcg(ranks, 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--variant", action="append", required=True, help="name:field=value,... (RankerConfig)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    model, item_ids, data, split = checkpoint_split(args.checkpoint, args.data)
    categories, warm = item_categories(args.data, item_ids), warm_items(split.train)
    purchase_id = model.feature_spec.event_type_id("purchase")

    variants = [parse_variant(v) for v in args.variant]
    base = replace(RankerConfig(), epochs=args.epochs, patience=args.epochs, max_minutes=1e9)
    valid_cases = leave_one_out_cases(data, "valid")
    valid = ranking_set(base, model, data, valid_cases, categories)
    valid_targets, valid_events = valid_cases.targets(data)
    valid_purchase = valid_events == purchase_id

    print(f"{args.checkpoint}: retrieval order (gap = the target's retrieval score minus the user's best)")
    train_sets = {}
    for per_user in sorted({replace(base, **o).cases_per_user for _, o in variants}):
        start = time.monotonic()
        cases = training_cases(data, per_user, warm)
        train_sets[per_user] = ranking_set(replace(base, cases_per_user=per_user), model, data, cases, categories)
        s, (targets, _) = train_sets[per_user], cases.targets(data)
        hr, nd = order_metrics(s.features[..., 0], s.candidates, targets)
        print(
            f"  training cases, {per_user or 'all'} per user: {len(cases.users)} cases, HR@10 {hr:.4f} "
            f"NDCG@10 {nd:.4f}, target in top N {(s.candidates == targets[:, None]).any(1).mean():.3f} "
            f"(built in {time.monotonic() - start:.0f} s)"
        )
    hr, nd = order_metrics(valid.features[..., 0], valid.candidates, valid_targets)
    _, nd_purchase = order_metrics(valid.features[..., 0], valid.candidates, valid_targets, valid_purchase)
    print(
        f"  validation cases: {len(valid_targets)} cases, HR@10 {hr:.4f} NDCG@10 {nd:.4f}, purchase NDCG@10 "
        f"{nd_purchase:.4f}, target in top N {(valid.candidates == valid_targets[:, None]).any(1).mean():.3f}"
    )

    print("\n| variant | training cases | best valid NDCG@10 (Δ) | at epoch | purchase NDCG@10 (Δ) | min |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, overrides in variants:
        config = replace(base, **overrides)
        start = time.monotonic()
        ranker, metrics = train_ranker(config, train_sets[config.cases_per_user], valid, valid_targets)
        order = blend(head_values(ranker, valid.features), config.click_weight, config.purchase_weight)
        _, purchase = order_metrics(order, valid.candidates, valid_targets, valid_purchase)
        curve = " ".join(f"{v:.4f}" for v in metrics["curves"]["valid_ndcg10"])
        print(
            f"| {name} | {metrics['train_cases']} | {metrics['valid_ndcg10']:.4f} ({metrics['valid_ndcg10'] - nd:+.4f}) "
            f"| {metrics['best_epoch'] + 1} | {purchase:.4f} ({purchase - nd_purchase:+.4f}) "
            f"| {(time.monotonic() - start) / 60:.1f} |   curve: {curve}",
            flush=True,
        )


if __name__ == "__main__":
    main()
