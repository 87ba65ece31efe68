"""The worker's consumer hands a fetched record to its streams at once, and races only a hand-over that
waits (`stream_app.faust_private._SeekSafeConsumer.wait_first`).

Faust's `_drain_messages` delivers each record in `wait_first(delivery, suspend_flow.wait())`: a task for
the delivery and three more, a wait, and three cancellations per record, so that a rebalance can interrupt
a delivery that waits for room in a full stream buffer. Here a delivery that does not wait runs to its end
in the caller's task; one that waits keeps Faust's race: the rebalance's `suspend_flow` cancels it, its
result or its exception comes back as before. bench/runtime_floor.py measures what it saves per event.
"""

import asyncio

import pytest

from core.settings import Settings
from stream_app.app import faust_app
from stream_app.faust_private import _Resumed


def consumer():
    return faust_app(Settings().replace(kafka={"broker": "kafka://127.0.0.1:9", "broker_engine": "kafka"}), 1).consumer


def test_a_delivery_that_does_not_wait_runs_in_the_callers_task():
    async def main():
        c, ran_in = consumer(), []

        async def deliver():
            ran_in.append(asyncio.current_task())
            return "delivered"

        flow = c.suspend_flow.wait()
        results = await c.wait_first(deliver(), flow)
        assert ran_in == [asyncio.current_task()]  # Faust's own wait_first runs it in a task of its own
        assert results.results == ["delivered"] and not results.stopped
        assert flow.cr_frame is None  # closed, never to be awaited: no "never awaited" warning

    asyncio.run(main())


def test_a_delivery_that_waits_finishes_with_its_result():
    async def main():
        c, steps = consumer(), []

        async def deliver():
            steps.append("started")
            await asyncio.sleep(0.01)
            await asyncio.sleep(0)
            steps.append("finished")
            return "delivered"

        results = await c.wait_first(deliver(), c.suspend_flow.wait())
        assert steps == ["started", "finished"] and results.results == ["delivered"]

    asyncio.run(main())


def test_a_waiting_delivery_is_cancelled_when_the_flow_is_suspended():
    async def main():
        c, seen = consumer(), []

        async def deliver():
            try:
                await asyncio.get_running_loop().create_future()  # a full stream buffer that never drains
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        racing = asyncio.ensure_future(c.wait_first(deliver(), c.suspend_flow.wait()))
        await asyncio.sleep(0.01)
        c.suspend_flow.set()  # a rebalance starts
        await asyncio.wait_for(racing, timeout=1)
        assert seen == ["cancelled"]

    asyncio.run(main())


@pytest.mark.parametrize("waits", [False, True])
def test_a_delivery_error_reaches_the_caller(waits):
    async def main():
        c = consumer()

        async def deliver():
            if waits:
                await asyncio.sleep(0)
            raise ValueError("refused")

        with pytest.raises(ValueError, match="refused"):
            await c.wait_first(deliver(), c.suspend_flow.wait())

    asyncio.run(main())


def test_what_the_task_throws_into_a_resumed_delivery_reaches_it():
    """A task throws into what it drives (a cancellation that cannot cancel the awaited future, for one):
    the rest of a delivery gets it where it waits."""
    seen = []

    async def deliver():
        try:
            await asyncio.sleep(0)
        except KeyError as e:
            seen.append(e)
            return "handled"

    delivery = deliver()
    awaited = delivery.send(None)  # what the consumer does first
    rest = _Resumed(delivery, awaited).__await__()
    assert rest.send(None) is awaited
    with pytest.raises(StopIteration) as done:
        rest.throw(KeyError("thrown"))
    assert done.value.value == "handled" and len(seen) == 1
