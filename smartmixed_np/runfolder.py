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
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = [
    "CONFIG", "HISTORY", "METRICS", "CHOICES", "MODEL_ARRAYS", "MODEL_JSON", "CHECKPOINT", "FINISH_ORDER",
    "finished_problem", "is_finished", "run_state", "environment", "blas_info", "cpu_features",
    "determinism_mismatch", "LOCK", "hold",
]

CONFIG = "config.json"
HISTORY = "history.csv"
METRICS = "metrics.json"
CHOICES = "choices.csv"
MODEL_ARRAYS = "model.npz"
MODEL_JSON = "model.json"
CHECKPOINT = "checkpoint.npz"

#: The lock file of a run folder: whoever holds it is the only process writing there.
LOCK = ".lock"

#: The order in which a finishing run writes its files; ``metrics.json`` (the
#: finished marker) is always last. ``choices.csv`` is written by SmartMixed runs only.
FINISH_ORDER = (MODEL_ARRAYS, MODEL_JSON, HISTORY, CHOICES, "figures/", METRICS)

#: What a finished run folder must hold (choices.csv only for SmartMixed runs).
_REQUIRED = (MODEL_ARRAYS, MODEL_JSON, HISTORY, METRICS)


def _read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; ValueError (with the reason) for anything else."""
    try:
        with open(path, "rb") as file:
            data = file.read(64 * 1024 * 1024 + 1)
    except OSError as err:
        raise ValueError(f"unreadable ({err.strerror or err})") from None
    if len(data) > 64 * 1024 * 1024:
        raise ValueError("larger than 64 MiB")
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ValueError(f"not valid JSON ({type(err).__name__})") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def finished_problem(run_dir: str | os.PathLike) -> str | None:
    """Why ``run_dir`` is not a finished, complete run folder; None when it is.

    Finished means: ``metrics.json`` (the marker, written last) is a strict JSON
    object, ``model.json`` is one too, ``model.npz`` is a zip archive, and
    ``history.csv`` is present. The arrays are not loaded (that is
    :func:`smartmixed_np.checkpoint.load_model`'s job).
    """
    run_dir = Path(run_dir)
    for name in _REQUIRED:
        if not (run_dir / name).is_file():
            return f"{name} is missing"
    for name in (METRICS, MODEL_JSON):
        try:
            _read_json_object(run_dir / name)
        except ValueError as err:
            return f"{name} is {err}"
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
    from . import __version__, compiled

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
    return "; ".join(reasons) or None


# ------------------------------------------------------------------ one writer per folder
_HELD: dict[str, int] = {}
_HELD_LOCK = threading.Lock()


@contextlib.contextmanager
def hold(run_dir: str | os.PathLike, wait_s: float | None = None) -> Iterator[bool]:
    """Hold the exclusive lock ``run_dir/.lock`` (released when the process dies, too).

    Re-entrant within a process: a sweep worker holds its run folder, and the
    :func:`smartmixed_np.train.train` it calls holds it again without waiting. Between
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
