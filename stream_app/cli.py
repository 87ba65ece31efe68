"""The worker side's commands of `streamrec` (broker, worker, replay, recommendations, predict,
demo, console, rollback, forget). `streamrec.cli` adds the trainer's; `python -m stream_app.cli` runs
these alone, never importing the trainer."""

from __future__ import annotations

import asyncio
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from core.options import command_settings, setting_option

app = typer.Typer(
    help="streamrec: real-time recommendations on Kafka.", no_args_is_help=True, pretty_exceptions_enable=False
)

# Options for settings (core.options): not given, the STREAMREC_* env var or the Settings default applies.
BrokerOption = setting_option("kafka.broker", "--broker", help="bootstrap servers, kafka://host:port[;host:port]")
RegistryOption = setting_option("registry.path", "--registry", help="model registry root directory")


class BrokerEngine(str, Enum):
    tansu = "tansu"
    kafka = "kafka"


@app.command()
def broker(
    engine: BrokerEngine = typer.Option(
        BrokerEngine.tansu,
        help="tansu: embedded, no Java, memory only; "
        "kafka: Apache Kafka (KRaft), needs Java 17 and `make setup`'s jars",
    ),
    host: str = "127.0.0.1",
    port: int = typer.Option(9092, help="client port of the first node"),
    nodes: int = typer.Option(1, help="kafka: nodes (3: replication factor 3, min.insync.replicas 2)"),
    data_dir: Path = typer.Option(Path(".streamrec/kafka"), help="kafka: log dirs (formatted once, kept)"),
):
    """Run a local broker on 127.0.0.1 in the foreground until SIGINT/SIGTERM.

    Kafka node i listens on port+i for clients and port+1000+i for its controller."""
    from core.brokers import KafkaCluster, TansuBroker, run_in_foreground
    from core.errors import BrokerError

    if engine is BrokerEngine.tansu:
        process = TansuBroker(host, port)
    else:
        process = KafkaCluster(data_dir, nodes, host, ports=[port + i for i in range(nodes)])
    try:
        run_in_foreground(process)
    except BrokerError as e:
        sys.exit(f"error: {e}")


@app.command()
def worker(
    broker: Optional[str] = BrokerOption,
    data_dir: Optional[Path] = setting_option("worker.data_dir", "--data-dir", help="state dir (RocksDB)"),
    registry: Optional[Path] = RegistryOption,
    web_port: Optional[int] = setting_option("worker.web_port", "--web-port", help="HTTP port"),
    loglevel: str = "info",
):
    """Run the Faust worker: events in, recommendations out."""
    settings = command_settings(
        {"kafka.broker": broker, "worker.data_dir": data_dir, "registry.path": registry, "worker.web_port": web_port}
    )
    from stream_app.worker import run_worker

    run_worker(settings, loglevel)


@app.command()
def replay(
    data: Path = typer.Option(..., help="RecBole atomic files or events/items JSONL"),
    catalog: bool = typer.Option(True, help="publish the items to the items topic"),
    events: bool = typer.Option(True, help="publish the interactions to the events topic"),
    rate: float = typer.Option(500.0, help="events per second (0 = as fast as possible)"),
    limit: Optional[int] = typer.Option(None, help="publish only the first N events"),
    broker: Optional[str] = BrokerOption,
):
    """Publish a dataset's catalog and/or interactions, in timestamp order."""
    from core.errors import BrokerError
    from core.kafka import check_connection, ensure_topics
    from stream_app.replay import dataset_records, publish

    settings = command_settings({"kafka.broker": broker})
    try:
        check_connection(settings)
    except BrokerError as e:
        sys.exit(f"error: {e}")
    items, stream = dataset_records(data)
    stream = stream[:limit] if limit else stream

    async def run():
        await ensure_topics(settings)
        if catalog:
            await publish(settings, settings.topics.items, items, len(items), desc="items")
        if events:
            await publish(settings, settings.topics.events, stream, len(stream), rate or None, desc="events")

    asyncio.run(run())


@app.command()
def recommendations(
    user: Optional[str] = typer.Option(None, help="only this user"),
    follow: bool = typer.Option(False, help="keep printing new records"),
    broker: Optional[str] = BrokerOption,
):
    """Print records from the recommendations topic (JSON lines)."""
    settings = command_settings({"kafka.broker": broker})
    from stream_app.consume import read_recommendations

    async def run():
        async for record in read_recommendations(settings, follow=follow):
            if user is None or record["user_id"] == user:
                print(json.dumps(record), flush=True)

    asyncio.run(run())


@app.command()
def predict(
    input: Path = typer.Option(..., help="JSONL: {user_id, events: [{item_id, event_type, ts}]}"),
    out: Path = typer.Option(..., help="JSONL output"),
    k: Optional[int] = setting_option("worker.top_k", "--k", help="items per user"),
    version: Optional[str] = typer.Option(None, help="model version (default: latest)"),
    catalog: Optional[Path] = typer.Option(None, help="items JSONL or RecBole dir; default: the model's catalog"),
    registry: Optional[Path] = RegistryOption,
    stage: str = typer.Option("full", help="full: with the model's ranking stage if it has one; retrieval: without."),
):
    """Batch top-k for user histories, with the worker's own scoring code."""
    settings = command_settings({"registry.path": registry, "worker.top_k": k})
    from stream_app.batch import predict_file
    from stream_app.recommender import STAGES

    if stage not in STAGES:
        raise typer.BadParameter(f"--stage must be one of {', '.join(STAGES)}, got {stage!r}")
    n = predict_file(settings, input, out, version, catalog, stage)
    typer.echo(f"wrote {n} users to {out}")


@app.command()
def demo(
    data: Path = typer.Option(..., help="MovieLens-100k RecBole directory"),
    rate: float = typer.Option(100.0, help="events per second (a low rate leaves CPU to the training)"),
    events: int = typer.Option(20_000, help="events to replay"),
    users: int = typer.Option(4, help="users shown in the table: the most active of the replay"),
    port: int = typer.Option(0, help="the broker's port (0: any free one)"),
    train: bool = typer.Option(True, "--train/--no-train", help="train in the background and hot-swap it in"),
    train_minutes: float = typer.Option(3.0, help="the training's wall-clock budget (export and swap follow)"),
    console_port: Optional[int] = setting_option("console.port", "--console-port", help="the console's port"),
    registry: Optional[Path] = RegistryOption,
):
    """Embedded broker + worker + console + replay, with a live table of a few users' top-10; the worker
    serves the registry's latest version at once while a model trains in the background, then swaps to it."""
    settings = command_settings({"registry.path": registry, "console.port": console_port})
    from stream_app.demo import run_demo

    result = run_demo(settings, data, rate, events, users, port=port, train_minutes=train_minutes if train else None)
    sys.exit(result.exit_code)


@app.command()
def console(
    host: Optional[str] = setting_option("console.host", "--host", help="address to listen on"),
    port: Optional[int] = setting_option("console.port", "--port", help="HTTP port"),
    workers: Optional[str] = setting_option(
        "console.workers", "--workers", help="the workers' HTTP addresses, comma-separated; none: the local worker's"
    ),
    broker: Optional[str] = BrokerOption,
    registry: Optional[Path] = RegistryOption,
):
    """A read-only web console: live figures, models, dead letters, a user's view (docs/operations.md).

    Its access token is STREAMREC_CONSOLE__TOKEN, not an option (it would show in `ps`); it is required
    to listen on anything but a loopback address."""
    settings = command_settings(
        {
            "console.host": host,
            "console.port": port,
            "console.workers": workers.split(",") if workers else None,
            "kafka.broker": broker,
            "registry.path": registry,
        }
    )
    from console.server import run_console
    from core.errors import ConfigError

    try:
        run_console(settings)
    except ConfigError as e:
        sys.exit(f"error: {e}")


@app.command()
def rollback(
    to: Optional[str] = typer.Option(None, help="version to serve (default: the one before latest)"),
    broker: Optional[str] = BrokerOption,
    registry: Optional[Path] = RegistryOption,
):
    """Serve an older model again: point `latest` at it and announce it to running workers."""
    settings = command_settings({"kafka.broker": broker, "registry.path": registry})
    from core.kafka import client_security
    from export.model_updates import announce
    from export.registry import Registry

    reg = Registry(settings.registry.path)
    versions, current = reg.versions(), reg.latest()
    if to is None:
        older = versions[: versions.index(current)] if current in versions else []
        if not older:
            raise typer.BadParameter(f"no version older than {current!r} in {settings.registry.path}")
        to = older[-1]
    version = reg.load(to)  # verified before anyone is told to serve it
    reg.set_latest(version.name)
    announce(
        version,
        settings.kafka.bootstrap_servers,
        settings.topics.model_updates,
        **client_security(settings.kafka.security),
    )
    typer.echo(f"rolled back {current} -> {version.name}")


@app.command()
def forget(
    user: str = typer.Option(..., help="the user id (the key of their events)"), broker: Optional[str] = BrokerOption
):
    """Forget a user: the worker deletes their window and tombstones their recommendations."""
    settings = command_settings({"kafka.broker": broker})
    from core.contracts import InvalidRecord
    from core.errors import StreamrecError
    from core.kafka import check_connection
    from stream_app.forget import request_forget

    try:
        check_connection(settings)
        partition, offset = asyncio.run(request_forget(settings, user))
    except InvalidRecord as e:
        raise typer.BadParameter(e.reason, param_hint="--user") from None
    except StreamrecError as e:  # broker unreachable; control topic not co-partitioned with events
        sys.exit(f"error: {e}")
    typer.echo(
        f"forget request for user {user!r} sent to {settings.topics.control}[{partition}]@{offset}: the "
        f"worker deletes their window (tombstone on its changelog) and tombstones their key on "
        f"{settings.topics.recommendations}; their events in {settings.topics.events} expire with its "
        f"retention.ms"
    )


if __name__ == "__main__":
    app()
