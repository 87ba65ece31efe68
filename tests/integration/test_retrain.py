"""`streamrec retrain` against the real broker: a better model is promoted and announced;
data that makes the candidate worse is rejected and nothing changes.

The behaviour is a clean sequential pattern users follow through the catalog (pattern A:
after item x comes A(x), one cycle through all items), so "better" and "worse" are not
a matter of noise:

- promote: production is the small untrained two-tower model (it knows 60 items); the
  topic holds A-walks over 65 items (5 are new since production). The candidate, warm-started
  and fine-tuned on the older 90%, predicts the newest 10% far better -> exit 0.
- reject: production is now that A-model. New users walk pattern B (another cycle) and
  only their newest 10% of events follow A again. Fine-tuning on B makes the candidate
  forget A, so on the held-out A events it is genuinely worse -> exit 3, nothing changes.
- the ranking stage: production in "promote" has no ranker, so neither has the version it
  promotes; a production version WITH a (untrained) ranker, retrained on the same A-walks,
  promotes a version whose ranker was trained on the candidate's candidates and exported as
  ranker.onnx with its parity, judged on what the worker serves (retrieval + ranker, both sides).
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

import kafka
from core.kafka import end_offsets
from encoders.retrain_cli import standalone
from export.registry import Registry
from stream_app.demo import publish_catalog
from stream_app.replay import publish
from tests.integration.conftest import (
    copy_version,
    dumps,
    event,
    fresh_settings,
    ml100k_items,
    produce,
    run,
    settings_env,
)

pytestmark = pytest.mark.integration

CATALOG = ml100k_items(65)  # production (tests/support.py) was built over the first 60
USERS, STEPS = 150, 20  # 3000 events per scenario; the newest 10% = each user's last 2 steps
FAST = ["--epochs", "30", "--patience", "5", "--lr", "5e-3", "--threads", "1", "--no-progress"]


def cycle(seed: int) -> dict[str, str]:
    """A random cycle through every catalog item: item -> the next one."""
    order = list(np.random.default_rng(seed).permutation([item_id for item_id, _ in CATALOG]))
    return {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}


A, B = cycle(1), cycle(2)


def walks(prefix: str, steps: list[dict[str, str]], t0_ms: int) -> list[tuple[str, dict]]:
    """USERS users, one event per step, step k of every user before step k+1 of anyone; step k's
    item follows from the previous one by steps[k]; the first item is random."""
    rng = np.random.default_rng(sum(map(ord, prefix)))
    current = {u: CATALOG[int(rng.integers(len(CATALOG)))][0] for u in range(USERS)}
    records = []
    for k, pattern in enumerate(steps):
        for u in range(USERS):
            if k:
                current[u] = pattern[current[u]]
            key, value = event(k, f"{prefix}{u}", current[u], "click", ts=t0_ms + (k * USERS + u) * 1000)
            records.append((key.decode(), json.loads(value)))
    return records


def publish_events(settings, records) -> None:
    run(publish(settings, settings.topics.events, records, len(records)))  # multi-record batches


def end_offset(settings, topic: str) -> int:
    """Records on a one-partition topic (the true end: the embedded broker under-reports)."""
    consumer = kafka.KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, group_id=None)
    try:
        tp = kafka.TopicPartition(topic, 0)
        return end_offsets(settings, consumer.end_offsets([tp]))[tp]
    finally:
        consumer.close()


def model_updates(settings) -> list[dict]:
    consumer = kafka.KafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
    )
    try:
        tp = kafka.TopicPartition(settings.topics.model_updates, 0)
        consumer.assign([tp])
        end = end_offset(settings, tp.topic)
        records = []
        while len(records) < end:
            records += consumer.poll(timeout_ms=500).get(tp, [])
        return [json.loads(r.value) for r in records]
    finally:
        consumer.close()


def retrain(settings, *args: str):
    result = CliRunner().invoke(standalone(), ["retrain", *args, *FAST], env=settings_env(settings))
    reports = sorted((settings.registry.path.parent / "work").glob("*/report.json"))
    assert reports, f"no report; exit {result.exit_code}: {result.output}\n{result.exception!r}"
    return result, json.loads(reports[-1].read_text())


@pytest.fixture(scope="module")
def promoted(broker, two_tower_registry, tmp_path_factory):
    """Scenario A, run once for the module: the promotion every later test starts from."""
    tmp = tmp_path_factory.mktemp("retrain")
    root = tmp / "registry"
    root.mkdir()
    production = copy_version(two_tower_registry, root)
    Registry(root).set_latest(production)
    settings = fresh_settings(broker, root, tmp)
    run(publish_catalog(settings, CATALOG))
    publish_events(settings, walks("a", [A] * STEPS, 1_700_000_000_000))
    invalid = [(b"x", b"{not json"), event(999, "a1", "1", "teleport"), (b"a2", dumps({"user_id": "a2"}))]
    run(produce(settings, settings.topics.events, invalid))  # what the worker dead-letters
    position = tmp / "position.json"  # does not exist yet: the first run reads from the start

    result, report = retrain(
        settings, "--from-offsets", str(position), "--since", "1h", "--work-dir", str(tmp / "work")
    )
    return SimpleNamespace(
        settings=settings, root=root, production=production, position=position, result=result, report=report, tmp=tmp
    )


def test_a_better_candidate_is_promoted_registered_and_announced(promoted):
    result, report, registry = promoted.result, promoted.report, Registry(promoted.root)
    assert result.exit_code == 0, result.output + json.dumps(report, indent=1)[:3000]
    assert "PROMOTED" in result.output

    new = registry.latest()
    assert new != promoted.production and new == report["promoted_version"]
    assert registry.versions() == [promoted.production, new]
    version = registry.load(new)
    assert version.metrics["retrain"]["production_version"] == promoted.production
    # production has no ranker: neither has the new version, and the gate compared the retrieval orders
    assert report["production"]["has_ranker"] is False
    assert report["ranker"] == {"train": False, "rule": "keep what production has"}
    assert not version.has("ranker.onnx") and version.model_config.ranker is None
    assert (report["gate"]["candidate"], report["gate"]["against"]) == ("candidate", "production")
    assert not {"candidate + ranker", "production + ranker"} & set(report["evaluation"])

    (update,) = model_updates(promoted.settings)
    assert update["version"] == new and update["sha256"] == version.sha256

    data, holdout, evaluation = report["data"], report["holdout"], report["evaluation"]
    assert data["topic_events"] == USERS * STEPS and data["invalid_events_skipped"] == 3
    assert data["catalog_items"] == len(CATALOG)
    assert holdout["cases"] == holdout["events"] == USERS * STEPS // 10
    assert holdout["cases_with_items_new_since_production"] > 0
    assert evaluation["candidate"]["NDCG@10"] > evaluation["production"]["NDCG@10"] + 0.3
    # the stored position now points past everything this run read
    assert (
        json.loads(promoted.position.read_text())
        == {"0": USERS * STEPS + 3}
        == {str(p): o for p, o in data["end_offsets"].items()}
    )


def test_data_that_makes_the_candidate_worse_is_rejected_and_nothing_changes(promoted):
    settings, registry = promoted.settings, Registry(promoted.root)
    latest, versions, position = registry.latest(), registry.versions(), promoted.position.read_text()
    updates = model_updates(settings)
    assert promoted.result.exit_code == 0 and len(updates) == 1

    # New users: 18 steps of pattern B, then their newest 2 steps follow A again.
    publish_events(settings, walks("b", [B] * (STEPS - 2) + [A] * 2, 1_710_000_000_000))
    result, report = retrain(
        settings, "--from-offsets", str(promoted.position), "--work-dir", str(promoted.tmp / "work")
    )
    assert result.exit_code == 3, result.output + json.dumps(report, indent=1)[:3000]
    assert "REJECTED" in result.output

    assert registry.latest() == latest and registry.versions() == versions  # nothing registered
    assert model_updates(settings) == updates  # nothing announced
    assert promoted.position.read_text() == position  # a rejected run does not advance the position
    assert report["data"]["topic_events"] == USERS * STEPS  # only the events after the stored position
    assert report["production"]["version"] == latest
    evaluation = report["evaluation"]
    assert evaluation["candidate"]["NDCG@10"] < evaluation["production"]["NDCG@10"] - 0.3
    assert not report["gate"]["promote"] and report["gate"]["tolerance"] == 0.005
    assert "promoted_version" not in report and not list(promoted.root.glob(".staging-*"))


@pytest.fixture(scope="module")
def ranked(broker, tmp_path_factory):
    """Scenario A again, from a production version with a ranker (untrained, standardised on noise)."""
    from export.pipeline import export_and_register
    from tests.support import small_ranked_checkpoint

    tmp = tmp_path_factory.mktemp("retrain-ranked")
    root = tmp / "registry"
    root.mkdir()
    production = export_and_register(small_ranked_checkpoint(tmp / "checkpoint"), root).name
    settings = fresh_settings(broker, root, tmp)
    run(publish_catalog(settings, CATALOG))
    publish_events(settings, walks("a", [A] * STEPS, 1_700_000_000_000))
    result, report = retrain(settings, "--ranker-minutes", "0.5", "--work-dir", str(tmp / "work"))
    return SimpleNamespace(root=root, production=production, result=result, report=report)


@pytest.mark.slow  # a second export and retrain run (about 45 s): `make test-slow`
def test_a_production_ranker_is_retrained_exported_with_parity_and_gated_as_served(ranked):
    from export.runtime import load_runtime

    result, report, registry = ranked.result, ranked.report, Registry(ranked.root)
    assert result.exit_code == 0, result.output + json.dumps(report, indent=1)[:3000]
    assert report["production"]["has_ranker"] is True
    assert report["ranker"]["train"] is True and report["ranker"]["rule"] == "keep what production has"
    assert report["ranker"]["training"]["train_cases"] > 0

    # both orders of both models on the same held-out cases; the gate compares the full pipelines
    evaluation = report["evaluation"]
    for name in ("production", "production + ranker", "candidate", "candidate + ranker"):
        assert evaluation[name]["cases"] == report["holdout"]["cases"]
    assert (report["gate"]["candidate"], report["gate"]["against"]) == ("candidate + ranker", "production + ranker")
    assert evaluation["candidate + ranker"]["NDCG@10"] > evaluation["production + ranker"]["NDCG@10"] + 0.3
    assert "candidate + ranker" in result.output and "production + ranker" in result.output

    new = registry.load(registry.latest())
    assert new.name == report["promoted_version"] != ranked.production
    assert new.has("ranker.onnx") and new.model_config.ranker is not None
    parity = new.metrics["parity"]["ranker"]
    assert parity["ok"] and parity["rankings"] and parity == report["ranker"]["parity"]  # grid and real sets
    assert load_runtime(new).ranker is not None  # what the worker loads on the announcement
