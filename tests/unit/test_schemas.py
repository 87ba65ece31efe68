import json
from pathlib import Path

import pytest

from core.contracts import (
    SCHEMA_COMMAND,
    InvalidRecord,
    ModelUpdate,
    ModelUpdateSchema,
    Recommendation,
    RecommendationSchema,
    RecommendedItem,
    RecommendedItemSchema,
    parse_event,
    parse_item,
    schema_files,
)

TYPES = {"view", "click", "purchase"}


def parse(value, **kw):
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return parse_event(raw, max_bytes=kw.get("max_bytes", 4096), event_types=TYPES, max_future_skew_s=86_400)


GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "event_type": "click", "ts": 881250949000}


def test_accepts_epoch_ms_and_iso_timestamps():
    assert parse(GOOD).ts == 881250949.0
    assert parse({**GOOD, "ts": "1997-12-04T15:55:49+00:00"}).ts == 881250949.0
    assert parse({**GOOD, "ts": "1997-12-04T15:55:49"}).ts == 881250949.0  # naive = UTC


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (json.dumps({**GOOD, "user_id": 7}).encode(), "user_id"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "item_id"}).encode(), "item_id"),
        (json.dumps({**GOOD, "event_type": "teleport"}).encode(), "unknown event_type"),
        (json.dumps({**GOOD, "ts": -5}).encode(), "before 1970"),
        (json.dumps({**GOOD, "ts": 4102444800000 * 10}).encode(), "in the future"),
        (json.dumps({**GOOD, "ts": True}).encode(), "ts"),
        (json.dumps({**GOOD, "user_id": ""}).encode(), "user_id"),
        (b"[" * 100_000 + b"]" * 100_000, "exceeds the limit"),
    ],
)
def test_rejects_with_a_reason(raw, reason):
    with pytest.raises(InvalidRecord, match=reason):
        parse(raw, max_bytes=4096)


def test_deep_nesting_under_the_size_limit_is_rejected_not_crashing():
    with pytest.raises(InvalidRecord):
        parse(b"[" * 5000 + b"]" * 5000, max_bytes=100_000)


def test_item_defaults_to_available():
    item = parse_item(b'{"item_id": "1", "title": "Toy Story (1995)"}', max_bytes=4096)
    assert item.available and item.categories is None


# --- the JSON Schema files (docs/schemas/) ----------------------------------------------------------

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def test_committed_schema_files_are_what_the_models_generate():
    expected = schema_files()
    committed = {p.name: p.read_text(encoding="utf-8") for p in SCHEMAS.glob("*.json")}
    stale = sorted(name for name in expected.keys() | committed.keys() if expected.get(name) != committed.get(name))
    assert not stale, f"docs/schemas/ is out of date ({', '.join(stale)}): run `{SCHEMA_COMMAND}` and commit the result"


@pytest.mark.parametrize(
    "record, twin",
    [
        (Recommendation, RecommendationSchema),
        (RecommendedItem, RecommendedItemSchema),
        (ModelUpdate, ModelUpdateSchema),
    ],
)
def test_schema_twins_describe_the_records_the_worker_publishes(record, twin):
    fields = record._fields if issubclass(record, tuple) else record._options.fields  # a NamedTuple or a Faust record
    assert list(twin.model_fields) == list(fields)


def test_a_published_recommendation_matches_its_schema_model():
    published = Recommendation(
        user_id="u",
        items=[RecommendedItem(item_id="a", score=0.5)],
        model_version="v1",
        generated_at=1_795_469_343_581,
        trigger_event_id="e1",
    )
    assert RecommendationSchema.model_validate_json(published.encode()).model_dump() == json.loads(published.encode())
