"""All runtime settings in one frozen class: env vars with prefix STREAMREC_, or CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


# Exact top-k costs ~2.6 ms per user at 100k items on one core and 5-9 ms at 200k, at or over
# the 5 ms budget (docs/benchmarks.md, "Retrieval"). Below this size exact is within budget,
# needs no build or second copy of the vectors, and its recall is 1.
DEFAULT_ANN_MIN_ITEMS = 100_000


class Topics(BaseModel, frozen=True):
    events: str = "events"
    items: str = "items"
    recommendations: str = "recommendations"
    dlq: str = "events-dlq"
    model_updates: str = "model-updates"
    control: str = "streamrec-control"  # forget requests; co-partitioned with events (docs/topics.md)


class KafkaSecurity(BaseModel, frozen=True):
    """Passed through to every Kafka client (Faust, aiokafka, kafka-python); defaults suit the local
    broker. Env vars: STREAMREC_SECURITY__<FIELD> (docs/security.md)."""

    protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    sasl_mechanism: str = "PLAIN"  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # TLS (SSL, SASL_SSL): the CA that signed the broker's certificate (PEM; None: the system's CAs),
    # and for mutual TLS the client's certificate chain and its unencrypted private key (PEM).
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None  # None: the key is in ssl_certfile
    ssl_check_hostname: bool = True  # the broker's certificate must name the host in STREAMREC_BROKER


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMREC_", env_nested_delimiter="__", frozen=True)

    broker: str = "kafka://127.0.0.1:9092"
    data_dir: Path = Path(".streamrec/state")  # RocksDB tables (one dir per worker)
    registry: Path = Path(".streamrec/registry")  # versioned models
    web_port: int = 6066
    web_host: str = "127.0.0.1"
    app_id: str = "streamrec"
    topics: Topics = Topics()
    security: KafkaSecurity = KafkaSecurity()
    partitions: int = 1  # used when the worker creates missing topics
    # Topics the worker creates (and Faust's changelogs): replicas each, and how many must have a
    # write before it is acknowledged (acks=all). 3 and 2 on a three-node cluster.
    replication_factor: int = 1
    min_insync_replicas: int = 1
    # Which broker this is, for the workarounds one of them needs (docs/ARCHITECTURE.md):
    # "auto" asks the cluster (Tansu answers with its default cluster id `tansu_cluster`).
    broker_engine: Literal["auto", "kafka", "tansu"] = "auto"

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

    # Kafka client tuning (see docs/ARCHITECTURE.md: quirks of the embedded broker).
    fetch_max_wait_ms: int = 10
    producer_linger_ms: int = 5
    session_timeout_s: float = 10.0
    heartbeat_interval_s: float = 1.0
    inference_threads: int = 1

    # RocksDB memory per table (Faust's defaults: 64 MB memtables, up to 3, and a 2 GB block cache,
    # which the soak showed as RSS still growing after ten minutes; docs/reliability.md).
    rocksdb_write_buffer_mb: int = 8
    rocksdb_block_cache_mb: int = 64

    @property
    def bootstrap_servers(self) -> str:
        return self.broker.removeprefix("kafka://").replace(";", ",")
