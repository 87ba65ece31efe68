"""Kafka plumbing: client security options, topic creation, which broker we talk to, and true
end offsets (Tansu's fix on Tansu only). The worker's Faust transport, which uses Faust's private
API, is in stream_app.faust_private."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import ssl
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Mapping

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

import kafka
from core.errors import BrokerError
from core.settings import KafkaSecurity, Settings


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
    security = settings.kafka.security
    try:
        options = client_security(security)
    except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
        files = [
            f"STREAMREC_KAFKA__SECURITY__{name.upper()}={value}"
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
            if (value := getattr(security, name)) is not None
        ]
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

    security = settings.kafka.security
    sasl = security.protocol.startswith("SASL")
    how = security.protocol + (f", SASL {security.sasl_mechanism}" if sasl else "")
    deadline = time.monotonic() + timeout_s
    last = "no attempt"
    while True:
        for host, port in _servers(settings.kafka.bootstrap_servers):
            where = f"{host}:{port}"
            conn = None
            try:
                attempt_s = max(0.5, min(5.0, deadline - time.monotonic()))
                conn = await asyncio.wait_for(
                    create_conn(host, port, request_timeout_ms=int(attempt_s * 1000), **options), attempt_s
                )
                await asyncio.wait_for(conn.send(MetadataRequest([])), attempt_s)
                return
            except SaslAuthenticationFailed:
                raise BrokerError(
                    f"authentication failed for user {security.sasl_username!r} on {where} (SASL "
                    f"{security.sasl_mechanism}): check STREAMREC_KAFKA__SECURITY__SASL_USERNAME and "
                    f"STREAMREC_KAFKA__SECURITY__SASL_PASSWORD"
                ) from None
            except UnsupportedSaslMechanismError:
                raise BrokerError(
                    f"the broker at {where} does not accept SASL mechanism {security.sasl_mechanism!r}: check "
                    f"STREAMREC_KAFKA__SECURITY__SASL_MECHANISM (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
                ) from None
            except ssl.SSLCertVerificationError as e:
                hint = (
                    " and STREAMREC_KAFKA__SECURITY__SSL_CHECK_HOSTNAME (the certificate must name the host of "
                    "STREAMREC_KAFKA__BROKER)"
                    if e.verify_code == 62
                    else ""
                )  # X509_V_ERR_HOSTNAME_MISMATCH
                raise BrokerError(
                    f"TLS: the broker certificate of {where} was not accepted ({e.verify_message}): check "
                    f"STREAMREC_KAFKA__SECURITY__SSL_CAFILE (the CA that signed the broker's certificate){hint}"
                ) from None
            except ssl.SSLError as e:
                raise BrokerError(
                    f"TLS handshake with {where} failed ({e.reason or e}): check that "
                    f"STREAMREC_KAFKA__SECURITY__PROTOCOL ({security.protocol}) matches the broker's listener, and, "
                    f"if the broker requires client certificates, STREAMREC_KAFKA__SECURITY__SSL_CERTFILE / "
                    f"STREAMREC_KAFKA__SECURITY__SSL_KEYFILE"
                ) from None
            except (OSError, asyncio.TimeoutError, KafkaError) as e:  # refused, closed, no answer: retried
                name = type(e).__name__
                last = f"{where}: {e if str(e).startswith(name) else f'{name}: {e}'}".rstrip(": ")
            finally:
                if conn is not None:
                    conn.close()
        if time.monotonic() >= deadline:
            raise BrokerError(
                f"no Kafka broker answered at {settings.kafka.bootstrap_servers} ({how}) within {timeout_s:.0f}s "
                f"(last error: {last}): check STREAMREC_KAFKA__BROKER, that STREAMREC_KAFKA__SECURITY__PROTOCOL "
                f"matches the broker's listener, and, if the broker requires client certificates, "
                f"STREAMREC_KAFKA__SECURITY__SSL_CERTFILE / STREAMREC_KAFKA__SECURITY__SSL_KEYFILE"
            )
        await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


@asynccontextmanager
async def read_whole_topic(settings: Settings, topic: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer outside any group, assigned every partition of `topic` from the start,
    committing nothing: for state every worker (or reader) needs in full."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        **client_security(settings.kafka.security),
    )
    await consumer.start()
    try:
        # Without a subscription aiokafka's metadata names no topic on Apache Kafka (Tansu lists them
        # all): without this refresh the consumer was assigned nothing and the catalog "loaded" empty.
        # `_client` is aiokafka's private API (listed with the Faust ones in stream_app/faust_private.py).
        await consumer._client.force_metadata_update()
        consumer.assign([TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())])
        yield consumer
    finally:
        await consumer.stop()


TANSU_CLUSTER_ID = "tansu_cluster"  # Tansu's default --cluster-id


def broker_engine(settings: Settings) -> str:
    """ "kafka" or "tansu": as configured, else asked of the cluster once per process. Blocking."""
    if settings.kafka.broker_engine != "auto":
        return settings.kafka.broker_engine
    return _detected_engine(settings.kafka.bootstrap_servers, settings.kafka.security)


@functools.cache
def _detected_engine(bootstrap_servers: str, security: KafkaSecurity) -> str:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_security(security))
    try:
        cluster_id = admin.describe_cluster()["cluster_id"]
    finally:
        admin.close()
    return "tansu" if cluster_id == TANSU_CLUSTER_ID else "kafka"


def max_message_bytes(settings: Settings, topic: str) -> int:
    """A topic's max.message.bytes as the broker applies it (its own, or the broker's default). Blocking:
    kafka-python, as `tansu_end_offsets` (an extra aiokafka client during table recovery got the
    recovery cancelled)."""
    admin = KafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers, **client_security(settings.kafka.security)
    )
    try:
        found = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None})], config_filter="all"
        )
    finally:
        admin.close()
    return int(found["topic"][topic]["max.message.bytes"]["value"])


def with_engine(settings: Settings) -> Settings:
    """`settings` with `broker_engine` resolved, so nothing downstream asks the cluster again."""
    return settings.replace(kafka={"broker_engine": broker_engine(settings)})


def topic_configs(settings: Settings, compacted: bool = False) -> dict[str, str]:
    """Per-topic configs for every topic streamrec creates (Faust's changelogs included)."""
    configs = {"min.insync.replicas": str(settings.kafka.min_insync_replicas)}
    if compacted:
        configs["cleanup.policy"] = "compact"
    return configs


async def ensure_topics(settings: Settings) -> int:
    """Create missing topics; return the partition count of `events` (the table follows it)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers, **client_security(settings.kafka.security)
    )
    await admin.start()
    try:
        t = settings.topics
        plain, compacted, replicas = (
            topic_configs(settings),
            topic_configs(settings, compacted=True),
            settings.kafka.replication_factor,
        )
        wanted = [
            NewTopic(t.events, settings.kafka.partitions, replicas, topic_configs=plain),
            NewTopic(t.items, 1, replicas, topic_configs=compacted),
            NewTopic(t.recommendations, settings.kafka.partitions, replicas, topic_configs=compacted),
            NewTopic(t.dlq, 1, replicas, topic_configs=plain),
            NewTopic(t.model_updates, 1, replicas, topic_configs=plain),
            # compacted: each experiment's newest record outlives retention (a restart still finds it)
            NewTopic(t.experiments, 1, replicas, topic_configs=compacted),
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
        for name, configs in ((t.control, plain), (t.profiles, compacted)):  # keyed by user, like events
            await _ensure_copartitioned(admin, NewTopic(name, partitions, replicas, topic_configs=configs), existing)
        return partitions
    finally:
        await admin.close()


async def _ensure_copartitioned(admin: AIOKafkaAdminClient, topic: NewTopic, existing: set[str]) -> None:
    """Create `topic` (keyed by user, like `events`) with as many partitions as `events`: a user's forget
    request or profile must reach the worker, store and changelog partition that hold the user's window."""
    if topic.name not in existing:
        try:
            await admin.create_topics([topic])
            return
        except TopicAlreadyExistsError:
            pass  # another worker won the race (with the same count)
    (found,) = await admin.describe_topics([topic.name])
    if len(found["partitions"]) != topic.num_partitions:
        raise BrokerError(
            f"topic {topic.name!r} has {len(found['partitions'])} partitions but the events "
            f"topic has {topic.num_partitions}: they must match (co-partitioned by user id); "
            f"recreate {topic.name!r} with {topic.num_partitions} partitions"
        )


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
    probe = kafka.KafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
        **client_security(settings.kafka.security),
    )
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
