"""What the console has read, in bounded buffers, and the JSON each page polls (`/api/...`)."""

from __future__ import annotations

import json
import shlex
from collections import deque
from pathlib import Path

from console.records import dead_letter, model_update
from console.samples import BROKER_UP, REFUSALS, WorkerPoll, interval_figures
from core.model_config import CONFIG_FILE
from core.settings import Settings
from export.registry import MANIFEST, Registry

FIGURES = ("events_in", "records_out", "dead_letters", "batch_size", "latency_p50_ms", "latency_p99_ms", "hit_rate")
MAX_TITLE_CHARS = 200  # titles are kept for every catalog item: bound each


class ConsoleState:
    def __init__(self, settings: Settings):
        self.settings = settings
        c = settings.console
        self.history: deque[dict] = deque(maxlen=max(2, int(c.history_s / c.poll_interval_s)))
        self.dead_letters: deque[dict] = deque(maxlen=c.dead_letters)
        # (user id, the record's bytes): parsed when a user is looked up, a third of the memory of parsed records
        self.recommendations: deque[tuple[str, bytes]] = deque(maxlen=c.recent_recommendations)
        self.announcements: deque[dict] = deque(maxlen=100)
        self.model_events: deque[dict] = deque(maxlen=200)  # swaps and refusals seen in the workers' /health
        self.titles: dict[str, str] = {}
        self.experiment: dict | None = None  # the newest record of the experiments topic, if it exists
        self.polls: dict[str, WorkerPoll] = {}
        self.polled_at: float | None = None
        self.partitions: list[dict] = []  # events partitions: end, committed, lag, owner
        self.broker: dict = {"status": "not asked yet"}
        self.readers: dict[str, str] = {}  # topic -> "reading" or why not

    # --- what the readers and the poller hand in ----------------------------------------------

    def add_recommendation(self, message) -> None:
        if message.value is not None and message.key is not None:  # no value: a forgotten user's tombstone
            self.recommendations.append((message.key.decode("utf-8", "replace"), message.value))

    def add_dead_letter(self, message) -> None:
        self.dead_letters.append(dead_letter(message))

    def add_model_update(self, message) -> None:
        self.announcements.append(model_update(message))

    def add_item(self, message) -> None:
        """Titles for the pages: the catalog as the workers hold it (a tombstone or `available: false`
        removes), at most `worker.max_catalog_items`, as they keep."""
        key = (message.key or b"").decode("utf-8", "replace")
        try:
            item = json.loads(message.value) if message.value is not None else None
        except ValueError:
            return
        if not isinstance(item, dict) or item.get("available") is False:
            self.titles.pop(key, None)
        elif key in self.titles or len(self.titles) < self.settings.worker.max_catalog_items:
            self.titles[key] = str(item.get("title", key))[:MAX_TITLE_CHARS]

    def add_experiment(self, message) -> None:
        try:
            value = json.loads(message.value) if message.value is not None else None
        except ValueError:
            value = {"unreadable record at offset": message.offset}
        self.experiment = value if isinstance(value, dict) else None

    def add_polls(self, polls: dict[str, WorkerPoll], at: float, partitions: list[dict], broker: dict) -> None:
        """One round: every worker's answer, the group's lag per partition, the broker's state."""
        if self.polled_at is not None:
            figures = interval_figures(self.polls, polls, at - self.polled_at)
            self.history.append({"t": at, **figures, "lag": sum(p["lag"] for p in partitions) if partitions else None})
        self._note_model_changes(polls, at)
        self.polls, self.polled_at, self.partitions, self.broker = polls, at, partitions, broker

    def _note_model_changes(self, polls: dict[str, WorkerPoll], at: float) -> None:
        for url, poll in polls.items():
            before = self.polls.get(url)
            if not poll.health or not before or not before.health:
                continue
            was, now = before.health.get("model_version"), poll.health.get("model_version")
            if was != now:
                self.model_events.append({"at": at, "worker": url, "event": "swapped", "version": now, "from": was})
            for version, reason in (poll.health.get("refused_versions") or {}).items():
                if version not in (before.health.get("refused_versions") or {}):
                    self.model_events.append(
                        {"at": at, "worker": url, "event": "refused", "version": version, "reason": reason}
                    )

    # --- the pages' JSON ---------------------------------------------------------------------

    def live(self) -> dict:
        points = list(self.history)
        owners = {p: url for url, poll in self.polls.items() if poll.health for p in poll.health.get("partitions", [])}
        return {
            "polled_at": self.polled_at,
            "history_s": self.settings.console.history_s,
            "series": {name: [point[name] for point in points] for name in ("t", *FIGURES, "lag")},
            "current": {name: points[-1][name] for name in (*FIGURES, "lag")} if points else {},
            "partitions": [p | {"owner": owners.get(p["partition"])} for p in self.partitions],
            "workers": [worker_row(poll) for poll in self.polls.values()],
            "broker": self.broker,
            "readers": self.readers,
            "group": self.settings.worker.app_id,
        }

    def models(self) -> dict:
        return {
            "registry": str(self.settings.registry.path),
            "versions": registry_versions(self.settings.registry.path),
            "serving": [
                {
                    "worker": url,
                    "status": poll.status,
                    "model_version": (poll.health or {}).get("model_version"),
                    "refused_versions": (poll.health or {}).get("refused_versions") or {},
                    "refusals": poll.total(REFUSALS) if poll.health else None,
                }
                for url, poll in self.polls.items()
            ],
            "announcements": list(reversed(self.announcements)),
            "events": list(reversed(self.model_events)),
            "experiment": self.experiment,
            "experiments_topic": self.settings.topics.experiments,
            "commands": {"list": "streamrec models list --verify", "rollback": "streamrec rollback --to {version}"},
        }

    def dead_letters_page(self) -> dict:
        return {
            "topic": self.settings.topics.dlq,
            "kept": self.dead_letters.maxlen,
            "records": list(reversed(self.dead_letters)),
            "reader": self.readers.get(self.settings.topics.dlq),
        }

    def user_records(self, user_id: str, limit: int = 10) -> list[dict]:
        """The newest records emitted for the user that the console still holds, newest first."""
        found = []
        for user, value in reversed(self.recommendations):
            if user == user_id:
                try:
                    record = json.loads(value)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    found.append(record | {"items": self.titled(record.get("items"))})
                if len(found) == limit:
                    break
        return found

    def titled(self, items) -> list[dict]:
        """Recommended items with their titles and their `because` item's."""
        if not isinstance(items, list):
            return []
        return [
            item
            | {"title": self.titles.get(item.get("item_id")), "because_title": self.titles.get(item.get("because"))}
            for item in items
            if isinstance(item, dict)
        ]

    def user_commands(self, user_id: str) -> dict:
        quoted = shlex.quote(user_id)
        return {
            "follow": f"streamrec recommendations --user {quoted} --follow",
            "forget": f"streamrec forget --user {quoted}",
        }


def worker_row(poll: WorkerPoll) -> dict:
    health = poll.health or {}
    return {
        "url": poll.url,
        "status": poll.status,
        "model_version": health.get("model_version"),
        "partitions": health.get("partitions", []),
        "catalog_items": health.get("catalog_items"),
        "events_waiting": health.get("events_waiting"),
        "seconds_since_last_batch": health.get("seconds_since_last_batch"),
        "broker_up": poll.value(BROKER_UP),
    }


def registry_versions(root: Path) -> list[dict]:
    """Each version's name, kind, creation time, size on disk and scalar metrics, oldest first, read from its
    manifest and JSON files (not re-hashed: `streamrec models list --verify` does that)."""
    registry = Registry(root)
    latest = registry.latest()
    found = []
    for name in registry.versions():
        path = registry.version_path(name)
        row: dict = {"version": name, "latest": name == latest}
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            metrics = json.loads((path / "metrics.json").read_text())
            row |= {
                "created_at": manifest.get("created_at"),
                "bytes": sum(entry.get("bytes", 0) for entry in manifest.get("files", {}).values()),
                "kind": json.loads((path / CONFIG_FILE).read_text()).get("kind"),
                "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
            }
        except (OSError, ValueError, AttributeError) as e:
            row["error"] = f"unreadable: {e}"
        found.append(row)
    return found
