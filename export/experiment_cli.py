"""`streamrec experiment start | stop | report`: online experiments (docs/operations.md, "Online
experiments"). An experiment is announced on the `experiments` topic, which every worker reads whole."""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from core.options import command_settings, setting_option

if TYPE_CHECKING:
    from core.contracts import ExperimentRecord
    from core.settings import Settings

app = typer.Typer(help="Online experiments.", no_args_is_help=True)
experiment = typer.Typer(
    help="Online experiments: A/B splits and interleaving, measured on the stream.", no_args_is_help=True
)
app.add_typer(experiment, name="experiment")

BrokerOption = setting_option("kafka.broker", "--broker", help="bootstrap servers, kafka://host:port[;host:port]")
RegistryOption = setting_option("registry.path", "--registry", help="model registry root directory")


class Mode(str, Enum):
    ab = "ab"
    interleave = "interleave"


class Variant(str, Enum):
    control = "control"
    treatment = "treatment"


@experiment.command()
def start(
    name: str = typer.Option(..., help="the experiment's name (it seeds the users' assignment)"),
    variant: List[str] = typer.Option(..., help="control=<version> and treatment=<version>"),
    share: str = typer.Option("treatment=0.5", help="ab: the share of users served by treatment"),
    mode: Mode = typer.Option(Mode.ab, help="ab: a variant per user; interleave: team-draft merged lists"),
    broker: Optional[str] = BrokerOption,
    registry: Optional[Path] = RegistryOption,
):
    """Check that both versions load (checksums, canary), then announce the experiment to every worker."""
    from core.contracts import ExperimentRecord, VariantVersion
    from core.kafka import check_connection, ensure_topics
    from stream_app.serving import load_recommender

    settings = command_settings({"kafka.broker": broker, "registry.path": registry})
    versions = dict(v.split("=", 1) for v in variant if "=" in v)
    if sorted(versions) != ["control", "treatment"] or len(variant) != 2:
        raise typer.BadParameter("give --variant control=<version> --variant treatment=<version>")
    key, _, value = share.partition("=")
    try:
        treatment_share = float(value)
    except ValueError:
        treatment_share = -1.0
    if key != "treatment" or not 0.0 < treatment_share < 1.0:
        raise typer.BadParameter("give --share treatment=<a share between 0 and 1>", param_hint="--share")
    check_connection(settings)
    asyncio.run(ensure_topics(settings))
    running = asyncio.run(newest_experiment(settings))
    if running is not None and running.state == "running":
        sys.exit(f"error: experiment {running.name!r} is running; stop it first (streamrec experiment stop)")
    loaded = {}
    for label, version in versions.items():
        try:
            loaded[label] = load_recommender(settings, version).runtime.version
        except Exception as e:  # what a worker would refuse: nothing is announced
            sys.exit(f"error: {label} version {version!r} refused, experiment {name!r} not started: {e}")
    record = ExperimentRecord(
        name=name,
        state="running",
        mode=mode.value,
        variants={label: VariantVersion(version=v.name, sha256=v.sha256) for label, v in loaded.items()},
        treatment_share=treatment_share if mode is Mode.ab else 0.5,
        at=datetime.now(timezone.utc).isoformat(),
    )
    announce(settings, record)
    typer.echo(
        f"started experiment {name} ({mode.value}): control {versions['control']}, treatment "
        f"{versions['treatment']}" + (f", treatment share {treatment_share}" if mode is Mode.ab else "")
    )


@experiment.command()
def stop(
    name: str = typer.Option(..., help="the running experiment"),
    promote: Optional[Variant] = typer.Option(None, help="make this variant's version production"),
    broker: Optional[str] = BrokerOption,
    registry: Optional[Path] = RegistryOption,
):
    """End the experiment on every worker: production serves again (with --promote, the variant's version,
    made `latest` and announced on model-updates)."""
    from core.kafka import check_connection, client_security
    from export.model_updates import announce as announce_version
    from export.registry import Registry

    settings = command_settings({"kafka.broker": broker, "registry.path": registry})
    check_connection(settings)
    running = asyncio.run(newest_experiment(settings))
    if running is None or running.name != name or running.state != "running":
        sys.exit(f"error: experiment {name!r} is not running")
    stopped = running.model_copy(
        update={
            "state": "stopped",
            "promote": promote.value if promote else None,
            "at": datetime.now(timezone.utc).isoformat(),
        }
    )
    announce(settings, stopped)
    message = f"stopped experiment {name}"
    if promote:
        reg = Registry(settings.registry.path)
        version = reg.load(running.variants[promote.value].version)  # verified before anyone is told to serve it
        reg.set_latest(version.name)
        topic = settings.topics.model_updates
        announce_version(version, settings.kafka.bootstrap_servers, topic, **client_security(settings.kafka.security))
        message += f"; {promote.value}'s version {version.name} is production (latest, announced)"
    typer.echo(message)


@experiment.command()
def report(
    name: str = typer.Option(..., help="the experiment"),
    png: Optional[Path] = typer.Option(None, help="the chart (default: experiment-<name>.png)"),
    broker: Optional[str] = BrokerOption,
):
    """The outcome per variant, read from the events and recommendations topics, the difference with a 95%
    interval, a verdict, and a PNG of the metric over time."""
    from core.kafka import check_connection
    from export.experiment_report import format_report, plot, read_outcome

    settings = command_settings({"kafka.broker": broker})
    check_connection(settings)
    outcome = asyncio.run(read_outcome(settings, name))
    if not outcome.judged and not any(v.exposures for v in outcome.variants.values()):
        sys.exit(f"error: no list of experiment {name!r} in {settings.topics.recommendations}")
    typer.echo(format_report(outcome))
    typer.echo(f"chart: {plot(outcome, png or Path(f'experiment-{name}.png'))}")


def announce(settings: Settings, record: ExperimentRecord) -> None:
    """Send an experiments record (key: the experiment's name), acknowledged by every in-sync replica."""
    import kafka
    from core.kafka import client_security

    producer = kafka.KafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers, acks="all", **client_security(settings.kafka.security)
    )
    try:
        producer.send(settings.topics.experiments, key=record.name.encode(), value=record.encode()).get(timeout=30)
    finally:
        producer.close()


async def newest_experiment(settings: Settings) -> ExperimentRecord | None:
    """The experiments record in force (the newest), or None if there is none."""
    from core.contracts import parse_experiment
    from export.experiment_report import read_to_end

    records = await read_to_end(settings, settings.topics.experiments)
    return parse_experiment(records[-1].value) if records else None
