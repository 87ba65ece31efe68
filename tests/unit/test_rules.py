"""The business rules (stream_app/rules.py) as pure functions, the seen items a window keeps
(state/window.py), the category masks of the item index, and the Recommender applying them before the
top-k is cut (a model-free Recommender: the baseline user vector over hand-made item vectors)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from core.errors import InvalidRequest
from core.features import FeatureSpec
from core.settings import Settings
from state.item_index import ItemIndex
from state.popularity import TrendingCounter
from state.window import UserWindow, WindowEvent
from stream_app.batch import window_from_history
from stream_app.recommender import Recommender
from stream_app.rules import Rules, at_most_per_category, excluded_items, from_query, short_reason
from stream_app.steps import UserEvents, advance_windows, build_records

WEIGHTS = {"view": 1.0, "click": 2.0, "purchase": 4.0}


def events(*pairs: tuple[str, str]) -> list[WindowEvent]:
    return [WindowEvent(f"e{n}", item, kind, float(n)) for n, (item, kind) in enumerate(pairs)]


# -- seen items ----------------------------------------------------------------------------------


def test_seen_items_keep_the_strongest_type_move_on_each_touch_and_drop_the_oldest():
    window = UserWindow().with_seen(events(("a", "purchase"), ("b", "view"), ("a", "view")), 3, WEIGHTS)
    assert (window.seen_items, window.seen_types) == (["b", "a"], ["view", "purchase"])  # a: touched last
    window = window.with_seen(events(("c", "click"), ("d", "view")), 3, WEIGHTS)
    assert (window.seen_items, window.seen_types) == (["a", "c", "d"], ["purchase", "click", "view"])  # b dropped
    assert window.with_seen(events(("e", "view")), 0, WEIGHTS).seen_items == []  # 0: off


def test_the_window_carries_its_seen_items_and_old_records_load_without_them():
    window = UserWindow().with_seen(events(("a", "view")), 10, WEIGHTS)
    assert window.with_events(events(("b", "view")), 50, 1e9).seen_items == ["a"]
    stored_before = b'{"event_ids":["e1"],"item_ids":["a"],"event_types":["click"],"ts":[10],"recommended":[]}'
    old = UserWindow.decode(stored_before)
    assert (old.item_ids, old.seen_items, old.seen_types) == (["a"], [], [])


def test_the_worker_steps_advance_the_seen_items_and_put_the_short_reason_in_the_record():
    touched = {"u": UserEvents(events(("a", "view"), ("b", "purchase")), [0, 1])}
    updated, _ = advance_windows(touched, {"u": UserWindow()}, 1, 1e9, seen_items_max=10, event_weights=WEIGHTS)
    assert (updated["u"].item_ids, updated["u"].seen_items) == (["b"], ["a", "b"])
    (record,) = build_records(touched, {"u": []}, "v1", now=1.0, short={"u": "0 of 10: …"})
    assert json.loads(record.value)["short"] == "0 of 10: …"
    assert json.loads(build_records(touched, {"u": []}, "v1", now=1.0)[0].value)["short"] is None


def test_predict_windows_see_the_whole_history_not_only_the_last_50_events():
    history = [{"item_id": str(n), "event_type": "view", "ts": 1_000 * n} for n in range(80)]
    window = window_from_history(history, Settings())
    assert len(window.item_ids) == 50 and window.seen_items == [str(n) for n in range(80)]
    assert window_from_history(history, Settings(worker={"seen_items_max": 0})).seen_items == []


# -- repeat policy -------------------------------------------------------------------------------


def test_each_repeat_policy_excludes_its_items_from_the_window_and_the_seen_items():
    window = UserWindow().with_events(events(("w1", "view"), ("w2", "purchase")), 50, 1e9)
    window = window.derive(seen_items=["s1", "s2"], seen_types=["purchase", "click"])
    assert excluded_items(window, "exclude_seen", WEIGHTS) == {"w1", "w2", "s1", "s2"}
    assert excluded_items(window, "exclude_purchased", WEIGHTS) == {"w2", "s1"}
    assert excluded_items(window, "allow", WEIGHTS) == set()


# -- diversity, short lists ----------------------------------------------------------------------


def test_at_most_per_category_is_greedy_in_rank_order_and_counts_every_category_of_an_item():
    ranked = [("ab", 0.9), ("a", 0.8), ("b", 0.7), ("c", 0.6), ("none", 0.5), ("c2", 0.4)]
    categories = {"ab": ("A", "B"), "a": ("A",), "b": ("B",), "c": ("C",), "c2": ("C",), "none": ()}
    picks = at_most_per_category(ranked, 4, 1, categories.__getitem__)
    assert [i for i, _ in picks] == ["ab", "c", "none"]  # a and b: their category is full; c2: C is full
    assert [i for i, _ in at_most_per_category(ranked, 4, 0, categories.__getitem__)] == ["ab", "a", "b", "c"]


def test_short_reason_names_the_rules_only_when_the_list_is_short():
    assert short_reason(10, 10, Rules()) is None
    reason = short_reason(3, 10, Rules(categories=frozenset({"Horror"}), max_per_category=2))
    assert reason.startswith("3 of 10") and "categories=Horror" in reason and "max_per_category=2" in reason


# -- HTTP parameters -----------------------------------------------------------------------------

KNOWN = {"Comedy", "Drama", "Horror"}


def query(text: str) -> list[tuple[str, str]]:
    return [tuple(part.split("=", 1)) for part in text.split("&")] if text else []


def test_query_parameters_override_the_configured_rules():
    default = Rules(exclude_categories=frozenset({"Horror"}), max_per_category=3)
    rules = from_query(
        query("categories=Comedy, Drama&max_per_category=0&repeat_policy=allow"), default, KNOWN, WEIGHTS
    )
    assert rules == Rules("allow", frozenset({"Comedy", "Drama"}), frozenset({"Horror"}), 0)
    assert from_query([], default, KNOWN, WEIGHTS) == default


@pytest.mark.parametrize(
    "text, says",
    [
        ("categories=Comedy,Horor", "unknown category in categories: 'Horor'; the catalog has Comedy, Drama, Horror"),
        ("exclude_categories=Comedy,,Drama", "comma-separated list"),
        ("categories=", "comma-separated list"),
        ("max_per_category=two", "whole number"),
        ("max_per_category=-1", "whole number"),
        ("repeat_policy=never", "unknown repeat_policy 'never'"),
        ("category=Comedy", "unknown parameter 'category'"),
        ("categories=Comedy&categories=Drama", "given more than once"),
        ("categories=Comedy&exclude_categories=Comedy", "both included and excluded: Comedy"),
    ],
)
def test_bad_query_parameters_are_refused_with_the_reason(text, says):
    with pytest.raises(InvalidRequest, match=None) as refused:
        from_query(query(text), Rules(), KNOWN, WEIGHTS)
    assert says in str(refused.value)


def test_exclude_purchased_needs_a_purchase_event_type():
    with pytest.raises(InvalidRequest, match="needs a 'purchase' event type"):
        from_query(query("repeat_policy=exclude_purchased"), Rules(), KNOWN, {"view": 1.0})
    with pytest.raises(ValueError, match="needs a 'purchase' event type"):
        Settings(worker={"repeat_policy": "exclude_purchased", "event_weights": {"view": 1.0}})


# -- item index ----------------------------------------------------------------------------------


def test_category_masks_follow_upserts_and_removals():
    index = ItemIndex(dim=2, capacity=2)
    index.upsert("a", np.ones(2), ["Comedy", "Drama"])
    index.upsert("b", np.ones(2), ["Horror"])
    index.upsert("c", np.ones(2))  # grows; no categories
    assert index.category_mask((), ()) is None
    rows = lambda mask: {index.ids[r] for r in np.flatnonzero(mask)}  # noqa: E731
    assert rows(index.category_mask({"Drama", "Horror"}, ())) == {"a", "b"}
    assert rows(index.category_mask((), {"Horror"})) == {"a", "c"}
    assert rows(index.category_mask({"Comedy", "Horror"}, {"Drama"})) == {"b"}
    index.upsert("b", np.ones(2), ["Comedy"])  # recategorised
    index.remove("a")
    assert set(index.rows_in) == {"Comedy"} and index.categories_of("b") == ("Comedy",)
    assert [i for i, _ in index.top_k(np.ones((1, 2)), 5, [set()], index.category_mask((), {"Comedy"}))[0]] == ["c"]


# -- the Recommender under the rules -------------------------------------------------------------

# Item n points at angle n degrees: the closer to the user's items, the higher it ranks.
CATEGORY = {0: "Drama", 1: "Drama", 2: "Comedy", 3: "Drama", 4: "Comedy", 5: "Horror", 6: "Drama", 7: "Horror"}


def recommender(k: int, rules: Rules = Rules()) -> Recommender:
    index = ItemIndex(dim=2)
    for n, category in CATEGORY.items():
        angle = np.radians(n)
        index.upsert(str(n), np.array([np.cos(angle), np.sin(angle)], dtype=np.float32), [category])
    runtime = SimpleNamespace(feature_spec=FeatureSpec(), user_encoder=None)
    return Recommender(runtime, WEIGHTS, k, index, TrendingCounter(3_600), catalog_row={}, rules=rules)


def ids(items) -> list[str]:
    return [i.item_id for i in items]


def test_the_recommender_excludes_seen_items_masks_categories_and_caps_before_the_cut():
    window = UserWindow().with_events(events(("0", "view")), 50, 1e9).derive(seen_items=["1"], seen_types=["view"])
    model = recommender(k=3)
    assert ids(model.recommend([window])[0]) == ["2", "3", "4"]  # 0 (window) and 1 (seen) left out
    assert ids(model.recommend([window], rules=Rules("allow"))[0]) == ["0", "1", "2"]
    assert ids(model.recommend([window], rules=Rules(categories=frozenset({"Horror"})))[0]) == ["5", "7"]
    assert ids(model.recommend([window], rules=Rules(exclude_categories=frozenset({"Drama"})))[0]) == ["2", "4", "5"]
    assert ids(model.recommend([window], rules=Rules(max_per_category=1))[0]) == ["2", "3", "5"]
    capped = recommender(k=3, rules=Rules(max_per_category=1))  # configured: the default of every call
    assert ids(capped.recommend([window])[0]) == ["2", "3", "5"]
    assert [i.because for i in capped.recommend([window])[0]] == ["0", "0", "0"]


def test_a_user_the_capped_pool_leaves_short_is_picked_again_from_the_whole_catalog(monkeypatch):
    monkeypatch.setattr("stream_app.recommender.CAPPED_POOL_PER_ITEM", 1)  # a pool of k = 3: 2, 3, 4
    window = UserWindow().with_events(events(("0", "view"), ("1", "view")), 50, 1e9)
    items = recommender(k=3).recommend([window], rules=Rules(max_per_category=1))[0]
    assert ids(items) == ["2", "3", "5"]


def test_short_lists_and_cold_users_follow_the_rules_too():
    model = recommender(k=3)
    window = UserWindow().with_events(events(("5", "view")), 50, 1e9)
    (items,) = model.recommend([window], rules=Rules(categories=frozenset({"Horror"})))
    assert ids(items) == ["7"] and model.short_reason(items, Rules(categories=frozenset({"Horror"}))).startswith(
        "1 of 3"
    )
    model.observe("7", "purchase", 0.0)
    model.observe("6", "view", 0.0)
    cold = UserWindow().with_events(events(("unknown", "view")), 50, 1e9)  # no item of the catalog: trending
    assert ids(model.recommend([cold])[0]) == ["7", "6", "0"]
    assert ids(
        model.recommend([cold], rules=Rules(exclude_categories=frozenset({"Horror"}), max_per_category=1))[0]
    ) == [
        "6",
        "2",
    ]
