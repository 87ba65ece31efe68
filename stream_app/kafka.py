"""Kafka plumbing: client security options, topic creation, and the Faust
transport tuned for low latency."""

from __future__ import annotations

import asyncio
import ssl
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Mapping

import faust
import kafka
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from faust.transport.drivers import aiokafka as faust_aiokafka

from stream_app.settings import KafkaSecurity, Settings


def client_security(security: KafkaSecurity) -> dict[str, Any]:
    """Keyword arguments for aiokafka and kafka-python clients (they share the names)."""
    options: dict[str, Any] = {"security_protocol": security.protocol}
    if security.protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl.create_default_context(cafile=security.ssl_cafile)
    if security.protocol.startswith("SASL"):
        options["sasl_mechanism"] = security.sasl_mechanism
        options["sasl_plain_username"] = security.sasl_username
        options["sasl_plain_password"] = security.sasl_password.get_secret_value() if security.sasl_password else None
    return options


def faust_credentials(security: KafkaSecurity) -> faust.auth.Credentials | None:
    """The same settings as Faust's `broker_credentials`."""
    context = ssl.create_default_context(cafile=security.ssl_cafile) if security.protocol.endswith("SSL") else None
    if security.protocol.startswith("SASL"):
        password = security.sasl_password.get_secret_value() if security.sasl_password else None
        return faust.SASLCredentials(
            username=security.sasl_username, password=password, ssl_context=context, mechanism=security.sasl_mechanism
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


@asynccontextmanager
async def read_whole_topic(settings: Settings, topic: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer outside any group, assigned every partition of `topic` from the start,
    committing nothing: for state every worker (or reader) needs in full."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=100,
                                **client_security(settings.security))
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())])
        yield consumer
    finally:
        await consumer.stop()


async def ensure_topics(settings: Settings) -> int:
    """Create missing topics; return the partition count of `events` (the table follows it)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, **client_security(settings.security))
    await admin.start()
    try:
        t = settings.topics
        compacted = {"cleanup.policy": "compact"}
        wanted = [
            NewTopic(t.events, settings.partitions, 1),
            NewTopic(t.items, 1, 1, topic_configs=compacted),
            NewTopic(t.recommendations, settings.partitions, 1, topic_configs=compacted),
            NewTopic(t.dlq, 1, 1),
            NewTopic(t.model_updates, 1, 1),
        ]
        existing = set(await admin.list_topics())
        for topic in wanted:
            if topic.name not in existing:
                try:
                    await admin.create_topics([topic])
                except TopicAlreadyExistsError:
                    pass  # another worker won the race
        (events,) = await admin.describe_topics([t.events])
        return len(events["partitions"])
    finally:
        await admin.close()


def true_end_offsets(settings: Settings, reported: Mapping) -> dict:
    """End offsets, corrected for brokers that under-report them. Blocking: call via a thread.

    The embedded Tansu answers ListOffsets(latest) with the base offset of the
    last record batch + 1, so a multi-record batch hides its tail. Reading from
    the reported end - 1 finds the real last offset; on Apache Kafka it finds
    the end it was told. The probe is a kafka-python client: an extra aiokafka
    client started during Faust's table recovery gets that recovery cancelled.
    """
    probe = kafka.KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                enable_auto_commit=False, fetch_max_wait_ms=50, **client_security(settings.security))
    try:
        ends = dict(reported)
        for tp, end in reported.items():
            if end <= 0:
                continue
            partition = kafka.TopicPartition(tp.topic, tp.partition)
            probe.assign([partition])
            probe.seek(partition, end - 1)
            while messages := probe.poll(timeout_ms=200).get(partition):
                ends[tp] = max(ends[tp], messages[-1].offset + 1)
        return ends
    finally:
        probe.close()


class _TunedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust hard-codes a 1.5 s fetch wait; the embedded broker waits that long on
    every idle fetch, which alone puts p50 latency above a second."""

    settings: Settings

    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.settings.fetch_max_wait_ms  # read by aiokafka at start()
        return consumer


def tuned_transport(settings: Settings) -> type:
    thread = type("ConsumerThread", (_TunedConsumerThread,), {"settings": settings})

    class Consumer(faust_aiokafka.Consumer):
        def _new_consumer_thread(self):
            return thread(self, loop=self.loop, beacon=self.beacon)

        async def highwaters(self, *partitions):
            """Table recovery reads changelogs up to these offsets and refuses to start
            when its persisted offset lies beyond them: both need the true end."""
            reported = await super().highwaters(*partitions)
            return await asyncio.to_thread(true_end_offsets, settings, reported)

    class Transport(faust_aiokafka.Transport):
        pass

    Transport.Consumer = Consumer
    return Transport
