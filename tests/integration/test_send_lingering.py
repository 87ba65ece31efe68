"""`send_lingering` sends what the producer holds for its linger at once (Apache Kafka): the events
agent waits for its records' acknowledgements before the next batch, so a linger would add to
every batch's latency."""

import asyncio
import time
from types import SimpleNamespace

import pytest
from aiokafka import AIOKafkaProducer

from stream_app.faust_private import send_lingering
from tests.integration.conftest import run

pytestmark = pytest.mark.integration

LINGER_S = 2.0  # far longer than a send to the local broker takes


def test_records_held_for_a_long_linger_are_delivered_at_once(settings):
    async def delivery_seconds(send_now: bool) -> float:
        async with AIOKafkaProducer(
            bootstrap_servers=settings.kafka.bootstrap_servers, linger_ms=LINGER_S * 1000
        ) as producer:
            await producer.send_and_wait(settings.topics.recommendations, b"warm-up: metadata and connection")
            start = time.monotonic()
            futures = [await producer.send(settings.topics.recommendations, b"%d" % n, key=b"u") for n in range(3)]
            await asyncio.sleep(0.1)  # the producer's sender has seen the batch and sleeps until its linger is up
            if send_now:
                send_lingering(SimpleNamespace(producer=SimpleNamespace(_ensure_producer=lambda: producer)))
            await asyncio.wait_for(asyncio.gather(*futures), timeout=2 * LINGER_S)
            return time.monotonic() - start

    assert run(delivery_seconds(send_now=True)) < LINGER_S / 4
    assert run(delivery_seconds(send_now=False)) >= LINGER_S * 0.9  # the linger held them: the check can fail
