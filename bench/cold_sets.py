"""Issue #15 item 1's cold-item ratios on several withheld sets, and pooled over them.

The cold-item protocol withholds a random 10 % of the catalog from training (`--cold-items 0.1`); which 10 % is
`--cold-seed` (the set). One set leaves about 100 test cases whose target is cold, so one hit moves cold HR@10 by
0.01, and the text kNN peer's own cold HR@10 moves several-fold from one set to the next. This prints, on the test
(or --stage valid) cases of each set: the trained checkpoints' NDCG@10, cold and warm HR@10 (means over their
seeds), the peer's cold HR@10, and how popular the cold targets are (their median rank by training events with
nothing withheld); then the same pooled over the sets (cold hits over all the sets' cold cases). History shown,
the harness's setting for cold recall. The pooled model / peer ratio gets a 95 % bootstrap interval: the cold
cases are resampled within each set, the model's and the peer's hits on a case staying paired.

Checkpoints are found by a pattern with {set} and {seed}; each must have been trained on its set. With
--cold-scale, each checkpoint is read at its demand-matched cold scale on that grid (`demand_matched_scale`: the
one whose cold share of the top 10 on its set's validation cases is nearest the targets'), as the set-0 runs of
docs/model.md chose the default's 1.1; without it, at the scale it was trained with. With --reference (another
pattern, e.g. the same runs with another text encoder), the two are paired case by case over all the sets' cases:
per-case NDCG@10, each averaged over the seeds (`paired_ndcg10`).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/cold_sets.py --sets 0 1 2 3 4 --seeds 0 1 2 \\
        --checkpoints 'ckpt/cold/cold_def_cs{set}_s{seed}'
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from core.datasets import Interactions, load_interactions, split_leave_one_out  # noqa: E402
from core.features import FeatureSpec  # noqa: E402
from encoders.evaluate import (  # noqa: E402
    Evaluation,
    cases,
    cold_scale,
    demand_matched_scale,
    evaluate_model,
    evaluate_text_knn,
    paired_ndcg10,
    pretrained_item_vectors,
    trained_withholding,
    validation_by_cold_scale,
    warm_items,
    withhold_items,
)
from encoders.recommender import load_checkpoint  # noqa: E402

COLD_FRACTION = 0.1  # the protocol's share of the catalog withheld
BOOTSTRAP_RESAMPLES = 10_000


@dataclass
class SetResult:
    """One withheld set's cases whose target is cold (hits per case, history shown), and figures over all its cases."""

    cold_set: int
    model_hits: np.ndarray  # [C] the checkpoints' hits@10, mean over seeds
    peer_hits: np.ndarray  # [C] the text kNN peer's hits@10
    ndcg10: float  # the checkpoints' NDCG@10 on all cases, mean over seeds
    warm_hr10: float  # the checkpoints' HR@10 on the warm cases, mean over seeds
    cold_top10_share: float  # the checkpoints' share of top-10 slots given to cold items, mean over seeds
    cold_target_share: float  # the share of all the cases whose target is cold
    cold_scales: list[float]  # each seed's cold scale
    cold_target_popularity: float  # median popularity rank of the cold cases' targets (0: the most popular item)


def hits_at_10(ranks: list[int]) -> np.ndarray:
    """Per case: 1 where the target is in the top 10 (ranks zero-based, history shown)."""
    return (np.array(ranks) < 10).astype(float)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ml-100k")
    parser.add_argument("--checkpoints", required=True, help="checkpoint dir pattern with {set} and {seed}")
    parser.add_argument("--sets", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--stage", choices=["valid", "test"], default="test", help="the cases to read")
    parser.add_argument("--text-model", default="", help="the peer's text model (default: the default encoder)")
    parser.add_argument(
        "--cold-scale",
        type=float,
        nargs="+",
        default=None,
        help="read each checkpoint at its demand-matched cold scale on this grid, chosen on validation "
        "(default: the scale it was trained with)",
    )
    parser.add_argument(
        "--reference", default=None, help="another checkpoint pattern, paired with --checkpoints case by case"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    @functools.cache  # one read of the data per event-type vocabulary and set, not one per checkpoint
    def split_of(spec: FeatureSpec, cold_set: int):
        return withhold_items(split_leave_one_out(load_interactions(args.data, spec)), COLD_FRACTION, cold_set)

    def evaluate_checkpoints(pattern: str, cold_set: int) -> tuple[list[Evaluation], list[float]]:
        """Each seed's checkpoint of `pattern` on `cold_set`'s cases -> (evaluations, cold scales)."""
        runs, scales = [], []
        for seed in args.seeds:
            ckpt = Path(pattern.format(set=cold_set, seed=seed))
            trained = trained_withholding(json.loads((ckpt / "metrics.json").read_text())["train_config"])
            if trained != {"cold_items": COLD_FRACTION, "cold_seed": cold_set}:
                raise SystemExit(f"{ckpt} was trained with {trained}, not on withheld set {cold_set}")
            model, _, _ = load_checkpoint(ckpt)
            model_split = split_of(model.feature_spec, cold_set)
            scale = model.item_tower.config.cold_scale
            if args.cold_scale:
                scale = demand_matched_scale(validation_by_cold_scale(model, model_split, args.cold_scale))
            with cold_scale(model, scale):
                runs.append(evaluate_model(model, model_split, args.stage))
            scales.append(scale)
        return runs, scales

    # Users, items and targets do not depend on the event-type vocabulary (as in `encoders.cli evaluate`).
    nothing_withheld = split_leave_one_out(load_interactions(args.data, FeatureSpec()))
    peer_vectors = pretrained_item_vectors(nothing_withheld.train.item_texts, args.text_model)
    popularity_rank = popularity_ranks(nothing_withheld.train)
    results, model_runs, reference_runs = [], [], []  # the runs: per set, per seed
    for cold_set in tqdm(args.sets, desc="withheld sets"):
        split = split_of(FeatureSpec(), cold_set)
        _, targets = cases(split, args.stage)
        cold = ~warm_items(split.train)[targets]
        runs, scales = evaluate_checkpoints(args.checkpoints, cold_set)
        model_runs.append(runs)
        if args.reference:
            reference_runs.append(evaluate_checkpoints(args.reference, cold_set)[0])
        peer = evaluate_text_knn(split, peer_vectors, args.stage)
        results.append(
            SetResult(
                cold_set,
                np.mean([hits_at_10(run.ranks)[cold] for run in runs], 0),
                hits_at_10(peer.ranks)[cold],
                float(np.mean([run.recbole["NDCG@10"] for run in runs])),
                float(np.mean([run.warm_hr10 for run in runs])),
                float(np.mean([run.cold_top10_share for run in runs])),
                float(cold.mean()),
                scales,
                float(np.median(popularity_rank[targets[cold]])),
            )
        )

    print(f"Cases: {args.stage}, history shown; the model: mean over seeds {args.seeds} (`{args.checkpoints}`).")
    print()
    print(
        "| withheld set | cold cases | model NDCG@10 | model cold HR@10 | model warm HR@10 | cold / warm | peer cold HR@10 "
        "| model / peer | cold share: top 10 / targets | cold targets' median popularity rank | cold scale per seed |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in results:
        m, p = r.model_hits.mean(), r.peer_hits.mean()
        print(
            f"| {r.cold_set} | {len(r.model_hits)} | {r.ndcg10:.4f} | {m:.4f} | {r.warm_hr10:.4f} | {m / r.warm_hr10:.2f} | {p:.4f} "
            f"| {_ratio(m, p)} | {r.cold_top10_share:.3f} / {r.cold_target_share:.3f} | {r.cold_target_popularity:.0f} "
            f"| {' / '.join(f'{c:g}' for c in r.cold_scales)} |"
        )
    m = np.concatenate([r.model_hits for r in results]).mean()
    p = np.concatenate([r.peer_hits for r in results]).mean()
    ndcg10 = float(np.mean([r.ndcg10 for r in results]))  # every set has the same cases
    warm = float(np.mean([r.warm_hr10 for r in results]))  # each set's warm cases are about 90 % of all
    share = np.mean([r.cold_top10_share for r in results]), np.mean([r.cold_target_share for r in results])
    n_cold = sum(len(r.model_hits) for r in results)
    print(
        f"| pooled | {n_cold} | {ndcg10:.4f} | {m:.4f} | {warm:.4f} | {m / warm:.2f} | {p:.4f} | {_ratio(m, p)} "
        f"| {share[0]:.3f} / {share[1]:.3f} | | |"
    )
    low, high = bootstrap_ratio(results)
    print()
    print(
        f"Pooled model / peer on cold items: {_ratio(m, p)}, 95% bootstrap interval [{low:.2f}, {high:.2f}] "
        f"({BOOTSTRAP_RESAMPLES:,} resamples of the cold cases within each set)."
    )
    if args.reference:
        c = paired_ndcg10(pooled_over_sets(reference_runs), pooled_over_sets(model_runs))
        print(
            f"Paired with `{args.reference}` over all the sets' cases: NDCG@10 {c.mean_diff:+.4f} (model − reference), "
            f"95% CI [{c.ci_low:+.4f}, {c.ci_high:+.4f}], p = {c.p:.3f}, {c.n_cases} cases."
        )


def popularity_ranks(train: Interactions) -> np.ndarray:
    """[N] each item's rank by training events, nothing withheld: 0 for the most popular."""
    counts = np.bincount(np.concatenate(train.items), minlength=train.n_items)
    return np.argsort(np.argsort(-counts, kind="stable"), kind="stable")


def pooled_over_sets(runs: list[list[Evaluation]]) -> list[Evaluation]:
    """Per seed, one evaluation whose cases are every set's ([set][seed] -> [seed]), for `paired_ndcg10`."""
    return [replace(per_set[0], ranks=[r for run in per_set for r in run.ranks]) for per_set in zip(*runs)]


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "∞"


def bootstrap_ratio(results: list[SetResult]) -> tuple[float, float]:
    """95 % interval of pooled model hits / pooled peer hits, the cold cases resampled within each set."""
    rng = np.random.default_rng(0)
    model_sum, peer_sum = np.zeros(BOOTSTRAP_RESAMPLES), np.zeros(BOOTSTRAP_RESAMPLES)
    for r in results:
        pick = rng.integers(0, len(r.model_hits), size=(BOOTSTRAP_RESAMPLES, len(r.model_hits)))
        model_sum += r.model_hits[pick].sum(1)
        peer_sum += r.peer_hits[pick].sum(1)
    ratios = model_sum / np.maximum(peer_sum, 1e-12)
    return float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))


if __name__ == "__main__":
    main()
