"""The business rules a list obeys, as pure functions over plain values (docs/topics.md, "Rules").

- Repeats: which items the user interacted with a list leaves out (`repeat_policy`): all of them
  (`exclude_seen`, MovieLens: nobody rates a film twice), those purchased (`exclude_purchased`: the item's
  strongest event weighs at least as much as a `purchase`), or none (`allow`). "Interacted with" is the
  window's events and the window's `seen_items`, which reach further back (state/window.py).
- Categories: only items in one of `categories` (none given: any), never one in `exclude_categories`.
- Diversity: at most `max_per_category` items of one category in a list (0: no cap); an item counts for
  each of its categories, and one without categories is not capped.

Settings give the defaults (`worker.*`); `GET /recommendations` overrides them per request (`from_query`).
The Recommender applies them before the top-k is cut: exclusions and categories mask the scores, the cap
is a greedy pass over a longer ranked list. A list left with fewer than k items says why (`short_reason`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import chain
from typing import get_args

from core.errors import InvalidRequest
from core.settings import PURCHASE, WorkerSettings
from state.window import UserWindow

REPEAT_POLICIES: tuple[str, ...] = get_args(WorkerSettings.model_fields["repeat_policy"].annotation)
QUERY_PARAMS = ("categories", "exclude_categories", "max_per_category", "repeat_policy")
MAX_NAMES_IN_MESSAGE = 30


@dataclass(frozen=True)
class Rules:
    repeat_policy: str = "exclude_seen"
    categories: frozenset[str] = frozenset()
    exclude_categories: frozenset[str] = frozenset()
    max_per_category: int = 0

    @classmethod
    def from_settings(cls, worker: WorkerSettings) -> Rules:
        return cls(
            worker.repeat_policy,
            frozenset(worker.categories),
            frozenset(worker.exclude_categories),
            worker.max_per_category,
        )

    def describe(self) -> str:
        """The rules in effect, in words (for `short_reason`)."""
        parts = [f"repeat_policy={self.repeat_policy}"]
        if self.categories:
            parts.append(f"categories={','.join(sorted(self.categories))}")
        if self.exclude_categories:
            parts.append(f"exclude_categories={','.join(sorted(self.exclude_categories))}")
        if self.max_per_category:
            parts.append(f"max_per_category={self.max_per_category}")
        return ", ".join(parts)


def excluded_items(window: UserWindow, policy: str, weights: Mapping[str, float]) -> set[str]:
    """The items `policy` leaves out of this user's lists. The window's events count as well as the seen
    items: a window stored before `seen_items` existed (or with `seen_items_max` 0) has none of them."""
    if policy == "allow":
        return set()
    if policy == "exclude_seen":
        return set(window.item_ids).union(window.seen_items)
    touched = chain(zip(window.item_ids, window.event_types), zip(window.seen_items, window.seen_types))
    purchase = weights[PURCHASE]
    return {item for item, kind in touched if weights.get(kind, 1.0) >= purchase}


def at_most_per_category(
    ranked: Iterable[tuple[str, float]], k: int, cap: int, categories_of: Callable[[str], Sequence[str]]
) -> list[tuple[str, float]]:
    """The first `k` of `ranked` (best first) that keep every category at `cap` items or fewer: greedy, an
    item is skipped when one of its categories is full. `cap` 0: the first `k`."""
    picks: list[tuple[str, float]] = []
    counts: dict[str, int] = {}
    for item, score in ranked:
        if len(picks) == k:
            break
        names = categories_of(item) if cap else ()
        if any(counts.get(name, 0) >= cap for name in names):
            continue
        for name in names:
            counts[name] = counts.get(name, 0) + 1
        picks.append((item, score))
    return picks


def short_reason(n_items: int, k: int, rules: Rules) -> str | None:
    """Why a list holds `n_items` < `k` items (None when it holds k): fewer live items pass the rules."""
    if n_items >= k:
        return None
    return f"{n_items} of {k}: no more items in the catalog pass the rules ({rules.describe()})"


def from_query(
    pairs: Iterable[tuple[str, str]], default: Rules, known_categories: Collection[str], event_types: Collection[str]
) -> Rules:
    """The rules of one request: `default` with the query's parameters laid over it. Raises InvalidRequest
    (HTTP 400) on an unknown parameter, one given twice, a malformed value or an unknown category."""
    given: dict[str, str] = {}
    for name, value in pairs:
        if name not in QUERY_PARAMS:
            raise InvalidRequest(f"unknown parameter {name!r}; expected one of {', '.join(QUERY_PARAMS)}")
        if name in given:
            raise InvalidRequest(f"parameter {name!r} given more than once")
        given[name] = value
    changes: dict = {}
    for name in ("categories", "exclude_categories"):
        if name in given:
            changes[name] = _category_list(name, given[name], known_categories)
    if "max_per_category" in given:
        value = given["max_per_category"]
        if not value.isascii() or not value.isdigit():
            raise InvalidRequest(f"max_per_category must be a whole number >= 0 (0: no cap), got {value!r}")
        changes["max_per_category"] = int(value)
    if "repeat_policy" in given:
        policy = given["repeat_policy"]
        if policy not in REPEAT_POLICIES:
            raise InvalidRequest(f"unknown repeat_policy {policy!r}; expected one of {', '.join(REPEAT_POLICIES)}")
        if policy == "exclude_purchased" and PURCHASE not in event_types:
            raise InvalidRequest(
                f"repeat_policy exclude_purchased needs a {PURCHASE!r} event type; this worker has none"
            )
        changes["repeat_policy"] = policy
    rules = replace(default, **changes)
    both = rules.categories & rules.exclude_categories
    if both:
        raise InvalidRequest(f"categories both included and excluded: {', '.join(sorted(both))}")
    return rules


def _category_list(name: str, value: str, known: Collection[str]) -> frozenset[str]:
    names = [n.strip() for n in value.split(",")]
    if not all(names):
        raise InvalidRequest(f"{name} must be a comma-separated list of category names, got {value!r}")
    unknown = sorted({n for n in names if n not in known})
    if unknown:
        listed = sorted(known)
        more = f" and {len(listed) - MAX_NAMES_IN_MESSAGE} more" if len(listed) > MAX_NAMES_IN_MESSAGE else ""
        raise InvalidRequest(
            f"unknown {'category' if len(unknown) == 1 else 'categories'} in {name}: {', '.join(map(repr, unknown))}; "
            f"the catalog has {', '.join(listed[:MAX_NAMES_IN_MESSAGE]) or 'none'}{more}"
        )
    return frozenset(names)
