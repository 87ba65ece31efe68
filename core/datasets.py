"""Interaction data: RecBole atomic files or JSONL -> per-user, time-ordered sequences.

Two input layouts are accepted in one directory:

- RecBole atomic files: `*.inter` (user_id, item_id, timestamp; optional rating or
  event_type) and `*.item` (item_id, movie_title / title, release_year, class / genre).
  Explicit ratings map to event types by a fixed rule: 5 -> purchase, 4 -> click,
  anything else -> view (`rating_event_type`).
- JSONL: `events*.jsonl` and `items*.jsonl`, one topic value per line, read under the topic
  contract (`core.contracts.event_from_record` / `item_from_record`, docs/topics.md): the same
  models and time rule as the worker (ts epoch milliseconds or ISO-8601, no zone = UTC), with
  integer ids read as strings, `event_id` optional and a missing item title taken from the id.

Items are numbered 0..N-1 in catalog order (item file order, then items only seen in
events). Each user's events are sorted by time with a stable sort, so equal timestamps
keep file order, as RecBole does. `split_leave_one_out` is RecBole's sequential default:
last event = test target, second-to-last = validation target, the rest is training.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from core.contracts import event_from_record, item_from_record
from core.errors import DataError, InvalidRecord  # DataError: importable from here as before
from core.features import FeatureSpec, item_text, left_pad, recency_buckets


@dataclass
class Interactions:
    """A catalog plus every user's time-ordered events (arrays share one index)."""

    item_ids: list[str]  # catalog order; item index i <-> item_ids[i]
    item_texts: list[str]  # what the item tower reads, same order
    user_ids: list[str]
    items: list[np.ndarray]  # per user, [n_u] int64 item indices, oldest first
    events: list[np.ndarray]  # per user, [n_u] int64 event-type ids (FeatureSpec)
    times: list[np.ndarray]  # per user, [n_u] float64 seconds since epoch

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def subset(self, users: list[int], stop: int | None = None) -> Interactions:
        """The given users with each sequence cut to `seq[:stop]` (None = whole sequence)."""
        return Interactions(
            self.item_ids,
            self.item_texts,
            [self.user_ids[u] for u in users],
            [self.items[u][:stop] for u in users],
            [self.events[u][:stop] for u in users],
            [self.times[u][:stop] for u in users],
        )


@dataclass
class Split:
    """Leave-one-out: training histories, and (history, target) cases for valid and test."""

    train: Interactions  # seq[:-2] of every user with >= 3 events (+ all events of shorter users)
    valid_history: Interactions  # seq[:-2]; target seq[-2]
    valid_targets: np.ndarray  # [U] int64
    test_history: Interactions  # seq[:-1]; target seq[-1]
    test_targets: np.ndarray  # [U] int64


def rating_event_type(rating: float) -> str:
    """The documented rule for explicit-rating data such as MovieLens."""
    if rating >= 5:
        return "purchase"
    if rating >= 4:
        return "click"
    return "view"


def _read_atomic(path: Path) -> list[dict[str, str]]:
    """RecBole atomic file -> rows keyed by field name without the `:type` suffix."""
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":")[0] for h in next(reader)]
        return [dict(zip(header, row)) for row in reader if row]


def _load_recbole(inter: Path, item: Path | None) -> tuple[list[dict], list[dict]]:
    items = []
    for n, row in enumerate(_read_atomic(item) if item else [], 2):  # line 1 is the header
        title = row.get("movie_title") or row.get("title") or row["item_id"]
        year = row.get("release_year", "")
        genres = (row.get("class") or row.get("genre") or "").split()
        items.append(
            _item(
                item,
                n,
                {
                    "item_id": row["item_id"],
                    "title": f"{title} ({year})" if year else title,
                    "categories": [g for g in genres if g != "unknown"],
                },
            )
        )
    events = []
    for row in _read_atomic(inter):
        if "event_type" in row:
            event_type = row["event_type"]
        elif "rating" in row:
            event_type = rating_event_type(float(row["rating"]))
        else:
            event_type = "view"
        events.append(
            {
                "user_id": row["user_id"],
                "item_id": row["item_id"],
                "event_type": event_type,
                "ts": float(row.get("timestamp", 0.0)),
            }
        )
    return events, items


def _read_jsonl(paths: list[Path]) -> Iterator[tuple[Path, int, object]]:
    """(file, line number, decoded JSON) of every non-blank line."""
    for path in paths:
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield path, n, json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{n}: not JSON ({e})") from e


def _item(path: Path, line: int, record: object) -> dict:
    """A catalog record under the `items` contract, as the JSON object it would be on the topic."""
    try:
        return item_from_record(record).model_dump(exclude_unset=True)
    except InvalidRecord as e:
        raise DataError(f"{path}:{line}: {e.reason} (the `items` contract, docs/topics.md)") from None


def _load_jsonl(events_paths: list[Path], items_paths: list[Path]) -> tuple[list[dict], list[dict]]:
    events = []
    for path, n, record in _read_jsonl(events_paths):
        try:
            e = event_from_record(record)
        except InvalidRecord as err:
            raise DataError(f"{path}:{n}: {err.reason} (the `events` contract, docs/topics.md)") from None
        events.append({"user_id": e.user_id, "item_id": e.item_id, "event_type": e.event_type, "ts": e.ts})
    return events, [_item(path, n, record) for path, n, record in _read_jsonl(items_paths)]


def read_records(data_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(events, items) of a --data directory as records in the topic schemas (ts in seconds).

    Events: {"user_id", "item_id", "event_type", "ts"}; items: the catalog records as validated
    (`core.contracts.item_from_record`). Torch-free: `streamrec replay` and `predict` read datasets
    with it too.
    """
    root = Path(data_dir)
    inter, item = sorted(root.glob("*.inter")), sorted(root.glob("*.item"))
    events_jsonl, items_jsonl = sorted(root.glob("events*.jsonl")), sorted(root.glob("items*.jsonl"))
    if inter:
        events, items = _load_recbole(inter[0], item[0] if item else None)
    elif events_jsonl:
        events, items = _load_jsonl(events_jsonl, items_jsonl)
    else:
        raise DataError(f"{root}: expected RecBole `*.inter` (+ `*.item`) or `events*.jsonl` (+ `items*.jsonl`)")
    if not events:
        raise DataError(f"{root}: no events")
    return events, items


def load_interactions(data_dir: str | Path, spec: FeatureSpec) -> Interactions:
    """Read a --data directory (RecBole atomic files or JSONL) into sequences."""
    events, items = read_records(data_dir)

    index: dict[str, int] = {}
    texts: list[str] = []
    for it in items:
        item_id = str(it["item_id"])
        if item_id not in index:
            index[item_id] = len(texts)
            texts.append(item_text(it.get("title") or item_id, it.get("description"), it.get("categories")))
    for e in events:
        if e["item_id"] not in index:  # an item with events but no catalog record: its id is its text
            index[e["item_id"]] = len(texts)
            texts.append(e["item_id"])

    users: dict[str, int] = {}
    for e in events:
        users.setdefault(e["user_id"], len(users))
    user_of = np.array([users[e["user_id"]] for e in events])
    ts = np.array([e["ts"] for e in events], dtype=np.float64)
    item = np.array([index[e["item_id"]] for e in events], dtype=np.int64)
    etype = np.array([spec.event_type_id(e["event_type"]) for e in events], dtype=np.int64)
    order = np.lexsort((ts, user_of))  # by user, then time; stable for equal times
    bounds = np.searchsorted(user_of[order], np.arange(len(users) + 1))
    rows = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    return Interactions(
        list(index), texts, list(users), [item[r] for r in rows], [etype[r] for r in rows], [ts[r] for r in rows]
    )


def split_leave_one_out(data: Interactions) -> Split:
    """RecBole's sequential default (order TO, split LS valid_and_test)."""
    evaluated = [u for u, seq in enumerate(data.items) if len(seq) >= 3]
    short = [u for u, seq in enumerate(data.items) if len(seq) < 3]
    head, rest = data.subset(evaluated, -2), data.subset(short)
    return Split(
        train=Interactions(
            data.item_ids,
            data.item_texts,
            head.user_ids + rest.user_ids,
            head.items + rest.items,
            head.events + rest.events,
            head.times + rest.times,
        ),
        valid_history=data.subset(evaluated, -2),
        valid_targets=np.array([data.items[u][-2] for u in evaluated], dtype=np.int64),
        test_history=data.subset(evaluated, -1),
        test_targets=np.array([data.items[u][-1] for u in evaluated], dtype=np.int64),
    )


@dataclass
class Windows:
    """Left-padded model inputs for a batch of windows (what the worker builds, too)."""

    items: np.ndarray  # [B, T] int64 item indices (0 at padding)
    event_types: np.ndarray  # [B, T] int64
    time_buckets: np.ndarray  # [B, T] int64, relative to each window's newest event
    mask: np.ndarray  # [B, T] bool, True = real event


def make_windows(
    items: list[np.ndarray], events: list[np.ndarray], times: list[np.ndarray], spec: FeatureSpec
) -> Windows:
    """Per-window event arrays (oldest first) -> left-padded [B, max_len] inputs, newest at T-1."""
    T = spec.max_len
    mask = left_pad([np.ones(len(r), dtype=bool) for r in items], T, False)
    ts = left_pad(times, T, 0.0)
    return Windows(left_pad(items, T, 0), left_pad(events, T, 0), recency_buckets(ts, mask, spec.n_time_buckets), mask)
