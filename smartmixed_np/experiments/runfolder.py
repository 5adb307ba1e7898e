"""The run folder's files, the order a finished run writes them in, and how to tell its state.

A run folder is *finished and complete* or *resumable*, never something in between
that a reader would take for finished. That holds under a kill at any moment
because of two rules:

1. every file is written atomically (:mod:`smartmixed_np.fileio`): a reader sees
   the old content or the new, never half of it;
2. the end of a run writes its files in :data:`FINISH_ORDER`: the model first,
   then the history, the choices and the figures, and ``metrics.json`` last.
   ``metrics.json`` is the *finished marker*: while it is absent the folder holds
   ``checkpoint.npz`` (written after every epoch), and ``--resume`` writes the end
   of the run again.

:func:`finished_problem` checks completeness (each required file present and
readable), not the existence of one file, so a folder whose marker is garbage is
not taken for finished.

:func:`environment` records what decides the bits of a run: the libraries, the
BLAS and its thread count, the CPU's vector extensions. The same seed, the same
libraries and the same BLAS thread count give the same bits on NumPy; a different
thread count changes how the matrix products round.

This module owns the folder's format: :data:`RUN_FOLDER_FORMAT` (recorded in
``config.json`` as ``"format"``), the readers (:func:`read_json` and its wrappers
:func:`read_config`, :func:`read_metrics`, :func:`read_model_description`;
:func:`read_history`, :func:`read_choices`) and the CSV writers
(:func:`history_csv`, :func:`choices_csv`). The trainer, the CLI, the plots and
the report read a run folder through these, never by parsing its files themselves.
A file that cannot be read raises :class:`RunFolderError` with one line that names
it and the problem.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import UserError
from ..fileio import decode_json, open_regular_file

__all__ = [
    "CONFIG", "HISTORY", "METRICS", "CHOICES", "MODEL_ARRAYS", "MODEL_JSON", "CHECKPOINT", "FINISH_ORDER",
    "finished_problem", "is_finished", "run_state", "environment", "blas_info", "cpu_features",
    "determinism_mismatch", "LOCK", "hold",
    "RUN_FOLDER_FORMAT", "RunFolderError", "read_json", "read_config", "read_metrics", "read_model_description",
    "read_history", "history_from_csv", "read_choices", "history_csv", "choices_csv",
]

#: The run folder's format, recorded in ``config.json`` under ``"format"``. Folders
#: without the field were written before it existed and have the same layout.
RUN_FOLDER_FORMAT = "smartmixed_np.run/1"

CONFIG = "config.json"
HISTORY = "history.csv"
METRICS = "metrics.json"
CHOICES = "choices.csv"
MODEL_ARRAYS = "model.npz"
MODEL_JSON = "model.json"
CHECKPOINT = "checkpoint.npz"

#: What a sweep writes into a run folder besides the run's own files: its log of the
#: run's output, its record of attempts, and the note of a failure.
RUN_LOG = "train.log"
RUN_ATTEMPTS = "sweep_run.json"
FAILED = "FAILED"

#: The lock file of a run folder: whoever holds it is the only process writing there.
LOCK = ".lock"

#: The order in which a finishing run writes its files; ``metrics.json`` (the
#: finished marker) is always last. ``choices.csv`` is written by SmartMixed runs only.
FINISH_ORDER = (MODEL_ARRAYS, MODEL_JSON, HISTORY, CHOICES, "figures/", METRICS)

#: What a finished run folder must hold (choices.csv only for SmartMixed runs).
_REQUIRED = (MODEL_ARRAYS, MODEL_JSON, HISTORY, METRICS)


#: The largest JSON or CSV file of a run folder that is read (a bound against a hostile file).
MAX_FILE_BYTES = 64 * 1024 * 1024


class RunFolderError(UserError, ValueError):
    """A file of a run folder is missing (where required) or cannot be read as its format says.

    ``str(err)`` is one line, ``"{path}: {reason}"``; ``path``, ``reason`` and
    ``kind`` (``"missing"``: no such file, ``"unreadable"``: the system refused to
    read it, ``"corrupt"``: its content is wrong) let a caller say it its own way.
    """

    def __init__(self, path: Path, reason: str, kind: str = "corrupt") -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.kind = path, reason, kind


class _Refused(Exception):
    """The one-line reason :func:`smartmixed_np.fileio.open_regular_file` gives, before it becomes a RunFolderError."""


def _read_bytes(path: Path, required: bool) -> bytes | None:
    """The bytes of ``path`` (at most :data:`MAX_FILE_BYTES`); None when it is absent and not required.

    Opened as a regular file only (:func:`smartmixed_np.fileio.open_regular_file`): a FIFO,
    a device or a folder in its place is refused at once instead of blocking the reader.
    """
    try:
        with open_regular_file(path, "a file", _Refused) as (file, size):
            data = file.read(min(size, MAX_FILE_BYTES) + 1)
    except _Refused as err:
        missing = not os.path.lexists(path)
        if missing and not required:
            return None
        reason = str(err)[len(str(path)):].lstrip(": ")
        raise RunFolderError(path, reason, kind="missing" if missing else "unreadable") from None
    except OSError as err:
        raise RunFolderError(path, f"unreadable ({err.strerror or type(err).__name__})", kind="unreadable") from None
    if len(data) > MAX_FILE_BYTES:
        raise RunFolderError(path, f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
    return data


def _read_text(path: Path, required: bool) -> str | None:
    """The UTF-8 text of ``path``; None when it is absent and not required."""
    data = _read_bytes(path, required)
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise RunFolderError(path, "not UTF-8 text") from None


def _load_json_object(path: Path, required: bool = True) -> dict[str, Any]:
    """A strict JSON object from ``path`` (``{}`` when absent and not required); RunFolderError otherwise."""
    data = _read_bytes(path, required)
    if data is None:
        return {}
    try:
        value = decode_json(data)
    except ValueError as err:
        raise RunFolderError(path, f"not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise RunFolderError(path, "not a JSON object")
    return value


# ------------------------------------------------------------------ readers
def read_json(run_dir: str | os.PathLike, name: str, *, required: bool = True) -> dict[str, Any]:
    """The JSON object in ``run_dir/name``.

    Returns:
        The parsed object; ``{}`` when the file is absent and ``required`` is False.

    Raises:
        RunFolderError: absent (when required), unreadable, larger than
            :data:`MAX_FILE_BYTES`, not UTF-8, not valid strict JSON (``NaN`` and
            infinities included), nested more than
            :data:`smartmixed_np.fileio.MAX_JSON_DEPTH` deep, or not an object; a FIFO,
            device or folder in its place.
    """
    return _load_json_object(Path(run_dir) / name, required)


def read_config(run_dir: str | os.PathLike, *, required: bool = True) -> dict[str, Any]:
    """``config.json``: the run's options, ``data``, ``environment``, ``resumes`` and ``format``."""
    return read_json(run_dir, CONFIG, required=required)


def read_metrics(run_dir: str | os.PathLike, *, required: bool = True) -> dict[str, Any]:
    """``metrics.json``: the finished run's scores (its presence marks the run finished)."""
    return read_json(run_dir, METRICS, required=required)


def read_model_description(run_dir: str | os.PathLike, *, required: bool = True) -> dict[str, Any]:
    """``model.json``: the saved model's description (``config``, ``choices``, metadata); arrays are in ``model.npz``."""
    return read_json(run_dir, MODEL_JSON, required=required)


def _csv_rows(path: Path, required: bool) -> list[dict[str, str]] | None:
    """The rows of a CSV file as dicts by header; None when it is absent and not required."""
    text = _read_text(path, required)
    if text is None:
        return None
    try:
        return list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as err:
        raise RunFolderError(path, f"not valid CSV ({err})") from None


def history_from_csv(path: str | os.PathLike, *, required: bool = True) -> list[dict[str, Any]]:
    """Read a ``history.csv`` file: one dict per epoch, numbers as floats, empty cells as None.

    Returns ``[]`` when the file is absent and ``required`` is False.

    Raises:
        RunFolderError: absent (when required), unreadable, or a cell that is not a number.
    """
    path = Path(path)
    rows = _csv_rows(path, required) or []
    history = []
    for line, row in enumerate(rows, start=2):
        try:
            history.append({k: (float(v) if v not in ("", None) else None) for k, v in row.items()})
        except (TypeError, ValueError):
            raise RunFolderError(path, f"line {line} holds a cell that is not a number") from None
    return history


def read_history(run_dir: str | os.PathLike, *, required: bool = True) -> list[dict[str, Any]]:
    """``history.csv``: one dict per epoch (column -> float, None for an empty cell); see :func:`history_from_csv`."""
    return history_from_csv(Path(run_dir) / HISTORY, required=required)


def read_choices(run_dir: str | os.PathLike, *, required: bool = True) -> list[list[str]]:
    """``choices.csv``: per hidden layer (by the ``layer`` column), the activation names in neuron order.

    Returns:
        ``names[l][j]`` is the activation of neuron ``j`` (original order, the
        ``neuron`` column) of hidden layer ``l``; ``[]`` when the file is absent and
        ``required`` is False.

    Raises:
        RunFolderError: absent (when required), unreadable, a missing column, or a
            layer or neuron that is not an integer.
    """
    path = Path(run_dir) / CHOICES
    return _choices_from_rows(_csv_rows(path, required) or [], path)


def _choices_from_rows(rows: list[dict[str, str]], path: Path | None = None) -> list[list[str]]:
    """Per layer (sorted by ``layer``), the ``activation`` names sorted by ``neuron``: see :func:`read_choices`."""
    layers: dict[int, list[tuple[int, str]]] = {}
    for line, row in enumerate(rows, start=2):
        try:
            layer, neuron, name = int(row["layer"]), int(row["neuron"]), row["activation"]
            if name is None:
                raise ValueError("no activation")
        except (KeyError, TypeError, ValueError):
            raise RunFolderError(path or Path(CHOICES), f"line {line} needs an integer layer and neuron and an activation") from None
        layers.setdefault(layer, []).append((neuron, name))
    return [[name for _, name in sorted(neurons)] for _, neurons in sorted(layers.items())]


# ------------------------------------------------------------------ writers
def history_csv(history: list[dict[str, Any]]) -> str:
    """``history.csv`` text: the columns in order of first appearance, None as an empty cell, ``\\n`` line ends."""
    columns: list[str] = []
    for row in history:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


def choices_csv(choice_names: list[list[str]]) -> str:
    """``choices.csv`` text: a ``layer,neuron,activation`` row per neuron, ``choice_names[layer][neuron]``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["layer", "neuron", "activation"])
    for layer, names in enumerate(choice_names):
        for neuron, name in enumerate(names):
            writer.writerow([layer, neuron, name])
    return buffer.getvalue()


def finished_problem(run_dir: str | os.PathLike) -> str | None:
    """Why ``run_dir`` is not a finished, complete run folder; None when it is.

    Finished means: ``metrics.json`` (the marker, written last) is a strict JSON
    object, ``model.json`` is one too, ``model.npz`` is a zip archive, and
    ``history.csv`` is present. The arrays are not loaded (that is
    :func:`smartmixed_np.experiments.checkpoint.load_model`'s job).
    """
    run_dir = Path(run_dir)
    for name in _REQUIRED:
        if not (run_dir / name).is_file():
            return f"{name} is missing"
    for name in (METRICS, MODEL_JSON):
        try:
            _load_json_object(run_dir / name)
        except RunFolderError as err:
            return f"{name} is {err.reason}"
    try:
        with open(run_dir / MODEL_ARRAYS, "rb") as file:
            if file.read(4) != b"PK\x03\x04":
                return f"{MODEL_ARRAYS} is not an .npz archive"
    except OSError as err:
        return f"{MODEL_ARRAYS} is unreadable ({err.strerror or err})"
    return None


def is_finished(run_dir: str | os.PathLike) -> bool:
    """True when ``run_dir`` is a finished, complete run folder (see :func:`finished_problem`)."""
    return finished_problem(run_dir) is None


def run_state(run_dir: str | os.PathLike) -> str:
    """``finished`` (complete), ``resumable`` (a checkpoint, not finished) or ``new``."""
    run_dir = Path(run_dir)
    if is_finished(run_dir):
        return "finished"
    if (run_dir / CHECKPOINT).is_file():
        return "resumable"
    return "new"


# ------------------------------------------------------------------ what decides the bits
def blas_info() -> dict[str, Any]:
    """The BLAS that NumPy calls: library, version, kernel (architecture) and thread count.

    Read with threadpoolctl at the moment of the call, so a limit set with
    ``threadpool_limits`` or ``OPENBLAS_NUM_THREADS`` shows.
    """
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - a dependency; kept for a broken install
        return {"library": None, "threads": None, "note": "threadpoolctl not installed"}
    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            return {
                "library": pool.get("internal_api"),
                "version": pool.get("version"),
                "kernel": pool.get("architecture"),
                "threads": pool.get("num_threads"),
                "threading_layer": pool.get("threading_layer"),
            }
    return {"library": None, "threads": None, "note": "no BLAS found by threadpoolctl"}


def cpu_features() -> list[str]:
    """The SIMD extensions NumPy detected on this CPU and can dispatch to (e.g. AVX2, AVX512F)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # NumPy < 2
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as features  # type: ignore[no-redef]
        except ImportError:
            return []
    return sorted(name for name, present in features.items() if present and name.startswith(("AVX", "SSE", "FMA", "NEON", "ASIMD", "SVE", "VSX")))


def environment(backend_name: str = "numpy", xp: Any = None) -> dict[str, Any]:
    """What a run records about the machine and libraries: versions, BLAS, threads, CPU."""
    from .. import __version__
    from ..fast import compiled

    versions: dict[str, Any] = {"smartmixed_np": __version__, "python": platform.python_version(), "numpy": np.__version__}
    if backend_name != "numpy" and xp is not None:
        versions[backend_name] = getattr(xp, "__version__", None)
    return {
        "versions": versions,
        "compiled_loops": compiled.status(),
        "blas": blas_info(),
        "cpu": {"machine": platform.machine(), "processor": platform.processor() or None, "vector_extensions": cpu_features()},
        "platform": platform.platform(),
        "argv": list(sys.argv),
    }


def determinism_mismatch(recorded: dict[str, Any] | None, current: dict[str, Any]) -> str | None:
    """Why a run resumed in ``current`` will not give the bits of the run recorded in ``recorded``.

    Compares what decides the bits on the CPU: the NumPy version, the BLAS library
    and its thread count, and whether the compiled loops ran. None when they match
    or nothing was recorded.
    """
    if not recorded:
        return None
    reasons = []
    old_blas, new_blas = recorded.get("blas") or {}, current.get("blas") or {}
    if old_blas.get("threads") is not None and old_blas.get("threads") != new_blas.get("threads"):
        reasons.append(f"BLAS threads {old_blas.get('threads')} then, {new_blas.get('threads')} now")
    if old_blas.get("library") is not None and old_blas.get("library") != new_blas.get("library"):
        reasons.append(f"BLAS {old_blas.get('library')} then, {new_blas.get('library')} now")
    old_numpy = (recorded.get("versions") or {}).get("numpy")
    new_numpy = (current.get("versions") or {}).get("numpy")
    if old_numpy is not None and old_numpy != new_numpy:
        reasons.append(f"NumPy {old_numpy} then, {new_numpy} now")
    # Phase 1's compiled backward rounds its tanh and its logit-gradient sum its own way.
    old_loops, new_loops = recorded.get("compiled_loops"), current.get("compiled_loops")
    if old_loops is not None and old_loops != new_loops:
        reasons.append(f"compiled loops {old_loops} then, {new_loops} now")
    return "; ".join(reasons) or None


# ------------------------------------------------------------------ one writer per folder
_HELD: dict[str, int] = {}
_HELD_LOCK = threading.Lock()


@contextlib.contextmanager
def hold(run_dir: str | os.PathLike, wait_s: float | None = None) -> Iterator[bool]:
    """Hold the exclusive lock ``run_dir/.lock`` (released when the process dies, too).

    Re-entrant within a process: a sweep worker holds its run folder, and the
    :func:`smartmixed_np.experiments.train.train` it calls holds it again without waiting. Between
    processes it excludes: a ``smartmixed train --resume DIR`` while a sweep trains DIR
    finds it held.

    Args:
        run_dir: an existing folder.
        wait_s: seconds to wait for another process to let go; None waits as long as
            it takes, 0 does not wait.

    Yields:
        True while the lock is held; False when ``wait_s`` passed without getting it,
        or where there are no locks (not POSIX).
    """
    key = str(Path(run_dir).resolve())
    with _HELD_LOCK:
        if _HELD.get(key):
            _HELD[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield True
        finally:
            with _HELD_LOCK:
                _HELD[key] -= 1
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield False
        return
    with open(Path(run_dir) / LOCK, "a") as handle:
        deadline = None if wait_s is None else time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
                break
            except OSError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.05)
        with _HELD_LOCK:
            _HELD[key] = 1
        try:
            yield True
        finally:
            with _HELD_LOCK:
                _HELD.pop(key, None)
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
