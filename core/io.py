"""Atomic file writes: a reader sees the old file or the new one, never half of one, and a crash
leaves no partial file behind.

    write a temporary file in the same directory (so the rename cannot cross filesystems)
    -> flush + fsync it -> os.replace onto the target -> fsync the directory (the rename itself)

On any failure the temporary file is removed and the target is untouched. Files are created
world-readable (0644 by default): workers may run as another user than the trainer.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

FILE_MODE = 0o644


def fsync_dir(path: str | Path) -> None:
    """Make a directory's entries (a rename into it, a new file) durable; best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, *, mode: int = FILE_MODE) -> Path:
    """Replace `path` with `data` atomically (see the module docstring); returns the path."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str, *, mode: int = FILE_MODE) -> Path:
    """`atomic_write_bytes` of `text` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def json_text(data: object) -> str:
    """The one JSON layout of files streamrec writes: indented, keys sorted, a final newline."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def atomic_write_json(path: str | Path, data: object, *, mode: int = FILE_MODE) -> Path:
    """`atomic_write_text` of `data` as JSON (`json_text`)."""
    return atomic_write_text(path, json_text(data), mode=mode)
