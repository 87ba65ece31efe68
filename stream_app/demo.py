"""`make demo`: embedded broker + one worker + the console + a MovieLens replay, watched live, while a
model trains in the background and is hot-swapped in when it is ready.

The worker starts on the registry's latest version (`make demo` registers the zero-training baseline
first), so recommendations flow within a minute. Beside it, `streamrec train --max-minutes N` runs as a
child process (its output in train.log); when it has registered a version, the demo announces it on
`model-updates`, the worker swaps to it, and each watched user's last event is replayed once more so the
table shows the new version's lists. Everything started here is stopped here, by the process handles we hold.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from core.brokers import TansuBroker, stop_process, wait_for_port
from core.errors import BrokerError, RegistryError
from core.kafka import client_security, ensure_topics
from core.settings import Settings
from export.model_updates import announce
from export.registry import Registry
from stream_app.consume import read_recommendations
from stream_app.replay import dataset_records, publish

WORKER_START_TIMEOUT_S = 120.0
# After the training budget: loading the data and text vectors before it, evaluation, ONNX export and parity
# after it, then the worker's swap; generous for a loaded 2-core machine.
TRAINING_OVERHEAD_S = 600.0
CONSOLE_START_TIMEOUT_S = 30.0


def free_port(host: str = "127.0.0.1", port: int = 0) -> int:
    """`port` if nothing listens on it (0, or taken: one the system picks)."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct ports nothing listens on. One `free_port` call after another may get the same port
    twice (each socket is closed before the next is bound): a Kafka node then refused its config, its
    client and controller listeners on one port."""
    with ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]


WORKER_COMMAND = ("-m", "stream_app.cli", "worker")
CONSOLE_COMMAND = ("-m", "stream_app.cli", "console")


def train_command(data: Path, minutes: float) -> tuple[str, ...]:
    """`streamrec train` with its defaults and a wall-clock budget; it exports and registers as `latest`.
    A child process: the trainer's code (torch) never loads into the demo."""
    return ("-m", "streamrec.cli", "train", "--data", str(data), "--max-minutes", f"{minutes:g}")


def start_child(settings: Settings, log_path: Path, command: tuple[str, ...]) -> subprocess.Popen:
    """`python <command>` with these settings in its environment, its output appended to `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, *command], env=settings.process_env(), stdout=log, stderr=subprocess.STDOUT
        )


@dataclass
class Training:
    """The background `streamrec train` and what became of it."""

    budget_s: float
    log_path: Path
    process: subprocess.Popen | None = None
    started: float = 0.0  # monotonic
    registered: str | None = None  # the version it registered, announced on model-updates
    failed: str | None = None  # why no version will be swapped in

    def status(self, now: float, swapped_to: str | None) -> str:
        """One line for the table's header."""
        if swapped_to is not None:
            return f"trained model {swapped_to} serving (hot-swapped)"
        if self.failed is not None:
            return f"[red]{self.failed}"
        if self.registered is not None:
            return f"trained model {self.registered} announced; the worker is swapping to it"
        if self.process is None:
            return "training starts once the baseline serves"
        elapsed = now - self.started
        return (
            f"training in the background: {clock(elapsed)} elapsed, budget {clock(self.budget_s)} "
            f"+ export · {last_line(self.log_path)}"
        )


@dataclass
class DemoState:
    """What the live table shows; updated by the demo's tasks."""

    started: float  # monotonic
    titles: dict[str, str]
    watched: list[str]
    events: list[tuple[str, dict]]
    console_url: str | None
    training: Training | None
    latest: dict[str, dict] = field(default_factory=dict)  # watched user -> newest record
    received: int = 0
    sent: int = 0
    first_record_at: float | None = None
    swapped_to: str | None = None
    swapped_at: float | None = None
    versions_seen: list[str] = field(default_factory=list)  # model versions of the records, in order of appearance

    def record(self, record: dict, now: float) -> None:
        self.received += 1
        if self.first_record_at is None:
            self.first_record_at = now
        if record["model_version"] not in self.versions_seen:
            self.versions_seen.append(record["model_version"])
        if record["user_id"] in self.watched:
            self.latest[record["user_id"]] = record

    def finished(self, replayed: bool) -> bool:
        """The replay is done, training has settled, and every watched user's newest list answers their
        last event, from the trained version once it serves."""
        training_settled = self.training is None or self.training.failed is not None or self.swapped_to is not None
        return (
            replayed
            and training_settled
            and len(self.latest) == len(self.watched)
            and caught_up(self.latest, self.events, self.swapped_to)
        )

    def header(self, now: float) -> list[str]:
        lines = [f"events published {self.sent} · recommendation records received {self.received}"]
        if self.console_url:
            lines.append(f"console: {self.console_url}")
        return lines + self.milestones(now)

    def milestones(self, now: float) -> list[str]:
        """First recommendations, the swap, the training's state."""
        lines = []
        if self.first_record_at is not None:
            lines.append(f"first recommendations after {clock(self.first_record_at - self.started)}")
        if self.swapped_at is not None:
            lines.append(f"hot swap to {self.swapped_to} after {clock(self.swapped_at - self.started)}")
        if self.training is not None:
            lines.append(self.training.status(now, self.swapped_to))
        return lines


def clock(seconds: float) -> str:
    """m:ss"""
    minutes, s = divmod(max(0, round(seconds)), 60)
    return f"{minutes}:{s:02d}"


def last_line(log_path: Path, width: int = 110) -> str:
    """The newest line of a child's log, a progress bar's latest redraw (after its last \\r) included."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.replace("\r", "\n").split("\n") if line.strip()]
    return lines[-1][:width] if lines else ""


def watched_users(events: list[tuple[str, dict]], n_users: int) -> list[str]:
    """The users with the most events in the replay."""
    return [user for user, _ in Counter(key for key, _ in events).most_common(n_users)]


def last_events(events: list[tuple[str, dict]], users: list[str]) -> list[tuple[str, dict]]:
    """Each user's last event, replayed once more after a swap: the worker dedups it in the window but
    answers it with a list from the model it now serves."""
    last = {user: (user, event) for user, event in events if user in users}
    return [last[user] for user in users if user in last]


def caught_up(latest: dict[str, dict], events: list[tuple[str, dict]], version: str | None = None) -> bool:
    """Every watched user's latest list was triggered by that user's last replayed event (and comes from
    `version`, when given)."""
    last_event = {user: event["event_id"] for user, event in events}
    return all(
        record["trigger_event_id"] == last_event[user] and version in (None, record["model_version"])
        for user, record in latest.items()
    )


def render(state: DemoState, now: float) -> Group:
    tables = []
    for user, record in state.latest.items():
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
            because = state.titles.get(item.get("because") or "", "(trending)")
            table.add_row(
                str(rank), state.titles.get(item["item_id"], item["item_id"]), f"{item['score']:.3f}", because
            )
        tables.append(table)
    return Group(*state.header(now), *tables)


async def publish_catalog(settings: Settings, items: list[tuple[str, dict]]) -> None:
    """Before the worker starts, so it loads the whole catalog before its first event."""
    await ensure_topics(settings)
    await publish(settings, settings.topics.items, items, len(items), desc="catalog → items")


async def exited(process: subprocess.Popen) -> None:
    """Cancellable wait for a child to exit (a thread blocked in wait() would hold up asyncio.run)."""
    while process.poll() is None:
        await asyncio.sleep(0.5)


async def serving_version(http: aiohttp.ClientSession, url: str) -> dict:
    """The worker's /health body (also on 503), {} while it does not answer."""
    try:
        async with http.get(url) as response:
            return await response.json()
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return {}


async def train_and_swap(
    settings: Settings, data: Path, state: DemoState, started_worker: asyncio.Event, replayed: asyncio.Event
) -> None:
    """Once the baseline serves: train in a child process, announce what it registered, wait until the
    worker serves it (or refuses it), then replay the watched users' last events once more."""
    training = state.training
    registry = Registry(settings.registry.path)
    before = registry.latest()
    await started_worker.wait()
    training.process = start_child(settings, training.log_path, train_command(data, training.budget_s / 60))
    training.started = time.monotonic()
    await exited(training.process)
    if training.process.returncode != 0:
        training.failed = f"training exited with {training.process.returncode}; see {training.log_path}"
        return
    if registry.latest() in (None, before):
        training.failed = f"training registered no new version; see {training.log_path}"
        return
    version = registry.load()
    security = client_security(settings.kafka.security)
    await asyncio.to_thread(
        announce, version, settings.kafka.bootstrap_servers, settings.topics.model_updates, **security
    )
    training.registered = version.name
    health_url = f"http://127.0.0.1:{settings.worker.web_port}/health"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        while True:
            health = await serving_version(http, health_url)
            if health.get("model_version") == version.name:
                break
            if version.name in (health.get("refused_versions") or {}):
                training.failed = f"the worker refused {version.name}: {health['refused_versions'][version.name]}"
                return
            await asyncio.sleep(0.5)
    state.swapped_to, state.swapped_at = version.name, time.monotonic()
    await replayed.wait()
    again = last_events(state.events, state.watched)
    await publish(settings, settings.topics.events, again, len(again), desc="watched users' last events → events")


async def _run(
    settings: Settings,
    data: Path,
    state: DemoState,
    rate: float,
    worker: subprocess.Popen,
    console: Console,
) -> int:
    replayed, serving = asyncio.Event(), asyncio.Event()

    async def replay() -> None:
        state.sent = await publish(
            settings, settings.topics.events, state.events, len(state.events), rate, desc="replay → events"
        )
        replayed.set()

    async def watch() -> None:
        async for record in read_recommendations(settings, follow=True, idle_s=0.25):
            state.record(record, time.monotonic())
            serving.set()

    budget_s = WORKER_START_TIMEOUT_S + len(state.events) / rate
    if state.training is not None:
        budget_s += state.training.budget_s + TRAINING_OVERHEAD_S
    tasks = [asyncio.create_task(replay()), asyncio.create_task(watch())]
    if state.training is not None:
        tasks.append(asyncio.create_task(train_and_swap(settings, data, state, serving, replayed)))
    why = None
    try:
        with Live(render(state, time.monotonic()), console=console, refresh_per_second=4) as live:
            while not state.finished(replayed.is_set()):
                now = time.monotonic()
                live.update(render(state, now))
                if worker.poll() is not None:
                    why = f"the worker exited with {worker.returncode}; see its log"
                elif failed := next((t for t in tasks if t.done() and t.exception() is not None), None):
                    why = f"{type(failed.exception()).__name__}: {failed.exception()}"
                elif now - state.started > budget_s:
                    why = f"{budget_s:.0f}s passed"
                if why:
                    break
                await asyncio.sleep(0.25)
            live.update(render(state, time.monotonic()))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if why:
        console.print(f"[red]stopped before every watched user's list was up to date: {why}")
        return 1
    if state.training is not None and state.training.failed is not None:
        console.print(f"[red]the baseline served throughout, but {state.training.failed}")
        return 1
    console.print(
        f"done after {clock(time.monotonic() - state.started)}: {state.sent} events replayed, "
        f"{state.received} recommendation records received; " + " · ".join(state.milestones(time.monotonic()))
    )
    return 0


@dataclass
class DemoResult:
    """What `run_demo` saw; `exit_code` is the command's. Times are seconds since the demo started."""

    exit_code: int
    first_recommendations_s: float | None = None
    swapped_to: str | None = None
    swap_s: float | None = None
    versions_seen: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)  # every process it started, each stopped before it returned


def run_demo(
    settings: Settings,
    data: Path,
    rate: float,
    n_events: int,
    n_users: int,
    port: int,
    train_minutes: float | None = 3.0,
    console: Console | None = None,
) -> DemoResult:
    """`settings` with the demo's own broker, state dir and web port; the console on `settings.console`'s
    address; no training when `train_minutes` is None."""
    console = console or Console()
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="streamrec-demo-"))
    broker = TansuBroker(port=port or free_port(), log_path=workdir / "broker.log")
    settings = settings.replace(
        kafka={"broker": broker.url},
        worker={"data_dir": workdir / "state", "web_port": free_port()},
        console={"port": free_port(settings.console.host, settings.console.port)},  # another if it is taken
    )
    console.print(f"broker {broker.url} · worker state {settings.worker.data_dir} · logs in {workdir}")
    try:
        version = Registry(settings.registry.path).load()
    except RegistryError as e:
        console.print(f"[red]{e}")
        return DemoResult(exit_code=2)
    console.print(f"model {version.name} ({version.kind})")
    items, events = dataset_records(data)
    events = events[:n_events]
    training = None if train_minutes is None else Training(train_minutes * 60, workdir / "train.log")
    children: list[subprocess.Popen] = []
    with broker:
        try:
            asyncio.run(publish_catalog(settings, items))
            children.append(start_child(settings, workdir / "worker.log", WORKER_COMMAND))
            children.append(start_child(settings, workdir / "console.log", CONSOLE_COMMAND))
            console_url = f"http://{settings.console.host}:{settings.console.port}/"
            try:
                wait_for_port(settings.console.host, settings.console.port, CONSOLE_START_TIMEOUT_S, children[-1])
                console.print(f"console: {console_url}")
            except (BrokerError, TimeoutError) as e:  # BrokerError: wait_for_port's "the process exited"
                console.print(f"[yellow]the console did not start ({e}); see {workdir / 'console.log'}")
                console_url = None
            state = DemoState(
                started=started,
                titles={key: value["title"] for key, value in items},
                watched=watched_users(events, n_users),
                events=events,
                console_url=console_url,
                training=training,
            )
            try:
                code = asyncio.run(_run(settings, data, state, rate, children[0], console))
            except KeyboardInterrupt:
                console.print("interrupted: stopping everything the demo started")
                code = 130
        finally:
            if training is not None and training.process is not None:
                stop_process(training.process)
            for child in reversed(children):
                stop_process(child)
    return DemoResult(
        exit_code=code,
        first_recommendations_s=None if state.first_record_at is None else state.first_record_at - started,
        swapped_to=state.swapped_to,
        swap_s=None if state.swapped_at is None else state.swapped_at - started,
        versions_seen=state.versions_seen,
        pids=[child.pid for child in children] + ([training.process.pid] if training and training.process else []),
    )
