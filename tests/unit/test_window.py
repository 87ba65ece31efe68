from faust.serializers import codecs

from state.window import CODEC, UserWindow, WindowEvent

DAY = 86_400.0


def ev(n: int, ts: float, item: str | None = None, kind: str = "view") -> WindowEvent:
    return WindowEvent(f"e{n}", item or f"i{n}", kind, ts)


def test_keeps_newest_events_in_time_order():
    window = UserWindow().with_events([ev(3, 30), ev(1, 10), ev(2, 20)], max_len=2, max_age_s=DAY)
    assert window.event_ids == ["e2", "e3"]
    assert window.ts == [20, 30]


def test_deduplicates_by_event_id_across_batches():
    first = UserWindow().with_events([ev(1, 10)], max_len=50, max_age_s=DAY)
    again = first.with_events([ev(1, 10), ev(2, 20)], max_len=50, max_age_s=DAY)
    assert again.event_ids == ["e1", "e2"]


def test_drops_events_older_than_max_age_relative_to_newest():
    window = UserWindow().with_events([ev(1, 0), ev(2, DAY - 1), ev(3, 2 * DAY)], max_len=50, max_age_s=DAY + 1)
    assert window.event_ids == ["e2", "e3"]


def test_serialises_to_compact_json_without_pickle_as_the_faust_record_did():
    window = UserWindow().with_events([ev(1, 10, "a", "click")], max_len=50, max_age_s=DAY)
    raw = window.encode()
    assert (
        raw
        == codecs.dumps(CODEC, window)
        == (
            b'{"event_ids":["e1"],"item_ids":["a"],"event_types":["click"],"ts":[10],"recommended":[],'
            b'"seen_items":[],"seen_types":[],"shown_variants":[]}'
        )
    )
    assert UserWindow.decode(raw) == window == codecs.loads(CODEC, raw)
    # What the table held before (a Faust record, without the seen items): stores and changelogs written then read.
    faust_record_bytes = b'{"event_ids":["e1"],"item_ids":["a"],"event_types":["click"],"ts":[10],"recommended":[]}'
    assert UserWindow.decode(faust_record_bytes) == window
