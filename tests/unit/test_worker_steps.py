"""The worker's steps (stream_app.steps) on plain values: no broker, no Faust stream or table."""

import json

from core.contracts import Item, RecommendedItem
from state.window import UserWindow, WindowEvent
from stream_app.experiments import Served
from stream_app.steps import (
    RECORD_OVERHEAD_BYTES,
    UserEvents,
    advance_windows,
    announced_version,
    build_records,
    catalog_changes,
    dlq_headers,
    events_waiting,
    group_valid_events,
    item_change,
    next_offsets,
    oversized,
    remember_shown,
    score_one_by_one,
    stalled_for,
)

LIMITS = {"max_bytes": 4096, "event_types": {"view", "click", "purchase"}, "max_future_skew_s": 86_400}
TS = 881250949000  # epoch ms


def event(event_id, user, item, event_type="click", ts=TS):
    return json.dumps(
        {"event_id": event_id, "user_id": user, "item_id": item, "event_type": event_type, "ts": ts}
    ).encode()


def item(item_id, available=True):
    return json.dumps({"item_id": item_id, "title": f"Movie {item_id}", "available": available}).encode()


def window_event(event_id, item, event_type="click", ts=TS / 1000):
    return WindowEvent(event_id, item, event_type, ts)


# -- grouping ---------------------------------------------------------------------------------


def test_groups_valid_events_by_user_and_coalesces_each_users_events():
    values = [event("e1", "u1", "i1"), event("e2", "u2", "i2", "view"), event("e3", "u1", "i3", ts=TS + 1000)]
    touched, rejects = group_valid_events(values, **LIMITS)
    assert rejects == []
    assert list(touched) == ["u1", "u2"]  # order of first appearance
    assert touched["u1"] == UserEvents([window_event("e1", "i1"), window_event("e3", "i3", ts=TS / 1000 + 1)], [0, 2])
    assert touched["u2"] == UserEvents([window_event("e2", "i2", "view")], [1])
    assert touched["u1"].last == 2  # the partition of the user's last event holds the window


def test_invalid_events_are_rejected_in_batch_order_with_their_reasons():
    values = [b"{not json", event("e1", "u1", "i1"), None, event("e2", "u1", "i2", "teleport"), b"x" * 5000]
    touched, rejects = group_valid_events(values, **LIMITS)
    assert list(touched) == ["u1"] and touched["u1"].last == 1
    assert [index for index, _ in rejects] == [0, 2, 3, 4]
    reasons = [reason for _, reason in rejects]
    assert "not JSON" in reasons[0] and reasons[1] and "event_type" in reasons[2] and "exceeds" in reasons[3]


def test_a_batch_of_only_invalid_events_touches_nobody():
    touched, rejects = group_valid_events([b"[]", b""], **LIMITS)
    assert touched == {} and [index for index, _ in rejects] == [0, 1] and all(reason for _, reason in rejects)


# -- windows and records --------------------------------------------------------------------


def test_advance_windows_adds_the_batch_and_reports_hits_against_the_last_list_shown():
    shown_before = UserWindow().with_events([window_event("e0", "i0")], 50, 1e9).derive(recommended=["i1", "i9"])
    touched = {
        "u1": UserEvents([window_event("e1", "i1"), window_event("e2", "i2")], [0, 1]),
        "u2": UserEvents([window_event("e3", "i1")], [2]),
    }
    updated, hits = advance_windows(touched, {"u1": shown_before, "u2": UserWindow()}, 50, 1e9)
    assert updated["u1"].item_ids == ["i0", "i1", "i2"] and updated["u1"].recommended == ["i1", "i9"]
    assert updated["u2"].item_ids == ["i1"]
    assert hits == [True, False]  # u2 was never shown a list: no hit either way


def test_advance_windows_deduplicates_and_trims():
    stored = UserWindow().with_events([window_event("e1", "i1", ts=1.0), window_event("e2", "i2", ts=2.0)], 3, 1e9)
    touched = {
        "u": UserEvents(
            [window_event("e2", "i2", ts=2.0), window_event("e3", "i3", ts=3.0), window_event("e4", "i4", ts=4.0)],
            [0, 1, 2],
        )
    }
    updated, _ = advance_windows(touched, {"u": stored}, 3, 1e9)
    assert updated["u"].event_ids == ["e2", "e3", "e4"]  # e2 once (a re-delivery), the oldest dropped
    updated, _ = advance_windows(touched, {"u": stored}, 10, 1.5)
    assert updated["u"].event_ids == ["e3", "e4"]  # older than 1.5 s before the newest event


def test_records_are_triggered_by_each_users_last_event_and_carry_the_model_version():
    touched = {
        "u1": UserEvents([window_event("e1", "i1"), window_event("e3", "i3")], [0, 2]),
        "u2": UserEvents([window_event("e2", "i2")], [1]),
    }
    lists = {"u1": [RecommendedItem(item_id="i7", score=0.9, because="i1")], "u2": []}
    records = build_records(touched, lists, "v0002", now=1700000000.1234)
    assert [(r.user_id, r.key) for r in records] == [("u1", b"u1"), ("u2", b"u2")]
    first, second = (json.loads(r.value) for r in records)
    assert first == {
        "user_id": "u1",
        "items": [
            {"item_id": "i7", "score": 0.9, "because": "i1", "p_click": None, "p_purchase": None, "variant": None}
        ],
        "model_version": "v0002",
        "generated_at": 1700000000123,
        "trigger_event_id": "e3",
        "short": None,
        "experiment": None,
        "variant": None,
    }
    assert second["items"] == []


def test_records_of_an_experiment_name_what_served_them():
    touched = {"u1": UserEvents([window_event("e1", "i1")], [0]), "u2": UserEvents([window_event("e2", "i2")], [1])}
    items = [RecommendedItem(item_id="i7", score=0.9, variant="treatment")]
    lists = {"u1": items, "u2": []}
    served = {"u1": Served(items, "v0003", "exp1", "treatment")}
    first, second = (json.loads(r.value) for r in build_records(touched, lists, "v0002", 0.0, served=served))
    assert (first["model_version"], first["experiment"], first["variant"]) == ("v0003", "exp1", "treatment")
    assert first["items"][0]["variant"] == "treatment"
    assert (second["model_version"], second["experiment"], second["variant"]) == ("v0002", None, None)
    shown = remember_shown({"u1": UserWindow(), "u2": UserWindow()}, lists)
    assert (shown["u1"].recommended, shown["u1"].shown_variants) == (["i7"], ["treatment"])
    assert (shown["u2"].recommended, shown["u2"].shown_variants) == ([], [])


def test_stored_windows_remember_the_list_shown():
    updated = {"u1": UserWindow().with_events([window_event("e1", "i1")], 50, 1e9)}
    shown = remember_shown(updated, {"u1": [RecommendedItem(item_id="i7", score=0.9)]})
    assert shown["u1"].recommended == ["i7"] and shown["u1"].item_ids == ["i1"]


def test_next_offsets_is_the_offset_after_each_partitions_last_record():
    assert next_offsets([(0, 5), (1, 2), (0, 6)]) == {0: 7, 1: 3}


# -- failures after parsing, progress ---------------------------------------------------------------


def test_records_and_shown_windows_are_only_for_the_users_with_a_list():
    touched = {"u1": UserEvents([window_event("e1", "i1")], [0]), "u2": UserEvents([window_event("e2", "i2")], [1])}
    updated = {u: UserWindow().with_events(e.events, 50, 1e9) for u, e in touched.items()}
    lists = {"u2": [RecommendedItem(item_id="i7", score=0.9)]}  # u1 failed
    assert [r.key for r in build_records(touched, lists, "v1", now=1.0)] == [b"u2"]
    assert list(remember_shown(updated, lists)) == ["u2"]


def test_scoring_one_by_one_fails_only_the_windows_the_model_cannot_score():
    def recommend(windows):
        if any("poison" in w.item_ids for w in windows):
            raise ValueError("cannot score poison")
        return [[RecommendedItem(item_id=f"after-{w.item_ids[-1]}", score=1.0)] for w in windows]

    windows = {
        u: UserWindow().with_events([window_event(u, item)], 50, 1e9)
        for u, item in [("u1", "i1"), ("u2", "poison"), ("u3", "i3")]
    }
    lists, failed = score_one_by_one(recommend, windows)
    assert {u: [i.item_id for i in items] for u, items in lists.items()} == {"u1": ["after-i1"], "u3": ["after-i3"]}
    assert failed == {"u2": "scoring failed: ValueError('cannot score poison')"}


def test_oversized_names_the_users_whose_record_the_topic_would_refuse():
    touched = {"small": UserEvents([window_event("e1", "i1")], [0]), "big": UserEvents([window_event("e2", "i2")], [1])}
    lists = {
        "small": [RecommendedItem(item_id="i7", score=0.5)],
        "big": [RecommendedItem(item_id="x" * 900, score=0.5)],
    }
    records = build_records(touched, lists, "v1", now=1.0)
    size = {r.key: len(r.key) + len(r.value) + RECORD_OVERHEAD_BYTES for r in records}
    assert size[b"small"] < 1000 < size[b"big"]
    assert oversized(records, 1000, "recs") == {
        "big": f"record too large: {size[b'big']} bytes, recs takes at most 1000"
    }
    assert oversized(records, size[b"small"], "recs").keys() == {"big"}  # a record exactly at the limit goes
    assert oversized(records, size[b"small"] - 1, "recs").keys() == {"small", "big"}


def test_events_waiting_counts_from_the_last_processed_or_the_first_in_the_log_to_the_end():
    end = {0: 100, 1: 50, 2: 30, 3: 0}
    first = {0: 0, 1: 0, 2: 20, 3: 0}  # partition 2: its first 20 records deleted (retention)
    processed = {0: 100, 1: 45}  # 2 and 3: nothing processed or committed yet
    assert events_waiting(first, end, processed) == 0 + 5 + 10 + 0
    assert events_waiting(first, end, {0: 101}) == 0 + 50 + 10  # processed read after the end: never negative


def test_stalled_only_once_events_have_waited_the_timeout_without_a_batch():
    assert stalled_for(now=100.0, last_batch_at=0.0, waiting_since=None, timeout_s=30) is None  # idle
    assert stalled_for(now=100.0, last_batch_at=0.0, waiting_since=80.0, timeout_s=30) is None  # idle, then events
    assert stalled_for(now=100.0, last_batch_at=0.0, waiting_since=60.0, timeout_s=30) == 40.0
    assert stalled_for(now=100.0, last_batch_at=90.0, waiting_since=10.0, timeout_s=30) is None  # busy, keeping up
    assert stalled_for(now=100.0, last_batch_at=65.0, waiting_since=10.0, timeout_s=30) == 35.0  # busy, then stuck


# -- catalog ----------------------------------------------------------------------------------


def test_catalog_changes_tombstones_unavailable_and_invalid_records():
    records = [
        (b"a", item("a")),
        (b"b", item("b")),
        (b"a", None),
        (b"c", item("c", available=False)),
        (b"d", b"{not json"),
        (b"b", item("b")),
        (b"e", b""),
        (b"x", json.dumps({"item_id": "x"}).encode()),
    ]
    changes = catalog_changes(records, max_bytes=4096)
    assert list(changes.upserts) == ["b"] and isinstance(changes.upserts["b"], Item)
    assert changes.removals == ["a", "c", "e"]  # a tombstone (by key), `available: false`, an empty value
    assert [index for index, _ in changes.rejects] == [4, 7]
    assert "not JSON" in changes.rejects[0][1] and "title" in changes.rejects[1][1]


def test_an_item_removed_then_added_again_in_one_batch_ends_up_live():
    changes = catalog_changes([(b"a", None), (b"a", item("a"))], max_bytes=4096)
    assert changes.removals == ["a"] and list(changes.upserts) == ["a"]  # removals are applied first


def test_item_change_names_the_item_of_a_tombstone_by_its_key():
    assert item_change(b"a", None, max_bytes=4096) == ("a", None, False)
    change = item_change(b"ignored", item("z", available=False), max_bytes=4096)
    assert (change.item_id, change.live, change.item.available) == ("z", False, False)


# -- dead letters, model updates ----------------------------------------------------------------


def test_dlq_headers_say_where_and_why():
    assert dlq_headers("events", 2, 41, "not JSON: é") == [
        ("dlq.reason", "not JSON: é".encode()),
        ("dlq.topic", b"events"),
        ("dlq.partition", b"2"),
        ("dlq.offset", b"41"),
    ]


def test_announced_version_falls_back_to_the_offset():
    assert announced_version(b'{"version": "v0003"}', 7) == "v0003"
    assert announced_version(b"{not json", 7) == "offset 7"
    assert announced_version(None, 8) == "offset 8"
