"""Every use of Faust's (and, through it, aiokafka's) private API in the worker, with the reason.

A Faust or aiokafka upgrade is checked here first (the integration tests exercise each one):

- `App._new_transport` (`StreamrecApp`): the only hook that gives the app our transport class.
- `Consumer._new_consumer_thread`, `AIOKafkaConsumerThread._create_worker_consumer` (`tuned_transport`):
  to reach the aiokafka consumer Faust creates.
- aiokafka's `AIOKafkaConsumer._fetch_max_wait_ms` (`_TunedConsumerThread`): Faust hard-codes a 1.5 s
  fetch wait and has no setting for it.
- `Producer._settings_extra` (`_IdempotentProducer`): Faust enables idempotence only in transactions.
- `Stream._set_current_event` (`event_context`): table access needs a current event, and
  `take_events()` sets none per event.
- `Consumer._committed_offset` (`committed_offset`): a forget request waits until the events sent
  before it are processed; Faust has no public read of the committed offset.
- `App.flow_control` and `FlowControlEvent._suspend/_resume` (`KeepQueuedOnResume`): Faust empties
  the stream queues when it resumes after a rebalance, after its seek: a worker restarted after
  kill -9 lost the records fetched in between (tests/reliability/test_crash.py).
- `Collection.value_serializer` (`with_value_codec`): a table's codec comes only from its value type's
  Faust record options; the windows table's values are plain `UserWindow`s with their own codec.
- `Producer._ensure_producer` and aiokafka's `MessageAccumulator._batches`, `MessageBatch._builder`,
  `_waiter_future` (`send_lingering`, `flush_open_batches`):
  aiokafka has no call that sends the records handed over so far without waiting for them (`flush` waits
  for every batch); the events agent waits for its records anyway, so `linger` only delays each batch.
- `Consumer.getmany`, `_getmany`, `perform_seek`, `_read_offset`, `_gap`, `_committed_offset` and
  `AIOKafkaConsumerThread._fetch_records` (`_SeekSafeConsumer`, `_TunedConsumerThread`): Faust
  delivered records fetched before a rebalance's seek after it, and counted the records between as
  processed: events were lost.
- `ConsumerThread.seek_to_committed`, `_ensure_consumer` (`_TunedConsumerThread`): aiokafka leaves a
  partition with no committed offset where it is, so Faust's seek back to re-read dropped records
  did nothing for a worker killed before its first commit.

Not Faust: `core.kafka.read_whole_topic` calls aiokafka's `consumer._client.force_metadata_update()`
(a consumer with no subscription knows no partitions on Apache Kafka); it stays in `core` with its
comment because `stream_app.consume` uses it too.
"""

from __future__ import annotations

import asyncio
from contextlib import contextmanager

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode.utils.objects import cached_property
from mode.utils.queues import FlowControlEvent

from core.kafka import tansu_end_offsets
from core.settings import Settings


class KeepQueuedOnResume(FlowControlEvent):
    """Faust's flow control empties every stream queue when it resumes after a rebalance. It
    resumes *after* seeking the new partitions to their committed offsets, so records fetched in
    between (past the seek, hence never fetched again) were thrown away: a worker restarted after
    kill -9 lost a run of events. The queues are still emptied when partitions are revoked
    (`clear()`, before the seek); what is queued at resume belongs to the new assignment. Records
    fetched before the seek come again after it: duplicates, which the windows drop by event id."""

    def resume(self) -> None:
        self._suspend.clear()
        self._resume.set()


class StreamrecApp(faust.App):
    transport_class: type  # set by stream_app.app.faust_app: tuned_transport(settings)

    def _new_transport(self):  # private: Faust builds its transport here, from the URL scheme only
        return self.transport_class(self.conf.broker_consumer, self)

    @cached_property
    def flow_control(self) -> FlowControlEvent:
        return KeepQueuedOnResume(loop=self.loop)


class FetchedRecords(dict):
    """One fetch's records (tp -> records), with the number of seeks the consumer thread had made
    when it took them from aiokafka."""

    def __init__(self, records: dict, after_seek: int):
        super().__init__(records)
        self.after_seek = after_seek


class _TunedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust hard-codes a 1.5 s fetch wait; the embedded broker waits that long on
    every idle fetch, which alone puts p50 latency above a second.

    It also numbers its seeks back to the committed offsets and tags every fetch with the seeks made
    before it, so the consumer (`_SeekSafeConsumer`) can tell records fetched before a seek."""

    settings: Settings

    def __post_init__(self) -> None:
        super().__post_init__()
        self.seeks = 0
        self.positions: dict[TP, tuple[int, int | None]] = {}  # tp -> (the seek that last moved it, offset)

    def _create_worker_consumer(self, transport):  # private: where Faust creates the aiokafka consumer
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.settings.kafka.fetch_max_wait_ms  # aiokafka private; read at start()
        return consumer

    async def _fetch_records(self, consumer, active_partitions, timeout=None, max_records=None):
        records = await super()._fetch_records(consumer, active_partitions, timeout=timeout, max_records=max_records)
        return FetchedRecords(records, after_seek=self.seeks)  # read at once: no seek can come in between

    async def seek_to_committed(self):
        return await self.call_thread(self._seek_to_committed_or_earliest)

    async def _seek_to_committed_or_earliest(self):
        """Every assigned stream partition to its committed offset, or to the earliest where none is
        committed (aiokafka's own `seek_to_committed` leaves those where they are, so a worker killed
        before its first commit lost the events its successor fetched during recovery).

        All seeks happen in one step, without awaiting: aiokafka's version awaits each partition's
        committed offset in turn, so a fetch running meanwhile took records from partitions already
        moved and from others not yet moved."""
        consumer = self._ensure_consumer()
        changelogs = self.app.tables.changelog_topics  # table recovery positions these itself
        committed = {tp: await consumer.committed(tp) for tp in consumer.assignment()}
        self.seeks += 1
        for tp, offset in committed.items():
            if tp.topic in changelogs and not offset:
                continue
            consumer.seek(tp, offset or 0)  # 0 lies before the earliest: auto_offset_reset=earliest applies
            self.positions[tp] = (self.seeks, offset or None)
        return committed


class _SeekSafeConsumer(faust_aiokafka.Consumer):
    """Faust delivers a fetch's records one at a time (`getmany`), and sets each partition's read
    offset (`_read_offset`, the last offset delivered) to the committed offset when a rebalance seeks
    back to it (`perform_seek`). Records fetched before the seek but delivered after it lie beyond the
    committed offset: Faust took the distance for a gap in the partition, counted the records in it as
    processed, and dropped them when they were fetched again. A survivor that took over a killed
    worker's partitions lost the events its predecessor had not processed
    (tests/reliability/test_worker_failover.py).

    Here a record fetched before the seek that moved its partition is skipped (it comes again from the
    new position), and a partition's read offset is set to where its last seek put it just before the
    first record fetched after that seek is delivered."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._fetched_after_seek = 0  # the seeks made before the fetch being delivered
        self._read_from_seek: dict[TP, int] = {}  # tp -> the seek its read offset starts from

    async def _getmany(self, active_partitions, timeout):
        records = await super()._getmany(active_partitions, timeout)
        self._fetched_after_seek = records.after_seek
        return records

    async def getmany(self, timeout: float):
        positions = self._thread.positions
        async for tp, message in super().getmany(timeout):
            seek, offset = positions.get(tp, (0, None))
            if seek > self._fetched_after_seek:
                continue  # fetched before a seek moved its partition
            if self._read_from_seek.get(tp, 0) < seek:
                self._read_offset[tp] = offset
                self._gap.pop(tp, None)  # gaps seen before the seek: those above the offset come again
                self._read_from_seek[tp] = seek
            yield tp, message

    async def perform_seek(self) -> None:
        """Faust's, but the read offsets are set by `getmany`, in step with the records it delivers."""
        committed = await self.seek_to_committed()
        self._committed_offset.update({tp: offset or None for tp, offset in committed.items() if offset is not None})


class _IdempotentProducer(faust_aiokafka.Producer):
    """Every record the worker writes (recommendations, dead letters, changelogs) is acknowledged
    by all in-sync replicas and written once per send, even when the send is retried. Faust
    enables idempotence only inside transactions."""

    def _settings_extra(self):  # private: the extra aiokafka producer options Faust passes
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


def tuned_transport(settings: Settings) -> type:
    """Faust's aiokafka transport with our fetch wait; `settings.kafka.broker_engine` must be resolved
    (`core.kafka.with_engine`). On Kafka the producer is idempotent; Tansu answers InitProducerId
    with an error, so there it is not, and only Tansu gets the end-offset fix."""
    thread = type("ConsumerThread", (_TunedConsumerThread,), {"settings": settings})

    class Consumer(_SeekSafeConsumer):
        def _new_consumer_thread(self):  # private: the consumer thread class is not configurable
            return thread(self, loop=self.loop, beacon=self.beacon)

    class TansuConsumer(Consumer):
        async def highwaters(self, *partitions):
            """Table recovery reads changelogs up to these offsets and refuses to start
            when its persisted offset lies beyond them: both need the true end."""
            reported = await super().highwaters(*partitions)
            return await asyncio.to_thread(tansu_end_offsets, settings, reported)

    class Transport(faust_aiokafka.Transport):
        pass

    tansu = settings.kafka.broker_engine == "tansu"
    Transport.Consumer = TansuConsumer if tansu else Consumer
    Transport.Producer = faust_aiokafka.Producer if tansu else _IdempotentProducer  # Tansu fails InitProducerId
    return Transport


@contextmanager
def event_context(stream: faust.StreamT, event: faust.EventT):
    """Make `event` the stream's current event while reading or writing a table.

    Table reads and writes use the RocksDB store and changelog partition of the
    current event (the partition this user's events arrive on, whatever
    partitioner the producer used). `take_events()` hands over a batch without
    setting one per event, so we set it per access — the same call Faust's own
    per-event iteration makes.
    """
    previous = stream.current_event  # the stream's own buffering reads it too: put it back
    stream._set_current_event(event)
    try:
        yield
    finally:
        stream._set_current_event(previous)


def send_lingering(app: faust.App) -> None:
    """Send the records the app's producer holds for `linger` now (`flush_open_batches`)."""
    flush_open_batches(app.producer._ensure_producer())


def flush_open_batches(producer: aiokafka.AIOKafkaProducer) -> None:
    """Send the records an aiokafka producer holds for `linger` now: close its open batches (a full batch
    is closed the same way) and wake its sender, as aiokafka's `flush_for_commit` does, without waiting."""
    accumulator = producer._message_accumulator
    for batches in accumulator._batches.values():
        for batch in batches:
            batch._builder.close()
    if not accumulator._waiter_future.done():
        accumulator._waiter_future.set_result(None)


def committed_offset(app: faust.App, tp: TP) -> int:
    """The offset Faust has committed (or is committing) for `tp`; 0 if none yet."""
    return app.consumer._committed_offset.get(tp) or 0


def with_value_codec(table: faust.Table, codec: str) -> faust.Table:
    """`table` (just built, value_type None) encoding its values with `codec`: read by its store and
    changelog topic, both created on first use."""
    table.value_serializer = codec
    return table
