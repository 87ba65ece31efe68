"""End to end: events produced -> recommendations consumed, through the embedded broker and
one `streamrec worker` process serving the registry's latest model.

For each offered rate: sustained events/s (events / time from first send to last answer)
and event→recommendation latency p50/p95/p99 (send time of the event to receipt of the
record it triggered). Events replay ml-100k in time order with their user ids.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/e2e.py [--rates 250 500 1000 2000] [--seconds 10] [--write-docs]

Not yet here (issue 7): the bare-Faust-agent ceiling in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import cpu, write_section  # noqa: E402
from export.registry import Registry  # noqa: E402
from stream_app.broker import EmbeddedBroker, stop_process  # noqa: E402
from stream_app.demo import free_port, publish_catalog, start_worker  # noqa: E402
from stream_app.replay import dataset_records, producer  # noqa: E402
from stream_app.settings import Settings  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"


async def measure(settings: Settings, events: list[tuple[str, dict]], rate: float) -> dict:
    sent: dict[str, float] = {}
    latencies: list[float] = []
    consumer = AIOKafkaConsumer(settings.topics.recommendations, bootstrap_servers=settings.bootstrap_servers,
                                group_id=None, auto_offset_reset="latest", fetch_max_wait_ms=10)
    await consumer.start()
    await consumer.seek_to_end()
    done = asyncio.Event()
    last_answer = 0.0

    async def collect():
        nonlocal last_answer
        pending = {e["event_id"] for _, e in events}
        last_of_user = {user: e["event_id"] for user, e in events}
        while not done.is_set():
            for messages in (await consumer.getmany(timeout_ms=100)).values():
                now = time.monotonic()
                for m in messages:
                    trigger = json.loads(m.value)["trigger_event_id"]
                    if trigger in sent:
                        latencies.append(now - sent[trigger])
                        pending.discard(trigger)
                        last_answer = now
            if all(e not in pending for e in last_of_user.values()) and len(sent) == len(events):
                done.set()

    collector = asyncio.create_task(collect())
    start = time.monotonic()
    async with producer(settings) as p:
        for n, (user, value) in enumerate(events):
            await p.send(settings.topics.events, json.dumps(value).encode(), key=user.encode())
            sent[value["event_id"]] = time.monotonic()
            await asyncio.sleep(max(0.0, (n + 1) / rate - (time.monotonic() - start)))
    try:
        await asyncio.wait_for(done.wait(), timeout=120)
    finally:
        done.set()
        await collector
        await consumer.stop()
    lat = np.array(latencies) * 1000
    return {"rate": rate, "events": len(events), "events_per_s": len(events) / (last_answer - start),
            "records": len(latencies), "p50": np.percentile(lat, 50), "p95": np.percentile(lat, 95),
            "p99": np.percentile(lat, 99)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", type=float, nargs="+", default=[250, 500, 1000, 2000])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()

    version = Registry(Settings().registry).load()
    items, events = dataset_records(DATA)
    work = Path(tempfile.mkdtemp(prefix="streamrec-e2e-"))
    rows = []
    with EmbeddedBroker(port=free_port(), log_path=work / "broker.log") as broker:
        settings = Settings(broker=broker.url, data_dir=work / "state", web_port=free_port())
        asyncio.run(publish_catalog(settings, items))
        worker = start_worker(settings, work / "worker.log")
        try:
            time.sleep(20)  # join + catalog load; the first measurement also absorbs any remaining wait
            offset = 0
            for rate in args.rates:
                n = int(rate * args.seconds)
                row = asyncio.run(measure(settings, events[offset:offset + n], rate))
                offset += n
                rows.append(row)
                print(f"offered {rate:>6.0f}/s: sustained {row['events_per_s']:7.0f} events/s, "
                      f"p50 {row['p50']:6.1f} ms, p95 {row['p95']:6.1f} ms, p99 {row['p99']:6.1f} ms "
                      f"({row['records']} records for {row['events']} events)", flush=True)
        finally:
            stop_process(worker)
    command = "HF_HUB_OFFLINE=1 .venv/bin/python bench/e2e.py " + " ".join(sys.argv[1:])
    print(f"\nreproduce: {command}")
    if args.write_docs:
        table = "\n".join(f"| {r['rate']:.0f} | {r['events_per_s']:.0f} | {r['p50']:.1f} | {r['p95']:.1f} | "
                          f"{r['p99']:.1f} | {r['records']} / {r['events']} |" for r in rows)
        write_section(Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md", "## End to end", f"""## End to end

Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {cpu()}; embedded Tansu broker and one
worker on the same machine, 1 partition, model `{version.name}` ({version.kind}), fetch wait
10 ms, linger 5 ms, micro-batches of up to 256 events or 20 ms. Events: ml-100k replayed
in time order (real users, so several events of one user can share a record).

| offered events/s | sustained events/s | p50 ms | p95 ms | p99 ms | records / events |
| ---: | ---: | ---: | ---: | ---: | ---: |
{table}

Not measured yet: the bare-Faust-agent ceiling in the same run (issue 7), so no b/a ratio.

Reproduce:

```
{command}
```
""")


if __name__ == "__main__":
    main()
