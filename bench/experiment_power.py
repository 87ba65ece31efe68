"""How many events an online experiment needs before the better variant is significant: A/B vs team-draft
interleaving, on the ml-100k replay, with the worker's own code and no broker (issue #18, item 2).

The replay's events, in time order, go through the worker's steps in micro-batches of --batch events
(`group_valid_events`, `advance_windows`, `LiveExperiment.serve`, `build_records`);
each touched user gets a list, served as the experiment's mode says. Both variants score every touched
user once (their lists do not depend on the experiment: a window holds events, not lists), so each seed
re-serves the same lists: an A/B split by the seed's assignment, or their team draft with the seed's
coins. The events and the records then go to the report's `judge` (export/experiment_report.py), as
`streamrec experiment report` reads them from the topics, and `events_to_significance` says after how many
judged events (those of users already shown a list) the 95% interval excluded 0 for good.

    HF_HUB_OFFLINE=1 STREAMREC_REGISTRY__PATH=... .venv/bin/python bench/experiment_power.py \\
        --control <baseline version> --treatment <trained version> [--events 20000] [--seeds 10] [--png out.png]
        [--control-max-per-category 1]

A replay judges a hit as offline evaluation does (the logged item was in the list shown before it): the
users did not see these lists, so it measures which variant predicts their next item, not influence.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.contracts import ExperimentRecord, Item  # noqa: E402
from core.options import command_settings  # noqa: E402
from core.settings import default_of  # noqa: E402
from export.experiment_report import EventRow, events_to_significance, judge  # noqa: E402
from state.window import UserWindow  # noqa: E402
from stream_app.experiments import CONTROL, TREATMENT, LiveExperiment  # noqa: E402
from stream_app.replay import dataset_records  # noqa: E402
from stream_app.serving import load_recommender  # noqa: E402
from stream_app.steps import advance_windows, build_records, group_valid_events  # noqa: E402

MODES = ("ab", "interleave")


def score_replay(settings, recommenders, stream, batch: int):
    """The replay in micro-batches -> per batch: (touched, windows after it, each variant's lists)."""
    w = settings.worker
    limits = {"max_bytes": w.max_record_bytes, "event_types": set(w.event_weights), "max_future_skew_s": 1e12}
    windows: dict[str, UserWindow] = {}
    batches = []
    for start in range(0, len(stream), batch):
        values = [json.dumps(value).encode() for _, value in stream[start : start + batch]]
        touched, _ = group_valid_events(values, **limits)
        stored = {user: windows.get(user, UserWindow()) for user in touched}
        updated, _ = advance_windows(
            touched, stored, w.window_size, w.window_max_age_days * 86_400.0, w.seen_items_max, w.event_weights
        )
        for user_events in touched.values():  # the variants share one trending counter, as on a worker
            for event in user_events.events:
                recommenders[CONTROL].observe(event.item_id, event.event_type, event.ts)
        lists = {v: dict(zip(updated, r.recommend(list(updated.values())))) for v, r in recommenders.items()}
        windows.update(updated)
        batches.append((touched, updated, lists))
    return batches


def serve_replay(name: str, mode: str, share: float, recommenders, batches):
    """One experiment over the scored replay -> (events, records) as the topics would hold them."""
    versions = {v: r.runtime.version for v, r in recommenders.items()}
    record = ExperimentRecord(
        name=name,
        state="running",
        mode=mode,
        variants={v: {"version": m.name, "sha256": m.sha256} for v, m in versions.items()},
        treatment_share=share,
        at="2026-12-06T00:00:00+00:00",
    )
    experiment = LiveExperiment(record, recommenders)
    by_model = {id(r): v for v, r in recommenders.items()}
    events, records = [], []
    for touched, updated, lists in batches:
        triggers = {user: touched[user].events[-1].event_id for user in updated}
        served = experiment.serve(updated, triggers, lambda model, ws: {u: lists[by_model[id(model)]][u] for u in ws})
        shown = {user: s.items for user, s in served.items()}
        for user, user_events in touched.items():
            events += [
                EventRow(user, e.event_id, e.item_id, e.event_type, int(e.ts * 1000)) for e in user_events.events
            ]
        records += [json.loads(r.value) for r in build_records(touched, shown, "", 0.0, None, served)]
    return events, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ml-100k")
    parser.add_argument("--control", required=True, help="the control version (e.g. the baseline)")
    parser.add_argument("--treatment", required=True, help="the treatment version (e.g. a trained model)")
    parser.add_argument("--events", type=int, default=20_000, help="the first N events of the replay")
    parser.add_argument("--batch", type=int, default=16, help="events per micro-batch")
    parser.add_argument("--seeds", type=int, default=10, help="experiments (assignments, coins) per mode")
    parser.add_argument("--share", type=float, default=0.5, help="A/B: treatment's share of users")
    parser.add_argument(
        "--control-max-per-category",
        type=int,
        default=default_of("worker.max_per_category"),
        help="the control's cap per category (a business rule): a smaller difference, e.g. one version against itself",
    )
    parser.add_argument("--png", type=Path, default=None, help="the power curves: share of seeds significant")
    args = parser.parse_args()
    settings = command_settings({})

    items, stream = dataset_records(args.data)
    stream = stream[: args.events]
    catalog = [Item.model_validate(value) for _, value in items]
    control_settings = settings.replace(worker={"max_per_category": args.control_max_per_category})
    recommenders = {CONTROL: load_recommender(control_settings, args.control)}
    recommenders[TREATMENT] = load_recommender(settings, args.treatment, recommenders[CONTROL].trending)
    for recommender in recommenders.values():
        recommender.add_items(catalog, recommender.embed_items(catalog))
    started = time.perf_counter()
    batches = score_replay(
        settings, {CONTROL: recommenders[CONTROL], TREATMENT: recommenders[TREATMENT]}, stream, args.batch
    )
    print(
        f"{len(stream)} events of {len({u for u, _ in stream})} users in micro-batches of {args.batch}, scored by "
        f"control {args.control} (max_per_category {args.control_max_per_category}) and treatment {args.treatment} in {time.perf_counter() - started:.0f} s; "
        f"{args.seeds} experiments per mode"
    )
    needed: dict[str, list[int | None]] = {}
    users: dict[str, list[int]] = {mode: [] for mode in MODES}
    judged = {}
    print(
        "| mode | significant at the end | events needed: median | min | max | users by then: median "
        "| final difference [95% CI] | verdict |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for mode in MODES:
        needed[mode] = []
        for seed in range(args.seeds):
            events, records = serve_replay(f"power-{seed}", mode, args.share, recommenders, batches)
            outcome = judge(f"power-{seed}", events, records)
            needed[mode].append(events_to_significance(outcome))
            if needed[mode][-1] is not None:
                users[mode].append(len({j.user_id for j in outcome.judged[: needed[mode][-1]]}))
            judged[mode] = len(outcome.judged)
        found = [n for n in needed[mode] if n is not None]
        estimate, low, high = outcome.difference()  # the last seed's
        summary = f"{statistics.median(found):.0f} | {min(found)} | {max(found)}" if found else "- | - | -"
        print(
            f"| {mode} | {len(found)} of {args.seeds} | {summary} | "
            f"{statistics.median(users[mode]) if users[mode] else '-'} | {estimate:+.4f} [{low:+.4f}, {high:+.4f}] "
            f"| {outcome.verdict()} |"
        )
    print(f"judged events per experiment: {judged} (the events of users already shown a list)")
    if args.png:
        cap = f" (max {args.control_max_per_category} per category)" if args.control_max_per_category else ""
        plot(needed, judged, args.png, f"control {args.control}{cap}\nvs treatment {args.treatment}, ml-100k replay")
        print(f"chart: {args.png}")


def plot(needed: dict[str, list[int | None]], judged: dict[str, int], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, values in needed.items():
        x = np.arange(1, judged[mode] + 1)
        reached = np.array([n if n is not None else np.inf for n in values])
        ax.plot(x, (reached[None, :] <= x[:, None]).mean(axis=1), label=mode)
    ax.set_xscale("log")
    ax.set_xlabel("events judged")
    ax.set_ylabel("share of experiments significant for good")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
