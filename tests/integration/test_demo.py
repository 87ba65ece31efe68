"""`streamrec demo` end to end on Tansu (the broker it starts), over ml-100k's first 60 users: without
training, the worker serves the registry's baseline and the console listens (in `make test`); with it (slow),
a model trains in the background on a 12 s budget and the worker hot-swaps to it, so the watched users' last
lists come from the trained version. Every process the demo started is gone when it returns."""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import pytest
from rich.console import Console

from core.settings import Settings
from export.registry import Registry
from stream_app.demo import DemoResult, free_port, run_demo
from tests.support import ml100k_subset

pytestmark = pytest.mark.integration


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def demo(registry: Path, tmp_path: Path, train_minutes: float | None) -> tuple[DemoResult, float, str, int]:
    """-> (what run_demo returned, seconds it took, what it printed, the console's port)."""
    console_port, out = free_port(), io.StringIO()
    started = time.monotonic()
    result = run_demo(
        Settings(registry={"path": registry}, console={"port": console_port}),
        ml100k_subset(tmp_path / "data", n_users=60),
        rate=200,
        n_events=2000,
        n_users=2,
        port=0,
        train_minutes=train_minutes,
        console=Console(file=out, width=120),
    )
    return result, time.monotonic() - started, out.getvalue(), console_port


def test_the_demo_without_training_serves_the_baseline_and_the_console(baseline_registry, tmp_path):
    result, _, out, console_port = demo(baseline_registry, tmp_path, train_minutes=None)
    assert result.exit_code == 0, out[-4000:]
    assert result.versions_seen == [Registry(baseline_registry).latest()] and result.swapped_to is None
    assert f"console: http://127.0.0.1:{console_port}/" in out
    assert len(result.pids) == 2 and not any(alive(pid) for pid in result.pids)  # worker, console


@pytest.mark.slow  # ~80 s
def test_the_demo_serves_the_baseline_then_swaps_to_the_model_it_trained(baseline_registry, tmp_path):
    registry = shutil.copytree(baseline_registry, tmp_path / "registry")
    baseline = Registry(registry).latest()
    result, took, out, console_port = demo(registry, tmp_path, train_minutes=0.2)
    assert result.exit_code == 0, out[-4000:]
    trained = Registry(registry).load()
    assert trained.name != baseline and trained.kind == "two_tower"
    assert result.versions_seen == [baseline, trained.name]  # the baseline served first, then the trained model
    assert result.swapped_to == trained.name
    assert result.first_recommendations_s < result.swap_s < took
    assert f"console: http://127.0.0.1:{console_port}/" in out
    assert len(result.pids) == 3 and not any(alive(pid) for pid in result.pids)  # worker, console, training
    print(f"demo: {took:.0f}s, first recommendations {result.first_recommendations_s:.0f}s, swap {result.swap_s:.0f}s")
