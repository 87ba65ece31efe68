"""Online experiments' pure parts: the stable assignment, team-draft interleaving, the credits."""

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from core.contracts import ExperimentRecord, RecommendedItem
from state.window import UserWindow
from stream_app.experiments import (
    CONTROL,
    INTERLEAVED,
    TREATMENT,
    Credit,
    LiveExperiment,
    assign,
    bucket,
    credits,
    draft_seed,
    team_draft,
)

REPO = Path(__file__).resolve().parents[2]


def ranking(*ids: str) -> list[RecommendedItem]:
    return [RecommendedItem(item_id=i, score=1.0 / (n + 1)) for n, i in enumerate(ids)]


def test_assignment_is_stable_and_differs_between_experiments():
    users = [f"user{n}" for n in range(2000)]
    first = [assign("exp-a", u, 0.5) for u in users]
    assert first == [assign("exp-a", u, 0.5) for u in users]  # same user, same variant, every call
    other = [assign("exp-b", u, 0.5) for u in users]
    assert 0.4 < sum(a != b for a, b in zip(first, other)) / len(users) < 0.6  # a new experiment reshuffles


def test_assignment_is_the_same_in_another_process():
    """Every worker, and a restarted one, must put a user in the same variant: not Python's salted hash()."""
    code = "from stream_app.experiments import bucket; print(repr([bucket('exp', f'u{n}') for n in range(50)]))"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == repr([bucket("exp", f"u{n}") for n in range(50)])


def test_a_user_in_treatment_stays_there_when_the_share_grows():
    users = [f"u{n}" for n in range(1000)]
    small = {u for u in users if assign("grow", u, 0.1) == TREATMENT}
    large = {u for u in users if assign("grow", u, 0.3) == TREATMENT}
    assert small <= large


@pytest.mark.parametrize("share", [0.1, 0.5, 0.8])
def test_shares_are_within_tolerance(share):
    n = 20_000
    treated = sum(assign("share-test", f"user-{i}", share) == TREATMENT for i in range(n))
    tolerance = 4 * (share * (1 - share) / n) ** 0.5  # 4 standard deviations of a binomial share
    assert abs(treated / n - share) < tolerance


def test_team_draft_alternates_and_attributes_each_item_to_its_picker():
    control, treatment = ranking("a", "b", "c", "d"), ranking("b", "e", "a", "f")
    merged = team_draft(control, treatment, k=4, seed="s")
    ids = [i.item_id for i in merged]
    assert len(ids) == len(set(ids)) == 4
    picks = Counter(i.variant for i in merged)
    assert picks[CONTROL] == picks[TREATMENT] == 2  # each round, each team picks once
    for item in merged:  # each team picks its best item not taken yet, in its own order
        own = control if item.variant == CONTROL else treatment
        assert item.item_id in {i.item_id for i in own}
    for n in range(0, 4, 2):
        pair = merged[n : n + 2]
        assert {i.variant for i in pair} == {CONTROL, TREATMENT}
    assert merged == team_draft(control, treatment, k=4, seed="s")  # the seed decides the coin: the same list


def test_team_draft_is_fair_over_coin_tosses():
    """Identical rankings: the first pick goes to each team half the time, and so does the credit for the
    top item (no variant is favoured by the merge itself)."""
    same = ranking("a", "b", "c", "d", "e", "f")
    first = Counter(team_draft(same, same, 6, draft_seed("exp", f"u{n}", "e1"))[0].variant for n in range(4000))
    assert abs(first[CONTROL] / 4000 - 0.5) < 0.03


def test_team_draft_fills_from_the_other_team_when_one_runs_out():
    merged = team_draft(ranking("a"), ranking("b", "c", "d"), k=4, seed="x")
    assert sorted(i.item_id for i in merged) == ["a", "b", "c", "d"]
    assert Counter(i.variant for i in merged) == {TREATMENT: 3, CONTROL: 1}
    assert team_draft([], [], k=3, seed="x") == []


def test_credits_name_the_variant_that_contributed_the_item():
    shown, variants = ["a", "b", "c"], [CONTROL, TREATMENT, CONTROL]
    got = list(credits(INTERLEAVED, shown, variants, [("b", "click"), ("z", "view"), ("c", "purchase")]))
    assert got == [
        Credit(INTERLEAVED, TREATMENT, "click"),
        Credit(INTERLEAVED, None, "view"),
        Credit(INTERLEAVED, CONTROL, "purchase"),
    ]


def test_the_stored_window_remembers_the_variants_shown():
    window = UserWindow(recommended=["a"], shown_variants=[TREATMENT])
    assert UserWindow.decode(window.encode()).shown_variants == [TREATMENT]
    assert UserWindow.decode(b'{"recommended":["a"]}').shown_variants == []  # stored before experiments


def live(mode: str, share: float = 0.5) -> LiveExperiment:
    """Stand-ins for the variants' models: serve() reads their version and k; scoring is the `score` given."""
    record = ExperimentRecord(
        name="exp",
        state="running",
        mode=mode,
        variants={"control": {"version": "v1", "sha256": "a"}, "treatment": {"version": "v2", "sha256": "b"}},
        treatment_share=share,
        at="2026-12-06T00:00:00+00:00",
    )
    models = {CONTROL: SimpleNamespace(model_version="v1", k=4), TREATMENT: SimpleNamespace(model_version="v2", k=4)}
    return LiveExperiment(record, models)


def score(model, windows):
    """Each model's own ranking for every user: v1 ranks a..f, v2 f..a."""
    ids = ["a", "b", "c", "d", "e", "f"]
    return {user: ranking(*(ids if model.model_version == "v1" else ids[::-1])) for user in windows}


def test_ab_serves_each_user_from_their_variant_and_tags_every_item():
    users = [f"user{n}" for n in range(200)]
    served = live("ab", 0.3).serve({u: UserWindow() for u in users}, {u: "e1" for u in users}, score)
    assert list(served) == users  # in the windows' order
    for user, s in served.items():
        variant = assign("exp", user, 0.3)
        assert (s.experiment, s.variant, s.model_version) == ("exp", variant, "v1" if variant == CONTROL else "v2")
        assert {i.variant for i in s.items} == {variant}
    assert 0.2 < sum(s.variant == TREATMENT for s in served.values()) / len(users) < 0.4


def test_interleave_serves_the_team_draft_of_both_rankings():
    served = live("interleave").serve({"u1": UserWindow()}, {"u1": "e7"}, score)["u1"]
    expected = team_draft(ranking(*"abcdef"), ranking(*"fedcba"), 4, draft_seed("exp", "u1", "e7"))
    assert (served.items, served.variant, served.model_version) == (expected, INTERLEAVED, "v1+v2")


def test_the_live_credits_follow_the_mode():
    stored = {"u1": UserWindow(recommended=["a", "b"], shown_variants=[TREATMENT, TREATMENT]), "u2": UserWindow()}
    events = {"u1": [("b", "click")], "u2": [("a", "click")]}
    assert live("ab").credits(stored, events) == [Credit(TREATMENT, TREATMENT, "click")]  # u2 saw no list
    stored["u1"] = UserWindow(recommended=["a", "b"], shown_variants=[CONTROL, TREATMENT])
    assert live("interleave").credits(stored, events) == [Credit(INTERLEAVED, TREATMENT, "click")]
