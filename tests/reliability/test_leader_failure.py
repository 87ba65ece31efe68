"""kill -9 partition leaders of a three-node Apache Kafka cluster under a steady stream, with two
workers: every event gets its recommendation, no window differs from a no-failure reference, and
duplicates carry the `trigger_event_id` of the event they answer.

The cluster is this test's own `KafkaCluster` (three KRaft nodes, each broker and controller;
replication factor 3, min.insync.replicas 2), `events` has 4 partitions, and two workers share
them in one consumer group. A paced acks=all producer (one lane per partition) keeps the stream
going throughout and sends again what failed while a leader moved. The failures:

- "two down" (the issue's sequence; `make test`): kill -9 the node leading the most `events`
  partitions; once every partition has a live leader again (the first election), kill -9 the node
  then leading the most partitions of the windows changelog; after `TWO_DOWN_S` start both again on
  their logs and wait until every partition has a leader and its full ISR. With two of three nodes
  gone the KRaft quorum (2 of 3 voters) and min.insync.replicas 2 are lost: no write succeeds until
  a node is back.
- "one at a time" (full mode only): the same two victims, but the first is back in every ISR before
  the second is killed; the cluster stays writable throughout.

The second victim is chosen after the first election, so it is never the first one (which leads
nothing while it is down, and after its restart until Kafka's preferred-leader rebalance, every 5
minutes).

Accounting (`tests/reliability/accounting.py`): each planned event is the `trigger_event_id` of a
record for its user or in its user's window. Windows are read per table partition from both
workers' RocksDB dirs after both stop; the copy that counts is the one of the worker that owned
the partition at the end (its `/health` `partitions` after the drain). The other worker's copy of
that partition is a standby replica (`standby_replicas` 1) or a stale one left by a partition that
moved (Faust does not delete on revoke); the test reports how many of those differ, but they are
not what a consumer of the table reads.

Figures printed per phase (before, each failure phase, after): p50/p99 latency from an event's
Kafka timestamp to its record's Kafka timestamp and from the event's planned send time, the
longest gap between consecutive recommendation records (overall and per events partition), each
worker's /health; per kill, the active KRaft controller and the time until every partition of
every topic has a live leader again; per restart, the time until every partition has its full ISR;
events, lost, duplicates (by trigger_event_id), events written twice by the producer.

Why the output stops on every partition for ~10 s after a kill (not only on the dead leader's): a
write with acks=all waits for every replica in the ISR, and the dead node stays in the ISR of every
partition it replicates (all of them, at replication factor 3) until the controller fences it,
`broker.session.timeout.ms` (9 s by default) after its last heartbeat. No write, the worker's
included, is acknowledged before that.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import Counter

import pytest
from aiokafka.partitioner import DefaultPartitioner

from core.brokers import KafkaCluster
from state.window import WindowEvent
from stream_app.demo import free_port, free_ports, publish_catalog
from stream_app.replay import producer
from tests.integration.conftest import (
    consume_until,
    fresh_settings,
    ml100k_items,
    read_windows_by_partition,
    reference_windows,
    run,
    topic_configs,
)
from tests.reliability.accounting import account_for, planned_events, values
from tests.reliability.conftest import FULL, AsyncThread, scaled

pytestmark = pytest.mark.integration

SCENARIOS = ("two down", "one at a time") if FULL else ("two down",)
RATE = scaled(40, 100)  # events per second
WARMUP_S = scaled(4, 10)  # stream not measured: producer, workers and JVMs settle
BEFORE_S = scaled(4, 30)  # steady stream measured before the first kill
BETWEEN_S = scaled(
    3, 15
)  # from the first election (two down) or the first node back (one at a time) to the second kill
DOWN_S = scaled(12, 40)  # one at a time: each node down at least this long (and until every partition has a leader)
TWO_DOWN_S = scaled(8, 30)  # two down: from the second kill to the restart of both
AFTER_S = scaled(3, 30)  # stream after the last node is back
EVENTS_PER_USER = 15  # fewer than a window holds (50): the accounting is exact
# Planned generously; the stream stops when the failures are over (users get fewer events then).
MAX_EVENTS = int(RATE * (WARMUP_S + BEFORE_S + BETWEEN_S + 2 * DOWN_S + AFTER_S + 240))
LEADER_TIMEOUT_S = 120.0
PARTITIONS = 4


# --- the stream ------------------------------------------------------------------------------------


class PacedStream(AsyncThread):
    """Sends `records` at `rate` per second from one acks=all producer until `stop` is set.

    One lane per partition: each lane sends what is queued for it in order, waits for the acks, and
    sends again what failed while the partition's leader moved (as any producer would). A partition
    without a leader therefore holds up only its own lane, not the whole stream, as with real
    producers. `queued` records (a prefix of `records`) were handed to the lanes; after `join()`
    every one of them was acknowledged. `due[event_id]` is the wall time the event was due to be
    sent (its planned time: the latency a user sees includes a wait for a new leader)."""

    def __init__(self, settings, records: list[tuple[bytes, bytes]], rate: float, partitions: int):
        super().__init__()
        self.settings, self.records, self.rate, self.partitions = settings, records, rate, partitions
        self.stop = threading.Event()
        self.queued = 0
        self.due: dict[str, float] = {}
        self.retries = 0  # sends that raised and were repeated (the event may be written twice)
        self.slowest_s = 0.0  # the longest from due to acknowledged

    async def main(self) -> None:
        everywhere = list(range(self.partitions))
        async with producer(self.settings) as p:
            lanes = [asyncio.Queue() for _ in everywhere]
            senders = [asyncio.create_task(self._lane(p, lane)) for lane in lanes]
            start = time.monotonic()
            for n, (key, value) in enumerate(self.records):
                await asyncio.sleep(max(0.0, n / self.rate - (time.monotonic() - start)))
                if self.stop.is_set():
                    break
                self.due[json.loads(value)["event_id"]] = due = time.time()
                partition = DefaultPartitioner()(key, everywhere, everywhere)  # the producer's own choice
                lanes[partition].put_nowait((key, value, partition, due))
                self.queued = n + 1
            for lane in lanes:
                lane.put_nowait(None)
            await asyncio.gather(*senders)

    async def _lane(self, p, lane: asyncio.Queue) -> None:
        """Whatever is queued goes out together (pipelined, in order); what failed is sent again."""
        topic = self.settings.topics.events
        more = True
        while more:
            items = [await lane.get()]
            while not lane.empty():
                items.append(lane.get_nowait())
            if items[-1] is None:
                more = False
                items.pop()
            pending = items
            while pending:
                results = []
                for key, value, partition, _ in pending:
                    try:
                        results.append(await p.send(topic, value, key=key, partition=partition))
                    except Exception as e:  # no room while the partition has no leader (request timeout)
                        results.append(e)
                outcomes = [
                    r if isinstance(r, Exception) else (await asyncio.gather(r, return_exceptions=True))[0]
                    for r in results
                ]
                pending = [item for item, o in zip(pending, outcomes) if isinstance(o, Exception)]
                if pending:
                    self.retries += len(pending)
                    await asyncio.sleep(0.5)
            now = time.time()
            self.slowest_s = max([self.slowest_s, *(now - due for *_, due in items)])


class HealthLog(threading.Thread):
    """Every worker's /health (status, owned partitions) twice a second: (wall time, worker, status, partitions)."""

    def __init__(self, workers: dict):
        super().__init__(daemon=True)
        self.workers = workers
        self.stop = threading.Event()
        self.samples: list[tuple[float, str, str, tuple[int, ...]]] = []

    def run(self) -> None:
        while not self.stop.wait(0.5):
            for name, worker in self.workers.items():
                health = worker.health() or {}
                self.samples.append(
                    (time.time(), name, health.get("status", "no answer"), tuple(health.get("partitions", ())))
                )

    def during(self, start: float, end: float) -> str:
        parts = []
        for name in self.workers:
            seen = [(t, s, p) for t, n, s, p in self.samples if n == name and start <= t <= end]
            statuses = Counter(s for _, s, _ in seen)
            not_ok = sum(0.5 for _, s, _ in seen if s != "ok")
            assignments = []
            for _, _, p in seen:
                if not assignments or assignments[-1] != p:
                    assignments.append(p)
            parts.append(
                f"{name}: {dict(statuses)} (≈{not_ok:.1f}s not ok), partitions "
                + " -> ".join(str(list(p)) for p in assignments)
            )
        return "; ".join(parts)


# --- the cluster -----------------------------------------------------------------------------------


def most_led(layout: dict[int, dict]) -> tuple[int, list[int]]:
    """The node leading the most of these partitions (the lowest id on a tie), and the partitions it leads."""
    counts = Counter(p["leader"] for p in layout.values())
    node = min(counts, key=lambda n: (-counts[n], n))
    return node, sorted(i for i, p in layout.items() if p["leader"] == node)


def wait_for_partitions(cluster: KafkaCluster, condition, what: str, timeout_s: float = LEADER_TIMEOUT_S) -> float:
    """Seconds until `condition(partition)` holds for every partition of every topic."""
    start = time.monotonic()
    last = None
    while True:
        try:
            layout = cluster.partitions(timeout_ms=3_000)
            last = [(t, i, p) for t, parts in layout.items() for i, p in parts.items() if not condition(p)]
            if layout and not last:
                return time.monotonic() - start
        except Exception as e:  # the client's bootstrap node may be a dead one
            last = repr(e)
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"not every partition {what} after {timeout_s:.0f}s: {str(last)[:1000]}")
        time.sleep(0.25)


def active_controller(cluster: KafkaCluster) -> int | None:
    """The node that last became the active KRaft controller (highest epoch), from the nodes' logs:
    clients never see the KRaft controller (their metadata names a random broker)."""
    best = (-1, None)
    for node in cluster.nodes:
        log = cluster.node_dir(node.node_id) / "server.log"
        if log.exists():
            for epoch in re.findall(r"Becoming the active controller at epoch (\d+)", log.read_text(errors="replace")):
                best = max(best, (int(epoch), node.node_id), key=lambda b: b[0])
    return best[1]


def kill(cluster: KafkaCluster, node_id: int, wait_for_leaders: bool) -> dict:
    """kill -9 `node_id`; with `wait_for_leaders`, until every partition has a live leader again."""
    down = {node_id} | {n.node_id for n in cluster.nodes if n.node_id not in cluster.processes}
    killed = {"node": node_id, "pid": cluster.pid(node_id), "controller": active_controller(cluster)}
    killed["at"] = time.time()
    cluster.kill(node_id)
    if wait_for_leaders:
        killed["leaders_s"] = wait_for_partitions(
            cluster, lambda p: p["leader"] not in (-1, *down), "has a live leader"
        )
        killed["controller_after"] = active_controller(cluster)
    return killed


def bring_back(cluster: KafkaCluster, node_ids: list[int]) -> dict:
    """Start `node_ids` again on their logs; until every partition has a leader and its full ISR."""
    back = {"nodes": node_ids, "at": time.time()}
    for node_id in node_ids:
        cluster.start_node(node_id)
    cluster.wait_ready(timeout_s=LEADER_TIMEOUT_S)
    back["ready_s"] = time.time() - back["at"]
    back["leaders_s"] = wait_for_partitions(cluster, lambda p: p["leader"] != -1, "has a leader") + back["ready_s"]
    back["isr_s"] = (
        time.time()
        - back["at"]
        + wait_for_partitions(cluster, lambda p: set(p["isr"]) == set(p["replicas"]), "has its full ISR")
    )
    back["done"] = back["at"] + back["isr_s"]
    back["controller"] = active_controller(cluster)
    return back


# --- the figures -----------------------------------------------------------------------------------


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * len(xs) + 0.5) - 1))]


def longest_gap(stamps: list[float], start: float, end: float) -> float:
    """The longest time without a record in [start, end] (seconds; stamps in seconds)."""
    points = sorted([start, end, *(s for s in stamps if start < s < end)])
    return max(b - a for a, b in zip(points, points[1:]))


# --- the test --------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_leader_kill_9_on_three_nodes_loses_nothing(scenario, baseline_registry, start_worker, tmp_path):
    ports = free_ports(6)  # 3 nodes: clients, then controllers
    cluster = KafkaCluster(tmp_path / "kafka3", n_nodes=3, ports=ports[:3], controller_ports=ports[3:])
    cluster_started = time.monotonic()
    with cluster:
        cluster_start_s = time.monotonic() - cluster_started
        settings = fresh_settings(cluster, baseline_registry, tmp_path).replace(
            kafka={"broker": cluster.url, "partitions": PARTITIONS, "replication_factor": 3, "min_insync_replicas": 2}
        )
        t = settings.topics
        changelog = f"{settings.worker.app_id}-windows-changelog"
        watched = [t.events, changelog, t.recommendations]
        run(publish_catalog(settings, ml100k_items(60)))
        first = start_worker(settings)
        second_settings = settings.replace(worker={"data_dir": tmp_path / "state-2", "web_port": free_port()})
        second = start_worker(second_settings)
        workers = {"worker 1": first, "worker 2": second}

        def split_between_both(_=None) -> bool:
            owned = [set((w.health() or {}).get("partitions", [])) for w in workers.values()]
            return all(owned) and owned[0] | owned[1] == set(range(PARTITIONS)) and not owned[0] & owned[1]

        first.wait_for(split_between_both, timeout_s=90)

        layout = cluster.partitions([t.events, changelog])
        configs = topic_configs(settings, [t.events, changelog])
        replication = {topic: sorted({len(p["replicas"]) for p in layout[topic].values()}) for topic in layout}
        min_isr = {topic: configs[topic]["min.insync.replicas"] for topic in configs}
        assert replication == {t.events: [3], changelog: [3]}, replication
        assert min_isr == {t.events: "2", changelog: "2"}, min_isr
        assert len(layout[t.events]) == len(layout[changelog]) == PARTITIONS

        health = HealthLog(workers)
        health.start()
        planned_records = planned_events(MAX_EVENTS, EVENTS_PER_USER)
        stream = PacedStream(settings, planned_records, RATE, PARTITIONS)
        stream_started = time.time()
        stream.start()
        time.sleep(WARMUP_S)
        measured_from = time.time()
        time.sleep(BEFORE_S)

        # the node leading the most events partitions, then the one leading the most changelog partitions
        leaders = {"before": cluster.partitions(watched)}
        victim_1, led_1 = most_led(leaders["before"][t.events])
        also_led_1 = [i for i, p in leaders["before"][changelog].items() if p["leader"] == victim_1]
        kill_1 = kill(cluster, victim_1, wait_for_leaders=True)
        if scenario == "one at a time":
            time.sleep(max(0.0, DOWN_S - (time.time() - kill_1["at"])))
            back_1 = bring_back(cluster, [victim_1])
        time.sleep(BETWEEN_S)
        leaders["after the first election"] = cluster.partitions(watched)
        victim_2, led_2 = most_led(leaders["after the first election"][changelog])
        if scenario == "one at a time":
            kill_2 = kill(cluster, victim_2, wait_for_leaders=True)
            time.sleep(max(0.0, DOWN_S - (time.time() - kill_2["at"])))
            back_2 = bring_back(cluster, [victim_2])
            phases = {
                f"node {victim_1} down (kill -> back in every ISR)": (kill_1["at"], back_1["done"]),
                f"node {victim_2} down (kill -> back in every ISR)": (kill_2["at"], back_2["done"]),
            }
            events = [("kill", kill_1), ("restart", back_1), ("kill", kill_2), ("restart", back_2)]
        else:
            kill_2 = kill(cluster, victim_2, wait_for_leaders=False)
            time.sleep(TWO_DOWN_S)
            back_2 = bring_back(cluster, [victim_1, victim_2])
            phases = {
                f"node {victim_1} down (first kill -> second kill)": (kill_1["at"], kill_2["at"]),
                f"nodes {victim_1} and {victim_2} down (second kill -> both back in every ISR)": (
                    kill_2["at"],
                    back_2["done"],
                ),
            }
            events = [("kill", kill_1), ("kill", kill_2), ("restart", back_2)]
        failure_start, failure_end = kill_1["at"], back_2["done"]
        time.sleep(AFTER_S)

        stream.stop.set()
        stream.join(timeout=300)
        stream_ended = time.time()
        planned = values(planned_records[: stream.queued])
        still_streaming = stream.queued < len(planned_records)

        # drained: every user's last event has triggered a record
        last = {e["user_id"]: e["event_id"] for e in planned}
        drained = False

        def done(records) -> bool:
            nonlocal drained
            triggered = {(v["user_id"], v["trigger_event_id"]) for v in values(records)}
            drained = all(item in triggered for item in last.items())
            return drained or time.time() - stream_ended > scaled(60, 180)

        out_records = run(consume_until(settings, t.recommendations, done, timeout_s=scaled(90, 210)))
        drained_s = time.time() - stream_ended
        ids = {e["event_id"] for e in planned}
        in_records = run(
            consume_until(settings, t.events, lambda rs: ids <= {e["event_id"] for e in values(rs)}, timeout_s=60)
        )

        # the final assignment decides whose copy of a partition counts
        first.wait_for(split_between_both, timeout_s=60)
        owner = {p: name for name, w in workers.items() for p in (w.health() or {}).get("partitions", [])}
        health.stop.set()
        health.join()
        alive = {name: w.process.poll() is None for name, w in workers.items()}
        for w in workers.values():  # both at once: no rebalance onto a worker that is about to stop
            w.process.terminate()
        for w in workers.values():
            w.stop()
        leaders["at the end"] = cluster.partitions(watched)

    stores = {
        name: {
            partition: {user: window.event_ids for user, window in windows.items()}
            for partition, windows in read_windows_by_partition(data.worker.data_dir).items()
        }
        for name, data in (("worker 1", settings), ("worker 2", second_settings))
    }
    windows: dict[str, list[str]] = {}
    other_copies = differing_copies = 0
    for partition, name in owner.items():
        windows.update(stores[name].get(partition, {}))
        for other, store in stores.items():
            if other != name and partition in store:
                other_copies += 1
                differing_copies += store[partition] != stores[name].get(partition, {})

    result = account_for(planned, values(out_records), windows, settings.worker.window_size)
    expected = reference_windows(
        ((e["user_id"], WindowEvent(e["event_id"], e["item_id"], e["event_type"], e["ts"] / 1000)) for e in planned),
        settings,
    )
    expected_ids = {u: w.event_ids for u, w in expected.items()}
    different = sorted(u for u in expected_ids.keys() | windows.keys() if windows.get(u) != expected_ids.get(u))

    # latency: an event's (first) Kafka timestamp to its (first) record's Kafka timestamp
    event_ts: dict[str, float] = {}
    event_partition: dict[str, int] = {}
    for r in in_records:
        e = json.loads(r.value)
        if e["event_id"] not in event_ts or r.timestamp / 1000 < event_ts[e["event_id"]]:
            event_ts[e["event_id"]] = r.timestamp / 1000
            event_partition[e["event_id"]] = r.partition
    record_ts: dict[str, float] = {}
    for r in out_records:
        trigger = json.loads(r.value)["trigger_event_id"]
        record_ts[trigger] = min(record_ts.get(trigger, float("inf")), r.timestamp / 1000)
    written_twice = len(in_records) - len(ids)

    def figures(start: float, end: float) -> str:
        """For the events due in [start, end); gaps between records written in [start, end]."""
        answered = [i for i in record_ts if i in event_ts and start <= stream.due[i] < end]
        latencies = [record_ts[i] - event_ts[i] for i in answered]
        from_due = [record_ts[i] - stream.due[i] for i in answered]
        stamps = [record_ts[i] for i in record_ts if i in event_partition]
        by_partition = [
            longest_gap([record_ts[i] for i in record_ts if event_partition.get(i) == p], start, end)
            for p in range(PARTITIONS)
        ]
        return (
            f"{len(latencies)} events answered; latency from the event's Kafka timestamp p50 "
            f"{percentile(latencies, 50) * 1000:.0f} ms / p99 {percentile(latencies, 99) * 1000:.0f} ms / max "
            f"{max(latencies, default=float('nan')) * 1000:.0f} ms, from its planned send time p50 "
            f"{percentile(from_due, 50) * 1000:.0f} ms / p99 {percentile(from_due, 99) * 1000:.0f} ms / max "
            f"{max(from_due, default=float('nan')) * 1000:.0f} ms; longest gap in output "
            f"{longest_gap(stamps, start, end):.2f}s (per events partition "
            + ", ".join(f"{g:.2f}" for g in by_partition)
            + ")"
        )

    def happened(kind: str, e: dict) -> str:
        at = f"{e['at'] - stream_started:.1f}s into the stream"
        if kind == "kill":
            elected = (
                f"; every partition had a live leader again after {e['leaders_s']:.1f}s (controller then node "
                f"{e['controller_after']})"
                if "leaders_s" in e
                else ""
            )
            return f"kill -9 node {e['node']} (pid {e['pid']}) {at}, active KRaft controller node {e['controller']}{elected}"
        return (
            f"restart of node(s) {e['nodes']} {at}: ready after {e['ready_s']:.1f}s, every partition with a leader "
            f"after {e['leaders_s']:.1f}s and its full ISR after {e['isr_s']:.1f}s (controller node {e['controller']})"
        )

    def leader_table(layout: dict) -> str:
        return " / ".join(str([layout[topic][i]["leader"] for i in range(PARTITIONS)]) for topic in watched)

    timeline = tmp_path / "leader_failure.json"  # the raw figures, for a closer look
    timeline.write_text(
        json.dumps(
            {
                "stream_started": stream_started,
                "measured_from": measured_from,
                "failures": events,
                "events": {i: [stream.due[i], event_ts[i], event_partition[i], record_ts.get(i)] for i in event_ts},
                "health": health.samples,
            }
        )
    )
    lines = [
        f"leader failure, {scenario}, on 3 Kafka nodes ({'full' if FULL else 'short'} mode; cluster started in "
        f"{cluster_start_s:.1f}s): {result.events} events at {RATE:.0f}/s over {stream_ended - stream_started:.1f}s "
        f"({len(last)} users, at most {EVENTS_PER_USER} each; the stream "
        f"{'ran throughout' if still_streaming else 'RAN OUT before the end'}); producer: {stream.retries} sends "
        f"repeated, slowest {stream.slowest_s:.1f}s from due to acknowledged, {written_twice} events written twice; "
        f"replication factor {replication[t.events][0]} (events) / {replication[changelog][0]} (changelog), "
        f"min.insync.replicas 2",
        "leaders (events / changelog / recommendations, by partition): "
        + "; ".join(f"{when} {leader_table(layout)}" for when, layout in leaders.items()),
        f"first victim node {victim_1} led events partitions {led_1} and changelog partitions {also_led_1}; second "
        f"victim node {victim_2} led changelog partitions {led_2} after the first election",
        *(happened(kind, e) for kind, e in events),
        f"before the failures (events due until 1 s before the first kill): "
        f"{figures(measured_from, failure_start - 1)}",
        *(
            f"{name}: {figures(start, end)}\n    workers: {health.during(start, end)}"
            for name, (start, end) in phases.items()
        ),
        f"whole failure (first kill -> every node back in every ISR): {figures(failure_start, failure_end)}",
        f"after: {figures(failure_end, stream_ended)}",
        f"{len(out_records)} records: {result.summary()}; {'drained' if drained else 'NOT drained'} "
        f"{drained_s:.1f}s after the stream stopped",
        f"windows: {len(windows)} from the final owners {dict(sorted(owner.items()))}, {len(different)} different "
        f"from the reference {different[:5]}; {other_copies} copies of a partition on its non-owner, "
        f"{differing_copies} of them differ; workers alive throughout: {alive}; raw figures in {timeline}",
    ]
    print("\n" + "\n  ".join(lines))
    assert stream.error is None, stream.error
    assert still_streaming, "the planned stream ran out before the failures were over"
    assert all(alive.values()), f"a worker exited: {alive}"
    assert result.lost == [], f"{len(result.lost)} planned events lost: {result.lost[:20]}"
    assert result.unplanned == []
    assert drained
    assert different == [], f"{len(different)} windows differ from the reference, e.g. {different[:5]}"
