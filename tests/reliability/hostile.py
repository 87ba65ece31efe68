"""Hypothesis strategies for `events` records: good ones and every kind of malformed or hostile one.

Each strategy draws a `Draft`; `Draft.render(n)` turns it into the bytes to produce (as record
number `n` of the run) plus what the worker must do with them — an oracle written from the
contract in docs/topics.md, not from the parser:

- `expect is None`: a good event. The worker must fold it into the user's window and answer it.
- `expect` a regex: the record must go to the DLQ with a `dlq.reason` header matching it.

Whatever the kind, a value over `max_record_bytes` must be dead-lettered as too big: the size is
checked before anything else (`render` applies that rule last).

Good events get a unique `event_id` (their record number is part of it) unless they are drawn
as a deliberate duplicate of an earlier good event (`Resend`: the same bytes again, as an
at-least-once producer would; `Conflict`: the same `event_id` and `ts` with another item).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from hypothesis import strategies as st

from core.contracts import MAX_JSON_DEPTH

TYPES = ("view", "click", "purchase")
FIELDS = ("event_id", "user_id", "item_id", "event_type", "ts")
ID_FIELDS = FIELDS[:4]
MAX_ID = 256

# Unicode oddities that are valid text: zero-width, bidi controls, BOM, NUL, combining marks,
# astral characters, noncharacters, other scripts, JSON-special characters.
ODD = [
    "\u200b",
    "\u200c",
    "\u200d",
    "\u200e",
    "\u200f",
    "\u202a",
    "\u202e",
    "\u2066",
    "\u2069",
    "\ufeff",
    "\x00",
    "\x07",
    "\x1b",
    "\x7f",
    "\u0301",
    "\u0308",
    "\U0001f600",
    "\U0001f468\u200d\U0001f469",
    "\ufffd",
    "\uffff",
    "\U0010ffff",
    "\u0627",
    "\u05e9",
    "\u4e2d",
    "\n",
    "\r",
    "\t",
    '"',
    "\\",
    "/",
    " ",
]
# Byte sequences that are never valid UTF-8 when followed by ASCII (or nothing).
INVALID_UTF8 = [
    b"\xff",
    b"\xfe",
    b"\x80",
    b"\xbf",
    b"\xc0\xaf",
    b"\xc1\xbf",
    b"\xe0\x80\xaf",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xf4\x90\x80\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\xc3",
    b"\xe2\x82",
    b"\xf0\x9f\x98",
]
LATIN1 = "\u00e9\u00fc\u00f1\u00df\u00f8\u00c6\u00bf\u00a0\u00ff"  # one byte >= 0x80 in latin-1 / cp1252

odd_text = st.lists(
    st.one_of(st.sampled_from(ODD), st.characters(exclude_categories=("Cs",))), min_size=1, max_size=24
).map("".join)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


@dataclass(frozen=True)
class Sent:
    """One record as produced, and what must become of it."""

    n: int  # position in the events topic (one partition: also its offset)
    kind: str
    key: bytes | None
    value: bytes | None
    expect: str | None  # None: good; else a regex the dlq.reason must match
    event: tuple[str, str, str, str, float] | None = None  # good: (event_id, user, item, type, ts seconds)

    @property
    def good(self) -> bool:
        return self.expect is None


@dataclass(frozen=True)
class Draft:
    kind: str
    key: object  # "user" (the user id, as producers should), None, or bytes
    value: object  # dict to serialise, or raw bytes, or None (a null value)
    expect: str | None = None
    ts_s: float | None = None  # good events: ts in seconds, as the contract reads it
    ascii_only: bool = True
    unique_id: bool = False  # good event: prefix event_id with the record number
    prefix: str = ""  # JSON members written before the dict's own (e.g. a duplicate key)
    suffix: str = ""  # ... and after them

    def render(self, n: int, max_bytes: int) -> Sent:
        value, event = self.value, None
        if isinstance(value, dict):
            value = dict(value)
            if self.unique_id:
                value["event_id"] = f"{n}:{value['event_id']}"
            if self.expect is None:
                event = (value["event_id"], value["user_id"], value["item_id"], value["event_type"], self.ts_s)
            text = json.dumps(value, ensure_ascii=self.ascii_only)
            text = "{" + self.prefix + (", " if self.prefix else "") + text[1:-1] + self.suffix + "}"
            value = text.encode("utf-8")
        key = self.key
        if key == "user":
            key = event[1].encode("utf-8") if event else b"someone"
        if key is None and value is None:
            key = b""  # Kafka allows a record with neither, but aiokafka and kafka-python refuse to send one
        expect = self.expect
        if value is not None and len(value) > max_bytes:
            expect, event = "exceeds the limit", None  # checked first, whatever else is wrong
        return Sent(n, self.kind, key, value, expect, event)


@dataclass(frozen=True)
class Resend:
    """A byte-identical copy of an earlier good record (which one: `pick` modulo the good ones so far)."""

    pick: int
    kind: str = "duplicate (resent)"


@dataclass(frozen=True)
class Conflict:
    """An earlier good event's event_id, user and ts with another item: the window keeps the first."""

    pick: int
    item: str
    kind: str = "duplicate event_id, other item"


def now_ms() -> int:
    return int(datetime.now(timezone.utc).timestamp() * 1000)


@dataclass
class Context:
    """What the strategies need to know about the run."""

    catalog: list[str]
    users: list[str]
    max_bytes: int
    skew_s: float
    start_ms: int = field(default_factory=now_ms)

    @property
    def latest_good_ms(self) -> int:  # an hour inside the future-skew limit
        return self.start_ms + int(self.skew_s * 1000) - 3_600_000

    @property
    def earliest_future_ms(self) -> int:  # an hour beyond it (the run takes minutes, not hours)
        return self.start_ms + int(self.skew_s * 1000) + 3_600_000


def _iso(dt: datetime, tz: timezone | None, z: bool) -> str:
    """`dt` (naive: a UTC instant) as ISO-8601: naive (read as UTC), or local time with its offset."""
    if tz is None:
        return dt.isoformat()
    text = dt.replace(tzinfo=timezone.utc).astimezone(tz).isoformat()
    return text.replace("+00:00", "Z") if z else text


TZS = [
    None,
    timezone.utc,
    timezone(timedelta(hours=5, minutes=30)),
    timezone(timedelta(hours=-8)),
    timezone(timedelta(hours=14)),
    timezone(timedelta(hours=-12)),
]


def good_ts(ctx: Context) -> st.SearchStrategy[tuple[object, float]]:
    """(ts as sent, ts in seconds): epoch ms as int or float, or ISO-8601 with or without a zone."""
    hi_ms = ctx.latest_good_ms
    as_int = st.one_of(
        st.just(0), st.just(hi_ms), st.integers(0, hi_ms), st.integers(ctx.start_ms - 400 * 86_400_000, hi_ms)
    ).map(lambda ms: (ms, ms / 1000))
    as_float = st.floats(0.0, float(hi_ms)).map(lambda ms: (ms, ms / 1000))
    hi_dt = datetime.fromtimestamp(hi_ms / 1000, timezone.utc).replace(tzinfo=None)

    @st.composite
    def as_iso(draw):
        dt = draw(st.datetimes(min_value=datetime(1970, 1, 2), max_value=hi_dt))
        tz = draw(st.sampled_from(TZS))
        return _iso(dt, tz, draw(st.booleans())), dt.replace(tzinfo=timezone.utc).timestamp()

    return st.one_of(as_int, as_float, as_iso())


def good_event(ctx: Context) -> st.SearchStrategy[tuple[dict, float]]:
    """(a valid event, its ts in seconds): users mostly from a pool (so windows fill up), items
    mostly from the catalog (an unknown item is kept in the window: it may arrive later)."""
    users = st.one_of(
        st.sampled_from(ctx.users),
        st.sampled_from(ctx.users),
        odd_text,
        st.text(min_size=MAX_ID, max_size=MAX_ID, alphabet=st.characters(codec="utf-8")),
    )
    items = st.one_of(st.sampled_from(ctx.catalog), st.sampled_from(ctx.catalog), odd_text)
    timestamps = good_ts(ctx)

    @st.composite
    def event(draw):
        ts, ts_s = draw(timestamps)
        value = {
            "event_id": draw(odd_text),
            "user_id": draw(users),
            "item_id": draw(items),
            "event_type": draw(st.sampled_from(TYPES)),
            "ts": ts,
        }
        return value, ts_s

    return event()


def _with_extras(draw, value: dict) -> dict:
    extras = draw(st.dictionaries(st.text(max_size=12).filter(lambda k: k not in FIELDS), json_values, max_size=3))
    return {**value, **extras}


def keys():
    """Keys as producers should send them (the user id), and not: none, or arbitrary bytes."""
    return st.one_of(st.just("user"), st.just("user"), st.none(), st.binary(max_size=24))


GOOD_KINDS = ["plain", "extras", "nested extra", "surrogate in extra", "dup key, last valid"]


@st.composite
def good_draft(draw, events: st.SearchStrategy, variant: str) -> Draft:
    value, ts_s = draw(events)
    if variant == "extras":
        value = _with_extras(draw, value)
    elif variant == "nested extra":  # nesting the parser handles is context, not an error
        depth = draw(st.integers(1, MAX_JSON_DEPTH - 2))
        nested: object = draw(json_scalars)
        for _ in range(depth):
            nested = [nested] if draw(st.booleans()) else {"a": nested}
        value = {**value, "context": nested}
    elif variant == "surrogate in extra":  # an ignored field is not stored: accepted
        value = {**value, "note": "\udc00" + draw(st.text(max_size=4))}
    elif variant == "dup key, last valid":  # JSON duplicate keys: the last one counts
        first = f'"{draw(st.sampled_from(FIELDS))}": {json.dumps(draw(json_scalars))}'
        return Draft(f"good: {variant}", draw(keys()), value, ts_s=ts_s, unique_id=True, prefix=first)
    ascii_only = variant == "surrogate in extra" or draw(st.booleans())
    return Draft(f"good: {variant}", draw(keys()), value, ts_s=ts_s, ascii_only=ascii_only, unique_id=True)


def _ascii_json(value: dict) -> bytes:
    return json.dumps(value).encode()


@st.composite
def bad_draft(draw, ctx: Context, events: st.SearchStrategy, kind: str) -> Draft:
    """A good event broken in one way (or bytes that never were one)."""
    base, _ = draw(events)
    key = draw(keys())
    if kind == "invalid UTF-8":
        raw = _ascii_json(base)
        at = draw(st.integers(0, len(raw)))
        return Draft(kind, key, raw[:at] + draw(st.sampled_from(INVALID_UTF8)) + raw[at:], "^not UTF-8")
    if kind == "other encoding":
        text = json.dumps({**base, "user_id": "u"})  # ASCII, then one character outside it
        text = text.replace('"user_id": "u"', '"user_id": "u' + draw(st.sampled_from(LATIN1)) + '"')
        codec = draw(st.sampled_from(["latin-1", "cp1252", "utf-16", "utf-32"]))
        return Draft(f"{kind} ({codec})", key, text.encode(codec), "^not UTF-8")
    if kind == "not JSON":
        raw = _ascii_json(base)
        broken = draw(
            st.one_of(
                st.integers(1, len(raw) - 1).map(lambda at: raw[:at]),  # truncated
                st.text(max_size=20).map(lambda t: raw + b" x" + t.encode()),  # trailing garbage
                st.just(repr(base).encode("utf-8", "backslashreplace")),  # a Python dict, not JSON
                st.text(max_size=40).map(lambda t: ("<" + t).encode()),
                st.sampled_from(
                    [
                        b"",
                        b" ",
                        b"\n\t",
                        b"{",
                        b"}",
                        b"{'a': 1}",
                        b"undefined",
                        b'{"ts": 01}',
                        b"\x00",
                        b"\xef\xbb\xbf" + raw,
                    ]
                ),  # ... and a UTF-8 BOM
            )
        )
        return Draft(kind, key, broken, "^not JSON")
    if kind == "JSON but not an object":
        value = draw(st.one_of(json_scalars, st.lists(json_values, max_size=3)))
        return Draft(kind, key, json.dumps(value).encode(), "^expected a JSON object")
    if kind == "null value":
        return Draft(kind, key, None, "^empty value")
    if kind == "huge":
        size = draw(st.integers(ctx.max_bytes + 1, 4 * ctx.max_bytes))
        filler = draw(st.sampled_from(["x", "\u00e9", "\U0001f600", "\x00"]))
        if draw(st.booleans()):
            raw = json.dumps({**base, "pad": filler * size}).encode()
        else:
            raw = draw(st.sampled_from([b"\xff", b"[", b"a"])) * size
        return Draft(kind, key, raw, "exceeds the limit")
    if kind == "deep nesting":
        depth = draw(st.one_of(st.integers(MAX_JSON_DEPTH, 200), st.integers(200, 9_000)))
        opening, closing = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        nested = opening * depth + "1" + closing * depth  # inside the event: one level more
        if draw(st.booleans()):
            return Draft(kind, key, ("[" + nested + "]").encode(), "nested too deeply")
        return Draft(kind, key, base, "nested too deeply", suffix=', "context": ' + nested)
    if kind in ("wrong type", "null field", "missing field", "empty id", "too long id", "lone surrogate"):
        name = draw(st.sampled_from(FIELDS if kind in ("wrong type", "null field", "missing field") else ID_FIELDS))
        value = dict(base)
        if kind == "missing field":
            del value[name]
        elif kind == "null field":
            value[name] = None
        elif kind == "empty id":
            value[name] = ""
        elif kind == "too long id":
            value[name] = draw(st.text(min_size=MAX_ID + 1, max_size=MAX_ID + 40, alphabet="ab\u00e9\u4e2d"))
        elif kind == "lone surrogate":
            lone = draw(st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"]))
            value[name] = draw(st.sampled_from(["", "x"])) + lone + draw(st.sampled_from(["", "y", "\ud800"]))
        elif name == "ts":
            value[name] = draw(
                st.one_of(
                    st.booleans(),
                    st.lists(st.integers(), max_size=2),
                    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                    st.text(max_size=20).map(lambda t: "x" + t),
                )
            )
        else:
            value[name] = draw(
                st.one_of(
                    st.booleans(),
                    st.integers(),
                    st.floats(allow_nan=False),
                    st.lists(st.text(max_size=3), max_size=2),
                    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
                )
            )
        return Draft(f"{kind} ({name})", key, value, rf"^invalid event: (.*; )?{name}: ")
    if kind == "dup key, last invalid":
        name = draw(st.sampled_from(ID_FIELDS))
        last = f', "{name}": {draw(st.sampled_from(["5", "null", "[]", "true", json.dumps("")]))}'
        return Draft(kind, key, base, rf"^invalid event: (.*; )?{name}: ", suffix=last)
    if kind == "unknown event_type":
        event_type = draw(
            st.one_of(
                odd_text,
                st.sampled_from(["View", "VIEW", " view", "view ", "purchase\x00", "click\u200b", "\u202eweiv"]),
            )
        )
        if event_type in TYPES:
            event_type += "!"
        return Draft(kind, key, {**base, "event_type": event_type}, "^unknown event_type")
    if kind == "ts before 1970":
        ts = draw(
            st.one_of(
                st.integers(max_value=-1),
                st.floats(max_value=-1e-3),
                st.datetimes(max_value=datetime(1969, 12, 31)).map(lambda d: d.isoformat() + "+00:00"),
            )
        )
        return Draft(kind, key, {**base, "ts": ts}, r"^invalid event: ts: .*before 1970")
    if kind == "ts NaN or infinite":
        ts = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
        expect = r"in the future" if ts == float("inf") else r"^invalid event: ts: .*before 1970"
        return Draft(kind, key, {**base, "ts": ts}, expect)  # json.dumps writes NaN/Infinity, json.loads reads them
    if kind == "ts in the far future":
        ts = draw(
            st.one_of(
                st.integers(ctx.earliest_future_ms, 10**300),
                st.floats(float(ctx.earliest_future_ms)),
                st.datetimes(min_value=datetime.fromtimestamp(ctx.earliest_future_ms / 1000 + 86_400)).map(
                    lambda d: d.isoformat()
                ),
            )
        )
        return Draft(kind, key, {**base, "ts": ts}, r"in the future|^invalid event: ts: .*out of range")
    if kind == "ts a huge number":  # beyond float range, or beyond Python's int-parsing digit limit
        digits = draw(st.one_of(st.integers(310, 4_300), st.integers(4_301, 6_000)))
        sign = draw(st.sampled_from(["", "-"]))
        expect = "^not JSON" if digits > 4_300 else r"^invalid event: ts: .*out of range"
        return Draft(kind, key, base, expect, suffix=f', "ts": {sign}{"9" * digits}')
    raise AssertionError(kind)


BAD_KINDS = [
    "invalid UTF-8",
    "other encoding",
    "not JSON",
    "JSON but not an object",
    "null value",
    "huge",
    "deep nesting",
    "wrong type",
    "null field",
    "missing field",
    "empty id",
    "too long id",
    "lone surrogate",
    "dup key, last invalid",
    "unknown event_type",
    "ts before 1970",
    "ts NaN or infinite",
    "ts in the far future",
    "ts a huge number",
]


def strategies(ctx: Context) -> dict[str, tuple[st.SearchStrategy, int]]:
    """Every kind of record, with its weight in the mix: half good events (some of them
    duplicates), half hostile records spread evenly over the kinds of damage."""
    events = good_event(ctx)
    kinds = {f"good: {v}": (good_draft(events, v), 3) for v in GOOD_KINDS}
    kinds["duplicate (resent)"] = (st.builds(Resend, st.integers(0, 10**6)), 2)
    kinds["duplicate event_id, other item"] = (
        st.builds(Conflict, st.integers(0, 10**6), st.sampled_from(ctx.catalog[:3])),
        2,
    )
    kinds.update({kind: (bad_draft(ctx, events, kind), 1) for kind in BAD_KINDS})
    return kinds


def render_all(drawn: list, ctx: Context) -> list[Sent]:
    """The drawn list as records in topic order; duplicates copy earlier good records.

    A user whose last good record is a duplicate gets one more fresh event at the end, so
    every good event has a later, unambiguous one of the same user that must be answered.
    """
    sent: list[Sent] = []
    good: list[Sent] = []
    for d in drawn:
        n = len(sent)
        if isinstance(d, Resend):
            if not good:
                continue
            original = good[d.pick % len(good)]
            record = Sent(n, d.kind, original.key, original.value, None, original.event)
        elif isinstance(d, Conflict):
            if not good:
                continue
            original = good[d.pick % len(good)]
            event_id, user, _, event_type, ts_s = original.event
            value = {
                "event_id": event_id,
                "user_id": user,
                "item_id": d.item,
                "event_type": event_type,
                "ts": json.loads(original.value)["ts"],
            }  # the same ts as sent (ms or ISO)
            record = Draft(d.kind, "user", value, ts_s=ts_s).render(n, ctx.max_bytes)
        else:
            record = d.render(n, ctx.max_bytes)
        sent.append(record)
        if record.good:
            good.append(record)
    last_by_user: dict[str, Sent] = {}
    for record in good:
        last_by_user[record.event[1]] = record
    for user, record in last_by_user.items():
        if not record.kind.startswith("good"):
            n = len(sent)
            sent.append(
                Draft(
                    "good: closing",
                    "user",
                    {
                        "event_id": f"{n}:closing",
                        "user_id": user,
                        "item_id": "1",
                        "event_type": "view",
                        "ts": ctx.start_ms,
                    },
                    ts_s=ctx.start_ms / 1000,
                ).render(n, ctx.max_bytes)
            )
    return sent


def reason_matches(expect: str, reason: str) -> bool:
    return re.search(expect, reason) is not None
