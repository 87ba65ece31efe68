"""Raw topic records as plain, safe dicts for the pages: bytes are never passed on as they came."""

from __future__ import annotations

import json

PREVIEW_BYTES = 600  # of a dead letter's value; the page shows the length beside it


def escaped(raw: bytes | None, limit: int = PREVIEW_BYTES) -> str | None:
    """Bytes as text a page can show: valid UTF-8 as its characters, backslash doubled, any other byte
    as \\xNN and unprintable characters as Python escapes (\\n, \\x00, \\u202e); cut after `limit` bytes
    with "…". Markup stays as its characters: the page sets it as text, never as HTML."""
    if raw is None:
        return None
    text = raw[:limit].decode("utf-8", "surrogateescape")
    shown = []
    for char in text:
        if 0xDC80 <= ord(char) <= 0xDCFF:  # a byte that is not UTF-8 (surrogateescape)
            shown.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif char == "\\":
            shown.append("\\\\")
        elif char.isprintable():
            shown.append(char)
        else:
            shown.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(shown) + ("…" if len(raw) > limit else "")


def _headers(message) -> dict[str, str]:
    return {key: escaped(value or b"", limit=1000) for key, value in message.headers or ()}


def dead_letter(message) -> dict:
    """An `events-dlq` record: why, where it came from (headers: docs/topics.md), and its key and value
    previewed."""
    headers = _headers(message)
    return {
        "dead_lettered_at": message.timestamp / 1000,
        "partition": message.partition,
        "offset": message.offset,
        "reason": headers.get("dlq.reason", "(no reason header)"),
        "source": {
            "topic": headers.get("dlq.topic"),
            "partition": headers.get("dlq.partition"),
            "offset": headers.get("dlq.offset"),
        },
        "key": escaped(message.key, limit=200),
        "value": escaped(message.value),
        "value_bytes": len(message.value or b""),
    }


def model_update(message) -> dict:
    """A `model-updates` record (announced version), or what is wrong with it."""
    announced = {"announced_at": message.timestamp / 1000, "offset": message.offset}
    try:
        value = json.loads(message.value)
        return announced | {
            "version": str(value["version"]),
            "created_at": value.get("created_at"),
            "sha256": value.get("sha256"),
        }
    except (TypeError, ValueError, KeyError) as e:  # not JSON, not an object, no version
        return announced | {"version": escaped(message.key, limit=100), "error": f"unreadable ({e})"}
