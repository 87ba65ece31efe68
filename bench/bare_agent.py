"""The ceiling for bench/e2e.py: a bare Faust agent on streamrec's engine, store and broker tuning.

Same Faust app settings as the worker (`stream_app.app.faust_app`: RocksDB store, fetch wait,
linger, session timeout), the same `windows` table of `UserWindow` updated per event with the
same `with_events` call, and one output record per event ({"trigger_event_id", "user_id"} as
JSON) — but no validation, no micro-batches, no model. Per-event iteration, the bare idiom.

    STREAMREC_KAFKA__BROKER=kafka://127.0.0.1:9092 STREAMREC_WORKER__DATA_DIR=/tmp/bare \\
        STREAMREC_WORKER__WEB_PORT=6067 .venv/bin/python bench/bare_agent.py

Settings come from STREAMREC_* like the worker's; the consumer group and changelog are
`<app_id>-bare`, the output topic is OUTPUT_TOPIC.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import faust

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core.contracts import epoch_seconds  # noqa: E402
from core.kafka import ensure_topics, with_engine  # noqa: E402
from core.settings import Settings, load_settings  # noqa: E402
from state.window import WindowEvent  # noqa: E402
from stream_app.app import faust_app, freeze_heap, windows_table  # noqa: E402

OUTPUT_TOPIC = "bare-out"


def build_bare_app(settings: Settings, partitions: int) -> faust.App:
    settings = with_engine(settings)  # as the worker does: Tansu gets no idempotent producer
    app = faust_app(settings.replace(worker={"app_id": f"{settings.worker.app_id}-bare"}), partitions)
    events = app.topic(settings.topics.events, key_serializer="raw", value_serializer="raw")
    output = app.topic(OUTPUT_TOPIC, key_serializer="raw", value_serializer="raw")
    windows = windows_table(app, settings, partitions)
    max_age_s = settings.worker.window_max_age_days * 86_400.0

    @app.agent(events)
    async def forward(stream):
        async for value in stream:
            e = json.loads(value)
            new = [WindowEvent(e["event_id"], e["item_id"], e["event_type"], epoch_seconds(e["ts"]))]
            windows[e["user_id"]] = windows[e["user_id"]].with_events(new, settings.worker.window_size, max_age_s)
            answer = {"trigger_event_id": e["event_id"], "user_id": e["user_id"]}
            await output.send(key=e["user_id"].encode(), value=json.dumps(answer).encode())

    return app


def main() -> None:
    settings = load_settings()
    partitions = asyncio.run(ensure_topics(settings))
    asyncio.set_event_loop(asyncio.new_event_loop())  # asyncio.run closed its loop; Faust needs one
    app = build_bare_app(settings, partitions)
    freeze_heap()  # as the worker does before its first event (it has no catalog to wait for)
    faust.Worker(app, loglevel="info").execute_from_commandline()


if __name__ == "__main__":
    main()
