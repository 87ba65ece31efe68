"""Model hot swap under a continuous stream: nothing lost, one switch, rollback, refusal."""

import shutil
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from export.model_updates import announce
from export.registry import MANIFEST, Registry
from stream_app.cli import app as cli
from stream_app.demo import publish_catalog
from tests.integration.conftest import (
    consume_until,
    copy_version,
    dumps,
    event,
    ml100k_items,
    produce,
    produce_paced,
    run,
    settings_env,
)

pytestmark = pytest.mark.integration

CATALOG = ml100k_items(60)  # the items the small two-tower model was trained on


def stream_events(settings, first: int, count: int, rate: float) -> list[str]:
    """One event per new user, at `rate` per second, so every event must yield its own record."""
    numbers = range(first, first + count)
    produce_paced(
        settings,
        settings.topics.events,
        [event(n, f"user{n}", str(1 + n % len(CATALOG)), "click") for n in numbers],
        rate,
    )
    return [f"user{n}-{n}" for n in numbers]


def register_as_newest(source_root: Path, registry: Registry) -> str:
    """The source registry's version registered anew, so it is the newest in `registry` whichever
    session fixture was built first (versions are ordered by registration time)."""
    source = Path(source_root) / Registry(source_root).versions()[-1]
    with registry.staging() as staging:
        for f in source.iterdir():
            if f.name != MANIFEST:
                shutil.copy2(f, staging / f.name)
        return registry.register(staging, make_latest=False).name


def outputs_for(settings, event_ids: list[str]) -> list[dict]:
    import json

    wanted = set(event_ids)
    records = run(
        consume_until(
            settings,
            settings.topics.recommendations,
            lambda rs: wanted <= {json.loads(r.value)["trigger_event_id"] for r in rs},
        )
    )
    return [v for v in (json.loads(r.value) for r in records) if v["trigger_event_id"] in wanted]


def versions_in_order(outputs: list[dict]) -> list[str]:
    runs = []
    for record in outputs:
        if not runs or runs[-1] != record["model_version"]:
            runs.append(record["model_version"])
    return runs


def test_swap_under_load_then_rollback_and_refuse_a_corrupt_version(
    settings, start_worker, baseline_registry, two_tower_registry, tmp_path
):
    root = tmp_path / "registry"
    root.mkdir()
    registry = Registry(root)
    a = copy_version(baseline_registry, root)
    b = register_as_newest(two_tower_registry, registry)  # rollback from B goes to A
    registry.set_latest(a)
    settings = settings.replace(registry={"path": root})
    run(publish_catalog(settings, CATALOG))
    worker = start_worker(settings)
    assert worker.health()["model_version"] == a
    new_item = (b"9001", dumps({"item_id": "9001", "title": "A Movie Published After Training (2026)"}))
    run(produce(settings, settings.topics.items, [new_item]))  # B never saw it: B's item tower must embed it
    worker.wait_for_catalog(len(CATALOG) + 1)

    # Promote B while events keep coming: every event answered, A then B, exactly one switch.
    produced: list[str] = []
    producer = threading.Thread(target=lambda: produced.extend(stream_events(settings, 0, 150, rate=25)))
    producer.start()
    time.sleep(2)
    registry.set_latest(b)
    announce(registry.load(b), settings.kafka.bootstrap_servers, settings.topics.model_updates)
    producer.join()
    outputs = outputs_for(settings, produced)
    assert sorted(o["trigger_event_id"] for o in outputs) == sorted(produced)  # none lost, none twice
    assert versions_in_order(outputs) == [a, b]
    assert all(len(o["items"]) >= 10 for o in outputs)
    assert worker.health()["model_version"] == b
    assert worker.health()["catalog_items"] == len(CATALOG) + 1  # the swap brought every live item

    # Roll back with the CLI: latest points at A again and the worker serves A.
    env = settings_env(settings)
    result = CliRunner().invoke(cli, ["rollback"], env=env)
    assert result.exit_code == 0, result.output
    assert registry.latest() == a
    worker.wait_for(lambda health: health["model_version"] == a)
    after = stream_events(settings, 1000, 20, rate=50)
    assert {o["model_version"] for o in outputs_for(settings, after)} == {a}

    # A corrupt version is announced: refused with a reason, A keeps serving, events keep flowing.
    c = copy_version(root, root, name=b, as_name="corrupt-copy")
    with open(root / c / "user.onnx", "r+b") as f:
        f.write(b"garbage")
    announce_raw = {"version": c, "path": c, "sha256": registry.load(a).sha256, "created_at": "", "metrics": {}}
    run(produce(settings, settings.topics.model_updates, [(c.encode(), dumps(announce_raw))]))
    worker.wait_for(lambda health: c in health["refused_versions"])
    assert "sha256" in worker.health()["refused_versions"][c]  # the manifest no longer matches user.onnx
    later = stream_events(settings, 2000, 10, rate=50)
    assert {o["model_version"] for o in outputs_for(settings, later)} == {a}
