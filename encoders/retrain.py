"""`streamrec retrain`: fine-tune on the event log, promote only through a gate.

    read      events (bounded: stored position and/or --since) + items topic (+ --base data)
    hold out  the most recent slice of events by time (default the last 10%): each held-out
              event, with the user's preceding window, is one evaluation case
    train     the candidate on everything before the slice, warm-started from production
              (transplanted onto today's catalog) when production has a checkpoint; then, when
              production has a ranker (or --ranker; --no-ranker: never), a ranker on the
              candidate's candidates over the same events (encoders.ranker_train.fit_and_evaluate)
    evaluate  candidate and production (transplanted, NOT trained) on the same cases with the
              same function: encoders.evaluate.evaluate_scores, product setting (history
              excluded), NDCG@10 and HR@10, in the retrieval order and, for a model with a
              ranker, re-ranked by it (its own ranker: production's as served); popularity beside
    gate      what the worker would serve: promote iff candidate NDCG@10 >= production NDCG@10
              - tolerance (absolute), each with its ranker when it has one
    promote   save checkpoint (+ ranker/) -> export_and_register(make_latest=True), which writes
              ranker.onnx with its parity -> announce on model-updates -> advance the stored position
    report    report.md + report.json in the run's work dir, printed

A production version without a checkpoint (kind "baseline", or an empty registry) has
no model to warm-start from or to transplant: the candidate is trained from scratch and
must beat popularity on the same cases (see docs/operations.md).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from core.datasets import Interactions, Split, load_interactions, read_records, split_leave_one_out
from core.errors import BrokerError, ConfigError, NotEnoughData, RegistryError  # NotEnoughData: importable here too
from core.features import FeatureSpec
from core.settings import Settings
from encoders.config import RetrainConfig
from encoders.event_log import merge_dataset, parse_duration, read_event_log, read_offsets, write_dataset, write_offsets

log = logging.getLogger(__name__)

GATE_METRIC = "NDCG@10"  # product setting (history excluded)
PROMOTED, REJECTED, SKIPPED, FAILED = "promoted", "rejected", "skipped", "failed"
EXIT_CODES = {PROMOTED: 0, FAILED: 1, REJECTED: 3, SKIPPED: 4}


# --- the held-out slice ------------------------------------------------------------------------


def parse_holdout(text: str) -> tuple[str, float]:
    """'10%' or '0.1' -> ("fraction", 0.1); '1d' -> ("duration", 86400.0)."""
    value = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?%", value):
        kind, amount = "fraction", float(value[:-1]) / 100
    elif re.fullmatch(r"\d*\.\d+|\d+", value):
        kind, amount = "fraction", float(value)
    else:
        return "duration", parse_duration(value)
    if not 0 < amount < 1:
        raise ConfigError(
            f"holdout {text!r}: a share of the events must be between 0 and 100% (exclusive), "
            f"e.g. 10%, or a duration such as 1d"
        )
    return kind, amount


def holdout_cutoff(times: np.ndarray, holdout: str) -> float:
    """All event times [E] (seconds) -> the cutoff: events at or after it are held out.

    A share holds out the newest ceil(share * E) events (events tied with the oldest of
    them go along); a duration holds out the events within it of the newest event.
    """
    if len(times) == 0:
        raise NotEnoughData("no events")
    kind, amount = parse_holdout(holdout)
    if kind == "duration":
        return float(np.max(times) - amount)
    k = max(1, math.ceil(amount * len(times)))
    return float(np.sort(times)[-k])


@dataclass
class Holdout:
    train: Interactions  # each user's events before the cutoff (users without any left out)
    history: Interactions  # one row per case: the user's window before the held-out event
    targets: np.ndarray  # [C] int64 held-out item per case
    cutoff: float  # seconds
    n_events: int  # held-out events
    n_no_history: int  # not a case: the user's first event (a cold-start user gets trending items)
    n_repeats: int  # not a case: the item is in the user's window (the product never re-recommends it)
    users: np.ndarray  # [C] int64 each case's user row in the data
    positions: np.ndarray  # [C] int64 the held-out event's index in that user's sequence


def split_holdout(data: Interactions, cutoff: float, window: int) -> Holdout:
    """Events before `cutoff` train; each later event is a case scored from the `window`
    events before it (held-out ones included: the worker would have seen them)."""
    train_rows, case_rows = [], []  # (user, stop) / (user, start, index)
    n_events = no_history = repeats = 0
    for u, ts in enumerate(data.times):
        first = int(np.searchsorted(ts, cutoff, side="left"))  # ts is sorted per user
        if first > 0:
            train_rows.append((u, first))
        for j in range(first, len(ts)):
            n_events += 1
            start = max(0, j - window)
            if j == 0:
                no_history += 1
            elif data.items[u][j] in data.items[u][start:j]:
                repeats += 1
            else:
                case_rows.append((u, start, j))

    def rows(spec: list[tuple[int, int, int]]) -> Interactions:
        return Interactions(
            data.item_ids,
            data.item_texts,
            [data.user_ids[u] for u, _, _ in spec],
            [data.items[u][a:b] for u, a, b in spec],
            [data.events[u][a:b] for u, a, b in spec],
            [data.times[u][a:b] for u, a, b in spec],
        )

    return Holdout(
        train=rows([(u, 0, stop) for u, stop in train_rows]),
        history=rows(case_rows),
        targets=np.array([data.items[u][j] for u, _, j in case_rows], dtype=np.int64),
        cutoff=cutoff,
        n_events=n_events,
        n_no_history=no_history,
        n_repeats=repeats,
        users=np.array([u for u, _, _ in case_rows], dtype=np.int64),
        positions=np.array([j for _, _, j in case_rows], dtype=np.int64),
    )


def gate_split(holdout: Holdout) -> Split:
    """The cases as a Split whose "test" stage is the held-out slice (valid = the same cases,
    never used for selection), so both models go through `evaluate_model(..., "test")`."""
    return Split(
        train=holdout.train,
        valid_history=holdout.history,
        valid_targets=holdout.targets,
        test_history=holdout.history,
        test_targets=holdout.targets,
    )


# --- the gate ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(
    candidate: float, production: float, tolerance: float, against: str = "production", served: str = "candidate"
) -> Decision:
    """Promote iff candidate >= production - tolerance (NDCG@10, absolute). NaN never promotes.
    `against` and `served` name the two sides in the reason ("production + ranker", ...)."""
    bar = production - tolerance
    if not (math.isfinite(candidate) and math.isfinite(production)):
        return Decision(False, f"non-finite metric ({served} {candidate}, {against} {production})")
    if candidate >= bar:
        return Decision(
            True,
            f"{served} {GATE_METRIC} {candidate:.4f} >= {against} {production:.4f} "
            f"- tolerance {tolerance:g} = {bar:.4f}",
        )
    return Decision(
        False,
        f"{served} {GATE_METRIC} {candidate:.4f} < {against} {production:.4f} - tolerance {tolerance:g} = {bar:.4f}",
    )


# --- one run -----------------------------------------------------------------------------------


@dataclass
class RunResult:
    status: str  # promoted | rejected | skipped | failed
    work_dir: Path
    report: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]


def _metrics(evaluation) -> dict:
    return {
        "NDCG@10": evaluation.product["NDCG@10"],
        "HR@10": evaluation.product["HR@10"],
        "recbole_NDCG@10": evaluation.recbole["NDCG@10"],
        "recbole_HR@10": evaluation.recbole["HR@10"],
        "cold_HR@10": evaluation.cold_hr10,
        "cases": evaluation.n_cases,
        "cold_cases": evaluation.n_cold,
    }


def _served(model, ranker, gate: Split, holdout: Holdout, data: Interactions, categories) -> dict:
    """`model` on the gate's cases in the retrieval order ("retrieval") and, given a ranker, re-ranked by it
    ("ranked": the full pipeline) -> {order: metrics}."""
    from encoders.evaluate import evaluate_model, model_scores, warm_items
    from encoders.ranker_train import Cases, ranking_set, with_and_without

    if ranker is None:
        return {"retrieval": _metrics(evaluate_model(model, gate, "test"))}
    scores = model_scores(model, holdout.history)  # [C, I]
    cases = Cases(holdout.users, holdout.positions)
    ranking = ranking_set(ranker.config, model, data, cases, categories, scores)
    retrieval, ranked = with_and_without(
        ranker, scores, ranking, holdout.history, holdout.targets, warm_items(gate.train)
    )
    return {"retrieval": _metrics(retrieval), "ranked": _metrics(ranked)}


def _evaluate(evaluations: dict, name: str, served: dict) -> str:
    """Record `served` as `name` (retrieval order) and `name + ranker` -> the name of what the worker serves."""
    evaluations[name] = served["retrieval"]
    if "ranked" in served:
        evaluations[f"{name} + ranker"] = served["ranked"]
        return f"{name} + ranker"
    return name


def _load_production(registry_root: Path):
    """-> (ModelVersion | None, (model, item_ids, item_texts) | None)."""
    from encoders.recommender import load_checkpoint
    from export.artifacts import CHECKPOINT_FILES, restore_checkpoint
    from export.registry import Registry

    registry = Registry(registry_root)
    if registry.latest() is None:
        return None, None
    version = registry.load()
    if not all(version.has(name) for name in CHECKPOINT_FILES.values()):
        return version, None
    with tempfile.TemporaryDirectory(prefix="streamrec-production-") as tmp:
        return version, load_checkpoint(restore_checkpoint(version.path, Path(tmp)))


def _read_data(settings: Settings, config: RetrainConfig, work: Path) -> tuple[Path, dict]:
    stored = None
    if config.from_offsets is not None:
        if Path(config.from_offsets).exists():
            stored = read_offsets(config.from_offsets)
        else:
            log.warning("stored position %s does not exist yet: reading events from the start", config.from_offsets)
    since_s = parse_duration(config.since) if config.since else None
    event_log = read_event_log(settings, stored, since_s)
    write_offsets(work / "offsets.json", event_log.end_offsets)
    base = read_records(config.base) if config.base else None
    events, items = merge_dataset(event_log, base)
    data_dir = write_dataset(work / "data", events, items)
    stats = {
        "topic_events": len(event_log.events),
        "invalid_events_skipped": event_log.invalid_events,
        "base_events": len(base[0]) if base else 0,
        "events": len(events),
        "catalog_items": len(items),
        "removed_items": len(event_log.catalog.removed),
        "invalid_items_skipped": event_log.catalog.invalid,
        "start_offsets": event_log.start_offsets,
        "end_offsets": event_log.end_offsets,
        "since": config.since,
        "stored_position": str(config.from_offsets) if config.from_offsets else None,
    }
    return data_dir, stats


def run_once(settings: Settings, config: RetrainConfig) -> RunResult:
    """One retrain run; never raises (a failure is a result with status "failed")."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    work = Path(config.work_root or settings.trainer.retrain_dir) / stamp
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "run": stamp,
        "work_dir": str(work),
        "registry": str(settings.registry.path),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
    }
    started = time.monotonic()
    try:
        status = _run(settings, config, work, report)
    except NotEnoughData as e:
        status, report["reason"] = SKIPPED, str(e)
        log.warning("skipped: %s", e)
    except Exception as e:  # one bad run must not take down `--every`; the report says why
        status, report["reason"] = FAILED, f"{type(e).__name__}: {e}"
        report["traceback"] = traceback.format_exc()
        log.error("retrain failed: %s", report["reason"])
    report["decision"] = status
    report["minutes"] = round((time.monotonic() - started) / 60, 2)
    write_report(report, work)
    return RunResult(status, work, report)


def _run(settings: Settings, config: RetrainConfig, work: Path, report: dict) -> str:
    import torch

    from encoders.config import ItemTowerConfig, RankerConfig, RecommenderConfig, TrainConfig, UserTowerConfig
    from encoders.evaluate import evaluate_popularity
    from encoders.ranker import load_ranker
    from encoders.ranker_train import fit_and_evaluate, item_categories, save_fitted
    from encoders.recommender import save_checkpoint, transplant
    from encoders.train import sized_for, train
    from export.registry import Registry

    torch.set_num_threads(config.threads)
    version, checkpoint = _load_production(settings.registry.path)
    production_ranker = load_ranker(version.path) if checkpoint is not None and version.has("ranker.onnx") else None
    report["production"] = {
        "version": version.name if version else None,
        "kind": version.kind if version else None,
        "has_checkpoint": checkpoint is not None,
        "has_ranker": production_ranker is not None,
    }
    log.info("production: %s", report["production"])

    data_dir, report["data"] = _read_data(settings, config, work)
    if report["data"]["events"] < config.min_events:
        raise NotEnoughData(
            f"{report['data']['events']} valid events to learn from "
            f"({report['data']['invalid_events_skipped']} invalid skipped); "
            f"need at least {config.min_events} (--min-events)"
        )
    spec = checkpoint[0].feature_spec if checkpoint else FeatureSpec(max_len=config.max_len)
    data = load_interactions(data_dir, spec)
    cutoff = holdout_cutoff(np.concatenate(data.times), config.holdout)
    holdout = split_holdout(data, cutoff, settings.worker.window_size)
    report["holdout"] = {
        "rule": config.holdout,
        "cutoff": datetime.fromtimestamp(cutoff, timezone.utc).isoformat(),
        "events": holdout.n_events,
        "cases": len(holdout.targets),
        "skipped_no_history": holdout.n_no_history,
        "skipped_repeats": holdout.n_repeats,
    }
    if not len(holdout.targets):
        raise NotEnoughData(f"no evaluation cases in the held-out slice ({report['holdout']})")
    train_split = split_leave_one_out(holdout.train)
    if not len(train_split.valid_targets):
        raise NotEnoughData("no user has 3 events before the held-out slice: nothing to validate training on")
    gate = gate_split(holdout)
    log.info("held out %s", report["holdout"])

    categories = item_categories(data_dir, data.item_ids)  # [I, C]
    evaluations = {"popularity": _metrics(evaluate_popularity(gate))}
    against = "popularity"  # what production serves, as named in `evaluations`
    if checkpoint is not None:
        source, source_ids, _ = checkpoint
        production = transplant(source, source_ids, data.item_ids, data.item_texts)
        against = _evaluate(
            evaluations, "production", _served(production, production_ranker, gate, holdout, data, categories)
        )
        known = set(source_ids)
        report["holdout"]["cases_with_items_new_since_production"] = int(
            sum(data.item_ids[t] not in known for t in holdout.targets)
        )
        model_config, init = production.config, copy.deepcopy(production)
    else:
        model_config = sized_for(
            RecommenderConfig(
                item_tower=ItemTowerConfig(proj_dim=config.dim),
                user_tower=UserTowerConfig(dim=config.dim, n_layers=config.layers, n_heads=config.heads),
            ),
            spec,
            data.n_items,
        )
        init = None
    train_config = TrainConfig(
        seed=config.seed,
        epochs=config.epochs,
        patience=config.patience,
        lr=config.lr,
        batch_size=config.batch_size,
        threads=config.threads,
        max_minutes=config.max_minutes,
        features=spec,
    )
    log.info(
        "training the candidate (%s) on %d events of %d users",
        "warm start" if init else "from scratch",
        sum(map(len, train_split.train.items)),
        len(train_split.train.items),
    )
    candidate, train_metrics = train(model_config, train_config, train_split, progress=config.progress, init=init)
    with_ranker = config.ranker if config.ranker is not None else production_ranker is not None
    report["ranker"] = {
        "train": with_ranker,
        "rule": "keep what production has"
        if config.ranker is None
        else ("--ranker" if config.ranker else "--no-ranker"),
    }
    fitted = None
    if with_ranker:
        ranker_config = replace(
            production_ranker.config if production_ranker is not None else RankerConfig(),
            seed=config.seed,
            max_minutes=config.ranker_minutes,
        )
        log.info("training the candidate's ranker (%.1f min at most)", ranker_config.max_minutes)
        fitted = fit_and_evaluate(ranker_config, candidate, holdout.train, train_split, categories)
        report["ranker"]["training"] = {
            "best_epoch": fitted.metrics["best_epoch"],
            "train_cases": fitted.metrics["train_cases"],
            "minutes": round(fitted.metrics["train_minutes"], 2),
            "valid_NDCG@10": fitted.metrics["valid_ndcg10"],
        }
    served = _evaluate(
        evaluations,
        "candidate",
        _served(candidate, None if fitted is None else fitted.ranker, gate, holdout, data, categories),
    )
    report["training"] = {
        "warm_start": init is not None,
        "best_epoch": train_metrics.get("best_epoch"),
        "epochs_run": train_metrics.get("epochs_run"),
        "minutes": round(train_metrics.get("train_minutes", 0.0), 2),
        "valid_NDCG@10": (train_metrics.get("valid") or {}).get("recbole", {}).get("NDCG@10"),
    }
    report["evaluation"] = evaluations

    decision = decide(
        evaluations[served][GATE_METRIC], evaluations[against][GATE_METRIC], config.tolerance, against, served
    )
    report["gate"] = {
        "metric": f"{GATE_METRIC} (history excluded)",
        "candidate": served,
        "against": against,
        "tolerance": config.tolerance,
        "promote": decision.promote,
        "reason": decision.reason,
    }
    log.info("gate: %s", decision.reason)
    if not decision.promote:
        return REJECTED

    registry = Registry(settings.registry.path)
    current = registry.latest()
    if current != (version.name if version else None):
        raise RegistryError(
            f"`latest` moved from {version.name if version else None!r} to {current!r} during the "
            f"run (a rollback or another trainer?); not promoting a model judged against the old one"
        )
    checkpoint_dir = save_checkpoint(
        candidate,
        data.item_ids,
        data.item_texts,
        work / "checkpoint",
        {
            **{k: v for k, v in train_metrics.items() if k != "curves"},
            "NDCG@10": evaluations["candidate"]["NDCG@10"],
            "HR@10": evaluations["candidate"]["HR@10"],
            "retrain": {
                "run": report["run"],
                "gate": report["gate"],
                "holdout": report["holdout"],
                "evaluation": evaluations,
                "production_version": report["production"]["version"],
            },
        },
    )
    if fitted is not None:
        save_fitted(fitted, checkpoint_dir)
    from core.kafka import client_security
    from export.model_updates import announce
    from export.pipeline import export_and_register

    new = export_and_register(checkpoint_dir, settings.registry.path, make_latest=True, data_dir=data_dir)
    report["promoted_version"] = new.name
    if new.has("ranker.onnx"):
        report["ranker"]["parity"] = new.metrics["parity"]["ranker"]
    log.info("registered %s as latest", new.name)
    try:
        announce(
            new,
            settings.kafka.bootstrap_servers,
            settings.topics.model_updates,
            **client_security(settings.kafka.security),
        )
    except Exception as e:
        raise BrokerError(
            f"{new.name} is registered and latest, but announcing it on "
            f"{settings.topics.model_updates!r} failed ({e}); workers keep serving the old model "
            f"until told: run `streamrec rollback --to {new.name}`"
        ) from e
    report["announced_on"] = settings.topics.model_updates
    target = config.save_offsets or config.from_offsets
    if target is not None:
        write_offsets(Path(target), report["data"]["end_offsets"])
        report["stored_position_saved_to"] = str(target)
    return PROMOTED


# --- the report ----------------------------------------------------------------------------------


def render_markdown(report: dict) -> str:
    decision = report.get("decision", "?").upper()
    production = report.get("production") or {}
    lines = [f"# Retrain {report['run']}: {decision}", ""]
    if report.get("reason"):
        lines += [f"**{report['reason'].splitlines()[0]}**", ""]
    if production:
        start = "warm start" if production.get("has_checkpoint") else "no checkpoint: candidate from scratch"
        ranker = ", with a ranker" if production.get("has_ranker") else ""
        lines.append(f"- production: `{production.get('version')}` ({production.get('kind')}, {start}{ranker})")
    if data := report.get("data"):
        lines.append(
            f"- data: {data['events']} events ({data['topic_events']} from the topic, {data['base_events']} "
            f"base; {data['invalid_events_skipped']} invalid skipped), {data['catalog_items']} items; "
            f"offsets {data['start_offsets']} -> {data['end_offsets']}"
        )
    if h := report.get("holdout"):
        new = h.get("cases_with_items_new_since_production")
        lines.append(
            f"- held out: {h['rule']} (events from {h['cutoff']}): {h['events']} events -> {h['cases']} cases "
            f"({h['skipped_no_history']} without history, {h['skipped_repeats']} repeats skipped"
            + (f"; {new} with an item new since production" if new is not None else "")
            + ")"
        )
    if t := report.get("training"):
        lines.append(
            f"- training: {'warm start' if t['warm_start'] else 'from scratch'}, {t['epochs_run']} epochs, "
            f"best {t['best_epoch']}, {t['minutes']} min"
        )
    if r := report.get("ranker"):
        trained = r.get("training")
        lines.append(
            f"- ranker ({r['rule']}): "
            + (
                f"trained on {trained['train_cases']} cases, best epoch {trained['best_epoch']}, {trained['minutes']} min"
                if trained
                else "none"
            )
            + (f"; exported, parity {'OK' if r['parity']['ok'] else 'FAILED'}" if "parity" in r else "")
        )
    if ev := report.get("evaluation"):
        lines += [
            "",
            "| model | NDCG@10 | HR@10 | NDCG@10 (history kept) | cold HR@10 |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name in ("production", "production + ranker", "candidate", "candidate + ranker", "popularity"):
            if name in ev:
                m = ev[name]
                cold = "n/a" if m["cold_HR@10"] is None else f"{m['cold_HR@10']:.4f}"
                lines.append(
                    f"| {name} | {m['NDCG@10']:.4f} | {m['HR@10']:.4f} | {m['recbole_NDCG@10']:.4f} | {cold} |"
                )
        lines.append("")
    if g := report.get("gate"):
        lines.append(
            f"Gate ({g['metric']}, what the worker would serve: `{g['candidate']}` vs `{g['against']}`, "
            f"tolerance {g['tolerance']:g}): {g['reason']} -> "
            f"{'promote' if g['promote'] else 'reject'}."
        )
    if report.get("promoted_version"):
        lines.append(
            f"Registered `{report['promoted_version']}` as latest; announced on "
            f"`{report.get('announced_on', 'NOT ANNOUNCED')}`."
        )
    elif report.get("decision") != PROMOTED:
        lines.append("Nothing registered; `latest` unchanged; nothing announced.")
    lines.append(f"\n{report.get('minutes', '?')} min; work dir `{report['work_dir']}`.")
    return "\n".join(lines) + "\n"


def write_report(report: dict, work: Path) -> None:
    (work / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    (work / "report.md").write_text(render_markdown(report), encoding="utf-8")


def run_every(settings: Settings, config: RetrainConfig, interval_s: float, on_result=None) -> None:
    """One run per interval, forever: a failed run is logged and the loop goes on."""
    while True:
        started = time.monotonic()
        try:
            result = run_once(settings, config)
            if on_result is not None:
                on_result(result)
        except Exception:  # run_once reports its own failures; this is the report writer itself failing
            log.exception("retrain run crashed")
        wait = max(0.0, interval_s - (time.monotonic() - started))
        log.info("next retrain in %.0f s", wait)
        time.sleep(wait)
