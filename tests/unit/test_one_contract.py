"""One contract for events and items (docs/topics.md): the same raw record gives the same parsed
values on every path that reads it — the worker, the dataset reader (training, `replay`,
`predict --catalog`), the retrain job's event log and the training data it writes, `replay`'s
records as the worker then reads them, and `predict`'s history reader.

Run in a time zone that is not UTC: a naive ISO-8601 `ts` is UTC by the contract, and a reader
that took it as local time (core.datasets did, so training and serving disagreed) fails here."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from core.contracts import parse_event, parse_item
from core.datasets import load_interactions, read_records
from core.features import FeatureSpec, item_text
from core.settings import Settings
from encoders.event_log import catalog_state, valid_events, write_dataset
from stream_app.batch import _catalog_items, window_from_history
from stream_app.replay import dataset_records

SETTINGS = Settings()
SPEC = FeatureSpec()

# (raw event, what every path must read: user, item, type, ts in epoch seconds). Millisecond
# precision throughout: the retrain job keeps events as epoch milliseconds.
EVENTS = [
    (
        {"event_id": "e1", "user_id": "u1", "item_id": "i1", "event_type": "view", "ts": 1704067200000},
        ("u1", "i1", "view", 1704067200.0),
    ),
    (
        {"event_id": "e2", "user_id": "u1", "item_id": "i2", "event_type": "click", "ts": 1704067260500.0},
        ("u1", "i2", "click", 1704067260.5),
    ),
    (
        {"event_id": "e3", "user_id": "u2", "item_id": "i1", "event_type": "purchase", "ts": "2024-01-01T00:02:00Z"},
        ("u2", "i1", "purchase", 1704067320.0),
    ),
    (
        {"event_id": "e4", "user_id": "u2", "item_id": "i2", "event_type": "view", "ts": "2024-01-01T02:03:00+02:00"},
        ("u2", "i2", "view", 1704067380.0),
    ),
    (
        {"event_id": "e5", "user_id": "u2", "item_id": "i3", "event_type": "click", "ts": "2024-01-01T00:04:00"},
        ("u2", "i3", "click", 1704067440.0),
    ),  # naive: UTC
    (
        {
            "event_id": "e6",
            "user_id": "ユーザー",
            "item_id": "café ☕",
            "event_type": "view",
            "ts": "2024-07-01T12:00:00.250",
        },  # naive, in New York's summer time
        ("ユーザー", "café ☕", "view", 1719835200.25),
    ),
    (
        {
            "event_id": "e7",
            "user_id": "ユーザー",
            "item_id": "i1",
            "event_type": "purchase",
            "ts": 1719835260000,
            "context": {"page": "home", "position": 3},
            "session": "s-1",
        },  # extra fields are ignored
        ("ユーザー", "i1", "purchase", 1719835260.0),
    ),
]
RAW = [raw for raw, _ in EVENTS]
EXPECTED = sorted(expected for _, expected in EVENTS)

ITEMS = [
    {"item_id": "i1", "title": "Toy Story (1995)", "categories": ["Animation", "Comedy"]},
    {
        "item_id": "café ☕",
        "title": "Crème brûlée",
        "description": "Un dessert.",
        "categories": ["Dessert"],
        "vendor": {"id": 7},
    },  # extra field
    {"item_id": "i2", "title": "Heat (1995)", "description": None, "available": True},
    {"item_id": "i3", "title": "  Padded title  ", "categories": []},
]
EXPECTED_ITEMS = [(it["item_id"], item_text(it["title"], it.get("description"), it.get("categories"))) for it in ITEMS]


@pytest.fixture(autouse=True)
def new_york_time():
    """Local time is not UTC (and has summer time) while the test runs."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    assert time.timezone != 0
    yield
    if before is None:
        os.environ.pop("TZ")
    else:
        os.environ["TZ"] = before
    time.tzset()


def as_bytes(record: dict) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode("utf-8")


def worker(record: dict):
    e = parse_event(
        as_bytes(record),
        max_bytes=SETTINGS.worker.max_record_bytes,
        event_types=set(SETTINGS.worker.event_weights),
        max_future_skew_s=SETTINGS.worker.max_future_skew_s,
    )
    return e.user_id, e.item_id, e.event_type, e.ts


def dataset_dir(root: Path, events: list[dict], items: list[dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "events.jsonl").write_text(
        "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events), encoding="utf-8"
    )
    (root / "items.jsonl").write_text(
        "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items), encoding="utf-8"
    )
    return root


def from_read_records(root: Path):
    events, _ = read_records(root)
    return sorted((e["user_id"], e["item_id"], e["event_type"], e["ts"]) for e in events)


def from_training(root: Path):
    """What `load_interactions` hands to training (per-user sequences), back as tuples."""
    data = load_interactions(root, SPEC)
    return sorted(
        (data.user_ids[u], data.item_ids[i], SPEC.event_types[t - 1], float(ts))
        for u in range(len(data.user_ids))
        for i, t, ts in zip(data.items[u], data.events[u], data.times[u])
    )


def test_the_worker_reads_the_expected_values():
    assert sorted(map(worker, RAW)) == EXPECTED


def test_dataset_reader_and_training(tmp_path):
    root = dataset_dir(tmp_path / "data", RAW, ITEMS)
    assert from_read_records(root) == EXPECTED
    assert from_training(root) == EXPECTED


def test_event_log_and_the_training_data_the_retrain_job_writes(tmp_path):
    events, invalid = valid_events([as_bytes(r) for r in RAW], SETTINGS)
    assert invalid == 0
    assert sorted((e["user_id"], e["item_id"], e["event_type"], e["ts"] / 1000) for e in events) == EXPECTED
    root = write_dataset(tmp_path / "work", events, ITEMS)
    assert from_read_records(root) == EXPECTED
    assert from_training(root) == EXPECTED


def test_replay_sends_what_the_worker_reads_back_unchanged(tmp_path):
    _, stream = dataset_records(dataset_dir(tmp_path / "data", RAW, ITEMS))
    assert all(key == value["user_id"] for key, value in stream)
    assert sorted(worker(value) for _, value in stream) == EXPECTED


def test_predict_reads_histories_the_same_way():
    got = []
    for user in sorted({r["user_id"] for r in RAW}):
        history = [{k: v for k, v in r.items() if k != "user_id"} for r in RAW if r["user_id"] == user]
        window = window_from_history(history, SETTINGS)
        got += [(user, e.item_id, e.event_type, e.ts) for e in window.events()]
    assert sorted(got) == EXPECTED


def test_items_read_the_same_on_every_path(tmp_path):
    root = dataset_dir(tmp_path / "data", RAW, ITEMS)
    worker_items = [parse_item(as_bytes(it), max_bytes=SETTINGS.worker.max_record_bytes) for it in ITEMS]
    assert [(i.item_id, item_text(i.title, i.description, i.categories)) for i in worker_items] == EXPECTED_ITEMS

    data = load_interactions(root, SPEC)  # training: catalog order = item file order
    assert list(zip(data.item_ids, data.item_texts))[: len(ITEMS)] == EXPECTED_ITEMS

    for catalog in (root, root / "items.jsonl"):  # `predict --catalog DIR` and `--catalog FILE`
        predicted = _catalog_items(None, catalog)
        assert [(i.item_id, item_text(i.title, i.description, i.categories)) for i in predicted] == EXPECTED_ITEMS

    replayed, _ = dataset_records(root)  # `replay`: what it sends to `items`, as the worker parses it
    parsed = [parse_item(as_bytes(value), max_bytes=SETTINGS.worker.max_record_bytes) for _, value in replayed]
    assert [(i.item_id, item_text(i.title, i.description, i.categories)) for i in parsed] == EXPECTED_ITEMS

    catalog = catalog_state([(it["item_id"].encode(), as_bytes(it)) for it in ITEMS], SETTINGS)  # retrain
    assert [
        (i, item_text(it["title"], it.get("description"), it.get("categories"))) for i, it in catalog.live.items()
    ] == EXPECTED_ITEMS
