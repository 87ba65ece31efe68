"""The business rules on the real path: Apache Kafka, a worker process, its RocksDB windows, HTTP.

Method. One worker serves the baseline model over the first 200 ml-100k films (catalog categories: their
genres), configured with a cap of 3 items per category. Three users:

- `probe` views three films 60 times over; its list's top item is X, the film its window points to most.
- `u` first clicks X, then makes the same 60 views: X leaves the 50-event window, and `u`'s user vector is
  `probe`'s, so without the seen items X would head `u`'s list too. It must not (it is in `u`'s seen items),
  while over HTTP with `repeat_policy=allow` (cap off) it comes back.
- `collector` views 195 of the 200 films: only the 5 others may be recommended, so its record is short,
  and says so (with the 50-event window alone it would hold 10 items).

Then over HTTP: categories included and excluded, the cap per request, a short list, and 400s with their
reasons for bad parameters. Last, the stored windows (RocksDB, worker stopped) hold 50 events and the seen
items beyond them.
"""

import json
import time
from collections import Counter
from urllib.parse import quote

import pytest

from stream_app.demo import publish_catalog
from tests.integration.conftest import consume_until, event, latest_by_user, ml100k_items, produce, read_windows, run

pytestmark = pytest.mark.integration

CATALOG = ml100k_items(200)
CATEGORIES = {key: tuple(value.get("categories") or ()) for key, value in CATALOG}
WINDOW_FILMS = ["172", "181", "62"]  # Empire Strikes Back, Return of the Jedi, Stargate
CAP = 3


def views(user: str, start: int, n: int) -> list[tuple[bytes, bytes]]:
    return [event(start + i, user, WINDOW_FILMS[i % len(WINDOW_FILMS)]) for i in range(n)]


def wait_for_triggers(settings, triggers: dict[str, str]) -> dict[str, dict]:
    def done(records):
        latest = latest_by_user(records)
        return all(latest.get(u, {}).get("trigger_event_id") == e for u, e in triggers.items())

    return latest_by_user(run(consume_until(settings, settings.topics.recommendations, done)))


def ids(items: list[dict]) -> list[str]:
    return [i["item_id"] for i in items]


def most_per_category(items: list[dict]) -> int:
    return max(Counter(c for i in items for c in CATEGORIES[i["item_id"]]).values(), default=0)


def test_seen_items_categories_cap_and_short_lists(settings, start_worker):
    started = time.monotonic()
    settings = settings.replace(worker={"max_per_category": CAP})
    k = settings.worker.top_k
    run(publish_catalog(settings, CATALOG))
    worker = start_worker(settings)
    ready = time.monotonic()

    run(produce(settings, settings.topics.events, views("probe", 0, 60)))
    probe = wait_for_triggers(settings, {"probe": "probe-59"})["probe"]
    x = probe["items"][0]["item_id"]

    hoard = [key for key, _ in CATALOG[:-5]]
    run(
        produce(
            settings,
            settings.topics.events,
            [event(0, "u", x, "click"), *views("u", 1, 60), *(event(n, "collector", i) for n, i in enumerate(hoard))],
        )
    )
    latest = wait_for_triggers(settings, {"u": "u-60", "collector": f"collector-{len(hoard) - 1}"})
    u, collector = latest["u"], latest["collector"]

    def get(query: str) -> tuple[int, dict]:
        status, body = worker.get(f"/recommendations/u?{query}")
        return status, json.loads(body)

    _, allowed = get("repeat_policy=allow&max_per_category=0")
    _, comedy = get("categories=Comedy&max_per_category=0")
    _, no_drama = get(f"exclude_categories={quote('Drama,Sci-Fi')}")
    _, uncapped = get("max_per_category=0")
    _, capped_1 = get("max_per_category=1")
    _, noir = get("categories=Film-Noir&repeat_policy=allow")
    refusals = {
        query: get(query)
        for query in ["categories=Horor", "max_per_category=two", "categories=", "colour=red", "repeat_policy=never"]
    }
    answered = time.monotonic()
    worker.stop()
    stored = read_windows(settings.worker.data_dir)

    print(f"\nprobe (window: {WINDOW_FILMS} x 60 views): {ids(probe['items'])}; X = {x} {CATEGORIES[x]}")
    print(f"u (X clicked, then the same 60 views): {ids(u['items'])} short={u['short']}")
    print(f"u over HTTP, repeat_policy=allow, no cap: {ids(allowed['items'])}")
    print(f"collector (viewed {len(hoard)} of {len(CATALOG)}): {ids(collector['items'])} short={collector['short']!r}")
    print(f"u ?categories=Comedy: {ids(comedy['items'])}; ?exclude_categories=Drama,Sci-Fi: {ids(no_drama['items'])}")
    print(
        f"u most items of one category: records (cap {CAP}) {most_per_category(u['items'])}, "
        f"?max_per_category=0 {most_per_category(uncapped['items'])}, =1 {most_per_category(capped_1['items'])} "
        f"({len(capped_1['items'])} items, short={capped_1['short']!r})"
    )
    print(f"u ?categories=Film-Noir: {ids(noir['items'])} short={noir['short']!r}")
    for query, (status, body) in refusals.items():
        print(f"?{query} -> {status} {body['error']}")
    print(
        f"stored windows: u {len(stored['u'].item_ids)} events, {len(stored['u'].seen_items)} seen items; "
        f"collector {len(stored['collector'].item_ids)} events, {len(stored['collector'].seen_items)} seen items"
    )
    print(f"worker start {ready - started:.1f} s, events to the last answer {answered - ready:.1f} s")

    # Seen more than 50 events ago: never again, unless repeats are allowed.
    assert x not in ids(u["items"]) and len(u["items"]) == k and u["short"] is None
    assert x in ids(allowed["items"])
    assert stored["u"].item_ids.count(x) == 0 and x in stored["u"].seen_items
    assert not set(ids(collector["items"])) & set(hoard) and 0 < len(collector["items"]) < k
    assert collector["short"].startswith(f"{len(collector['items'])} of {k}:")
    assert len(stored["collector"].item_ids) == 50 and set(stored["collector"].seen_items) == set(hoard)
    # Categories, over HTTP: full lists from the catalog's categories.
    assert len(comedy["items"]) == k and all("Comedy" in CATEGORIES[i] for i in ids(comedy["items"]))
    assert len(no_drama["items"]) == k
    assert not any({"Drama", "Sci-Fi"} & set(CATEGORIES[i]) for i in ids(no_drama["items"]))
    # The cap: configured for records and HTTP, per request too; it binds (the uncapped list breaks it).
    assert most_per_category(u["items"]) <= CAP < most_per_category(uncapped["items"])
    assert most_per_category(capped_1["items"]) == 1
    assert (capped_1["short"] is None) == (len(capped_1["items"]) == k)
    # A category with one film: a short list that says so.
    assert ids(noir["items"]) == [i for i, c in CATEGORIES.items() if "Film-Noir" in c]
    assert noir["short"].startswith(f"1 of {k}:") and "categories=Film-Noir" in noir["short"]
    # Bad parameters: 400 with the reason.
    assert {query: status for query, (status, _) in refusals.items()} == dict.fromkeys(refusals, 400)
    assert "unknown category in categories: 'Horor'" in refusals["categories=Horor"][1]["error"]
    assert "whole number" in refusals["max_per_category=two"][1]["error"]
    assert "unknown parameter 'colour'" in refusals["colour=red"][1]["error"]
