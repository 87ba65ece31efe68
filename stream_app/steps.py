"""What the worker decides, as pure functions over plain values (bytes, windows, records).

The agents and tasks do the I/O around these (table reads and writes, sends, metrics);
tests/unit/test_worker_steps.py tests them without a broker.
"""

from __future__ import annotations

import json
from typing import Iterable, Mapping, NamedTuple, Sequence

from core.contracts import InvalidRecord, Item, Recommendation, RecommendedItem, item_change, parse_event
from state.window import UserWindow, WindowEvent

Reject = tuple[int, str]  # (index of the record in its batch, reason for the dead-letter topic)


# -- events ----------------------------------------------------------------------------------


class UserEvents(NamedTuple):
    events: list[WindowEvent]  # the user's valid events in the batch, in arrival order
    last: int  # index in the batch of the user's last event: its partition holds the user's window


def group_valid_events(
    values: Sequence[bytes | None], *, max_bytes: int, event_types: set[str], max_future_skew_s: float
) -> tuple[dict[str, UserEvents], list[Reject]]:
    """A micro-batch's event values -> the valid events grouped by user (users in order of first
    appearance) and the invalid ones with their reasons (in batch order)."""
    touched: dict[str, UserEvents] = {}
    rejects: list[Reject] = []
    for index, value in enumerate(values):
        try:
            event = parse_event(
                value, max_bytes=max_bytes, event_types=event_types, max_future_skew_s=max_future_skew_s
            )
        except InvalidRecord as e:
            rejects.append((index, e.reason))
            continue
        events = touched[event.user_id].events if event.user_id in touched else []
        events.append(WindowEvent(event.event_id, event.item_id, event.event_type, event.ts))
        touched[event.user_id] = UserEvents(events, index)
    return touched, rejects


def advance_windows(
    touched: Mapping[str, UserEvents], stored: Mapping[str, UserWindow], window_size: int, max_age_s: float
) -> tuple[dict[str, UserWindow], list[bool]]:
    """Each touched user's stored window with the batch's events added, and the online hits: for each
    event of a user who had been shown a list, whether its item was in that list."""
    updated: dict[str, UserWindow] = {}
    hits: list[bool] = []
    for user, (events, _) in touched.items():
        window = stored[user]
        if window.recommended:
            hits += [e.item_id in window.recommended for e in events]
        updated[user] = window.with_events(events, window_size, max_age_s)
    return updated, hits


def remember_shown(
    updated: Mapping[str, UserWindow], lists: Mapping[str, Sequence[RecommendedItem]]
) -> dict[str, UserWindow]:
    """The windows to store: each remembers the list it is about to be shown (for the next hits)."""
    return {user: window.derive(recommended=[i.item_id for i in lists[user]]) for user, window in updated.items()}


def build_records(
    touched: Mapping[str, UserEvents], lists: Mapping[str, Sequence[RecommendedItem]], model_version: str, now: float
) -> list[tuple[bytes, Recommendation]]:
    """One (key, record) per touched user, in `touched` order, triggered by the user's last event in the batch."""
    return [
        (
            user.encode(),
            Recommendation(
                user_id=user,
                items=lists[user],
                model_version=model_version,
                generated_at=int(now * 1000),
                trigger_event_id=events[-1].event_id,
            ),
        )
        for user, (events, _) in touched.items()
    ]


def next_offsets(positions: Iterable[tuple[int, int]]) -> dict[int, int]:
    """(partition, offset) of processed records -> partition: the offset after the last one."""
    return {partition: offset + 1 for partition, offset in positions}


# -- catalog -------------------------------------------------------------------------------


class CatalogChanges(NamedTuple):
    upserts: dict[str, Item]  # items whose last record in the batch adds them (apply after the removals)
    removals: list[str]  # item ids removed, in record order (one added again later is in `upserts` too)
    rejects: list[Reject]


def catalog_changes(records: Iterable[tuple[bytes | None, bytes | None]], *, max_bytes: int) -> CatalogChanges:
    """A batch of `items` (key, value) records -> removals, then upserts, and the invalid records."""
    upserts: dict[str, Item] = {}
    removals: list[str] = []
    rejects: list[Reject] = []
    for index, (key, value) in enumerate(records):
        try:
            change = item_change(key, value, max_bytes=max_bytes)
        except InvalidRecord as e:
            rejects.append((index, e.reason))
            continue
        if change.live:
            upserts[change.item_id] = change.item
        else:
            upserts.pop(change.item_id, None)
            removals.append(change.item_id)
    return CatalogChanges(upserts, removals, rejects)


# -- dead letters, model updates -------------------------------------------------------------


def dlq_headers(topic: str, partition: int, offset: int, reason: str) -> list[tuple[str, bytes]]:
    """Where a dead letter came from and why (docs/topics.md)."""
    return [
        ("dlq.reason", reason.encode("utf-8")),
        ("dlq.topic", topic.encode()),
        ("dlq.partition", str(partition).encode()),
        ("dlq.offset", str(offset).encode()),
    ]


def announced_version(value: bytes | None, offset: int) -> str:
    """The version a `model-updates` record names, or where it sits if it cannot be read."""
    try:
        return str(json.loads(value)["version"])
    except Exception:
        return f"offset {offset}"
