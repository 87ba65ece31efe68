"""Errors raised by export/: one base class, messages that say what to do.

Torch-free: the worker imports these.
"""

from __future__ import annotations


class StreamrecError(Exception):
    """Base class of every error streamrec raises on purpose."""


class RegistryError(StreamrecError):
    """A model version is missing, incomplete, corrupt, or its name is not allowed."""


class ParityError(StreamrecError):
    """ONNX Runtime disagrees with torch beyond tolerance; nothing was registered."""


class BrokerError(StreamrecError):
    """A broker the project starts (Apache Kafka or Tansu) cannot start or has stopped."""
