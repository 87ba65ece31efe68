"""The `streamrec` command: the worker side's commands (`stream_app.cli`) and the trainer's
(`encoders.cli`, `encoders.retrain_cli`, `export.cli`, `export.experiment_cli`). Every part is torch-free at import;
training commands import torch only when they run, so `streamrec worker` never loads it."""

from __future__ import annotations

import typer

from encoders.cli import app as trainer_commands
from encoders.retrain_cli import app as retrain_commands
from export.cli import app as export_commands
from export.experiment_cli import app as experiment_commands
from stream_app.cli import app as worker_commands

app = typer.Typer(
    help="streamrec: real-time recommendations on Kafka.", no_args_is_help=True, pretty_exceptions_enable=False
)
for commands in (worker_commands, trainer_commands, retrain_commands, export_commands, experiment_commands):
    app.add_typer(commands)

if __name__ == "__main__":
    app()
