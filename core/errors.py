"""Every error streamrec raises on purpose, in one tree; each message says what to do.

    StreamrecError
    ├── ConfigError          a setting, option or configuration file is invalid (also a ValueError)
    ├── DataError            input data cannot be read as the contract says (also a ValueError)
    │   ├── InvalidRecord    one topic record breaks the contract: dead-lettered, with `reason`
    │   └── NotEnoughData    too little valid data for a meaningful retrain run
    ├── RegistryError        a model version is missing, incomplete, corrupt or not allowed
    ├── ParityError          ONNX Runtime disagrees with torch beyond tolerance
    ├── BrokerError          the Kafka cluster cannot be reached or refused us
    ├── EventLogError        the retrain job cannot read the topics as asked
    └── InvalidRequest       an HTTP request's parameters are invalid: 400 with the reason (also a ValueError)

ConfigError and DataError are also ValueErrors: they replace ValueErrors raised before, and code
catching those keeps working. Internal, assertion-like checks (a wrong array shape passed by our
own code) stay plain ValueError/TypeError. Torch-free and dependency-free: every layer imports it.
"""

from __future__ import annotations


class StreamrecError(Exception):
    """Base class of every error streamrec raises on purpose: catch it at a command's edge and print
    the message, which says what to change."""


class ConfigError(StreamrecError, ValueError):
    """A setting (STREAMREC_*), command-line option, or configuration file (a model version's or a
    checkpoint's config.json) has a value streamrec cannot use; the message names it and the values
    accepted."""


class DataError(StreamrecError, ValueError):
    """Input data cannot be read as the contract (docs/topics.md) says: a --data directory, a dataset
    file and line, a catalog, a checkpoint's files. The message names the file and what is wrong."""


class InvalidRecord(DataError):
    """One topic record breaks the contract (docs/topics.md). The worker dead-letters it with `reason`
    in the `dlq.reason` header and goes on; the retrain job skips and counts it. Fix the producer."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class NotEnoughData(DataError):
    """Too few events, evaluation cases or training histories for a meaningful retrain run; nothing
    was changed. Wait for more events, widen --since, or lower --min-events."""


class RegistryError(StreamrecError):
    """A model version is missing, incomplete, corrupt, written by a newer streamrec, or its name is
    not allowed; or the registry cannot be written. Re-export the version, or serve another one
    (`streamrec rollback`)."""


class ParityError(StreamrecError):
    """ONNX Runtime disagrees with torch beyond tolerance (at export, or on a worker's canary batch);
    nothing was registered, or the worker refuses to serve the version. The message lists each case."""


class BrokerError(StreamrecError):
    """The Kafka cluster cannot be reached or refused us (address, TLS, SASL), a broker the project
    starts (Apache Kafka or Tansu) cannot start or has stopped. The message names the STREAMREC_*
    settings to check."""


class EventLogError(StreamrecError):
    """The retrain job cannot read the topics as asked: a missing topic, a bad stored-position file,
    a bad --since duration, or a read that stopped making progress."""


class InvalidRequest(StreamrecError, ValueError):
    """An HTTP request's parameters cannot be used (an unknown category or parameter, a malformed value):
    the worker answers 400 with the message, which names the parameter and the values accepted."""
