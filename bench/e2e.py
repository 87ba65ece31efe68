"""End to end: events produced -> answers consumed, through a broker on this machine (`--engine`:
Apache Kafka, the embedded Tansu, or both one after the other, side by side), for
(a) streamrec's worker serving the registry's latest model and (b) the ceilings of bench/bare_agent.py
on streamrec's engine, store and Kafka tuning without validation or model: per event (the bare Faust
idiom: one window write and one record per event) and per micro-batch (streamrec's I/O: one record
and one window write per user per batch), and (c) with `--ceilings event-aiokafka` / `batch-model-aiokafka`, the
per-event idiom and streamrec's own per-batch steps without Faust (bare_agent.py --aiokafka, plain_worker.py), all on
the same event stream at the same offered rates.

In each of `--repeats` rounds (medians reported), each system gets its own fresh broker and
state, is warmed up, then is offered each rate in turn after 5 s idle (fresh events each time,
the same slices for every system); then, on a fresh broker, a quarter and a half of streamrec's
best rate kept up in the first round (the latency targets' operating points). Per rate: sustained events/s (answered
events / time from first send to last answer), per-event latency p50/p95/p99, unanswered events,
duplicate records, and the CPU time per answered event of the system's processes and of the broker.
Every event counts: streamrec answers a micro-batch with one record per user (trigger = that user's
newest event in it), so an event is answered by the first record of its user whose trigger was sent
at or after it; the per-event agent answers each event itself.

Streams: `ml100k` replays ml-100k in time order with its real users; `synthetic` draws users
uniformly, items from the ml-100k catalog (so the worker knows them) with Zipf popularity,
in per-user bursts (`--sessions` users active at once, bursts of geometric length with mean
`--burst`; `--burst 1`: no user repeats within a batch, the stream without bursts). `--workers 1 2 4`
adds streamrec with that many workers in one consumer group on a `--scale-partitions`-partition
events topic. `--retrieval-only` adds streamrec on the same version with its ranking stage off
(`worker.ranker_candidates=0`): the ranker's cost end to end. `--worker-variant LABEL KEY=VALUE...` adds
streamrec with those worker settings changed (e.g. `--worker-variant "batch window 1 ms" batch_window_s=0.001`):
a setting measured side by side with the default, on equal terms. `--profile` runs each system once more under
py-spy at `--profile-share` of streamrec's maximum (flame graphs in docs/img/, the top functions, and streamrec's
own functions by the time inside them).
`--write-docs` rewrites "## End to end" in docs/benchmarks.md and the plots docs/img/e2e_*.png.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/e2e.py [--engine kafka tansu] [--stream ml100k|synthetic] \\
        [--burst 1] [--rates 250 500 1000 2000] [--seconds 10] [--repeats 3] [--workers 1 2 4] \\
        [--profile [--profile-share 0.25]] [--write-docs]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.bare_agent import OUTPUT_TOPIC as BARE_OUTPUT_TOPIC  # noqa: E402
from bench.flamegraph import py_spy, top_functions  # noqa: E402
from bench.report import cpu, cpu_seconds, write_section  # noqa: E402
from core.brokers import KafkaCluster, TansuBroker, stop_process  # noqa: E402
from core.settings import Settings, load_settings  # noqa: E402
from export.registry import Registry  # noqa: E402
from stream_app.app import freeze_heap  # noqa: E402
from stream_app.demo import WORKER_COMMAND, free_port, publish_catalog, start_child  # noqa: E402
from stream_app.replay import dataset_records, event_record, producer  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "ml-100k"
IMG = ROOT / "docs" / "img"
OWN_PACKAGES = ("core", "state", "stream_app", "export")  # what the worker runs of streamrec's code
START_TIMEOUT_S = 240.0  # process start, group join, catalog load: the warm-up waits this long
DRAIN_TIMEOUT_S = 120.0  # after the last send, for the last answer
# Before the first rate, on every fresh broker: long enough for the broker's own warm-up (most likely the JVM
# compiling its hot paths) to pass. With 2 s of warm-up the first rate's slice measured it: Kafka's CPU per event 2.5-3x
# that of the next rate, and streamrec fell behind at 1000/s before keeping up with 1250/s (docs/benchmarks.md).
WARMUP_RATE, WARMUP_USERS, WARMUP_S = 300.0, 1000, 20.0
SETTLE_S = 5.0  # idle time before each rate

Events = list[tuple[str, dict]]  # (key = user id, value)


CEILINGS = {  # --ceilings: bench/bare_agent.py's idioms, as (label, System fields)
    "event": ("bare agent per event", {}),
    "batch": ("bare agent per batch", {"per_batch": True}),
    "event-aiokafka": ("bare agent per event, plain aiokafka", {"plain": True}),
    "batch-model-aiokafka": ("streamrec's work per batch, plain aiokafka", {"plain": True, "model": True}),
}
RETRIEVAL_ONLY = (("ranker_candidates", "0"),)  # `--retrieval-only`: the worker without its ranking stage


@dataclass(frozen=True)
class System:
    label: str
    bare: bool  # bench/bare_agent.py, else `streamrec worker`
    engine: str  # the broker: kafka | tansu
    per_batch: bool = False  # the bare agent's micro-batch idiom (`bare_agent.py --per-batch`)
    plain: bool = False  # the bare per-event idiom without Faust (`bare_agent.py --aiokafka`)
    model: bool = False  # with `plain`: streamrec's per-batch work without Faust (bench/plain_worker.py)
    workers: int = 1
    partitions: int = 1
    worker: tuple[tuple[str, str], ...] = ()  # streamrec: `worker` settings changed from the configured ones

    def output_topic(self, settings: Settings) -> str:
        return BARE_OUTPUT_TOPIC if self.bare else settings.topics.recommendations


# -- event streams ---------------------------------------------------------------------------
def synthetic_events(
    item_ids: list[str], n: int, users: int, items: int, zipf: float, burst: float, sessions: int, seed: int = 0
) -> Events:
    """`n` events over the first `items` of a shuffled catalog (popularity ∝ 1/rank^zipf), from
    `sessions` concurrent bursts of users drawn uniformly from `users` ids."""
    rng = np.random.default_rng(seed)
    catalog = rng.permutation(item_ids)[:items]
    popularity = 1.0 / np.arange(1, len(catalog) + 1) ** zipf
    drawn = catalog[rng.choice(len(catalog), size=n, p=popularity / popularity.sum())]
    types = rng.choice(["view", "click", "purchase"], size=n, p=[0.6, 0.3, 0.1])
    which = rng.integers(sessions, size=n)

    def session() -> list:
        return [f"s{rng.integers(users)}", int(rng.geometric(1.0 / burst))]  # user, events left

    active = [session() for _ in range(sessions)]
    start_ts = time.time() - 86_400.0
    events = []
    for k in range(n):
        user, left = active[which[k]]
        value = event_record(user, str(drawn[k]), str(types[k]), start_ts + k * 0.01)
        value["event_id"] = f"syn-{k}"
        events.append((user, value))
        active[which[k]] = session() if left <= 1 else [user, left - 1]
    return events


def warmup_events(item_ids: list[str], seconds: float) -> Events:
    """`seconds` of events at WARMUP_RATE, of users the measured stream never has."""
    now = time.time()
    users = [f"warmup-{k % WARMUP_USERS}" for k in range(int(WARMUP_RATE * seconds))]
    return [
        (user, {**event_record(user, item_ids[k % len(item_ids)], "view", now), "event_id": f"warmup-{k}"})
        for k, user in enumerate(users)
    ]


# -- one measurement --------------------------------------------------------------------------
async def measure(
    settings: Settings, output_topic: str, events: Events, rate: float, timeout_s: float = DRAIN_TIMEOUT_S
) -> dict:
    """Offer `events` at `rate`/s and wait until every one is answered on `output_topic`."""
    n = len(events)
    sent, answered = np.full(n, np.nan), np.full(n, np.nan)
    of_user: dict[str, list[int]] = {}  # user -> indices of their events, in send order
    where: dict[str, tuple[str, int]] = {}  # event id -> (user, position in of_user[user])
    for k, (user, value) in enumerate(events):
        where[value["event_id"]] = (user, len(of_user.setdefault(user, [])))
        of_user[user].append(k)
    next_unanswered = dict.fromkeys(of_user, 0)
    unanswered, records, duplicates = n, 0, 0
    triggers_seen: set[str] = set()
    done = asyncio.Event()
    consumer = AIOKafkaConsumer(
        output_topic,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=None,
        auto_offset_reset="latest",
        fetch_max_wait_ms=10,
    )
    await consumer.start()
    await consumer.seek_to_end()

    async def collect() -> None:
        nonlocal unanswered, records, duplicates
        while not done.is_set():
            for messages in (await consumer.getmany(timeout_ms=100)).values():
                now = time.monotonic()
                for m in messages:
                    trigger_id = json.loads(m.value)["trigger_event_id"]
                    trigger = where.get(trigger_id)
                    if trigger is None:  # a warm-up's or an earlier rate's straggler
                        continue
                    records += 1
                    duplicates += trigger_id in triggers_seen  # a second record for the same trigger
                    triggers_seen.add(trigger_id)
                    user, position = trigger
                    first = next_unanswered[user]
                    if position >= first:  # this record answers every earlier unanswered event of the user
                        answered[of_user[user][first : position + 1]] = now
                        next_unanswered[user] = position + 1
                        unanswered -= position + 1 - first
            if unanswered == 0:
                done.set()

    bodies = [(user.encode(), json.dumps(value).encode()) for user, value in events]
    freeze_heap()  # a full GC pass in the load generator would stall sends and receipts alike
    collector = asyncio.create_task(collect())
    start = time.monotonic()
    try:
        # Each event leaves at once: a linger here would be latency that no system under test causes, common
        # to every side (it flattered the ratios: docs/benchmarks.md, "Where the latency goes").
        async with producer(settings.replace(kafka={"producer_linger_ms": 0})) as p:
            for k, (key, body) in enumerate(bodies):
                await p.send(settings.topics.events, body, key=key)
                sent[k] = time.monotonic()
                await asyncio.sleep(max(0.0, (k + 1) / rate - (sent[k] - start)))
        await asyncio.wait_for(done.wait(), timeout=timeout_s)
    except asyncio.TimeoutError:
        pass  # reported as unanswered events
    finally:
        done.set()
        await collector
        await consumer.stop()
    ok = ~np.isnan(answered)  # unanswered events are reported as such, never left out silently
    latency_ms = (answered[ok] - sent[ok]) * 1000
    p50, p95, p99 = np.percentile(latency_ms, [50, 95, 99]) if ok.any() else (np.nan,) * 3
    return {
        "rate": rate,
        "events": n,
        "answered": int(ok.sum()),
        "records": records,
        "duplicates": duplicates,
        "sent_per_s": n / (sent[-1] - start),
        "events_per_s": ok.sum() / (np.nanmax(answered) - start) if ok.any() else 0.0,
        "p50": p50,
        "p95": p95,
        "p99": p99,
        "latency_ms": latency_ms,
        "growth": latency_growth(sent[ok], latency_ms),
    }


def latency_growth(sent_s: np.ndarray, latency_ms: np.ndarray) -> float:
    """Latency gained per second of stream, ms/s: the median latency of the last fifth of the answered events
    minus that of the first fifth, over the time between their median sends. A system that falls behind by a
    fraction f of the offered rate gains about 1000·f/(1 − f) ms per second (its queue grows); one that keeps
    up, about 0."""
    fifth = len(sent_s) // 5
    if fifth == 0:
        return 0.0
    order = np.argsort(sent_s)
    first, last = order[:fifth], order[-fifth:]
    span = np.median(sent_s[last]) - np.median(sent_s[first])
    return float((np.median(latency_ms[last]) - np.median(latency_ms[first])) / span) if span > 0 else 0.0


# -- running a system -------------------------------------------------------------------------
@contextmanager
def fresh_broker(engine: str, work: Path):
    """A new, empty broker of this engine for one run (Kafka: one node, log under `work`)."""
    if engine == "kafka":
        broker = KafkaCluster(work / "kafka", ports=[free_port()], controller_ports=[free_port()])
    else:
        broker = TansuBroker(port=free_port(), log_path=work / "broker.log")
    with broker:
        yield broker


def start_system(system: System, settings: Settings, log_path: Path) -> subprocess.Popen:
    if not system.bare:
        return start_child(settings, log_path, WORKER_COMMAND)
    if system.model:
        return start_child(settings, log_path, (str(ROOT / "bench" / "plain_worker.py"),))
    agent = (str(ROOT / "bench" / "bare_agent.py"),) + (("--per-batch",) if system.per_batch else ())
    agent += ("--aiokafka",) if system.plain else ()
    return start_child(settings, log_path, agent)


def wait_for_group(ports: list[int], partitions: int, timeout_s: float = START_TIMEOUT_S) -> None:
    """Until every streamrec worker is healthy and they split the events partitions between them."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        owned = []
        for port in ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    owned.append(json.load(response)["partitions"])
            except (OSError, ValueError, KeyError):
                break
        if len(owned) == len(ports) and all(owned) and sorted(sum(owned, [])) == list(range(partitions)):
            return
        time.sleep(1.0)
    raise TimeoutError(f"workers on ports {ports} did not settle on {partitions} partitions in {timeout_s:.0f}s")


# Row key -> the worker histogram (stream_app/metrics.py) whose mean over a slice the row holds, in ms: where
# the latency goes inside streamrec's worker (the bare agents have none).
IN_WORKER = {
    "wait_ms": "streamrec_event_wait_seconds",  # per event: from its send to the agent taking its batch
    "batch_ms": "streamrec_batch_seconds",  # per micro-batch: the agent's whole work on it
    "scoring_ms": "streamrec_scoring_seconds",  # of which scoring
    "delivery_ms": "streamrec_delivery_seconds",  # of which waiting for the records' acknowledgements
}


def worker_totals(ports: list[int]) -> dict[str, np.ndarray]:
    """{histogram: [seconds, observations]} of the IN_WORKER histograms over the workers' /metrics, so far."""
    totals = {name: np.zeros(2) for name in IN_WORKER.values()}
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            families = text_string_to_metric_families(response.read().decode())
        for family in (f for f in families if f.name in totals):
            values = {sample.name: sample.value for sample in family.samples}
            totals[family.name] += [values[f"{family.name}_sum"], values[f"{family.name}_count"]]
    return totals


def in_worker_means(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> dict[str, float]:
    """The IN_WORKER row keys: each histogram's mean between two `worker_totals`, ms (NaN: none observed)."""
    means = {}
    for key, name in IN_WORKER.items():
        seconds, observations = after[name] - before[name]
        means[key] = 1000 * seconds / observations if observations else float("nan")
    return means


def run_system(
    system: System,
    settings: Settings,
    items: Events,
    stream: Events,
    rates: list[float],
    seconds: float,
    work: Path,
    flame_graph: Path | None = None,
    idle_s: float = 0.0,
    warmup_s: float = WARMUP_S,
) -> list[dict]:
    """Fresh broker and state; start the system (`settings` on that broker), warm it up (`warmup_s` at
    WARMUP_RATE), offer each rate in turn with the stream's next `rate * seconds` events. Each row also carries the CPU time
    the system's processes and the broker used over it, per answered event. With `flame_graph`, py-spy
    samples the (first) worker process over the rates (collapsed stacks: `work`/stacks.txt). With
    `idle_s`, the CPU seconds per second each side used over that long idle before the first rate are
    in every row too (`idle_worker_cpu`, `idle_broker_cpu`)."""
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    with fresh_broker(system.engine, work) as broker:
        settings = settings.replace(kafka={"broker": broker.url, "partitions": system.partitions})
        settings = settings.replace(worker=dict(system.worker))
        asyncio.run(publish_catalog(settings, items))
        each = [
            settings.replace(worker={"data_dir": work / f"state-{n}", "web_port": free_port()})
            for n in range(system.workers)
        ]  # each process: its own dir and port
        processes = [start_system(system, s, work / f"worker-{n}.log") for n, s in enumerate(each)]
        ports = [] if system.bare else [s.worker.web_port for s in each]
        pids = {"worker": [p.pid for p in processes], "broker": [p.pid for p in broker.children()]}
        try:
            if not system.bare:
                wait_for_group(ports, system.partitions)
            warm = asyncio.run(
                measure(
                    settings,
                    system.output_topic(settings),
                    warmup_events([k for k, _ in items], warmup_s),
                    WARMUP_RATE,
                    timeout_s=START_TIMEOUT_S,
                )
            )
            if warm["answered"] < warm["events"]:
                raise RuntimeError(f"{system.label} did not answer its warm-up; logs in {work}")
            idle = {}
            if idle_s:
                time.sleep(SETTLE_S)
                before = {side: sum(map(cpu_seconds, ps)) for side, ps in pids.items()}
                time.sleep(idle_s)
                idle = {
                    f"idle_{side}_cpu": (sum(map(cpu_seconds, ps)) - before[side]) / idle_s for side, ps in pids.items()
                }
            offset = 0
            for rate in rates:
                time.sleep(SETTLE_S)  # let the previous rate's after-effects (compaction, GC) pass
                events = stream[offset : offset + int(rate * seconds)]
                offset += len(events)
                before = {side: sum(map(cpu_seconds, ps)) for side, ps in pids.items()}
                in_worker_before = worker_totals(ports)
                with (
                    py_spy(processes[0].pid, seconds, flame_graph, work / "stacks.txt")
                    if flame_graph
                    else nullcontext()
                ):
                    row = asyncio.run(measure(settings, system.output_topic(settings), events, rate))
                for side, ps in pids.items():
                    row[f"{side}_cpu_ms"] = (sum(map(cpu_seconds, ps)) - before[side]) * 1000 / max(row["answered"], 1)
                row |= in_worker_means(in_worker_before, worker_totals(ports))
                rows.append(row | idle)
                print(f"{system.label:>34} offered {rate:6.0f}/s: {line(row)}", flush=True)
        finally:
            for process in processes:
                stop_process(process)
    return rows


OPERATING_POINTS = ((0.25, 100.0), (0.5, 50.0))  # (share of streamrec's maximum, p99 target ms) after the grid


def operating_rates(rows: list[dict]) -> list[float]:
    """The rates of OPERATING_POINTS for a system that gave `rows`: shares of its `maximum`."""
    return [round(share * maximum(rows)) for share, _ in OPERATING_POINTS]


def run_rounds(
    systems: list[System],
    settings: Settings,
    items: Events,
    stream: Events,
    rates: list[float],
    seconds: float,
    work: Path,
    repeats: int,
    warmup_s: float,
) -> dict[System, list[dict]]:
    """`repeats` rounds of every system (streamrec first) on the same events and rates, each followed by
    the operating points (a quarter and a half of streamrec's best rate kept up in the first round), on a fresh
    broker (Tansu slows down as record batches pile up, docs/reliability.md); per rate, the median over the
    rounds. The rounds interleave the systems, so that a change in the machine's other load moves all of them."""
    rounds: dict[System, list[list[dict]]] = {system: [] for system in systems}
    points: list[float] = []
    for r in range(repeats):
        for system in systems:
            name = f"{system.engine}-{slug(system)}-{r}"
            rows = run_system(system, settings, items, stream, rates, seconds, work / name, warmup_s=warmup_s)
            points = points or operating_rates(rows)
            operating = work / f"{name}-operating"
            rounds[system].append(
                rows + run_system(system, settings, items, stream, points, seconds, operating, warmup_s=warmup_s)
            )
    return {system: median_rows(runs) for system, runs in rounds.items()}


def streamrec_variants(
    engine: str, settings: Settings, retrieval_only: bool, worker_variants: list[list[str]]
) -> list[System]:
    """streamrec with worker settings changed: `--retrieval-only`, then each `--worker-variant LABEL KEY=VALUE...`
    (checked against `settings` here, before any broker starts)."""
    variants = [("retrieval only", RETRIEVAL_ONLY)] if retrieval_only else []
    for label, *changes in worker_variants:
        if not changes or any("=" not in change for change in changes):
            raise SystemExit(
                f"--worker-variant {label!r}: give the worker settings as KEY=VALUE, e.g. batch_window_s=0.001"
            )
        variants.append((label, tuple(tuple(change.split("=", 1)) for change in changes)))
    for label, worker in variants:
        try:
            settings.replace(worker=dict(worker))
        except ValueError as e:  # pydantic's ValidationError: an unknown setting or a bad value
            raise SystemExit(f"--worker-variant {label!r}: {e}") from None
    return [System(f"streamrec, {label}", bare=False, engine=engine, worker=worker) for label, worker in variants]


def slug(system: System) -> str:
    if not system.bare:
        # From the label: "streamrec, retrieval only" -> streamrec-retrieval-only.
        return "-".join(re.findall(r"[a-z0-9]+", system.label.lower()))
    if system.model:
        return "plain-worker"
    return "bare-batch" if system.per_batch else "bare-event-aiokafka" if system.plain else "bare-event"


MEDIAN_KEYS = (
    *("events_per_s", "sent_per_s", "p50", "p95", "p99", "growth", "records"),
    *("worker_cpu_ms", "broker_cpu_ms", *IN_WORKER),
)


def median_rows(runs: list[list[dict]]) -> list[dict]:
    """Per offered rate, the median of each figure over the runs, the worst unanswered and duplicate
    counts, the range of p99, all latencies."""
    merged = []
    for rows in zip(*runs):
        row = {key: float(np.median([r[key] for r in rows])) for key in MEDIAN_KEYS}
        row.update(
            rate=rows[0]["rate"],
            events=rows[0]["events"],
            answered=min(r["answered"] for r in rows),
            duplicates=max(r["duplicates"] for r in rows),
            runs=len(rows),
            p99_range=(min(r["p99"] for r in rows), max(r["p99"] for r in rows)),
            latency_ms=np.concatenate([r["latency_ms"] for r in rows]),
        )
        merged.append(row)
    return merged


MAX_GROWTH_MS_PER_S = 20.0  # latency gained per second of stream: falling behind by about 2 % of the rate


def keeps_up(row: dict) -> bool:
    """Answered every event, sustained at least 90 % of the offered rate and its latency did not grow by more
    than MAX_GROWTH_MS_PER_S: otherwise the system is overloaded at this rate (its queue grows and its latency
    is the queue's), and no ratio is taken. The growth catches a queue the 90 % leaves: at 90 % of the rate
    the last events of an 8 s run wait about 0.9 s."""
    return (
        row["answered"] == row["events"]
        and row["events_per_s"] >= 0.9 * row["rate"]
        and row["growth"] <= MAX_GROWTH_MS_PER_S
    )


def line(row: dict) -> str:
    return (
        f"sustained {row['events_per_s']:6.0f}/s{'' if keeps_up(row) else ' (OVERLOADED)'}, p50 {row['p50']:7.1f} ms, "
        f"p95 {row['p95']:7.1f} ms, p99 {row['p99']:7.1f} ms, latency growth {row['growth']:6.1f} ms/s; "
        f"{row['events'] - row['answered']} unanswered, "
        f"{row['duplicates']} duplicate records, {row['records']:.0f} records for {row['events']} events; CPU ms/event "
        f"worker {row['worker_cpu_ms']:.3f}, broker {row['broker_cpu_ms']:.3f}; in the worker, ms: wait / batch "
        f"(scoring, delivery) {in_worker(row)} "
        f"(sent at {row['sent_per_s']:.0f}/s)"
    )


def best(rows: list[dict]) -> float:
    return max(r["events_per_s"] for r in rows)


def best_kept_up(rows: list[dict]) -> float:
    """The highest sustained rate among the rates the system kept up with (0 if none)."""
    return max((r["events_per_s"] for r in rows if keeps_up(r)), default=0.0)


def maximum(rows: list[dict]) -> float:
    """A system's maximum for the operating points and the profile: its best rate kept up, or its best
    sustained one if it kept up with none."""
    return best_kept_up(rows) or best(rows)


# -- report -----------------------------------------------------------------------------------
def system_table(rows: list[dict]) -> str:
    """One system, one row per offered rate, every event accounted for."""
    head = (
        "| offered /s | sustained /s | p50 ms | p95 ms | p99 ms (range) | latency growth ms/s | unanswered "
        "| duplicate records | records / events | worker CPU ms/event | broker CPU ms/event "
        "| in the worker, ms: wait / batch (scoring, delivery) |\n| " + " | ".join(["---:"] * 12) + " |"
    )
    body = [
        f"| {r['rate']:.0f} | {r['events_per_s']:.0f}{'' if keeps_up(r) else ' (overloaded)'} | {r['p50']:.1f} "
        f"| {r['p95']:.1f} | {p99(r)} | {r['growth']:.1f} | {r['events'] - r['answered']} | {r['duplicates']} "
        f"| {r['records']:.0f} / {r['events']} | {r['worker_cpu_ms']:.3f} | {r['broker_cpu_ms']:.3f} | {in_worker(r)} |"
        for r in rows
    ]
    return "\n".join([head, *body])


def ratio_table(results: dict[System, list[dict]], real: System) -> str:
    """streamrec over each ceiling, per rate: p99 and worker CPU per event, only where both keep up."""
    ceilings = [s for s in results if s.bare]
    head = (
        "| offered /s | "
        + " | ".join(f"p99 streamrec / {c.label} | worker CPU streamrec / {c.label}" for c in ceilings)
        + " |\n| "
        + " | ".join(["---:"] * (1 + 2 * len(ceilings)))
        + " |"
    )
    body = []
    for k, r in enumerate(results[real]):
        cells = [f"{r['rate']:.0f}"]
        for c in ceilings:
            b = results[c][k]
            if keeps_up(r) and keeps_up(b):
                cells += [f"{r['p99'] / b['p99']:.2f}", f"{r['worker_cpu_ms'] / b['worker_cpu_ms']:.2f}"]
            else:
                who = " and ".join(n for n, x in (("streamrec", r), (c.label, b)) if not keeps_up(x))
                cells += [f"— ({who} overloaded)"] * 2
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, *body])


def in_worker(row: dict) -> str:
    """Means over the slice inside streamrec's worker (IN_WORKER), ms: an event's wait for its micro-batch, then
    per batch the agent's whole work on it, of which scoring and delivery; — for the bare agents."""
    if not np.isfinite(row["batch_ms"]):
        return "—"
    return f"{row['wait_ms']:.1f} / {row['batch_ms']:.2f} ({row['scoring_ms']:.2f}, {row['delivery_ms']:.2f})"


def p99(row: dict) -> str:
    """A `median_rows` row's p99, with its range over the runs when there was more than one."""
    low, high = row["p99_range"]
    return f"{row['p99']:.1f}" + (f" ({low:.0f}–{high:.0f})" if row["runs"] > 1 else "")


def scale_table(results: dict[System, list[dict]]) -> str:
    """Scale-out: per worker count and rate, sustained events/s and events per worker CPU-second."""
    head = (
        "| workers | offered /s | sustained /s | p99 ms | unanswered | worker CPU ms/event (all workers) "
        "| events per worker CPU-second | broker CPU ms/event |\n| " + " | ".join(["---:"] * 8) + " |"
    )
    body = [
        f"| {s.workers} | {r['rate']:.0f} | {r['events_per_s']:.0f}{'' if keeps_up(r) else ' (overloaded)'} "
        f"| {r['p99']:.1f} | {r['events'] - r['answered']} | {r['worker_cpu_ms']:.3f} "
        f"| {1000 / r['worker_cpu_ms']:.0f} | {r['broker_cpu_ms']:.3f} |"
        for s, rows in results.items()
        for r in rows
    ]
    return "\n".join([head, *body])


def on_grid(rows: list[dict]) -> list[dict]:
    """A system's rows of the grid: the operating points after it left out."""
    return rows[: -len(OPERATING_POINTS)]


def maxima(rows: list[dict], other: list[dict]) -> tuple[str, float]:
    """Two systems' best rates kept up on the grid, said and as a ratio; no ratio (NaN) where the other kept up
    with none of the grid's rates."""
    mine, theirs = best_kept_up(on_grid(rows)), best_kept_up(on_grid(other))
    if not theirs:
        return f"best rate kept up on the grid {mine:.0f}/s vs none (it kept up with no rate of the grid)", float("nan")
    return f"best rate kept up on the grid {mine:.0f}/s vs {theirs:.0f}/s = {mine / theirs:.2f}", mine / theirs


def verdicts(results: dict[System, list[dict]], real: System) -> list[str]:
    """The issue's targets, each against the per-event ceiling (the bare idiom) and, where run, the
    micro-batch one; p99 ratios only at rates both sides keep up with."""
    lines = []
    ok = lambda met: "met" if met else "**not met**"  # noqa: E731
    for c in (s for s in results if s.bare):
        pairs = [(r, b) for r, b in zip(results[real], results[c]) if keeps_up(r) and keeps_up(b)]
        worst = max((r["p99"] / b["p99"] for r, b in pairs), default=float("nan"))
        cpu_ratio = [r["worker_cpu_ms"] / b["worker_cpu_ms"] for r, b in pairs]
        lines += [
            f"- against the {c.label}: {maxima(results[real], results[c])[0]}; "
            f"p99 ratio at the {len(pairs)} rate(s) both keep up with: worst {worst:.2f} "
            f"(target ≤ 1.25: {ok(worst <= 1.25)}); worker CPU per event streamrec / ceiling "
            f"{', '.join(f'{x:.2f}' for x in cpu_ratio) or '—'}",
        ]
    for other in (s for s in results if s.worker == RETRIEVAL_ONLY):  # the ranker's cost
        said, ratio = maxima(results[real], results[other])
        lines.append(f"- against {other.label}: {said} (target ≥ 0.7: {ok(ratio >= 0.7)})")
    grid = on_grid(results[real])
    top = best_kept_up(grid)
    top_rate = max((r["rate"] for r in grid if keeps_up(r)), default=0.0)
    above = [r["rate"] for r in grid if r["rate"] > top_rate]  # all overloaded: top_rate is the highest kept up
    lines.append(
        f"- streamrec's maximum: {top:.0f}/s, the best rate it kept up with; "
        + (
            f"it fell behind at {min(above):.0f}/s offered"
            if above
            else "it kept up at the grid's highest rate, so the maximum is at least this (**not located**)"
        )
    )
    for (share, target), row in zip(OPERATING_POINTS, results[real][-len(OPERATING_POINTS) :]):
        lines.append(
            f"- streamrec p99 at {share:g} × its maximum ({row['rate']:.0f}/s): {row['p99']:.1f} ms "
            f"(target ≤ {target:g} ms: {ok(keeps_up(row) and row['p99'] <= target)})"
        )
    return lines


def plot(results: dict[System, list[dict]], real: System) -> list[Path]:
    """Throughput and latency CDF for one engine: docs/img/e2e_{throughput,latency}_<engine>.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    top = 0.0
    for system, rows in results.items():
        rows = sorted(rows, key=lambda r: r["rate"])
        ax.plot([r["rate"] for r in rows], [r["events_per_s"] for r in rows], "o-", label=system.label)
        top = max(top, *(r["rate"] for r in rows))
    ax.plot([0, top], [0, top], ":", color="grey", label="sustained = offered")
    ax.set(xlabel="offered events/s", ylabel="sustained events/s", title=f"Throughput, end to end ({real.engine})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    throughput = IMG / f"e2e_throughput_{real.engine}.png"
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(throughput, dpi=110)

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    rate = results[real][-1]["rate"]
    for system, rows in results.items():
        if system.workers > 1:
            continue
        latency = np.sort(rows[-1]["latency_ms"])
        (curve,) = ax.plot(latency, np.arange(1, len(latency) + 1) / len(latency), label=system.label)
        ax.axvline(np.percentile(latency, 99), color=curve.get_color(), linestyle=":", linewidth=1)
    ax.axvline(100, color="red", linestyle="--", linewidth=1, label="100 ms target")
    ax.set(
        xscale="log",
        xlabel="event → answer latency, ms (dotted: p99)",
        ylabel="fraction of events (unanswered ones: never)",
        title=f"Latency CDF at {rate:.0f} events/s (¼ of streamrec's best; {real.engine})",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    latency_png = IMG / f"e2e_latency_{real.engine}.png"
    fig.savefig(latency_png, dpi=110)
    return [throughput, latency_png]


# -- main -------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--engine",
        nargs="+",
        choices=["kafka", "tansu"],
        default=["kafka"],
        help="broker(s): each engine gets the whole run, reported side by side",
    )
    parser.add_argument("--rates", type=float, nargs="+", default=[250, 500, 1000, 2000])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=WARMUP_S,
        help=f"events at {WARMUP_RATE:g}/s before the first rate, on every fresh broker (default {WARMUP_S:g})",
    )
    parser.add_argument("--stream", choices=["ml100k", "synthetic"], default="ml100k")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every system; medians reported")
    parser.add_argument(
        "--ceilings",
        nargs="+",
        choices=list(CEILINGS),
        default=["event", "batch"],
        help="bare agents to run: per event (the bare idiom), per micro-batch (streamrec's I/O without the model), "
        "per event without Faust (event-aiokafka: the same work on plain aiokafka), streamrec's own work per "
        "micro-batch without Faust (batch-model-aiokafka: bench/plain_worker.py, the worker's model and steps)",
    )
    parser.add_argument("--users", type=int, default=10_000, help="synthetic: user ids")
    parser.add_argument("--items", type=int, default=1682, help="synthetic: items (≤ the ml-100k catalog)")
    parser.add_argument("--zipf", type=float, default=1.0, help="synthetic: item popularity ∝ 1/rank^zipf")
    parser.add_argument("--burst", type=float, default=5.0, help="synthetic: mean events per user burst")
    parser.add_argument("--sessions", type=int, default=8, help="synthetic: bursts interleaved at once")
    parser.add_argument("--workers", type=int, nargs="*", default=[], help="also streamrec with N workers, e.g. 1 2 4")
    parser.add_argument("--scale-partitions", type=int, default=4)
    parser.add_argument("--scale-rates", type=float, nargs="+", help="rates for --workers (default: --rates)")
    parser.add_argument("--scale-seconds", type=float, help="seconds per rate for --workers (default: --seconds)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="then each system once more under py-spy at --profile-share of streamrec's maximum: "
        "docs/img/flame_<engine>_<system>_<stream>_<percent>.svg",
    )
    parser.add_argument(
        "--profile-share",
        type=float,
        default=0.25,
        help="--profile's rate, as a share of streamrec's best rate kept up on the grid (default 0.25)",
    )
    parser.add_argument(
        "--retrieval-only",
        action="store_true",
        help="also streamrec with the ranking stage off (worker.ranker_candidates=0) on the same version: "
        "the ranker's cost end to end",
    )
    parser.add_argument(
        "--worker-variant",
        nargs="+",
        action="append",
        default=[],
        metavar=("LABEL", "KEY=VALUE"),
        help="also streamrec with these `worker` settings changed, on the same version (repeatable), e.g. "
        '--worker-variant "batch window 1 ms" batch_window_s=0.001',
    )
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()

    settings = load_settings()
    version = Registry(settings.registry.path).load()
    items, replay = dataset_records(DATA)
    scale_rates, scale_seconds = args.scale_rates or args.rates, args.scale_seconds or args.seconds
    operating_bound = sum(share for share, _ in OPERATING_POINTS) * max(args.rates)  # at most, after the grid
    needed = int(max((sum(args.rates) + operating_bound) * args.seconds, sum(scale_rates) * scale_seconds)) + 1
    if args.stream == "synthetic":
        stream = synthetic_events(
            [k for k, _ in items], needed, args.users, args.items, args.zipf, args.burst, args.sessions
        )
    elif len(replay) < needed:
        raise SystemExit(f"ml-100k has {len(replay)} events; these rates and seconds may need {needed}")
    else:
        stream = replay
    work = Path(tempfile.mkdtemp(prefix="streamrec-e2e-"))
    load_before = os.getloadavg()[0]
    print(f"model {version.name} ({version.kind}); stream {args.stream}; logs in {work}", flush=True)

    runs = []  # (engine, {system: rows}, {scale system: rows}, streamrec's system)
    for engine in args.engine:
        real = System("streamrec", bare=False, engine=engine)
        ceilings = [
            System(label, bare=True, engine=engine, **idiom) for label, idiom in map(CEILINGS.get, args.ceilings)
        ]
        systems = [real, *streamrec_variants(engine, settings, args.retrieval_only, args.worker_variant), *ceilings]
        results = run_rounds(
            systems, settings, items, stream, args.rates, args.seconds, work, args.repeats, args.warmup_seconds
        )
        scale: dict[System, list[dict]] = {}
        for n in args.workers:
            system = System(
                f"streamrec, {n} worker{'s' * (n > 1)}, {args.scale_partitions} partitions",
                bare=False,
                engine=engine,
                workers=n,
                partitions=args.scale_partitions,
            )
            scale[system] = run_system(
                system,
                settings,
                items,
                stream,
                scale_rates,
                scale_seconds,
                work / f"{engine}-workers-{n}",
                warmup_s=args.warmup_seconds,
            )
        runs.append((engine, results, scale, real))
        if args.profile:
            print_profiles(results, settings, items, stream, args, work / f"{engine}-profile")
    load_after = os.getloadavg()[0]

    for engine, results, scale, real in runs:
        print(f"\n{engine}:")
        for system, rows in results.items():
            print(f"{system.label}\n{system_table(rows)}")
        print(ratio_table(results, real))
        print("\n".join(verdicts(results, real)))
        if scale:
            print(scale_table(scale))
    if len(runs) > 1:
        print("\n" + engines_table(runs))
    command = "HF_HUB_OFFLINE=1 .venv/bin/python bench/e2e.py " + shlex.join(sys.argv[1:])
    print(f"\nreproduce: {command}")
    if args.write_docs:
        sections = [
            markdown(results, scale, real, version, args, plot({**results, **scale}, real))
            for _, results, scale, real in runs
        ]
        write_section(
            ROOT / "docs" / "benchmarks.md",
            "## End to end",
            header(runs, args, command, (load_before, load_after), settings) + "".join(sections),
        )


def print_profiles(results: dict[System, list[dict]], settings: Settings, items, stream, args, work: Path) -> None:
    """Each system once more at `args.profile_share` of streamrec's maximum, fresh events, under py-spy:
    flame graphs, the top functions, and streamrec's own functions by the time inside them."""
    grid = next(on_grid(rows) for system, rows in results.items() if not system.bare)
    rate = round(args.profile_share * maximum(grid))
    fresh = stream[-int(rate * args.seconds) :]
    for system in results:
        svg = IMG / f"flame_{system.engine}_{slug(system)}_{args.stream}_{100 * args.profile_share:.0f}pct.svg"
        run_system(
            system, settings, items, fresh, [rate], args.seconds, work / slug(system), svg, warmup_s=args.warmup_seconds
        )
        stacks = work / slug(system) / "stacks.txt"
        print(f"\n{system.label} at {rate:.0f}/s under py-spy: {svg.relative_to(ROOT)}")
        print(top_functions(stacks))
        print(f"\n{system.label}, streamrec's own functions by the time inside them:")
        print(top_functions(stacks, 25, packages=OWN_PACKAGES))


def engines_table(runs) -> str:
    """Per offered rate, every system on every engine: max sustained, p99 and CPU per event side by side."""
    head = (
        "| engine | system | best sustained /s (kept up) | p99 ms at each rate | worker CPU ms/event at each rate "
        "| broker CPU ms/event at each rate |\n| --- | --- | ---: | --- | --- | --- |"
    )

    def each(rows: list[dict], key: str, digits: int) -> str:
        return ", ".join(f"{r[key]:.{digits}f}" for r in rows)

    body = [
        f"| {engine} | {system.label} | {best_kept_up(rows):.0f} | {each(rows, 'p99', 0)} "
        f"| {each(rows, 'worker_cpu_ms', 2)} | {each(rows, 'broker_cpu_ms', 2)} |"
        for engine, results, _, _ in runs
        for system, rows in results.items()
    ]
    return "\n".join([head, *body])


def stream_text(args) -> str:
    if args.stream == "ml100k":
        return (
            "ml-100k replayed in time order (real users: several events of one user often share a "
            "micro-batch, so streamrec sends fewer records than events)"
        )
    return (
        f"synthetic: {args.users:,} users drawn uniformly, {args.items:,} ml-100k catalog items with Zipf "
        f"popularity (exponent {args.zipf:g}), {args.sessions} interleaved user bursts of mean length "
        f"{args.burst:g} events"
    )


def header(runs, args, command: str, load: tuple[float, float], settings: Settings) -> str:
    """What was measured and how, for every engine in the run; the side-by-side table."""
    engines = " and ".join(
        {"kafka": "Apache Kafka (one KRaft node, `core.brokers.KafkaCluster`)", "tansu": "the embedded Tansu"}[engine]
        for engine, *_ in runs
    )
    variants = {s.label: s.worker for _, results, *_ in runs for s in results if s.worker}
    variants_text = "".join(
        f"\n- **{label}**: the same worker and version with "
        + ", ".join(f"`worker.{k}` {v}" for k, v in worker)
        + (": the ranking stage off, the ranker's cost end to end" if worker == RETRIEVAL_ONLY else "")
        + "."
        for label, worker in variants.items()
    )
    plain_text = (
        "\n- **bare agent per event, plain aiokafka** (`bench/bare_agent.py --aiokafka`): the per-event idiom without "
        "Faust: one task on an aiokafka consumer and producer, the windows in `rocksdict` with a changelog record per "
        "write (what the same work costs on a lighter runtime; no recovery or rebalance handling)."
        if "event-aiokafka" in args.ceilings
        else ""
    ) + (
        "\n- **streamrec's work per batch, plain aiokafka** (`bench/plain_worker.py`): the events agent's steps on the "
        "worker's model and settings (validation, windows, scoring, one record per touched user acknowledged before "
        "its window is written once, with a changelog record) on one task over an aiokafka consumer and producer and "
        "`rocksdict`: what streamrec's own work costs on a lighter runtime; no recovery, rebalance handling, profiles, "
        "experiments or HTTP pages."
        if "batch-model-aiokafka" in args.ceilings
        else ""
    )
    return f"""## End to end

Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {cpu()}; load average {load[0]:.1f} at the
start and {load[1]:.1f} at the end (the broker, the system under test and the load generator alone fill both
cores at the higher rates; above ~1 at the start means other jobs were running). Broker: {engines}, one
engine after the other, all on this machine. In each of {args.repeats} round(s), every system gets a fresh
broker and fresh state, a warm-up ({args.warmup_seconds:g} s at {WARMUP_RATE:g}/s), then each offered rate for
{args.seconds:g} s ({SETTLE_S:g} s idle before each) with fresh events (the same events for every system, round and engine); then, on a fresh broker again,
a quarter and a half of streamrec's best rate kept up in the first round (its maximum on the grid). Figures
are medians over the rounds (p99 range in brackets; unanswered and duplicates: the worst round). Events: {stream_text(args)}.

- **streamrec**: `streamrec worker`, micro-batches of up to {settings.worker.batch_size} events or
  {settings.worker.batch_window_s * 1000:g} ms, one record per user touched by a batch, sent at once (not held for the linger) and acknowledged
  before the user's window is written; on Apache Kafka its producer is idempotent with acks=all.{variants_text}
- **bare agent per event** (`bench/bare_agent.py`): the ceiling of the bare Faust idiom: the same Faust app
  settings (RocksDB store, fetch wait {settings.kafka.fetch_max_wait_ms} ms, linger {settings.kafka.producer_linger_ms} ms), the same
  `windows` table updated with `UserWindow.with_events` per event, one output record per event; no validation, no model.
- **bare agent per batch** (`bench/bare_agent.py --per-batch`): streamrec's I/O without validation and model: the same
  micro-batches, one record per touched user, sent at once and acknowledged before each window is written once.{plain_text}

The bare agents' output topic is created as `recommendations` is (partitions, replication, configs). Latency
counts every answered event: from its send (the load generator does not linger) to the receipt of the first
record of its user triggered by it or a later event; **unanswered** events (none answered them within {DRAIN_TIMEOUT_S:g} s of the last send) are counted in
their own column, never left out silently; **duplicate records** are second records for one trigger. Sustained =
answered events / (last answer − first send). **Latency growth**: the median latency of the last fifth of the
events minus that of the first fifth, per second between them (a system falling behind by a fraction f of the
rate gains about 1000·f/(1 − f) ms/s). A system **keeps up** at a rate if it answered every event, sustained
≥ 90 % of it and its latency grew by at most {MAX_GROWTH_MS_PER_S:g} ms/s; otherwise it is labelled overloaded,
and no ratio is taken at that rate. **CPU ms/event**:
user + system CPU time of the system's processes (and of the broker's) over the rate's slice, per answered event
(`/proc`; less noisy here than throughput). **In the worker** (streamrec only): means over the slice of the worker's
own histograms, read from `/metrics` before and after it: **wait**, per event, from its send (its Kafka timestamp)
to the events agent taking its micro-batch (the broker, the fetch and the batch window); **batch**, per
micro-batch, the agent's whole work on it, of which **scoring** (user tower, retrieval, ranking stage and rules)
and **delivery** (waiting for the broker to acknowledge its records). The rest of an event's latency is the
output record's way to the reader. Where a user's events come in bursts (records < events), streamrec and the
per-batch agent do less Kafka and RocksDB work per event than the per-event agent.

Side by side (medians over the rounds; the rates are {", ".join(f"{r:g}" for r in args.rates)}, then a quarter and a half of streamrec's maximum):

{engines_table(runs)}

Reproduce:

```
{command}
```
"""


def markdown(
    results: dict[System, list[dict]],
    scale: dict[System, list[dict]],
    real: System,
    version,
    args,
    images: list[Path],
) -> str:
    """One engine's tables, verdicts and plots."""
    tables = "\n\n".join(f"{system.label}:\n\n{system_table(rows)}" for system, rows in results.items())
    parts = [
        f"""
### On {real.engine}

Model `{version.name}` ({version.kind}); the operating points (a quarter and a half of streamrec's maximum) are
{" and ".join(f"{r['rate']:.0f}/s" for r in results[real][-len(OPERATING_POINTS) :])}.

{tables}

streamrec over each ceiling, where both keep up:

{ratio_table(results, real)}

Against the targets (p99 within 1.25x of the ceiling; p99 ≤ 100 ms at a quarter of the maximum, ≤ 50 ms at a half):

""",
        "\n".join(verdicts(results, real)),
        f"""

![sustained vs offered events/s, {real.engine}](img/{images[0].name})
![latency CDF, {real.engine}](img/{images[1].name})
""",
    ]
    if scale:
        parts.append(f"""
Scale-out on {real.engine}: streamrec with {" / ".join(str(s.workers) for s in scale)} worker(s) in one consumer
group on a {args.scale_partitions}-partition events topic, {args.scale_seconds or args.seconds:g} s per rate. The machine
has {os.cpu_count()} logical CPUs for the broker, the load generator and the workers, so more worker processes cannot
add throughput here; events per worker CPU-second is the figure that carries over to more cores.

{scale_table(scale)}
""")
    return "".join(parts)


if __name__ == "__main__":
    main()
