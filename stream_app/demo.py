"""`make demo`: embedded broker + one worker + a MovieLens replay, watched live.

Everything started here is stopped here, by the process handles we hold.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from core.brokers import TansuBroker, stop_process
from core.errors import RegistryError
from core.kafka import ensure_topics
from core.settings import Settings
from export.registry import Registry
from stream_app.consume import read_recommendations
from stream_app.replay import dataset_records, publish

WORKER_START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WORKER_COMMAND = ("-m", "stream_app.cli", "worker")


def start_worker(settings: Settings, log_path: Path, command: tuple[str, ...] = WORKER_COMMAND) -> subprocess.Popen:
    """`python <command>` (default `streamrec worker`) with these settings in its environment."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, *command], env=settings.process_env(), stdout=log, stderr=subprocess.STDOUT
        )


def render(latest: dict[str, dict], titles: dict[str, str], received: int, sent: int) -> Group:
    tables = []
    for user, record in latest.items():
        table = Table(
            title=f"user {user} · model {record['model_version']} · after event {record['trigger_event_id']}",
            title_justify="left",
            expand=True,
        )
        table.add_column("#", width=3)
        table.add_column("recommended")
        table.add_column("score", justify="right", width=7)
        table.add_column("because you watched")
        for rank, item in enumerate(record["items"][:10], 1):
            because = titles.get(item.get("because") or "", "(trending)")
            table.add_row(str(rank), titles.get(item["item_id"], item["item_id"]), f"{item['score']:.3f}", because)
        tables.append(table)
    return Group(f"events published {sent} · recommendation records received {received}", *tables)


async def publish_catalog(settings: Settings, items: list[tuple[str, dict]]) -> None:
    """Before the worker starts, so it loads the whole catalog before its first event."""
    await ensure_topics(settings)
    await publish(settings, settings.topics.items, items, len(items), desc="catalog → items")


async def _run(
    settings: Settings, items, events, rate: float, n_users: int, worker: subprocess.Popen, console: Console
) -> int:
    titles = {key: value["title"] for key, value in items}
    watched = [u for u, _ in Counter(key for key, _ in events).most_common(n_users)]
    latest: dict[str, dict] = {}
    received = 0
    replay = asyncio.create_task(
        publish(settings, settings.topics.events, events, len(events), rate, desc="replay → events")
    )

    async def watch() -> None:
        nonlocal received
        with Live(render(latest, titles, 0, 0), console=console, refresh_per_second=4) as live:
            async for record in read_recommendations(settings, follow=True, idle_s=0.25):
                received += 1
                if record["user_id"] in watched:
                    latest[record["user_id"]] = record
                live.update(render(latest, titles, received, len(events) if replay.done() else 0))
                if replay.done() and len(latest) == len(watched) and _caught_up(latest, events):
                    return

    budget_s = WORKER_START_TIMEOUT_S + len(events) / rate
    watching = asyncio.create_task(watch())
    worker_exit = asyncio.create_task(exited(worker))
    await asyncio.wait({watching, worker_exit}, timeout=budget_s, return_when=asyncio.FIRST_COMPLETED)
    worker_exit.cancel()
    if not watching.done():
        watching.cancel()
        why = f"the worker exited with {worker.returncode}" if worker_exit.done() else f"{budget_s:.0f}s passed"
        console.print(f"[red]stopped before every watched user's list was up to date: {why}; see the worker log")
        return 1
    await replay
    console.print(f"done: {len(events)} events replayed, {received} recommendation records received")
    return 0


async def exited(process: subprocess.Popen) -> None:
    """Cancellable wait for a child to exit (a thread blocked in wait() would hold up asyncio.run)."""
    while process.poll() is None:
        await asyncio.sleep(0.5)


def _caught_up(latest: dict[str, dict], events: list[tuple[str, dict]]) -> bool:
    """Every watched user's latest list was triggered by that user's last replayed event."""
    last_event = {user: event["event_id"] for user, event in events}
    return all(record["trigger_event_id"] == last_event[user] for user, record in latest.items())


def run_demo(settings: Settings, data: Path, rate: float, n_events: int, n_users: int, port: int) -> int:
    """`settings` with the demo's own broker, state dir and web port."""
    console = Console()
    workdir = Path(tempfile.mkdtemp(prefix="streamrec-demo-"))
    broker = TansuBroker(port=port or free_port(), log_path=workdir / "broker.log")
    settings = settings.replace(
        kafka={"broker": broker.url}, worker={"data_dir": workdir / "state", "web_port": free_port()}
    )
    console.print(f"broker {broker.url} · worker state {settings.worker.data_dir} · logs in {workdir}")
    try:
        version = Registry(settings.registry.path).load()
    except RegistryError as e:
        console.print(f"[red]{e}")
        return 2
    console.print(f"model {version.name} ({version.kind})")
    items, events = dataset_records(data)
    with broker:
        asyncio.run(publish_catalog(settings, items))
        worker = start_worker(settings, workdir / "worker.log")
        try:
            return asyncio.run(_run(settings, items, events[:n_events], rate, n_users, worker, console))
        finally:
            stop_process(worker)
