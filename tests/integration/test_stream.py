"""Events in, recommendations out, through a real broker and a worker process."""

import json

import pytest

from export.registry import Registry
from stream_app.demo import publish_catalog
from tests.integration.conftest import (
    consume_until,
    dumps,
    event,
    latest_by_user,
    metric_values,
    ml100k_items,
    produce,
    run,
)

pytestmark = pytest.mark.integration

CATALOG = ml100k_items(200)
TITLES = {key: value["title"] for key, value in CATALOG}
HISTORIES = {  # ml-100k ids: 1 Toy Story, 71 Lion King, 95 Aladdin | 50 Star Wars, 172 Empire, 181 Return of the Jedi
    "alice": ["1", "71", "95"],
    "bob": ["50", "172", "181"],
}


def toy_story_like(item_id: str) -> tuple[bytes, bytes]:
    return item_id.encode(), dumps(
        {"item_id": item_id, "title": "Toy Story 2 (1999)", "categories": ["Animation", "Children's", "Comedy"]}
    )


def wait_for_triggers(settings, triggers: dict[str, str]) -> dict[str, dict]:
    """Latest recommendation per user, once each user's list was triggered by the given event."""

    def done(records):
        latest = latest_by_user(records)
        return all(latest.get(u, {}).get("trigger_event_id") == e for u, e in triggers.items())

    return latest_by_user(run(consume_until(settings, settings.topics.recommendations, done)))


def test_recommendations_dead_letters_and_live_catalog(settings_on_each_broker, start_worker):
    settings = settings_on_each_broker  # the Tansu smoke suite runs this too
    run(publish_catalog(settings, CATALOG))
    worker = start_worker(settings)

    bad = [
        (b"x", b"{not json"),
        (b"x", b"\xff\xfe\x00"),
        (b"x", dumps({"event_id": "b1", "user_id": "x", "event_type": "view", "ts": 1})),  # no item_id
        (b"x", dumps({"event_id": "b2", "user_id": "x", "item_id": "1", "event_type": "teleport", "ts": 1})),
        (b"x", dumps({"event_id": "b3", "user_id": 42, "item_id": "1", "event_type": "view", "ts": 1})),
        (b"x", b'{"event_id": "' + b"a" * settings.worker.max_record_bytes + b'"}'),
    ]
    good = []
    n = 0
    for user, items in HISTORIES.items():
        for item in items:
            n += 1
            good.append(event(n, user, item, kind="click"))
    good.append(event(n + 1, "alice", "not-yet-in-catalog"))  # kept in the window, not dropped
    good.append(event(n + 2, "carol", "not-yet-in-catalog"))  # no usable history: trending
    mixed = [record for pair in zip(good, bad) for record in pair] + good[len(bad) :]
    run(produce(settings, settings.topics.events, mixed))

    latest = wait_for_triggers(
        settings, {"alice": f"alice-{n + 1}", "bob": f"bob-{len(HISTORIES['alice']) * 2}", "carol": f"carol-{n + 2}"}
    )
    version = Registry(settings.registry.path).latest()
    for user, history in HISTORIES.items():
        record = latest[user]
        ids = [i["item_id"] for i in record["items"]]
        assert len(ids) == len(set(ids)) >= 10
        assert not set(ids) & set(history), f"{user} was recommended what they already saw"
        assert all(i["because"] in history for i in record["items"])
        scores = [i["score"] for i in record["items"]]
        assert scores == sorted(scores, reverse=True)
        assert record["model_version"] == version
    status, body = worker.get("/recommendations/alice")  # HTTP: the same list, computed on request
    assert status == 200
    assert [i["item_id"] for i in json.loads(body)["items"]] == [i["item_id"] for i in latest["alice"]["items"]]
    status, body = worker.get("/metrics")
    assert status == 200
    text = body.decode()
    assert f'streamrec_events_dlq_total{{topic="{settings.topics.events}"}} 6.0' in text
    assert f"streamrec_events_in_total {len(mixed)}.0" in text
    assert f'streamrec_model_info{{version="{version}"}} 1.0' in text
    assert 'streamrec_consumer_lag{partition="0"} 0.0' in text
    assert "streamrec_windows 3.0" in text and "streamrec_broker_up 1.0" in text
    counts = {
        name: metric_values(text, f"streamrec_{name}_count")[0]
        for name in ("batch_size", "batch_seconds", "scoring_seconds", "delivery_seconds", "event_wait_seconds")
    }
    assert counts["batch_seconds"] == counts["batch_size"]  # the agent's time, once per micro-batch
    assert 1 <= counts["scoring_seconds"] <= counts["batch_size"]  # once per batch with a valid event, in one call
    assert counts["delivery_seconds"] == counts["scoring_seconds"]  # each scored batch's records, acknowledged
    assert counts["event_wait_seconds"] == len(mixed)  # every event, invalid ones too
    for name in ("batch", "scoring", "delivery", "event_wait"):
        assert metric_values(text, f"streamrec_{name}_seconds_sum")[0] > 0
    carol = latest["carol"]["items"]
    assert len({i["item_id"] for i in carol}) == 10 and all(i.get("because") is None for i in carol)
    seen = {item for history in HISTORIES.values() for item in history}
    assert {i["item_id"] for i in carol[: len(seen)]} == seen  # the most interacted-with items come first
    assert set(latest) == {"alice", "bob", "carol"}  # the bad records' user "x" got nothing

    dlq = run(consume_until(settings, settings.topics.dlq, lambda r: len(r) >= len(bad)))
    assert [(r.key, r.value) for r in dlq] == bad  # original bytes, in order
    reasons = [dict(r.headers)["dlq.reason"].decode() for r in dlq]
    for reason, expected in zip(
        reasons, ["not JSON", "not UTF-8", "item_id", "unknown event_type", "user_id", "exceeds the limit"]
    ):
        assert expected in reason
    assert all(dict(r.headers)["dlq.topic"].decode() == settings.topics.events for r in dlq)
    offsets = sorted(int(dict(r.headers)["dlq.offset"]) for r in dlq)
    assert offsets == [1, 3, 5, 7, 9, 11]  # interleaved with the good events

    # A new item is recommendable at once; `available: false` and a tombstone withdraw items.
    run(produce(settings, settings.topics.items, [toy_story_like("9001"), toy_story_like("9002")]))
    worker.wait_for_catalog(len(CATALOG) + 2)
    run(produce(settings, settings.topics.events, [event(100, "alice", "1", "purchase")]))
    latest = wait_for_triggers(settings, {"alice": "alice-100"})
    assert {"9001", "9002"} <= {i["item_id"] for i in latest["alice"]["items"]}

    run(
        produce(
            settings,
            settings.topics.items,
            [
                (b"9001", dumps({"item_id": "9001", "title": "Toy Story 2 (1999)", "available": False})),
                (b"9002", None),
            ],
        )
    )
    worker.wait_for_catalog(len(CATALOG))
    run(produce(settings, settings.topics.events, [event(101, "alice", "71")]))
    latest = wait_for_triggers(settings, {"alice": "alice-101"})
    assert not {"9001", "9002"} & {i["item_id"] for i in latest["alice"]["items"]}
    assert json.loads(json.dumps(latest["alice"]))["trigger_event_id"] == "alice-101"
