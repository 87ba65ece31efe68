"""The worker's fetch wait, side by side: CPU while idle and at low rates, and latency.

Issue #17. A consumer asks the broker for records and the broker holds the request until a record
arrives or the fetch wait is over. A short wait (the default, 10 ms: `kafka.fetch_max_wait_ms`) makes
the worker and the broker trade a request every few ms while idle. A long one should cost no latency
on Apache Kafka, which answers a held fetch as soon as a record arrives; this measures whether it does
under a stream, where the worker also fetches its other topics (control, profiles, changelogs) from the
same broker, and what the idle round trips cost.

For each engine and fetch wait, in rounds that alternate the waits: a fresh broker and worker (the
registry's latest model), the warm-up of bench/e2e.py, CPU seconds per second of the worker and the
broker over `--idle` idle seconds, then each rate for `--seconds` with fresh synthetic events (one event
per user burst: every event its own record), as bench/e2e.py measures them. Medians over the rounds.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/fetch_wait.py [--engine kafka tansu] [--waits 10 100 500] [--write-docs]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bench.e2e as e2e  # noqa: E402
from bench.report import cpu, write_section  # noqa: E402
from core.settings import Settings, load_settings  # noqa: E402

READING = """**Why the wait stays 10 ms on Kafka too.** A longer wait lowers the idle CPU (the two idle columns)
and little else: with events flowing, the worker's CPU per event is about the same at every wait. It can
also add latency under a stream, although Kafka answers a held fetch as soon as a record arrives: aiokafka
sends at most one fetch per broker at a time, and leaves out of it the partitions whose records the worker
has not consumed yet (`Fetcher._get_actions_per_node`). While the worker scores a batch, the next fetch goes
out for its other partitions only (control, profiles, experiments, changelogs), which are idle, so the
broker holds it for the whole wait, and the `events` partition cannot be fetched again until it returns.
How much that costs depends on how busy the machine is (compare the p99 columns here with a run under
load); the small idle saving does not pay for the risk."""


def one_round(engine: str, wait_ms: int, settings: Settings, items, stream, args, work: Path) -> list[dict]:
    """streamrec's worker on a fresh broker with this fetch wait: bench/e2e.py's rows, with idle CPU."""
    system = e2e.System("streamrec", bare=False, engine=engine)
    settings = settings.replace(kafka={"fetch_max_wait_ms": wait_ms})
    return e2e.run_system(system, settings, items, stream, args.rates, args.seconds, work, idle_s=args.idle)


def median_rounds(rounds: list[list[dict]], rates: list[float]) -> dict:
    """Medians over the rounds; unanswered: the worst round."""
    rows = []
    for k, rate in enumerate(rates):
        each = [r[k] for r in rounds]
        rows.append(
            {"rate": rate, "unanswered": max(r["events"] - r["answered"] for r in each)}
            | {key: statistics.median(r[key] for r in each) for key in ("p50", "p99", "worker_cpu_ms", "broker_cpu_ms")}
        )
    idle = {side: statistics.median(r[0][f"idle_{side}_cpu"] for r in rounds) for side in ("worker", "broker")}
    return {"idle": idle, "rows": rows}


def table(results: dict[tuple[str, int], dict]) -> str:
    lines = [
        "| engine | fetch wait | idle CPU s/s, worker | idle CPU s/s, broker | offered /s | p50 ms | p99 ms | unanswered "
        "| worker CPU ms/event | broker CPU ms/event |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (engine, wait_ms), result in results.items():
        for row in result["rows"]:
            lines.append(
                f"| {engine} | {wait_ms} ms | {result['idle']['worker']:.3f} | {result['idle']['broker']:.3f} | "
                f"{row['rate']:.0f} | {row['p50']:.1f} | {row['p99']:.1f} | {row['unanswered']} | "
                f"{row['worker_cpu_ms']:.3f} | {row['broker_cpu_ms']:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", nargs="+", choices=["kafka", "tansu"], default=["kafka"])
    parser.add_argument("--waits", type=int, nargs="+", default=[10, 100, 500], help="fetch waits to compare (ms)")
    parser.add_argument("--rates", type=float, nargs="+", default=[100, 250, 500])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--idle", type=float, default=15.0, help="idle seconds over which CPU is measured")
    parser.add_argument("--repeats", type=int, default=2, help="rounds; the waits alternate within each")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()

    settings = load_settings()
    items, _ = e2e.dataset_records(e2e.DATA)
    stream = e2e.synthetic_events(
        [k for k, _ in items], int(sum(args.rates) * args.seconds) + 1, 10_000, len(items), 1.0, 1.0, 8
    )
    work = Path(tempfile.mkdtemp(prefix="streamrec-fetch-wait-"))
    load = [os.getloadavg()[0]]
    rounds: dict[tuple[str, int], list[list[dict]]] = {}
    for engine in args.engine:
        for n in range(args.repeats):
            for wait_ms in args.waits:
                print(f"{engine}, fetch wait {wait_ms} ms, round {n + 1}", flush=True)
                run = one_round(engine, wait_ms, settings, items, stream, args, work / f"{engine}-{wait_ms}-{n}")
                rounds.setdefault((engine, wait_ms), []).append(run)
    load.append(os.getloadavg()[0])
    results = {key: median_rounds(runs, args.rates) for key, runs in rounds.items()}
    command = "HF_HUB_OFFLINE=1 .venv/bin/python bench/fetch_wait.py " + " ".join(sys.argv[1:])
    text = table(results)
    print(f"\n{text}\n\nreproduce: {command}")
    if args.write_docs:
        write_section(
            ROOT / "docs" / "benchmarks.md",
            "## Fetch wait",
            f"## Fetch wait\n\nMeasured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {cpu()}; load average "
            f"{load[0]:.1f} at the start and {load[1]:.1f} at the end. `bench/fetch_wait.py` "
            "(its docstring has the method): streamrec's worker on a fresh broker per round, "
            f"{args.repeats} round(s) alternating the waits, medians; {args.idle:g} s idle, then each rate for "
            f"{args.seconds:g} s of synthetic events, one per user. The default is "
            f"{settings.kafka.fetch_max_wait_ms} ms on both engines (`STREAMREC_KAFKA__FETCH_MAX_WAIT_MS`).\n\n"
            f"{text}\n\n```bash\n{command}\n```\n\n{READING}\n",
        )


if __name__ == "__main__":
    main()
