"""Training the ranking stage from the event log the retrieval model is trained on, and scoring with it.

A case is (user, position p) of the full log: the window is the user's events before p, the target is
event p. Training cases are each user's newest `cases_per_user` training events (not the validation
or test targets, and not items withheld from training); validation and test are the leave-one-out
targets. For every case the trained retrieval model scores the catalog (`encoders.evaluate.model_scores`,
the repeat term included, nothing hidden) and its top N are the candidates. Labels, per candidate: click
= the target is this item and its event is a click or a purchase; purchase = the target is this item
and its event is a purchase. Every other candidate is a negative of both heads: the user did not pick it
(a viewed target is a negative too: the user saw it and neither clicked nor bought).

Popularity, trend and item age come from `ItemActivity` replaying the whole log in time order and read
just after the window's newest event, so nothing later (the target included) is counted.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.datasets import Interactions, Split, read_records
from core.features import left_pad
from core.ranking_features import ItemActivity, RankingFeatureSpec, ranking_features
from encoders.config import RankerConfig
from encoders.evaluate import Evaluation, evaluate_scores, model_scores, paired_ndcg10, warm_items
from encoders.metrics import hit_rate, ndcg
from encoders.ranker import Ranker, blend, save_ranker
from encoders.recommender import Recommender

FEATURE_BATCH = 256  # cases per feature computation (the similarity tensor is [B, N, T])


@dataclass
class Cases:
    users: np.ndarray  # [C] user rows of the log
    positions: np.ndarray  # [C] the target's index in the user's sequence; the window is seq[:p]

    def targets(self, data: Interactions) -> tuple[np.ndarray, np.ndarray]:
        """-> ([C] target items, [C] their event type ids)."""
        return (
            np.array([data.items[u][p] for u, p in zip(self.users, self.positions)], dtype=np.int64),
            np.array([data.events[u][p] for u, p in zip(self.users, self.positions)], dtype=np.int64),
        )

    def history(self, data: Interactions) -> Interactions:
        """Each case's window as an Interactions (the input `model_scores` reads)."""
        u, p = self.users, self.positions
        return Interactions(
            data.item_ids,
            data.item_texts,
            [data.user_ids[i] for i in u],
            [data.items[i][:j] for i, j in zip(u, p)],
            [data.events[i][:j] for i, j in zip(u, p)],
            [data.times[i][:j] for i, j in zip(u, p)],
        )


def leave_one_out_cases(data: Interactions, stage: str) -> Cases:
    """The validation ("valid") or test ("test") targets of `split_leave_one_out`, in its order."""
    users = np.array([u for u, seq in enumerate(data.items) if len(seq) >= 3], dtype=np.int64)
    back = 2 if stage == "valid" else 1
    return Cases(users, np.array([len(data.items[u]) - back for u in users], dtype=np.int64))


def training_cases(data: Interactions, per_user: int, warm: np.ndarray) -> Cases:
    """Each evaluated user's newest `per_user` training events as targets (0: every one after the first),
    those of `warm` items only."""
    users, positions = [], []
    for u, seq in enumerate(data.items):
        if len(seq) < 3:
            continue
        first = 1 if per_user == 0 else max(1, len(seq) - 2 - per_user)
        for p in range(first, len(seq) - 2):
            if warm[seq[p]]:
                users.append(u)
                positions.append(p)
    return Cases(np.array(users, dtype=np.int64), np.array(positions, dtype=np.int64))


def item_categories(data_dir, item_ids: list[str]) -> np.ndarray:
    """[I, C] bool: each catalog item's categories, from the data's item records."""
    _, items = read_records(data_dir)
    of = {str(it["item_id"]): it.get("categories") or [] for it in items}
    names = sorted({c for cats in of.values() for c in cats})
    column = {c: j for j, c in enumerate(names)}
    out = np.zeros((len(item_ids), max(len(names), 1)), dtype=bool)
    for i, item_id in enumerate(item_ids):
        out[i, [column[c] for c in of.get(item_id, [])]] = True
    return out


def activity_at(
    data: Interactions, cases: Cases, candidates: np.ndarray, spec: RankingFeatureSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Replay the whole log in time order (ties: user, then position) and read every case's candidates
    just after the case's newest window event -> (counts [C, N, 2], first seen [C, N])."""
    users = np.concatenate([np.full(len(s), u) for u, s in enumerate(data.items)])
    positions = np.concatenate([np.arange(len(s)) for s in data.items])
    ts, items = np.concatenate(data.times), np.concatenate(data.items)
    order = np.lexsort((positions, users, ts))  # [E] flat event ids in replay order
    step_of = np.empty(len(order), dtype=np.int64)
    step_of[order] = np.arange(len(order))
    start = np.concatenate([[0], np.cumsum([len(s) for s in data.items])])  # flat id of each user's first event
    newest = start[cases.users] + cases.positions - 1  # [C] flat id of each window's newest event
    read_after = step_of[newest]  # [C]
    queue = np.argsort(read_after, kind="stable")
    counts, first_seen = np.zeros((*candidates.shape, 2)), np.zeros(candidates.shape)
    activity, j = ItemActivity(spec, data.n_items), 0
    for step, e in enumerate(order):
        activity.add(int(items[e]), float(ts[e]))
        while j < len(queue) and read_after[queue[j]] == step:
            c = queue[j]
            counts[c], first_seen[c] = (x[0] for x in activity.at(candidates[c : c + 1], ts[e : e + 1]))
            j += 1
    return counts, first_seen


@dataclass
class RankingSet:
    """The ranker's inputs and labels for a set of cases."""

    candidates: np.ndarray  # [C, N] item indices, the retrieval's best first
    features: np.ndarray  # [C, N, F] float32
    click: np.ndarray  # [C, N] bool
    purchase: np.ndarray  # [C, N] bool


def ranking_set(
    config: RankerConfig,
    model: Recommender,
    data: Interactions,
    cases: Cases,
    categories: np.ndarray,
    scores: np.ndarray | None = None,
) -> RankingSet:
    """Retrieval's top N for each case, its features and labels; `scores` [C, I]: the retrieval scores
    if already computed."""
    spec, window = config.features, model.feature_spec
    scores = model_scores(model, cases.history(data)) if scores is None else scores  # [C, I]
    n = min(config.n_candidates, scores.shape[1])
    top = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    candidates = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), axis=1), 1)  # [C, N]
    retrieval = np.take_along_axis(scores, candidates, 1)  # [C, N]
    counts, first_seen = activity_at(data, cases, candidates, spec)
    with torch.no_grad():
        catalog = model.catalog_vectors().numpy()  # [I, D]
    features = []
    for a in range(0, len(candidates), FEATURE_BATCH):
        b = slice(a, a + FEATURE_BATCH)
        u, p = cases.users[b], cases.positions[b]
        items = left_pad([data.items[i][:j] for i, j in zip(u, p)], window.max_len, 0)  # [B, T]
        types = left_pad([data.events[i][:j] for i, j in zip(u, p)], window.max_len, 0)
        times = left_pad([data.times[i][:j] for i, j in zip(u, p)], window.max_len, 0.0)
        mask = left_pad([np.ones(j, dtype=bool) for j in p], window.max_len, False)
        cand = candidates[b]
        in_window = ((cand[:, :, None] == items[:, None, :]) & mask[:, None, :]).any(2)
        features.append(
            ranking_features(
                spec,
                retrieval[b],
                catalog[cand],
                categories[cand],
                counts[b],
                first_seen[b],
                in_window,
                catalog[items],
                categories[items],
                types,
                times,
                mask,
            )  # fmt: skip
        )
    target, event = cases.targets(data)
    hit = candidates == target[:, None]
    click = np.isin(event, [window.event_type_id("click"), window.event_type_id("purchase")])
    purchase = event == window.event_type_id("purchase")
    return RankingSet(candidates, np.concatenate(features), hit & click[:, None], hit & purchase[:, None])


@torch.no_grad()
def head_values(ranker: Ranker, features: np.ndarray, batch: int = 512) -> np.ndarray:
    """features [C, N, F] -> [C, N, 2] (P(click), P(purchase))."""
    ranker.eval()
    return np.concatenate(
        [ranker(torch.from_numpy(features[a : a + batch])).numpy() for a in range(0, len(features), batch)]
    )


def candidate_ranks(order: np.ndarray, candidates: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """order [C, N] scores of the candidates, targets [C] -> [C] the target's zero-based rank among
    them (ties against it), N where it is not a candidate."""
    hit = candidates == targets[:, None]
    target_score = np.where(hit, order, np.inf).min(1, keepdims=True)
    return np.where(hit.any(1), (order >= target_score).sum(1) - 1, candidates.shape[1])


def reranked_scores(scores: np.ndarray, candidates: np.ndarray, order: np.ndarray) -> np.ndarray:
    """The full scores [C, I] with the candidates [C, N] moved above every other item, ordered by
    `order` [C, N] (>= 0; the blend of the heads); the others keep the retrieval order below them."""
    out = scores - scores.max(1, keepdims=True) - 1.0  # every non-candidate < 0 <= a candidate
    np.put_along_axis(out, candidates, order, 1)
    return out


def ranker_loss(loss: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits [B, N, 2], labels [B, N, 2] (click, purchase; at most one positive per case and head) -> [].

    pointwise: binary cross-entropy of every candidate, per head, summed over the heads.
    listwise: per head, softmax cross-entropy of the picked candidate against the case's other candidates,
    over the cases with a positive (the click head: targets clicked or bought; the purchase head: bought);
    a viewed target is in neither head's loss, so it is not pushed down.
    """
    if loss == "pointwise":
        return F.binary_cross_entropy_with_logits(logits, labels)
    picked = -(torch.log_softmax(logits, dim=1) * labels).sum((0, 1))  # [2] summed over the cases
    return (picked / labels.sum((0, 1)).clamp(min=1)).sum()


def train_ranker(config: RankerConfig, train: RankingSet, valid: RankingSet, valid_targets: np.ndarray):
    """Both heads jointly (`ranker_loss`: config.loss) to the best validation NDCG@10 of the blend
    -> (ranker with its best weights, metrics incl. curves)."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    ranker = Ranker(config)
    ranker.fit_standardisation(train.features)
    optimizer = torch.optim.AdamW(ranker.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    labels = torch.from_numpy(np.stack([train.click, train.purchase], axis=-1).astype(np.float32))  # [C, N, 2]
    features = torch.from_numpy(train.features)
    losses, valid_ndcg, best, best_epoch, best_state = [], [], -1.0, -1, None
    start = time.monotonic()
    for epoch in range(config.epochs):
        ranker.train()
        epoch_losses = []
        for batch in np.array_split(rng.permutation(len(features)), max(1, len(features) // config.batch_size)):
            loss = ranker_loss(config.loss, ranker.logits(features[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_losses.append(loss.item())
        order = blend(head_values(ranker, valid.features), config.click_weight, config.purchase_weight)
        valid_ndcg.append(ndcg(candidate_ranks(order, valid.candidates, valid_targets), 10))
        losses.append(float(np.mean(epoch_losses)))
        if valid_ndcg[-1] > best:
            best, best_epoch = valid_ndcg[-1], epoch
            best_state = {k: v.detach().clone() for k, v in ranker.state_dict().items()}
        if epoch - best_epoch >= config.patience or time.monotonic() - start >= config.max_minutes * 60:
            break
    ranker.load_state_dict(best_state)
    metrics = {
        "best_epoch": best_epoch,
        "valid_ndcg10": best,
        "train_cases": len(features),
        "train_minutes": (time.monotonic() - start) / 60,
        "curves": {"loss": losses, "valid_ndcg10": valid_ndcg},
    }
    return ranker.eval(), metrics


def with_and_without(
    ranker: Ranker, scores: np.ndarray, ranking: RankingSet, history: Interactions, targets: np.ndarray, warm
) -> tuple[Evaluation, Evaluation]:
    """The retrieval `scores` [C, I] of some cases alone and re-ranked by `ranker` (its blend) over their
    `ranking` set -> (retrieval order, the full pipeline), both by `evaluate_scores`."""
    order = blend(head_values(ranker, ranking.features), ranker.config.click_weight, ranker.config.purchase_weight)
    full = reranked_scores(scores, ranking.candidates, order)
    return evaluate_scores(scores, history, targets, warm), evaluate_scores(full, history, targets, warm)


@dataclass
class RankerEvaluation:
    """One retrieval checkpoint with and without its ranker, on the validation and test cases."""

    ranker: Ranker
    metrics: dict  # what training measured
    retrieval: dict[str, Evaluation]  # stage ("valid", "test") -> retrieval order
    ranked: dict[str, Evaluation]  # stage -> retrieval + ranker
    purchase: dict[str, np.ndarray]  # stage -> [U] bool: the target event is a purchase


def fit_and_evaluate(
    config: RankerConfig, model: Recommender, data: Interactions, split: Split, categories: np.ndarray
):
    """Train a ranker on `model`'s candidates over `split`'s training events (early stopping on its
    validation targets), then score the validation and test cases with and without it -> RankerEvaluation."""
    warm = warm_items(split.train)
    train_set = ranking_set(config, model, data, training_cases(data, config.cases_per_user, warm), categories)
    stages = {"valid": (split.valid_history, split.valid_targets), "test": (split.test_history, split.test_targets)}
    sets, scores = {}, {}
    for stage, (history, _) in stages.items():
        scores[stage] = model_scores(model, history)  # [U, I]
        sets[stage] = ranking_set(config, model, data, leave_one_out_cases(data, stage), categories, scores[stage])
    ranker, metrics = train_ranker(config, train_set, sets["valid"], split.valid_targets)
    retrieval, ranked, purchase = {}, {}, {}
    for stage, (history, targets) in stages.items():
        retrieval[stage], ranked[stage] = with_and_without(ranker, scores[stage], sets[stage], history, targets, warm)
        _, events = leave_one_out_cases(data, stage).targets(data)
        purchase[stage] = events == model.feature_spec.event_type_id("purchase")
    return RankerEvaluation(ranker, metrics, retrieval, ranked, purchase)


def _subset(e: Evaluation, keep: np.ndarray) -> dict[str, float]:
    """HR@10 and NDCG@10 (history shown, history excluded) of the cases `keep` [U] bool."""
    ranks = np.array(e.ranks)[keep]
    return {"HR@10": hit_rate(ranks, 10), "NDCG@10": ndcg(ranks, 10)}


def ranker_tables(variant: str, runs: list[RankerEvaluation]) -> list[str]:
    """Markdown lines: retrieval alone vs + ranker on validation and test, all targets and purchase targets
    only (mean ± std over the runs), and each paired case by case (`paired_ndcg10`)."""
    lines = [
        f"Ranking stage over **{variant}** ({len(runs)} runs, each ranker trained on its own checkpoint's "
        "candidates); history shown, mean ± std over runs; paired: per-case NDCG@10, + ranker − retrieval:",
        "",
        "| cases | targets | retrieval HR@10 | + ranker HR@10 | retrieval NDCG@10 | + ranker NDCG@10 "
        "| ΔNDCG@10 | 95% CI | p |",
        "|" + " --- |" * 9,
    ]
    for stage in ("valid", "test"):
        for name in ("all", "purchase"):
            keep = [np.ones(len(r.purchase[stage]), bool) if name == "all" else r.purchase[stage] for r in runs]
            base = [_subset(r.retrieval[stage], k) for r, k in zip(runs, keep)]
            ranked = [_subset(r.ranked[stage], k) for r, k in zip(runs, keep)]
            c = paired_ndcg10(
                [
                    replace(r.retrieval[stage], ranks=np.array(r.retrieval[stage].ranks)[k].tolist())
                    for r, k in zip(runs, keep)
                ],
                [
                    replace(r.ranked[stage], ranks=np.array(r.ranked[stage].ranks)[k].tolist())
                    for r, k in zip(runs, keep)
                ],
            )
            cells = [_spread([m[metric] for m in rows]) for metric in ("HR@10", "NDCG@10") for rows in (base, ranked)]
            lines.append(
                f"| {stage} | {name} ({int(keep[0].sum())}) | {' | '.join(cells)} | {c.mean_diff:+.4f} "
                f"| [{c.ci_low:+.4f}, {c.ci_high:+.4f}] | {c.p:.3f} |"
            )
    best_epochs = ", ".join(str(r.metrics["best_epoch"]) for r in runs)
    minutes = ", ".join(f"{r.metrics['train_minutes']:.1f}" for r in runs)
    lines += ["", f"Ranker training: {runs[0].metrics['train_cases']} cases; best epochs {best_epochs}; {minutes} min."]
    return lines


def _spread(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def checkpoint_split(checkpoint_dir: Path, data_dir: Path) -> tuple[Recommender, list[str], Interactions, Split]:
    """A trained retrieval checkpoint, its item ids, the data read with its feature spec, and the split it
    was trained on (leave-one-out, with the cold items withheld if training withheld them)."""
    from core.datasets import load_interactions, split_leave_one_out
    from encoders.evaluate import withhold_items
    from encoders.recommender import load_checkpoint

    model, item_ids, _ = load_checkpoint(checkpoint_dir)
    data = load_interactions(data_dir, model.feature_spec)
    trained = json.loads((checkpoint_dir / "metrics.json").read_text())["train_config"]
    split = split_leave_one_out(data)
    if trained.get("cold_items", 0.0) > 0:
        split = withhold_items(split, trained["cold_items"], trained.get("cold_seed", 0))
    return model, item_ids, data, split


def train_checkpoint_ranker(checkpoint_dir: Path, data_dir: Path, config: RankerConfig) -> Path:
    """`streamrec train --ranker`: a ranker over a trained retrieval checkpoint's candidates, saved in its
    `ranker/` directory with its validation and test metrics beside the retrieval's."""
    model, item_ids, data, split = checkpoint_split(checkpoint_dir, data_dir)
    return save_fitted(
        fit_and_evaluate(config, model, data, split, item_categories(data_dir, item_ids)), checkpoint_dir
    )


def save_fitted(run: RankerEvaluation, checkpoint_dir: Path) -> Path:
    """A trained ranker into the retrieval checkpoint's `ranker/` directory (what the export looks for),
    with what training measured and its validation and test metrics beside the retrieval's."""
    metrics = {k: v for k, v in run.metrics.items()}
    for stage in ("valid", "test"):
        metrics[stage] = {"retrieval": run.retrieval[stage].recbole, "ranked": run.ranked[stage].recbole}
    return save_ranker(run.ranker, checkpoint_dir / "ranker", metrics)
