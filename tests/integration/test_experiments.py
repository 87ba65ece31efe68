"""Online experiments on a real broker and worker (docs/operations.md, "Online experiments"): a refused
version aborts the start; A/B serves two variants side by side with a stable assignment; the report finds
the variant the users prefer; interleaved lists are the team draft of both variants' lists; a variant the
worker refuses leaves it serving production. One worker start for all of it."""

import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from core.contracts import ExperimentRecord, Item, RecommendedItem
from export.experiment_report import read_to_end
from export.model_updates import announce
from export.registry import Registry
from state.window import UserWindow, WindowEvent
from stream_app.demo import publish_catalog
from stream_app.experiments import CONTROL, INTERLEAVED, TREATMENT, assign, draft_seed, team_draft
from stream_app.serving import load_recommender
from streamrec.cli import app as streamrec
from tests.integration.conftest import (
    consume_until,
    copy_version,
    event,
    metric_values,
    ml100k_items,
    produce,
    run,
    settings_env,
)
from tests.integration.test_hot_swap import register_as_newest

pytestmark = pytest.mark.integration

CATALOG = ml100k_items(60)
ITEM_IDS = [item_id for item_id, _ in CATALOG]


def cli(settings, *args: str):
    return CliRunner().invoke(streamrec, ["experiment", *args], env=settings_env(settings))


def lists_for(settings, event_ids: list[str]) -> dict[str, dict]:
    """The record answering each event id (the newest, if redelivered)."""
    wanted = set(event_ids)

    def answered(records):
        return wanted <= {json.loads(r.value)["trigger_event_id"] for r in records if r.value}

    records = run(consume_until(settings, settings.topics.recommendations, answered))
    found = {}
    for r in records:
        value = json.loads(r.value)
        if value["trigger_event_id"] in wanted:
            found[value["trigger_event_id"]] = value
    return found


def first_events(settings, users: list[str], start: int) -> dict[str, dict]:
    """One event per user (a catalog item each), and the list answering it: user -> record."""
    sent = [event(start + n, user, ITEM_IDS[n % len(ITEM_IDS)], "click") for n, user in enumerate(users)]
    run(produce(settings, settings.topics.events, sent))
    records = lists_for(settings, [f"{user}-{start + n}" for n, user in enumerate(users)])
    return {user: records[f"{user}-{start + n}"] for n, user in enumerate(users)}  # in the order sent


def second_events(settings, shown: dict[str, dict], start: int, clicks) -> None:
    """Each user's next event, on the item `clicks(record)` picks from the list they were shown."""
    sent = [event(start + n, user, clicks(record), "purchase") for n, (user, record) in enumerate(shown.items())]
    run(produce(settings, settings.topics.events, sent))
    lists_for(settings, [f"{user}-{start + n}" for n, user in enumerate(shown)])  # the worker has read them


def not_in(record: dict) -> str:
    shown = {i["item_id"] for i in record["items"]}
    return next(i for i in ITEM_IDS if i not in shown and i != record["trigger_event_id"])


def expected_interleaving(settings, versions: dict[str, str], record: dict, first_item: str) -> list[RecommendedItem]:
    """What the worker must have sent: the team draft of both variants' lists for the user's one-event window."""
    trigger = record["trigger_event_id"]
    ts = 1_700_000_000 + int(trigger.rsplit("-", 1)[1])  # conftest.event: event n happens n seconds after the start
    window = UserWindow().with_events([WindowEvent(trigger, first_item, "click", float(ts))], 50, 1e12)
    window = window.with_seen(window.events(), settings.worker.seen_items_max, settings.worker.event_weights)
    items = [Item.model_validate(value) for _, value in CATALOG]
    lists = {}
    for variant, version in versions.items():
        recommender = load_recommender(settings, version)
        recommender.add_items(items, recommender.embed_items(items))
        (lists[variant],) = recommender.recommend([window])
    seed = draft_seed("il1", record["user_id"], record["trigger_event_id"])
    return team_draft(lists[CONTROL], lists[TREATMENT], settings.worker.top_k, seed)


def two_version_registry(tmp_path, baseline_registry, two_tower_registry) -> tuple:
    """A registry of the baseline `a` (latest, production) and the two-tower `b`: -> (root, registry, a, b)."""
    root = tmp_path / "registry"
    root.mkdir()
    registry = Registry(root)
    a = copy_version(baseline_registry, root)
    b = register_as_newest(two_tower_registry, registry)
    registry.set_latest(a)
    return root, registry, a, b


def test_ab_interleave_report_and_refusals(settings, start_worker, baseline_registry, two_tower_registry, tmp_path):
    root, registry, a, b = two_version_registry(tmp_path, baseline_registry, two_tower_registry)
    corrupt = copy_version(root, root, name=b, as_name="corrupt-copy")
    with open(root / corrupt / "user.onnx", "r+b") as f:
        f.write(b"garbage")
    settings = settings.replace(registry={"path": root})
    run(publish_catalog(settings, CATALOG))
    worker = start_worker(settings)
    worker.wait_for_catalog(len(CATALOG))

    # A refused version aborts the start with the reason; nothing is announced.
    result = cli(settings, "start", "--name", "bad", "--variant", f"control={a}", "--variant", f"treatment={corrupt}")
    assert result.exit_code != 0 and "refused" in str(result.exception or result.output)
    assert run(read_to_end(settings, settings.topics.experiments)) == []

    # A/B: every user always served by the variant the hash gives, shares within tolerance.
    result = cli(settings, "start", "--name", "ab1", "--variant", f"control={a}", "--variant", f"treatment={b}")
    assert result.exit_code == 0, result.output
    worker.wait_for(lambda health: (health.get("experiment") or {}).get("name") == "ab1")
    users = [f"ab-user{n}" for n in range(160)]
    shown = first_events(settings, users, 0)
    versions = {CONTROL: a, TREATMENT: b}
    for user, record in shown.items():
        variant = assign("ab1", user, 0.5)
        assert (record["experiment"], record["variant"], record["model_version"]) == ("ab1", variant, versions[variant])
        assert {i["variant"] for i in record["items"]} == {variant}
    shares = Counter(record["variant"] for record in shown.values())
    assert abs(shares[TREATMENT] / len(users) - 0.5) < 4 * (0.25 / len(users)) ** 0.5  # 4 standard deviations
    # Treatment's users buy from their list, control's elsewhere: the report must call treatment better.
    second_events(settings, shown, 1000, lambda r: r["items"][0]["item_id"] if r["variant"] == TREATMENT else not_in(r))
    again = first_events(settings, users[:40], 2000)  # later events: still the same variant per user
    assert all(again[u]["variant"] == shown[u]["variant"] for u in users[:40])
    report = cli(settings, "report", "--name", "ab1", "--png", str(tmp_path / "ab1.png"))
    assert report.exit_code == 0, report.output
    assert "verdict: treatment is better than control" in report.output
    assert (tmp_path / "ab1.png").stat().st_size > 10_000
    metrics = worker.get("/metrics")[1].decode()
    later = Counter(record["variant"] for record in again.values())
    for variant in (CONTROL, TREATMENT):  # lists: each user's first and second event, then the 40 again
        series = f'streamrec_experiment_exposures_total{{experiment="ab1",variant="{variant}"}}'
        assert metric_values(metrics, series) == [2 * shares[variant] + later[variant]]
    result = cli(settings, "stop", "--name", "ab1")
    assert result.exit_code == 0, result.output
    worker.wait_for(lambda health: health.get("experiment") is None)

    # Interleave: each list is the team draft of both variants' lists, each item attributed to its picker.
    result = cli(
        settings,
        "start",
        "--name",
        "il1",
        "--mode",
        "interleave",
        "--variant",
        f"control={a}",
        "--variant",
        f"treatment={b}",
    )
    assert result.exit_code == 0, result.output
    worker.wait_for(lambda health: (health.get("experiment") or {}).get("name") == "il1")
    shown = first_events(settings, [f"il-user{n}" for n in range(30)], 3000)
    for n, record in enumerate(list(shown.values())[:3]):  # in the order sent: the n-th user's first item
        expected = expected_interleaving(settings, versions, record, ITEM_IDS[n % len(ITEM_IDS)])
        got = [(i["item_id"], i["variant"]) for i in record["items"]]
        assert got == [(i.item_id, i.variant) for i in expected]
    for record in shown.values():
        assert (record["variant"], record["model_version"]) == (INTERLEAVED, f"{a}+{b}")
        assert {i["variant"] for i in record["items"]} == {CONTROL, TREATMENT}
    second_events(settings, shown, 4000, lambda r: next(i["item_id"] for i in r["items"] if i["variant"] == TREATMENT))
    report = cli(settings, "report", "--name", "il1", "--png", str(tmp_path / "il1.png"))
    assert report.exit_code == 0, report.output
    assert "verdict: treatment is better than control" in report.output and "credit share 1.000" in report.output
    assert cli(settings, "stop", "--name", "il1").exit_code == 0

    # A variant the worker refuses (its manifest is not the one announced): production serves, as /health says.
    good = registry.load(b)
    record = ExperimentRecord(
        name="refused1",
        state="running",
        mode="ab",
        variants={
            "control": {"version": a, "sha256": registry.load(a).sha256},
            "treatment": {"version": b, "sha256": "0" * 64},
        },
        treatment_share=0.5,
        at="2026-12-06T00:00:00+00:00",
    )
    assert good.sha256 != "0" * 64
    run(produce(settings, settings.topics.experiments, [(b"refused1", record.encode())]))
    worker.wait_for(lambda health: "refused1" in health.get("refused_experiments", {}))
    assert "sha256" in worker.health()["refused_experiments"]["refused1"]
    assert worker.health()["experiment"] is None
    after = first_events(settings, [f"late-user{n}" for n in range(10)], 5000)
    assert {(r["experiment"], r["variant"], r["model_version"]) for r in after.values()} == {(None, None, a)}
    metrics = worker.get("/metrics")[1].decode()
    assert metric_values(metrics, 'streamrec_experiment_refusals_total{experiment="refused1"}') == [1.0]
    assert metric_values(metrics, 'streamrec_experiment_serving{experiment="refused1"}') == [0.0]

    # Stopped from that state, promoting treatment: its version becomes latest and production everywhere.
    result = cli(settings, "stop", "--name", "refused1", "--promote", "treatment")
    assert result.exit_code == 0, result.output
    assert registry.latest() == b
    worker.wait_for(lambda health: health["model_version"] == b and not health["refused_experiments"])


@pytest.mark.slow
def test_a_restart_keeps_every_user_in_their_variant_and_a_swap_changes_production_only(
    settings, start_worker, baseline_registry, two_tower_registry, tmp_path
):
    root, registry, a, b = two_version_registry(tmp_path, baseline_registry, two_tower_registry)
    settings = settings.replace(registry={"path": root})
    run(publish_catalog(settings, CATALOG))
    worker = start_worker(settings)
    result = cli(settings, "start", "--name", "r1", "--variant", f"control={a}", "--variant", f"treatment={b}")
    assert result.exit_code == 0, result.output
    worker.wait_for(lambda health: (health.get("experiment") or {}).get("name") == "r1")
    users = [f"r-user{n}" for n in range(60)]
    before = first_events(settings, users, 0)

    # A hot swap of production to b: the experiment's variants keep their versions.
    registry.set_latest(b)
    announce(registry.load(b), settings.kafka.bootstrap_servers, settings.topics.model_updates)
    worker.wait_for(lambda health: health["model_version"] == b)
    assert worker.health()["experiment"]["variants"] == {CONTROL: a, TREATMENT: b}
    during = first_events(settings, users, 1000)
    assert all(during[u]["model_version"] == before[u]["model_version"] for u in users)

    # A restart: the experiment is read again before any event is served; every user keeps their variant.
    worker.stop()
    worker = start_worker(settings)
    after = first_events(settings, users, 2000)
    assert all((after[u]["experiment"], after[u]["variant"]) == ("r1", before[u]["variant"]) for u in users)
    assert {before[u]["variant"] for u in users} == {CONTROL, TREATMENT}
