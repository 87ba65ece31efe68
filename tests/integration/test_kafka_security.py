"""Security on a real broker: Apache Kafka with a SASL_SSL listener (SCRAM-SHA-512, a CA this module
makes with the openssl CLI) and an SSL listener that requires client certificates (mutual TLS).

The worker, `streamrec replay` and the retrain job's topic read connect with the settings'
credentials; a wrong password or a missing CA file fails at start-up with a message saying what
to check, not a hang and not a traceback (docs/security.md)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.brokers import KafkaCluster
from core.errors import BrokerError
from core.kafka import check_connection, client_security
from core.settings import KafkaSecurity, Settings
from encoders.event_log import read_event_log
from stream_app.demo import free_port, publish_catalog
from tests.integration.conftest import (
    REPO,
    consume_until,
    event,
    fresh_settings,
    ml100k_items,
    produce,
    run,
    settings_env,
)
from tests.support import ML100K

pytestmark = pytest.mark.integration

USER, PASSWORD = "alice", "alice-secret"
CATALOG = ml100k_items(200)
BAD_START_S = 30.0  # a process given bad credentials must have exited by then


# --- a CA, the broker's certificate and a client certificate ---------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate (PEM): clients' STREAMREC_KAFKA__SECURITY__SSL_CAFILE, the broker's truststore
    broker_keystore: Path  # the broker's key + certificate (PEM), for 127.0.0.1 and localhost
    client_cert: Path  # a client certificate the CA signed (mutual TLS)
    client_key: Path


def openssl(directory: Path, *args: str) -> None:
    done = subprocess.run(["openssl", *args], cwd=directory, capture_output=True, text=True)
    assert done.returncode == 0, f"openssl {' '.join(args)}:\n{done.stderr}"


def make_pki(directory: Path) -> Pki:
    openssl(
        directory,
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=streamrec test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    signed = {
        "broker": ("/CN=localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
        "client": ("/CN=streamrec-worker", "extendedKeyUsage=clientAuth\n"),
    }
    for name, (subject, extensions) in signed.items():
        openssl(
            directory,
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            subject,
        )
        (directory / f"{name}.ext").write_text(extensions)
        openssl(
            directory,
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
        )
    keystore = directory / "broker-keystore.pem"  # Kafka's PEM keystore: the (PKCS#8) key, then the certificate
    keystore.write_text((directory / "broker.key").read_text() + (directory / "broker.pem").read_text())
    return Pki(directory / "ca.pem", keystore, directory / "client.pem", directory / "client.key")


def sasl_ssl(pki: Pki, password: str = PASSWORD, cafile: bool = True) -> KafkaSecurity:
    return KafkaSecurity(
        protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=USER,
        sasl_password=password,
        ssl_cafile=pki.ca if cafile else None,
    )


# --- the broker ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecureBroker:
    cluster: KafkaCluster
    pki: Pki
    mtls_port: int  # SSL listener requiring a client certificate

    @property
    def url(self) -> str:  # the SASL_SSL listener
        return self.cluster.url


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory):
    """One Kafka node: SASL_SSL (SCRAM-SHA-512) for clients on its client port, SSL with required
    client certificates on `mtls_port`, PLAINTEXT only between the broker and its controller."""
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    port, mtls, internal, controller = free_port(), free_port(), free_port(), free_port()
    host = "127.0.0.1"
    properties = {
        "listeners": f"SECURE://{host}:{port},MTLS://{host}:{mtls},INTERNAL://{host}:{internal},"
        f"CONTROLLER://{host}:{controller}",
        "advertised.listeners": f"SECURE://{host}:{port},MTLS://{host}:{mtls},INTERNAL://{host}:{internal}",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,SECURE:SASL_SSL,MTLS:SSL",
        "inter.broker.listener.name": "INTERNAL",
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "listener.name.secure.scram-sha-512.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "listener.name.mtls.ssl.client.auth": "required",
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(pki.broker_keystore),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(pki.ca),
    }
    cluster = KafkaCluster(
        tmp_path_factory.mktemp("kafka-secure"),
        ports=[port],
        controller_ports=[controller],
        extra_properties=properties,
        format_args=["--add-scram", f"SCRAM-SHA-512=[name={USER},password={PASSWORD}]"],
        client_options=client_security(sasl_ssl(pki)),
    )
    with cluster:
        yield SecureBroker(cluster, pki, mtls)


@pytest.fixture
def secure_settings(secure_broker, baseline_registry, tmp_path) -> Settings:
    settings = fresh_settings(secure_broker, baseline_registry, tmp_path)
    return settings.replace(kafka={"security": sasl_ssl(secure_broker.pki)})


def with_security(settings: Settings, security: KafkaSecurity, broker: str | None = None) -> Settings:
    return settings.replace(kafka={"security": security, **({"broker": broker} if broker else {})})


# --- clients ---------------------------------------------------------------------------------


def streamrec(settings: Settings, *args: str, timeout_s: float = 180.0) -> tuple[int, str, float]:
    """`streamrec <args>` with the settings (the STREAMREC_KAFKA__SECURITY__* vars an operator sets included) in
    its env: (exit code, output, seconds)."""
    env = settings_env(settings)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "stream_app.cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout_s,
    )
    return done.returncode, done.stdout, time.monotonic() - started


def auth_error(settings: Settings) -> str:
    host, port = settings.kafka.bootstrap_servers.split(",")[0].rsplit(":", 1)
    return (
        f"error: authentication failed for user 'alice' on {host}:{port} (SASL SCRAM-SHA-512): check "
        f"STREAMREC_KAFKA__SECURITY__SASL_USERNAME and STREAMREC_KAFKA__SECURITY__SASL_PASSWORD"
    )


TLS_ERROR = (
    "error: TLS: the broker certificate of {where} was not accepted (unable to get local issuer "
    "certificate): check STREAMREC_KAFKA__SECURITY__SSL_CAFILE"
)


def tls_error(settings: Settings) -> str:
    return TLS_ERROR.format(where=settings.kafka.bootstrap_servers.split(",")[0])


# --- tests -----------------------------------------------------------------------------------


def test_the_broker_refuses_what_is_not_configured(secure_broker, secure_settings):
    """Each setting is needed: without it the connection check fails, at once where it can."""
    settings = secure_settings
    check_connection(settings)  # the right ones
    with pytest.raises(BrokerError, match="authentication failed for user 'alice'"):
        check_connection(with_security(settings, sasl_ssl(secure_broker.pki, password="wrong")))
    with pytest.raises(BrokerError, match=r"TLS: the broker certificate .* \(unable to get local issuer certificate\)"):
        check_connection(with_security(settings, sasl_ssl(secure_broker.pki, cafile=False)))
    with pytest.raises(BrokerError, match="does not accept SASL mechanism 'SCRAM-SHA-256'"):
        check_connection(
            with_security(settings, sasl_ssl(secure_broker.pki).model_copy(update={"sasl_mechanism": "SCRAM-SHA-256"}))
        )
    with pytest.raises(BrokerError, match=r"no Kafka broker answered at .* \(PLAINTEXT\) within 2s"):
        check_connection(with_security(settings, KafkaSecurity()), timeout_s=2)  # plaintext to a TLS port


def test_mutual_tls_needs_the_client_certificate(secure_broker, secure_settings):
    pki = secure_broker.pki
    mtls = with_security(
        secure_settings,
        KafkaSecurity(protocol="SSL", ssl_cafile=pki.ca, ssl_certfile=pki.client_cert, ssl_keyfile=pki.client_key),
        broker=f"kafka://127.0.0.1:{secure_broker.mtls_port}",
    )
    check_connection(mtls)
    run(produce(mtls, mtls.topics.items, [(b"1", json.dumps(CATALOG[0][1]).encode())]))
    assert len(run(consume_until(mtls, mtls.topics.items, lambda records: len(records) >= 1))) == 1
    without_cert = with_security(mtls, KafkaSecurity(protocol="SSL", ssl_cafile=pki.ca))
    with pytest.raises(
        BrokerError, match="if the broker requires client certificates, STREAMREC_KAFKA__SECURITY__SSL_CERTFILE"
    ):
        check_connection(without_cert, timeout_s=2)


def test_worker_consumes_and_publishes_over_sasl_ssl(secure_settings, start_worker):
    settings = secure_settings
    run(publish_catalog(settings, CATALOG))
    env = settings_env(settings)  # the worker process reads the env vars an operator sets
    assert (env["STREAMREC_KAFKA__SECURITY__PROTOCOL"], env["STREAMREC_KAFKA__SECURITY__SASL_PASSWORD"]) == (
        "SASL_SSL",
        PASSWORD,
    )
    worker = start_worker(settings)
    history = ["1", "71", "95"]  # Toy Story, The Lion King, Aladdin
    run(
        produce(
            settings,
            settings.topics.events,
            [event(n, "alice", item, kind="click") for n, item in enumerate(history, 1)],
        )
    )

    def triggered(records):
        return any(r.value and json.loads(r.value)["trigger_event_id"] == "alice-3" for r in records)

    records = run(consume_until(settings, settings.topics.recommendations, triggered))
    latest = [json.loads(r.value) for r in records if r.value][-1]
    ids = [i["item_id"] for i in latest["items"]]
    assert latest["user_id"] == "alice" and len(ids) >= 10 and not set(ids) & set(history)
    assert worker.healthy()


def test_replay_publishes_with_the_credentials(secure_settings):
    settings = secure_settings
    code, output, _ = streamrec(settings, "replay", "--data", str(ML100K), "--limit", "50", "--rate", "0")
    assert code == 0, output[-4000:]
    events = run(consume_until(settings, settings.topics.events, lambda records: len(records) >= 50))
    assert len(events) == 50
    assert json.loads(events[0].value)["user_id"]


def test_the_retrain_job_reads_the_event_log_with_the_credentials(secure_broker, secure_settings):
    settings = secure_settings
    run(publish_catalog(settings, CATALOG[:20]))
    events = [event(n, f"u{n % 3}", CATALOG[n][0]) for n in range(12)]
    run(produce(settings, settings.topics.events, events))
    log = read_event_log(settings)
    assert len(log.events) == 12 and len(log.catalog.live) == 20
    assert log.end_offsets == {0: 12}
    with pytest.raises(BrokerError, match="authentication failed for user 'alice'"):
        read_event_log(with_security(settings, sasl_ssl(secure_broker.pki, password="wrong")))


@pytest.mark.parametrize("case", ["wrong password", "no CA file"])
def test_bad_credentials_stop_the_worker_and_replay_at_start(case, secure_broker, secure_settings):
    """Exit non-zero within seconds with a message saying what to check: no hang, no traceback."""
    pki = secure_broker.pki
    bad = sasl_ssl(pki, password="wrong") if case == "wrong password" else sasl_ssl(pki, cafile=False)
    settings = with_security(secure_settings, bad)
    expected = auth_error(settings) if case == "wrong password" else tls_error(settings)
    for command in (["worker"], ["replay", "--data", str(ML100K), "--limit", "5"]):
        code, output, seconds = streamrec(settings, *command, timeout_s=BAD_START_S * 2)
        assert code != 0 and expected in output, f"streamrec {command[0]} exited {code}:\n{output[-4000:]}"
        assert "Traceback" not in output, output
        assert seconds < BAD_START_S, f"streamrec {command[0]} took {seconds:.1f}s to fail"
