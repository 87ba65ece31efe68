"""Kafka plumbing: client security options, topic creation, which broker we talk to, and
the Faust transport tuned for low latency (with Tansu's end-offset fix on Tansu only)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import ssl
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Mapping

import faust
import kafka
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from kafka.admin import KafkaAdminClient
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from faust.transport.drivers import aiokafka as faust_aiokafka

from export.exceptions import BrokerError, StreamrecError
from stream_app.settings import KafkaSecurity, Settings


def ssl_context(security: KafkaSecurity) -> ssl.SSLContext:
    """The TLS context of every client: verifies the broker against `ssl_cafile` (else the system's
    CAs) and, for mutual TLS, presents `ssl_certfile` / `ssl_keyfile`."""
    context = ssl.create_default_context(cafile=security.ssl_cafile)
    context.check_hostname = security.ssl_check_hostname
    if security.ssl_certfile is not None:
        context.load_cert_chain(security.ssl_certfile, security.ssl_keyfile)
    return context


def client_security(security: KafkaSecurity) -> dict[str, Any]:
    """Keyword arguments for aiokafka and kafka-python clients (they share the names)."""
    options: dict[str, Any] = {"security_protocol": security.protocol}
    if security.protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl_context(security)
    if security.protocol.startswith("SASL"):
        options["sasl_mechanism"] = security.sasl_mechanism
        options["sasl_plain_username"] = security.sasl_username
        options["sasl_plain_password"] = security.sasl_password.get_secret_value() if security.sasl_password else None
    return options


def faust_credentials(security: KafkaSecurity) -> faust.auth.Credentials | None:
    """The same settings as Faust's `broker_credentials`."""
    context = ssl_context(security) if security.protocol.endswith("SSL") else None
    if security.protocol.startswith("SASL"):
        password = security.sasl_password.get_secret_value() if security.sasl_password else None
        return faust.SASLCredentials(
            username=security.sasl_username, password=password, ssl_context=context, mechanism=security.sasl_mechanism
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


CONNECTION_CHECK_TIMEOUT_S = 15.0


def check_connection(settings: Settings, timeout_s: float = CONNECTION_CHECK_TIMEOUT_S) -> None:
    """Connect to a bootstrap server with the settings' security (TCP, TLS, SASL) and ask for
    metadata; raise BrokerError saying what to check if that fails. Blocking; for start-up.

    A refused or dropped connection is retried until `timeout_s` (a broker still starting); a
    rejected password, certificate or SASL mechanism fails at once. The Kafka clients themselves
    log those and retry: kafka-python until its bootstrap timeout, then `KafkaTimeoutError: Unable
    to bootstrap`, which does not say why (docs/security.md)."""
    security = settings.security
    try:
        options = client_security(security)
    except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
        files = [f"STREAMREC_SECURITY__{name.upper()}={value}" for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
                 if (value := getattr(security, name)) is not None]
        raise BrokerError(f"cannot load the TLS files ({e}): check {', '.join(files)}") from None
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # asyncio.run, whether or not a loop runs here
        pool.submit(asyncio.run, _check_connection(settings, options, timeout_s)).result()


def _servers(bootstrap_servers: str) -> list[tuple[str, int]]:
    servers = []
    for server in bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        servers.append((host.strip("[]"), int(port)))
    return servers


async def _check_connection(settings: Settings, options: dict[str, Any], timeout_s: float) -> None:
    from aiokafka.conn import create_conn
    from aiokafka.errors import SaslAuthenticationFailed, UnsupportedSaslMechanismError
    from aiokafka.protocol.metadata import MetadataRequest

    security = settings.security
    sasl = security.protocol.startswith("SASL")
    how = security.protocol + (f", SASL {security.sasl_mechanism}" if sasl else "")
    deadline = time.monotonic() + timeout_s
    last = "no attempt"
    while True:
        for host, port in _servers(settings.bootstrap_servers):
            where = f"{host}:{port}"
            conn = None
            try:
                attempt_s = max(0.5, min(5.0, deadline - time.monotonic()))
                conn = await asyncio.wait_for(
                    create_conn(host, port, request_timeout_ms=int(attempt_s * 1000), **options), attempt_s)
                await asyncio.wait_for(conn.send(MetadataRequest([])), attempt_s)
                return
            except SaslAuthenticationFailed:
                raise BrokerError(
                    f"authentication failed for user {security.sasl_username!r} on {where} (SASL "
                    f"{security.sasl_mechanism}): check STREAMREC_SECURITY__SASL_USERNAME and "
                    f"STREAMREC_SECURITY__SASL_PASSWORD") from None
            except UnsupportedSaslMechanismError:
                raise BrokerError(
                    f"the broker at {where} does not accept SASL mechanism {security.sasl_mechanism!r}: check "
                    f"STREAMREC_SECURITY__SASL_MECHANISM (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)") from None
            except ssl.SSLCertVerificationError as e:
                hint = (" and STREAMREC_SECURITY__SSL_CHECK_HOSTNAME (the certificate must name the host of "
                        "STREAMREC_BROKER)" if e.verify_code == 62 else "")  # X509_V_ERR_HOSTNAME_MISMATCH
                raise BrokerError(
                    f"TLS: the broker certificate of {where} was not accepted ({e.verify_message}): check "
                    f"STREAMREC_SECURITY__SSL_CAFILE (the CA that signed the broker's certificate){hint}") from None
            except ssl.SSLError as e:
                raise BrokerError(
                    f"TLS handshake with {where} failed ({e.reason or e}): check that STREAMREC_SECURITY__PROTOCOL "
                    f"({security.protocol}) matches the broker's listener, and, if the broker requires client "
                    f"certificates, STREAMREC_SECURITY__SSL_CERTFILE / STREAMREC_SECURITY__SSL_KEYFILE") from None
            except (OSError, asyncio.TimeoutError, KafkaError) as e:  # refused, closed, no answer: retried
                name = type(e).__name__
                last = f"{where}: {e if str(e).startswith(name) else f'{name}: {e}'}".rstrip(": ")
            finally:
                if conn is not None:
                    conn.close()
        if time.monotonic() >= deadline:
            raise BrokerError(
                f"no Kafka broker answered at {settings.bootstrap_servers} ({how}) within {timeout_s:.0f}s "
                f"(last error: {last}): check STREAMREC_BROKER, that STREAMREC_SECURITY__PROTOCOL matches the "
                f"broker's listener, and, if the broker requires client certificates, "
                f"STREAMREC_SECURITY__SSL_CERTFILE / STREAMREC_SECURITY__SSL_KEYFILE")
        await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


@asynccontextmanager
async def read_whole_topic(settings: Settings, topic: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer outside any group, assigned every partition of `topic` from the start,
    committing nothing: for state every worker (or reader) needs in full."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=100,
                                **client_security(settings.security))
    await consumer.start()
    try:
        # Without a subscription aiokafka's metadata names no topic on Apache Kafka (Tansu lists them
        # all): without this refresh the consumer was assigned nothing and the catalog "loaded" empty.
        await consumer._client.force_metadata_update()
        consumer.assign([TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())])
        yield consumer
    finally:
        await consumer.stop()


TANSU_CLUSTER_ID = "tansu_cluster"  # Tansu's default --cluster-id


def broker_engine(settings: Settings) -> str:
    """"kafka" or "tansu": as configured, else asked of the cluster once per process. Blocking."""
    if settings.broker_engine != "auto":
        return settings.broker_engine
    return _detected_engine(settings.bootstrap_servers, settings.security)


@functools.cache
def _detected_engine(bootstrap_servers: str, security: KafkaSecurity) -> str:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_security(security))
    try:
        cluster_id = admin.describe_cluster()["cluster_id"]
    finally:
        admin.close()
    return "tansu" if cluster_id == TANSU_CLUSTER_ID else "kafka"


def with_engine(settings: Settings) -> Settings:
    """`settings` with `broker_engine` resolved, so nothing downstream asks the cluster again."""
    return settings.model_copy(update={"broker_engine": broker_engine(settings)})


def topic_configs(settings: Settings, compacted: bool = False) -> dict[str, str]:
    """Per-topic configs for every topic streamrec creates (Faust's changelogs included)."""
    configs = {"min.insync.replicas": str(settings.min_insync_replicas)}
    if compacted:
        configs["cleanup.policy"] = "compact"
    return configs


async def ensure_topics(settings: Settings) -> int:
    """Create missing topics; return the partition count of `events` (the table follows it)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, **client_security(settings.security))
    await admin.start()
    try:
        t = settings.topics
        plain, compacted, replicas = topic_configs(settings), topic_configs(settings, compacted=True), \
            settings.replication_factor
        wanted = [
            NewTopic(t.events, settings.partitions, replicas, topic_configs=plain),
            NewTopic(t.items, 1, replicas, topic_configs=compacted),
            NewTopic(t.recommendations, settings.partitions, replicas, topic_configs=compacted),
            NewTopic(t.dlq, 1, replicas, topic_configs=plain),
            NewTopic(t.model_updates, 1, replicas, topic_configs=plain),
        ]
        existing = set(await admin.list_topics())
        for topic in wanted:
            if topic.name not in existing:
                try:
                    await admin.create_topics([topic])
                except TopicAlreadyExistsError:
                    pass  # another worker won the race
        (events,) = await admin.describe_topics([t.events])
        partitions = len(events["partitions"])
        await _ensure_copartitioned(admin, NewTopic(t.control, partitions, replicas, topic_configs=plain), existing)
        return partitions
    finally:
        await admin.close()


async def _ensure_copartitioned(admin: AIOKafkaAdminClient, topic: NewTopic, existing: set[str]) -> None:
    """Create `topic` (keyed by user, like `events`) with as many partitions as `events`: a user's forget
    request must reach the worker, store and changelog partition that hold the user's window."""
    if topic.name not in existing:
        try:
            await admin.create_topics([topic])
            return
        except TopicAlreadyExistsError:
            pass  # another worker won the race (with the same count)
    (found,) = await admin.describe_topics([topic.name])
    if len(found["partitions"]) != topic.num_partitions:
        raise StreamrecError(f"topic {topic.name!r} has {len(found['partitions'])} partitions but the events "
                             f"topic has {topic.num_partitions}: they must match (co-partitioned by user id); "
                             f"recreate {topic.name!r} with {topic.num_partitions} partitions")


def end_offsets(settings: Settings, reported: Mapping) -> dict:
    """The true end offsets of `reported` (what ListOffsets said). Blocking: call via a thread.
    On Tansu they need correcting (`tansu_end_offsets`); on Apache Kafka they are right."""
    if broker_engine(settings) == "tansu":
        return tansu_end_offsets(settings, reported)
    return dict(reported)


def tansu_end_offsets(settings: Settings, reported: Mapping) -> dict:
    """End offsets, corrected for Tansu's under-reporting.

    The embedded Tansu answers ListOffsets(latest) with the base offset of the
    last record batch + 1, so a multi-record batch hides its tail. Reading from
    the reported end - 1 finds the real last offset. The probe is a kafka-python client: an extra aiokafka
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

    async def seek_to_committed(self):
        return await self.call_thread(self._seek_to_committed_or_earliest)

    async def _seek_to_committed_or_earliest(self):
        """Faust re-reads what it fetched but did not process (records fetched while a partition was
        paused for table recovery are dropped) by seeking back to the committed offset. aiokafka
        leaves a partition with no committed offset (or 0) where it is, so a worker killed before
        its first commit lost the events its successor fetched during recovery
        (tests/reliability/test_crash.py caught it). Those partitions go back to their earliest
        offset, which is where `auto_offset_reset=earliest` started them."""
        consumer = self._ensure_consumer()
        committed = await consumer.seek_to_committed()
        changelogs = self.app.tables.changelog_topics  # table recovery positions these itself
        uncommitted = [tp for tp, offset in committed.items()
                       if not offset and tp.topic not in changelogs]  # None or 0
        if uncommitted:
            await consumer.seek_to_beginning(*uncommitted)
        return committed


class _IdempotentProducer(faust_aiokafka.Producer):
    """Every record the worker writes (recommendations, dead letters, changelogs) is acknowledged
    by all in-sync replicas and written once per send, even when the send is retried. Faust
    enables idempotence only inside transactions."""

    def _settings_extra(self):
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


def tuned_transport(settings: Settings) -> type:
    """Faust's aiokafka transport with our fetch wait; `settings.broker_engine` must be resolved
    (`with_engine`). On Kafka the producer is idempotent; Tansu answers InitProducerId with an
    error, so there it is not, and only Tansu gets the end-offset fix."""
    thread = type("ConsumerThread", (_TunedConsumerThread,), {"settings": settings})

    class Consumer(faust_aiokafka.Consumer):
        def _new_consumer_thread(self):
            return thread(self, loop=self.loop, beacon=self.beacon)

    class TansuConsumer(Consumer):
        async def highwaters(self, *partitions):
            """Table recovery reads changelogs up to these offsets and refuses to start
            when its persisted offset lies beyond them: both need the true end."""
            reported = await super().highwaters(*partitions)
            return await asyncio.to_thread(tansu_end_offsets, settings, reported)

    class Transport(faust_aiokafka.Transport):
        pass

    tansu = settings.broker_engine == "tansu"
    Transport.Consumer = TansuConsumer if tansu else Consumer
    Transport.Producer = faust_aiokafka.Producer if tansu else _IdempotentProducer  # Tansu fails InitProducerId
    return Transport
