"""Two levers for cold items that need no training, on trained cold-split checkpoints (issue #15, item 1).

A cold item (no training events, so no ID residual) is scored by its text vector times the cold scale. Both
levers change only that, so they are measured on the checkpoints the default trains, on validation:

- **neighbours**: the cold item's vector mixes its text vector with the full vectors (text + ID residual) of
  its K nearest warm items by pretrained-text cosine, softmax-weighted at temperature tau, with weight a:
  `scale * ((1 - a) * text + a * sum_j w_j * full_j)`. The learned text projection maps every item with one
  function; neighbours carry what the ID residuals learned about similar items.
- **text kNN added**: the cold items' scores get g times the text kNN peer's cosine (user = mean pretrained
  embedding of the window's items), in units of each checkpoint's mean per-user score spread.

Each row is read at its demand-matched cold scale (the one whose cold share of the top 10 is nearest the cold
share of the targets: the rule of docs/model.md, "Issue #15"), so rows are compared at the same exposure.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/cold_vector_levers.py --checkpoint ckpt/cold/cold_def_s0 [...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from core.datasets import load_interactions, split_leave_one_out  # noqa: E402
from encoders.evaluate import (  # noqa: E402
    cases,
    cold_scale,
    demand_matched_scale,
    evaluate_scores,
    model_scores,
    pretrained_item_vectors,
    text_knn_scores,
    warm_items,
    withhold_items,
)
from encoders.recommender import load_checkpoint  # noqa: E402

SCALES = [round(0.5 + 0.05 * i, 2) for i in range(23)]  # 0.5 … 1.6
NEIGHBOURS = [(0.25, 0.1, 10), (0.5, 0.1, 10), (1.0, 0.1, 10), (0.5, 0.05, 30)]  # (a, tau, K)
KNN_WEIGHTS = [0.1, 0.25, 0.5]  # g


def neighbour_parts(model, warm: torch.Tensor, tau: float, k: int) -> tuple[torch.Tensor, ...]:
    """(full vectors [N, D], unscaled text vectors [N, D], neighbour vectors [N, D]): an item's neighbour vector
    is the softmax(cosine / tau)-weighted mean of the full vectors of its K nearest warm items by pretrained text."""
    with torch.no_grad():
        text, residual = model.item_parts()  # cold rows of `text` are scaled: the projection below is not
        full = text + residual  # [N, D]
        projected = model.item_tower.project(model.text_emb)  # [N, D]
        unit = torch.nn.functional.normalize(model.text_emb, dim=-1)  # [N, H]
        nearest = (unit @ unit[warm].T).topk(k, dim=-1)  # [N, K] over warm items
        weights = torch.softmax(nearest.values / tau, dim=-1)  # [N, K]
        return full, projected, (weights.unsqueeze(-1) * full[warm][nearest.indices]).sum(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, action="append", required=True)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ml-100k")
    parser.add_argument("--cold-items", type=float, default=0.1)
    parser.add_argument("--cold-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| checkpoint | lever | scale | cold share | NDCG@10 | warm HR@10 | cold HR@10 |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    pretrained = None
    for ckpt in args.checkpoint:
        model, _, _ = load_checkpoint(ckpt)
        model.eval()
        split = load_interactions(args.data, model.feature_spec)
        split = withhold_items(split_leave_one_out(split), args.cold_items, args.cold_seed)
        history, targets = cases(split, "valid")
        warm = warm_items(split.train)
        if pretrained is None:
            pretrained = pretrained_item_vectors(split.train.item_texts, "all-MiniLM-L6-v2")
        knn = text_knn_scores(pretrained, history)  # [U, N]
        default = {}
        for scale in SCALES:
            with cold_scale(model, scale):
                default[scale] = model_scores(model, history)
        spread = float(default[model.item_tower.config.cold_scale].std(axis=1).mean())
        levers = {"default (text vector)": default}
        catalog_vectors = model.catalog_vectors
        is_warm = torch.from_numpy(warm).unsqueeze(-1)  # [N, 1]
        for a, tau, k in tqdm(NEIGHBOURS, desc=f"{ckpt.name}: neighbours", file=sys.stderr):
            full, projected, neighbours = neighbour_parts(model, torch.from_numpy(warm), tau, k)
            scores = {}
            for scale in SCALES:
                catalog = torch.where(is_warm, full, scale * ((1 - a) * projected + a * neighbours))
                model.catalog_vectors = lambda catalog=catalog: catalog
                scores[scale] = model_scores(model, history)
            levers[f"neighbours a={a:g}, tau={tau:g}, K={k}"] = scores
        model.catalog_vectors = catalog_vectors
        for g in KNN_WEIGHTS:
            added = g * spread * knn * ~warm  # cold items only
            levers[f"text kNN added to cold items, g={g:g}"] = {s: v + added for s, v in default.items()}
        for lever, scores in levers.items():
            runs = {s: evaluate_scores(v, history, targets, warm) for s, v in scores.items()}
            scale = demand_matched_scale(runs)
            e = runs[scale]
            print(
                f"| {ckpt.name} | {lever} | {scale:g} | {e.cold_top10_share:.3f} | {e.recbole['NDCG@10']:.4f} "
                f"| {e.warm_hr10:.4f} | {e.cold_hr10:.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
