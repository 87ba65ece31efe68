"""Worker metrics: the rolling online HR@k is the hit share of the last `hit_window` events."""

from prometheus_client import generate_latest

from stream_app.metrics import WorkerMetrics


def scraped(metrics: WorkerMetrics, name: str) -> float:
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def test_online_hit_rate_rolls_over_the_last_window_of_events():
    metrics = WorkerMetrics(hit_window=4)
    assert scraped(metrics, "streamrec_online_hr_at_k") == 0.0  # nothing observed yet
    for hit in (True, True, False, False):
        metrics.observe_hit(hit)
    assert scraped(metrics, "streamrec_online_hr_at_k") == 0.5
    for hit in (False, False):  # the two hits fall out of the window
        metrics.observe_hit(hit)
    assert scraped(metrics, "streamrec_online_hr_at_k") == 0.0
    assert scraped(metrics, "streamrec_online_hits_total") == 2.0  # the counter never rolls
