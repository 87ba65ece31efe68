"""The ranking stage on the real path: Apache Kafka, a worker process, a registry with and without a ranker.

A version of the small two-tower checkpoint with a (untrained) ranker is served: its records carry both
heads on every item, the score being their blend; `?stage=retrieval` answers without them and a bad
stage is a 400. Then a version without a ranker (the same checkpoint exported before) is announced: the
worker swaps to it and its records still hold k items, in the retrieval order, without heads.
"""

import json
import time

import pytest

from export.model_updates import announce
from export.registry import Registry
from stream_app.demo import publish_catalog
from tests.integration.conftest import consume_until, copy_version, event, ml100k_items, produce, run

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # an export with MiniLM, then a worker: ~2 min

CATALOG = ml100k_items(60)  # the items the small two-tower model was trained on


@pytest.fixture
def registry(two_tower_registry, tmp_path) -> tuple[Registry, str, str]:
    """(registry, the version without a ranker, the version with one, latest)."""
    from export.pipeline import export_and_register
    from tests.support import small_ranked_checkpoint

    root = tmp_path / "registry"
    root.mkdir()
    plain = copy_version(two_tower_registry, root)
    ranked = export_and_register(small_ranked_checkpoint(tmp_path / "checkpoint"), root).name
    return Registry(root), plain, ranked


def record_of(settings, trigger: str) -> dict:
    records = run(
        consume_until(
            settings,
            settings.topics.recommendations,
            lambda rs: any(json.loads(r.value)["trigger_event_id"] == trigger for r in rs),
        )
    )
    return next(v for v in map(lambda r: json.loads(r.value), records) if v["trigger_event_id"] == trigger)


def test_a_version_with_a_ranker_then_one_without(settings, start_worker, registry):
    registry, plain, ranked = registry
    assert registry.latest() == ranked
    settings = settings.replace(registry={"path": registry.root})
    k = settings.worker.top_k
    run(publish_catalog(settings, CATALOG))
    worker = start_worker(settings)
    assert worker.health()["model_version"] == ranked

    run(produce(settings, settings.topics.events, [event(n, "u", str(1 + n), "click") for n in range(3)]))
    record = record_of(settings, "u-2")
    assert record["model_version"] == ranked and len(record["items"]) == k
    for item in record["items"]:
        assert 0 < item["p_click"] < 1 and 0 < item["p_purchase"] < 1
        assert item["score"] == pytest.approx(item["p_click"] + item["p_purchase"], abs=1e-6)  # weights 1, 1
        assert item["because"] in {"1", "2", "3"}
    assert [i["score"] for i in record["items"]] == sorted((i["score"] for i in record["items"]), reverse=True)

    status, body = worker.get("/recommendations/u?stage=retrieval")
    retrieval = json.loads(body)
    assert status == 200 and len(retrieval["items"]) == k and all(i["p_click"] is None for i in retrieval["items"])
    status, body = worker.get("/recommendations/u?stage=ranked")
    assert status == 400 and "unknown stage" in json.loads(body)["error"]

    registry.set_latest(plain)
    announce(registry.load(plain), settings.kafka.bootstrap_servers, settings.topics.model_updates)
    worker.wait_for(lambda health: health["model_version"] == plain)
    time.sleep(0.5)
    run(produce(settings, settings.topics.events, [event(3, "u", "4", "click")]))
    record = record_of(settings, "u-3")
    assert record["model_version"] == plain and len(record["items"]) == k
    assert all(i["p_click"] is None and i["p_purchase"] is None for i in record["items"])
