"""Loading RecBole atomic files and JSONL; leave-one-out split; window arrays."""

import json

import numpy as np

from core.datasets import load_interactions, make_windows, rating_event_type, split_leave_one_out
from core.features import FeatureSpec

SPEC = FeatureSpec()


def test_rating_rule():
    assert [rating_event_type(r) for r in (5, 4, 3, 2, 1)] == ["purchase", "click", "view", "view", "view"]


def test_recbole_atomic_files(tmp_path):
    (tmp_path / "x.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tToy Story\t1995\tAnimation Comedy\n20\tHeat\t1995\tunknown\n"
    )
    (tmp_path / "x.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "a\t20\t5\t300\na\t10\t4\t100\na\t30\t1\t100\nb\t10\t3\t50\n"
    )
    d = load_interactions(tmp_path, SPEC)
    assert d.item_ids == ["10", "20", "30"]  # item file order, then event-only items
    assert d.item_texts == ["Toy Story (1995). Animation, Comedy", "Heat (1995)", "30"]
    assert d.user_ids == ["a", "b"]
    assert d.items[0].tolist() == [0, 2, 1]  # by time; equal times keep file order
    assert d.events[0].tolist() == [SPEC.event_type_id(t) for t in ("click", "view", "purchase")]
    assert d.times[0].tolist() == [100.0, 100.0, 300.0]


def test_jsonl_timestamps_ms_and_iso(tmp_path):
    events = [
        {"event_id": "1", "user_id": "u", "item_id": "i2", "event_type": "click", "ts": "2024-01-01T00:01:00Z"},
        {"event_id": "2", "user_id": "u", "item_id": "i1", "event_type": "view", "ts": 1704067200000},
    ]
    (tmp_path / "events.jsonl").write_text("\n".join(json.dumps(e) for e in events))
    (tmp_path / "items.jsonl").write_text(json.dumps({"item_id": "i1", "title": "One", "categories": ["a"]}))
    d = load_interactions(tmp_path, SPEC)
    assert d.item_ids == ["i1", "i2"]
    assert d.items[0].tolist() == [0, 1]
    assert d.times[0].tolist() == [1704067200.0, 1704067260.0]


def test_leave_one_out_split(tmp_path):
    (tmp_path / "x.inter").write_text(
        "user_id:token\titem_id:token\ttimestamp:float\n" + "".join(f"u\t{i}\t{i}\n" for i in range(5)) + "s\t9\t1\n"
    )
    split = split_leave_one_out(load_interactions(tmp_path, SPEC))
    assert [s.tolist() for s in split.train.items] == [[0, 1, 2], [5]]  # short users train on everything
    assert split.valid_history.items[0].tolist() == [0, 1, 2] and split.valid_targets.tolist() == [3]
    assert split.test_history.items[0].tolist() == [0, 1, 2, 3] and split.test_targets.tolist() == [4]


def test_windows_are_left_padded_with_newest_last():
    spec = FeatureSpec(max_len=4)
    w = make_windows([np.array([7, 8])], [np.array([1, 3])], [np.array([0.0, 600.0])], spec)
    assert w.items.tolist() == [[0, 0, 7, 8]]
    assert w.mask.tolist() == [[False, False, True, True]]
    assert w.event_types.tolist() == [[0, 0, 1, 3]]
    assert w.time_buckets[0, 0] == 0 and w.time_buckets[0, 3] == 1 and w.time_buckets[0, 2] > 1


def test_jsonl_records_are_held_to_the_topic_contract(tmp_path):
    """Dataset files are read with the topic's models (core.contracts): a bad line names the file, the
    line and the reason; integer ids are read as strings, event_id is optional, a title-less item is
    titled by its id."""
    import pytest

    from core.datasets import DataError, read_records

    good = {"user_id": 7, "item_id": 42, "event_type": "view", "ts": "2024-01-01T00:00:00"}
    (tmp_path / "events.jsonl").write_text(json.dumps(good) + "\n")
    (tmp_path / "items.jsonl").write_text(json.dumps({"item_id": 42}) + "\n")
    events, items = read_records(tmp_path)
    assert events == [{"user_id": "7", "item_id": "42", "event_type": "view", "ts": 1704067200.0}]
    assert items == [{"item_id": "42", "title": "42"}]

    (tmp_path / "events.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({**good, "user_id": ""}) + "\n")
    with pytest.raises(DataError, match=r"events.jsonl:2: invalid event: user_id: String should have at least 1"):
        read_records(tmp_path)
    (tmp_path / "events.jsonl").write_text(json.dumps({**good, "ts": -1}) + "\n")
    with pytest.raises(DataError, match=r"events.jsonl:1: .*before 1970"):
        read_records(tmp_path)
    (tmp_path / "events.jsonl").write_text(json.dumps(good) + "\n")
    (tmp_path / "items.jsonl").write_text(json.dumps({"item_id": "x", "title": "t" * 1001}) + "\n")
    with pytest.raises(DataError, match=r"items.jsonl:1: invalid item: title"):
        read_records(tmp_path)
