"""kill -9 the worker mid-stream: every planned event is accounted for on its own, and the windows
equal a run without the crash.

Each planned event is accounted for on its own (`tests/reliability/accounting.py`): the
`trigger_event_id` of a record for its user, or in its user's RocksDB window (read after the worker
stops). Separately, the windows must equal the pure window update applied to the planned stream.

That this check sees a loss: `test_account_for_reports_exactly_a_dropped_event` feeds it a
simulated worker that drops one event (coalesced or a trigger) and expects exactly that id lost;
`STREAMREC_CRASH_DROP_ONE=1` runs the kill -9 test with one planned event never produced, and the
test fails naming it.

Figures (events, lost, duplicates, seconds from kill -9 to healthy) are printed from the run.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from state.window import WindowEvent
from stream_app.demo import publish_catalog
from tests.integration.conftest import ml100k_items, produce_paced, read_windows, reference_windows, run
from tests.reliability.accounting import account_for, consume_drained, planned_events, simulate_worker, values
from tests.reliability.conftest import scaled

N_EVENTS = int(scaled(600, 6000))
RATE = scaled(150, 300)
DROP_ONE = os.environ.get("STREAMREC_CRASH_DROP_ONE") == "1"
REPEATS = int(os.environ.get("STREAMREC_CRASH_REPEATS", "1"))  # a rare loss shows in repeated runs


# --- the accounting sees one lost event ------------------------------------------------------------


def test_account_for_reports_exactly_a_dropped_event():
    planned = values(planned_events(120, events_per_user=12))  # 10 users
    batch = 25  # > 10 users: most users have two events per batch, the first one coalesced
    outputs, windows = simulate_worker(planned, batch, window_size=50)
    whole = account_for(planned, outputs, windows, window_size=50)
    assert (whole.lost, whole.duplicates, whole.unplanned, whole.events) == ([], 0, [], 120)
    assert whole.only_in_window > 0 and whole.by_trigger > 0  # both ways of being accounted for occur

    triggers = {o["trigger_event_id"] for o in outputs}
    coalesced = next(e for e in planned[40:] if e["event_id"] not in triggers)
    answered = next(e for e in planned[40:] if e["event_id"] in triggers)
    for dropped in (coalesced, answered, planned[0], planned[-1]):
        kept = [e for e in planned if e is not dropped]
        outputs, windows = simulate_worker(kept, batch, window_size=50)
        result = account_for(planned, outputs, windows, window_size=50)
        assert result.lost == [dropped["event_id"]], (dropped, result)

    # a re-delivered batch (what a crash causes) is a duplicate, not a loss
    outputs, windows = simulate_worker(planned[:50] + planned[25:], batch, window_size=50)
    redelivered = account_for(planned, outputs, windows, window_size=50)
    assert redelivered.lost == [] and redelivered.duplicates > 0


def test_account_for_refuses_a_plan_the_windows_cannot_hold():
    planned = values(planned_events(120, events_per_user=12))
    outputs, windows = simulate_worker(planned, 25, window_size=5)
    # why: with 5-event windows some coalesced events are neither a trigger nor in a window
    neither = [
        e
        for e in planned
        if e["event_id"] not in {o["trigger_event_id"] for o in outputs} and e["event_id"] not in windows[e["user_id"]]
    ]
    assert neither
    with pytest.raises(ValueError, match="would not be exact"):
        account_for(planned, outputs, windows, window_size=5)


# --- the crash -----------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("run_no", range(REPEATS))
def test_kill_9_mid_stream_loses_nothing(settings, start_worker, run_no):
    run(publish_catalog(settings, ml100k_items(60)))
    worker = start_worker(settings)
    planned_records = planned_events(N_EVENTS)
    planned = values(planned_records)
    sent = planned_records
    if DROP_ONE:  # show the test sees a loss: one event (not a user's last) is never produced
        sent = planned_records[: N_EVENTS // 2] + planned_records[N_EVENTS // 2 + 1 :]

    producer = threading.Thread(target=produce_paced, args=(settings, settings.topics.events, sent, RATE))
    started = time.monotonic()
    producer.start()
    time.sleep(N_EVENTS / RATE / 3)
    worker.process.kill()  # SIGKILL: no shutdown, no commit, no flush
    worker.process.wait()
    crashed_at = time.monotonic()
    restarted = start_worker(settings)
    recovery_s = time.monotonic() - crashed_at
    producer.join()
    produced_s = time.monotonic() - started

    outputs, drained = consume_drained(settings, planned, timeout_s=scaled(30, 120))
    drained_s = time.monotonic() - started
    alive = restarted.process.poll() is None
    restarted.stop()
    windows = {u: w.event_ids for u, w in read_windows(settings.worker.data_dir).items()}
    result = account_for(planned, outputs, windows, settings.worker.window_size)
    expected = reference_windows(
        ((e["user_id"], WindowEvent(e["event_id"], e["item_id"], e["event_type"], e["ts"] / 1000)) for e in planned),
        settings,
    )
    same_windows = windows == {u: w.event_ids for u, w in expected.items()}
    print(
        f"\ncrash (kill -9 after {crashed_at - started:.1f}s of a {N_EVENTS / RATE:.0f}s stream"
        f"{', one event dropped on purpose' if DROP_ONE else ''}): {result.events} events planned "
        f"({len(sent)} produced in {produced_s:.1f}s), {len(outputs)} records, "
        f"{result.summary()}; worker healthy again {recovery_s:.1f}s after kill -9; "
        f"{'drained' if drained else 'NOT drained'} {drained_s:.1f}s after the first event; "
        f"{len(windows)} windows, {'equal to' if same_windows else 'DIFFERENT from'} the reference"
    )
    assert alive, "the restarted worker exited"
    assert result.lost == [], f"{len(result.lost)} planned events lost: {result.lost[:20]}"
    assert result.unplanned == []
    assert drained
    assert same_windows
