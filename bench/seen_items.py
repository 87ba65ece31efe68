"""Already-seen items in `streamrec predict` lists on full MovieLens histories, before and after the seen items.

Issue #16 (item 5): with only the 50-event window excluded, `predict` on each ml-100k user's whole history
put items the user had already rated into the top-20 of about a third of users. This script writes every
user's full history as `predict` input, runs `stream_app.batch.predict_file` (what `streamrec predict`
runs) with `worker.top_k` 20 for each `worker.seen_items_max` given (0: the window alone, as before), and
counts the users whose list holds an item from their own history, and those items. The default policy
(`exclude_seen`) applies; the model is the registry's latest (or --version), its own catalog.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/seen_items.py [--seen-max 0 500 1000] [--registry PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.options import command_settings  # noqa: E402
from stream_app.batch import predict_file  # noqa: E402
from stream_app.replay import dataset_records  # noqa: E402

TOP_K = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ml-100k")
    parser.add_argument("--seen-max", type=int, nargs="+", default=[0, 500, 1000])
    parser.add_argument("--registry", type=Path, default=None)
    parser.add_argument("--version", default=None)
    args = parser.parse_args()
    settings = command_settings({"registry.path": args.registry})

    _, stream = dataset_records(args.data)
    histories: dict[str, list[dict]] = defaultdict(list)
    for user, value in stream:
        histories[user].append({k: value[k] for k in ("item_id", "event_type", "ts")})
    longest = max(len(h) for h in histories.values())
    print(f"{len(histories)} users, {len(stream)} events, histories up to {longest} events; top-{TOP_K}")
    print("| seen_items_max | users with a seen item in their list | seen items in lists | predict s |")
    print("| ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        given = Path(tmp) / "histories.jsonl"
        given.write_text("".join(json.dumps({"user_id": u, "events": h}) + "\n" for u, h in histories.items()))
        for seen_max in args.seen_max:
            out = Path(tmp) / f"out-{seen_max}.jsonl"
            start = time.perf_counter()
            predict_file(
                settings.replace(worker={"seen_items_max": seen_max, "top_k": TOP_K}), given, out, args.version, None
            )
            elapsed = time.perf_counter() - start
            users = repeats = 0
            for line in out.read_text().splitlines():
                record = json.loads(line)
                history = {e["item_id"] for e in histories[record["user_id"]]}
                found = sum(i["item_id"] in history for i in record["items"])
                users += found > 0
                repeats += found
            print(
                f"| {seen_max} | {users} of {len(histories)} ({100 * users / len(histories):.0f}%) | {repeats} "
                f"| {elapsed:.1f} |"
            )


if __name__ == "__main__":
    main()
