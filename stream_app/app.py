"""The Faust application: the app factory and `build_app`, which adds streamrec's topics, table,
agents, tasks and HTTP pages.

Each agent, task and page lives in a module of its own (`stream_app/agents`, `tasks`, `views`)
with a `register(ctx)`; what they decide is pure functions in `stream_app.steps`, and every use
of Faust's private API is in `stream_app.faust_private`.
"""

from __future__ import annotations

import faust

from core.kafka import faust_credentials, topic_configs
from core.settings import Settings
from state.window import CODEC as WINDOW_CODEC
from state.window import UserWindow
from stream_app.agents import control, events, profiles
from stream_app.context import WorkerContext, WorkerTopics
from stream_app.faust_private import StreamrecApp, tuned_transport, with_value_codec
from stream_app.metrics import WorkerMetrics
from stream_app.serving import ServingState
from stream_app.tasks import broker_watch, catalog, experiments, model_updates
from stream_app.tasks.catalog import freeze_heap
from stream_app.views import health, recommendations, windows
from stream_app.views import metrics as metrics_view

__all__ = ["StreamrecApp", "build_app", "faust_app", "freeze_heap", "windows_table"]

# In this order: the events agent before the forget agent, the catalog task first among the tasks.
MODULES = (
    events,
    control,
    profiles,
    catalog,
    model_updates,
    experiments,
    broker_watch,
    health,
    metrics_view,
    recommendations,
    windows,
)


def faust_app(settings: Settings, partitions: int) -> StreamrecApp:
    """A Faust app with streamrec's store, group, producer/consumer tuning and web settings,
    and no agents (`build_app` adds streamrec's; bench/bare_agent.py a bare one)."""
    app = StreamrecApp(
        settings.worker.app_id,
        broker=settings.kafka.broker,
        broker_credentials=faust_credentials(settings.kafka.security),
        store="rocksdb://",
        datadir=str(settings.worker.data_dir),
        topic_partitions=partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.kafka.session_timeout_s,
        broker_heartbeat_interval=settings.kafka.heartbeat_interval_s,
        broker_request_timeout=max(40.0, settings.kafka.session_timeout_s + 5),
        producer_linger=settings.kafka.producer_linger_ms / 1000.0,
        producer_acks=-1,
        topic_replication_factor=settings.kafka.replication_factor,
        table_standby_replicas=settings.worker.standby_replicas,
        web_port=settings.worker.web_port,
        web_bind=settings.worker.web_host,
        web_host=settings.worker.web_host,
    )
    app.transport_class = tuned_transport(settings)
    return app


def windows_table(app: faust.App, settings: Settings, partitions: int) -> faust.Table:
    """The per-user `UserWindow` table (RocksDB, changelog-backed), with bounded RocksDB memory."""
    table = app.Table(
        "windows",
        key_type=str,
        default=UserWindow,
        partitions=partitions,
        options=rocksdb_options(settings),
        extra_topic_configs=topic_configs(settings),
    )
    return with_value_codec(table, WINDOW_CODEC)  # state/window.py: a UserWindow as its JSON


def profiles_table(app: faust.App, settings: Settings, partitions: int) -> faust.Table:
    """User id -> the interest the user stated (`profiles` topic), like `windows_table`; no default: a
    user without a profile has none."""
    return app.Table(
        "profiles",
        key_type=str,
        value_type=str,
        partitions=partitions,
        options=rocksdb_options(settings),
        extra_topic_configs=topic_configs(settings),
    )


def rocksdb_options(settings: Settings) -> dict[str, int]:
    """Bounded RocksDB memory per table (Faust's defaults grow to GBs: core/settings.py, RocksDBSettings)."""
    return {
        "write_buffer_size": settings.rocksdb.write_buffer_mb << 20,
        "block_cache_size": settings.rocksdb.block_cache_mb << 20,
    }


def build_app(
    settings: Settings, serving: ServingState, partitions: int, metrics: WorkerMetrics | None = None
) -> StreamrecApp:
    """The worker's app: `serving` (model + item index) behind the agents, tasks and pages of MODULES."""
    app = faust_app(settings, partitions)
    ctx = WorkerContext(
        settings=settings,
        app=app,
        serving=serving,
        metrics=metrics or WorkerMetrics(),
        topics=WorkerTopics.create(app, settings),
        windows=windows_table(app, settings, partitions),
        profiles=profiles_table(app, settings, partitions),
    )
    for module in MODULES:
        module.register(ctx)
    return app
