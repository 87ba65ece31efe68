"""Reliability suites reuse the integration fixtures (real broker, real worker processes).

STREAMREC_RELIABILITY=full runs the long versions (`make test-reliability`); `make test`
runs the short ones.
"""

import os

from tests.integration.conftest import baseline_registry, broker, settings, start_worker  # noqa: F401 (fixtures)

FULL = os.environ.get("STREAMREC_RELIABILITY") == "full"


def scaled(short: float, full: float) -> float:
    return full if FULL else short


def rss_mb(pid: int) -> float:
    """A process's resident memory (VmRSS), MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")
