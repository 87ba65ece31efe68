"""Model inputs built from a user's window, in NumPy only.

Shared by the trainer (encoders/) and the worker (stream_app/), so both feed the
user tower exactly the same arrays. Sequences are LEFT-padded: the most recent
event is always at position T-1, which is where the user vector is read.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cached_property
from itertools import repeat
from typing import Any, Mapping, Sequence

import numpy as np

from core.errors import ConfigError

PAD = 0  # id 0 is padding for event types and time buckets alike


@dataclass(frozen=True)
class FeatureSpec:
    """How windows become tensors; saved in every model's config.json."""

    event_types: tuple[str, ...] = ("view", "click", "purchase")  # id = index + 1; unknown types map to "other"
    n_time_buckets: int = 16  # recency buckets incl. padding (0) and "other" overflow
    max_len: int = 50  # window length the user tower sees

    @property
    def n_event_ids(self) -> int:
        return len(self.event_types) + 2  # + padding + "other"

    def event_type_id(self, event_type: str) -> int:
        return self._type_ids.get(event_type, len(self.event_types) + 1)

    def event_type_ids(self, event_types: Sequence[str]) -> np.ndarray:
        """`event_type_id` of each -> [T] int64."""
        other = repeat(len(self.event_types) + 1)
        return np.fromiter(map(self._type_ids.get, event_types, other), np.int64, len(event_types))

    @cached_property
    def _type_ids(self) -> dict[str, int]:
        return {t: i + 1 for i, t in enumerate(self.event_types)}

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (a model version's config.json `feature_spec`, a checkpoint's `features`)."""
        return {"event_types": list(self.event_types), "n_time_buckets": self.n_time_buckets, "max_len": self.max_len}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> FeatureSpec:
        """`to_dict`'s output back. A missing key takes its default (configs written before the field
        existed); an unknown key or a wrong type is a ConfigError: a model fed other inputs than it
        was trained on would serve nonsense."""
        data = dict(data or {})
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(
                f"feature spec has unknown fields {unknown}: it was written by a newer streamrec; "
                f"upgrade, or re-export the model with this one"
            )
        default = cls()
        try:
            event_types = data.get("event_types", default.event_types)
            if isinstance(event_types, str) or not all(isinstance(t, str) for t in event_types):
                raise TypeError(f"event_types must be a list of strings, got {event_types!r}")
            spec = cls(
                event_types=tuple(event_types),
                n_time_buckets=_whole(data.get("n_time_buckets", default.n_time_buckets), "n_time_buckets"),
                max_len=_whole(data.get("max_len", default.max_len), "max_len"),
            )
        except TypeError as e:
            raise ConfigError(f"feature spec {data!r} is invalid: {e}") from None
        return spec


def _whole(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
        raise TypeError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def recency_buckets(ts_seconds: np.ndarray, mask: np.ndarray, n_buckets: int) -> np.ndarray:
    """Bucket each event's age relative to the window's newest event.

    ts_seconds: [B, T] float, mask: [B, T] bool (True = real event).
    Returns [B, T] int64 in 1..n_buckets-1 for real events, 0 for padding.
    Bucket 1 is "same minute as the newest event"; each further bucket doubles
    the age (log2 of minutes), so hours, days and months stay distinguishable.
    """
    newest = np.max(np.where(mask, ts_seconds, -np.inf), axis=1, keepdims=True)  # [B, 1]
    age_minutes = np.clip((newest - ts_seconds) / 60.0, 0.0, None)
    buckets = 1 + np.floor(np.log2(1.0 + age_minutes)).astype(np.int64)
    buckets = np.minimum(buckets, n_buckets - 1)
    return np.where(mask, buckets, PAD).astype(np.int64)


def left_pad(rows: list[np.ndarray], length: int, fill: float | int = 0) -> np.ndarray:
    """Stack 1-D arrays into [B, length], keeping each row's LAST `length` items, right-aligned."""
    dtype = rows[0].dtype if rows else np.int64
    out = np.full((len(rows), length), fill, dtype=dtype)
    for i, row in enumerate(rows):
        tail = row[-length:]
        if len(tail):
            out[i, length - len(tail) :] = tail
    return out


def item_text(title: str, description: str | None = None, categories: list[str] | None = None) -> str:
    """The text the item tower reads for one catalog record (trainer and worker alike)."""
    parts = [title.strip()]
    if categories:
        parts.append(", ".join(c.strip() for c in categories if c.strip()))
    if description:
        parts.append(description.strip())
    return ". ".join(p for p in parts if p)
