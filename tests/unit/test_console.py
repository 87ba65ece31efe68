"""The console's server without a broker (docs/operations.md, "Console"): the figures it derives from real
worker metrics text, the escaping of a hostile dead letter in the API and the pages, the token, the
read-only API, the JSON each page polls, and a user's view asked of a stand-in worker."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import pytest
from aiohttp import test_utils, web
from prometheus_client import generate_latest

from console.records import escaped
from console.samples import WorkerPoll, histogram_quantile, interval_figures, parse_metrics
from console.server import PAGES, STATIC, check_bind, console_app
from console.state import ConsoleState
from core.errors import ConfigError
from core.settings import Settings
from stream_app.metrics import WorkerMetrics

HOSTILE = b'{"user_id": "<script>alert(1)</script>", "x": "<img src=x onerror=alert(2)>"}\x00\xff\xfe\\x41\n'


@dataclass
class Message:
    """What aiokafka hands the readers, as far as the console looks."""

    value: bytes | None
    key: bytes | None = None
    headers: tuple = ()
    topic: str = "t"
    partition: int = 0
    offset: int = 0
    timestamp: int = 1_795_000_000_000


def poll_of(metrics: WorkerMetrics, health: dict | None = None, url: str = "http://w1") -> WorkerPoll:
    return WorkerPoll(url, health or {"status": "ok"}, parse_metrics(generate_latest(metrics.registry).decode()))


def test_figures_between_two_polls_of_a_real_workers_metrics():
    metrics = WorkerMetrics()
    before = poll_of(metrics)
    metrics.events_in.inc(300)
    metrics.recommendations_out.inc(120)
    metrics.events_dlq.labels("events").inc(3)
    for size in (10, 20, 30):
        metrics.batch_size.observe(size)
    for seconds in [0.003] * 60 + [0.02] * 39 + [3.0]:
        metrics.latency.observe(seconds)
    for hit in (True, False, False, False):
        metrics.observe_hit(hit)
    figures = interval_figures({"http://w1": before}, {"http://w1": poll_of(metrics)}, seconds=2.0)
    print(figures)
    assert figures["events_in"] == 150 and figures["records_out"] == 60 and figures["dead_letters"] == 1.5
    assert figures["batch_size"] == 20
    assert 0 < figures["latency_p50_ms"] <= 5  # 60 of 100 in the first bucket (<= 5 ms)
    assert 10 < figures["latency_p99_ms"] <= 25  # the 99th is the last of the 20 ms ones
    assert figures["hit_rate"] == 0.25


def test_a_restarted_worker_counts_from_zero_and_an_unanswered_one_is_left_out():
    """And with nothing observed, no latency or batch size (not 0)."""
    old, new = WorkerMetrics(), WorkerMetrics()
    old.events_in.inc(1000)
    new.events_in.inc(40)  # the worker restarted: its counter began again
    gone = WorkerPoll("http://w2", error="ClientConnectorError")
    figures = interval_figures(
        {"http://w1": poll_of(old), "http://w2": gone}, {"http://w1": poll_of(new), "http://w2": gone}, 1.0
    )
    assert figures["events_in"] == 40
    assert figures["latency_p50_ms"] is None and figures["batch_size"] is None


def test_histogram_quantile_interpolates_inside_the_bucket():
    buckets = [(0.01, 50.0), (0.1, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, buckets) == 0.01
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.055)
    assert histogram_quantile(0.5, [(0.01, 0.0), (float("inf"), 4.0)]) == 0.01  # in +Inf: the last finite bound
    assert histogram_quantile(0.5, [(0.01, 0.0), (float("inf"), 0.0)]) is None


def test_escaped_shows_every_byte_as_text():
    assert escaped(b"<b>caf\xc3\xa9</b> \\x41\x00\n\xff\xe2\x80\xae") == "<b>café</b> \\\\x41\\x00\\n\\xff\\u202e"
    assert escaped(b"x" * 10, limit=4) == "xxxx…"
    assert escaped(None) is None


def settings_for(tmp_path, **console) -> Settings:
    return Settings(registry={"path": tmp_path / "registry"}, console=console)


async def get(app: web.Application, path: str, **kwargs) -> tuple[int, dict | str, dict]:
    async with test_utils.TestClient(test_utils.TestServer(app)) as client:
        response = await client.get(path, **kwargs)
        body = await response.json() if response.content_type == "application/json" else await response.text()
        return response.status, body, dict(response.headers)


def test_a_hostile_dead_letter_is_escaped_text_in_the_api_and_never_in_a_page(tmp_path):
    state = ConsoleState(settings_for(tmp_path))
    headers = (("dlq.reason", b"not JSON: <script>alert(3)</script>"), ("dlq.topic", b"events"),
               ("dlq.partition", b"0"), ("dlq.offset", b"7"))  # fmt: skip
    state.add_dead_letter(Message(HOSTILE, key=b"<u>\x01", headers=headers, offset=3))
    status, body, response_headers = asyncio.run(
        get(console_app(state.settings, state, collect=False), "/api/dead-letters")
    )
    (record,) = body["records"]
    print(json.dumps(record, indent=1))
    assert status == 200
    assert record["value"] == escaped(HOSTILE) and "\\x00\\xff\\xfe\\\\x41\\n" in record["value"]
    assert record["key"] == "<u>\\x01" and record["reason"] == "not JSON: <script>alert(3)</script>"
    assert record["source"] == {"topic": "events", "partition": "0", "offset": "7"}
    assert record["value_bytes"] == len(HOSTILE)
    assert "script-src 'self'" in response_headers["Content-Security-Policy"]
    for name in PAGES.values():  # the pages are static: data reaches them only through the API, as text
        assert "alert" not in (STATIC / name).read_text()
    scripts = "".join(p.read_text() for p in STATIC.glob("*.js"))
    assert "innerHTML" not in scripts and "insertAdjacentHTML" not in scripts and "outerHTML" not in scripts


def test_the_token_is_required_on_the_api_when_set(tmp_path):
    settings = settings_for(tmp_path, token="s3cret")
    app = lambda: console_app(settings, collect=False)  # noqa: E731 (a TestServer serves one app once)
    assert asyncio.run(get(app(), "/api/live"))[0] == 401
    assert asyncio.run(get(app(), "/api/live", headers={"X-Streamrec-Token": "wrong"}))[0] == 401
    assert asyncio.run(get(app(), "/api/live", headers={"X-Streamrec-Token": "s3cret"}))[0] == 200
    assert asyncio.run(get(app(), "/api/live?token=s3cret"))[0] == 200
    assert asyncio.run(get(app(), "/"))[0] == 200  # the pages hold no data


def test_a_non_loopback_bind_needs_a_token(tmp_path):
    for host in ("0.0.0.0", "10.1.2.3", "console.example"):
        with pytest.raises(ConfigError, match="STREAMREC_CONSOLE__TOKEN"):
            check_bind(settings_for(tmp_path, host=host).console)
    check_bind(settings_for(tmp_path, host="0.0.0.0", token="t").console)
    for host in ("127.0.0.1", "::1", "localhost"):
        check_bind(settings_for(tmp_path, host=host).console)


def test_the_api_is_read_only(tmp_path):
    async def post() -> set[int]:
        app = console_app(settings_for(tmp_path), collect=False)
        async with test_utils.TestClient(test_utils.TestServer(app)) as client:
            paths = ("/api/live", "/api/models", "/api/dead-letters", "/api/user/u1", "/")
            return {(await client.post(path)).status for path in paths} | {(await client.delete("/api/live")).status}

    assert asyncio.run(post()) == {405}


def test_live_and_models_json(tmp_path):
    registry = tmp_path / "registry"
    version = registry / "20261129T100000Z-base"
    version.mkdir(parents=True)
    (version / "manifest.json").write_text(
        json.dumps({"created_at": "2026-11-29T10:00:00Z", "files": {"a": {"bytes": 1500}, "b": {"bytes": 500}}})
    )
    (version / "metrics.json").write_text(json.dumps({"NDCG@10": 0.1, "curves": {"loss": [1.0]}}))
    (version / "config.json").write_text(json.dumps({"kind": "baseline"}))
    (registry / "latest").write_text("20261129T100000Z-base\n")
    state = ConsoleState(settings_for(tmp_path))
    metrics = WorkerMetrics()
    health = {"status": "ok", "model_version": "v1", "partitions": [0, 1], "refused_versions": {}}
    state.add_polls({"http://w1": poll_of(metrics, health)}, 100.0, [], {"status": "up"})
    metrics.events_in.inc(50)
    lag = [
        {"partition": 0, "end": 90, "committed": 80, "lag": 10},
        {"partition": 1, "end": 5, "committed": 5, "lag": 0},
    ]
    refused = health | {"model_version": "v2", "refused_versions": {"v3": "RegistryError: corrupt"}}
    state.add_polls({"http://w1": poll_of(metrics, refused)}, 101.0, lag, {"status": "up", "brokers": 1})
    state.add_model_update(
        Message(b'{"version": "v2", "created_at": "c", "sha256": "ab", "path": "v2", "metrics": {}}')
    )
    app = console_app(state.settings, state, collect=False)
    _, live, _ = asyncio.run(get(app, "/api/live"))
    print(json.dumps(live)[:600])
    assert live["series"]["t"] == [101.0] and live["series"]["events_in"] == [50.0]
    assert live["current"]["lag"] == 10 and live["current"]["latency_p50_ms"] is None
    assert [(p["partition"], p["owner"]) for p in live["partitions"]] == [(0, "http://w1"), (1, "http://w1")]
    assert live["workers"][0]["status"] == "ok" and live["workers"][0]["model_version"] == "v2"
    _, models, _ = asyncio.run(get(console_app(state.settings, state, collect=False), "/api/models"))
    print(json.dumps(models)[:600])
    (row,) = models["versions"]
    assert row == {"version": "20261129T100000Z-base", "latest": True, "created_at": "2026-11-29T10:00:00Z",
                   "bytes": 2000, "kind": "baseline", "metrics": {"NDCG@10": 0.1}}  # fmt: skip
    assert [(e["event"], e["version"]) for e in models["events"]] == [("refused", "v3"), ("swapped", "v2")]
    assert models["announcements"][0]["version"] == "v2" and models["experiment"] is None


def test_a_users_view_from_their_worker_with_titles_and_extra_fields(tmp_path):
    async def run() -> dict:
        worker = web.Application()

        async def window(request):
            assert request.match_info["user_id"] == "u 1"  # quoted by the console, whole
            events = [{"event_id": "e1", "item_id": "i1", "event_type": "view", "ts": 1.0}]
            return web.json_response({"user_id": "u 1", "known_user": True, "events": events, "last_shown": []})

        async def recommendations(request):
            items = [{"item_id": "i2", "score": 0.9, "because": "i1", "heads": {"ctr": 0.2}}]
            return web.json_response({"user_id": "u 1", "items": items, "model_version": "v1", "variant": "B"})

        worker.router.add_get("/windows/{user_id}", window)
        worker.router.add_get("/recommendations/{user_id}", recommendations)
        async with test_utils.TestServer(worker) as server:
            dead = "http://127.0.0.1:9"  # nothing listens: asked first, skipped
            state = ConsoleState(settings_for(tmp_path, workers=[dead, str(server.make_url("")).rstrip("/")]))
            for item_id, title in (("i1", "Toy Story"), ("i2", "<i>Heat</i>")):
                state.add_item(Message(json.dumps({"item_id": item_id, "title": title}).encode(), key=item_id.encode()))
            emitted = json.dumps({"user_id": "u 1", "items": [{"item_id": "i2"}]}).encode()
            state.add_recommendation(Message(emitted, key=b"u 1"))
            state.add_recommendation(Message(None, key=b"u 1"))  # a tombstone: nothing to show
            app = console_app(state.settings, state, collect=False)
            return (await get(app, "/api/user/u%201"))[1]

    view = asyncio.run(run())
    print(json.dumps(view)[:800])
    assert [e["title"] for e in view["window"]["events"]] == ["Toy Story"]
    (item,) = view["top_k"]["items"]
    assert item["title"] == "<i>Heat</i>" and item["because_title"] == "Toy Story" and item["heads"] == {"ctr": 0.2}
    assert view["top_k"]["fields"] == {"model_version": "v1", "variant": "B"}
    assert [r["items"][0]["title"] for r in view["emitted"]] == ["<i>Heat</i>"]
    assert view["commands"]["forget"] == "streamrec forget --user 'u 1'"
