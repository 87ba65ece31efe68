"""Wire contracts (docs/topics.md): pydantic validation of what producers send,
Faust records for what the worker publishes."""

from __future__ import annotations

import functools
import json
import time
from datetime import datetime, timezone
from typing import Any, List, Optional

import faust
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import StreamrecError

_ID = Field(min_length=1, max_length=256)
MAX_JSON_DEPTH = 64  # nesting levels of arrays/objects in a record (the value object itself is level 1)


class InvalidRecord(StreamrecError):
    """A record that breaks the contract; `reason` goes to the dead-letter topic."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def epoch_seconds(ts: int | float | str) -> float:
    """`ts` as epoch milliseconds or an ISO-8601 string -> epoch seconds."""
    if isinstance(ts, bool):
        raise ValueError("ts must be epoch milliseconds or an ISO-8601 string, not a boolean")
    if isinstance(ts, (int, float)):
        try:
            seconds = float(ts) / 1000.0
        except OverflowError:  # an integer beyond float range (JSON allows any number of digits)
            raise ValueError(f"ts {_abbreviated(ts)} is out of range") from None
    else:
        parsed = datetime.fromisoformat(ts)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        seconds = parsed.timestamp()
    if not (seconds >= 0.0):  # also rejects NaN
        raise ValueError(f"ts {ts!r} is before 1970")
    return seconds


def _abbreviated(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


class Event(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

    event_id: str = _ID
    user_id: str = _ID
    item_id: str = _ID
    event_type: str = _ID
    ts: float  # epoch seconds after validation

    @field_validator("ts", mode="before")
    @classmethod
    def _ts(cls, value: Any) -> float:
        if not isinstance(value, (int, float, str)):
            raise ValueError("ts must be epoch milliseconds or an ISO-8601 string")
        return epoch_seconds(value)


class Item(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

    item_id: str = _ID
    title: str = Field(min_length=1, max_length=1_000)
    description: Optional[str] = Field(default=None, max_length=5_000)
    categories: Optional[List[str]] = None
    available: bool = True


def _decode(raw: bytes | None, max_bytes: int) -> dict:
    if raw is None:
        raise InvalidRecord("empty value")
    if len(raw) > max_bytes:
        raise InvalidRecord(f"record of {len(raw)} bytes exceeds the limit of {max_bytes}")
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise InvalidRecord(f"not UTF-8: {e}") from None
    except RecursionError:
        raise InvalidRecord(f"JSON nested too deeply (more than {MAX_JSON_DEPTH} levels)") from None
    except ValueError as e:  # JSONDecodeError, and integers over Python's digit limit
        raise InvalidRecord(f"not JSON: {e}") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise InvalidRecord(f"JSON nested too deeply (more than {MAX_JSON_DEPTH} levels)")
    if not isinstance(value, dict):
        raise InvalidRecord(f"expected a JSON object, got {type(value).__name__}")
    return value


def _depth(value: object) -> int:
    """Nesting levels of arrays and objects, without recursion (how deep json.loads went depends on the
    interpreter's recursion limit; the contract should not)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _validate(model: type[BaseModel], value: dict) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}" for err in e.errors())
        raise InvalidRecord(f"invalid {model.__name__.lower()}: {problems}") from None


def _never_raises_anything_else(parse):
    """A parser bug must dead-letter the record, not stop the worker: anything but InvalidRecord
    becomes one, with the exception in the reason."""
    @functools.wraps(parse)
    def wrapper(*args, **kwargs):
        try:
            return parse(*args, **kwargs)
        except InvalidRecord:
            raise
        except Exception as e:
            raise InvalidRecord(f"could not be parsed ({type(e).__name__}: {_abbreviated(str(e), 200)})") from e
    return wrapper


@_never_raises_anything_else
def parse_event(
    raw: bytes | None, *, max_bytes: int, event_types: set[str], max_future_skew_s: float
) -> Event:
    event: Event = _validate(Event, _decode(raw, max_bytes))
    if event.event_type not in event_types:
        raise InvalidRecord(f"unknown event_type {event.event_type!r}; expected one of {sorted(event_types)}")
    if event.ts > time.time() + max_future_skew_s:
        raise InvalidRecord(f"ts {event.ts:.0f} is more than {max_future_skew_s:.0f}s in the future")
    return event


@_never_raises_anything_else
def parse_item(raw: bytes | None, *, max_bytes: int) -> Item:
    return _validate(Item, _decode(raw, max_bytes))


FORGET_USER = "forget_user"


class Control(BaseModel):
    """A `control` record: an operator's request about one user (only `forget_user` so far)."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)  # e.g. a ticket reference

    action: str = _ID
    user_id: str = _ID
    requested_at: int = Field(ge=0)  # epoch milliseconds


def forget_request(user_id: str, requested_at_ms: int | None = None) -> dict:
    """The `control` value that asks the worker to forget `user_id` (key: the user id)."""
    return {"action": FORGET_USER, "user_id": user_id,
            "requested_at": int(time.time() * 1000) if requested_at_ms is None else requested_at_ms}


@_never_raises_anything_else
def parse_control(key: bytes | None, raw: bytes | None, *, max_bytes: int) -> Control:
    """A valid control record whose key is its user id (the key picks the partition, and so the worker
    and the store holding that user's window)."""
    record: Control = _validate(Control, _decode(raw, max_bytes))
    if record.action != FORGET_USER:
        raise InvalidRecord(f"unknown action {_abbreviated(record.action)}; expected {FORGET_USER!r}")
    if key != record.user_id.encode("utf-8"):
        raise InvalidRecord(f"key {_abbreviated(key)} is not the user_id {_abbreviated(record.user_id)}: "
                            f"the key must be the user id (it picks the user's partition)")
    return record


class RecommendedItem(faust.Record, serializer="json", include_metadata=False):
    item_id: str
    score: float
    because: Optional[str] = None  # the history item that most supports this one


class Recommendation(faust.Record, serializer="json", include_metadata=False):
    user_id: str
    items: List[RecommendedItem]
    model_version: str
    generated_at: int  # epoch milliseconds
    trigger_event_id: str


class ModelUpdate(faust.Record, serializer="json", include_metadata=False):
    version: str
    path: str
    sha256: str
    created_at: str
    metrics: dict
