"""py-spy on a running process: a flame graph (SVG) and the functions with the most samples."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

SAMPLES_PER_S = 250
FRAME = re.compile(r"^(.*) \((.*?):\d+\)$")  # a frame of py-spy's raw format: "function (path:line)"


@contextmanager
def py_spy(pid: int, seconds: float, svg: Path, stacks: Path):
    """Sample `pid` for `seconds` (without pausing it) into a flame graph `svg` and collapsed `stacks`."""
    spies = [
        subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--nonblocking"]
            + [
                "--rate",
                str(SAMPLES_PER_S),
                "--duration",
                str(int(seconds) + 1),
                "--format",
                fmt,
                "--output",
                str(path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fmt, path in (("flamegraph", svg), ("raw", stacks))
    ]
    try:
        yield
    finally:
        for spy in spies:
            spy.wait(timeout=seconds + 60)


def top_functions(stacks: Path, n: int = 15, packages: tuple[str, ...] = ()) -> str:
    """From py-spy's collapsed stacks: the `n` functions with the most own samples, with their share of
    all samples as own time and as time inside them (callees included). With `packages` (top-level
    package names, e.g. streamrec's own), instead the `n` functions of those packages with the most
    samples inside them: what the code of those packages costs, whatever it calls."""
    own, inside, total = Counter(), Counter(), 0
    for line in stacks.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [  # (name, package)
            (f"{m[1]} ({Path(m[2]).name})", m[2].split("/")[0]) for m in map(FRAME.match, stack.split(";")) if m
        ]
        total += int(count)
        if frames:
            own[frames[-1][0]] += int(count)
        for frame, package in set(frames):  # a recursive function's stack counts once
            if not packages or package in packages:
                inside[frame] += int(count)
    ranked = inside.most_common(n) if packages else own.most_common(n)
    rows = ["| own % | inside % | function (file) |", "| ---: | ---: | --- |"]
    rows += [
        f"| {100 * own[frame] / total:.1f} | {100 * inside[frame] / total:.1f} | `{frame}` |" for frame, _ in ranked
    ]
    return "\n".join(rows)
