"""`bench/flamegraph.top_functions` reads py-spy's collapsed stacks: own time is the innermost frame's, time
inside a function counts each stack once even when the function recurses, and `packages` ranks only the
functions of those packages, by the time inside them."""

from bench.flamegraph import top_functions

STACKS = """\
main (stream_app/worker.py:1);score (stream_app/agents/events.py:2);Session.run (onnxruntime/session.py:3) 6
main (stream_app/worker.py:1);score (stream_app/agents/events.py:2) 1
main (stream_app/worker.py:1);send (aiokafka/client.py:4);send (aiokafka/client.py:5) 3
"""


def rows(table: str) -> list[tuple[str, str, str]]:
    return [tuple(cell.strip(" `") for cell in line.strip("|").split("|")) for line in table.splitlines()[2:]]


def test_own_time_ranks_innermost_frames(tmp_path):
    stacks = tmp_path / "stacks.txt"
    stacks.write_text(STACKS)
    assert rows(top_functions(stacks, 3)) == [
        ("60.0", "60.0", "Session.run (session.py)"),
        ("30.0", "30.0", "send (client.py)"),  # recursion: its 3 samples once, not twice
        ("10.0", "70.0", "score (events.py)"),
    ]


def test_packages_rank_their_functions_by_time_inside(tmp_path):
    stacks = tmp_path / "stacks.txt"
    stacks.write_text(STACKS)
    assert rows(top_functions(stacks, 5, packages=("stream_app",))) == [
        ("0.0", "100.0", "main (worker.py)"),
        ("10.0", "70.0", "score (events.py)"),
    ]
