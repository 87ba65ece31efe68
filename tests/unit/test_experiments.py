"""Online experiments' pure parts: the stable assignment, team-draft interleaving, the credits."""

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from core.contracts import RecommendedItem
from state.window import UserWindow
from stream_app.experiments import (
    CONTROL,
    INTERLEAVED,
    TREATMENT,
    Credit,
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
