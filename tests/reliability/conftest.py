"""Reliability suites reuse the integration fixtures (real broker, real worker processes).

STREAMREC_RELIABILITY=full runs the long versions (`make test-reliability`); `make test`
runs the short ones.
"""

import asyncio
import os
import threading

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


class AsyncThread(threading.Thread):
    """A background thread running the coroutine `main()` (a producer beside the test); an exception
    ends up in `error` for the test to report, instead of in the thread's stderr."""

    def __init__(self):
        super().__init__(daemon=True)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self.main())
        except BaseException as e:
            self.error = e

    async def main(self) -> None:
        raise NotImplementedError
