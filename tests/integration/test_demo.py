"""`streamrec demo` end to end on Tansu (the broker it starts): the worker serves the registry's baseline at
once, a model trains in the background on a tiny budget, and the worker hot-swaps to it; the watched users'
last lists come from the trained version, and every process the demo started is gone when it returns."""

from __future__ import annotations

import io
import os
import shutil
import time

import pytest
from rich.console import Console

from core.settings import Settings
from export.registry import Registry
from stream_app.demo import free_port, run_demo
from tests.support import ml100k_subset

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_demo_serves_the_baseline_then_swaps_to_the_model_it_trained(baseline_registry, tmp_path):
    registry = shutil.copytree(baseline_registry, tmp_path / "registry")
    baseline = Registry(registry).latest()
    settings = Settings(registry={"path": registry}, console={"port": free_port()})
    out = io.StringIO()
    started = time.monotonic()
    result = run_demo(
        settings,
        ml100k_subset(tmp_path / "data", n_users=60),
        rate=200,
        n_events=2000,
        n_users=2,
        port=0,
        train_minutes=0.2,
        console=Console(file=out, width=120),
    )
    took = time.monotonic() - started
    print(f"demo: {took:.0f}s, first recommendations {result.first_recommendations_s:.0f}s, swap {result.swap_s:.0f}s")
    assert result.exit_code == 0, out.getvalue()[-4000:]
    trained = Registry(registry).load()
    assert trained.name != baseline and trained.kind == "two_tower"
    assert result.versions_seen == [baseline, trained.name]  # the baseline served first, then the trained model
    assert result.swapped_to == trained.name
    assert result.first_recommendations_s < result.swap_s < took
    assert f"console: http://127.0.0.1:{settings.console.port}/" in out.getvalue()
    assert len(result.pids) == 3 and not any(alive(pid) for pid in result.pids)  # worker, console, training
