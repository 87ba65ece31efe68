"""Wire contracts (docs/topics.md): pydantic validation of what producers send,
Faust records for what the worker publishes, and the JSON Schema of every topic's value
(docs/schemas/, written by `python -m core.contracts --write-schemas docs/schemas`).

The one contract for events and items: the worker (`parse_event`, `parse_item`), the retrain
job's event log (the same), and every reader of files — datasets for training, `replay` and
`predict` (`event_from_record`, `item_from_record`) — read a record with the same models and
the same time rule (`epoch_seconds`: numbers are epoch milliseconds, an ISO-8601 string without
a zone is UTC). tests/unit/test_one_contract.py feeds one set of raw records to every path."""

from __future__ import annotations

import argparse
import functools
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Dict, List, Literal, Mapping, NamedTuple, Optional

import faust
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from core.errors import InvalidRecord  # defined in core.errors; importable from here as before
from core.io import atomic_write_text

_ID = Field(min_length=1, max_length=256)
MAX_JSON_DEPTH = 64  # nesting levels of arrays/objects in a record (the value object itself is level 1)


def epoch_seconds(ts: int | float | str) -> float:
    """`ts` as epoch milliseconds or an ISO-8601 string -> epoch seconds. The one rule for event
    time on every path; an ISO string without a zone (naive) is UTC, never local time."""
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


_TS_SCHEMA = {
    "anyOf": [
        {"type": "number", "minimum": 0, "description": "epoch milliseconds"},
        {"type": "string", "description": "ISO-8601, e.g. 1997-12-04T15:55:49Z; without a zone it is UTC"},
    ],
    "description": "event time: epoch milliseconds or an ISO-8601 string; not before 1970, not more than "
    "STREAMREC_WORKER__MAX_FUTURE_SKEW_S in the future",
}


class Event(BaseModel):
    """An `events` value (key: user_id): one user action on one item. Extra fields are accepted
    and ignored; `event_type` must be one of STREAMREC_WORKER__EVENT_WEIGHTS' types."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True, title="Event")

    event_id: str = _ID
    user_id: str = _ID
    item_id: str = _ID
    event_type: str = _ID
    ts: Annotated[float, WithJsonSchema(_TS_SCHEMA)]  # epoch seconds after validation

    @field_validator("ts", mode="before")
    @classmethod
    def _ts(cls, value: Any) -> float:
        if not isinstance(value, (int, float, str)):
            raise ValueError("ts must be epoch milliseconds or an ISO-8601 string")
        return epoch_seconds(value)


class Item(BaseModel):
    """An `items` value (key: item_id; compacted). A null value (tombstone) or `available: false`
    removes the item from the candidates. Extra fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True, title="Item")

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
def parse_event(raw: bytes | None, *, max_bytes: int, event_types: set[str], max_future_skew_s: float) -> Event:
    event: Event = _validate(Event, _decode(raw, max_bytes))
    if event.event_type not in event_types:
        raise InvalidRecord(f"unknown event_type {event.event_type!r}; expected one of {sorted(event_types)}")
    if event.ts > time.time() + max_future_skew_s:
        raise InvalidRecord(f"ts {event.ts:.0f} is more than {max_future_skew_s:.0f}s in the future")
    return event


@_never_raises_anything_else
def parse_item(raw: bytes | None, *, max_bytes: int) -> Item:
    return _validate(Item, _decode(raw, max_bytes))


class ItemChange(NamedTuple):
    item_id: str
    item: Item | None  # the record as parsed; None for a tombstone
    live: bool  # False: the item leaves the catalog


def item_change(key: bytes | None, value: bytes | None, *, max_bytes: int) -> ItemChange:
    """What one `items` record does to the catalog: a tombstone (no value; the key names the item) or
    `available: false` removes the item; any other valid record adds or replaces it. Raises
    InvalidRecord (reason for the dead-letter topic)."""
    item = parse_item(value, max_bytes=max_bytes) if value else None
    if item is not None and item.available:
        return ItemChange(item.item_id, item, True)
    return ItemChange(item.item_id if item else (key or b"").decode("utf-8", "replace"), item, False)


# --- records read from files (datasets, the retrain job's work dir, `predict` input) -------------


def _file_id(value: Any) -> Any:
    """Files often number their ids (ml-100k does): an integer id is read as its decimal string."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


@_never_raises_anything_else
def event_from_record(record: Mapping[str, Any]) -> Event:
    """An event read from a file (a JSON object already decoded) under the `events` contract: the
    same model and time rule as `parse_event`. Two conveniences for files, no more: integer ids are
    read as strings, and `event_id` may be absent (it becomes user:item:ts). Neither the event type
    nor the future-skew limit is checked: training data may hold other types and any past."""
    if not isinstance(record, Mapping):
        raise InvalidRecord(f"expected a JSON object, got {type(record).__name__}")
    value = {**record, **{k: _file_id(record[k]) for k in ("event_id", "user_id", "item_id") if k in record}}
    if value.get("event_id") is None:
        value["event_id"] = f"{value.get('user_id')}:{value.get('item_id')}:{value.get('ts')}"
    return _validate(Event, value)


@_never_raises_anything_else
def item_from_record(record: Mapping[str, Any]) -> Item:
    """A catalog record read from a file under the `items` contract (the model of `parse_item`).
    Conveniences for files: an integer item_id is read as a string, and a record without a title
    is titled by its item_id (the text the trainer has always used for it, so a replayed record
    gets the same vector on the worker)."""
    if not isinstance(record, Mapping):
        raise InvalidRecord(f"expected a JSON object, got {type(record).__name__}")
    value = dict(record)
    if "item_id" in value:
        value["item_id"] = _file_id(value["item_id"])
        if not value.get("title"):
            value["title"] = value["item_id"]
    return _validate(Item, value)


FORGET_USER = "forget_user"


class Control(BaseModel):
    """A `streamrec-control` value (key: the user_id): an operator's request about one user (only
    `forget_user` so far). Extra fields (a ticket reference) are accepted and ignored."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True, title="Control")

    action: str = _ID
    user_id: str = _ID
    requested_at: int = Field(ge=0)  # epoch milliseconds


def forget_request(user_id: str, requested_at_ms: int | None = None) -> dict:
    """The `control` value that asks the worker to forget `user_id` (key: the user id)."""
    return {
        "action": FORGET_USER,
        "user_id": user_id,
        "requested_at": int(time.time() * 1000) if requested_at_ms is None else requested_at_ms,
    }


@_never_raises_anything_else
def parse_control(key: bytes | None, raw: bytes | None, *, max_bytes: int) -> Control:
    """A valid control record whose key is its user id (the key picks the partition, and so the worker
    and the store holding that user's window)."""
    record: Control = _validate(Control, _decode(raw, max_bytes))
    if record.action != FORGET_USER:
        raise InvalidRecord(f"unknown action {_abbreviated(record.action)}; expected {FORGET_USER!r}")
    if key != record.user_id.encode("utf-8"):
        raise InvalidRecord(
            f"key {_abbreviated(key)} is not the user_id {_abbreviated(record.user_id)}: "
            f"the key must be the user id (it picks the user's partition)"
        )
    return record


MAX_INTEREST_CHARS = 500  # the item tower reads only its first max_tokens (32) tokens of it anyway


class Profile(BaseModel):
    """A `profiles` value (key: the user_id; compacted; a null value removes the profile): what a user
    says they like, in words. The worker embeds it with the item tower and recommends from it until
    the user's own events take over (docs/topics.md). Extra fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True, title="Profile")

    user_id: str = _ID
    interest: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_INTEREST_CHARS),
        Field(description="free text, e.g. 'I love horror movies'; leading and trailing whitespace is stripped first"),
    ]


class ProfileChange(NamedTuple):
    user_id: str
    interest: str | None  # None: the profile is removed (a tombstone)


def interest_query(user_id: str, interest: str) -> str:
    """`interest` as the contract takes it (stripped), or InvalidRecord with the reason: the same rule for
    an ad-hoc `?interest=` as for a `profiles` record."""
    return _validate(Profile, {"user_id": user_id, "interest": interest}).interest


@_never_raises_anything_else
def profile_change(key: bytes | None, raw: bytes | None, *, max_bytes: int) -> ProfileChange:
    """What one `profiles` record does: a tombstone (no value; the key names the user) removes the user's
    profile, a valid record sets it. Its key must be the user id (it picks the partition, and so the
    worker and the store holding the user's window), as on `streamrec-control`."""
    if raw is None:
        if not key:
            raise InvalidRecord("a tombstone without a key: the key must be the user id")
        try:
            return ProfileChange(key.decode("utf-8"), None)
        except UnicodeDecodeError as e:
            raise InvalidRecord(f"tombstone key not UTF-8: {e}") from None
    record: Profile = _validate(Profile, _decode(raw, max_bytes))
    if key != record.user_id.encode("utf-8"):
        raise InvalidRecord(
            f"key {_abbreviated(key)} is not the user_id {_abbreviated(record.user_id)}: "
            f"the key must be the user id (it picks the user's partition)"
        )
    return ProfileChange(record.user_id, record.interest)


class RecommendedItem(NamedTuple):
    """One item of a list, best first. A plain tuple, not a Faust record: the worker builds `top_k` of
    them per user per micro-batch, and a Faust record costs ~10 µs each to build."""

    item_id: str
    score: float
    because: Optional[str] = None  # the history item that most supports this one
    p_click: Optional[float] = None  # the ranking stage's heads, when it ran (score is then their blend)
    p_purchase: Optional[float] = None
    variant: Optional[str] = None  # in an experiment, the variant that contributed the item (else None)

    def asdict(self) -> dict[str, Any]:
        return self._asdict()


class Recommendation(NamedTuple):
    """A `recommendations` value (RecommendationSchema below). Encoded once, by `encode`, to the bytes
    that are both sent and measured against the topic's record limit."""

    user_id: str
    items: List[RecommendedItem]
    model_version: str
    generated_at: int  # epoch milliseconds
    trigger_event_id: str
    short: Optional[str] = None  # null: the list holds top_k items; else why it holds fewer
    experiment: Optional[str] = None  # the experiment the user's list was served in (docs/operations.md)
    variant: Optional[str] = None  # its variant ("control", "treatment"; "interleaved" in interleave mode)

    def asdict(self) -> dict[str, Any]:
        return {**self._asdict(), "items": [item._asdict() for item in self.items]}

    def encode(self) -> bytes:
        return json.dumps(self.asdict(), separators=(",", ":")).encode()


class VariantVersion(BaseModel):
    version: str = Field(description="a registry version")
    sha256: str = Field(description="sha256 of its manifest.json, as for a model update")


class ExperimentRecord(BaseModel):
    """An `experiments` value (key: the experiment's name): an online experiment starts or stops. Every
    worker reads the whole topic; the newest record is the one in force (docs/operations.md)."""

    model_config = ConfigDict(title="Experiment", extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    state: Literal["running", "stopped"]
    mode: Literal["ab", "interleave"] = Field(
        description="ab: each user is served by one variant; interleave: each list merges both by team draft"
    )
    variants: Dict[Literal["control", "treatment"], VariantVersion]
    treatment_share: float = Field(ge=0.0, le=1.0, description="ab: the share of users served by treatment")
    promote: Optional[Literal["control", "treatment"]] = Field(
        default=None, description="stopped: the variant whose version became production"
    )
    at: str = Field(description="ISO-8601, when it was announced")

    def encode(self) -> bytes:
        return self.model_dump_json().encode()


def parse_experiment(raw: bytes | None) -> ExperimentRecord:
    """An `experiments` record, or InvalidRecord saying why not."""
    if raw is None:
        raise InvalidRecord("an experiments record without a value")
    return _validate(ExperimentRecord, _decode(raw, len(raw)))


class ModelUpdate(faust.Record, serializer="json", include_metadata=False):
    version: str
    path: str
    sha256: str
    created_at: str
    metrics: dict


# --- JSON Schemas (docs/schemas/) -------------------------------------------------------------
# The worker publishes Faust records (above); these pydantic twins describe the same JSON for the
# schema files (tests/unit/test_schemas.py checks they name the same fields).


class RecommendedItemSchema(BaseModel):
    model_config = ConfigDict(title="RecommendedItem")

    item_id: str
    score: float
    because: Optional[str] = Field(
        default=None, description="the window item most similar to this one; null for trending items"
    )
    p_click: Optional[float] = Field(
        default=None,
        description="the ranking stage's P(click or purchase), when it ran (then `score` is the blend of the "
        "heads, STREAMREC_WORKER__RANKER_CLICK_WEIGHT / _PURCHASE_WEIGHT); null in the retrieval order",
    )
    p_purchase: Optional[float] = Field(
        default=None, description="the ranking stage's P(purchase), when it ran; null in the retrieval order"
    )
    variant: Optional[str] = Field(
        default=None, description="in an experiment, the variant that contributed this item; else null"
    )


class RecommendationSchema(BaseModel):
    """A `recommendations` value (key: user_id; compacted; a null value is a forgotten user): the
    top STREAMREC_WORKER__TOP_K items for one user touched by a micro-batch, best first."""

    model_config = ConfigDict(title="Recommendation")

    user_id: str
    items: List[RecommendedItemSchema]
    model_version: str = Field(description="the registry version that produced the list")
    generated_at: int = Field(description="epoch milliseconds")
    trigger_event_id: str = Field(description="the user's latest event in the micro-batch")
    short: Optional[str] = Field(
        default=None,
        description="null when `items` holds STREAMREC_WORKER__TOP_K items; else why it holds fewer: too few "
        "live items pass the business rules (seen items, categories, the cap per category), which it names",
    )
    experiment: Optional[str] = Field(default=None, description="the online experiment it was served in; else null")
    variant: Optional[str] = Field(
        default=None,
        description="the experiment's variant that served it: control or treatment (ab), interleaved (interleave)",
    )


class ModelUpdateSchema(BaseModel):
    """A `model-updates` value (key: version): a registered model version for every worker to serve."""

    model_config = ConfigDict(title="ModelUpdate")

    version: str
    path: str = Field(description="the version's directory, relative to the registry root")
    sha256: str = Field(description="sha256 of the version's manifest.json, which pins every file")
    created_at: str = Field(description="ISO-8601")
    metrics: dict = Field(description="the version's metrics.json")


class DeadLetterHeaders(BaseModel):
    """Headers of an `events-dlq` record (UTF-8 strings). Its key and value are the rejected
    record's, byte for byte: the value has no schema of its own."""

    model_config = ConfigDict(title="DeadLetterHeaders", populate_by_name=True)

    reason: str = Field(alias="dlq.reason", description="why the record broke the contract")
    topic: str = Field(alias="dlq.topic", description="the topic it was read from")
    partition: str = Field(alias="dlq.partition", description="its partition (decimal)")
    offset: str = Field(alias="dlq.offset", description="its offset (decimal)")


# File name (the default topic name) -> the model of that topic's value.
TOPIC_SCHEMAS: dict[str, type[BaseModel]] = {
    "events": Event,
    "items": Item,
    "recommendations": RecommendationSchema,
    "model-updates": ModelUpdateSchema,
    "experiments": ExperimentRecord,
    "streamrec-control": Control,
    "profiles": Profile,
    "events-dlq.headers": DeadLetterHeaders,
}
SCHEMA_COMMAND = "python -m core.contracts --write-schemas docs/schemas"


def _one_line_descriptions(node: Any) -> Any:
    """Docstrings become descriptions with their line breaks; a schema reads better without."""
    if isinstance(node, dict):
        return {
            k: " ".join(v.split()) if k == "description" and isinstance(v, str) else _one_line_descriptions(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_one_line_descriptions(v) for v in node]
    return node


def schema_files() -> dict[str, str]:
    """{file name: JSON text} of every topic's JSON Schema, as docs/schemas/ holds them."""
    files = {}
    for name, model in TOPIC_SCHEMAS.items():
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            **_one_line_descriptions(model.model_json_schema(by_alias=True, mode="validation")),
        }
        files[f"{name}.json"] = json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
    return files


def write_schemas(directory: str | Path) -> list[Path]:
    """Write `schema_files()` into `directory`; returns the paths written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return [atomic_write_text(directory / name, text) for name, text in schema_files().items()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m core.contracts", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--write-schemas",
        metavar="DIR",
        required=True,
        type=Path,
        help="write every topic's JSON Schema into DIR (docs/schemas)",
    )
    args = parser.parse_args(argv)
    for path in write_schemas(args.write_schemas):
        print(path)


if __name__ == "__main__":
    main()
