"""Atomic file writing: a reader sees the old file or the new one, never half of one.

Everything the project writes (data files, downloads, checkpoints, run folders,
figures) goes through :func:`atomic_writer`: the content is written to a temporary
file in the destination's folder, flushed and synced to disk, and then moved over
the destination with ``os.replace``, which is atomic on POSIX and Windows. If the
writer fails, or the process is interrupted (KeyboardInterrupt included), the
temporary file is removed and the destination is untouched; if the process is
killed outright, only a hidden ``.<name>.*.part`` file can remain, never a
truncated destination.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["atomic_writer", "write_bytes", "write_text", "write_json"]


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file that replaces ``path`` when the ``with`` block succeeds.

    Args:
        path: the destination; its folder must exist.
        mode: ``"wb"`` or ``"w"`` (text, UTF-8).

    Yields:
        The open temporary file.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_writer supports modes 'wb' and 'w', got {mode!r}")
    path = Path(path)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, mode, **({"encoding": "utf-8", "newline": ""} if mode == "w" else {})) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp_name, 0o644)  # mkstemp makes the file private; ours are ordinary files
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, content: bytes) -> Path:
    """Write ``content`` to ``path`` atomically."""
    with atomic_writer(path, "wb") as file:
        file.write(content)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_writer(path, "w") as file:
        file.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
