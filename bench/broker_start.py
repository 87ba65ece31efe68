"""Start-up time and memory of the brokers the project starts (docs/ARCHITECTURE.md, "Brokers").

For Apache Kafka with 1 and 3 nodes (`core.brokers.KafkaCluster`, a fixed heap per node) and for
Tansu: seconds from launch until the cluster answers as ready (every node registered, the group
coordinator up), a restart on the same log, and each process's resident memory once ready.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/broker_start.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from core.brokers import KAFKA_HEAP_MB, KafkaCluster, TansuBroker  # noqa: E402
from stream_app.demo import free_port, free_ports  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed_start(broker) -> tuple[float, list[float]]:
    start = time.monotonic()
    broker.start()
    return time.monotonic() - start, [rss_mb(p.pid) for p in broker.children()]


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="streamrec-broker-start-"))
    print("| broker | first start s | restart on the same log s | RSS per process MB |\n| --- | ---: | ---: | --- |")
    for nodes in (1, 3):
        ports = free_ports(2 * nodes)  # clients, then controllers
        cluster = KafkaCluster(work / f"kafka-{nodes}", nodes, ports=ports[:nodes], controller_ports=ports[nodes:])
        first, rss = timed_start(cluster)
        cluster.stop()
        again, _ = timed_start(cluster)
        cluster.stop()
        print(
            f"| Apache Kafka, {nodes} node(s), {KAFKA_HEAP_MB} MB heap each | {first:.1f} | {again:.1f} | "
            f"{', '.join(f'{r:.0f}' for r in rss)} |"
        )
    tansu = TansuBroker(port=free_port())
    first, rss = timed_start(tansu)
    tansu.stop()
    print(f"| Tansu (memory storage) | {first:.1f} | (nothing kept) | {', '.join(f'{r:.0f}' for r in rss)} |")


if __name__ == "__main__":
    main()
