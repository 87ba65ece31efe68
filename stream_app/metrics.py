"""Prometheus metrics of one worker, served at /metrics."""

from __future__ import annotations

from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from stream_app.experiments import Credit

LATENCY_BUCKETS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)
STEP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)  # seconds, a micro-batch's steps


class WorkerMetrics:
    def __init__(self, hit_window: int = 10_000):
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_in = Counter("streamrec_events_in", "Events read from the events topic", registry=r)
        self.events_dlq = Counter(
            "streamrec_events_dlq", "Records sent to the dead-letter topic", ["topic"], registry=r
        )
        self.recommendations_out = Counter(
            "streamrec_recommendations_out", "Recommendation records published", registry=r
        )
        self.batch_size = Histogram("streamrec_batch_size", "Events per micro-batch", buckets=BATCH_BUCKETS, registry=r)
        self.scoring = Histogram(
            "streamrec_scoring_seconds",
            "Time to score one micro-batch's users: user tower, retrieval and the ranking stage, rules included",
            buckets=STEP_BUCKETS,
            registry=r,
        )
        # Where an event's latency goes, with `scoring` and `latency`: waiting for its micro-batch, then the batch.
        self.event_wait = Histogram(
            "streamrec_event_wait_seconds",
            "From an event's Kafka timestamp to the events agent taking its micro-batch: the producer's linger, "
            "the broker, the fetch and the batch window",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "streamrec_batch_seconds",
            "Time the events agent spends on one micro-batch, from taking it to its windows written",
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.delivery = Histogram(
            "streamrec_delivery_seconds",
            "From sending a micro-batch's recommendation records to the broker's acknowledgement of the last one",
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "streamrec_event_to_recommendation_seconds",
            "From the event's Kafka timestamp to its recommendation being sent",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.users_forgotten = Counter(
            "streamrec_users_forgotten",
            "Forget requests carried out (window deleted, recommendations tombstoned)",
            registry=r,
        )
        self.model = Info("streamrec_model", "The model version being served", registry=r)
        self.model_refusals = Counter("streamrec_model_refusals", "Announced model versions refused", registry=r)
        self.windows = Gauge("streamrec_windows", "User windows held by this worker", registry=r)
        self.trending_items = Gauge(
            "streamrec_trending_items",
            "Items the trending counter keeps (<= STREAMREC_WORKER__MAX_TRENDING_ITEMS)",
            registry=r,
        )
        self.lag = Gauge("streamrec_consumer_lag", "Events not yet read, per partition", ["partition"], registry=r)
        self.broker_up = Gauge("streamrec_broker_up", "1 while the broker answers, else 0", registry=r)
        # Progress (/health "stalled"): alert on both, e.g. events_waiting > 0 and seconds_since_last_batch > 30.
        self.seconds_since_last_batch = Gauge(
            "streamrec_seconds_since_last_batch",
            "Seconds since the events agent last completed a micro-batch (or since the worker started)",
            registry=r,
        )  # computed per scrape (WorkerContext)
        self.events_waiting = Gauge(
            "streamrec_events_waiting",
            "Events in this worker's events partitions not processed yet (broker end offsets, every 2 s)",
            registry=r,
        )
        self.recommendation_failures = Counter(
            "streamrec_recommendation_failures",
            "Users whose record a micro-batch could not produce (their events were dead-lettered), by stage: "
            "scoring, send (too large, or refused) or table (window read or write)",
            ["stage"],
            registry=r,
        )
        self.hits = Counter("streamrec_online_hits", "Events whose item was in the user's last top-k", registry=r)
        self.hit_rate = Gauge(
            "streamrec_online_hr_at_k",
            f"Share of the last {hit_window} events (of users with a previous list) whose "
            f"item was in that list: a rolling online HR@k",
            registry=r,
        )
        # Online experiments (docs/operations.md): live figures; `streamrec experiment report` reads the topics.
        variant = ["experiment", "variant"]
        self.experiment_exposures = Counter(
            "streamrec_experiment_exposures",
            "Lists published in an experiment, by the variant that served them (interleave mode: interleaved)",
            variant,
            registry=r,
        )
        self.experiment_events = Counter(
            "streamrec_experiment_events",
            "Events of users whose last list was served in the experiment, by that list's variant",
            variant,
            registry=r,
        )
        self.experiment_hits = Counter(
            "streamrec_experiment_hits",
            "Events whose item was in the user's last list, by the variant that contributed the item "
            "(interleave mode: the credits)",
            variant,
            registry=r,
        )
        self.experiment_purchase_hits = Counter(
            "streamrec_experiment_purchase_hits",
            "Purchase events whose item was in the user's last list, by the variant that contributed the item",
            variant,
            registry=r,
        )
        self.experiment_serving = Gauge(
            "streamrec_experiment_serving",
            "1 while this worker serves the experiment, else 0",
            ["experiment"],
            registry=r,
        )
        self.experiment_refusals = Counter(
            "streamrec_experiment_refusals",
            "Experiments this worker refused to serve (a variant refused, or the record invalid)",
            ["experiment"],
            registry=r,
        )
        self._recent_hits: deque[bool] = deque(maxlen=hit_window)
        self.hit_rate.set_function(self._rolling_hit_rate)  # computed per scrape, not per event

    def _rolling_hit_rate(self) -> float:
        return sum(self._recent_hits) / len(self._recent_hits) if self._recent_hits else 0.0

    def observe_credit(self, experiment: str, credit: Credit) -> None:
        self.experiment_events.labels(experiment, credit.list_variant).inc()
        if credit.credited is not None:
            self.experiment_hits.labels(experiment, credit.credited).inc()
            if credit.event_type == "purchase":
                self.experiment_purchase_hits.labels(experiment, credit.credited).inc()

    def observe_hit(self, hit: bool) -> None:
        self._recent_hits.append(hit)
        if hit:
            self.hits.inc()
