"""The experiment report's judging and statistics, over plain event rows and records (no broker)."""

import math

import pytest

from export.experiment_report import (
    EventRow,
    credit_share_interval,
    events_to_significance,
    format_report,
    judge,
    rate_difference_interval,
)


def row(user: str, n: int, item: str, kind: str = "click") -> EventRow:
    return EventRow(user, f"{user}-e{n}", item, kind, 1_000 * n)


def record(user: str, trigger: int, items: list[tuple[str, str]], variant: str, experiment="exp", version="v1"):
    return {
        "user_id": user,
        "items": [{"item_id": i, "score": 1.0, "because": None, "variant": v} for i, v in items],
        "model_version": version,
        "generated_at": 0,
        "trigger_event_id": f"{user}-e{trigger}",
        "short": None,
        "experiment": experiment,
        "variant": variant,
    }


def test_each_event_is_judged_against_the_users_last_list_before_it():
    events = [row("u1", 0, "a"), row("u1", 1, "x"), row("u1", 2, "y"), row("u2", 0, "b"), row("u2", 1, "c")]
    records = [
        record("u1", 0, [("x", "treatment")], "treatment", version="v2"),  # shown after e0: e1 hits
        record("u1", 1, [("z", "treatment")], "treatment", version="v2"),  # shown after e1: e2 misses
        record("u2", 0, [("c", "control")], "control"),  # e1 of u2 hits
        record("u2", 1, [("q", "control")], "control", experiment=None),  # outside the experiment: not counted
    ]
    outcome = judge("exp", events, records)
    t, c = outcome.variants["treatment"], outcome.variants["control"]
    assert (t.exposures, t.events, t.hits) == (2, 2, 1)
    assert (c.exposures, c.events, c.hits) == (1, 1, 1)
    assert outcome.mode == "ab" and outcome.model_versions == {"treatment": "v2", "control": "v1"}


def test_a_list_from_outside_the_experiment_judges_nothing_and_a_redelivered_event_counts_once():
    events = [row("u1", 0, "a"), row("u1", 1, "x"), row("u1", 1, "x")]
    outcome = judge("exp", events, [record("u1", 0, [("x", "control")], "control", experiment="other")])
    assert outcome.judged == []
    outcome = judge("exp", events, [record("u1", 0, [("x", "control")], "control")])
    assert len(outcome.judged) == 1


def test_interleaved_hits_credit_the_variant_that_contributed_the_item():
    events = [row("u1", 0, "a"), row("u1", 1, "t1", "purchase"), row("u2", 0, "a"), row("u2", 1, "c1")]
    items = [("c1", "control"), ("t1", "treatment")]
    records = [
        record("u1", 0, items, "interleaved", version="v1+v2"),
        record("u2", 0, items, "interleaved", version="v1+v2"),
    ]
    outcome = judge("exp", events, records)
    assert outcome.mode == "interleave" and outcome.model_versions == {"control": "v1", "treatment": "v2"}
    t, c = outcome.variants["treatment"], outcome.variants["control"]
    assert (t.hits, t.purchase_hits, c.hits, c.purchase_hits) == (1, 1, 1, 0)
    assert t.exposures == c.exposures == 2 and t.events == c.events == 2
    assert "credit share 0.500" in format_report(outcome)


def test_intervals_and_verdicts():
    estimate, low, high = rate_difference_interval(300, 1000, 200, 1000)
    assert estimate == pytest.approx(0.1) and 0 < low < 0.1 < high
    assert rate_difference_interval(0, 0, 5, 10)[1] == -math.inf  # a side without events: no interval
    estimate, low, high = credit_share_interval(55, 45)
    assert estimate == pytest.approx(0.05) and low < 0 < high  # 55/45 of 100 is not significant
    assert credit_share_interval(550, 450)[1] > 0  # ten times the credits is
    assert rate_difference_interval(1, 1, 0, 1)[1] < 0  # one hit against one miss proves nothing


def test_the_verdict_and_when_it_became_significant():
    # Treatment's users hit every time, control's never: significant after a few events, and it stays so.
    events, records = [], []
    for n in range(40):
        user, variant = f"u{n}", "treatment" if n % 2 else "control"
        events += [row(user, 0, "a"), row(user, 1, "hit" if variant == "treatment" else "miss")]
        records.append(record(user, 0, [("hit", variant)], variant))
    outcome = judge("exp", events, records)
    assert outcome.verdict() == "treatment is better than control"
    needed = events_to_significance(outcome)
    assert needed is not None and 2 < needed < 40
    flat = judge("exp", events[:4], records[:2])  # one event each: nothing significant
    assert flat.verdict() == "not yet significant" and events_to_significance(flat) is None
