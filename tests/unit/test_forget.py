"""The forget request's contract (docs/topics.md, `control`): what the worker carries out, what it
dead-letters."""

import json

import pytest

from core.contracts import FORGET_USER, InvalidRecord, forget_request, parse_control


def parse(value, key: bytes | None = b"u1", max_bytes: int = 4096):
    raw = value if isinstance(value, bytes) or value is None else json.dumps(value).encode()
    return parse_control(key, raw, max_bytes=max_bytes)


GOOD = {"action": "forget_user", "user_id": "u1", "requested_at": 1_795_469_343_581}


def test_accepts_a_forget_request_keyed_by_its_user():
    request = parse(GOOD)
    assert (request.action, request.user_id, request.requested_at) == (FORGET_USER, "u1", 1_795_469_343_581)
    assert parse({**GOOD, "ticket": "GDPR-17"}).user_id == "u1"  # extra fields are accepted and ignored
    assert parse({**GOOD, "user_id": "é"}, key="é".encode()).user_id == "é"


def test_forget_request_builds_what_parse_control_accepts():
    value = forget_request("196", requested_at_ms=5)
    assert value == {"action": "forget_user", "user_id": "196", "requested_at": 5}
    assert parse(value, key=b"196").user_id == "196"
    assert forget_request("196")["requested_at"] > 1_700_000_000_000  # now, in epoch milliseconds


@pytest.mark.parametrize(
    "value, key, reason",
    [
        (None, b"u1", "empty value"),
        (b"\xff", b"u1", "not UTF-8"),
        (b"{nope", b"u1", "not JSON"),
        (b"[]", b"u1", "expected a JSON object"),
        ({**GOOD, "action": "delete_everything"}, b"u1", "unknown action 'delete_everything'"),
        ({k: v for k, v in GOOD.items() if k != "action"}, b"u1", "action: Field required"),
        ({k: v for k, v in GOOD.items() if k != "user_id"}, b"u1", "user_id: Field required"),
        ({k: v for k, v in GOOD.items() if k != "requested_at"}, b"u1", "requested_at: Field required"),
        ({**GOOD, "user_id": 1}, b"1", "user_id: Input should be a valid string"),
        ({**GOOD, "user_id": ""}, b"", "user_id: String should have at least 1 character"),
        ({**GOOD, "requested_at": "2026-01-01"}, b"u1", "requested_at: Input should be a valid integer"),
        ({**GOOD, "requested_at": True}, b"u1", "requested_at: Input should be a valid integer"),
        ({**GOOD, "requested_at": -1}, b"u1", "requested_at: Input should be greater than or equal to 0"),
        (GOOD, b"u2", "key b'u2' is not the user_id 'u1'"),
        (GOOD, None, "key None is not the user_id 'u1'"),
    ],
)
def test_rejects_what_the_worker_dead_letters(value, key, reason):
    with pytest.raises(InvalidRecord) as e:
        parse(value, key=key)
    assert reason in e.value.reason


def test_size_is_checked_before_parsing():
    with pytest.raises(InvalidRecord, match="exceeds the limit of 64"):
        parse({**GOOD, "padding": "x" * 100}, max_bytes=64)
