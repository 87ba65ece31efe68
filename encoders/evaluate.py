"""Leave-one-out evaluation with full ranking, RecBole's sequential protocol.

Each user's last event is the test target and the second-to-last the validation
target; the input is everything before the target (its newest `max_len` events).
Every catalog item is ranked. Two settings are reported:

- "recbole": nothing is hidden (RecBole does not mask a sequential user's history);
  this is the one comparable with RecBole numbers and the one targets refer to.
- "product": items already in the user's history are excluded, as the worker does.

Cold cases are those whose target never occurs in training; HR@10 and NDCG@10 are
reported there. LOO leaves almost no cold targets, so `withhold_items` removes a random
share of the catalog from training to measure cold-item recall of the text tower.
Baselines run in the same harness: popularity (training-interaction counts), EASE (closed-form
item-item model, encoders/ease.py, λ chosen on validation), the pure-text nearest-neighbour peer
(`text_knn_scores`: no training at all) and any checkpoint, e.g. the ID-only model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from core.datasets import Interactions, Split, make_windows
from core.features import FeatureSpec
from encoders import ease
from encoders.config import ItemTowerConfig
from encoders.metrics import METRICS, hit_rate, ndcg, ranking_metrics, target_ranks
from encoders.recommender import Recommender


@torch.no_grad()
def model_scores(model: Recommender, history: Interactions, batch_size: int = 64) -> np.ndarray:
    """The model's full score of every catalog item for every user's history (repeat term
    included, nothing hidden): -> [U, N]."""
    model.eval()
    catalog = model.catalog_vectors()  # [N, D]
    T = model.feature_spec.max_len
    out = []
    for a in range(0, len(history.items), batch_size):
        w = make_windows(
            [s[-T:] for s in history.items[a : a + batch_size]],
            [s[-T:] for s in history.events[a : a + batch_size]],
            [s[-T:] for s in history.times[a : a + batch_size]],
            model.feature_spec,
        )
        items, event_types, time_buckets, mask = (
            torch.from_numpy(a).to(catalog.device) for a in (w.items, w.event_types, w.time_buckets, w.mask)
        )
        vectors = catalog[items] * mask.unsqueeze(-1)  # [B, T, D]
        users = model.user_tower(vectors, event_types, time_buckets, mask)  # [B, D]
        repeat = model.last_repeat_scores(items, event_types, mask)  # [B, N]
        out.append((users @ catalog.T + repeat).cpu().numpy())
    return np.concatenate(out)


def popularity_scores(train: Interactions, n_users: int) -> np.ndarray:
    """Training-interaction counts, the same for every user: -> [U, N]."""
    counts = np.bincount(np.concatenate(train.items), minlength=train.n_items).astype(np.float32)
    return np.broadcast_to(counts, (n_users, train.n_items))


def warm_items(train: Interactions) -> np.ndarray:
    """[N] bool: items with at least one training interaction."""
    return np.bincount(np.concatenate(train.items), minlength=train.n_items) > 0


@dataclass
class Evaluation:
    recbole: dict[str, float]  # nothing hidden (targets refer to this)
    product: dict[str, float]  # history items excluded
    cold_hr10: float | None  # HR@10 (recbole setting) on cases whose target is cold; None if there are none
    cold_ndcg10: float | None  # NDCG@10 (recbole setting) on the same cases
    n_cases: int
    n_cold: int
    cold_product_hr10: float | None = None  # HR@10 on the same cases, history excluded
    cold_product_ndcg10: float | None = None  # NDCG@10 on the same cases, history excluded
    warm_hr10: float | None = None  # HR@10 (recbole setting) on the cases whose target is warm
    cold_top10_share: float = 0.0  # share of the top-10 slots (recbole setting) that go to cold items
    ranks: list[int] = field(default_factory=list)  # per case, zero-based (recbole setting): for paired tests


def evaluate_scores(scores: np.ndarray, history: Interactions, targets: np.ndarray, warm: np.ndarray) -> Evaluation:
    """scores [U, N], targets [U] -> metrics in both settings, plus cold-item recall."""
    ranks = target_ranks(scores, targets)
    seen = scores.copy()
    for u, items in enumerate(history.items):
        seen[u, items] = -np.inf
    product_ranks = target_ranks(seen, targets)
    cold = ~warm[targets]
    return Evaluation(
        recbole=ranking_metrics(ranks),
        product=ranking_metrics(product_ranks),
        cold_hr10=hit_rate(ranks[cold], 10) if cold.any() else None,
        cold_ndcg10=ndcg(ranks[cold], 10) if cold.any() else None,
        n_cases=len(targets),
        n_cold=int(cold.sum()),
        cold_product_hr10=hit_rate(product_ranks[cold], 10) if cold.any() else None,
        cold_product_ndcg10=ndcg(product_ranks[cold], 10) if cold.any() else None,
        warm_hr10=hit_rate(ranks[~cold], 10) if (~cold).any() else None,
        cold_top10_share=float(np.mean(~warm[top_k(scores, 10)])),
        ranks=ranks.tolist(),
    )


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """[U, N] -> [U, min(k, N)] indices of each row's k best items, in no particular order."""
    k = min(k, scores.shape[1])
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def withhold_items(split: Split, fraction: float, seed: int = 0) -> Split:
    """The cold-item protocol: a random `fraction` of the catalog (fixed `seed`, so every model
    trained and evaluated with the same seed sees the same items) loses all its training events, so it is never an input or a target in
    training and gets no ID residual, but stays in the catalog, embedded by its text.
    Validation and test cases are unchanged (held-out items may appear in histories, as new
    items do in production); cases whose target is held out count as cold (`Evaluation.cold_*`)."""
    n = split.train.n_items
    held_out = np.zeros(n, dtype=bool)
    held_out[np.random.default_rng(seed).choice(n, round(fraction * n), replace=False)] = True
    t = split.train
    keep = [~held_out[items] for items in t.items]
    train = Interactions(
        t.item_ids,
        t.item_texts,
        t.user_ids,
        [s[k] for s, k in zip(t.items, keep)],
        [s[k] for s, k in zip(t.events, keep)],
        [s[k] for s, k in zip(t.times, keep)],
    )
    return replace(split, train=train)


def trained_withholding(train_config: dict) -> dict:
    """What a checkpoint's training withheld, from its metrics.json "train_config": {"cold_items": the share of
    the catalog (`withhold_items`' fraction), "cold_seed": which set}."""
    return {"cold_items": train_config.get("cold_items", 0.0), "cold_seed": train_config.get("cold_seed", 0)}


def cases(split: Split, stage: str) -> tuple[Interactions, np.ndarray]:
    """stage "valid" or "test" -> (the users' histories, their [U] targets)."""
    if stage == "valid":
        return split.valid_history, split.valid_targets
    return split.test_history, split.test_targets


def evaluate_model(model: Recommender, split: Split, stage: str) -> Evaluation:
    """stage: "valid" or "test"."""
    history, targets = cases(split, stage)
    return evaluate_scores(model_scores(model, history), history, targets, warm_items(split.train))


def cold_scale_sweep(model: Recommender, split: Split, scales: Sequence[float]) -> list[str]:
    """Validation metrics of `model` with items without a trained vector scored at each `cold_scale`, as
    markdown lines: the trade-off between recalling cold items and ranking warm ones. The scale whose cold
    share of the top-10 slots is nearest the cold share of the targets is marked (new items get the
    exposure their share of the next items asks for)."""
    runs = validation_by_cold_scale(model, split, scales)
    target_share = cold_target_share(runs)
    matched = demand_matched_scale(runs)
    lines = [
        f"| cold scale | cold share of top 10 (targets: {target_share:.3f}) | NDCG@10 | warm HR@10 | cold HR@10 |",
        "|" + " --- |" * 5,
    ]
    for scale, e in runs.items():
        mark = "**" if scale == matched else ""
        lines.append(
            f"| {mark}{scale:g}{mark} | {e.cold_top10_share:.3f} | {e.recbole['NDCG@10']:.4f} | {e.warm_hr10:.4f} "
            f"| {e.cold_hr10:.4f} |"
        )
    return lines


@contextmanager
def cold_scale(model: Recommender, scale: float) -> Iterator[Recommender]:
    """`model` scoring items without a trained vector at `scale` times their text vector, for the block."""
    config = model.item_tower.config
    model.item_tower.config = replace(config, cold_scale=scale)
    try:
        yield model
    finally:
        model.item_tower.config = config


def validation_by_cold_scale(model: Recommender, split: Split, scales: Sequence[float]) -> dict[float, Evaluation]:
    """scale -> `model`'s validation evaluation with its cold items at that scale."""
    runs = {}
    for scale in scales:
        with cold_scale(model, scale):
            runs[scale] = evaluate_model(model, split, "valid")
    return runs


def cold_target_share(runs: dict[float, Evaluation]) -> float:
    """The cold share of the targets (the same cases in every run of `runs`, scale -> evaluation)."""
    first = next(iter(runs.values()))
    return first.n_cold / first.n_cases


def demand_matched_scale(runs: dict[float, Evaluation]) -> float:
    """Of `runs` (cold scale -> evaluation on the same cases), the scale whose cold share of the top-10 slots
    is nearest the cold share of the targets: new items get the exposure their share of the next items asks for."""
    target_share = cold_target_share(runs)
    return min(runs, key=lambda scale: abs(runs[scale].cold_top10_share - target_share))


def evaluate_popularity(split: Split) -> Evaluation:
    scores = popularity_scores(split.train, len(split.test_targets))
    return evaluate_scores(scores, split.test_history, split.test_targets, warm_items(split.train))


@dataclass
class EaseEvaluation:
    l2: float  # the chosen λ: best validation NDCG@10, product setting
    valid: dict[float, Evaluation]  # λ -> validation metrics: the curve the choice was made on
    test: Evaluation  # with the chosen λ, read once

    def validation_table(self) -> list[str]:
        """The validation curve as markdown lines (for `write_report`'s notes)."""
        lines = [
            f"EASE on validation by λ (chosen: the best NDCG@10 product, λ = {self.l2:g}):",
            "",
            "| λ | NDCG@10 product | HR@10 product | NDCG@10 | HR@10 | cold HR@10 |",
            "|" + " --- |" * 6,
        ]
        for l2, e in self.valid.items():
            cold = "n/a" if e.cold_hr10 is None else f"{e.cold_hr10:.4f}"
            lines.append(
                f"| {l2:g} | {e.product['NDCG@10']:.4f} | {e.product['HR@10']:.4f} "
                f"| {e.recbole['NDCG@10']:.4f} | {e.recbole['HR@10']:.4f} | {cold} |"
            )
        return lines


def evaluate_ease(split: Split, lambdas: Sequence[float]) -> EaseEvaluation:
    """EASE fitted on the training interactions for each λ, scored on the validation cases; the λ
    with the best validation NDCG@10 in the product setting (history excluded) is evaluated on test.
    Product, because EASE has no way to demote items already seen (nothing like the model's repeat
    term): with history shown, its top 10 fills with history, and selecting on that would reward the λ
    that ranks history lowest rather than the one that ranks the next item best."""
    X = ease.user_item_matrix(split.train)  # [U_train, N]
    warm = warm_items(split.train)

    def evaluate_l2(l2: float, stage: str) -> Evaluation:
        history, targets = cases(split, stage)
        return evaluate_scores(ease.scores(ease.fit(X, l2), history), history, targets, warm)

    valid = {l2: evaluate_l2(l2, "valid") for l2 in lambdas}
    best = max(lambdas, key=lambda l2: valid[l2].product["NDCG@10"])  # the first of equals
    return EaseEvaluation(best, valid, evaluate_l2(best, "test"))


@torch.no_grad()
def pretrained_item_vectors(item_texts: list[str], text_model: str = "") -> np.ndarray:
    """The text model's own sentence embeddings of the item texts (its pooling, before any projection), as
    the zero-training baseline version serves them, L2-normalised: -> [N, H] float32."""
    from encoders.item_tower import ItemTower  # loads transformers

    tower = ItemTower(ItemTowerConfig(text_model_dir=text_model, proj_dim=None)).eval()
    return torch.nn.functional.normalize(tower.encode_texts(item_texts), dim=-1).numpy()


def text_knn_scores(item_vectors: np.ndarray, history: Interactions, window: int = FeatureSpec.max_len) -> np.ndarray:
    """The pure-text nearest-neighbour peer: a user is the mean of the L2-normalised pretrained
    embeddings of the items of their window (the newest `window` events, as the model's input), scored
    by cosine against every item. item_vectors [N, H] -> [U, N]. Nothing is trained."""
    unit = item_vectors / np.linalg.norm(item_vectors, axis=1, keepdims=True).clip(min=1e-12)
    users = np.stack([unit[items[-window:]].sum(0) for items in history.items])  # [U, H], the mean's direction
    users /= np.linalg.norm(users, axis=1, keepdims=True).clip(min=1e-12)  # an empty window scores all 0
    return users @ unit.T


def evaluate_text_knn(split: Split, item_vectors: np.ndarray, stage: str) -> Evaluation:
    """The text kNN peer on the validation or test cases; item_vectors [N, H] in catalog order."""
    history, targets = cases(split, stage)
    return evaluate_scores(text_knn_scores(item_vectors, history), history, targets, warm_items(split.train))


@dataclass
class PairedComparison:
    """Per-case NDCG@10 of a variant minus a reference's over the same cases (each averaged over its runs)."""

    mean_diff: float
    ci_low: float  # 95% bootstrap interval of the mean difference (cases resampled)
    ci_high: float
    t: float  # paired t statistic
    p: float  # two-sided, normal approximation (hundreds of cases)
    n_cases: int


def paired_ndcg10(reference: Sequence[Evaluation], variant: Sequence[Evaluation], seed: int = 0) -> PairedComparison:
    """Paired comparison of two models on the same cases: per-case NDCG@10 (recbole setting) averaged over
    each model's runs, then the per-case differences: mean, 95% bootstrap CI (10,000 resamples), paired t."""

    def per_case(runs: Sequence[Evaluation]) -> np.ndarray:
        ranks = np.array([r.ranks for r in runs])  # [runs, cases]
        return np.where(ranks < 10, 1.0 / np.log2(ranks + 2.0), 0.0).mean(0)

    diff = per_case(variant) - per_case(reference)  # [cases]
    n = len(diff)
    boot = diff[np.random.default_rng(seed).integers(0, n, size=(10_000, n))].mean(1)
    se = diff.std(ddof=1) / np.sqrt(n)
    t = float(diff.mean() / se) if se > 0 else 0.0
    return PairedComparison(
        float(diff.mean()),
        float(np.quantile(boot, 0.025)),
        float(np.quantile(boot, 0.975)),
        t,
        math.erfc(abs(t) / math.sqrt(2)),
        n,
    )


def paired_table(results: dict[str, list[Evaluation]], reference: str) -> list[str]:
    """Markdown lines: every other row with per-case ranks, paired against `reference` (`paired_ndcg10`)."""
    lines = [
        f"Paired comparison against **{reference}** ({len(results[reference])} runs), the same test cases: "
        "per-case NDCG@10 (history shown) averaged over each row's runs, difference row − reference; "
        "95% bootstrap CI over cases; paired t-test (two-sided p):",
        "",
        "| model | runs | ΔNDCG@10 | 95% CI | t | p |",
        "|" + " --- |" * 6,
    ]
    for name, runs in results.items():
        if name == reference or not all(r.ranks for r in runs):
            continue
        c = paired_ndcg10(results[reference], runs)
        lines.append(
            f"| {name} | {len(runs)} | {c.mean_diff:+.4f} | [{c.ci_low:+.4f}, {c.ci_high:+.4f}] | {c.t:+.2f} | {c.p:.3f} |"
        )
    return lines


def _mean_spread(values: list[float | None]) -> str:
    """'mean ± std' over runs (population std); 'n/a' when no run has a value."""
    values = [v for v in values if v is not None]
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}" if values else "n/a"


def write_report(results: dict[str, list[Evaluation]], title: str, out_md: Path, notes: Sequence[str] = ()) -> Path:
    """Markdown table (mean ± spread over runs per row), `notes` (markdown lines) under it, and a bar
    chart PNG next to it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [*METRICS, "HR@10 product", "NDCG@10 product", "warm HR@10", "cold HR@10", "cold NDCG@10"]
    cols += ["cold HR@10 product"]
    lines = [
        f"# {title}",
        "",
        "Leave-one-out, full ranking over all items. Metric columns: history NOT excluded "
        "(RecBole-comparable); 'product' columns: history excluded. Mean ± std over runs.",
        "",
        "| model | runs | " + " | ".join(cols) + " |",
        "|" + " --- |" * (len(cols) + 2),
    ]
    for name, runs in results.items():
        cells = [_mean_spread([r.recbole[m] for r in runs]) for m in METRICS]
        cells += [_mean_spread([r.product[m] for r in runs]) for m in ("HR@10", "NDCG@10")]
        cells += [_mean_spread([r.warm_hr10 for r in runs])]
        cells += [_mean_spread([r.cold_hr10 for r in runs]), _mean_spread([r.cold_ndcg10 for r in runs])]
        cells += [_mean_spread([r.cold_product_hr10 for r in runs])]
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    first = next(iter(results.values()))[0]
    lines += ["", f"{first.n_cases} test cases, {first.n_cold} with a cold target item.", "", *notes]
    if notes:
        lines.append("")
    png = out_md.with_suffix(".png")
    lines.append(f"![metrics]({png.name})")
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text("\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(8, 4))
    shown = ["HR@10", "NDCG@10", "HR@20", "NDCG@20"]
    width = 0.8 / len(results)
    for i, (name, runs) in enumerate(results.items()):
        means = [np.mean([r.recbole[m] for r in runs]) for m in shown]
        errs = [np.std([r.recbole[m] for r in runs]) for m in shown]
        ax.bar(np.arange(len(shown)) + i * width, means, width, yerr=errs, label=name)
    ax.set_xticks(np.arange(len(shown)) + width * (len(results) - 1) / 2, shown)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return out_md
