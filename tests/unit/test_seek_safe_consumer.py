"""A rebalance's seek back to the committed offset, completing while the worker's consumer is still
delivering a fetch from before it: every record from the committed offset on is delivered after the
seek (`stream_app.faust_private._SeekSafeConsumer`).

Faust's own consumer went on delivering the old fetch after the seek, took the distance to the
committed offset for a gap in the partition and dropped the records below its read offset when they
came again: offsets 5-12 here were never delivered after the seek, and a worker that took over a
killed worker's partitions lost events (tests/reliability/test_worker_failover.py, in CI).

Faust's real consumer (`_drain_messages`, `getmany`, `perform_seek`) runs on the main loop; only the
consumer thread, which talks to aiokafka, is a stand-in: it hands out scripted fetches and, on a seek,
moves the partition back to the committed offset, as aiokafka does.
"""

import asyncio
import types

import pytest
from aiokafka.structs import ConsumerRecord
from faust.types import TP

from core.settings import Settings
from stream_app.app import faust_app
from stream_app.faust_private import FetchedRecords

TP0 = TP("events", 0)
COMMITTED, FETCHED, END = 5, 10, 20  # the committed offset; the old fetch's first offset; the partition's end
SEEK_DURING = 12  # the offset being delivered when the rebalance seeks


def record(offset: int) -> ConsumerRecord:
    return ConsumerRecord(
        topic=TP0.topic,
        partition=TP0.partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"user1",
        value=b"{}",
        checksum=None,
        serialized_key_size=5,
        serialized_value_size=2,
        headers=(),
    )


class ConsumerThread:
    """The consumer thread as `_TunedConsumerThread` behaves: fetches tagged with the seeks made before
    them, and a seek that moves the partition at once but returns to the caller `seek_s` later (aiokafka
    asks the coordinator for each partition's committed offset)."""

    def __init__(self, seek_s: float):
        self.next_fetch = list(range(FETCHED, END))
        self.seek_s = seek_s
        self.seeks = 0
        self.positions: dict = {}

    def assignment(self) -> set:
        return {TP0}

    def highwater(self, tp) -> int:
        return END

    async def getmany(self, active_partitions, timeout):
        await asyncio.sleep(0)
        offsets, self.next_fetch = self.next_fetch, []
        return FetchedRecords({TP0: [record(o) for o in offsets]} if offsets else {}, after_seek=self.seeks)

    async def seek_to_committed(self):
        self.seeks += 1
        self.positions[TP0] = (self.seeks, COMMITTED)
        self.next_fetch = list(range(COMMITTED, END))
        await asyncio.sleep(self.seek_s)
        return {TP0: COMMITTED}


async def deliveries(seek_s: float) -> tuple[list[int], list[int]]:
    """The offsets the consumer delivered before and after the seek completed."""
    app = faust_app(Settings().replace(kafka={"broker": "kafka://127.0.0.1:9", "broker_engine": "kafka"}), 1)
    consumer = app.consumer
    consumer._thread = ConsumerThread(seek_s)
    consumer._active_partitions = {TP0}
    app.topics.acks_enabled_for = lambda topic: True  # as for the events topic: offset gaps are tracked
    before, after = [], []
    seek: list[asyncio.Task] = []
    stopped = types.SimpleNamespace(_stopped=asyncio.Event())  # the fetcher service: its stop ends the loop

    async def deliver(message) -> None:
        (after if seek and seek[0].done() else before).append(message.offset)
        if message.offset == SEEK_DURING and not seek:
            seek.append(asyncio.ensure_future(consumer.perform_seek()))
            await asyncio.sleep(seek_s + 0.01)  # the seek completes while this record is delivered
        if after and after[-1] == END - 1 or len(before) + len(after) > 3 * END:
            stopped._stopped.set()

    consumer.callback = deliver
    await asyncio.wait_for(consumer._drain_messages(stopped), timeout=10)
    return before, after


@pytest.mark.parametrize("seek_s", [0.0, 0.05])
def test_every_record_from_the_committed_offset_is_delivered_after_a_seek(seek_s):
    before, after = asyncio.run(deliveries(seek_s))
    assert before[:3] == [FETCHED, FETCHED + 1, SEEK_DURING]
    assert sorted(set(after)) == list(range(COMMITTED, END)), (before, after)
