"""The demo's pure parts (stream_app/demo.py): what it waits for, what its header says, which events it
replays again after a swap, how it starts the training. The whole demo runs in tests/integration/test_demo.py."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from stream_app.demo import (
    DemoState,
    Training,
    caught_up,
    clock,
    free_port,
    last_events,
    last_line,
    train_command,
    watched_users,
)


def event(user: str, n: int) -> tuple[str, dict]:
    return user, {"event_id": f"{user}-{n}", "user_id": user, "item_id": str(n)}


EVENTS = [event("a", 1), event("b", 1), event("a", 2), event("c", 1), event("a", 3), event("b", 2)]


def record(user: str, trigger: str, version: str = "base") -> dict:
    return {"user_id": user, "trigger_event_id": trigger, "model_version": version, "items": []}


def state(training: Training | None) -> DemoState:
    return DemoState(started=0.0, titles={}, watched=["a", "b"], events=EVENTS, console_url=None, training=training)


def test_the_most_active_users_are_watched_and_their_last_events_replayed_again():
    assert watched_users(EVENTS, 2) == ["a", "b"]
    assert last_events(EVENTS, ["a", "b"]) == [event("a", 3), event("b", 2)]


def test_caught_up_needs_each_users_last_event_and_the_version_once_given():
    latest = {"a": record("a", "a-3"), "b": record("b", "b-2")}
    assert caught_up(latest, EVENTS)
    assert not caught_up(latest | {"b": record("b", "b-1")}, EVENTS)
    assert not caught_up(latest, EVENTS, version="trained")
    assert caught_up({u: r | {"model_version": "trained"} for u, r in latest.items()}, EVENTS, version="trained")


def test_the_demo_waits_for_the_swap_unless_training_is_off_or_failed(tmp_path: Path):
    def caught_up_state(training: Training | None) -> DemoState:
        s = state(training)
        s.record(record("a", "a-3"), now=1.0)
        s.record(record("b", "b-2"), now=2.0)
        return s

    assert caught_up_state(None).finished(replayed=True)
    assert not caught_up_state(None).finished(replayed=False)
    training = Training(budget_s=180, log_path=tmp_path / "train.log")
    waiting = caught_up_state(training)
    assert not waiting.finished(replayed=True)  # training still runs
    waiting.swapped_to = "trained"
    assert not waiting.finished(replayed=True)  # the watched lists still come from the baseline
    waiting.record(record("a", "a-3", "trained"), now=3.0)
    waiting.record(record("b", "b-2", "trained"), now=4.0)
    assert waiting.finished(replayed=True)
    assert waiting.first_record_at == 1.0 and waiting.versions_seen == ["base", "trained"]
    training.failed = "training exited with 1"
    assert caught_up_state(training).finished(replayed=True)  # the baseline goes on serving


def test_the_training_line_counts_against_its_budget_and_shows_the_trainers_progress(tmp_path: Path):
    log = tmp_path / "train.log"
    log.write_bytes(b"loading\ntrain:  10%| 18/180 s of the budget\rtrain:  20%| 36/180 s of the budget\r")
    training = Training(budget_s=180, log_path=log)
    assert training.status(now=0.0, swapped_to=None) == "training starts once the baseline serves"
    training.process, training.started = object(), 100.0
    assert training.status(now=137.0, swapped_to=None) == (
        "training in the background: 0:37 elapsed, budget 3:00 + export · train:  20%| 36/180 s of the budget"
    )
    training.registered = "v2"
    assert "v2 announced" in training.status(now=300.0, swapped_to=None)
    assert training.status(now=310.0, swapped_to="v2") == "trained model v2 serving (hot-swapped)"


@pytest.mark.parametrize("seconds, shown", [(0, "0:00"), (59.6, "1:00"), (293, "4:53"), (-3, "0:00")])
def test_clock(seconds: float, shown: str):
    assert clock(seconds) == shown


def test_last_line_of_a_missing_or_empty_log_is_empty(tmp_path: Path):
    assert last_line(tmp_path / "none.log") == ""
    (tmp_path / "empty.log").write_text("\n\r\n")
    assert last_line(tmp_path / "empty.log") == ""


def test_the_training_is_streamrec_train_with_the_budget():
    assert train_command(Path("/data/ml-100k"), 0.2) == (
        "-m", "streamrec.cli", "train", "--data", "/data/ml-100k", "--max-minutes", "0.2",
    )  # fmt: skip


def test_the_console_takes_its_port_or_another_if_that_one_is_taken():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert free_port("127.0.0.1", port) != port
    assert free_port("127.0.0.1", port) == port
