"""`streamrec train` and `streamrec evaluate`.

The torch-free worker imports this module, so torch, transformers and the model
code are imported inside the commands, never at module import time.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer

from core.features import FeatureSpec
from core.options import command_settings, setting_option
from core.settings import Settings
from encoders.config import (
    DEFAULT_TEXT_MODEL,
    ItemTowerConfig,
    RankerConfig,
    RecommenderConfig,
    TrainConfig,
    UserTowerConfig,
)
from encoders.ease import L2_GRID  # numpy only

app = typer.Typer(help="Train and evaluate the two-tower recommender.", no_args_is_help=True)

# Option defaults are the configs' defaults (encoders/config.py), written there once.
T, M, I, U, F = TrainConfig(), RecommenderConfig(), ItemTowerConfig(), UserTowerConfig(), FeatureSpec()  # noqa: E741
R = RankerConfig()


@app.command()
def train(
    data: Path = typer.Option(
        ..., exists=True, file_okay=False, help="RecBole atomic files (*.inter, *.item) or events/items JSONL."
    ),
    out: Optional[Path] = typer.Option(
        None,
        help="Checkpoint dir (default: $STREAMREC_TRAINER__CHECKPOINT_DIR, "
        "else checkpoints/ beside the registry, then /<UTC stamp>).",
    ),
    registry: Optional[Path] = setting_option("registry.path", "--registry", help="Registry to register the model in."),
    seed: int = typer.Option(T.seed, help="Random seed (data order, init, dropout)."),
    epochs: int = typer.Option(T.epochs, help="Upper bound on epochs; early stopping on validation NDCG@10."),
    max_minutes: float = typer.Option(T.max_minutes, help="Wall-clock budget for the training loop."),
    patience: int = typer.Option(T.patience, help="Epochs without a better validation NDCG@10 before stopping."),
    lr: float = typer.Option(T.lr, help="AdamW learning rate."),
    batch_size: int = typer.Option(T.batch_size, help="Training windows per step."),
    threads: int = typer.Option(T.threads, help="torch CPU threads."),
    device: str = typer.Option(T.device, help="torch device of the training loop: cpu, cuda, cuda:1, ..."),
    dim: int = typer.Option(U.dim, help="Model width: item vectors, user tower, user vector."),
    layers: int = typer.Option(U.n_layers, help="User-tower transformer blocks."),
    heads: int = typer.Option(U.n_heads, help="Attention heads per block."),
    dropout: float = typer.Option(U.dropout, help="User-tower dropout."),
    max_len: int = typer.Option(F.max_len, help="Window length the user tower sees."),
    text: bool = typer.Option(M.use_text, help="--no-text trains the ID-only baseline (no language model)."),
    id_residual: bool = typer.Option(M.id_residual, help="Learned per-item residual for warm items."),
    residual_dropout: float = typer.Option(
        M.residual_dropout, help="Training: share of warm items scored text-only per step (cold-item recall; 0 = off)."
    ),
    residual_dropout_warmup: int = typer.Option(
        T.residual_dropout_warmup, help="Epochs over which residual dropout rises linearly to its rate (0 = constant)."
    ),
    align_weight: float = typer.Option(
        M.align_weight,
        help="Training: weight of the loss pulling warm items' text vectors onto their trained vectors (0 = off).",
    ),
    align_loss: str = typer.Option(
        M.align_loss, help="That loss: 'mse' (squared distance) or 'infonce' (contrastive over the warm items)."
    ),
    align_temperature: float = typer.Option(M.align_temperature, help="With --align-loss infonce: its temperature."),
    text_loss_weight: float = typer.Option(
        M.text_loss_weight,
        help="Training: weight of a second next-item loss where every item is scored by its text vector alone, "
        "as a cold item is (0 = off).",
    ),
    text_mlp: int = typer.Option(
        I.text_mlp, help="Hidden width of a residual MLP beside the item tower's linear projection (0 = linear only)."
    ),
    cold_scale: float = typer.Option(
        I.cold_scale, help="An item without a trained vector is scored at this multiple of its text vector."
    ),
    repeat: bool = typer.Option(
        M.repeat_bias, help="Learned repeat term: beta per event type for items already in the window."
    ),
    text_model_dir: str = typer.Option(
        I.text_model_dir,
        help="Text model: all-MiniLM-L6-v2 (default), all-mpnet-base-v2 (`make setup-encoders`) or any local "
        "Hugging Face encoder dir; its pooling is read from its sentence-transformers config.",
    ),
    train_top_layers: int = typer.Option(
        I.train_top_layers, help="Fine-tune the top N LM layers (0 = frozen LM, embeddings cached)."
    ),
    loss: str = typer.Option(T.loss, help="'full' softmax over the catalog or 'sampled' (logQ-corrected)."),
    cold_items: float = typer.Option(
        T.cold_items, help="Withhold this fraction of the catalog from training (cold-item evaluation)."
    ),
    cold_seed: int = typer.Option(T.cold_seed, help="Which random set of items --cold-items withholds."),
    no_export: bool = typer.Option(False, "--no-export", help="Skip ONNX export and registration."),
    ranker: bool = typer.Option(
        False,
        help="Also train the ranking stage on the checkpoint's candidates (encoders/ranker_train.py; off by "
        "default: over a well-trained retrieval model it did not beat retrieval alone on validation, "
        "docs/model.md 'Ranking'); exported as ranker.onnx.",
    ),
    ranker_minutes: float = typer.Option(R.max_minutes, help="With --ranker: the ranker's training budget."),
) -> None:
    """Train on --data, keep the best validation checkpoint, then export and register it."""
    if loss not in ("full", "sampled"):
        raise typer.BadParameter(f"--loss must be 'full' or 'sampled', got {loss!r}")
    if align_loss not in ("mse", "infonce"):
        raise typer.BadParameter(f"--align-loss must be 'mse' or 'infonce', got {align_loss!r}")
    settings = command_settings({"registry.path": registry})
    model_config = RecommenderConfig(
        item_tower=ItemTowerConfig(
            text_model_dir=text_model_dir,
            proj_dim=dim,
            train_top_layers=train_top_layers,
            text_mlp=text_mlp,
            cold_scale=cold_scale,
        ),
        user_tower=UserTowerConfig(dim=dim, n_layers=layers, n_heads=heads, dropout=dropout),
        use_text=text,
        id_residual=id_residual,
        residual_dropout=residual_dropout,
        align_weight=align_weight,
        align_loss=align_loss,
        align_temperature=align_temperature,
        text_loss_weight=text_loss_weight,
        repeat_bias=repeat,
    )
    config = TrainConfig(
        seed=seed,
        epochs=epochs,
        max_minutes=max_minutes,
        patience=patience,
        lr=lr,
        batch_size=batch_size,
        threads=threads,
        device=device,
        residual_dropout_warmup=residual_dropout_warmup,
        loss=loss,
        cold_items=cold_items,
        cold_seed=cold_seed,
        features=FeatureSpec(max_len=max_len),
    )
    ranker_config = RankerConfig(seed=seed, max_minutes=ranker_minutes) if ranker else None
    train_and_register(settings, data, out, model_config, config, register=not no_export, ranker=ranker_config)


def train_and_register(
    settings: Settings,
    data: Path,
    out: Path | None = None,
    model_config: RecommenderConfig | None = None,
    config: TrainConfig | None = None,
    register: bool = True,
    ranker: RankerConfig | None = None,
) -> None:
    """`streamrec train` (default: its default configs): the best checkpoint into `out` (default:
    settings.trainer's checkpoint dir / <UTC stamp>), with a ranker if `ranker` is given, exported and
    registered in settings.registry."""
    from encoders.train import run

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = out or settings.trainer.checkpoints(settings.registry) / stamp
    checkpoint = run(data, out, model_config or RecommenderConfig(), config or TrainConfig())
    typer.echo(f"checkpoint: {checkpoint}")
    if ranker is not None:
        from encoders.ranker_train import train_checkpoint_ranker

        typer.echo(f"ranker: {train_checkpoint_ranker(checkpoint, data, ranker)}")
    if register:
        from export.pipeline import export_and_register

        version = export_and_register(checkpoint, settings.registry.path, data_dir=data)
        typer.echo(f"registered {version.name} at {version.path} (latest)")


@app.command()
def evaluate(
    data: Path = typer.Option(..., exists=True, file_okay=False, help="The data the checkpoints were trained on."),
    checkpoint: Optional[list[Path]] = typer.Option(
        None,
        exists=True,
        file_okay=False,
        help="Checkpoint dir; repeat for several (e.g. seeds). None: baselines only.",
    ),
    out: Path = typer.Option(Path("eval/report.md"), help="Markdown report; a PNG is written next to it."),
    title: str = typer.Option("ml-100k leave-one-out, full ranking", help="Report title."),
    cold_items: float = typer.Option(T.cold_items, help="The --cold-items the checkpoints were trained with."),
    cold_seed: int = typer.Option(T.cold_seed, help="The --cold-seed the checkpoints were trained with."),
    ease_lambda: list[float] = typer.Option(
        list(L2_GRID), help="EASE L2 weights to try; the best on validation NDCG@10 (product) is tested. Repeat."
    ),
    text_knn: list[str] = typer.Option(
        [DEFAULT_TEXT_MODEL],
        help="Text models for the pure-text nearest-neighbour row (user = mean pretrained embedding of the "
        "window's items, cosine to every item): a name (all-MiniLM-L6-v2, all-mpnet-base-v2) or a dir. Repeat.",
    ),
    cold_scale: Optional[list[float]] = typer.Option(
        None,
        help="With --cold-items: validation metrics of each checkpoint with items without a trained vector "
        "scored at this multiple of their text vector (the cold-scale trade-off). Repeat.",
    ),
    threads: int = typer.Option(T.threads, help="torch CPU threads."),
    ranker: bool = typer.Option(
        False,
        help="Also train a ranker on each checkpoint's candidates (encoders/ranker_train.py) and add a "
        "'+ ranker' row: retrieval alone vs retrieval + ranker, all and purchase-only targets, paired.",
    ),
    ranker_minutes: float = typer.Option(R.max_minutes, help="With --ranker: each ranker's training budget."),
) -> None:
    """Leave-one-out test metrics of checkpoints and the baselines, popularity, EASE and text kNN (rows = model
    variants), and every row paired with the first checkpoint's on the same test cases."""
    import json

    import torch

    from core.datasets import load_interactions, split_leave_one_out
    from encoders.evaluate import (
        cold_scale_sweep,
        evaluate_ease,
        evaluate_model,
        evaluate_popularity,
        evaluate_text_knn,
        paired_table,
        pretrained_item_vectors,
        trained_withholding,
        withhold_items,
        write_report,
    )
    from encoders.item_tower import text_model_name
    from encoders.recommender import load_checkpoint

    def split_of(data_set):
        split = split_leave_one_out(data_set)
        return withhold_items(split, cold_items, cold_seed) if cold_items > 0 else split

    torch.set_num_threads(threads)
    # Users, items and targets do not depend on the event-type vocabulary: the baselines read the data
    # with the default FeatureSpec, each checkpoint with its own.
    split = split_of(load_interactions(data, FeatureSpec()))
    ease_run = evaluate_ease(split, ease_lambda)
    results: dict = {
        "popularity": [evaluate_popularity(split)],
        f"EASE, λ = {ease_run.l2:g} (chosen on validation)": [ease_run.test],
    }
    for text_model in text_knn:
        vectors = pretrained_item_vectors(split.train.item_texts, text_model)
        results[f"text kNN ({text_model_name(text_model)})"] = [evaluate_text_knn(split, vectors, "test")]
    models: dict = {}  # checkpoint rows; the first is the reference the others are paired with, case by case
    sweeps: list[str] = []
    ranked: dict = {}  # with --ranker: variant -> RankerEvaluation per checkpoint
    for ckpt in checkpoint or []:
        model, item_ids, _ = load_checkpoint(ckpt)
        data_set = load_interactions(data, model.feature_spec)
        if data_set.item_ids != item_ids:
            raise typer.BadParameter(f"{ckpt}: item ids differ from {data}; evaluate on the data it was trained on")
        trained = json.loads((ckpt / "metrics.json").read_text())["train_config"]
        got = trained_withholding(trained)
        want = {"cold_items": cold_items, "cold_seed": cold_seed if cold_items > 0 else 0}
        if got != want:
            raise typer.BadParameter(f"{ckpt} was trained with {got}, not {want}: evaluate with the same options")
        variant = _variant_name(model, trained)
        models.setdefault(variant, []).append(evaluate_model(model, split_of(data_set), "test"))
        if ranker:
            from encoders.ranker_train import fit_and_evaluate, item_categories

            config = RankerConfig(seed=trained.get("seed", 0), max_minutes=ranker_minutes)
            run = fit_and_evaluate(config, model, data_set, split_of(data_set), item_categories(data, item_ids))
            ranked.setdefault(variant, []).append(run)
            models.setdefault(f"{variant} + ranker", []).append(run.ranked["test"])
        if cold_scale and cold_items > 0:
            sweeps += [
                "",
                f"Validation by cold scale, {ckpt}:",
                "",
                *cold_scale_sweep(model, split_of(data_set), cold_scale),
            ]
    notes = ease_run.validation_table() + sweeps
    if len(models) > 1:
        notes += ["", *paired_table(models, next(iter(models)))]
    for variant, runs in ranked.items():
        from encoders.ranker_train import ranker_tables

        notes += ["", *ranker_tables(variant, runs)]
    typer.echo(write_report(results | models, title, out, notes).read_text())


def _variant_name(model, train_config: dict) -> str:
    """A report row's name: the model's configuration, and what of the training run's (metrics.json
    "train_config") changes the model."""
    from encoders.item_tower import text_model_name

    c = model.config
    kind = "text + ID residual" if c.use_text and c.id_residual else "text only" if c.use_text else "ID only"
    tuned = f", LM top {c.item_tower.train_top_layers} tuned" if c.item_tower.train_top_layers else ""
    repeat = " + repeat" if c.repeat_bias else ""
    dropped = f", residual dropout {c.residual_dropout}" if c.use_text and c.id_residual else ""
    warmup = train_config.get("residual_dropout_warmup", 0)
    dropped += f" (warm-up {warmup} epochs)" if dropped and warmup else ""
    mlp = f", text MLP {c.item_tower.text_mlp}" if c.use_text and c.item_tower.text_mlp else ""
    mlp += f", cold scale {c.item_tower.cold_scale:g}" if c.use_text and c.item_tower.cold_scale != 1 else ""
    aligned = f", align {c.align_loss} {c.align_weight:g}" if c.use_text and c.align_weight else ""
    text_only = (
        f", text-only loss {c.text_loss_weight:g}" if c.use_text and c.id_residual and c.text_loss_weight else ""
    )
    encoder = f", {text_model_name(c.item_tower.text_model_dir)}" if c.use_text and c.item_tower.text_model_dir else ""
    return (
        f"{kind}{repeat}, d={c.user_tower.dim}, L={c.user_tower.n_layers}, T={c.user_tower.max_len}"
        f"{tuned}{dropped}{mlp}{aligned}{text_only}{encoder}"
    )


if __name__ == "__main__":
    app()
