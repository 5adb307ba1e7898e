"""Atomic file writing: a reader sees the old file or the new one, never half of one.

Everything the project writes (data files, downloads, checkpoints, run folders,
figures) goes through :func:`atomic_writer`: the content is written to a temporary
file in the destination's folder, flushed and synced to disk, and then moved over
the destination with ``os.replace``, which is atomic on POSIX and Windows. If the
writer fails, or the process is interrupted (KeyboardInterrupt included), the
temporary file is removed and the destination is untouched; if the process is
killed outright, only a hidden ``.<name>.*.part`` file can remain, never a
truncated destination (:func:`remove_stale_parts` cleans those up).

A write that the operating system refuses (a full disk, a read-only mount, a path
that is too long or runs through a file) raises :class:`WriteError`, a user error
with a one-line message naming the file: the files written before it are intact.

JSON is always strict (RFC 8259): :func:`write_json` writes NaN and infinities as
``null`` and lists where it did so under ``"non_finite"``, since ``NaN`` is not
JSON and most readers other than Python's refuse it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, BinaryIO, Iterator

from .errors import UserError

__all__ = [
    "WriteError", "atomic_writer", "write_bytes", "write_text", "write_json", "strict_json", "remove_stale_parts",
    "open_regular_file",
]

_PART = re.compile(r"^\..+\.[A-Za-z0-9_]+\.part$")


class WriteError(UserError, OSError):
    """A file could not be written (disk full, read-only, bad path); earlier files are intact."""


def _write_error(path: Path, err: OSError) -> WriteError:
    reason = err.strerror or str(err)
    hint = {
        errno.ENOSPC: "; free some space and run the command again (files written before are intact)",
        errno.EDQUOT: "; the disk quota is exhausted (files written before are intact)",
        errno.EROFS: "; the file system is read-only: choose another --out",
        errno.ENAMETOOLONG: "; use a shorter path",
        errno.ENOTDIR: "; a part of the path is a file, not a folder",
        errno.EACCES: "; no permission to write there",
    }.get(err.errno, "")
    return WriteError(f"{path}: cannot write ({reason}){hint}")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file that replaces ``path`` when the ``with`` block succeeds.

    Args:
        path: the destination; its folder must exist.
        mode: ``"wb"`` or ``"w"`` (text, UTF-8).

    Yields:
        The open temporary file.

    Raises:
        WriteError: the operating system refused to create, write, sync or rename
            the file (ENOSPC, EROFS, ENAMETOOLONG, ...); the destination is untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_writer supports modes 'wb' and 'w', got {mode!r}")
    path = Path(path)
    # os.replace would put a file in place of a device, a FIFO or a folder (as root,
    # even /dev/null): only regular files (or nothing yet) are replaced.
    try:
        existing = path.stat()
    except FileNotFoundError:
        existing = None
    except OSError as err:
        raise _write_error(path, err) from None
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        raise WriteError(f"{path}: not a regular file (a folder, device or pipe); choose a file path")
    try:
        handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as err:
        raise _write_error(path, err) from None
    try:
        with os.fdopen(handle, mode, **({"encoding": "utf-8", "newline": ""} if mode == "w" else {})) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp_name, 0o644)  # mkstemp makes the file private; ours are ordinary files
        os.replace(temp_name, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            Path(temp_name).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, WriteError) and err.errno is not None:
            raise _write_error(path, err) from None
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


def strict_json(obj: Any) -> tuple[Any, list[str]]:
    """``obj`` with every NaN or infinity replaced by None, and the places replaced.

    Returns:
        ``(clean, places)``; ``places`` are dotted paths such as ``"test.loss"``.
    """
    places: list[str] = []

    def clean(value: Any, where: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            places.append(f"{where or '(top)'} was {value}")
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value

    return clean(obj, ""), places


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, strict JSON to ``path`` atomically.

    NaN and infinities become ``null``; for an object, ``"non_finite"`` lists
    which values were replaced (``"test.loss was nan"``).
    """
    clean, places = strict_json(obj)
    if places and isinstance(clean, dict):
        clean["non_finite"] = places
    return write_text(path, json.dumps(clean, indent=2, sort_keys=False, allow_nan=False) + "\n")


#: How deep a JSON file read by :func:`decode_json` may nest its arrays and objects.
MAX_JSON_DEPTH = 64


def decode_json(content: bytes, *, constants: bool = False) -> Any:
    """Strict JSON from ``content``, the reader beside :func:`write_json`.

    UTF-8, nesting at most :data:`MAX_JSON_DEPTH` deep (checked before parsing, so that
    a hostile file is refused with a reason rather than by the parser's recursion
    limit), and no ``NaN`` or infinities (the writer writes none) unless ``constants``
    (for content that :func:`json.dumps` wrote, such as a checkpoint's metadata).

    Raises:
        ValueError: why the content is not such JSON, in one line (the caller adds the file).
    """
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8: {_one_line(err)}") from None
    if _nesting_depth(text) > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested more than {MAX_JSON_DEPTH} deep")
    try:
        return json.loads(text) if constants else json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError, as is a 5,000-digit number
        raise ValueError(_one_line(err)[:200]) from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-standard constant {name}")


def _nesting_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` outside strings, counted up to just past MAX_JSON_DEPTH."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:  # the common case, at C speed
        return 0
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    return deepest
        elif char in "]}":
            depth -= 1
    return deepest


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


class NpyHeaderError(ValueError):
    """A ``.npy`` header that :func:`read_npy_header` refuses; ``str(err)`` is a phrase such
    as ``"a corrupt .npy header (...)"``, for the caller to put after the file's name."""


def read_npy_header(file: BinaryIO) -> tuple[tuple[int, ...], bool, Any]:
    """``(shape, fortran_order, dtype)`` from the header of the ``.npy`` data at ``file``'s position.

    Reads the header only (the data are left unread), so that a caller can check the
    claimed shape and dtype against the file's size and its own rules before allocating.

    Raises:
        NpyHeaderError: a header that does not parse (it is a Python literal: any odd text
            lands here), or format version 3.0 (only for structured dtypes with non-ASCII
            field names, which nothing here writes).
    """
    import numpy as np

    try:
        version = np.lib.format.read_magic(file)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(file)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(file)
    except Exception as err:  # noqa: BLE001 - ValueError, SyntaxError, tokenize.TokenError, MemoryError, ...
        raise NpyHeaderError(f"a corrupt .npy header ({_one_line(err)[:200]})") from None
    raise NpyHeaderError(f".npy format version {version[0]}.{version[1]}, not supported")


def remove_stale_parts(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.*.part`` temporaries that a killed writer left in ``folder``.

    Call it only while no other process writes into ``folder`` (a run holds its
    folder alone). Returns the files removed.
    """
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if entry.is_file(follow_symlinks=False) and _PART.match(entry.name):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


# ------------------------------------------------------------------------- reading
_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


@contextlib.contextmanager
def open_regular_file(path: str | os.PathLike, what: str, error: type[Exception]) -> Iterator[tuple[BinaryIO, int]]:
    """Open ``path`` for reading if it is a regular file (links followed); yield ``(file, size)``.

    The file is opened with ``O_NONBLOCK`` and checked with ``fstat`` on the open
    descriptor, so that a FIFO is refused without blocking (a plain ``open`` of a
    FIFO waits for a writer forever) and nothing can be swapped in between the
    check and the read.

    Args:
        path: the file to read.
        what: what the file should be, for messages ("an IDX file").
        error: the one-line error class to raise (e.g. DataError, CheckpointError).

    Raises:
        error: missing, a folder, a FIFO, a device, a socket, or unreadable; the
            message names the file (and a link's target).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(path, flags)
    except FileNotFoundError:
        broken = " (a link to a missing file)" if os.path.islink(path) else ""
        raise error(f"{path}: no such file{broken}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, expected {what}") from None
    except OSError as err:
        raise error(f"{path}: cannot read ({err.strerror or type(err).__name__})") from None
    try:
        info = os.fstat(descriptor)
        if stat.S_ISDIR(info.st_mode):
            raise error(f"{path}: is a folder, expected {what}")
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
            link = f" (a link to {os.path.realpath(path)})" if os.path.islink(path) else ""
            raise error(f"{path}{link}: is {kind}, expected {what}")
        file = os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise
    with file:
        yield file, info.st_size
