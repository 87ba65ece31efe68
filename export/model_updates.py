"""The `model-updates` topic: how a registered version is announced to running workers.

A record names a registry version and the sha256 of its manifest (which pins every
file), so a worker loads exactly what was announced. Torch-free; kafka-python, so the
trainer and the CLI can announce without an event loop.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import kafka
from export.registry import ModelVersion


def update_record(version: ModelVersion) -> dict:
    return {
        "version": version.name,
        "path": version.name,  # relative to the registry root every worker mounts
        "sha256": version.sha256,
        "created_at": version.manifest.get("created_at") or datetime.now(timezone.utc).isoformat(),
        "metrics": version.metrics,
    }


def announce(version: ModelVersion, bootstrap_servers: str, topic: str, **client_options) -> dict:
    """Publish `version` on the model-updates topic; returns the record sent."""
    record = update_record(version)
    producer = kafka.KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", **client_options)
    try:
        producer.send(topic, key=version.name.encode(), value=json.dumps(record).encode()).get(timeout=30)
    finally:
        producer.close()
    return record
