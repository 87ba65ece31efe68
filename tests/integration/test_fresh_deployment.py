"""What docker-compose.yml does on an empty registry, run here without Docker: the model-init
service's command, then a worker, then a catalog and events: recommendations come out."""

import json
import shlex
import subprocess
import sys

import pytest
import yaml

from stream_app.demo import publish_catalog
from tests.integration.conftest import REPO, consume_until, event, ml100k_items, produce, run, settings_env

pytestmark = pytest.mark.integration


def model_init(command: list[str], settings) -> subprocess.CompletedProcess:
    """The compose model-init service's command, run here with these settings."""
    return subprocess.run(
        [sys.executable, "-m", "streamrec.cli", *command[1:]],
        cwd=REPO,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_an_empty_registry_ends_with_a_serving_worker(settings, start_worker, tmp_path):
    settings = settings.replace(registry={"path": tmp_path / "empty-registry"})
    command = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["model-init"]["command"]
    assert command[0] == "streamrec"
    init = model_init(command, settings)
    assert init.returncode == 0, f"{shlex.join(command)} failed:\n{init.stdout}{init.stderr}"

    worker = start_worker(settings)
    run(publish_catalog(settings, ml100k_items(50)))  # after the worker: it embeds items as they arrive
    worker.wait_for_catalog(50)
    run(produce(settings, settings.topics.events, [event(1, "u1", "1"), event(2, "u1", "2")]))
    records = run(consume_until(settings, settings.topics.recommendations, lambda rs: len(rs) >= 1))
    assert len(json.loads(records[-1].value)["items"]) == settings.worker.top_k

    again = model_init(command, settings)
    assert again.returncode == 0 and "latest model:" in again.stdout  # a second `up` keeps the model
