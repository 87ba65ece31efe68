"""Two workers in one consumer group share a 4-partition events topic."""

import pytest

from stream_app.demo import free_port, publish_catalog
from tests.integration.conftest import (
    consume_until,
    event,
    latest_by_user,
    ml100k_items,
    produce,
    read_windows,
    run,
)

pytestmark = pytest.mark.integration

USERS = [f"user{i}" for i in range(40)]


def test_two_workers_split_partitions_and_answer_every_user(settings, start_worker, tmp_path):
    settings = settings.replace(kafka={"partitions": 4})
    run(publish_catalog(settings, ml100k_items(100)))
    first = start_worker(settings)
    second_settings = settings.replace(worker={"data_dir": tmp_path / "state-2", "web_port": free_port()})
    second = start_worker(second_settings)

    def split_between_both(_) -> bool:
        owned = [set((w.health() or {}).get("partitions", [])) for w in (first, second)]
        return all(owned) and owned[0] | owned[1] == {0, 1, 2, 3} and not owned[0] & owned[1]

    first.wait_for(split_between_both)  # the group has settled: both workers own partitions

    records = [event(n, user, str(1 + (n * 7) % 100)) for n, user in enumerate(USERS * 3)]
    run(produce(settings, settings.topics.events, records))
    last = {user: f"{user}-{n}" for n, user in enumerate(USERS * 3)}

    def done(rs):
        latest = latest_by_user(rs)
        return all(latest.get(u, {}).get("trigger_event_id") == e for u, e in last.items())

    latest = latest_by_user(run(consume_until(settings, settings.topics.recommendations, done)))
    assert set(latest) == set(USERS)
    assert all(len(r["items"]) >= 10 for r in latest.values())

    first.stop()
    second.stop()
    # A partition that moved keeps a stale copy in its old owner's store (Faust does not delete
    # on revoke); the current owner must hold the user's whole window.
    stores = [read_windows(settings.worker.data_dir), read_windows(second_settings.worker.data_dir)]
    for n, user in enumerate(USERS):
        expected = [f"{user}-{n}", f"{user}-{n + len(USERS)}", f"{user}-{n + 2 * len(USERS)}"]
        assert expected in [store[user].event_ids for store in stores if user in store], user
