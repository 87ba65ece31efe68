"""The console in Chromium, over a real Apache Kafka broker and a real worker: a replay of MovieLens runs
while the pages are looked at. Each page loads without console errors or uncaught exceptions; the live
numbers move while the replay runs; the models page names the version the worker serves; a hostile record
(script and img-onerror markup, NUL and a non-UTF-8 byte) that the worker dead-letters shows on the dead
letters page as its text, with no dialog and no element made of it; the user page lists the titles of the
window the worker holds for a known user and their top-k. A screenshot of every page is saved."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from core.brokers import stop_process
from stream_app.demo import free_port
from stream_app.replay import dataset_records
from tests.integration.conftest import (
    REPO,
    WorkerProcess,
    dumps,
    fresh_settings,
    produce,
    produce_paced,
    run,
    settings_env,
)
from tests.support import ML100K

pytestmark = [pytest.mark.integration, pytest.mark.browser]

N_ITEMS = 400  # the worker embeds each at start
N_EVENTS = 2400
RATE = 120.0  # events/s: the replay lasts 20 s
HOSTILE_KEY = b"<img src=x onerror=alert(3)>"
HOSTILE = b"<script>alert(1)</script><img src=x onerror=alert(2)> \x00\xff raw"


class Deployment:
    """A worker and `streamrec console` on fresh topics, the catalog published, the replay started."""

    def __init__(self, broker, registry, tmp_path):
        self.settings = fresh_settings(broker, registry, tmp_path).replace(console={"port": free_port()})
        items, events = dataset_records(ML100K)
        self.items = items[:N_ITEMS]
        catalog = {key for key, _ in self.items}
        self.events = [(user, e) for user, e in events if e["item_id"] in catalog][:N_EVENTS]
        self.titles = {key: item["title"] for key, item in self.items}
        catalog_records = [(k.encode(), dumps(v)) for k, v in self.items]
        with ThreadPoolExecutor(1) as thread:  # asyncio.run beside Playwright's loop in this thread
            thread.submit(run, produce(self.settings, self.settings.topics.items, catalog_records)).result()
        self.worker = WorkerProcess(self.settings, tmp_path / "worker.log")
        with open(tmp_path / "console.log", "ab") as log:
            command = [sys.executable, "-m", "stream_app.cli", "console"]
            self.console = subprocess.Popen(command, cwd=REPO, env=settings_env(self.settings), stdout=log, stderr=log)
        self.url = f"http://127.0.0.1:{self.settings.console.port}"
        self.worker.start()
        self.worker.wait_for_catalog(len(self.items))
        records = [(user.encode(), dumps(e)) for user, e in self.events]
        records.insert(len(records) // 2, (HOSTILE_KEY, HOSTILE))  # the worker dead-letters it mid-replay
        self.replay = threading.Thread(
            target=produce_paced, args=(self.settings, self.settings.topics.events, records, RATE)
        )
        self.replay_started = time.monotonic()
        self.replay.start()
        self.wait_for_console()

    def wait_for_console(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(self.url + "/api/live", timeout=2).read()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def known_user(self) -> tuple[str, list[str]]:
        """The user with the most replayed events, and the titles of their window (the last window_size)."""
        user, _ = Counter(u for u, _ in self.events).most_common(1)[0]
        theirs = [e for u, e in self.events if u == user][-self.settings.worker.window_size :]
        return user, [self.titles[e["item_id"]] for e in theirs]

    def stop(self) -> None:
        self.replay.join()
        stop_process(self.console)
        self.worker.stop()


@pytest.fixture(scope="module")
def deployment(broker, baseline_registry, tmp_path_factory):
    deployed = Deployment(broker, baseline_registry, tmp_path_factory.mktemp("console"))
    yield deployed
    deployed.stop()


class Watched:
    """A page whose console errors, uncaught exceptions and dialogs are recorded (a dialog is dismissed)."""

    def __init__(self, chromium, url: str):
        self.page = chromium.new_page(viewport={"width": 1440, "height": 1000})
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.goto(url)
        self.page.wait_for_selector("#status.ok", timeout=15_000)  # the first API answer rendered

    def save(self, path) -> None:
        self.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot {path}")

    def close(self) -> None:
        self.page.close()


def tile(page, figure: str) -> str:
    return page.locator(f'[data-figure="{figure}"] .value').inner_text()


def test_live_numbers_move_while_a_replay_runs(deployment, chromium, screenshots):
    live = Watched(chromium, deployment.url + "/")
    seen = []
    while deployment.replay.is_alive() and len(seen) < 12:
        seen.append((tile(live.page, "events_in"), tile(live.page, "records_out"), tile(live.page, "latency_p50_ms")))
        time.sleep(1.0)
    points = live.page.locator("figure.panel").first.locator("polyline").first.get_attribute("points") or ""
    print(f"live tiles each second (events in/s, records out/s, p50 ms): {seen}")
    print(
        f"events chart: {len(points.split())} points after {time.monotonic() - deployment.replay_started:.0f}s of replay"
    )
    live.save(screenshots / "console_live.png")
    live.close()
    assert len(seen) >= 5, "the replay ended before the numbers could be watched"
    assert len({events for events, _, _ in seen}) > 1 and len({out for _, out, _ in seen}) > 1  # they move
    assert max(float(events.replace(",", "")) for events, _, _ in seen if events != "–") > 0
    assert len(points.split()) >= 3
    assert live.errors == []


def test_models_page_names_the_served_version_and_a_refusal(deployment, chromium, screenshots):
    """A version announced but not in the registry: the worker refuses it, and the page says why."""
    from export.registry import Registry

    serving = Registry(deployment.settings.registry.path).latest()
    missing = {"version": "20990101T000000Z-missing", "path": "x", "sha256": "0" * 64, "created_at": "", "metrics": {}}
    with ThreadPoolExecutor(1) as thread:
        topic = deployment.settings.topics.model_updates
        thread.submit(run, produce(deployment.settings, topic, [(b"missing", dumps(missing))])).result()
    models = Watched(chromium, deployment.url + "/models")
    models.page.wait_for_selector(f"#serving td >> text={serving}", timeout=15_000)
    models.page.wait_for_selector("#history .bad >> text=refused", timeout=30_000)
    versions = models.page.locator("#versions tbody tr").all_inner_texts()
    history = models.page.locator("#history tbody tr").all_inner_texts()
    print(f"registry rows: {versions}")
    print(f"history rows: {history}")
    models.save(screenshots / "console_models.png")
    models.close()
    assert any(serving in row and "(latest)" in row for row in versions)
    assert any("refused" in row and missing["version"] in row and "not found" in row for row in history)
    assert any("announced" in row and missing["version"] in row for row in history)
    assert models.errors == []


def test_a_hostile_dead_letter_renders_as_text(deployment, chromium, screenshots):
    dead = Watched(chromium, deployment.url + "/dead-letters")
    dead.page.wait_for_selector("#dead-letters tbody tr", timeout=60_000)  # dead-lettered mid-replay
    dead.page.wait_for_timeout(500)  # a dialog an injected handler raised would be recorded by now
    shown = dead.page.locator("#dead-letters pre.payload").first
    text, visible = shown.inner_text(), shown.is_visible()
    made = dead.page.locator("#dead-letters script, #dead-letters img, #dead-letters iframe").count()
    reason = dead.page.locator("#dead-letters .reason").first.inner_text()
    print(f"payload as shown: {text!r}; reason: {reason!r}; elements made of it: {made}; dialogs: {dead.dialogs}")
    dead.save(screenshots / "console_dead_letters.png")
    dead.close()
    assert text == "<script>alert(1)</script><img src=x onerror=alert(2)> \\x00\\xff raw"
    assert visible and made == 0 and dead.dialogs == []
    assert "not UTF-8" in reason
    assert dead.errors == []


def test_the_user_page_shows_the_titles_of_a_known_users_window(deployment, chromium, screenshots):
    deployment.replay.join()
    user, expected = deployment.known_user()
    deployment.worker.wait_for(lambda health: health.get("events_waiting") == 0 and health.get("status") == "ok")
    page = Watched(chromium, f"{deployment.url}/user?user={user}")
    page.page.wait_for_selector("#window .title", timeout=15_000)
    page.page.wait_for_function(
        f"document.querySelectorAll('#window .title').length === {len(expected)}", timeout=30_000
    )
    window = page.page.locator("#window .title").all_inner_texts()
    top_k = page.page.locator("#top-k tbody tr").all_inner_texts()
    emitted = page.page.locator("#emitted tbody tr").count()
    print(
        f"user {user}: window of {len(window)} titles, newest first: {window[:3]}; top-k rows {len(top_k)}: {top_k[:2]}"
    )
    print(f"records emitted for them shown: {emitted}")
    page.save(screenshots / "console_user.png")
    page.close()
    assert window == expected[::-1]
    assert len(top_k) == deployment.settings.worker.top_k and emitted > 0
    assert page.errors == []
