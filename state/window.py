"""A user's rolling behaviour window: the last N events, no older than a max age, and the items
they interacted with beyond it (`seen_items`, for the repeat policy of stream_app/rules.py).

Stored per user in a Faust table (RocksDB, changelog-backed). Columnar JSON keeps it compact and
pickle-free: one list per field instead of one object per event. A plain frozen dataclass with its
own table codec (`user_window`), not a Faust record: the worker reads, advances and writes a window
per touched user per micro-batch, and a Faust record's field machinery cost several times the JSON
itself. The bytes are the ones the Faust record wrote (same keys, same order), so stores and
changelogs written before read the same.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Iterable, Mapping, NamedTuple

from faust.serializers import codecs

CODEC = "user_window"  # the windows table's value serializer


class WindowEvent(NamedTuple):
    event_id: str
    item_id: str
    event_type: str
    ts: float  # epoch seconds


@dataclass(frozen=True, slots=True)
class UserWindow:
    event_ids: list[str] = field(default_factory=list)
    item_ids: list[str] = field(default_factory=list)
    event_types: list[str] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    recommended: list[str] = field(default_factory=list)  # the last top-k this user was shown (online hit rate)
    # Every item interacted with, least recently first, up to `worker.seen_items_max`, and the strongest
    # (heaviest in `event_weights`) event type on it. Part of the window's record: one table write per batch,
    # not two; windows stored before these fields existed load with them empty.
    seen_items: list[str] = field(default_factory=list)
    seen_types: list[str] = field(default_factory=list)
    # In an online experiment, the variant that contributed each item of `recommended` (else empty).
    shown_variants: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.event_ids)

    def events(self) -> list[WindowEvent]:
        return [WindowEvent(*row) for row in zip(self.event_ids, self.item_ids, self.event_types, self.ts)]

    def with_events(self, new: Iterable[WindowEvent], max_len: int, max_age_s: float) -> UserWindow:
        """The window after `new` arrives: deduplicated by event_id, time-ordered,
        trimmed to the newest `max_len` events within `max_age_s` of the newest one."""
        seen = set(self.event_ids)
        merged = self.events()
        for event in new:
            if event.event_id not in seen:
                seen.add(event.event_id)
                merged.append(event)
        merged.sort(key=lambda e: e.ts)  # stable: equal timestamps keep arrival order
        if merged:
            oldest_allowed = merged[-1].ts - max_age_s
            merged = [e for e in merged if e.ts >= oldest_allowed]
        merged = merged[-max_len:]
        columns = [list(c) for c in zip(*merged)] if merged else [[], [], [], []]
        return UserWindow(*columns, self.recommended, self.seen_items, self.seen_types, self.shown_variants)

    def with_seen(self, new: Iterable[WindowEvent], max_items: int, weights: Mapping[str, float]) -> UserWindow:
        """The seen items after `new`: each event's item moves to the newest end, keeping the heavier of its
        event types; beyond `max_items` the least recently touched are dropped (0 keeps none)."""
        if max_items <= 0:
            return self.derive(seen_items=[], seen_types=[])
        # Lists scanned in C, not a dict built per call: a batch brings a user a few events, and hashing the
        # ids of a window just read from RocksDB cost 4x more.
        items, types = list(self.seen_items), list(self.seen_types)
        for event in new:
            kind = event.event_type
            try:
                at = items.index(event.item_id)
            except ValueError:
                pass
            else:
                del items[at]
                before = types.pop(at)
                if weights.get(before, 1.0) > weights.get(kind, 1.0):
                    kind = before
            items.append(event.item_id)
            types.append(kind)
        return self.derive(seen_items=items[-max_items:], seen_types=types[-max_items:])

    def derive(self, **changes) -> UserWindow:
        return dataclasses.replace(self, **changes)

    def asdict(self) -> dict[str, list]:
        return {
            "event_ids": self.event_ids,
            "item_ids": self.item_ids,
            "event_types": self.event_types,
            "ts": self.ts,
            "recommended": self.recommended,
            "seen_items": self.seen_items,
            "seen_types": self.seen_types,
            "shown_variants": self.shown_variants,
        }

    def encode(self) -> bytes:
        return json.dumps(self.asdict(), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> UserWindow:
        columns = json.loads(raw)
        return cls(*(columns.get(name, []) for name in FIELDS))


FIELDS = tuple(f.name for f in dataclasses.fields(UserWindow))


class UserWindowCodec(codecs.Codec):
    """The windows table's value codec: UserWindow <-> its JSON."""

    def _dumps(self, window: UserWindow) -> bytes:
        return window.encode()

    def _loads(self, raw: bytes) -> UserWindow:
        return UserWindow.decode(raw)


codecs.register(CODEC, UserWindowCodec())
