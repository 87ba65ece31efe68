"""/health sees progress: a worker whose events wait while no micro-batch completes reports
"stalled" (503, with how long) once `worker.stall_timeout_s` has passed, though the broker answers its
metadata probe; an idle worker stays "ok". Each case is produced for real, then undone, and every
event is answered.

The broker is this module's own one-node Kafka, which advertises the address of a small TCP proxy
(`HoldingProxy`, in this file) instead of its own, so that every client, the worker's included,
bootstraps through the proxy and stays on it. The proxy passes every request through, reading only
the Kafka request header (size, API key, client id); told to hold one API's requests, it stops
forwarding a connection at its next such request until released (the requests behind it wait too,
in order, as on a slow connection). The two cases:

- a broker that answers metadata and takes records but serves no fetches (what the embedded broker
  did after ~30k record batches in a partition, docs/reliability.md): every Fetch is held;
- a stuck agent: the broker does not acknowledge the worker's records (the Produce requests of the
  worker's Faust client are held; the test's producer is another client). The agent waits for its
  records' delivery; fetches go on.

Before either, the worker answers a few events and then idles for longer than the timeout: it must
stay "ok". While stalled, `streamrec_broker_up` must be 1, and the stall show in
`streamrec_events_waiting` and `streamrec_seconds_since_last_batch`.

That it fails without the progress rule: against the /health before it (metadata probe, tables and
catalog only), both cases wait in vain for "stalled" while /health says "ok" with the events waiting.

Figures (seconds until noticed, connections held, the /health body, the gauges, seconds to recover)
are printed from the run.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import pytest

from core.brokers import KafkaCluster
from stream_app.demo import free_port, publish_catalog
from tests.integration.conftest import (
    WorkerProcess,
    consume_until,
    event,
    fresh_settings,
    metric_values,
    ml100k_items,
    produce,
    run,
)
from tests.reliability.accounting import values
from tests.reliability.conftest import scaled

pytestmark = pytest.mark.integration

STALL_TIMEOUT_S = scaled(4, 10)
N_EVENTS = int(scaled(30, 300))  # per case, one per user
PRODUCE, FETCH = 0, 1  # Kafka API keys
WORKER_CLIENT_ID = b"faust-"  # Faust's producer and consumer (`broker_client_id`: faust-<version>)


class HoldingProxy:
    """A TCP proxy to a Kafka broker (on its own event loop, in a thread) that can hold the requests of
    one API, from every client or from those whose client id starts with a prefix."""

    def __init__(self, broker_port: int):
        self.port, self.broker_port = free_port(), broker_port
        self.loop = asyncio.new_event_loop()
        self.released = asyncio.Event()  # cleared: requests matching `holding` wait
        self.holding: tuple[int, bytes] = (-1, b"")  # (API key, client id prefix)
        self.held: set[int] = set()  # connections now waiting at a held request (by id)

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    def __enter__(self) -> "HoldingProxy":
        started = threading.Event()

        async def serve():
            self.released.set()
            self.server = await asyncio.start_server(self._connection, "127.0.0.1", self.port)
            started.set()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(serve(), self.loop)
        started.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        async def close():
            self.server.close()
            connections = asyncio.all_tasks() - {asyncio.current_task()}
            for task in connections:
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def hold(self, api_key: int, client_id_prefix: bytes = b"") -> None:
        self.holding = (api_key, client_id_prefix)
        self.loop.call_soon_threadsafe(self.released.clear)

    def release(self) -> None:
        self.loop.call_soon_threadsafe(self.released.set)

    async def _connection(self, client_reader, client_writer) -> None:
        broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", self.broker_port)
        try:
            await asyncio.gather(self._requests(client_reader, broker_writer), self._pipe(broker_reader, client_writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            client_writer.close()
            broker_writer.close()

    async def _requests(self, client, broker) -> None:
        """Client -> broker, a request at a time: int32 size, then the header: int16 API key, int16 version,
        int32 correlation id, client id (int16 length, bytes). A held request holds the ones behind it."""
        while True:
            size = await client.readexactly(4)
            request = await client.readexactly(int.from_bytes(size, "big"))
            api_key, client_id = (
                int.from_bytes(request[:2], "big"),
                request[10 : 10 + int.from_bytes(request[8:10], "big")],
            )
            if not self.released.is_set() and (api_key, client_id[: len(self.holding[1])]) == self.holding:
                self.held.add(id(client))
                await self.released.wait()
                self.held.discard(id(client))
            broker.write(size + request)
            await broker.drain()

    @staticmethod
    async def _pipe(reader, writer) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    """A one-node Kafka that every client reaches through a `HoldingProxy`."""
    broker_port = free_port()
    with HoldingProxy(broker_port) as proxy:
        advertised = {"advertised.listeners": f"PLAINTEXT://127.0.0.1:{proxy.port}"}
        data_dir = tmp_path_factory.mktemp("proxied-kafka")
        with KafkaCluster(data_dir, ports=[broker_port], controller_ports=[free_port()], extra_properties=advertised):
            yield proxy


@pytest.fixture(scope="module")
def worker(proxy, baseline_registry, tmp_path_factory):
    """One worker for the module, on the proxied broker with the test's stall timeout, that has
    answered a few events."""
    tmp_path = tmp_path_factory.mktemp("worker")
    settings = fresh_settings(proxy, baseline_registry, tmp_path).replace(worker={"stall_timeout_s": STALL_TIMEOUT_S})
    run(publish_catalog(settings, ml100k_items(60)))
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        worker.start()
        first = [event(n, f"early{n}", str(1 + n)) for n in range(3)]
        run(produce(settings, settings.topics.events, first))
        wait_answered(settings, first)
        yield worker
    finally:
        worker.stop()


def wait_answered(settings, events, timeout_s: float = 60.0) -> None:
    """Until each (one per user) event has triggered a recommendation."""
    wanted = {e["event_id"] for e in values(events)}
    run(
        consume_until(
            settings,
            settings.topics.recommendations,
            lambda rs: wanted <= {v["trigger_event_id"] for v in values(rs)},
            timeout_s,
        )
    )


def stall_and_recover(worker, case: str, proxy: HoldingProxy, hold: tuple[int, bytes]) -> None:
    """Hold those requests and produce events until /health says "stalled"; release them; until "ok"
    again and every event answered. Prints the figures and checks the stalled body and gauges."""
    settings = worker.settings
    planned = [event(n, f"{case}{n}", str(1 + n % 60)) for n in range(N_EVENTS)]
    proxy.hold(*hold)
    try:
        started = time.monotonic()
        run(produce(settings, settings.topics.events, planned))
        worker.wait_for(lambda h: h.get("status") == "stalled", timeout_s=STALL_TIMEOUT_S + 30)
        noticed_s = time.monotonic() - started
        stalled = worker.health()
        _, body = worker.get("/metrics")
        gauges = {
            name: metric_values(body.decode(), name)[0]
            for name in ("streamrec_broker_up", "streamrec_events_waiting", "streamrec_seconds_since_last_batch")
        }
        held = len(proxy.held)
    finally:
        proxy.release()
    released = time.monotonic()
    worker.wait_for(lambda h: h.get("status") == "ok", timeout_s=60)
    healthy_s = time.monotonic() - released
    wait_answered(settings, planned)
    answered_s = time.monotonic() - released
    print(
        f'\n{case}: {N_EVENTS} events; /health "stalled" {noticed_s:.1f}s after the first (stall timeout '
        f"{STALL_TIMEOUT_S:.0f}s; {held} connections held): {stalled}; {gauges}; "
        f'"ok" {healthy_s:.1f}s and every event answered {answered_s:.1f}s after the release; same worker '
        f"process: {worker.process.poll() is None}"
    )
    assert held > 0
    assert stalled["stalled_for_s"] >= STALL_TIMEOUT_S and stalled["events_waiting"] > 0
    assert gauges["streamrec_broker_up"] == 1.0  # the metadata probe was answered throughout
    assert gauges["streamrec_events_waiting"] > 0 and gauges["streamrec_seconds_since_last_batch"] >= STALL_TIMEOUT_S
    assert worker.process.poll() is None


def test_an_idle_worker_stays_ok(worker):
    """No events waiting: "ok" however long since the last micro-batch (the probe counts every 2 s)."""
    idle_s = STALL_TIMEOUT_S + 3
    statuses, until = [], time.monotonic() + idle_s
    while time.monotonic() < until:
        statuses.append((worker.health() or {}).get("status"))
        time.sleep(0.25)
    last = worker.health()
    print(f"\nidle {idle_s:.0f}s (stall timeout {STALL_TIMEOUT_S:.0f}s): {Counter(statuses)}, then {last}")
    assert set(statuses) == {"ok"} and last["seconds_since_last_batch"] >= STALL_TIMEOUT_S


def test_a_broker_that_serves_no_fetches_reads_stalled(worker, proxy):
    stall_and_recover(worker, "no-fetches", proxy, hold=(FETCH, b""))


def test_a_stuck_agent_reads_stalled(worker, proxy):
    """The agent waits for its records' acknowledgements, which the broker does not send."""
    stall_and_recover(worker, "stuck-agent", proxy, hold=(PRODUCE, WORKER_CLIENT_ID))
