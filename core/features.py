"""Model inputs built from a user's window, in NumPy only.

Shared by the trainer (encoders/) and the worker (stream_app/), so both feed the
user tower exactly the same arrays. Sequences are LEFT-padded: the most recent
event is always at position T-1, which is where the user vector is read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
        try:
            return self.event_types.index(event_type) + 1
        except ValueError:
            return len(self.event_types) + 1


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
            out[i, length - len(tail):] = tail
    return out


def item_text(title: str, description: str | None = None, categories: list[str] | None = None) -> str:
    """The text the item tower reads for one catalog record (trainer and worker alike)."""
    parts = [title.strip()]
    if categories:
        parts.append(", ".join(c.strip() for c in categories if c.strip()))
    if description:
        parts.append(description.strip())
    return ". ".join(p for p in parts if p)
