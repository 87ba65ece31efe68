"""SIGSTOP the broker under load: the worker reports unhealthy, then resumes with nothing lost."""

import json
import os
import signal
import threading
import time

import pytest

from core.brokers import KafkaCluster
from stream_app.demo import free_port, publish_catalog
from tests.integration.conftest import consume_until, event, ml100k_items, produce_paced, run
from tests.reliability.conftest import scaled

pytestmark = pytest.mark.integration

STALL_S = scaled(10, 20)
N_EVENTS = int(scaled(300, 3000))
RATE = scaled(30, 100)


def test_broker_stall_is_reported_and_survived(settings, start_worker, tmp_path):
    with KafkaCluster(tmp_path / "stalled-kafka", ports=[free_port()], controller_ports=[free_port()]) as broker:
        settings = settings.replace(kafka={"broker": broker.url})
        run(publish_catalog(settings, ml100k_items(60)))
        worker = start_worker(settings)
        planned = [event(n, f"user{n}", str(1 + n % 60)) for n in range(N_EVENTS)]  # one event per user

        producer = threading.Thread(target=produce_paced, args=(settings, settings.topics.events, planned, RATE))
        producer.start()
        time.sleep(N_EVENTS / RATE / 4)
        (jvm,) = broker.children()
        os.kill(jvm.pid, signal.SIGSTOP)
        try:
            stalled_at = time.monotonic()
            worker.wait_for(lambda h: h.get("status") == "broker unreachable", timeout_s=STALL_S)
            noticed_s = time.monotonic() - stalled_at
            _, body = worker.get("/metrics")
            assert "streamrec_broker_up 0.0" in body.decode()
            time.sleep(max(0.0, STALL_S - (time.monotonic() - stalled_at)))
        finally:
            os.kill(jvm.pid, signal.SIGCONT)
        resumed_at = time.monotonic()
        worker.wait_for(lambda h: h.get("status") == "ok", timeout_s=120)
        healthy_s = time.monotonic() - resumed_at
        producer.join()

        wanted = {json.loads(v)["event_id"] for _, v in planned}
        records = run(
            consume_until(
                settings,
                settings.topics.recommendations,
                lambda rs: wanted <= {json.loads(r.value)["trigger_event_id"] for r in rs},
                timeout_s=180,
            )
        )
        answered = {json.loads(r.value)["trigger_event_id"] for r in records}
        worker.stop()  # while its broker still runs
        assert wanted <= answered
        print(
            f"\nbroker stall {STALL_S:.0f}s: noticed after {noticed_s:.1f}s, healthy {healthy_s:.1f}s after "
            f"resume, {N_EVENTS} events, 0 lost, {len(records) - len(answered)} duplicates"
        )
