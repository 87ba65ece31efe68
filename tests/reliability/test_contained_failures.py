"""Failures after parsing are contained: a model that raises on some windows and records too large
for the broker cost only the affected users' records, and the worker keeps consuming.

The worker is the real one, started through a launcher (written into tmp_path) that wraps
`Recommender.recommend` so that it raises for any window holding the item `poison`, as a model
with a bug would, and then runs `streamrec worker`. The recommendations topic is created beforehand
with `max.message.bytes` = 17,000 (above the producer's 16 KiB batches) and the worker returns 60
items per list: "big" users only ever touch catalog items with 250-character ids, so each of the 60
items of their lists names one of them as `because`, and their records (~19 KB) exceed the limit,
while the others' (~3.6 KB) do not. The broker really refuses such a record: sent, it would fail
its whole producer batch and leave the idempotent producer unable to send to that partition.

The stream comes in three phases, each waited for, so that each user has one event per micro-batch:
every user's first event; then each poison user's event on `poison`; then every user's next event.
In every phase poison and big users share micro-batches with the others. What must hold:

- every planned event is answered by a record it triggered or is in the DLQ, and exactly these
  are dead-lettered: the poison events with "scoring failed: ValueError(...)", every event of the
  big users with "record too large: N bytes, ... takes at most 17000";
- the users hit get no record and keep their window: the windows in RocksDB equal the pure window
  update applied to exactly the answered events (a poison user, answered again in phase 3, has no
  `poison` in their window);
- the worker counts each failure (`streamrec_recommendation_failures_total{stage}`: scoring once
  per poison user, send once per big user per phase), logs it once (one "dead-lettered" line), and
  the same process serves to the end with its agent never crashed.

That it fails without containment: against the worker before it, the first phase times out: the
broker refuses the big users' records (MessageSizeTooLargeError, a warning in the log) and their
events are neither answered nor dead-lettered; without big users, the poison batch crashes the agent
(Faust restarts it) and the poison events are lost the same way. Against this worker without the size
check, the broker refuses whole producer batches (users who share one with a big user get "record
not delivered: MessageSizeTooLargeError()") and then every later batch to that partition
("OutOfOrderSequenceNumber()"): half the users who should be answered are dead-lettered.

Figures (events, outcomes, counters, seconds) are printed from the run.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter

import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from core.kafka import topic_configs
from state.window import WindowEvent
from stream_app.demo import publish_catalog
from tests.integration.conftest import (
    REPO,
    consume_until,
    event,
    metric_values,
    ml100k_items,
    produce,
    read_windows,
    reference_windows,
    run,
)
from tests.reliability.accounting import values
from tests.reliability.conftest import scaled

pytestmark = pytest.mark.integration

POISON = "poison"
LONG_ITEMS = [f"long-{n}-" + "x" * 243 for n in range(1, 4)]  # 250-character ids
MAX_MESSAGE_BYTES = 17_000
TOP_K = 60
N_NORMAL, N_POISON, N_BIG = (int(scaled(s, f)) for s, f in ((8, 200), (4, 50), (4, 50)))
PHASE_TIMEOUT_S = scaled(30, 120)

LAUNCHER = """
import sys

sys.path.insert(0, {repo!r})
from stream_app.cli import app
from stream_app.recommender import Recommender

model_recommend = Recommender.recommend


def recommend(self, windows, *args, **kwargs):
    if any({poison!r} in window.item_ids for window in windows):
        raise ValueError("the model cannot score item {poison}")
    return model_recommend(self, windows, *args, **kwargs)


Recommender.recommend = recommend
app(["worker"])
"""


def planned_phases() -> list[list[tuple[bytes, bytes]]]:
    """Three phases of (key, value) events: every user's first; the poison users' events on `poison`;
    every user's next."""
    users = [f"user{i}" for i in range(N_NORMAL)]
    poisoned = [f"poisoned{i}" for i in range(N_POISON)]
    big = [f"big{i}" for i in range(N_BIG)]
    n = iter(range(10**6))
    first = [event(next(n), u, str(1 + i % 50)) for i, u in enumerate(users + poisoned)]
    first += [event(next(n), u, LONG_ITEMS[0]) for u in big]
    second = [event(next(n), u, POISON) for u in poisoned]
    third = [event(next(n), u, str(51 + i % 50)) for i, u in enumerate(users + poisoned)]
    third += [event(next(n), u, LONG_ITEMS[1]) for u in big]
    return [first, second, third]


def create_small_recommendations_topic(settings) -> None:
    """What `ensure_topics` would create, but taking records of at most MAX_MESSAGE_BYTES."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        configs = topic_configs(settings, compacted=True) | {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
        admin.create_topics(
            [NewTopic(settings.topics.recommendations, settings.kafka.partitions, 1, topic_configs=configs)]
        )
    finally:
        admin.close()


def outcomes(settings, planned_ids: set[str], timeout_s: float) -> tuple[dict[str, int], dict[str, str]]:
    """The size of the recommendation record each event triggered and the DLQ reason of each dead-lettered
    event, by event id, once every planned id has one or the other (both topics read from the start)."""
    read: dict[str, list] = {"answered": [], "dead": []}

    def settled(kind):
        def done(records) -> bool:
            read[kind] = records
            answered = {v["trigger_event_id"] for v in values(read["answered"])}
            dead = {json.loads(r.value)["event_id"] for r in read["dead"]}
            return planned_ids <= answered | dead

        return done

    async def both():
        await asyncio.gather(
            consume_until(settings, settings.topics.recommendations, settled("answered"), timeout_s),
            consume_until(settings, settings.topics.dlq, settled("dead"), timeout_s),
        )

    run(both())
    answered = {json.loads(r.value)["trigger_event_id"]: len(r.value) for r in read["answered"]}
    dead = {json.loads(r.value)["event_id"]: dict(r.headers)["dlq.reason"].decode() for r in read["dead"]}
    return answered, dead


def test_failures_after_parsing_cost_only_the_affected_users(settings, start_worker, tmp_path):
    settings = settings.replace(worker={"top_k": TOP_K})
    create_small_recommendations_topic(settings)
    catalog = ml100k_items(100) + [(i, {"item_id": i, "title": f"Long item {i[:6]}"}) for i in LONG_ITEMS]
    run(publish_catalog(settings, catalog))
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER.format(repo=str(REPO), poison=POISON))
    worker = start_worker(settings, [sys.executable, str(launcher)])

    planned: list[dict] = []
    started = time.monotonic()
    for phase in planned_phases():
        run(produce(settings, settings.topics.events, phase))
        planned += values(phase)
        answered, dead = outcomes(settings, {e["event_id"] for e in planned}, PHASE_TIMEOUT_S)
    settled_s = time.monotonic() - started
    _, metrics = worker.get("/metrics")
    failures = {
        stage: metric_values(metrics.decode(), f'streamrec_recommendation_failures_total{{stage="{stage}"}}')
        for stage in ("scoring", "send")
    }
    health = worker.health()
    alive = worker.process.poll() is None
    worker.stop()
    log = worker.log()
    windows = {u: w.event_ids for u, w in read_windows(settings.worker.data_dir).items()}

    poison_events = {e["event_id"] for e in planned if e["item_id"] == POISON}
    big_events = {e["event_id"] for e in planned if e["user_id"].startswith("big")}
    accepted = [e for e in planned if e["event_id"] not in poison_events | big_events]
    expected_windows = reference_windows(
        ((e["user_id"], WindowEvent(e["event_id"], e["item_id"], e["event_type"], e["ts"] / 1000)) for e in accepted),
        settings,
    )
    same_windows = windows == {u: w.event_ids for u, w in expected_windows.items()}
    reasons = Counter(reason.split(":")[0] for reason in dead.values())
    sizes = sorted(answered.values())
    dead_letter_lines = [line for line in log.splitlines() if "dead-lettered" in line]
    print(
        f"\ncontained failures: {len(planned)} events ({N_NORMAL} users, {N_POISON} poisoned, {N_BIG} big; 3 phases) "
        f"settled in {settled_s:.1f}s: {len(answered)} answered (records {sizes[0]}-{sizes[-1]} bytes), "
        f"{len(dead)} dead-lettered {dict(reasons)}; streamrec_recommendation_failures_total {failures}; "
        f"{len(dead_letter_lines)} 'dead-lettered' log lines, e.g. {dead_letter_lines[-1].split('] ')[-1][:160]!r}; "
        f"health at the end {health and health['status']}, same process: {alive}, agent crashed: "
        f"{'Crashed reason' in log}; {len(windows)} windows, {'equal to' if same_windows else 'DIFFERENT from'} "
        f"the reference"
    )
    assert set(answered) == {e["event_id"] for e in accepted}
    assert set(dead) == poison_events | big_events
    assert all(dead[e] == f"scoring failed: ValueError('the model cannot score item {POISON}')" for e in poison_events)
    assert all(
        dead[e].startswith("record too large: ") and dead[e].endswith(f"takes at most {MAX_MESSAGE_BYTES}")
        for e in big_events
    )
    assert same_windows
    assert failures == {"scoring": [float(N_POISON)], "send": [2.0 * N_BIG]}
    assert len(dead_letter_lines) == N_POISON + 2 * N_BIG
    assert alive and health["status"] == "ok" and "Crashed reason" not in log
