"""`stream_app.in_flight`: a micro-batch in flight while the agent takes the next one. Its events are acked
(so their offsets may be committed) only once its completion has run, whatever Faust acks before; the next
batch waits for it where they share a user, and is handed over only after it.

Real Faust events and consumer messages; the consumer is a stand-in that records the final acks Faust hands
it (what it would mark safe to commit)."""

import asyncio
import types

import pytest
from faust import Event
from faust.types.tuples import ConsumerMessage

from stream_app.in_flight import InFlight


class RecordingConsumer:
    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, message) -> bool:
        self.acked.append(message.offset)
        return True


def events(consumer: RecordingConsumer, offsets: range) -> list[Event]:
    app = types.SimpleNamespace(consumer=consumer)
    batch = []
    for offset in offsets:
        message = ConsumerMessage("events", 0, offset, 0.0, 0, {}, b"u", b"{}", None)
        message.incref()  # the stream's reference, taken when Faust delivers the record to it
        batch.append(Event(app, b"u", b"{}", {}, message))
    return batch


def faust_acks(batch: list[Event]) -> None:
    """What `take_events` does to a batch when the agent takes the next one."""
    for event in batch:
        event.ack()


def test_a_batch_is_acked_only_once_its_completion_has_run():
    async def run() -> list[list[int]]:
        consumer, seen = RecordingConsumer(), []
        delivered = asyncio.Event()
        in_flight = InFlight()

        async def completion() -> None:
            await delivered.wait()

        batch = events(consumer, range(3))
        await in_flight.hand_over(batch, {"u1"}, completion())
        faust_acks(batch)
        await asyncio.sleep(0.01)
        seen.append(list(consumer.acked))  # Faust's ack alone commits nothing
        delivered.set()
        await in_flight.wait()
        seen.append(list(consumer.acked))
        return seen

    assert asyncio.run(run()) == [[], [0, 1, 2]]


def test_the_next_batch_waits_where_it_shares_a_user_and_is_handed_over_after_the_one_in_flight():
    async def run() -> list[str]:
        consumer, log = RecordingConsumer(), []
        delivered = asyncio.Event()
        in_flight = InFlight()

        async def completion(name: str, gate: asyncio.Event | None = None) -> None:
            if gate is not None:
                await gate.wait()
            log.append(f"{name} complete")

        first = events(consumer, range(2))
        await in_flight.hand_over(first, {"u1", "u2"}, completion("first", delivered))
        faust_acks(first)
        await asyncio.wait_for(in_flight.wait_for({"u3"}), 1)  # no user in common: no wait
        log.append("u3 read")
        waiting = asyncio.create_task(in_flight.wait_for({"u2", "u4"}))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        delivered.set()
        await waiting
        log.append("u2 read")
        second = events(consumer, range(2, 4))
        await in_flight.hand_over(second, {"u2"}, completion("second"))
        faust_acks(second)
        await in_flight.wait()
        assert consumer.acked == [0, 1, 2, 3]
        return log

    assert asyncio.run(run()) == ["u3 read", "first complete", "u2 read", "second complete"]


def test_a_failed_completion_leaves_its_batch_unacked_and_stops_the_next_hand_over():
    async def run() -> tuple[RecordingConsumer, bool]:
        consumer = RecordingConsumer()
        in_flight = InFlight()

        async def broken() -> None:
            raise RuntimeError("window store gone")

        async def fine() -> None:
            pass

        batch = events(consumer, range(2))
        await in_flight.hand_over(batch, {"u1"}, broken())
        faust_acks(batch)
        second = fine()
        with pytest.raises(RuntimeError, match="window store gone"):
            await in_flight.hand_over(events(consumer, range(2, 4)), {"u2"}, second)
        return consumer, second.cr_frame is None

    consumer, closed = asyncio.run(run())
    assert consumer.acked == []  # processed again after a restart
    assert closed  # the second batch's completion was never started
