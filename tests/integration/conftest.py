"""Real components: an Apache Kafka broker process (one JVM for the session; Tansu for its smoke
suite), worker processes with RocksDB state dirs."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from core.brokers import KafkaCluster, TansuBroker, stop_process
from core.kafka import client_security
from core.settings import Settings, Topics
from stream_app.demo import free_port
from tests.support import ML100K

if TYPE_CHECKING:
    from state.window import UserWindow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """Apache Kafka, one node (KRaft), for the whole run."""
    with KafkaCluster(tmp_path_factory.mktemp("kafka"), ports=[free_port()], controller_ports=[free_port()]) as b:
        yield b


@pytest.fixture(scope="session")
def tansu_broker(tmp_path_factory):
    """The embedded broker `make demo` runs, for its smoke suite."""
    with TansuBroker(port=free_port(), log_path=tmp_path_factory.mktemp("tansu") / "tansu.log") as b:
        yield b


@pytest.fixture(scope="session")
def baseline_registry(tmp_path_factory) -> Path:
    """A registry holding the zero-training baseline (pretrained MiniLM item tower, exported to ONNX)."""
    from export.baseline import build_baseline_version
    from export.registry import Registry

    root = tmp_path_factory.mktemp("registry")
    build_baseline_version(Registry(root))
    return root


def fresh_settings(broker, registry: Path, tmp_path: Path) -> Settings:
    """Fresh topic names and app id per test: the broker is shared by the session."""
    tag = uuid.uuid4().hex[:8]
    topics = Topics(
        events=f"events-{tag}",
        items=f"items-{tag}",
        recommendations=f"recs-{tag}",
        dlq=f"dlq-{tag}",
        model_updates=f"updates-{tag}",
        control=f"control-{tag}",
        profiles=f"profiles-{tag}",
        experiments=f"experiments-{tag}",
    )
    return Settings(
        kafka={"broker": broker.url, "session_timeout_s": 6.0},
        topics=topics,
        registry={"path": registry},
        worker={"data_dir": tmp_path / "state", "web_port": free_port(), "app_id": f"streamrec-{tag}"},
    )


@pytest.fixture
def settings(broker, baseline_registry, tmp_path) -> Settings:
    """On Apache Kafka."""
    return fresh_settings(broker, baseline_registry, tmp_path)


@pytest.fixture(params=["kafka", "tansu"])
def settings_on_each_broker(request, baseline_registry, tmp_path) -> Settings:
    """The Tansu smoke suite: tests that take this run on Apache Kafka and on Tansu."""
    broker = request.getfixturevalue("broker" if request.param == "kafka" else "tansu_broker")
    return fresh_settings(broker, baseline_registry, tmp_path)


@pytest.fixture
def tansu_settings(tansu_broker, baseline_registry, tmp_path) -> Settings:
    return fresh_settings(tansu_broker, baseline_registry, tmp_path)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment of a `streamrec` child process with these settings (every STREAMREC_* var)."""
    return settings.process_env() | {"HF_HUB_OFFLINE": "1"}


class WorkerProcess:
    """`streamrec worker` as a child process (or `command`, e.g. a launcher that injects a fault and
    then runs it); stopped by its PID only."""

    def __init__(self, settings: Settings, log_path: Path, command: list[str] | None = None):
        self.settings = settings
        self.log_path = log_path
        self.command = command or [sys.executable, "-m", "stream_app.cli", "worker"]
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120.0) -> "WorkerProcess":
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=REPO,
                env=settings_env(self.settings),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while not self.healthy():
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker not healthy after {timeout_s}s:\n{self.log()[-4000:]}")
            time.sleep(0.5)
        return self

    def health(self) -> dict | None:
        """The /health body, None while the worker cannot answer or is not ready."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.settings.worker.web_port}/health", timeout=5) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:  # 503: not ready, but answering
            return json.loads(e.read()) if e.code == 503 else None
        except OSError:
            return None

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.settings.worker.web_port}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def healthy(self) -> bool:
        return (self.health() or {}).get("status") == "ok"

    def wait_for(self, condition, timeout_s: float = 60.0) -> None:
        """Until `condition(health)` holds."""
        deadline = time.monotonic() + timeout_s
        while not condition(self.health() or {}):
            if time.monotonic() > deadline:
                raise AssertionError(f"worker health never satisfied the condition: {self.health()}")
            time.sleep(0.2)

    def wait_for_catalog(self, n_items: int) -> None:
        self.wait_for(lambda health: health.get("catalog_items") == n_items)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture
def start_worker(tmp_path):
    workers: list[WorkerProcess] = []

    def start(settings: Settings, command: list[str] | None = None) -> WorkerProcess:
        worker = WorkerProcess(settings, tmp_path / f"worker-{len(workers)}.log", command)
        workers.append(worker)  # before start(): a worker that never gets healthy is stopped too
        return worker.start()

    yield start
    for worker in workers:
        worker.stop()


def run(coro):
    return asyncio.run(coro)


def ml100k_items(n: int) -> list[tuple[str, dict]]:
    from stream_app.replay import dataset_records

    items, _ = dataset_records(ML100K)
    return items[:n]


def dumps(value) -> bytes:
    return json.dumps(value).encode()


async def produce(settings: Settings, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    """Send raw (key, value) pairs, in order, each acknowledged."""
    from stream_app.replay import producer

    async with producer(settings) as p:
        for key, value in records:
            await p.send_and_wait(topic, value, key=key)


def produce_paced(settings: Settings, topic: str, records: list[tuple[bytes, bytes]], rate: float) -> None:
    """Send records at `rate` per second from one producer, retrying each while the broker is gone
    (as any producer would). Blocking: run it in a thread to keep a stream going during a test."""
    from stream_app.replay import producer

    async def send():
        async with producer(settings) as p:
            start = time.monotonic()
            for n, (key, value) in enumerate(records):
                while True:
                    try:
                        await p.send_and_wait(topic, value, key=key)
                        break
                    except Exception:
                        await asyncio.sleep(0.5)
                await asyncio.sleep(max(0.0, (n + 1) / rate - (time.monotonic() - start)))

    asyncio.run(send())


async def consume_until(settings: Settings, topic: str, done, timeout_s: float = 60.0) -> list:
    """All records of `topic` from the start, once `done(records)` holds (or fail after timeout_s)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
        **client_security(settings.kafka.security),
    )
    await consumer.start()
    records: list = []
    try:
        deadline = time.monotonic() + timeout_s
        while not done(records):
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: condition not met after {timeout_s}s with {len(records)} records")
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(messages)
        return records
    finally:
        await consumer.stop()


def topic_configs(settings: Settings, topics: list[str]) -> dict[str, dict[str, str]]:
    """Every config of each topic, as the broker reports it."""
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        found = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics], config_filter="all"
        )
    finally:
        admin.close()
    return {name: {k: v["value"] for k, v in configs.items()} for name, configs in found["topic"].items()}


def latest_by_user(records) -> dict[str, dict]:
    latest = {}
    for r in records:
        value = json.loads(r.value)
        latest[value["user_id"]] = value
    return latest


def read_windows_by_partition(data_dir: Path) -> dict[int, dict[str, "UserWindow"]]:
    """The windows table straight from the worker's RocksDB files (worker stopped), per table
    partition (one store per partition: `windows-<p>.db`)."""
    from rocksdict import AccessType, Options, Rdict

    from state.window import UserWindow

    found: dict[int, dict[str, UserWindow]] = {}
    for path in sorted(Path(data_dir).glob("v*/tables/windows-*.db")):
        db = Rdict(str(path), access_type=AccessType.read_only(), options=Options(raw_mode=True))
        try:
            found[int(path.stem.rsplit("-", 1)[1])] = {
                json.loads(key): UserWindow.decode(value)
                for key, value in db.items()
                if not key.startswith(b"__faust")  # Faust keeps its changelog offset beside the data
            }
        finally:
            db.close()
    return found


def read_windows(data_dir: Path, partitions: Collection[int] | None = None) -> dict[str, "UserWindow"]:
    """The windows of every partition's store in `data_dir`, or only of `partitions` (worker stopped)."""
    return {
        user: window
        for partition, windows in read_windows_by_partition(data_dir).items()
        if partitions is None or partition in partitions
        for user, window in windows.items()
    }


def metric_values(text: str, name: str) -> list[float]:
    """Values of a Prometheus series in /metrics text: every label set of `name`, or the one named
    with its labels (`name{label="value"}`)."""
    return [float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)]


def reference_windows(events, settings: Settings) -> dict[str, "UserWindow"]:
    """The windows a worker must hold: the pure window update applied to each (user, WindowEvent)
    in order."""
    from state.window import UserWindow

    windows: dict[str, UserWindow] = {}
    for user, e in events:
        windows[user] = windows.get(user, UserWindow()).with_events(
            [e], settings.worker.window_size, settings.worker.window_max_age_days * 86_400
        )
    return windows


def event(n: int, user: str, item: str, kind: str = "view", ts: int | None = None) -> tuple[bytes, bytes]:
    """A valid `events` record keyed by user; event n happens n seconds after a fixed start."""
    value = {
        "event_id": f"{user}-{n}",
        "user_id": user,
        "item_id": item,
        "event_type": kind,
        "ts": ts if ts is not None else 1_700_000_000_000 + n * 1000,
    }
    return user.encode(), dumps(value)


@pytest.fixture(scope="session")
def two_tower_registry(tmp_path_factory) -> Path:
    """A registry holding a small two-tower version (not latest): the user-tower serving path."""
    from export.pipeline import export_and_register
    from tests.support import small_two_tower_checkpoint

    checkpoint = small_two_tower_checkpoint(tmp_path_factory.mktemp("checkpoint"))
    root = tmp_path_factory.mktemp("registry-two-tower")
    export_and_register(checkpoint, root, make_latest=False)
    return root


def copy_version(source_root: Path, target_root: Path, name: str | None = None, as_name: str | None = None) -> str:
    """Copy one registered version (default: the only one) into another registry root."""
    import shutil

    from export.registry import Registry

    name = name or Registry(source_root).versions()[-1]
    target = as_name or name
    shutil.copytree(Path(source_root) / name, Path(target_root) / target)
    return target
