"""Training: next-item prediction over a user's window, every position at once.

config -> data (leave-one-out split) -> model (text cache precomputed once) ->
AdamW -> epochs of causal windows with full softmax over the catalog (or sampled
softmax with logQ correction) -> validation NDCG@10 each epoch, early stopping ->
best weights restored -> test metrics -> checkpoint + loss/metric curves PNG.

Training windows: each user's training sequence is cut into windows of
`max_len` events; the first always ends at the user's newest training event, the
others at a random offset each epoch. Position t predicts event t+1 with the
model's full score: user state . item vector + the repeat term, whose window at
position t is the causal prefix <= t of the training window. Recency buckets are
computed per window exactly as the worker computes them.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from core.datasets import Interactions, Split, load_interactions, make_windows, split_leave_one_out
from core.features import FeatureSpec, left_pad
from encoders.config import RecommenderConfig, TrainConfig  # torch-free
from encoders.evaluate import evaluate_model, warm_items, withhold_items
from encoders.recommender import Recommender, save_checkpoint


@dataclass
class History:
    """Per-epoch curves."""

    loss: list[float] = field(default_factory=list)
    valid_ndcg10: list[float] = field(default_factory=list)
    valid_hr10: list[float] = field(default_factory=list)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_windows(train: Interactions, max_len: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """(user, start, stop) triples: inputs seq[start:stop], targets seq[start+1:stop+1]."""
    out = []
    for u, seq in enumerate(train.items):
        n = len(seq) - 1  # positions that have a next event
        if n < 1:
            continue
        stops = [n, *range(n - int(rng.integers(1, max_len + 1)), 0, -max_len)]
        out += [(u, max(0, stop - max_len), stop) for stop in stops]
    rng.shuffle(out)
    return out


def batch_tensors(
    train: Interactions, windows: list[tuple[int, int, int]], spec: FeatureSpec
) -> dict[str, torch.Tensor]:
    """Window triples -> left-padded input tensors [B, T] and next-item targets [B, T] (-100 at padding)."""
    w = make_windows(
        [train.items[u][a:b] for u, a, b in windows],
        [train.events[u][a:b] for u, a, b in windows],
        [train.times[u][a:b] for u, a, b in windows],
        spec,
    )
    targets = left_pad([train.items[u][a + 1 : b + 1] for u, a, b in windows], spec.max_len, -100)
    return {
        "items": torch.from_numpy(w.items),
        "event_types": torch.from_numpy(w.event_types),
        "time_buckets": torch.from_numpy(w.time_buckets),
        "mask": torch.from_numpy(w.mask),
        "targets": torch.from_numpy(targets),
    }


def next_item_loss(
    states: torch.Tensor,
    catalog: torch.Tensor,
    repeat: torch.Tensor | None,
    targets: torch.Tensor,
    candidates: torch.Tensor,
    config: TrainConfig,
    log_q: torch.Tensor,
) -> torch.Tensor:
    """states [B, T, D], catalog [N, D], repeat [B, T, N] repeat term (None: none), targets [B, T] (-100 =
    padding), candidates [N] bool (items with training interactions; the others are never trained as
    negatives, so unseen items are not pushed down), log_q [N] sampling log-probs -> []."""
    real = targets >= 0
    h, y = states[real], targets[real]  # [P, D], [P]
    r = repeat[real] if repeat is not None else h.new_zeros(()).expand(len(y), len(catalog))  # [P, N] (a view)
    if config.loss == "full":
        return F.cross_entropy((h @ catalog.T + r).masked_fill(~candidates, float("-inf")), y)
    negatives = torch.multinomial(log_q.exp(), config.n_negatives, replacement=True)  # [K]
    pos = (h * catalog[y]).sum(-1, keepdim=True) + r.gather(1, y.unsqueeze(-1)) - log_q[y].unsqueeze(-1)  # [P, 1]
    neg = h @ catalog[negatives].T + r[:, negatives] - log_q[negatives]  # [P, K]
    neg = neg.masked_fill(
        (negatives.unsqueeze(0) == y.unsqueeze(1)) | ~candidates[negatives], float("-inf")
    )  # accidental hits, unseen items
    logits = torch.cat([pos, neg], dim=1)  # [P, 1 + K]
    return F.cross_entropy(logits, torch.zeros(len(y), dtype=torch.long, device=logits.device))


def build_model(
    model_config: RecommenderConfig, spec: FeatureSpec, split: Split, init: Recommender | None = None
) -> Recommender:
    """A fresh model, or `init` (a warm start already over this catalog, see `transplant`)."""
    model = init
    if model is None:
        model = Recommender(model_config, spec)
        model.encode_catalog(split.train.item_texts)  # the frozen LM runs once here
    model.warm |= torch.from_numpy(warm_items(split.train))
    return model


def residual_dropout_at(epoch: int, model_config: RecommenderConfig, config: TrainConfig) -> float:
    """The residual dropout rate of a (zero-based) epoch: the model's rate, reached linearly over the first
    `residual_dropout_warmup` epochs, so the ID residuals and the user tower first learn the warm items."""
    return model_config.residual_dropout * min(1.0, (epoch + 1) / max(config.residual_dropout_warmup, 1))


def catalog_fn(model: Recommender, item_texts: list[str]):
    """-> a function of the residual dropout rate (None: the model's) returning the catalog's (text vectors,
    ID residuals) with gradients for one step (`Recommender.item_parts`).

    Frozen LM: projection of the cached sentence embeddings. Fine-tuning: token states
    below the trainable layers are cached once; the top layers run over the catalog every step.
    """
    if model.item_tower is None or model.config.item_tower.train_top_layers == 0:
        return lambda rate=None: model.item_parts(residual_dropout=rate)
    input_ids, attention_mask = model.item_tower.tokenize(item_texts)
    states = model.item_tower.frozen_states(input_ids, attention_mask)  # [N, L, H]
    return lambda rate=None: model.item_parts(model.item_tower.top_sentence_embedding(states, attention_mask), rate)


def plot_curves(history: History, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(history.loss)
    a.set(title="training loss", xlabel="epoch")
    b.plot(history.valid_ndcg10, label="NDCG@10")
    b.plot(history.valid_hr10, label="HR@10")
    b.set(title="validation", xlabel="epoch")
    b.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def train(
    model_config: RecommenderConfig,
    config: TrainConfig,
    split: Split,
    progress: bool = True,
    init: Recommender | None = None,
) -> tuple[Recommender, dict]:
    """Train to the best validation NDCG@10; -> (model with best weights, metrics incl. curves)."""
    torch.set_num_threads(config.threads)
    set_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    spec, train_data = config.features, split.train
    model = build_model(model_config, spec, split, init).to(config.device)
    catalog = catalog_fn(model, train_data.item_texts)

    lm_params = [p for n, p in model.named_parameters() if n.startswith("item_tower.lm.") and p.requires_grad]
    repeat_params = [model.repeat] if model.repeat is not None else []
    other = [
        p
        for n, p in model.named_parameters()
        if not n.startswith("item_tower.lm.") and n != "repeat" and p.requires_grad
    ]
    optimizer = torch.optim.AdamW(
        [
            {"params": other, "lr": config.lr},
            {"params": lm_params, "lr": config.lm_lr},
            {"params": repeat_params, "lr": config.repeat_lr, "weight_decay": 0.0},
        ],
        weight_decay=config.weight_decay,
    )
    counts = np.bincount(np.concatenate(train_data.items), minlength=train_data.n_items) + 1.0
    log_q = torch.from_numpy(np.log(counts / counts.sum())).float().to(config.device)  # [N] for "sampled"

    history, best_ndcg, best_epoch, best_state = History(), -1.0, -1, None
    epoch_seconds = []  # the training steps of each whole epoch, without validation
    start = time.monotonic()
    # The bar counts the seconds of the wall-clock budget, so its remaining time is the budget's (not that of
    # `config.epochs`, a cap rarely reached); early stopping may end it sooner. The budget is checked after every
    # step, so the last epoch may be partial (it is validated like the others): on ml-100k, with 2 cores
    # shared, one epoch takes about a minute, which a check per epoch would overrun.
    budget_s = config.max_minutes * 60
    bar = tqdm(
        total=round(budget_s),
        desc="train",
        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} s of the budget [{elapsed}<{remaining}{postfix}]",
        disable=not progress,
    )
    for epoch in range(config.epochs):
        model.train()
        epoch_start = time.monotonic()
        windows = epoch_windows(train_data, spec.max_len, rng)
        rate = residual_dropout_at(epoch, model.config, config)
        losses = []
        for a in range(0, len(windows), config.batch_size):
            batch = {
                k: v.to(config.device)
                for k, v in batch_tensors(train_data, windows[a : a + config.batch_size], spec).items()
            }
            text, residual = catalog(rate)  # [N, D] each
            vectors = text if residual is None else text + residual
            states = model.user_states(
                vectors, batch["items"], batch["event_types"], batch["time_buckets"], batch["mask"]
            )
            repeat = model.repeat_scores(batch["items"], batch["event_types"], batch["mask"])  # [B, T, N]
            loss = next_item_loss(states, vectors, repeat, batch["targets"], model.warm, config, log_q)
            if model.config.align_weight > 0:
                loss = loss + model.config.align_weight * model.alignment_loss(text)
            if model.config.text_loss_weight > 0 and residual is not None:  # items scored as cold ones are
                text_only = next_item_loss(states, text, None, batch["targets"], model.warm, config, log_q)
                loss = loss + model.config.text_loss_weight * text_only
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.update(min(round(time.monotonic() - start), bar.total) - bar.n)
            if time.monotonic() - start >= budget_s:
                break
        else:  # a whole epoch (one the budget cut short would understate it)
            epoch_seconds.append(time.monotonic() - epoch_start)
        if lm_params:  # refresh the cache that catalog_vectors() and evaluation read
            model.encode_catalog(train_data.item_texts)
        valid = evaluate_model(model, split, "valid")
        history.loss.append(float(np.mean(losses)))
        history.valid_ndcg10.append(valid.recbole["NDCG@10"])
        history.valid_hr10.append(valid.recbole["HR@10"])
        if valid.recbole["NDCG@10"] > best_ndcg:
            best_ndcg, best_epoch = valid.recbole["NDCG@10"], epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        bar.set_postfix(
            epoch=epoch + 1,
            loss=f"{history.loss[-1]:.3f}",
            ndcg10=f"{valid.recbole['NDCG@10']:.4f}",
            best=f"{best_ndcg:.4f}@{best_epoch}",
        )
        bar.update(min(round(time.monotonic() - start), bar.total) - bar.n)
        if epoch - best_epoch >= config.patience or time.monotonic() - start >= budget_s:
            break
    bar.close()

    model.load_state_dict(best_state)
    valid, test = evaluate_model(model, split, "valid"), evaluate_model(model, split, "test")
    metrics = {
        "seed": config.seed,
        "best_epoch": best_epoch,
        "epochs_run": len(history.loss),
        "train_minutes": (time.monotonic() - start) / 60,
        "seconds_per_epoch": float(np.mean(epoch_seconds)) if epoch_seconds else None,  # None: budget < 1 epoch
        "valid": asdict(valid),
        "test": asdict(test),
        "curves": asdict(history),
        "repeat_beta": model.repeat.tolist() if model.repeat is not None else None,  # per event id
        "train_config": {k: v for k, v in asdict(config).items() if k != "features"},
    }
    return model.cpu(), metrics


def sized_for(model_config: RecommenderConfig, spec: FeatureSpec, n_items: int) -> RecommenderConfig:
    """`model_config` with the catalog size and the feature spec's window, event and time-bucket counts."""
    return replace(
        model_config,
        n_items=n_items,
        user_tower=replace(
            model_config.user_tower,
            max_len=spec.max_len,
            n_event_ids=spec.n_event_ids,
            n_time_buckets=spec.n_time_buckets,
        ),
    )


def run(
    data_dir: str | Path,
    out_dir: str | Path,
    model_config: RecommenderConfig | None = None,
    config: TrainConfig | None = None,
) -> Path:
    """`streamrec train`: data dir -> trained checkpoint dir (with curves.png)."""
    config = config or TrainConfig()
    data = load_interactions(data_dir, config.features)
    split = split_leave_one_out(data)
    if config.cold_items > 0:
        split = withhold_items(split, config.cold_items, config.cold_seed)
    model_config = sized_for(model_config or RecommenderConfig(), config.features, data.n_items)
    model, metrics = train(model_config, config, split)
    out = save_checkpoint(model, data.item_ids, data.item_texts, out_dir, metrics)
    plot_curves(History(**metrics["curves"]), out / "curves.png")
    return out
