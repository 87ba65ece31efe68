"""kill -9 the worker mid-stream: every event is still answered (at least once), and the
windows equal a run without the crash."""

import json
import threading
import time

import pytest

from state.window import WindowEvent
from stream_app.demo import publish_catalog
from tests.integration.conftest import (
    consume_until, event, ml100k_items, produce_paced, read_windows, reference_windows, run,
)
from tests.reliability.conftest import scaled

pytestmark = pytest.mark.integration

N_EVENTS = int(scaled(600, 6000))
N_USERS = 40
RATE = scaled(150, 300)


def planned_events() -> list[tuple[bytes, bytes]]:
    return [event(n, f"user{n % N_USERS}", str(1 + (n * 13) % 60), ("view", "click", "purchase")[n % 3])
            for n in range(N_EVENTS)]


def answered_by(planned):
    """-> covered(records): the planned events answered by a record triggered by them or by a later
    event of the same user."""
    events = [json.loads(v) for _, v in planned]
    order = {e["event_id"]: n for n, e in enumerate(events)}

    def covered(records) -> set[str]:
        latest_answered: dict[str, int] = {}
        for r in records:
            value = json.loads(r.value)
            n = order[value["trigger_event_id"]]
            latest_answered[value["user_id"]] = max(latest_answered.get(value["user_id"], -1), n)
        return {e["event_id"] for n, e in enumerate(events) if n <= latest_answered.get(e["user_id"], -1)}

    return covered


def test_kill_9_mid_stream_loses_nothing(settings, start_worker):
    run(publish_catalog(settings, ml100k_items(60)))
    worker = start_worker(settings)
    planned = planned_events()

    producer = threading.Thread(target=produce_paced, args=(settings, settings.topics.events, planned, RATE))
    producer.start()
    time.sleep(N_EVENTS / RATE / 3)
    worker.process.kill()  # SIGKILL: no shutdown, no commit, no flush
    worker.process.wait()
    crashed_at = time.monotonic()
    restarted = start_worker(settings)
    recovery_s = time.monotonic() - crashed_at
    producer.join()

    ids = {json.loads(v)["event_id"] for _, v in planned}
    covered = answered_by(planned)
    records = run(consume_until(settings, settings.topics.recommendations,
                                lambda rs: covered(rs) == ids, timeout_s=120))
    triggers = [json.loads(r.value)["trigger_event_id"] for r in records]
    duplicates = len(triggers) - len(set(triggers))
    restarted.stop()
    windows = {u: w.event_ids for u, w in read_windows(settings.worker.data_dir).items()}
    sent = [json.loads(v) for _, v in planned]
    expected = reference_windows(((e["user_id"], WindowEvent(e["event_id"], e["item_id"], e["event_type"],
                                                             e["ts"] / 1000)) for e in sent), settings)
    assert windows == {u: w.event_ids for u, w in expected.items()}
    print(f"\ncrash: {N_EVENTS} events, 0 lost, {duplicates} duplicate records (same trigger_event_id), "
          f"worker healthy again {recovery_s:.1f}s after kill -9")
