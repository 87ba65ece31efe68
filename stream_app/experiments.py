"""Online experiments, what a worker decides (pure; docs/operations.md, "Online experiments").

Two variants (control, treatment), each a registry version. A/B (`ab`): a stable hash of (experiment,
user id) puts each user in one variant for the whole experiment, on every worker and across restarts.
Interleave (`interleave`): every user gets one list merged from both variants' rankings by team draft,
each item tagged with the variant that contributed it; a later event on an item credits that variant.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, NamedTuple, Sequence

from core.contracts import ExperimentRecord, RecommendedItem
from state.window import UserWindow
from stream_app.recommender import Recommender

CONTROL, TREATMENT = "control", "treatment"
INTERLEAVED = "interleaved"  # a record's variant in interleave mode: its items name their own


def bucket(experiment: str, user_id: str) -> float:
    """A user's place in [0, 1) for an experiment: the first 8 bytes of sha256(experiment, user id).
    The same on every worker and Python process (not `hash()`, which is salted per process)."""
    digest = hashlib.sha256(f"{experiment}\x00{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(experiment: str, user_id: str, treatment_share: float) -> str:
    """The variant that serves `user_id` in an A/B experiment."""
    return TREATMENT if bucket(experiment, user_id) < treatment_share else CONTROL


def team_draft(
    control: Sequence[RecommendedItem], treatment: Sequence[RecommendedItem], k: int, seed: str
) -> list[RecommendedItem]:
    """Team-draft interleaving (Radlinski, Kurup & Joachims, CIKM 2008): the team with fewer picks so far
    picks next (a coin toss, seeded by `seed`, when even) its best item not in the list yet; at most k items.
    Each item comes back with `variant` set to the team that picked it."""
    coin = random.Random(seed)
    teams = {CONTROL: list(control), TREATMENT: list(treatment)}
    next_rank = {CONTROL: 0, TREATMENT: 0}
    picks = {CONTROL: 0, TREATMENT: 0}
    merged: list[RecommendedItem] = []
    taken: set[str] = set()

    def has_more(team: str) -> bool:
        ranking = teams[team]
        while next_rank[team] < len(ranking) and ranking[next_rank[team]].item_id in taken:
            next_rank[team] += 1
        return next_rank[team] < len(ranking)

    while len(merged) < k and (has_more(CONTROL) or has_more(TREATMENT)):
        if picks[CONTROL] != picks[TREATMENT]:
            team = CONTROL if picks[CONTROL] < picks[TREATMENT] else TREATMENT
        else:
            team = CONTROL if coin.random() < 0.5 else TREATMENT
        if not has_more(team):  # one ranking ran out: the other fills the list
            team = TREATMENT if team == CONTROL else CONTROL
        item = teams[team][next_rank[team]]
        merged.append(item._replace(variant=team))
        taken.add(item.item_id)
        picks[team] += 1
    return merged


def draft_seed(experiment: str, user_id: str, trigger_event_id: str) -> str:
    """The coin of one interleaved list: a redelivered event gets the same list."""
    return f"{experiment}\x00{user_id}\x00{trigger_event_id}"


class Served(NamedTuple):
    """A user's list and what served it."""

    items: list[RecommendedItem]
    model_version: str
    experiment: str | None = None
    variant: str | None = None


Scorer = Callable[[Recommender, Mapping[str, UserWindow]], dict[str, list[RecommendedItem]]]


@dataclass(frozen=True)
class LiveExperiment:
    """A running experiment on one worker: its record and each variant's loaded model."""

    record: ExperimentRecord
    recommenders: Mapping[str, Recommender]  # "control", "treatment" -> the model serving it

    @property
    def name(self) -> str:
        return self.record.name

    def serve(self, windows: Mapping[str, UserWindow], triggers: Mapping[str, str], score: Scorer) -> dict[str, Served]:
        """Each user's list under the experiment. `triggers`: user -> the event id the list answers (the
        interleaving coin); `score(recommender, windows)` scores windows with one variant's model (a user
        it fails for is left out)."""
        if self.record.mode == "ab":
            return self._serve_ab(windows, score)
        control, treatment = self.recommenders[CONTROL], self.recommenders[TREATMENT]
        lists = {CONTROL: score(control, windows), TREATMENT: score(treatment, windows)}
        version = f"{control.model_version}+{treatment.model_version}"
        return {
            user: Served(
                team_draft(
                    lists[CONTROL][user], lists[TREATMENT][user], control.k, draft_seed(self.name, user, trigger)
                ),
                version,
                self.name,
                INTERLEAVED,
            )
            for user, trigger in triggers.items()
            if user in lists[CONTROL] and user in lists[TREATMENT]
        }

    def credits(
        self, stored: Mapping[str, UserWindow], events: Mapping[str, Sequence[tuple[str, str]]]
    ) -> list[Credit]:
        """What a batch's events `(item_id, event_type)` per user credit, against the lists the users' stored
        windows were last shown in an experiment (`Credit`). Live figures for Prometheus: a list shown in an
        earlier experiment counts in this one; the report, which reads the topics, tells them apart."""
        found = []
        for user, window in stored.items():
            if window.shown_variants:
                variant = INTERLEAVED if self.record.mode == "interleave" else window.shown_variants[0]
                found += credits(variant, window.recommended, window.shown_variants, events[user])
        return found

    def _serve_ab(self, windows: Mapping[str, UserWindow], score: Scorer) -> dict[str, Served]:
        groups: dict[str, dict[str, UserWindow]] = {CONTROL: {}, TREATMENT: {}}
        for user, window in windows.items():
            groups[assign(self.name, user, self.record.treatment_share)][user] = window
        served = {}
        for variant, group in groups.items():
            recommender = self.recommenders[variant]
            for user, items in score(recommender, group).items():
                tagged = [item._replace(variant=variant) for item in items]
                served[user] = Served(tagged, recommender.model_version, self.name, variant)
        return {user: served[user] for user in windows if user in served}  # in the windows' order


class Credit(NamedTuple):
    """One event of a user whose last list was served in an experiment."""

    list_variant: str  # the variant of the list shown before the event (INTERLEAVED in interleave mode)
    credited: str | None  # the variant that contributed the event's item to it; None: not in the list
    event_type: str


def credits(
    list_variant: str, shown: Sequence[str], variants: Sequence[str], events: Sequence[tuple[str, str]]
) -> Iterator[Credit]:
    """The events `(item_id, event_type)` of a user against the list they were last shown, served by
    `list_variant`: its item ids `shown` and the variant that contributed each one (`variants`) -> which
    variant each event credits, if any."""
    by_item = dict(zip(shown, variants))
    for item_id, event_type in events:
        yield Credit(list_variant, by_item.get(item_id), event_type)
