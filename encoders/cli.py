"""`streamrec train` and `streamrec evaluate`.

The torch-free worker imports this module, so torch, transformers and the model
code are imported inside the commands, never at module import time.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import typer

app = typer.Typer(help="Train and evaluate the two-tower recommender.", no_args_is_help=True)


def _registry_root() -> Path:
    return Path(os.environ.get("STREAMREC_REGISTRY", ".streamrec/registry"))


@app.command()
def train(
    data: Path = typer.Option(..., exists=True, file_okay=False, help="RecBole atomic files (*.inter, *.item) or events/items JSONL."),
    out: Path | None = typer.Option(None, help="Checkpoint dir (default: $STREAMREC_REGISTRY/../checkpoints/<timestamp>)."),
    seed: int = typer.Option(0, help="Random seed (data order, init, dropout)."),
    epochs: int = typer.Option(300, help="Upper bound on epochs; early stopping on validation NDCG@10."),
    max_minutes: float = typer.Option(10.0, help="Wall-clock budget for the training loop."),
    patience: int = typer.Option(20, help="Epochs without a better validation NDCG@10 before stopping."),
    lr: float = typer.Option(2e-3, help="AdamW learning rate."),
    batch_size: int = typer.Option(64, help="Training windows per step."),
    threads: int = typer.Option(2, help="torch CPU threads."),
    dim: int = typer.Option(64, help="Model width: item vectors, user tower, user vector."),
    layers: int = typer.Option(2, help="User-tower transformer blocks."),
    heads: int = typer.Option(2, help="Attention heads per block."),
    dropout: float = typer.Option(0.3, help="User-tower dropout."),
    max_len: int = typer.Option(50, help="Window length the user tower sees."),
    text: bool = typer.Option(True, help="--no-text trains the ID-only baseline (no language model)."),
    id_residual: bool = typer.Option(True, help="Learned per-item residual for warm items."),
    residual_dropout: float = typer.Option(0.2, help="Training: share of warm items scored text-only per step (cold-item recall; 0 = off)."),
    repeat: bool = typer.Option(True, help="Learned repeat term: beta per event type for items already in the window."),
    text_model_dir: str = typer.Option("", help="Local Hugging Face encoder dir [default: bundled all-MiniLM-L6-v2]."),
    train_top_layers: int = typer.Option(0, help="Fine-tune the top N LM layers (0 = frozen LM, embeddings cached)."),
    loss: str = typer.Option("full", help="'full' softmax over the catalog or 'sampled' (logQ-corrected)."),
    cold_items: float = typer.Option(0.0, help="Withhold this fraction of the catalog from training (cold-item evaluation)."),
    no_export: bool = typer.Option(False, "--no-export", help="Skip ONNX export and registration."),
) -> None:
    """Train on --data, keep the best validation checkpoint, then export and register it."""
    from encoders.item_tower import ItemTowerConfig
    from encoders.recommender import RecommenderConfig
    from encoders.train import TrainConfig, run
    from encoders.user_tower import UserTowerConfig
    from core.features import FeatureSpec

    if loss not in ("full", "sampled"):
        raise typer.BadParameter(f"--loss must be 'full' or 'sampled', got {loss!r}")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = out or _registry_root().parent / "checkpoints" / stamp
    model_config = RecommenderConfig(
        item_tower=ItemTowerConfig(text_model_dir=text_model_dir, proj_dim=dim, train_top_layers=train_top_layers),
        user_tower=UserTowerConfig(dim=dim, n_layers=layers, n_heads=heads, dropout=dropout),
        use_text=text, id_residual=id_residual, residual_dropout=residual_dropout, repeat_bias=repeat,
    )
    config = TrainConfig(seed=seed, epochs=epochs, max_minutes=max_minutes, patience=patience, lr=lr,
                         batch_size=batch_size, threads=threads, loss=loss, cold_items=cold_items,
                         features=FeatureSpec(max_len=max_len))
    checkpoint = run(data, out, model_config, config)
    typer.echo(f"checkpoint: {checkpoint}")
    if not no_export:
        from export.pipeline import export_and_register

        typer.echo(f"registered: {export_and_register(checkpoint, _registry_root())}")


@app.command()
def evaluate(
    data: Path = typer.Option(..., exists=True, file_okay=False, help="The data the checkpoints were trained on."),
    checkpoint: list[Path] = typer.Option(..., exists=True, file_okay=False, help="Checkpoint dir; repeat for several (e.g. seeds)."),
    out: Path = typer.Option(Path("eval/report.md"), help="Markdown report; a PNG is written next to it."),
    title: str = typer.Option("ml-100k leave-one-out, full ranking", help="Report title."),
    cold_items: float = typer.Option(0.0, help="The --cold-items the checkpoints were trained with."),
) -> None:
    """Leave-one-out test metrics of checkpoints and the popularity baseline (rows = model variants)."""
    import json

    import torch

    from core.datasets import load_interactions, split_leave_one_out
    from encoders.evaluate import evaluate_model, evaluate_popularity, withhold_items, write_report
    from encoders.recommender import load_checkpoint

    torch.set_num_threads(2)
    results: dict = {}
    split = None
    for ckpt in checkpoint:
        model, item_ids, _ = load_checkpoint(ckpt)
        data_set = load_interactions(data, model.feature_spec)
        if data_set.item_ids != item_ids:
            raise typer.BadParameter(f"{ckpt}: item ids differ from {data}; evaluate on the data it was trained on")
        trained_with = json.loads((ckpt / "metrics.json").read_text())["train_config"].get("cold_items", 0.0)
        if trained_with != cold_items:
            raise typer.BadParameter(f"{ckpt} was trained with --cold-items {trained_with}, not {cold_items}")
        split = split_leave_one_out(data_set)
        if cold_items > 0:
            split = withhold_items(split, cold_items)
        results.setdefault(_variant_name(model), []).append(evaluate_model(model, split, "test"))
    results = {"popularity": [evaluate_popularity(split)], **results}
    typer.echo(write_report(results, title, out).read_text())


def _variant_name(model) -> str:
    c = model.config
    kind = "text + ID residual" if c.use_text and c.id_residual else "text only" if c.use_text else "ID only"
    tuned = f", LM top {c.item_tower.train_top_layers} tuned" if c.item_tower.train_top_layers else ""
    repeat = " + repeat" if c.repeat_bias else ""
    dropped = f", residual dropout {c.residual_dropout}" if c.use_text and c.id_residual else ""
    return f"{kind}{repeat}, d={c.user_tower.dim}, L={c.user_tower.n_layers}, T={c.user_tower.max_len}{tuned}{dropped}"


if __name__ == "__main__":
    app()
