"""kill -9 the (single-node) Kafka broker under load and restart it on the same log: the worker
reports unhealthy, recovers by itself, and no event is lost.

The broker is this test's own `KafkaCluster` (not the session's), killed with SIGKILL — no
controlled shutdown, no flush — and started again on its log dir. A paced producer keeps sending
and retries each event while the broker is gone, as any producer would. Every planned event is
accounted for on its own as in `test_crash.py` (`account_for`: the `trigger_event_id` of a record
for its user, or in its user's window in RocksDB, each user given fewer events than a window
holds). Tansu's memory storage could not pass this test: a restart starts it empty, losing every
topic, offset and changelog — one reason production runs Apache Kafka.

Figures (events, lost, duplicates, seconds until the worker noticed, seconds from the restart to
healthy) are printed from the run.
"""

import threading
import time

import pytest

from core.brokers import KafkaCluster
from stream_app.demo import free_port, publish_catalog
from tests.integration.conftest import consume_until, ml100k_items, produce_paced, read_windows, run
from tests.reliability.accounting import account_for, consume_drained, planned_events, values
from tests.reliability.conftest import scaled

pytestmark = pytest.mark.integration

DOWN_S = scaled(8, 20)  # from the kill to the restart
N_EVENTS = int(scaled(300, 4000))
RATE = scaled(30, 100)
EVENTS_PER_USER = 5


def test_broker_kill_9_and_restart_loses_nothing(settings, start_worker, tmp_path):
    with KafkaCluster(tmp_path / "restarted-kafka", ports=[free_port()], controller_ports=[free_port()]) as cluster:
        settings = settings.replace(kafka={"broker": cluster.url})
        run(publish_catalog(settings, ml100k_items(60)))
        worker = start_worker(settings)
        planned_records = planned_events(N_EVENTS, EVENTS_PER_USER)
        planned = values(planned_records)

        producer = threading.Thread(
            target=produce_paced, args=(settings, settings.topics.events, planned_records, RATE)
        )
        started = time.monotonic()
        producer.start()
        time.sleep(N_EVENTS / RATE / 4)
        cluster.kill(1)  # SIGKILL the broker's JVM; its log dir stays
        killed_at = time.monotonic()
        worker.wait_for(lambda h: h.get("status") == "broker unreachable", timeout_s=DOWN_S + 30)
        noticed_s = time.monotonic() - killed_at
        _, body = worker.get("/metrics")
        broker_up_metric = "streamrec_broker_up 0.0" in body.decode()
        time.sleep(max(0.0, DOWN_S - (time.monotonic() - killed_at)))

        restarted_at = time.monotonic()
        cluster.start_node(1)
        cluster.wait_ready()
        broker_ready_s = time.monotonic() - restarted_at
        worker.wait_for(lambda h: h.get("status") == "ok", timeout_s=180)
        healthy_s = time.monotonic() - restarted_at
        producer.join()
        produced_s = time.monotonic() - started

        outputs, drained = consume_drained(settings, planned, timeout_s=scaled(60, 180))
        drained_s = time.monotonic() - started
        ids = {e["event_id"] for e in planned}
        inputs = values(
            run(
                consume_until(
                    settings,
                    settings.topics.events,  # what the producer's retries wrote
                    lambda rs: ids <= {e["event_id"] for e in values(rs)},
                    timeout_s=60,
                )
            )
        )
        same_process = worker.process.poll() is None
        worker.stop()  # while its broker still runs
    windows = {u: w.event_ids for u, w in read_windows(settings.worker.data_dir).items()}
    result = account_for(planned, outputs, windows, settings.worker.window_size)
    print(
        f"\nbroker kill -9 after {killed_at - started:.1f}s, restarted {DOWN_S:.0f}s later on the same log: "
        f"noticed after {noticed_s:.1f}s (streamrec_broker_up 0: {broker_up_metric}), broker ready "
        f"{broker_ready_s:.1f}s and worker healthy {healthy_s:.1f}s after the restart; {result.events} events "
        f"({N_EVENTS / RATE:.0f}s planned at {RATE:.0f}/s, produced in {produced_s:.1f}s; "
        f"{len(inputs) - len(ids)} written twice by the producer's retries), {len(outputs)} records, "
        f"{result.summary()}; {'drained' if drained else 'NOT drained'} "
        f"{drained_s:.1f}s after the first event; same worker process throughout: {same_process}"
    )
    assert broker_up_metric
    assert same_process, "the worker exited while the broker was down"
    assert result.lost == [], f"{len(result.lost)} planned events lost: {result.lost[:20]}"
    assert result.unplanned == []
    assert drained
