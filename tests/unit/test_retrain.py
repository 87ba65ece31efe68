"""The retrain job's pieces without a broker: durations, the held-out slice, the gate,
event-log parsing, dataset merging, and a failed run's report."""

import json
import subprocess
import sys

import numpy as np
import pytest

from core.datasets import Interactions
from core.settings import Settings
from encoders.event_log import (
    EventLog,
    EventLogError,
    catalog_state,
    merge_dataset,
    parse_duration,
    read_offsets,
    valid_events,
    write_offsets,
)
from encoders.retrain import (
    EXIT_CODES,
    FAILED,
    RetrainConfig,
    decide,
    gate_split,
    holdout_cutoff,
    parse_holdout,
    render_markdown,
    run_once,
    split_holdout,
)

SETTINGS = Settings()
GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "event_type": "click", "ts": 881250949000}


def raw(value) -> bytes:
    return json.dumps(value).encode()


# --- durations and the held-out slice ----------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("7d", 604_800),
        ("12h", 43_200),
        ("90m", 5_400),
        ("45s", 45),
        ("2w", 1_209_600),
        ("1h30m", 5_400),
        ("0.5h", 1_800),
        (" 1D ", 86_400),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "d7", "7x", "0s", "-1h", "1h 30m", "7d!"])
def test_parse_duration_rejects_with_an_example(text):
    with pytest.raises(EventLogError, match="e.g. 7d|longer than 0"):
        parse_duration(text)


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("10%", ("fraction", 0.1)),
        ("0.25", ("fraction", 0.25)),
        ("1d", ("duration", 86_400.0)),
        ("12.5%", ("fraction", 0.125)),
    ],
)
def test_parse_holdout(text, parsed):
    kind, amount = parse_holdout(text)
    assert kind == parsed[0] and amount == pytest.approx(parsed[1])


@pytest.mark.parametrize("text", ["0%", "100%", "1", "1.5", "0"])
def test_parse_holdout_rejects_shares_outside_0_1(text):
    with pytest.raises(ValueError, match="between 0 and 100%"):
        parse_holdout(text)


def test_holdout_cutoff_by_share_and_by_duration():
    times = np.random.default_rng(0).permutation(np.arange(1.0, 101.0))  # seconds 1..100, unordered
    assert holdout_cutoff(times, "10%") == 91.0  # the newest 10 events: 91..100
    assert holdout_cutoff(times, "1%") == 100.0
    assert holdout_cutoff(times, "0.001") == 100.0  # at least one event
    assert holdout_cutoff(times, "30s") == 70.0  # event time, relative to the newest event
    assert holdout_cutoff(np.array([5.0, 5.0, 5.0, 1.0]), "25%") == 5.0  # ties go along


def interactions(sequences: dict[str, list[tuple[int, float]]], n_items: int = 10) -> Interactions:
    users = list(sequences)
    return Interactions(
        [f"i{i}" for i in range(n_items)],
        [f"item {i}" for i in range(n_items)],
        users,
        [np.array([i for i, _ in sequences[u]], dtype=np.int64) for u in users],
        [np.ones(len(sequences[u]), dtype=np.int64) for u in users],
        [np.array([t for _, t in sequences[u]], dtype=np.float64) for u in users],
    )


def test_split_holdout_cases_are_held_out_events_with_the_preceding_window():
    data = interactions(
        {
            "a": [(1, 1.0), (2, 2.0), (3, 3.0), (4, 10.0), (5, 11.0)],  # two held-out events
            "b": [(6, 12.0)],  # only a held-out event: no history, not a case
            "c": [(7, 1.0), (8, 2.0), (7, 10.0)],  # held-out repeat of a window item: not a case
            "d": [(1, 1.0), (2, 2.0)],  # nothing held out
        }
    )
    h = split_holdout(data, cutoff=10.0, window=3)
    assert h.train.user_ids == ["a", "c", "d"]
    assert [s.tolist() for s in h.train.items] == [[1, 2, 3], [7, 8], [1, 2]]
    assert h.targets.tolist() == [4, 5]
    assert [s.tolist() for s in h.history.items] == [[1, 2, 3], [2, 3, 4]]  # window of 3, held-out 4 included
    assert h.history.user_ids == ["a", "a"]
    assert (h.users.tolist(), h.positions.tolist()) == ([0, 0], [3, 4])  # where each case is in the data
    assert (h.n_events, h.n_no_history, h.n_repeats) == (4, 1, 1)
    assert all(t.max() < 10.0 for t in h.train.times)

    gate = gate_split(h)
    assert gate.test_targets is h.targets and gate.test_history is h.history and gate.train is h.train


def test_an_item_outside_the_window_is_a_case_again():
    data = interactions({"a": [(1, 1.0), (2, 2.0), (3, 3.0), (1, 10.0)]})
    assert split_holdout(data, 10.0, window=2).targets.tolist() == [1]
    assert split_holdout(data, 10.0, window=3).n_repeats == 1


# --- the gate ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "candidate, production, tolerance, promote",
    [
        (0.30, 0.20, 0.005, True),  # better
        (0.20, 0.20, 0.005, True),  # equal
        (0.196, 0.20, 0.005, True),  # worse, within tolerance
        (0.195, 0.20, 0.005, True),  # exactly at the bar
        (0.194, 0.20, 0.005, False),  # worse than the tolerance allows
        (0.21, 0.20, -0.005, True),  # a negative tolerance demands an improvement
        (0.204, 0.20, -0.005, False),
        (float("nan"), 0.20, 0.005, False),
        (0.30, float("nan"), 0.005, False),
    ],
)
def test_gate(candidate, production, tolerance, promote):
    decision = decide(candidate, production, tolerance)
    assert decision.promote is promote
    assert f"{production:.4f}" in decision.reason or "non-finite" in decision.reason


def test_the_gate_names_what_each_side_serves():
    decision = decide(0.30, 0.20, 0.005, "production + ranker", "candidate + ranker")
    assert decision.reason.startswith("candidate + ranker NDCG@10 0.3000 >= production + ranker 0.2000")


def test_the_report_shows_both_orders_and_the_ranker():
    metrics = {"NDCG@10": 0.2, "HR@10": 0.3, "recbole_NDCG@10": 0.1, "cold_HR@10": None}
    report = {
        "run": "r",
        "work_dir": "w",
        "decision": "promoted",
        "evaluation": {name: metrics for name in ("production", "production + ranker", "candidate", "popularity")},
        "ranker": {"train": False, "rule": "--no-ranker"},
        "gate": {
            "metric": "NDCG@10",
            "candidate": "candidate",
            "against": "production + ranker",
            "tolerance": 0.005,
            "promote": True,
            "reason": "...",
        },
    }
    text = render_markdown(report)
    assert "| production + ranker | 0.2000 |" in text and "| candidate + ranker" not in text
    assert "- ranker (--no-ranker): none" in text
    assert "`candidate` vs `production + ranker`" in text


@pytest.mark.parametrize("flags, ranker", [([], None), (["--ranker"], True), (["--no-ranker"], False)])
def test_the_ranker_flags_reach_the_run(monkeypatch, tmp_path, flags, ranker):
    from typer.testing import CliRunner

    import encoders.retrain as retrain
    from encoders.retrain_cli import standalone

    configs = []

    def fake_run_once(settings, config):
        configs.append(config)
        (tmp_path / "report.md").write_text("# Retrain r: SKIPPED\n")
        return retrain.RunResult(retrain.SKIPPED, tmp_path)

    monkeypatch.setattr(retrain, "run_once", fake_run_once)
    result = CliRunner().invoke(standalone(), ["retrain", *flags, "--ranker-minutes", "0.25"])
    assert result.exit_code == 4, result.output
    assert (configs[0].ranker, configs[0].ranker_minutes) == (ranker, 0.25)


def test_exit_codes_tell_outcomes_apart():
    assert EXIT_CODES == {"promoted": 0, "failed": 1, "rejected": 3, "skipped": 4}


# --- reading the topics ------------------------------------------------------------------------


def test_valid_events_skips_and_counts_what_the_worker_dead_letters():
    values = [
        raw(GOOD),
        raw({**GOOD, "event_id": "e2", "ts": "1997-12-04T15:55:49Z"}),
        raw(GOOD),  # redelivered: kept once
        b"{not json",
        b"\xff",
        None,
        raw([1]),
        raw({**GOOD, "event_id": "e3", "user_id": 7}),  # ids are strings
        raw({**GOOD, "event_id": "e4", "event_type": "teleport"}),
        raw({**GOOD, "event_id": "e5", "ts": 4102444800000 * 10}),  # far future
        raw({**GOOD, "event_id": "e6", "extra": {"context": 1}}),  # context is fine
    ]
    events, invalid = valid_events(values, SETTINGS)
    assert invalid == 7
    assert [e["event_id"] for e in events] == ["e1", "e2", "e6"]
    assert events[1] == {"event_id": "e2", "user_id": "u1", "item_id": "i1", "event_type": "click", "ts": 881250949000}
    assert set(events[2]) == {"event_id", "user_id", "item_id", "event_type", "ts"}


def test_catalog_state_keeps_the_last_record_per_item():
    item = lambda i, **kw: (i.encode(), raw({"item_id": i, "title": f"Film {i}", **kw}))  # noqa: E731
    catalog = catalog_state(
        [
            item("1"),
            item("2"),
            item("3"),
            item("4"),
            item("1", title="Film one, renamed"),
            ("2".encode(), None),  # tombstone: removed by key
            item("3", available=False),
            ("5".encode(), b"{broken"),  # invalid: counted
            item("4", available=False),
            item("4"),  # back again
        ],
        SETTINGS,
    )
    assert sorted(catalog.live) == ["1", "4"]
    assert catalog.live["1"]["title"] == "Film one, renamed"
    assert sorted(catalog.removed) == ["2", "3"]
    assert catalog.removed["2"]["title"] == "Film 2"  # last known text, for histories that mention it
    assert catalog.invalid == 1


def test_merge_dataset_base_first_topic_wins_removed_items_keep_their_text():
    topic_events = [
        {"event_id": "t1", "user_id": "u1", "item_id": "i1", "event_type": "click", "ts": 2_000},
        {"event_id": "t2", "user_id": "u1", "item_id": "i3", "event_type": "view", "ts": 3_000},
    ]
    catalog = catalog_state(
        [
            (b"i1", raw({"item_id": "i1", "title": "New title"})),
            (b"i3", raw({"item_id": "i3", "title": "Three"})),
            (b"i3", None),
            (b"i4", raw({"item_id": "i4", "title": "Four"})),
            (b"i4", None),
        ],
        SETTINGS,
    )
    log = EventLog(topic_events, catalog, 0, {0: 0}, {0: 2})
    base = (
        [
            {"user_id": "u1", "item_id": "i1", "event_type": "click", "ts": 2.0},  # also on the topic
            {"user_id": "u2", "item_id": "i2", "event_type": "view", "ts": 1.0},
        ],
        [{"item_id": "i1", "title": "Old title"}, {"item_id": "i2", "title": "Two"}],
    )
    events, items = merge_dataset(log, base)
    assert [(e["user_id"], e["item_id"], e["ts"]) for e in events] == [
        ("u1", "i1", 2000),
        ("u2", "i2", 1000),
        ("u1", "i3", 3000),
    ]
    by_id = {it["item_id"]: it for it in items}
    assert by_id["i1"]["title"] == "New title" and by_id["i2"]["title"] == "Two"
    assert by_id["i3"] == {"item_id": "i3", "title": "Three", "available": False}  # removed but in a history
    assert "i4" not in by_id  # removed and never seen: gone


def test_stored_position_round_trip_and_errors(tmp_path):
    path = tmp_path / "position" / "events.json"
    write_offsets(path, {1: 20, 0: 7})
    assert json.loads(path.read_text()) == {"0": 7, "1": 20}
    assert read_offsets(path) == {0: 7, 1: 20}
    for bad in ("[1, 2]", '{"0": "x"}', '{"0": -1}', "not json"):
        path.write_text(bad)
        with pytest.raises(EventLogError, match="partition"):
            read_offsets(path)


# --- a run that fails ----------------------------------------------------------------------------


def test_a_failed_run_writes_a_report_and_exits_1(tmp_path):
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "latest").write_text("no-such-version\n")
    result = run_once(Settings(registry={"path": registry}), RetrainConfig(work_root=tmp_path / "work", progress=False))
    assert result.status == FAILED and result.exit_code == 1
    report = json.loads((result.work_dir / "report.json").read_text())
    assert report["decision"] == "failed" and "no-such-version" in report["reason"]
    assert "FAILED" in (result.work_dir / "report.md").read_text()
    assert "Nothing registered" in render_markdown(report)


def test_the_cli_module_is_torch_free_at_import():
    code = "import sys, encoders.retrain_cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_keeps_looping_after_a_crashed_run(monkeypatch, tmp_path):
    import encoders.retrain as retrain

    outcomes = iter([RuntimeError("report writer crashed"), "done"])
    calls, sleeps, seen = [], [], []

    def fake_run_once(settings, config):
        calls.append(1)
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    class Stop(Exception):
        pass

    def fake_sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise Stop

    monkeypatch.setattr(retrain, "run_once", fake_run_once)
    monkeypatch.setattr(retrain.time, "sleep", fake_sleep)
    with pytest.raises(Stop):
        retrain.run_every(Settings(), RetrainConfig(work_root=tmp_path), 3600.0, on_result=seen.append)
    assert len(calls) == 2 and seen == ["done"]
    assert all(3500 < s <= 3600 for s in sleeps)  # one run per interval, minus the run's own time
