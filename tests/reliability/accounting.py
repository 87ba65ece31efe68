"""Accounting for every planned event of a reliability run, on its own (used by the failure tests).

How one lost event shows (`account_for`). The worker answers a micro-batch with one record per
touched user, triggered by that user's *last* event in the batch; the user's other events of the
batch (coalesced) get no record of their own and show only in the user's window. The window keeps
the newest `window_size` events, so an event that was coalesced and later pushed out of the window
is legitimately neither a `trigger_event_id` nor in a window, and an accounting by triggers and
windows could not tell it from a lost one. So a stream is planned so that no user gets more
events than `window_size` (`account_for` refuses a plan that does not): then every processed event
must still be in its user's final window, and each planned event id is checked on its own — it
must be the `trigger_event_id` of a record for its user or be in its user's window in RocksDB.
`tests/reliability/test_crash.py` shows that the accounting reports exactly one dropped event.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from state.window import UserWindow, WindowEvent
from tests.integration.conftest import consume_until, event, run

EVENTS_PER_USER = 15  # at most the window size (50): windows hold every event of a user


@dataclass
class Accounting:
    events: int  # planned events (distinct ids)
    lost: list[str] = field(default_factory=list)  # neither a trigger for its user nor in its user's window
    duplicates: int = 0  # records beyond the first for the same trigger_event_id
    by_trigger: int = 0  # planned events answered by a record they triggered
    only_in_window: int = 0  # coalesced: no record of their own, in the window
    unplanned: list[str] = field(default_factory=list)  # trigger ids no planned event of that user has

    def summary(self) -> str:
        """The figures every failure test prints."""
        return (
            f"{len(self.lost)} lost {self.lost[:5]}, {self.duplicates} duplicates (same trigger_event_id), "
            f"{self.by_trigger} answered by their own record + {self.only_in_window} coalesced (in the window only), "
            f"{len(self.unplanned)} unplanned triggers"
        )


def account_for(
    planned: Iterable[Mapping], outputs: Iterable[Mapping], windows: Mapping[str, Iterable[str]], window_size: int
) -> Accounting:
    """Each planned event (`event_id`, `user_id`) on its own: answered by an output record of its
    user whose `trigger_event_id` is its id, or held in its user's window (`windows`: user -> event
    ids). Exact only if no user has more planned events than `window_size` (otherwise a coalesced
    event pushed out of the window is neither, without being lost): a plan that breaks this is
    refused with ValueError."""
    planned = list(planned)
    per_user: dict[str, set[str]] = {}
    for e in planned:
        per_user.setdefault(e["user_id"], set()).add(e["event_id"])
    crowded = {u: len(ids) for u, ids in per_user.items() if len(ids) > window_size}
    if crowded:
        raise ValueError(
            f"{len(crowded)} users have more planned events than the window holds ({window_size}), "
            f"e.g. {next(iter(crowded.items()))}: the accounting would not be exact"
        )
    triggers: dict[tuple[str, str], int] = {}
    for r in outputs:
        key = (r["user_id"], r["trigger_event_id"])
        triggers[key] = triggers.get(key, 0) + 1
    held = {u: set(ids) for u, ids in windows.items()}
    result = Accounting(events=sum(len(ids) for ids in per_user.values()))
    result.duplicates = sum(n - 1 for n in triggers.values())
    result.unplanned = sorted(t for (u, t) in triggers if t not in per_user.get(u, ()))
    seen: set[tuple[str, str]] = set()
    for e in planned:
        key = (e["user_id"], e["event_id"])
        if key in seen:
            continue
        seen.add(key)
        if key in triggers:
            result.by_trigger += 1
        elif e["event_id"] in held.get(e["user_id"], ()):
            result.only_in_window += 1
        else:
            result.lost.append(e["event_id"])
    return result


def simulate_worker(events: list[dict], batch_size: int, window_size: int):
    """The worker's contract without Kafka: micro-batches of `batch_size`, one record per touched
    user (triggered by its last event in the batch), windows of the last `window_size` events.
    -> (outputs, windows: user -> event ids)."""
    windows: dict[str, UserWindow] = {}
    outputs = []
    for start in range(0, len(events), batch_size):
        touched: dict[str, list[WindowEvent]] = {}
        for e in events[start : start + batch_size]:
            touched.setdefault(e["user_id"], []).append(
                WindowEvent(e["event_id"], e["item_id"], e["event_type"], e["ts"] / 1000)
            )
        for user, new in touched.items():
            windows[user] = windows.get(user, UserWindow()).with_events(new, window_size, 365 * 86_400.0)
            outputs.append({"user_id": user, "trigger_event_id": new[-1].event_id})
    return outputs, {u: w.event_ids for u, w in windows.items()}


def planned_events(n_events: int, events_per_user: int = EVENTS_PER_USER) -> list[tuple[bytes, bytes]]:
    """Users in turn (event n is user n mod U), each with `events_per_user` events."""
    n_users = math.ceil(n_events / events_per_user)
    return [
        event(n, f"user{n % n_users}", str(1 + (n * 13) % 60), ("view", "click", "purchase")[n % 3])
        for n in range(n_events)
    ]


def values(records) -> list[dict]:
    """JSON values of (key, value) pairs or consumer records."""
    return [json.loads(r[1] if isinstance(r, tuple) else r.value) for r in records]


def consume_drained(settings, planned: list[dict], timeout_s: float) -> tuple[list[dict], bool]:
    """All recommendation records once every user's last planned event has triggered one, or what
    came within `timeout_s` (then drained is False; the accounting says what is missing)."""
    last = {e["user_id"]: e["event_id"] for e in planned}
    deadline = time.monotonic() + timeout_s
    drained = False

    def done(records) -> bool:
        nonlocal drained
        triggered = {(v["user_id"], v["trigger_event_id"]) for v in values(records)}
        drained = all(item in triggered for item in last.items())
        return drained or time.monotonic() > deadline

    return values(run(consume_until(settings, settings.topics.recommendations, done, timeout_s + 30))), drained


def dead_letter_reasons(settings, event_ids: Iterable[str], wait_s: float = 5.0) -> dict[str, str]:
    """Event id -> the reason it was dead-lettered with, for those of `event_ids` in the DLQ within
    `wait_s`: what a test prints for the events it finds lost (a dead-lettered valid event is lost too)."""
    wanted = set(event_ids)
    deadline = time.monotonic() + wait_s
    records = run(consume_until(settings, settings.topics.dlq, lambda rs: time.monotonic() > deadline, wait_s + 30))
    reasons = {}
    for r in records:
        try:
            event_id = json.loads(r.value)["event_id"]
        except (ValueError, TypeError, KeyError):
            continue
        if event_id in wanted:
            reasons[event_id] = dict(r.headers).get("dlq.reason", b"").decode("utf-8", "replace")
    return reasons
