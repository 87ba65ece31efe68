"""Free-text interest for a new user (docs/topics.md, `profiles`), on Apache Kafka with a real worker process
serving the zero-training baseline (the `settings` fixture's registry).

Method: publish a slice of the ml-100k catalog, start the worker, and send a profile for a user the worker has
never seen ("I love horror movies") among malformed profiles. The worker must answer the profile at once with a
list dominated by horror films (the slice's horror share is printed beside it: chance is far below), dead-letter
the malformed ones with their reasons, and serve the same list on GET /recommendations/{user}, which also takes
an ad-hoc `?interest=` (another genre's list) and refuses a bad one with 400. Then the user's own events arrive
(comedies) and the behaviour takes over (`worker.interest_handover_events`): after the first the list mixes
horror and the rest, after five it has lost most of its horror. Last, forgetting the user deletes the profile too: the worker tombstones it on `profiles`, and
GET answers with no interest."""

import json
import urllib.parse

import pytest

from stream_app.demo import publish_catalog
from stream_app.forget import request_forget
from tests.integration.conftest import consume_until, event, ml100k_items, produce, run, topic_configs

pytestmark = pytest.mark.integration

CATALOG = 300  # ml-100k items: 14 of them horror, 95 comedies
USER = "newcomer"
HORROR = "I love horror movies"
DOMINATED = 6  # of 10: the least share of the stated genre a stated interest must give


def profile(user: str, interest) -> tuple[bytes, bytes]:
    return user.encode(), json.dumps({"user_id": user, "interest": interest}).encode()


def records_of(settings, user: str, done) -> list:
    """The user's values on `recommendations` (None: a tombstone), once `done(values)` holds."""

    def values(records):
        return [None if r.value is None else json.loads(r.value) for r in records if r.key == user.encode()]

    return values(run(consume_until(settings, settings.topics.recommendations, lambda rs: done(values(rs)))))


def in_genre(items: list, genres: dict[str, list[str]], genre: str) -> int:
    return sum(genre in genres[i["item_id"]] for i in items)


def test_a_new_user_with_an_interest_gets_that_genre_until_their_events_take_over(settings, start_worker):
    settings = settings.replace(kafka={"partitions": 2})
    catalog = ml100k_items(CATALOG)
    genres = {item_id: value.get("categories") or [] for item_id, value in catalog}
    titles = {item_id: value["title"] for item_id, value in catalog}
    run(publish_catalog(settings, catalog))
    worker = start_worker(settings)

    malformed = [
        (b"x", b"{not json"),
        profile(USER, "   "),
        (b"someone-else", profile(USER, HORROR)[1]),
    ]
    run(produce(settings, settings.topics.profiles, malformed + [profile(USER, HORROR)]))
    (first,) = records_of(settings, USER, lambda values: len(values) >= 1)
    horror = in_genre(first["items"], genres, "Horror")
    share = sum("Horror" in g for g in genres.values())
    print(
        f"\nprofile {HORROR!r} -> {horror} of {len(first['items'])} horror (catalog: {share} of {CATALOG}); "
        f"trigger {first['trigger_event_id']}: {', '.join(titles[i['item_id']] for i in first['items'][:5])}, ..."
    )
    assert first["trigger_event_id"].startswith("profile@") and len(first["items"]) == settings.worker.top_k
    assert horror >= DOMINATED

    status, body = worker.get(f"/recommendations/{USER}")
    answer = json.loads(body)
    assert status == 200 and answer["interest"] == HORROR and not answer["known_user"]
    assert [i["item_id"] for i in answer["items"]] == [i["item_id"] for i in first["items"]]

    status, body = worker.get(f"/recommendations/{USER}?interest={urllib.parse.quote('I like comedies')}")
    ad_hoc = json.loads(body)
    comedies = in_genre(ad_hoc["items"], genres, "Comedy")
    print(f"?interest='I like comedies' -> {comedies} of 10 comedies")
    assert status == 200 and ad_hoc["interest"] == "I like comedies" and comedies >= DOMINATED
    for bad, reason in [("", "at least 1 character"), ("x" * 501, "at most 500 characters")]:
        status, body = worker.get(f"/recommendations/{USER}?interest={bad}")
        assert status == 400 and reason in json.loads(body)["error"], (status, body)

    dlq = run(consume_until(settings, settings.topics.dlq, lambda records: len(records) >= len(malformed)))
    reasons = sorted(dict(r.headers)["dlq.reason"].decode() for r in dlq)
    print("dead-lettered:", reasons)
    assert {dict(r.headers)["dlq.topic"].decode() for r in dlq} == {settings.topics.profiles}
    assert any(r.startswith("not JSON") for r in reasons)
    assert any("interest: String should have at least 1 character" in r for r in reasons)
    assert any("is not the user_id" in r for r in reasons)

    # The user's own events, comedies that are not horror films: after the first, interest and behaviour
    # weigh half each (k = 1), so the list mixes both; after five the behaviour has taken over.
    watched = [i for i, g in genres.items() if "Comedy" in g and "Horror" not in g][:5]
    lists = []
    for n, item in enumerate(watched):
        run(produce(settings, settings.topics.events, [event(n, USER, item)]))
        if n in (0, len(watched) - 1):
            *_, latest = records_of(
                settings, USER, lambda values: any(v and v["trigger_event_id"] == f"{USER}-{n}" for v in values)
            )
            lists.append(latest["items"])
            print(
                f"after {n + 1} comedies: {in_genre(latest['items'], genres, 'Horror')} of 10 horror, "
                f"{in_genre(latest['items'], genres, 'Comedy')} comedies: "
                f"{', '.join(titles[i['item_id']] for i in latest['items'][:5])}, ..."
            )
    after_one, after_all = (in_genre(items, genres, "Horror") for items in lists)
    assert [i["item_id"] for i in lists[0]] != [i["item_id"] for i in first["items"]]
    assert 0 < after_one < horror, "after one event both the interest and the behaviour count"
    assert after_all < DOMINATED

    # Forgetting the user forgets the profile: GET has no interest, and `profiles` ends with a tombstone.
    run(request_forget(settings, USER))
    records_of(settings, USER, lambda values: bool(values) and values[-1] is None)
    profiles = run(
        consume_until(
            settings, settings.topics.profiles, lambda rs: any(r.key == USER.encode() and r.value is None for r in rs)
        )
    )
    assert [r.value for r in profiles if r.key == USER.encode()][-1] is None
    status, body = worker.get(f"/recommendations/{USER}")
    assert status == 200 and json.loads(body)["interest"] is None
    assert topic_configs(settings, [settings.topics.profiles])[settings.topics.profiles]["cleanup.policy"] == "compact"
