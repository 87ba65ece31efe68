"""Forgetting a user (docs/topics.md): the window is deleted with a changelog tombstone, so a worker
rebuilding from the changelog does not bring it back, and the user's key on `recommendations` gets a
tombstone. A request read while the user's older events are still queued waits for them."""

import json
import subprocess
import sys

import pytest
from aiokafka.partitioner import murmur2

from stream_app.demo import publish_catalog
from stream_app.forget import request_forget
from stream_app.replay import publish
from tests.integration.conftest import (
    REPO,
    consume_until,
    event,
    metric_values,
    ml100k_items,
    produce,
    read_windows,
    run,
    settings_env,
    topic_configs,
)

pytestmark = pytest.mark.integration

PARTITIONS = 2
BACKLOG = 600  # events of other users queued before the late user's own, on the same partition


def partition_of(user: str) -> int:
    """Where the default partitioner (aiokafka's and Java's murmur2) puts a user's records."""
    return (murmur2(user.encode()) & 0x7FFFFFFF) % PARTITIONS


def users_on(partition: int, prefix: str, n: int) -> list[str]:
    users, i = [], 0
    while len(users) < n:
        if partition_of(f"{prefix}{i}") == partition:
            users.append(f"{prefix}{i}")
        i += 1
    return users


def by_key(records) -> dict[str, list]:
    """Each key's values in order; None is a tombstone."""
    values: dict[str, list] = {}
    for r in records:
        values.setdefault(r.key.decode(), []).append(None if r.value is None else json.loads(r.value))
    return values


def answered(values: dict[str, list], user: str, event_id: str) -> bool:
    return any(v is not None and v["trigger_event_id"] == event_id for v in values.get(user, []))


def wait_for_records(settings, topic: str, condition, timeout_s: float = 90.0) -> dict[str, list]:
    return by_key(run(consume_until(settings, topic, lambda records: condition(by_key(records)), timeout_s)))


def forget_through_cli(settings, user: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "stream_app.cli", "forget", "--user", user],
        cwd=REPO,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_forgotten_user_stays_forgotten_after_a_rebuild_from_the_changelog(settings, start_worker, tmp_path):
    settings = settings.replace(kafka={"partitions": PARTITIONS})
    a, b = users_on(0, "a", 1)[0], users_on(1, "b", 1)[0]  # one on each partition
    late = users_on(1, "late", 1)[0]
    changelog = f"{settings.worker.app_id}-windows-changelog"
    run(publish_catalog(settings, ml100k_items(60)))

    # While no worker runs: A, B, a backlog on the late user's partition, the late user's events, and
    # then the request to forget the late user. The worker reads `control` and `events` independently;
    # the request must not be carried out before the late user's (older) events.
    run(produce(settings, settings.topics.events, [event(i, u, str(1 + i)) for u in (a, b) for i in range(3)]))
    backlog = [
        (
            u,
            {
                "event_id": f"{u}-0",
                "user_id": u,
                "item_id": str(1 + n % 60),
                "event_type": "view",
                "ts": 1_700_000_000_000 + n,
            },
        )
        for n, u in enumerate(users_on(1, "f", BACKLOG))
    ]
    run(publish(settings, settings.topics.events, backlog, len(backlog)))
    run(produce(settings, settings.topics.events, [event(10 + i, late, str(20 + i)) for i in range(3)]))
    partition, _ = run(request_forget(settings, late))
    assert partition == partition_of(late)

    worker = start_worker(settings)
    recs = wait_for_records(
        settings,
        settings.topics.recommendations,
        lambda v: v.get(late, [0])[-1] is None and answered(v, a, f"{a}-2") and answered(v, b, f"{b}-2"),
    )
    assert recs[late][-1] is None

    out = forget_through_cli(settings, a)
    assert f"sent to {settings.topics.control}[{partition_of(a)}]" in out
    recs = wait_for_records(settings, settings.topics.recommendations, lambda v: v.get(a, [0])[-1] is None)
    assert [r["user_id"] for r in recs[a][:-1]] == [a] * (len(recs[a]) - 1)  # recommendations, then the tombstone
    assert recs[b][-1]["trigger_event_id"] == f"{b}-2"  # B untouched

    # A malformed request is dead-lettered with its reason, like a bad event.
    run(
        produce(
            settings,
            settings.topics.control,
            [
                (b"x", b"{not json"),
                (b.encode(), json.dumps({"action": "forget_user", "user_id": a, "requested_at": 0}).encode()),
            ],
        )
    )
    dlq = run(consume_until(settings, settings.topics.dlq, lambda records: len(records) >= 2))
    reasons = {dict(r.headers)["dlq.reason"].decode() for r in dlq}
    assert any(r.startswith("not JSON") for r in reasons) and any("is not the user_id" in r for r in reasons)
    assert {dict(r.headers)["dlq.topic"].decode() for r in dlq} == {settings.topics.control}
    status, metrics = worker.get("/metrics")
    assert status == 200
    assert metric_values(metrics.decode(), "streamrec_users_forgotten_total") == [2.0]
    worker.stop()

    kept = read_windows(settings.worker.data_dir)
    assert a not in kept, "the forgotten user's window is still in the worker's store"
    assert late not in kept, "the late user's older events, processed after the forget, re-created the window"
    assert kept[b].event_ids == [f"{b}-{i}" for i in range(3)]
    assert len(kept) == 1 + BACKLOG

    # The changelog ends each forgotten user's key with a tombstone (compaction then drops the key).
    windows_log = wait_for_records(settings, changelog, lambda v: json.dumps(a) in v and json.dumps(late) in v)
    assert windows_log[json.dumps(a)][-1] is None and windows_log[json.dumps(a)][0] is not None
    assert windows_log[json.dumps(late)][-1] is None
    assert windows_log[json.dumps(b)][-1] is not None

    rebuilt = settings.replace(worker={"data_dir": tmp_path / "fresh"})
    start_worker(rebuilt).stop()  # healthy = tables recovered from the changelog
    recovered = read_windows(rebuilt.worker.data_dir)
    assert a not in recovered and late not in recovered
    assert recovered[b].event_ids == [f"{b}-{i}" for i in range(3)]
    assert len(recovered) == 1 + BACKLOG

    configs = topic_configs(settings, [changelog, settings.topics.recommendations, settings.topics.control])
    assert configs[changelog]["cleanup.policy"] == "compact"
    assert configs[settings.topics.recommendations]["cleanup.policy"] == "compact"
    assert configs[settings.topics.control]["cleanup.policy"] == "delete"
