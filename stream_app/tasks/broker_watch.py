"""`watch_broker`: is the broker answering, and how many events wait for this worker? (`/health`,
`streamrec_broker_up`, `streamrec_events_waiting`)."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition

from core.kafka import client_security
from stream_app.context import WorkerContext
from stream_app.steps import events_waiting

log = logging.getLogger(__name__)

BROKER_PROBE_INTERVAL_S = 2.0
BROKER_PROBE_TIMEOUT_MS = 3_000


def register(ctx: WorkerContext) -> None:
    @ctx.app.task
    async def watch_broker():
        """Every couple of seconds a metadata request (is the broker answering?) and, once the worker
        serves, the offsets of its events partitions (are events waiting?)."""
        settings = ctx.settings
        probe = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka.bootstrap_servers,
            group_id=None,
            request_timeout_ms=BROKER_PROBE_TIMEOUT_MS,
            **client_security(settings.kafka.security),
        )
        await probe.start()
        try:
            while True:
                try:
                    await asyncio.wait_for(probe.topics(), BROKER_PROBE_TIMEOUT_MS / 1000)
                    ctx.broker_up.set()
                except Exception as e:
                    if ctx.broker_up.is_set():
                        log.error("broker %s is not answering: %r", settings.kafka.broker, e)
                    ctx.broker_up.clear()
                ctx.metrics.broker_up.set(ctx.broker_up.is_set())
                # Apart from the probe: while a partition's leader is dead and not yet fenced (~9 s), its
                # offsets time out though the cluster answers. The last count stands meanwhile, so a
                # long outage still turns into "stalled".
                if ctx.broker_up.is_set():
                    try:
                        waiting = await asyncio.wait_for(count_waiting(ctx, probe), BROKER_PROBE_TIMEOUT_MS / 1000)
                        ctx.progress.observe_waiting(waiting)
                        ctx.metrics.events_waiting.set(waiting)
                    except Exception as e:
                        log.debug("events waiting not counted: %r", e)
                await asyncio.sleep(BROKER_PROBE_INTERVAL_S)
        finally:
            await probe.stop()


async def count_waiting(ctx: WorkerContext, probe: AIOKafkaConsumer) -> int:
    """Events in this worker's events partitions that the agent has not processed. From the broker's
    offsets (ListOffsets), not the consumer's fetch positions: a broker that serves no fetches leaves
    those where they were. None are counted until the worker serves (recovery is "starting")."""
    partitions = ctx.owned_event_partitions() if ctx.can_serve() else []
    if not partitions:
        return 0
    tps = [TopicPartition(ctx.settings.topics.events, p) for p in partitions]
    first, end = await probe.beginning_offsets(tps), await probe.end_offsets(tps)
    return events_waiting(
        {tp.partition: offset for tp, offset in first.items()},
        {tp.partition: offset for tp, offset in end.items()},
        {p: ctx.processed_offset(p) for p in partitions},
    )
