"""SASL/SSL settings reach every Kafka client: aiokafka/kafka-python kwargs and Faust credentials."""

import ssl

import faust

from core.kafka import client_security, faust_credentials
from core.settings import KafkaSecurity, Settings


def test_plaintext_by_default():
    security = Settings().kafka.security
    assert client_security(security) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(security) is None


def test_sasl_ssl_maps_to_both_client_families():
    security = KafkaSecurity(
        protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="svc", sasl_password="s3cret"
    )
    options = client_security(security)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("svc", "s3cret")
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    credentials = faust_credentials(security)
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password) == ("svc", "s3cret")
    assert credentials.ssl_context is not None


def test_ssl_only_and_env_vars(monkeypatch):
    monkeypatch.setenv("STREAMREC_KAFKA__SECURITY__PROTOCOL", "SSL")
    security = Settings().kafka.security
    assert client_security(security)["security_protocol"] == "SSL"
    assert isinstance(faust_credentials(security), faust.SSLCredentials)


def test_password_is_not_printed():
    security = KafkaSecurity(protocol="SASL_PLAINTEXT", sasl_username="svc", sasl_password="s3cret")
    assert "s3cret" not in repr(security) and "s3cret" not in str(Settings(kafka={"security": security}))
