"""`watch_broker`: is the broker answering? (`/health`, `streamrec_broker_up`)."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer

from core.kafka import client_security
from stream_app.context import WorkerContext

log = logging.getLogger(__name__)

BROKER_PROBE_INTERVAL_S = 2.0
BROKER_PROBE_TIMEOUT_MS = 3_000


def register(ctx: WorkerContext) -> None:
    @ctx.app.task
    async def watch_broker():
        """A metadata request every couple of seconds: is the broker answering?"""
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
                await asyncio.sleep(BROKER_PROBE_INTERVAL_S)
        finally:
            await probe.stop()
