"""One poll of a worker (its /health and /metrics) and the per-second figures between two polls.

The figures are the workers' own: events in, records out and dead letters are their counters, the
micro-batch size and the event -> recommendation latency their histograms (the latency from the event's
Kafka timestamp to the send, which a recommendation record cannot give: it carries no event time), the
online hit rate their rolling `streamrec_online_hr_at_k` (each worker checks an event against the list
it last showed that user, kept in the user's window)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

EVENTS_IN = "streamrec_events_in_total"
RECORDS_OUT = "streamrec_recommendations_out_total"
DEAD_LETTERS = "streamrec_events_dlq_total"
BATCH_SIZE = "streamrec_batch_size"
LATENCY = "streamrec_event_to_recommendation_seconds"
HIT_RATE = "streamrec_online_hr_at_k"
REFUSALS = "streamrec_model_refusals_total"
BROKER_UP = "streamrec_broker_up"

Samples = dict[str, list[tuple[dict[str, str], float]]]  # sample name -> (labels, value) of each series


def parse_metrics(text: str) -> Samples:
    found: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name].append((sample.labels, sample.value))
    return dict(found)


@dataclass(frozen=True)
class WorkerPoll:
    """What one worker answered (`health` None and `error` set: it did not)."""

    url: str
    health: dict | None = None
    metrics: Samples = field(default_factory=dict)
    error: str | None = None

    @property
    def status(self) -> str:
        return self.health.get("status", "?") if self.health else f"unreachable ({self.error})"

    def total(self, name: str) -> float:
        return sum(value for _, value in self.metrics.get(name, ()))

    def value(self, name: str) -> float | None:
        values = [value for _, value in self.metrics.get(name, ())]
        return values[0] if values else None

    def buckets(self, histogram: str) -> list[tuple[float, float]]:
        """(upper bound, cumulative count) of each bucket, +Inf last."""
        return sorted((float(labels["le"]), value) for labels, value in self.metrics.get(f"{histogram}_bucket", ()))


def increase(before: float, after: float) -> float:
    """A counter's increase between two scrapes; a smaller value means the worker restarted and counts from 0."""
    return after - before if after >= before else after


def histogram_quantile(q: float, cumulative: list[tuple[float, float]]) -> float | None:
    """Prometheus' estimate: the bucket the q-th observation falls in, linearly interpolated inside it (the
    last finite bound when it falls in +Inf). None without observations."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = bound, count
    return lower


def _bucket_increase(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if not before or len(before) != len(after) or after[-1][1] < before[-1][1]:
        return after  # first scrape, or the worker restarted
    return [(bound, count - was) for (bound, count), (_, was) in zip(after, before)]


def interval_figures(previous: dict[str, WorkerPoll], current: dict[str, WorkerPoll], seconds: float) -> dict:
    """Per-second rates, mean micro-batch size, latency p50/p99 (ms) and online hit rate between two polls
    of every worker; None where nothing was observed. Workers unanswered in either poll are left out."""
    both = [(previous[url], now) for url, now in current.items() if now.health and url in previous]
    both = [(before, now) for before, now in both if before.health]

    def rate(name: str) -> float:
        return sum(increase(before.total(name), now.total(name)) for before, now in both) / seconds

    batches = sum(increase(b.total(f"{BATCH_SIZE}_count"), n.total(f"{BATCH_SIZE}_count")) for b, n in both)
    batched = sum(increase(b.total(f"{BATCH_SIZE}_sum"), n.total(f"{BATCH_SIZE}_sum")) for b, n in both)
    latency: dict[float, float] = defaultdict(float)
    for before, now in both:
        for bound, count in _bucket_increase(before.buckets(LATENCY), now.buckets(LATENCY)):
            latency[bound] += count
    cumulative = sorted(latency.items())
    p50, p99 = histogram_quantile(0.5, cumulative), histogram_quantile(0.99, cumulative)
    return {
        "events_in": rate(EVENTS_IN),
        "records_out": rate(RECORDS_OUT),
        "dead_letters": rate(DEAD_LETTERS),
        "batch_size": batched / batches if batches else None,
        "latency_p50_ms": None if p50 is None else p50 * 1000,
        "latency_p99_ms": None if p99 is None else p99 * 1000,
        "hit_rate": hit_rate([now for _, now in both]),
    }


def hit_rate(polls: list[WorkerPoll]) -> float | None:
    """The workers' rolling hit rates, weighted by the events each has read (a worker that read none has no
    rate: its gauge says 0)."""
    weighted = [(poll.value(HIT_RATE), poll.total(EVENTS_IN)) for poll in polls]
    weighted = [(rate, events) for rate, events in weighted if rate is not None and events > 0]
    total = sum(events for _, events in weighted)
    return sum(rate * events for rate, events in weighted) / total if total else None
