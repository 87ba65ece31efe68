"""Property-based adversarial run: thousands of malformed and hostile `events` records, mixed
with good events, through the real broker into a real worker process.

How the records are generated: every kind of record (tests/reliability/hostile.py: 5 kinds of
good event, 2 kinds of duplicate, 19 kinds of damage) has a Hypothesis strategy. Starting a
broker and a worker per Hypothesis example would take hours, so each strategy runs once as a
Hypothesis test in its generate phase (a fixed seed, `max_examples` = that kind's share of
the run) and collects its examples; the lot is shuffled with the same seed into one stream and
produced to one worker. Hypothesis chooses the values (boundaries, unicode, sizes); we choose
how many of each kind. A failure lists the offending records by kind and position; rerun with
its STREAMREC_ADVERSARIAL_SEED for the same choices (timestamps are drawn relative to the run's
start). The same strategies also drive a plain Hypothesis property on the parser (with
shrinking), which runs in milliseconds per example.

What must hold (docs/reliability.md):
- the worker never crashes: the same process is alive and /health is ok at the end, and its
  log has no traceback;
- every bad record is in the DLQ, byte for byte, in order, at its offset, with a reason that
  says what was wrong (the oracle is written from docs/topics.md, not from the parser);
- no good event is dead-lettered or lost: each is answered (a recommendation triggered by it
  or a later event of the same user), and the windows in RocksDB equal the pure window update
  applied to exactly the good events — duplicates (resent records, a reused event_id with
  another item) are accepted and counted once, the first one wins;
- the worker's counters agree: events in = records sent, dead-lettered = bad records.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, Phase, given, seed
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from core.contracts import InvalidRecord, parse_event
from core.settings import Settings
from state.window import WindowEvent
from stream_app.demo import publish_catalog
from tests.integration.conftest import consume_until, metric_values, ml100k_items, read_windows, reference_windows, run
from tests.reliability.conftest import scaled
from tests.reliability.hostile import TYPES, Conflict, Context, Resend, Sent, reason_matches, render_all, strategies

N_RECORDS = int(scaled(1_000, 10_000))
N_PARSER_EXAMPLES = int(scaled(300, 5_000))
SEED = int(os.environ.get("STREAMREC_ADVERSARIAL_SEED", "20261123"))
CATALOG = ml100k_items(60)


def context(s: Settings) -> Context:
    return Context(
        catalog=[k for k, _ in CATALOG],
        users=[f"user{i}" for i in range(40)],
        max_bytes=s.worker.max_record_bytes,
        skew_s=s.worker.max_future_skew_s,
    )


def draw_records(ctx: Context, n: int, run_seed: int) -> list[Sent]:
    """About `n` records: each kind's share drawn by its own Hypothesis strategy, shuffled together."""
    kinds = strategies(ctx)
    total = sum(weight for _, weight in kinds.values())
    drawn: list = []
    for name, (strategy, weight) in kinds.items():

        @seed(run_seed)
        @hsettings(
            max_examples=max(1, round(n * weight / total)),
            phases=[Phase.generate],
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(strategy)
        def collect(draft):
            drawn.append(draft)

        collect()
    random.Random(run_seed).shuffle(drawn)
    return render_all(drawn, ctx)


async def produce_in_order(s: Settings, topic: str, records: list[Sent]) -> list[int]:
    """Send everything without waiting per record (one producer, one partition: order kept); the offsets."""
    from stream_app.replay import producer

    async with producer(s) as p:
        futures = [await p.send(topic, r.value, key=r.key) for r in records]
        return [m.offset for m in await asyncio.gather(*futures)]


class Answers:
    """Which good events the recommendations answer: a record triggered by an event answers it and
    every earlier event of that user. A reused event_id is credited to its first position only."""

    def __init__(self, good: list[Sent]):
        self.first = {}
        self.last: dict[str, int] = {}
        for r in good:
            self.first.setdefault((r.event[1], r.event[0]), r.n)
            self.last[r.event[1]] = r.n
        self.unknown_triggers: list[tuple[str, str]] = []

    def answered_through(self, records) -> dict[str, int]:
        through: dict[str, int] = {}
        self.unknown_triggers = []
        for record in records:
            value = json.loads(record.value)
            user, trigger = value["user_id"], value["trigger_event_id"]
            n = self.first.get((user, trigger))
            if n is None:
                self.unknown_triggers.append((user, trigger))
                continue
            through[user] = max(through.get(user, -1), n)
        return through

    def all_answered(self, records) -> bool:
        through = self.answered_through(records)
        return all(through.get(user, -1) >= n for user, n in self.last.items())


def describe(r: Sent) -> str:
    value = r.value if r.value is None or len(r.value) <= 160 else r.value[:160] + b"..."
    return f"#{r.n} {r.kind}: key={r.key!r} value={value!r}"


@pytest.mark.integration
def test_hostile_records_through_the_real_worker(settings, start_worker):
    ctx = context(settings)
    started = time.monotonic()
    sent = draw_records(ctx, N_RECORDS, SEED)
    drawn_s = time.monotonic() - started
    good = [r for r in sent if r.good]
    bad = [r for r in sent if not r.good]
    assert len(sent) >= N_RECORDS * 0.95 and len(good) > len(sent) / 3 and len(bad) > len(sent) / 3

    run(publish_catalog(settings, CATALOG))
    worker = start_worker(settings)
    pid = worker.process.pid
    t0 = time.monotonic()
    offsets = run(produce_in_order(settings, settings.topics.events, sent))
    assert offsets == [r.n for r in sent], "one partition, fresh topic: record n is at offset n"

    timeout_s = scaled(120, 600)
    dlq = run(consume_until(settings, settings.topics.dlq, lambda rs: len(rs) >= len(bad), timeout_s=timeout_s))
    answers = Answers(good)
    recs = run(consume_until(settings, settings.topics.recommendations, answers.all_answered, timeout_s=timeout_s))
    processed_s = time.monotonic() - t0
    time.sleep(1.0)  # anything still coming would be a good event dead-lettered late
    dlq = run(consume_until(settings, settings.topics.dlq, lambda rs: len(rs) >= len(bad), timeout_s=30))

    # The worker never crashed: same process, healthy, no traceback.
    assert worker.process.poll() is None and worker.process.pid == pid, "the worker process died"
    worker.wait_for(lambda h: h.get("status") == "ok", timeout_s=30)
    _, body = worker.get("/metrics")
    text = body.decode()
    assert metric_values(text, "streamrec_events_in_total") == [len(sent)]
    assert metric_values(text, f'streamrec_events_dlq_total{{topic="{settings.topics.events}"}}') == [len(bad)]

    # Every bad record is dead-lettered: same bytes, same key, in order, at its offset, with its reason.
    problems = []
    for r, d in zip(bad, dlq):
        headers = dict(d.headers)
        reason = headers.get("dlq.reason", b"").decode("utf-8", "replace")
        if (d.key, d.value) != (r.key, r.value):
            problems.append(f"{describe(r)}\n    DLQ has key={d.key!r} value={d.value[:160] if d.value else d.value!r}")
            break  # out of step from here on
        if int(headers.get("dlq.offset", b"-1")) != r.n or headers.get("dlq.topic") != settings.topics.events.encode():
            problems.append(f"{describe(r)}\n    headers {headers}")
        if not reason_matches(r.expect, reason):
            problems.append(f"{describe(r)}\n    reason {reason[:200]!r} does not match {r.expect!r}")
    if len(dlq) != len(bad):
        problems.append(f"{len(dlq)} records in the DLQ for {len(bad)} bad records sent")
    assert not problems, f"seed {SEED}: {len(problems)} DLQ problems:\n" + "\n".join(problems[:20])

    # Every good event answered, and only good events' users get recommendations.
    through = answers.answered_through(recs)
    unanswered = [r for r in good if through.get(r.event[1], -1) < r.n]
    assert not unanswered, f"seed {SEED}: {len(unanswered)} good events unanswered, e.g.\n" + "\n".join(
        describe(r) for r in unanswered[:10]
    )
    assert not answers.unknown_triggers, f"recommendations triggered by no good event: {answers.unknown_triggers[:10]}"

    log = worker.log()
    worker.stop()
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]
    stored = read_windows(settings.worker.data_dir)
    windows = {user: w.events() for user, w in stored.items()}
    expected = {
        user: w.events()
        for user, w in reference_windows(
            ((r.event[1], WindowEvent(r.event[0], *r.event[2:])) for r in good), settings
        ).items()
    }
    wrong = sorted(u for u in expected.keys() | windows.keys() if windows.get(u) != expected.get(u))
    assert not wrong, (
        f"seed {SEED}: {len(wrong)} windows differ from the reference, e.g. {wrong[0]!r}: "
        f"{windows.get(wrong[0])} != {expected.get(wrong[0])}"
    )
    assert all(len(set(w.event_ids)) == len(w.event_ids) for w in stored.values())

    duplicates = sum(1 for r in good if r.kind.startswith("duplicate"))
    by_kind = Counter(r.kind.split(" (")[0] for r in bad)
    print(
        f"\nadversarial (seed {SEED}): {len(sent)} records ({len(good)} good incl. {duplicates} duplicates, "
        f"{len(bad)} bad of {len(by_kind)} kinds; drawn in {drawn_s:.1f}s): {len(dlq)} dead-lettered, 0 lost, "
        f"0 crashes, {len(recs)} recommendations, {len(expected)} windows equal to the reference; "
        f"processed in {processed_s:.1f}s"
    )


def parser_cases() -> st.SearchStrategy[Sent]:
    """Every non-duplicate kind, rendered alone (duplicates only mean something in a stream)."""
    ctx = context(Settings())
    kinds = [s for s, _ in strategies(ctx).values()]
    return (
        st.one_of(*kinds)
        .filter(lambda d: not isinstance(d, (Resend, Conflict)))
        .map(lambda d: d.render(0, ctx.max_bytes))
    )


@seed(SEED)
@hsettings(
    max_examples=N_PARSER_EXAMPLES,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.one_of(parser_cases(), st.binary(max_size=64).map(lambda b: Sent(0, "bytes", None, b, "", None))))
def test_parser_rejects_with_the_contract_reason_and_never_raises_anything_else(case):
    s = Settings()
    try:
        event = parse_event(
            case.value,
            max_bytes=s.worker.max_record_bytes,
            event_types=set(TYPES),
            max_future_skew_s=s.worker.max_future_skew_s,
        )
    except InvalidRecord as e:
        assert e.reason and not case.good, f"{case.kind}: rejected ({e.reason})"
        assert reason_matches(case.expect, e.reason), f"{case.kind}: {e.reason!r} !~ {case.expect!r}"
        e.reason.encode("utf-8")  # it goes into a Kafka header
        return
    if case.kind == "bytes":
        return  # random bytes that happen to be a valid event: fine
    assert case.good, f"{case.kind}: accepted, expected a rejection matching {case.expect!r}"
    assert (event.event_id, event.user_id, event.item_id, event.event_type, event.ts) == case.event
