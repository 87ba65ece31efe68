"""Free-text interest (docs/topics.md, `profiles`): the contract of a profile record, the blend of a stated
interest with the behaviour vector (`blend_interest`), and how `Recommender.recommend` serves it: from the
interest alone for a new user, moving to the behaviour as events arrive, unchanged for users without one.
No model and no broker: the item tower is a stand-in that maps a genre word to a direction."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from core.contracts import MAX_INTEREST_CHARS, InvalidRecord, ProfileChange, interest_query, profile_change
from core.features import FeatureSpec
from state.item_index import ItemIndex
from state.popularity import TrendingCounter
from state.window import UserWindow
from stream_app.recommender import Recommender, blend_interest
from stream_app.steps import profile_trigger, score_one_by_one

GENRES = ["horror", "comedy", "western", "drama"]  # direction i of the item space


def profile(user_id="u1", interest="I love horror movies", **extra) -> bytes:
    return json.dumps({"user_id": user_id, "interest": interest, **extra}).encode()


def test_a_profile_sets_or_removes_the_users_interest():
    assert profile_change(b"u1", profile(interest="  I love horror  ", ticket=7), max_bytes=4096) == ProfileChange(
        "u1", "I love horror"
    )
    assert profile_change(b"u1", None, max_bytes=4096) == ProfileChange("u1", None)  # a tombstone removes it


@pytest.mark.parametrize(
    "key, raw, reason",
    [
        (b"u1", profile(interest="   "), "interest: String should have at least 1 character"),
        (b"u1", profile(interest="x" * (MAX_INTEREST_CHARS + 1)), f"at most {MAX_INTEREST_CHARS} characters"),
        (b"u1", profile(interest=["horror"]), "interest: Input should be a valid string"),
        (b"u1", json.dumps({"user_id": "u1"}).encode(), "interest: Field required"),
        (b"u2", profile(), "key b'u2' is not the user_id 'u1'"),
        (b"u1", b"{not json", "not JSON"),
        (None, None, "a tombstone without a key"),
    ],
)
def test_an_invalid_profile_is_rejected_with_the_reason(key, raw, reason):
    with pytest.raises(InvalidRecord, match=reason):
        profile_change(key, raw, max_bytes=4096)


def test_an_ad_hoc_interest_follows_the_same_rule():
    assert interest_query("u1", " westerns ") == "westerns"
    with pytest.raises(InvalidRecord, match="at least 1 character"):
        interest_query("u1", "")


def test_a_new_user_gets_the_interest_alone_and_the_behaviour_takes_over_by_n_over_n_plus_k():
    behaviour = np.array([[30.0, 0, 0, 0]] * 4, dtype=np.float32)  # user vectors are longer than item vectors
    interest = np.array([[0, 0.5, 0, 0]] * 4, dtype=np.float32)
    blended = blend_interest(behaviour, interest, np.array([0, 1, 3, 100], dtype=np.float32), handover_events=1.0)
    np.testing.assert_allclose(blended[:, :2], [[0, 1], [0.5, 0.5], [0.75, 0.25], [100 / 101, 1 / 101]], rtol=1e-6)
    # Mixed after normalising: scaling either input changes nothing.
    np.testing.assert_array_equal(blend_interest(behaviour * 7, interest / 3, np.full(4, 3.0), 1.0)[0], blended[2])
    # Behaviour weighs half after k events, whatever k.
    np.testing.assert_allclose(blend_interest(behaviour[:1], interest[:1], np.array([5.0]), 5.0)[0, :2], [0.5, 0.5])


class StandInItemTower:
    """Text -> the direction of the genre it names (a small bias on the last axis keeps norms positive)."""

    def __init__(self):
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        return np.array([[2.0 * (g in t.lower()) for g in GENRES] for t in texts], dtype=np.float32) + 0.01


def recommender(k: int = 3, handover_events: float = 1.0) -> Recommender:
    """Three items per genre (item vectors along the genre's axis), a baseline model (no user tower)."""
    index = ItemIndex(dim=len(GENRES))
    for g, genre in enumerate(GENRES):
        for n in range(3):
            index.upsert(f"{genre}{n}", np.eye(len(GENRES), dtype=np.float32)[g] * (1.0 + n / 10))
    runtime = SimpleNamespace(feature_spec=FeatureSpec(), user_encoder=None, item_encoder=StandInItemTower())
    return Recommender(
        runtime,
        {"view": 1.0},
        k,
        index,
        TrendingCounter(3_600),
        catalog_row={},
        interest_handover_events=handover_events,
    )


def window(*items: str) -> UserWindow:
    return UserWindow(
        event_ids=[f"e{n}" for n in range(len(items))],
        item_ids=list(items),
        event_types=["view"] * len(items),
        ts=[float(n) for n in range(len(items))],
    )


def ranked(lists) -> list[list[str]]:
    return [[i.item_id for i in items] for items in lists]


def test_without_an_interest_the_lists_are_exactly_what_they_were():
    r = recommender()
    r.observe("drama0", "view", 0.0)
    windows = [window(), window("comedy0"), window("western1", "unknown"), window("unknown")]
    before = [[(i.item_id, i.score, i.because) for i in items] for items in r.recommend(windows)]
    for interests in ([None] * len(windows), None):
        assert [[(i.item_id, i.score, i.because) for i in items] for items in r.recommend(windows, interests)] == before


def test_a_new_user_is_answered_from_their_interest_then_from_their_events():
    r = recommender(k=3, handover_events=1.0)
    (cold,) = r.recommend([window()], ["I love horror movies"])
    assert [i.item_id for i in cold] == ["horror2", "horror1", "horror0"] and all(i.because is None for i in cold)
    # One comedy event: behaviour and interest weigh half each; the comedy seen is excluded.
    (one,) = ranked(r.recommend([window("comedy0")], ["I love horror movies"]))
    assert set(one) <= {"horror2", "horror1", "horror0", "comedy2", "comedy1"} and "comedy2" in one
    # Ten comedy events: the behaviour has taken over.
    many = window(*["comedy0", "comedy1"] * 5)
    (later,) = r.recommend([many], ["I love horror movies"])
    assert later[0].item_id == "comedy2" and later[0].because in {"comedy0", "comedy1"}


def test_each_interest_is_embedded_once_per_model_version():
    r = recommender()
    tower = r.runtime.item_encoder
    for _ in range(3):
        r.recommend([window(), window()], ["westerns", "westerns"])
    assert tower.calls == 1
    assert ranked(r.recommend([window()], ["westerns"])) == [["western2", "western1", "western0"]]


def test_scoring_user_by_user_keeps_each_users_interest():
    r = recommender(k=1)
    windows = {"u1": window(), "u2": window(), "u3": window()}
    lists, failed = score_one_by_one(r.recommend, windows, {"u1": "horror", "u2": "drama"})
    assert {u: [i.item_id for i in items] for u, items in lists.items()} == {
        "u1": ["horror2"],
        "u2": ["drama2"],
        "u3": [r._cold_start(set(), r.index.row_of.keys(), r.rules)[0].item_id],
    }
    assert failed == {}


def test_a_profile_record_is_answered_with_a_trigger_naming_where_it_was_read():
    assert profile_trigger(3, 1207) == "profile@3:1207"
