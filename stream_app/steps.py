"""What the worker decides, as pure functions over plain values (bytes, windows, records).

The agents and tasks do the I/O around these (table reads and writes, sends, metrics);
tests/unit/test_worker_steps.py tests them without a broker.
"""

from __future__ import annotations

import json
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence

from core.contracts import InvalidRecord, Item, Recommendation, RecommendedItem, item_change, parse_event
from state.window import UserWindow, WindowEvent
from stream_app.experiments import Served

Reject = tuple[int, str]  # (index of the record in its batch, reason for the dead-letter topic)


# -- events ----------------------------------------------------------------------------------


class UserEvents(NamedTuple):
    events: list[WindowEvent]  # the user's valid events in the batch, in arrival order
    indices: list[int]  # their indices in the batch (what a dead letter sends)

    @property
    def last(self) -> int:
        """Index in the batch of the user's last event: its partition holds the user's window."""
        return self.indices[-1]


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
        user = touched.setdefault(event.user_id, UserEvents([], []))
        user.events.append(WindowEvent(event.event_id, event.item_id, event.event_type, event.ts))
        user.indices.append(index)
    return touched, rejects


def advance_windows(
    touched: Mapping[str, UserEvents],
    stored: Mapping[str, UserWindow],
    window_size: int,
    max_age_s: float,
    seen_items_max: int = 0,
    event_weights: Mapping[str, float] | None = None,
) -> tuple[dict[str, UserWindow], list[bool]]:
    """Each touched user's stored window with the batch's events added (to its seen items too, up to
    `seen_items_max`), and the online hits: for each event of a user who had been shown a list, whether its
    item was in that list."""
    updated: dict[str, UserWindow] = {}
    hits: list[bool] = []
    for user, (events, _) in touched.items():
        window = stored[user]
        if window.recommended:
            hits += [e.item_id in window.recommended for e in events]
        updated[user] = window.with_events(events, window_size, max_age_s).with_seen(
            events, seen_items_max, event_weights or {}
        )
    return updated, hits


def remember_shown(
    updated: Mapping[str, UserWindow], lists: Mapping[str, Sequence[RecommendedItem]]
) -> dict[str, UserWindow]:
    """The windows to store, of the users with a list: each remembers the list it is about to be shown
    (for the next hits) and, in an experiment, the variant that contributed each item (for the credits)."""
    return {
        user: updated[user].derive(
            recommended=[i.item_id for i in items], shown_variants=[i.variant for i in items if i.variant]
        )
        for user, items in lists.items()
    }


class OutgoingRecord(NamedTuple):
    user_id: str
    key: bytes
    value: bytes  # the encoded Recommendation: what is sent, and what counts against the topic's limit


def build_records(
    touched: Mapping[str, UserEvents],
    lists: Mapping[str, Sequence[RecommendedItem]],
    model_version: str,
    now: float,
    short: Mapping[str, str] | None = None,
    served: Mapping[str, Served] | None = None,
) -> list[OutgoingRecord]:
    """One record per user with a list, in `lists` order, triggered by the user's last event in the batch;
    `short`: why a user's list holds fewer than k items (stream_app/rules.py `short_reason`); `served`: the
    users served in an online experiment, with the model version, experiment and variant that served them."""
    generated_at = int(now * 1000)
    short, served = short or {}, served or {}
    records = []
    for user, items in lists.items():
        by = served.get(user)
        recommendation = Recommendation(
            user,
            items,
            by.model_version if by else model_version,
            generated_at,
            touched[user].events[-1].event_id,
            short.get(user),
            experiment=by.experiment if by else None,
            variant=by.variant if by else None,
        )
        records.append(OutgoingRecord(user, user.encode(), recommendation.encode()))
    return records


def profile_trigger(partition: int, offset: int) -> str:
    """The `trigger_event_id` of the record answering a `profiles` record: where that record was read, so
    that a redelivered profile is answered with the same id, as a redelivered event is."""
    return f"profile@{partition}:{offset}"


def next_offsets(positions: Iterable[tuple[int, int]]) -> dict[int, int]:
    """(partition, offset) of processed records -> partition: the offset after the last one."""
    return {partition: offset + 1 for partition, offset in positions}


# -- failures after parsing, progress ----------------------------------------------------------------

# What a record alone in a Kafka record batch (format v2) takes beyond its key and value: the batch
# header (61 bytes) and the record's framing (attributes, varint deltas and lengths, no headers), at most.
RECORD_OVERHEAD_BYTES = 80


def score_one_by_one(
    recommend: Callable[..., list[list[RecommendedItem]]],
    windows: Mapping[str, UserWindow],
    interests: Mapping[str, str] | None = None,
) -> tuple[dict[str, list[RecommendedItem]], dict[str, str]]:
    """Score each user's window on its own (after scoring them together raised), so that a window the
    model cannot score costs only its user's list; with `interests` (user -> stated interest), each
    user's goes with their window. -> (lists, failed: user -> reason)."""
    lists: dict[str, list[RecommendedItem]] = {}
    failed: dict[str, str] = {}
    for user, window in windows.items():
        try:
            (lists[user],) = recommend([window]) if interests is None else recommend([window], [interests.get(user)])
        except Exception as e:
            failed[user] = f"scoring failed: {e!r}"
    return lists, failed


def oversized(records: Iterable[OutgoingRecord], limit: int, topic: str) -> dict[str, str]:
    """The users whose record is over `limit` bytes (in its record batch) -> reason. Such a record is not
    sent: the broker would refuse the whole producer batch it is in."""
    failed: dict[str, str] = {}
    for record in records:
        size = len(record.key) + len(record.value) + RECORD_OVERHEAD_BYTES
        if size > limit:
            failed[record.user_id] = f"record too large: {size} bytes, {topic} takes at most {limit}"
    return failed


def events_waiting(first: Mapping[int, int], end: Mapping[int, int], processed: Mapping[int, int]) -> int:
    """Events not processed yet in the partitions of `end` (partition -> end offset): from the offset after
    the last processed one, or the first still in the log, to the end."""
    return sum(max(0, offset - max(first.get(p, 0), processed.get(p, 0))) for p, offset in end.items())


def stalled_for(now: float, last_batch_at: float, waiting_since: float | None, timeout_s: float) -> float | None:
    """Seconds that events have waited with no micro-batch completed, once that is `timeout_s` or more; else
    None. Counted from the later of the last batch and the moment events started waiting: an idle worker is
    not stalled when an event arrives."""
    if waiting_since is None:
        return None
    stalled = now - max(last_batch_at, waiting_since)
    return stalled if stalled >= timeout_s else None


# -- catalog -------------------------------------------------------------------------------


class CatalogChanges(NamedTuple):
    upserts: dict[str, Item]  # items whose last record in the batch adds them (apply after the removals)
    removals: list[str]  # item ids removed, in record order (one added again later is in `upserts` too)
    rejects: list[Reject]
    upsert_records: dict[str, int]  # item id in `upserts` -> index of the record that adds it (for a dead letter)


def catalog_changes(records: Iterable[tuple[bytes | None, bytes | None]], *, max_bytes: int) -> CatalogChanges:
    """A batch of `items` (key, value) records -> removals, then upserts, and the invalid records."""
    upserts: dict[str, Item] = {}
    removals: list[str] = []
    rejects: list[Reject] = []
    upsert_records: dict[str, int] = {}
    for index, (key, value) in enumerate(records):
        try:
            change = item_change(key, value, max_bytes=max_bytes)
        except InvalidRecord as e:
            rejects.append((index, e.reason))
            continue
        if change.live:
            upserts[change.item_id] = change.item
            upsert_records[change.item_id] = index
        else:
            upserts.pop(change.item_id, None)
            removals.append(change.item_id)
    return CatalogChanges(upserts, removals, rejects, upsert_records)


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
