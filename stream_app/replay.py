"""Publish a dataset's catalog to `items` and its interactions to `events`, in
timestamp order, at a chosen rate — a stand-in for real producers."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Iterable

from aiokafka import AIOKafkaProducer
from tqdm import tqdm

from core.kafka import client_security
from core.settings import Settings


def event_record(user_id: str, item_id: str, event_type: str, ts_seconds: float) -> dict:
    """An `events` value; the id is derived from the content so a replay is idempotent."""
    ts_ms = int(round(ts_seconds * 1000))
    return {
        "event_id": f"{user_id}:{item_id}:{ts_ms}",
        "user_id": user_id,
        "item_id": item_id,
        "event_type": event_type,
        "ts": ts_ms,
    }


def producer(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        linger_ms=settings.kafka.producer_linger_ms,
        acks="all",
        **client_security(settings.kafka.security),
    )


async def publish(
    settings: Settings,
    topic: str,
    records: Iterable[tuple[str, dict | None]],
    total: int,
    rate: float | None = None,
    desc: str = "",
) -> int:
    """Send (key, value) pairs — value None is a tombstone — at most `rate` per second."""
    sent = 0
    async with producer(settings) as p:
        start = time.monotonic()
        pending = []
        for key, value in tqdm(records, total=total, desc=desc or topic, unit="rec", mininterval=0.5):
            body = None if value is None else json.dumps(value).encode()
            pending.append(await p.send(topic, body, key=key.encode()))
            sent += 1
            if rate:
                ahead = sent / rate - (time.monotonic() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await asyncio.gather(*pending)  # every record acknowledged by the broker
    return sent


def dataset_records(data_dir) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
    """(items, events) as (key, value) pairs; events sorted by time (stable)."""
    from core.datasets import read_records  # the dataset reader shared with the trainer

    events, items = read_records(data_dir)
    catalog = [(str(i["item_id"]), {k: v for k, v in i.items() if v not in (None, [])}) for i in items]
    ordered = sorted(events, key=lambda e: e["ts"])
    stream = [(e["user_id"], event_record(e["user_id"], e["item_id"], e["event_type"], e["ts"])) for e in ordered]
    return catalog, stream
