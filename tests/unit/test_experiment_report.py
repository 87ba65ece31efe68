"""The experiment report's judging and statistics, over plain event rows and records (no broker)."""

import math

import numpy as np
import pytest

from export.experiment_report import (
    MIN_USERS,
    EventRow,
    Judged,
    Tally,
    UserRatio,
    events_to_significance,
    format_report,
    judge,
)
from stream_app.experiments import Credit


def judged(user: str, list_variant: str, hit: bool, credited: str | None = None) -> Judged:
    return Judged(0, user, Credit(list_variant, (credited or list_variant) if hit else None, "click"))


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


def test_the_ratio_variance_is_clustered_by_user_and_kept_in_constant_time():
    # One event per user: the binomial variance (times m / (m - 1)).
    ratio = UserRatio()
    for n in range(100):
        ratio.add(f"u{n}", n < 30, 1)
    assert ratio.value == pytest.approx(0.3)
    assert ratio.variance() == pytest.approx(0.3 * 0.7 / 100 * 100 / 99)
    # Ten events per user, each user all hits or all misses: as uncertain as ten times fewer events.
    clustered = UserRatio()
    for n in range(100):
        for _ in range(10):
            clustered.add(f"u{n}", n < 30, 1)
    assert clustered.variance() == pytest.approx(ratio.variance())  # not the binomial's 0.3 * 0.7 / 1000
    # The running sums agree with the formula over per-user totals, whatever the order of the events.
    rng = np.random.default_rng(0)
    mixed = UserRatio()
    for user, hit in zip(rng.integers(0, 40, 500), rng.random(500) < 0.4):
        mixed.add(f"u{user}", int(hit), 1)
    h, n = (np.array(c, dtype=float) for c in zip(*mixed.per_user.values()))
    r, m = h.sum() / n.sum(), len(h)
    assert mixed.variance() == pytest.approx(((h - r * n) ** 2).sum() / n.sum() ** 2 * m / (m - 1))
    few = UserRatio()
    for n in range(MIN_USERS - 1):
        few.add(f"u{n}", 1, 1)
    assert few.variance() == math.inf  # no interval from a handful of users


def test_a_difference_significant_only_with_users_behind_it():
    tally = Tally("ab")
    for n in range(40):
        tally.add(judged(f"u{n}", "treatment" if n % 2 else "control", hit=n % 2 == 1))
    estimate, low, high = tally.difference()
    assert estimate == 1.0 and low > 0
    one_user_each = Tally("ab")
    for _ in range(50):  # many events, two users: proves nothing
        one_user_each.add(judged("a", "treatment", hit=True))
        one_user_each.add(judged("b", "control", hit=False))
    assert one_user_each.difference()[1] == -math.inf
    share = Tally("interleave")
    for n in range(100):
        share.add(judged(f"u{n}", "interleaved", hit=True, credited="treatment" if n < 55 else "control"))
    estimate, low, high = share.difference()
    assert estimate == pytest.approx(0.05) and low < 0 < high  # 55 of 100 users' credits: not significant


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
