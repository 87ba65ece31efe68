"""What the stream runtime itself costs per event: Faust's agent against plain aiokafka, same broker, same records.

Issue #17 item 2 lists "per-event Faust overhead under `take_events`" among the costs to measure. Both
runtimes drain the same backlog of synthetic events (one Apache Kafka node, the events topic filled once
before the runs), each run in a fresh process with its own consumer group, micro-batches of the worker's
size and window, and the same work per batch:

- `consume`: take the events and count them;
- `forward`: also send one record per event (the event itself) to an output topic created as
  `recommendations` is, and wait for the batch's acknowledgements (idempotent producer, acks=all, as the
  worker on Kafka);
- `forward+table`: then also write each event into a RocksDB-backed, changelogged table (the bare
  per-event agent's table write, without the window's own work).

**faust** is the worker's app (`stream_app.app.faust_app`: its consumer thread, fetch wait, producer) with
one agent over `stream.take_events`, a raw `faust.Table` for the table. **aiokafka** is one task on the
event loop: `AIOKafkaConsumer.getmany` batches, an `AIOKafkaProducer` configured like Faust's (linger, acks,
idempotence), a `rocksdict.Rdict` plus one changelog record per write, offsets committed every
`broker_commit_interval` as Faust does. CPU is user + system time of the process (all its threads) from its
first event to its last, per event; throughput is events over the same wall time.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/runtime_floor.py [--events 60000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.bare_agent import create_changelog, plain_clients, plain_loop  # noqa: E402
from bench.e2e import fresh_broker, synthetic_events  # noqa: E402
from bench.report import cpu  # noqa: E402
from core.brokers import stop_process  # noqa: E402
from core.kafka import ensure_topics, topic_configs, with_engine  # noqa: E402
from core.settings import Settings, load_settings  # noqa: E402
from stream_app.demo import free_port, start_child  # noqa: E402

OUTPUT_TOPIC = "floor-out"
TASKS = ("consume", "forward", "forward+table")
RUNTIMES = ("faust", "aiokafka")
CATALOG = [str(i) for i in range(1, 1683)]  # ml-100k's item ids
RESULT_TIMEOUT_S = 300.0


class Meter:
    """CPU and wall time from the first event to the last, and the count in between."""

    def __init__(self, total: int, out: Path):
        self.total, self.out, self.seen = total, out, 0
        self.cpu0 = self.wall0 = 0.0

    def add(self, n: int) -> None:
        if self.seen == 0:
            self.cpu0, self.wall0 = process_cpu_s(), time.monotonic()
        self.seen += n
        if self.seen >= self.total:  # the parent reads the file and stops the process
            cpu_s, wall_s = process_cpu_s() - self.cpu0, time.monotonic() - self.wall0
            self.out.write_text(json.dumps({"events": self.seen, "cpu_s": cpu_s, "wall_s": wall_s}))


def process_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process
    return usage.ru_utime + usage.ru_stime


# -- the two runtimes (each runs in a child process) ---------------------------------------------------------
def run_faust(settings: Settings, task: str, meter: Meter) -> None:
    import faust

    from stream_app.app import faust_app, freeze_heap, rocksdb_options
    from stream_app.faust_private import event_context, send_lingering, with_value_codec

    partitions = settings.kafka.partitions
    app = faust_app(settings, partitions)
    events = app.topic(settings.topics.events, key_serializer="raw", value_serializer="raw")
    output = app.topic(OUTPUT_TOPIC, key_serializer="raw", value_serializer="raw")
    table = app.Table(
        "floor",
        key_type=str,  # as the windows table
        partitions=partitions,
        options=rocksdb_options(settings),
        extra_topic_configs=topic_configs(settings),
    )
    table = with_value_codec(table, "raw")

    @app.agent(events)
    async def drain(stream):
        async for batch in stream.take_events(settings.worker.batch_size, within=settings.worker.batch_window_s):
            if task != "consume":
                sent = [await output.send(key=e.key, value=e.value) for e in batch]
                send_lingering(app)  # as the worker does: they are awaited next
                await asyncio.gather(*sent)
            if task == "forward+table":
                for e in batch:
                    with event_context(stream, e):
                        table[e.key.decode()] = e.value
            meter.add(len(batch))

    freeze_heap()
    faust.Worker(app, loglevel="warning").execute_from_commandline()


async def run_aiokafka(settings: Settings, task: str, meter: Meter) -> None:
    from rocksdict import Options, Rdict

    from stream_app.app import rocksdb_options
    from stream_app.faust_private import flush_open_batches

    consumer, producer = plain_clients(settings, settings.worker.app_id)
    options = Options()
    options.set_write_buffer_size(rocksdb_options(settings)["write_buffer_size"])
    table = Rdict(str(settings.worker.data_dir / "floor.rdb"), options)
    changelog = changelog_topic(settings)

    async def drain(batch) -> None:
        if task != "consume":
            sent = [await producer.send(OUTPUT_TOPIC, key=r.key, value=r.value) for r in batch]
            flush_open_batches(producer)
            await asyncio.gather(*sent)
        if task == "forward+table":
            for r in batch:
                table[r.key] = r.value
                await producer.send(changelog, key=r.key, value=r.value, partition=r.partition)
        meter.add(len(batch))

    batch_window_ms = int(settings.worker.batch_window_s * 1000)
    await plain_loop(consumer, producer, drain, max_records=settings.worker.batch_size, timeout_ms=batch_window_ms)


def changelog_topic(settings: Settings) -> str:
    return f"{settings.worker.app_id}-floor-changelog"  # Faust's name for the table's


def child(runtime: str, task: str, total: int, out: Path) -> None:
    settings = with_engine(load_settings())
    meter = Meter(total, out)
    if runtime == "faust":
        run_faust(settings, task, meter)
    else:
        asyncio.run(run_aiokafka(settings, task, meter))


# -- the parent: broker, backlog, runs -----------------------------------------------------------------------
async def fill_backlog(settings: Settings, n: int) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, linger_ms=20)
    await producer.start()
    try:
        for user, value in synthetic_events(CATALOG, n, 10_000, len(CATALOG), 1.0, 1.0, 8):
            await producer.send(settings.topics.events, key=user.encode(), value=json.dumps(value).encode())
        await producer.flush()
    finally:
        await producer.stop()


async def records_in(settings: Settings, topic: str) -> int:
    """How many records `topic` holds (the sum of its partitions' end offsets)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.kafka.partitions)]
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()


def measure(settings: Settings, runtime: str, task: str, total: int, work: Path, run: int) -> dict:
    name = f"{runtime}-{task}-{run}".replace("+", "-")
    out = work / f"{name}.json"
    data_dir = work / name
    data_dir.mkdir()
    child_settings = settings.replace(worker={"app_id": f"floor-{name}", "data_dir": data_dir, "web_port": free_port()})
    if runtime == "aiokafka":
        asyncio.run(create_changelog(settings, changelog_topic(child_settings), settings.kafka.partitions))
    command = (__file__, "--child", runtime, "--task", task, "--events", str(total), "--out", str(out))
    forwarded_before = asyncio.run(records_in(settings, OUTPUT_TOPIC))
    process = start_child(child_settings, work / f"{name}.log", command)
    try:
        deadline = time.monotonic() + RESULT_TIMEOUT_S
        while not out.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} ended or stalled before its last event: see {work / f'{name}.log'}")
            time.sleep(0.5)
        time.sleep(0.2)  # the file is written in one call; let it land
        result = json.loads(out.read_text())
    finally:
        stop_process(process)
    forwarded = asyncio.run(records_in(settings, OUTPUT_TOPIC)) - forwarded_before
    if forwarded != (0 if task == "consume" else total):  # acknowledged before the last event was counted
        raise SystemExit(f"{name} forwarded {forwarded} records for {total} events: see {work / f'{name}.log'}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--child", choices=RUNTIMES, help=argparse.SUPPRESS)
    parser.add_argument("--task", choices=TASKS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.task, args.events, args.out)

    work = Path(tempfile.mkdtemp(prefix="streamrec-floor-"))
    with fresh_broker("kafka", work) as broker:
        settings = load_settings().replace(kafka={"broker": broker.url})
        asyncio.run(ensure_topics(settings.replace(topics={"recommendations": OUTPUT_TOPIC})))
        asyncio.run(fill_backlog(settings, args.events))
        print(
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu()}; Apache Kafka, one node; "
            f"{args.events} events on {settings.kafka.partitions} partition(s), micro-batches of up to "
            f"{settings.worker.batch_size} events or {settings.worker.batch_window_s * 1000:g} ms",
            flush=True,
        )
        measure(settings, "aiokafka", "consume", args.events, work, 0)  # warms the broker; not reported
        rows = {}
        for run in range(1, args.repeats + 1):
            for task in args.tasks:
                for runtime in RUNTIMES:  # interleaved, so a slower spell of the machine hits both
                    result = measure(settings, runtime, task, args.events, work, run)
                    rows.setdefault((task, runtime), []).append(result)
                    print(
                        f"  round {run}, {task}, {runtime}: {1000 * result['cpu_s'] / result['events']:.3f} ms "
                        f"CPU/event, {result['events'] / result['wall_s']:.0f} events/s",
                        flush=True,
                    )
    print(table(rows, args.tasks))


def table(rows: dict, tasks: list[str]) -> str:
    def cpu_ms(task: str, runtime: str) -> list[float]:
        return [1000 * r["cpu_s"] / r["events"] for r in rows[task, runtime]]

    def rate(task: str, runtime: str) -> list[float]:
        return [r["events"] / r["wall_s"] for r in rows[task, runtime]]

    lines = [
        "| work per event | Faust: CPU ms/event | aiokafka: CPU ms/event | Faust / aiokafka | Faust: events/s "
        "| aiokafka: events/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for task in tasks:
        faust, plain = cpu_ms(task, "faust"), cpu_ms(task, "aiokafka")
        ratio = sum(faust) / sum(plain)
        lines.append(
            f"| {task} | {' / '.join(f'{v:.3f}' for v in faust)} | {' / '.join(f'{v:.3f}' for v in plain)} "
            f"| {ratio:.2f} | {' / '.join(f'{v:.0f}' for v in rate(task, 'faust'))} "
            f"| {' / '.join(f'{v:.0f}' for v in rate(task, 'aiokafka'))} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
