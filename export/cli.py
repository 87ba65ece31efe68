"""`export` and `models` commands. Torch is imported inside the commands that need it only,
because the worker imports this module.

    python -m export.cli export --checkpoint runs/ckpt [--data ../shared/data/ml-100k]
    python -m export.cli models list
    python -m export.cli models bootstrap [--data ../shared/data/ml-100k]
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from core.errors import StreamrecError
from core.options import command_settings, setting_option
from encoders.config import ItemTowerConfig

app = typer.Typer(help="ONNX export and the model registry.", no_args_is_help=True)
models = typer.Typer(help="The model registry: list versions, build the zero-training baseline.", no_args_is_help=True)
app.add_typer(models, name="models")

RegistryOption = setting_option("registry.path", "--registry", help="model registry root directory")


def _registry(registry: Path | None) -> Path:
    """--registry, else the settings' (STREAMREC_REGISTRY__PATH, else the default)."""
    return command_settings({"registry.path": registry}).registry.path


def _fail(error: Exception) -> None:
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@app.command("export")
def export_command(
    checkpoint: Path = typer.Option(..., exists=True, file_okay=False, help="trained checkpoint directory"),
    registry: Optional[Path] = RegistryOption,
    data: Optional[Path] = typer.Option(
        None, exists=True, file_okay=False, help="interactions for real parity windows (default: synthetic windows)"
    ),
    latest: bool = typer.Option(True, "--latest/--no-latest", help="switch `latest` to the new version"),
) -> None:
    """Export a checkpoint to ONNX, check parity with torch, register it."""
    registry = _registry(registry)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from export.pipeline import export_and_register

    try:
        version = export_and_register(checkpoint, registry, make_latest=latest, data_dir=data)
    except (StreamrecError, OSError) as e:  # OSError: a storage failure outside the export's own writes
        _fail(e)
    typer.echo(f"registered {version.name} at {version.path}" + (" (latest)" if latest else ""))


@models.command("list")
def list_command(
    registry: Optional[Path] = RegistryOption, verify: bool = typer.Option(False, help="re-hash every file (slower)")
) -> None:
    """Versions, oldest first; `*` marks latest."""
    import json

    from core.model_config import CONFIG_FILE, ModelConfig
    from export.registry import MANIFEST, Registry

    registry = _registry(registry)
    reg = Registry(registry)
    names, latest = reg.versions(), reg.latest()
    if not names:
        typer.echo(f"no model versions in {registry}; run `models bootstrap` or `streamrec train`")
        return
    for name in names:
        status = ""
        try:
            if verify:
                v = reg.load(name)
                config, metrics = v.model_config, v.metrics
                status = "verified"
            else:
                path = reg.version_path(name)
                config = ModelConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
                metrics = json.loads((path / "metrics.json").read_text())
                created = json.loads((path / MANIFEST).read_text()).get("created_at", "")
                status = created
        except (StreamrecError, OSError, ValueError) as e:
            typer.echo(f"  {name}  CORRUPT: {str(e).splitlines()[0]}")
            continue
        score = " ".join(f"{k}={v:.4f}" for k in ("NDCG@10", "HR@10") if isinstance(v := _headline(metrics, k), float))
        typer.echo(
            f"{'*' if name == latest else ' '} {name}  {config.kind}  dim={config.dim}  {status}  {score}".rstrip()
        )


def _headline(metrics: dict, key: str) -> float | None:
    """A test metric wherever the trainer put it: top level, `test`, or `test.product`."""
    for scope in (metrics, metrics.get("test"), (metrics.get("test") or {}).get("product")):
        if isinstance(scope, dict) and isinstance(scope.get(key), (int, float)):
            return float(scope[key])
    return None


@models.command("bootstrap")
def bootstrap_command(
    registry: Optional[Path] = RegistryOption,
    data: Optional[Path] = typer.Option(
        None, exists=True, file_okay=False, help="catalog to embed (RecBole or JSONL dir); default: empty catalog"
    ),
    max_tokens: int = typer.Option(ItemTowerConfig.max_tokens, min=1, max=512, help="tokens per item text"),
    latest: Optional[bool] = typer.Option(
        None, "--latest/--no-latest", help="switch `latest` (default: only if there is none)"
    ),
) -> None:
    """Build the zero-training baseline (MiniLM sentence embeddings, no user tower) and register it."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from export.baseline import build_baseline_version
    from export.registry import Registry

    reg = Registry(_registry(registry))
    catalog = None
    if data is not None:
        from core.datasets import load_interactions
        from core.features import FeatureSpec

        d = load_interactions(data, FeatureSpec())
        catalog = list(zip(d.item_ids, d.item_texts))
    make_latest = latest if latest is not None else reg.latest() is None
    try:
        version = build_baseline_version(reg, catalog, max_tokens=max_tokens, make_latest=make_latest)
    except (StreamrecError, OSError) as e:  # OSError: a storage failure outside the export's own writes
        _fail(e)
    typer.echo(f"registered {version.name} at {version.path}" + (" (latest)" if make_latest else ""))


@models.command("ensure")
def ensure_command(
    data: Optional[Path] = typer.Option(
        None, exists=True, file_okay=False, help="interactions + catalog (e.g. ml-100k); needed to train"
    ),
    registry: Optional[Path] = RegistryOption,
    baseline: bool = typer.Option(
        False,
        "--baseline",
        help="build the zero-training baseline instead of training "
        "(over --data's catalog, or none: workers embed `items` as it arrives)",
    ),
) -> None:
    """Make sure the registry has a loadable latest version: keep it, else train (or bootstrap) one."""
    settings = command_settings({"registry.path": registry})
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from export.registry import Registry

    reg = Registry(settings.registry.path)
    if reg.latest() is not None:
        try:
            version = reg.load()
            typer.echo(f"latest model: {version.name} ({version.kind}) at {version.path}")
            return
        except StreamrecError as e:
            typer.secho(f"latest version is not loadable, building a new one: {e}", fg=typer.colors.YELLOW, err=True)
    if baseline:
        bootstrap_command(
            registry=settings.registry.path, data=data, max_tokens=ItemTowerConfig.max_tokens, latest=True
        )
        return
    if data is None:
        raise typer.BadParameter("training needs --data (or pass --baseline)")
    from encoders.cli import train_and_register  # `streamrec train` with its defaults

    train_and_register(settings, data)


if __name__ == "__main__":
    app()
