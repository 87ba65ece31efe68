"""`streamrec experiment report`: an online experiment's outcome, read from the `recommendations` and
`events` topics (not from worker memory: right across workers, restarts and rebalances).

Each event is judged against the list its user was shown last before it: the newest record whose trigger
event came earlier in the user's events (both topics are keyed by user, so a user's events and lists keep
their order). An event counts for the experiment if that list was served in it. Per variant: exposures
(lists; in interleave mode, items contributed), events judged, hits (the event's item was in the list;
interleave: credits, to the variant that contributed the item) and purchase hits. A/B: the difference in
hit rate, treatment - control; interleave: treatment's share of the credits - 0.5; each with a 95%
confidence interval and a verdict. Trainer side (matplotlib draws the PNG): the worker never imports it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np

from core.contracts import InvalidRecord, parse_event
from core.kafka import end_offsets, read_whole_topic
from core.settings import Settings
from stream_app.experiments import CONTROL, INTERLEAVED, TREATMENT, Credit, credits

Z_95 = 1.959964  # two-sided 95% normal quantile


class EventRow(NamedTuple):
    user_id: str
    event_id: str
    item_id: str
    event_type: str
    timestamp_ms: int  # the record's Kafka timestamp


class Judged(NamedTuple):
    timestamp_ms: int
    user_id: str
    credit: Credit


MIN_USERS = 10  # no interval from fewer users a side (interleave: users with a credit)


class UserRatio:
    """A ratio of sums, sum(h) / sum(n), over users, and its variance clustered by user (the delta method
    for a ratio estimator): a user's events are not independent of each other, users are. Updated one
    event at a time in O(1) (running sums of h², hn and n² per user)."""

    def __init__(self) -> None:
        self.per_user: dict[str, tuple[int, int]] = {}
        self.h = self.n = self.hh = self.hn = self.nn = 0

    def add(self, user: str, h: int, n: int) -> None:
        h0, n0 = self.per_user.get(user, (0, 0))
        h1, n1 = h0 + h, n0 + n
        self.per_user[user] = (h1, n1)
        self.h, self.n = self.h + h, self.n + n
        self.hh += h1 * h1 - h0 * h0
        self.hn += h1 * n1 - h0 * n0
        self.nn += n1 * n1 - n0 * n0

    @property
    def value(self) -> float:
        return self.h / self.n if self.n else 0.0

    def variance(self) -> float:
        """Of `value`; infinite below MIN_USERS users."""
        m = len(self.per_user)
        if m < MIN_USERS or not self.n:
            return np.inf
        r = self.value
        return max(0.0, self.hh - 2 * r * self.hn + r * r * self.nn) / self.n**2 * m / (m - 1)


class Tally:
    """What the judged events so far say: A/B, each variant's hit rate (hits / events judged against its
    lists); interleave, treatment's share of the credits."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.rates = {CONTROL: UserRatio(), TREATMENT: UserRatio()}
        self.share = UserRatio()

    def add(self, judged: Judged) -> None:
        credit = judged.credit
        if credit.list_variant in self.rates:
            self.rates[credit.list_variant].add(judged.user_id, credit.credited is not None, 1)
        if credit.credited is not None:
            self.share.add(judged.user_id, credit.credited == TREATMENT, 1)

    def difference(self) -> tuple[float, float, float]:
        """(estimate, low, high), a 95% interval: A/B, treatment's hit rate - control's; interleave,
        treatment's share of the credits - 0.5. (-inf, inf) until each side has MIN_USERS users."""
        if self.mode == "interleave":
            estimate, variance = self.share.value - 0.5, self.share.variance()
        else:
            t, c = self.rates[TREATMENT], self.rates[CONTROL]
            estimate, variance = t.value - c.value, t.variance() + c.variance()
        half = Z_95 * np.sqrt(variance)
        return estimate, estimate - half, estimate + half


@dataclass
class VariantOutcome:
    exposures: int = 0  # lists served (interleave mode: items contributed)
    events: int = 0  # events judged against this variant's lists (interleave mode: against every list)
    hits: int = 0  # interleave mode: the credits
    purchase_hits: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.events if self.events else 0.0


@dataclass
class ExperimentOutcome:
    name: str
    mode: str  # "ab" or "interleave"
    variants: dict[str, VariantOutcome] = field(
        default_factory=lambda: {CONTROL: VariantOutcome(), TREATMENT: VariantOutcome()}
    )
    judged: list[Judged] = field(default_factory=list)  # in time order
    model_versions: dict[str, str] = field(default_factory=dict)  # variant -> version, as the records name them

    def difference(self) -> tuple[float, float, float]:
        """`Tally.difference` over every judged event."""
        tally = Tally(self.mode)
        for judged in self.judged:
            tally.add(judged)
        return tally.difference()

    def verdict(self) -> str:
        return verdict(*self.difference()[1:])


def verdict(low: float, high: float) -> str:
    if low > 0:
        return "treatment is better than control"
    if high < 0:
        return "treatment is worse than control"
    return "not yet significant"


def judge(name: str, events: Iterable[EventRow], recommendations: Iterable[dict]) -> ExperimentOutcome:
    """The outcome of experiment `name` from the events and the recommendation records (decoded
    `Recommendation`s), each in topic order. Records answering no known event (a stated interest's) are
    not placed in time and are left out."""
    position: dict[str, tuple[str, int]] = {}  # event id -> (user, its index among the user's events)
    by_user: dict[str, list[EventRow]] = {}
    for row in events:
        if row.event_id not in position:  # a redelivered event counts once
            user_events = by_user.setdefault(row.user_id, [])
            position[row.event_id] = (row.user_id, len(user_events))
            user_events.append(row)
    lists: dict[str, dict[int, dict]] = {}  # user -> trigger index -> the newest record answering it
    outcome = ExperimentOutcome(name, "ab")
    for record in recommendations:
        where = position.get(record["trigger_event_id"])
        if where is None or where[0] != record["user_id"]:
            continue
        lists.setdefault(record["user_id"], {})[where[1]] = record
        if record.get("experiment") == name:
            count_exposure(outcome, record)
    for user, user_events in by_user.items():
        shown = None
        answered = lists.get(user, {})
        for index, row in enumerate(user_events):
            if shown is not None and shown.get("experiment") == name:
                items = shown["items"]
                (credit,) = credits(
                    shown["variant"],
                    [i["item_id"] for i in items],
                    [i["variant"] for i in items],
                    [(row.item_id, row.event_type)],
                )
                outcome.judged.append(Judged(row.timestamp_ms, user, credit))
            shown = answered.get(index, shown)
    outcome.judged.sort(key=lambda j: j.timestamp_ms)
    for judged in outcome.judged:
        count_credit(outcome, judged.credit)
    return outcome


def count_exposure(outcome: ExperimentOutcome, record: dict) -> None:
    if record["variant"] == INTERLEAVED:
        outcome.mode = "interleave"
        control, treatment = record["model_version"].split("+", 1)
        outcome.model_versions = {CONTROL: control, TREATMENT: treatment}
        for item in record["items"]:
            outcome.variants[item["variant"]].exposures += 1
    else:
        outcome.model_versions[record["variant"]] = record["model_version"]
        outcome.variants[record["variant"]].exposures += 1


def count_credit(outcome: ExperimentOutcome, credit: Credit) -> None:
    if credit.list_variant == INTERLEAVED:
        for variant in outcome.variants.values():
            variant.events += 1
    else:
        outcome.variants[credit.list_variant].events += 1
    if credit.credited is not None:
        outcome.variants[credit.credited].hits += 1
        outcome.variants[credit.credited].purchase_hits += credit.event_type == "purchase"


def running_difference(outcome: ExperimentOutcome) -> dict[str, np.ndarray]:
    """After each judged event: each variant's metric (A/B: hit rate; interleave: its credits so far) and
    the difference with its 95% interval (`Tally`)."""
    tally, credits_so_far = Tally(outcome.mode), {CONTROL: 0, TREATMENT: 0}
    rows = []
    for judged in outcome.judged:
        tally.add(judged)
        if judged.credit.credited is not None:
            credits_so_far[judged.credit.credited] += 1
        if outcome.mode == "interleave":
            metrics = credits_so_far[CONTROL], credits_so_far[TREATMENT]
        else:
            metrics = tally.rates[CONTROL].value, tally.rates[TREATMENT].value
        rows.append((judged.timestamp_ms, *metrics, *tally.difference()))
    columns = [np.array(c) for c in zip(*rows)] if rows else [np.array([])] * 6
    return dict(zip(["timestamp_ms", CONTROL, TREATMENT, "estimate", "low", "high"], columns))


def events_to_significance(outcome: ExperimentOutcome) -> int | None:
    """The number of judged events after which the interval excluded 0 and went on excluding it, on the
    same side, to the end; None if it does not at the end."""
    running = running_difference(outcome)
    low, high = running["low"], running["high"]
    if not len(low) or not (low[-1] > 0 or high[-1] < 0):
        return None
    significant = low > 0 if low[-1] > 0 else high < 0
    not_yet = np.flatnonzero(~significant)
    return int(not_yet[-1] + 2) if len(not_yet) else 1


def format_report(outcome: ExperimentOutcome) -> str:
    estimate, low, high = outcome.difference()
    rows = [f"experiment {outcome.name} ({outcome.mode}), {len(outcome.judged)} events judged"]
    hits = "credits" if outcome.mode == "interleave" else "hits"
    rows.append(f"{'variant':<10} {'version':<34} {'exposures':>9} {'events':>7} {hits:>7} {'rate':>7} {'purchase':>8}")
    for variant, o in outcome.variants.items():
        version = outcome.model_versions.get(variant, "-")
        rows.append(
            f"{variant:<10} {version:<34} {o.exposures:>9} {o.events:>7} {o.hits:>7} {o.hit_rate:>7.4f} "
            f"{o.purchase_hits:>8}"
        )
    if outcome.mode == "interleave":
        total = outcome.variants[CONTROL].hits + outcome.variants[TREATMENT].hits
        share = outcome.variants[TREATMENT].hits / total if total else float("nan")
        rows.append(
            f"treatment's credit share {share:.3f}; share - 0.5 = {estimate:+.4f} [{low:+.4f}, {high:+.4f}] (95%)"
        )
    else:
        rows.append(f"hit rate, treatment - control = {estimate:+.4f} [{low:+.4f}, {high:+.4f}] (95%)")
    rows.append(f"verdict: {outcome.verdict()}")
    return "\n".join(rows)


def plot(outcome: ExperimentOutcome, path: Path) -> Path:
    """The metric over time (per variant), and the difference with its 95% interval, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    running = running_difference(outcome)
    when = np.array(running["timestamp_ms"], dtype="datetime64[ms]")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    label = "credits (cumulative)" if outcome.mode == "interleave" else "hit rate (cumulative)"
    for variant in (CONTROL, TREATMENT):
        top.plot(when, running[variant], label=f"{variant} {outcome.model_versions.get(variant, '')}")
    top.set_ylabel(label)
    top.legend(loc="best", fontsize=8)
    top.set_title(f"experiment {outcome.name} ({outcome.mode}): {outcome.verdict()}")
    finite = np.isfinite(running["low"]) & np.isfinite(running["high"])
    bottom.fill_between(when[finite], running["low"][finite], running["high"][finite], alpha=0.3, label="95% interval")
    bottom.plot(
        when, running["estimate"], label="treatment - control" if outcome.mode == "ab" else "credit share - 0.5"
    )
    bottom.axhline(0.0, color="black", linewidth=0.8)
    bottom.set_ylabel("difference")
    bottom.legend(loc="best", fontsize=8)
    bottom.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


async def read_to_end(settings: Settings, topic: str) -> list:
    """Every record of `topic` up to its end offsets as of now, partition by partition in order."""
    async with read_whole_topic(settings, topic) as consumer:
        partitions = list(consumer.assignment())
        if not partitions:  # no such topic (yet)
            return []
        ends = await asyncio.to_thread(end_offsets, settings, await consumer.end_offsets(partitions))
        records: list = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(messages)
        return records


async def read_outcome(settings: Settings, name: str) -> ExperimentOutcome:
    """`judge` over the `events` and `recommendations` topics as they are now."""
    events, recommendations = await asyncio.gather(
        read_to_end(settings, settings.topics.events), read_to_end(settings, settings.topics.recommendations)
    )
    lists = (json.loads(r.value) for r in recommendations if r.value is not None)  # None: a forgotten user
    return judge(name, event_rows(settings, events), lists)


def event_rows(settings: Settings, records: Iterable) -> Iterable[EventRow]:
    """The valid events among `events` records, read by the worker's contract (dead letters are skipped)."""
    w = settings.worker
    for record in records:
        try:
            event = parse_event(
                record.value,
                max_bytes=w.max_record_bytes,
                event_types=set(w.event_weights),
                max_future_skew_s=w.max_future_skew_s,
            )
        except InvalidRecord:
            continue
        yield EventRow(event.user_id, event.event_id, event.item_id, event.event_type, record.timestamp)
