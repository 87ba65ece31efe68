"""All runtime settings in one frozen object, read once where a command starts (docs/ARCHITECTURE.md,
"Settings").

    Settings
    ├── kafka     KafkaSettings      broker, security (KafkaSecurity), partitions, replication, client tuning
    ├── topics    Topics             topic names
    ├── worker    WorkerSettings     state dir, HTTP, app id, windows, record limits, batching, scoring
    ├── rocksdb   RocksDBSettings    memory per table
    ├── registry  RegistrySettings   where model versions live
    ├── trainer   TrainerSettings    where `train` and `retrain` write
    └── console   ConsoleSettings    `streamrec console`: where it listens, which workers it watches

Env vars: STREAMREC_<SECTION>__<FIELD>, one `__` per level (STREAMREC_KAFKA__BROKER,
STREAMREC_KAFKA__SECURITY__SASL_PASSWORD, STREAMREC_TOPICS__EVENTS, STREAMREC_WORKER__DATA_DIR); `null`
sets an optional field to None. A command builds its Settings with `load_settings` (env, then its
flags) and passes it down; a child process gets the same settings from `Settings.to_env()`.
The flat names used before sections existed (STREAMREC_BROKER, ...) are refused (`RENAMED`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from core.errors import ConfigError

ENV_PREFIX = "STREAMREC_"
ENV_DELIMITER = "__"
NONE_IN_ENV = "null"

# Exact top-k costs ~2.6 ms per user at 100k items on one core and 5-9 ms at 200k, at or over
# the 5 ms budget (docs/benchmarks.md, "Retrieval"). Below this size exact is within budget,
# needs no build or second copy of the vectors, and its recall is 1.
DEFAULT_ANN_MIN_ITEMS = 100_000
# Trending answers the top k (10) of the decayed counts: 1,000 candidates leave room for rising items
# (a prune drops only the lowest-scoring quarter), take ~150 KB, and rank in < 1 ms per
# micro-batch (the ranking is rebuilt after each batch's events, so its cost grows with this bound).
DEFAULT_MAX_TRENDING_ITEMS = 1_000
# A stated interest is half the query after this many events, a quarter after three times as many: on ml-100k
# k = 1 was the best of 0.5-20 for both the trained model and the baseline (docs/model.md, "Free-text interest").
DEFAULT_INTEREST_HANDOVER_EVENTS = 1.0
# The ranking stage (encoders/ranker.py): candidates it re-scores, and the blend of its heads that orders them.
DEFAULT_RANKER_CANDIDATES = 200
DEFAULT_RANKER_CLICK_WEIGHT = 1.0
DEFAULT_RANKER_PURCHASE_WEIGHT = 1.0
# The event type `repeat_policy = "exclude_purchased"` means.
PURCHASE = "purchase"


class _Section(BaseModel):
    # frozen like Settings; an unknown name (a typo in STREAMREC_WORKER__...) is an error, not ignored
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSecurity(_Section):
    """Passed through to every Kafka client (Faust, aiokafka, kafka-python); defaults suit the local
    broker. Env vars: STREAMREC_KAFKA__SECURITY__<FIELD> (docs/security.md)."""

    protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    sasl_mechanism: str = "PLAIN"  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # TLS (SSL, SASL_SSL): the CA that signed the broker's certificate (PEM; None: the system's CAs),
    # and for mutual TLS the client's certificate chain and its unencrypted private key (PEM).
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None  # None: the key is in ssl_certfile
    ssl_check_hostname: bool = True  # the broker's certificate must name the host in STREAMREC_KAFKA__BROKER


class KafkaSettings(_Section):
    """The cluster and every client of it: the worker, replay, forget, rollback, retrain."""

    broker: str = "kafka://127.0.0.1:9092"  # kafka://host:port[;host:port...]
    security: KafkaSecurity = KafkaSecurity()
    partitions: int = 1  # of `events` and `recommendations`, when the worker creates missing topics
    # Topics the worker creates (and Faust's changelogs): replicas each, and how many must have a
    # write before it is acknowledged (acks=all). 3 and 2 on a three-node cluster.
    replication_factor: int = 1
    min_insync_replicas: int = 1
    # Which broker this is, for the workarounds one of them needs (docs/ARCHITECTURE.md):
    # "auto" asks the cluster (Tansu answers with its default cluster id `tansu_cluster`).
    broker_engine: Literal["auto", "kafka", "tansu"] = "auto"
    # Client tuning (docs/ARCHITECTURE.md, "Brokers").
    fetch_max_wait_ms: int = 10
    producer_linger_ms: int = 5
    session_timeout_s: float = 10.0
    heartbeat_interval_s: float = 1.0

    @property
    def bootstrap_servers(self) -> str:
        return self.broker.removeprefix("kafka://").replace(";", ",")


class Topics(_Section):
    """Topic names (docs/topics.md). Env vars: STREAMREC_TOPICS__<NAME>."""

    events: str = "events"
    items: str = "items"
    recommendations: str = "recommendations"
    dlq: str = "events-dlq"
    model_updates: str = "model-updates"
    control: str = "streamrec-control"  # forget requests; co-partitioned with events (docs/topics.md)
    profiles: str = "profiles"  # users' free-text interests; compacted, co-partitioned with events
    experiments: str = "experiments"  # online experiments started and stopped (docs/operations.md)


class WorkerSettings(_Section):
    """`streamrec worker`; the record limits and window also bind replay, predict and retrain, which
    must accept and see what the worker does."""

    data_dir: Path = Path(".streamrec/state")  # RocksDB tables (one dir per worker)
    web_port: int = 6066
    web_host: str = "127.0.0.1"
    app_id: str = "streamrec"  # the consumer group, and the prefix of the table's changelog topic
    # Behaviour window per user.
    window_size: int = 50
    window_max_age_days: float = 365.0  # relative to the user's newest event (event time)
    event_weights: dict[str, float] = Field(
        default_factory=lambda: {"view": 1.0, "click": 2.0, "purchase": 4.0}
    )  # event types accepted; weights drive the baseline and trending
    max_record_bytes: int = 16_384  # larger records go to the DLQ before parsing
    max_future_skew_s: float = 86_400.0  # events stamped further in the future are rejected
    # Micro-batching and output.
    batch_size: int = 256
    batch_window_s: float = 0.002  # the wait for a batch to fill (docs/benchmarks.md: 20 / 5 / 2 / 1 ms compared)
    top_k: int = 10
    ann_min_items: int | None = DEFAULT_ANN_MIN_ITEMS  # catalogs this big use FAISS IVF; None = always exact
    trending_half_life_s: float = 3_600.0
    # Bounds on what a worker keeps per item id (tests/reliability/test_bounded_memory.py). Trending counts
    # only catalog items and keeps at most this many (the lowest-scoring quarter is dropped beyond it).
    max_trending_items: int = Field(DEFAULT_MAX_TRENDING_ITEMS, ge=1)
    # New items beyond this many are dead-lettered ("catalog full"), not loaded: each costs 3-5 x dim x 4 bytes
    # of vectors (index rows with growth room, IVF copies; state/item_index.py) plus its record (<= max_record_bytes).
    max_catalog_items: int = Field(1_000_000, ge=1)
    inference_threads: int = 1  # onnxruntime, FAISS and BLAS threads each (docs/ARCHITECTURE.md)
    # Failover: warm copies of other workers' table partitions (Faust standby replicas), so a
    # partition that moves here answers without replaying its whole changelog.
    standby_replicas: int = 1  # Faust's default
    # /health turns 503 "stalled" when events wait and no micro-batch has completed for this long.
    stall_timeout_s: float = 30.0
    # A stated interest (`profiles`) hands over to behaviour as events arrive: with n known events in the
    # window the behaviour vector weighs n / (n + this), the interest the rest (docs/topics.md, `profiles`).
    interest_handover_events: float = Field(DEFAULT_INTEREST_HANDOVER_EVENTS, gt=0)
    # Business rules (stream_app/rules.py; `GET /recommendations` overrides them per request).
    # Items each user interacted with, beyond the window: the newest this many, in the window's record. 0: off.
    seen_items_max: int = Field(500, ge=0)
    # Which of them a list leaves out: all (MovieLens), those purchased (strongest event at least as heavy as
    # a `purchase`), or none (repeats allowed, even of the window's items).
    repeat_policy: Literal["exclude_seen", "exclude_purchased", "allow"] = "exclude_seen"
    categories: list[str] = []  # non-empty: only items in one of these catalog categories
    exclude_categories: list[str] = []  # never items in one of these
    max_per_category: int = Field(0, ge=0)  # at most this many items of one category in a list; 0: no cap
    # The ranking stage, when the model version has one: it re-scores the retrieval's best this many
    # candidates and orders them by click_weight x P(click) + purchase_weight x P(purchase). 0: the stage is
    # off, every list is in the retrieval order (a version with a ranker served as one without).
    ranker_candidates: int = Field(DEFAULT_RANKER_CANDIDATES, ge=0)
    ranker_click_weight: float = Field(DEFAULT_RANKER_CLICK_WEIGHT, ge=0)
    ranker_purchase_weight: float = Field(DEFAULT_RANKER_PURCHASE_WEIGHT, ge=0)

    @model_validator(mode="after")
    def _purchase_is_an_event_type(self) -> "WorkerSettings":
        if self.repeat_policy == "exclude_purchased" and PURCHASE not in self.event_weights:
            raise ValueError(f"repeat_policy exclude_purchased needs a {PURCHASE!r} event type in event_weights")
        return self


class RocksDBSettings(_Section):
    """RocksDB memory per table (Faust's defaults: 64 MB memtables, up to 3, and a 2 GB block cache,
    which the soak showed as RSS still growing after ten minutes; docs/reliability.md)."""

    write_buffer_mb: int = 8
    block_cache_mb: int = 64


class RegistrySettings(_Section):
    path: Path = Path(".streamrec/registry")  # versioned models: read by workers, written by the trainer


class TrainerSettings(_Section):
    """Where the training commands write. Hyperparameters are the commands' options, whose defaults
    are encoders.config's TrainConfig and RetrainConfig."""

    checkpoint_dir: Path | None = None  # `streamrec train`: <dir>/<UTC stamp>/; None: checkpoints/ beside the registry
    retrain_dir: Path = Path(".streamrec/retrain")  # `streamrec retrain`: each run's data, checkpoint, report

    def checkpoints(self, registry: RegistrySettings) -> Path:
        return self.checkpoint_dir or registry.path.parent / "checkpoints"


class ConsoleSettings(_Section):
    """`streamrec console`, the read-only operator's web console (docs/operations.md, "Console")."""

    host: str = "127.0.0.1"  # a non-loopback address needs `token`
    port: int = 8090
    # The workers' HTTP addresses (http://host:port); empty: the local worker, http://127.0.0.1:<worker.web_port>.
    workers: list[str] = Field(default_factory=list)
    token: SecretStr | None = None  # required on every /api/ request when set (header X-Streamrec-Token or ?token=)
    poll_interval_s: float = Field(1.0, gt=0)  # workers' /health and /metrics, the group's lag
    history_s: int = Field(900, ge=60)  # the charts' span: one point per poll
    dead_letters: int = Field(200, ge=1)  # the newest dead-lettered records kept
    recent_recommendations: int = Field(20_000, ge=1)  # records kept for the user page's "last emitted"


# The flat names of the settings before they had sections: an upgrade that still sets one would
# otherwise connect to the default broker, or write to the default registry, without a word.
RENAMED: dict[str, str] = {
    **{
        f"STREAMREC_{name}": f"STREAMREC_KAFKA__{name}"
        for name in (
            "BROKER",
            "PARTITIONS",
            "REPLICATION_FACTOR",
            "MIN_INSYNC_REPLICAS",
            "BROKER_ENGINE",
            "FETCH_MAX_WAIT_MS",
            "PRODUCER_LINGER_MS",
            "SESSION_TIMEOUT_S",
            "HEARTBEAT_INTERVAL_S",
        )
    },
    **{
        f"STREAMREC_{name}": f"STREAMREC_WORKER__{name}"
        for name in (
            "DATA_DIR",
            "WEB_PORT",
            "WEB_HOST",
            "APP_ID",
            "WINDOW_SIZE",
            "WINDOW_MAX_AGE_DAYS",
            "EVENT_WEIGHTS",
            "MAX_RECORD_BYTES",
            "MAX_FUTURE_SKEW_S",
            "BATCH_SIZE",
            "BATCH_WINDOW_S",
            "TOP_K",
            "ANN_MIN_ITEMS",
            "TRENDING_HALF_LIFE_S",
            "INFERENCE_THREADS",
        )
    },
    "STREAMREC_REGISTRY": "STREAMREC_REGISTRY__PATH",
    "STREAMREC_ROCKSDB_WRITE_BUFFER_MB": "STREAMREC_ROCKSDB__WRITE_BUFFER_MB",
    "STREAMREC_ROCKSDB_BLOCK_CACHE_MB": "STREAMREC_ROCKSDB__BLOCK_CACHE_MB",
    "STREAMREC_SECURITY": "STREAMREC_KAFKA__SECURITY",
}
_RENAMED_PREFIXES = {"STREAMREC_SECURITY__": "STREAMREC_KAFKA__SECURITY__"}


def refuse_renamed(environ: Mapping[str, str]) -> None:
    """ConfigError naming each old flat STREAMREC_* name set in `environ` and its new name."""
    found = []
    for key in sorted(environ):
        name = key.upper()
        new = RENAMED.get(name) or next(
            (new + name[len(old) :] for old, new in _RENAMED_PREFIXES.items() if name.startswith(old)), None
        )
        if new:
            found.append(f"{key} was renamed {new}")
    if found:
        raise ConfigError("; ".join(found) + " (docs/ARCHITECTURE.md, Settings)")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_DELIMITER, frozen=True, env_parse_none_str=NONE_IN_ENV
    )

    kafka: KafkaSettings = KafkaSettings()
    topics: Topics = Topics()
    worker: WorkerSettings = WorkerSettings()
    rocksdb: RocksDBSettings = RocksDBSettings()
    registry: RegistrySettings = RegistrySettings()
    trainer: TrainerSettings = TrainerSettings()
    console: ConsoleSettings = ConsoleSettings()

    def __init__(self, **values: Any) -> None:
        refuse_renamed(os.environ)  # before the env is parsed: STREAMREC_REGISTRY would fail as bad JSON
        super().__init__(**values)

    def replace(self, **sections: BaseModel | Mapping[str, Any]) -> Settings:
        """A copy with some fields of some sections changed, validated; the env is not read again.

        settings.replace(kafka={"broker": url}, worker={"data_dir": d, "web_port": p})"""
        update = {}
        for name, change in sections.items():
            if name not in type(self).model_fields:
                raise ConfigError(f"Settings has no section {name!r}")
            if isinstance(change, Mapping):
                current = getattr(self, name)
                change = type(current).model_validate({**dict(current), **change})
            update[name] = change
        return self.model_copy(update=update)

    def to_env(self) -> dict[str, str]:
        """Every field as the STREAMREC_* env var that sets it: a child process started with these
        (a worker, a command) has these settings."""
        env: dict[str, str] = {}

        def add(path: str, model: BaseModel) -> None:
            for name in type(model).model_fields:
                value = getattr(model, name)
                if isinstance(value, BaseModel):
                    add(f"{path}{name}.", value)
                else:
                    env[env_name(path + name)] = _env_value(value)

        add("", self)
        return env

    def process_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a child process that runs with these settings: `base` (default
        os.environ) with its STREAMREC_* variables replaced by `to_env()`."""
        base = os.environ if base is None else base
        return {k: v for k, v in base.items() if not k.upper().startswith(ENV_PREFIX)} | self.to_env()


def _env_value(value: Any) -> str:
    if value is None:
        return NONE_IN_ENV
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return str(value)


def env_name(path: str) -> str:
    """ "kafka.broker" -> "STREAMREC_KAFKA__BROKER"."""
    return ENV_PREFIX + ENV_DELIMITER.join(part.upper() for part in path.split("."))


def default_of(path: str) -> Any:
    """The default of the setting at `path` ("worker.top_k")."""
    model: type[BaseModel] = Settings
    *sections, name = path.split(".")
    for section in sections:
        model = type(model.model_fields[section].get_default(call_default_factory=True))
    return model.model_fields[name].get_default(call_default_factory=True)


def load_settings(flags: Mapping[str, Any] | None = None) -> Settings:
    """The settings a command runs with: the STREAMREC_* environment, overridden by the command's
    flags, given by path ({"kafka.broker": "kafka://...", "registry.path": p}; None = not given).
    Raises ConfigError naming what is wrong."""
    nested: dict[str, Any] = {}
    for path, value in (flags or {}).items():
        if value is None:
            continue
        *sections, name = path.split(".")
        target = nested
        for section in sections:
            target = target.setdefault(section, {})
        target[name] = value
    try:
        return Settings(**nested)
    except (ValidationError, SettingsError) as e:
        raise ConfigError(f"invalid settings (STREAMREC_* env vars or options): {e}") from None
