"""The retrain job's input: a bounded read of the `events` topic plus the whole `items` topic.

    events  from a stored position (`{partition: offset}` JSON) and/or a time bound
            (`--since 7d`: Kafka record timestamps, via offsets_for_times) up to the TRUE
            end (`core.kafka.end_offsets`: corrected on Tansu, which under-reports it)
    items   from the start: last record per item; a tombstone or `available: false` removes it
    both    validated with the worker's own parser (docs/topics.md); invalid records are
            skipped and counted (the worker has already dead-lettered them)
    write   events.jsonl + items.jsonl in a work dir, merged with optional base data,
            readable by `core.datasets.load_interactions`

Torch-free (kafka-python, NumPy-free even); the retrain job imports it.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import kafka
from core.contracts import item_change, parse_event
from core.errors import EventLogError, InvalidRecord  # EventLogError: importable from here as before
from core.io import atomic_write_text
from core.kafka import check_connection, client_security, end_offsets
from core.settings import Settings

log = logging.getLogger(__name__)

_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> float:
    """'7d', '12h', '90m', '1h30m', '45s', '2w' -> seconds (> 0)."""
    value = str(text).strip().lower()
    parts = _DURATION.findall(value)
    if not value or not parts or "".join(n + u for n, u in parts) != value:
        raise EventLogError(f"invalid duration {text!r}: use a number and a unit s/m/h/d/w, e.g. 7d, 12h, 1h30m")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise EventLogError(f"invalid duration {text!r}: must be longer than 0")
    return seconds


def read_offsets(path: Path) -> dict[int, int]:
    """A stored position: JSON {"partition": offset}."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise EventLogError(
            f'{path}: cannot read the stored position ({e}); expected JSON {{partition: offset}}, e.g. {{"0": 1234}}'
        ) from e
    try:
        offsets = {int(p): int(o) for p, o in raw.items()}
    except (AttributeError, TypeError, ValueError) as e:
        raise EventLogError(f"{path}: expected JSON {{partition: offset}} with integers, got {raw!r}") from e
    if any(p < 0 or o < 0 for p, o in offsets.items()):
        raise EventLogError(f"{path}: partitions and offsets must be >= 0, got {offsets}")
    return offsets


def write_offsets(path: Path, offsets: dict[int, int]) -> None:
    """Atomically (core.io: temp file, fsync, rename): a crash never leaves half a position."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({str(p): o for p, o in sorted(offsets.items())}) + "\n")


# --- parsing: pure functions over (key, value) bytes ------------------------------------------


def valid_events(values: list[bytes | None], settings: Settings) -> tuple[list[dict], int]:
    """Raw `events` values -> (valid events in topic schema with ts in epoch ms, invalid count).

    Same contract as the worker (`core.contracts.parse_event`); duplicates by event_id
    (at-least-once producers) are kept once.
    """
    events, seen, invalid = [], set(), 0
    for raw in values:
        try:
            e = parse_event(
                raw,
                max_bytes=settings.worker.max_record_bytes,
                event_types=set(settings.worker.event_weights),
                max_future_skew_s=settings.worker.max_future_skew_s,
            )
        except InvalidRecord:
            invalid += 1
            continue
        if e.event_id in seen:
            continue
        seen.add(e.event_id)
        events.append(
            {
                "event_id": e.event_id,
                "user_id": e.user_id,
                "item_id": e.item_id,
                "event_type": e.event_type,
                "ts": int(round(e.ts * 1000)),
            }
        )
    return events, invalid


@dataclass
class Catalog:
    live: dict[str, dict] = field(default_factory=dict)  # item_id -> last record, available
    removed: dict[str, dict] = field(default_factory=dict)  # item_id -> last known record (may be {})
    invalid: int = 0


def catalog_state(records: list[tuple[bytes | None, bytes | None]], settings: Settings) -> Catalog:
    """`items` (key, value) records in topic order -> the catalog now (same rules as the worker)."""
    catalog = Catalog()
    for key, raw in records:
        try:
            change = item_change(key, raw, max_bytes=settings.worker.max_record_bytes)
        except InvalidRecord:
            catalog.invalid += 1
            continue
        if change.live:
            catalog.live[change.item_id] = change.item.model_dump(exclude_none=True)
            catalog.removed.pop(change.item_id, None)
            continue
        last = catalog.live.pop(change.item_id, None) or catalog.removed.get(change.item_id) or {}
        catalog.removed[change.item_id] = change.item.model_dump(exclude_none=True) if change.item else last
    return catalog


# --- reading the topics --------------------------------------------------------------------


def _consumer(settings: Settings) -> kafka.KafkaConsumer:
    return kafka.KafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        **client_security(settings.kafka.security),
    )


def read_topic(
    settings: Settings,
    topic: str,
    stored: dict[int, int] | None = None,
    since_s: float | None = None,
    idle_timeout_s: float = 60.0,
) -> tuple[list, dict[int, int], dict[int, int]]:
    """Records of `topic` from max(earliest, stored position, first record at or after now - since_s)
    up to the true end at the time of the call. -> (records, start offsets, end offsets)."""
    consumer = _consumer(settings)
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise EventLogError(
                f"topic {topic!r} does not exist on {settings.kafka.bootstrap_servers}; "
                f"start a worker once (it creates the topics) or check STREAMREC_TOPICS__*"
            )
        tps = [kafka.TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        earliest = consumer.beginning_offsets(tps)
        end = end_offsets(settings, consumer.end_offsets(tps))
        start = {tp: max(earliest[tp], (stored or {}).get(tp.partition, 0)) for tp in tps}
        if since_s is not None:
            found = consumer.offsets_for_times({tp: int((time.time() - since_s) * 1000) for tp in tps})
            start = {tp: max(start[tp], found[tp].offset if found.get(tp) is not None else end[tp]) for tp in tps}
        start = {tp: min(start[tp], end[tp]) for tp in tps}
        records = []
        for tp in tps:
            consumer.seek(tp, start[tp])
        pending = {tp for tp in tps if start[tp] < end[tp]}
        last_progress = time.monotonic()
        while pending:
            batch = consumer.poll(timeout_ms=200, max_records=5_000)
            for tp, messages in batch.items():
                records += [m for m in messages if m.offset < end[tp]]
            if batch:
                last_progress = time.monotonic()
            pending = {tp for tp in pending if consumer.position(tp) < end[tp]}
            if pending and time.monotonic() - last_progress > idle_timeout_s:
                raise EventLogError(
                    f"{topic}: no progress for {idle_timeout_s:.0f}s at "
                    f"{ {tp.partition: consumer.position(tp) for tp in pending} }, "
                    f"expected to reach { {tp.partition: end[tp] for tp in pending} }"
                )
        return records, {tp.partition: o for tp, o in start.items()}, {tp.partition: o for tp, o in end.items()}
    finally:
        consumer.close()


@dataclass
class EventLog:
    events: list[dict]  # valid events in topic schema, ts epoch ms, in topic order per partition
    catalog: Catalog
    invalid_events: int
    start_offsets: dict[int, int]  # per events partition: where this read began
    end_offsets: dict[int, int]  # and where it stopped: the next run's stored position


def read_event_log(settings: Settings, stored: dict[int, int] | None = None, since_s: float | None = None) -> EventLog:
    check_connection(settings)  # a wrong password or CA: a BrokerError saying so, not a bootstrap timeout
    records, start, end = read_topic(settings, settings.topics.events, stored, since_s)
    events, invalid = valid_events([r.value for r in records], settings)
    item_records, _, _ = read_topic(settings, settings.topics.items)
    catalog = catalog_state([(r.key, r.value) for r in item_records], settings)
    log.info(
        "read %d events (%d invalid, skipped) from %s offsets %s..%s; catalog: %d items (%d removed, %d invalid)",
        len(events),
        invalid,
        settings.topics.events,
        start,
        end,
        len(catalog.live),
        len(catalog.removed),
        catalog.invalid,
    )
    return EventLog(events, catalog, invalid, start, end)


# --- the training data directory -------------------------------------------------------------


def merge_dataset(
    event_log: EventLog, base: tuple[list[dict], list[dict]] | None = None
) -> tuple[list[dict], list[dict]]:
    """(events, items) for events.jsonl / items.jsonl: base data first, then the topics.

    Base events (`core.datasets.read_records`: ts in seconds) that also came from the topic
    (same user, item, type and millisecond) are kept once. The topic's catalog wins over the
    base's; a removed item stays in items.jsonl (`available: false`) only if an event refers
    to it, so its history keeps its text.
    """
    base_events, base_items = base or ([], [])
    events, seen = [], set()
    for n, e in enumerate(base_events):
        record = {
            "event_id": str(e.get("event_id") or f"base-{n}"),
            "user_id": str(e["user_id"]),
            "item_id": str(e["item_id"]),
            "event_type": e["event_type"],
            "ts": int(round(float(e["ts"]) * 1000)),
        }
        seen.add((record["user_id"], record["item_id"], record["event_type"], record["ts"]))
        events.append(record)
    events += [e for e in event_log.events if (e["user_id"], e["item_id"], e["event_type"], e["ts"]) not in seen]

    items = {str(it["item_id"]): {**it, "item_id": str(it["item_id"])} for it in base_items}
    removed = dict(event_log.catalog.removed)
    for item_id in removed:
        removed[item_id] = removed[item_id] or items.get(item_id, {})
        items.pop(item_id, None)
    items.update(event_log.catalog.live)
    referenced = {e["item_id"] for e in events}
    for item_id, last in removed.items():
        if item_id in referenced and item_id not in items and last.get("title"):
            items[item_id] = {**last, "item_id": item_id, "available": False}
    return events, list(items.values())


def write_dataset(out_dir: Path, events: list[dict], items: list[dict]) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "events.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(e) + "\n" for e in events)
    with (out_dir / "items.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(it) + "\n" for it in items)
    return out_dir
