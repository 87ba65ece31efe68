"""`streamrec retrain`. Torch-free at import (the worker's CLI mounts this app); the
trainer is imported when the command runs.

    python -m encoders.retrain_cli retrain --since 7d            # one run; exit 0/3/4/1
    python -m encoders.retrain_cli retrain --from-offsets pos.json --every 1h
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from core.options import command_settings, setting_option
from encoders.config import RetrainConfig

app = typer.Typer(
    help="Periodic retraining with a promotion gate.", no_args_is_help=True, pretty_exceptions_enable=False
)

R = RetrainConfig()  # the options' defaults, written once in encoders/config.py


@app.command()
def retrain(
    since: Optional[str] = typer.Option(R.since, help="Only events written to Kafka in this window (7d, 12h, 90m)."),
    from_offsets: Optional[Path] = typer.Option(
        R.from_offsets,
        help="Stored position, JSON {partition: offset}: read events after it; a promoted run "
        "advances it. A missing file means from the start.",
    ),
    save_offsets: Optional[Path] = typer.Option(
        R.save_offsets, help="Where a promoted run stores its end position (default: --from-offsets)."
    ),
    base: Optional[Path] = typer.Option(
        R.base, exists=True, file_okay=False, help="Extra training data (RecBole atomic files or events/items JSONL)."
    ),
    holdout: str = typer.Option(
        R.holdout, help="Most recent slice held out for the gate: a share ('10%') or a duration of event time ('1d')."
    ),
    tolerance: float = typer.Option(
        R.tolerance, help="Promote iff candidate NDCG@10 >= production NDCG@10 - tolerance."
    ),
    min_events: int = typer.Option(R.min_events, help="Fewer valid events: skip the run (exit 4)."),
    work_dir: Optional[Path] = setting_option(
        "trainer.retrain_dir",
        "--work-dir",
        help="Each run writes data, checkpoint and report into a new <UTC stamp>/ dir here.",
    ),
    every: Optional[str] = typer.Option(
        None, help="Loop forever, one run per interval (1h, 30m); a failed run is logged, never fatal."
    ),
    epochs: int = typer.Option(R.epochs, help="Upper bound on fine-tuning epochs (early stopping)."),
    patience: int = typer.Option(R.patience, help="Epochs without a better validation NDCG@10 before stopping."),
    max_minutes: float = typer.Option(R.max_minutes, help="Wall-clock budget of the training loop."),
    lr: float = typer.Option(R.lr, help="AdamW learning rate."),
    batch_size: int = typer.Option(R.batch_size, help="Training windows per step."),
    threads: int = typer.Option(R.threads, help="torch CPU threads."),
    seed: int = typer.Option(R.seed, help="Random seed."),
    dim: int = typer.Option(R.dim, help="Model width when training from scratch (production has no checkpoint)."),
    layers: int = typer.Option(R.layers, help="User-tower blocks when training from scratch."),
    heads: int = typer.Option(R.heads, help="Attention heads when training from scratch."),
    max_len: int = typer.Option(R.max_len, help="Window length when training from scratch."),
    progress: bool = typer.Option(R.progress, help="Show a training progress bar."),
    ranker: Optional[bool] = typer.Option(
        R.ranker,
        "--ranker/--no-ranker",
        help="Train a ranking stage on the candidate's candidates (--ranker) or not (--no-ranker); default: "
        "keep what production has. The gate then compares what the worker would serve.",
    ),
    ranker_minutes: float = typer.Option(R.ranker_minutes, help="The ranker's training budget."),
    broker: Optional[str] = setting_option("kafka.broker", "--broker"),
    registry: Optional[Path] = setting_option("registry.path", "--registry"),
) -> None:
    """Fine-tune on the event log, compare with production on the newest events, promote or reject.

    Exit codes: 0 promoted, 3 rejected (nothing changed), 4 skipped (not enough data), 1 failed.
    """
    settings = command_settings({"kafka.broker": broker, "registry.path": registry, "trainer.retrain_dir": work_dir})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from encoders.event_log import parse_duration
    from encoders.retrain import run_every, run_once

    config = RetrainConfig(
        since=since,
        from_offsets=from_offsets,
        save_offsets=save_offsets,
        base=base,
        holdout=holdout,
        tolerance=tolerance,
        min_events=min_events,
        work_root=settings.trainer.retrain_dir,
        epochs=epochs,
        patience=patience,
        max_minutes=max_minutes,
        lr=lr,
        batch_size=batch_size,
        threads=threads,
        seed=seed,
        dim=dim,
        layers=layers,
        heads=heads,
        max_len=max_len,
        progress=progress,
        ranker=ranker,
        ranker_minutes=ranker_minutes,
    )
    if since is not None:
        parse_duration(since)  # a typo fails now, not at the first run
    if every is not None:
        run_every(settings, config, parse_duration(every), on_result=_print_report)
    result = run_once(settings, config)
    _print_report(result)
    raise typer.Exit(result.exit_code)


def _print_report(result) -> None:
    typer.echo((result.work_dir / "report.md").read_text(encoding="utf-8"))
    sys.stdout.flush()


def standalone() -> typer.Typer:
    """`app` mounted as `streamrec` mounts it (a lone command would otherwise lose its name)."""
    main = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
    main.add_typer(app)
    return main


if __name__ == "__main__":
    standalone()()
