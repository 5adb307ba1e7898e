"""Sweeps: one ordinary training run per (architecture, model, seed), in parallel, resumable.

``run_sweep(out, archs=(1, 2, 4), models=DEFAULT_MODELS, seeds=(0, 1, 2), config=...)``
(and ``smartmixed sweep``) writes one run folder per combination::

    out/arch2/smartmixed/seed0/   config.json, history.csv, metrics.json, ... (see train.py)

Restarting is safe and cheap: a run that is finished and complete
(:func:`smartmixed_np.experiments.runfolder.is_finished`: ``metrics.json``, the marker a run
writes last, and the model files it needs, all readable) is skipped; a run with
``checkpoint.npz`` is resumed with ``train(resume=...)`` (bit for bit as if never
stopped, on NumPy, at the same BLAS thread count); a run killed before its first
checkpoint starts again; anything else starts afresh. A run that raises is
recorded as failed (``FAILED`` in its folder: the error and its traceback) and the
others go on; a restart tries failed runs again (``retry_failed=False`` /
``--skip-failed`` keeps them as they are).

Files of the sweep folder, all written atomically:

* ``sweep.json``: the training options shared by every run and each architecture's
  widths; a restart with other training options is refused (it would mix results).
  An option missing from it (a folder written before the option existed) counts as
  the option's default.
* ``sweep_status.json``: the state of every run of the current invocation
  (pending, submitted, done, skipped, failed, interrupted), rewritten at each event.
* per run: ``FAILED`` (after a failure), ``sweep_run.json`` (one entry per attempt:
  action, status, wall time, host, pid, BLAS threads) and ``train.log`` (what the
  run printed).

What a kill at any moment (SIGKILL of the whole process group included) leaves
behind, and how the next invocation repairs it, while it holds the run's lock:

* ``train.log`` is only ever appended to, line by line as the run prints, and
  synced to disk when the attempt ends: nothing written before a kill is lost, and
  an old log of any encoding is kept byte for byte;
* ``sweep_run.json`` gets the attempt's entry (status ``running``) before training
  starts and its outcome after; a ``running`` entry found later belonged to a
  process that died, and becomes ``done`` when the run is finished (the kill came
  between the marker and the bookkeeping) or ``killed`` otherwise;
* the hidden ``.<name>.*.part`` temporaries of interrupted atomic writes are removed.

Parallelism goes through a :class:`concurrent.futures.Executor`:

* ``executor="process"`` (default): a local process pool of ``workers`` processes
  started with the ``spawn`` method. Each worker may use ``blas_threads`` BLAS
  threads (default: cores // workers), so that the workers together do not
  oversubscribe the cores. The limit is set through the environment variables in
  :data:`BLAS_THREAD_VARIABLES`: BLAS libraries read them once, when NumPy is first
  imported, and a spawned worker imports NumPy afresh, so the sweep sets them in its
  own environment while it starts workers (a spawned child inherits the parent's
  environment) and again in the pool initializer. A forked worker would share the
  parent's already-initialised BLAS, which is why spawn is used.
* ``executor="dask"`` with ``scheduler="tcp://host:8786"``: the runs go to a Dask
  distributed cluster through ``Client.get_executor()`` (install the ``dask`` extra).
  Dask's nanny-started workers already set ``OMP_NUM_THREADS=1`` and friends
  (``distributed.nanny.pre-spawn-environ``); give each worker one thread
  (``dask worker --nthreads 1``) so that runs do not share a process. Every worker
  needs smartmixed_np installed (the task is ``smartmixed_np.experiments.sweep.run_task``), the
  data at the path given by ``--data-dir`` (or ``SMARTMIXED_DATA`` in its own
  environment), and the sweep folder on storage that it sees at the same path.
* any ``concurrent.futures.Executor`` instance (the caller owns and shuts it down).

Interrupting (Ctrl-C): the sweep stops every running run of a local pool at its
next optimizer step (each saves its checkpoint) and exits; restart the same command
to continue. A worker whose sweep process was killed outright notices that its
parent is gone at the next step, saves its checkpoint and stops. A lock in each run
folder keeps two processes from ever training the same run at once (local
filesystems; NFS locks depend on the mount). On Dask, runs already started finish
on their workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from . import runfolder
from ..errors import UserError
from ..fileio import remove_stale_parts, write_json, write_text

__all__ = [
    "DEFAULT_MODELS",
    "BLAS_THREAD_VARIABLES",
    "SweepError",
    "RunSpec",
    "SweepResult",
    "plan_sweep",
    "run_sweep",
    "run_state",
    "run_task",
]

DEFAULT_MODELS = ("relu", "sigmoid", "tanh", "leaky_relu", "elu", "selu", "smartmixed")
BLAS_THREAD_VARIABLES = (
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS",
)
SWEEP_JSON = "sweep.json"
STATUS_JSON = "sweep_status.json"
FAILED, RUN_LOG, RUN_ATTEMPTS = runfolder.FAILED, runfolder.RUN_LOG, runfolder.RUN_ATTEMPTS
SWEEP_FORMAT = "smartmixed_np.sweep/1"
# Options that may differ between the runs of one sweep, or between a sweep and its
# restart, without changing what any run computes.
_PER_RUN_OPTIONS = ("model", "hidden", "arch", "seed", "out", "quiet", "progress", "data_dir", "device")
# A run whose worker process dies (killed, out of memory) is tried this many times
# in all; every run that shared the dead pool counts one attempt.
_MAX_POOL_ATTEMPTS = 2
# How long a connection to a Dask scheduler may take before the sweep gives up.
_DASK_CONNECT_TIMEOUT_S = 20
# The address forms a Dask client connects to: [scheme://]host:port, the host a
# name, an IPv4 address or a bracketed IPv6 address ("inproc://" is in-process only).
_DASK_ADDRESS = re.compile(r"^(?:(?:tcp|tls|ws|wss|ucx)://)?(?:[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252})|\[[0-9A-Fa-f:.]+\]):([0-9]{1,5})$")


class SweepError(UserError, ValueError):
    """A sweep option or sweep folder is wrong."""


# ------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: what to train and where (plain data, picklable for any executor)."""

    arch: str
    hidden: tuple[int, ...]
    model: str
    seed: int
    run_dir: str
    config: dict[str, Any] = field(compare=False, hash=False, repr=False)

    @property
    def key(self) -> str:
        """``arch2/smartmixed/seed0``: the run folder relative to the sweep folder."""
        return run_key(self.arch, self.model, self.seed)


def run_key(arch: Any, model: str, seed: int) -> str:
    return f"arch{arch}/{model}/seed{seed}"


def _architectures(archs: Iterable[int] | Mapping[Any, Iterable[int]]) -> dict[str, tuple[int, ...]]:
    """``{label: widths}`` from published IDs or from a ``{label: widths}`` mapping."""
    from .archs import get_architecture

    if isinstance(archs, Mapping):
        result = {}
        for label, widths in archs.items():
            widths = tuple(int(w) for w in widths)
            if not widths or min(widths) < 1:
                raise SweepError(f"architecture {label!r}: hidden widths must be positive integers, got {widths}")
            result[str(label)] = widths
    else:
        result = {}
        for arch_id in archs:
            try:
                result[str(int(arch_id))] = get_architecture(arch_id)
            except (ValueError, TypeError) as err:
                raise SweepError(str(err)) from None
    if not result:
        raise SweepError("no architecture to sweep over")
    for label in result:
        if not label or "/" in label or label.startswith("."):
            raise SweepError(f"architecture label {label!r} cannot name a folder")
    return result


def _unique(values: Iterable[Any], what: str) -> list[Any]:
    values = list(dict.fromkeys(values))
    if not values:
        raise SweepError(f"no {what} to sweep over")
    return values


def plan_sweep(
    out: str | os.PathLike,
    archs: Iterable[int] | Mapping[Any, Iterable[int]] = (1, 2, 4),
    models: Iterable[str] = DEFAULT_MODELS,
    seeds: Iterable[int] = (0, 1, 2),
    config: Any = None,
) -> list[RunSpec]:
    """The runs of a sweep, seed by seed (all of seed 0 first), then architecture, then model.

    Seeds come outermost so that a sweep stopped partway already holds complete
    comparisons for its first seeds.

    Args:
        out: the sweep folder.
        archs: published architecture IDs, or a mapping ``{label: hidden widths}``.
        models: "smartmixed" and/or candidate activation names.
        seeds: non-negative integers.
        config: the shared training options: a :class:`~smartmixed_np.experiments.train.TrainConfig`
            or a dict of its fields (``model``, ``hidden``, ``seed``, ``out`` are set per run).

    Raises:
        SweepError, ConfigError: an invalid option (checked for every run before any starts).
    """
    from .train import ConfigError, TrainConfig

    if config is None:
        config = TrainConfig()
    elif isinstance(config, Mapping):
        try:
            config = TrainConfig(**dict(config))
        except TypeError as err:
            raise SweepError(f"invalid training options: {err}") from None
    out = Path(out).expanduser().resolve()
    if config.data_dir:
        config = dataclasses.replace(config, data_dir=str(Path(config.data_dir).expanduser().resolve()))
    architectures = _architectures(archs)
    models = _unique((str(m).strip().lower() for m in models), "model")
    seeds = _unique(seeds, "seed")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise SweepError(f"seeds must be non-negative integers, got {seed!r}")
    specs = []
    for seed in seeds:
        for label, widths in architectures.items():
            for model in models:
                run_dir = out / f"arch{label}" / model / f"seed{seed}"
                run_config = dataclasses.replace(
                    config, model=model, hidden=widths, arch=None, seed=seed, out=str(run_dir), quiet=True, progress=False,
                )
                try:
                    run_config.validate()
                except ConfigError as err:
                    raise ConfigError(f"{run_key(label, model, seed)}: {err}") from None
                specs.append(RunSpec(label, widths, model, seed, str(run_dir), run_config.to_json()))
    return specs


def run_state(run_dir: str | os.PathLike) -> str:
    """``finished``, ``failed`` (FAILED), ``resumable`` (checkpoint.npz) or ``new``.

    ``finished`` means finished and complete (:func:`smartmixed_np.experiments.runfolder.is_finished`):
    a folder whose ``metrics.json`` is garbage, or whose model files are missing, is
    not finished; it is resumable when it holds a checkpoint (the resume writes the
    end of the run again).
    """
    run_dir = Path(run_dir)
    state = runfolder.run_state(run_dir)
    if state != "finished" and (run_dir / FAILED).is_file():
        return "failed"
    return state


def _first_line(path: Path) -> str:
    """The first line of a text file of any encoding (undecodable bytes replaced)."""
    try:
        with open(path, "rb") as file:
            head = file.read(4096)
    except OSError as err:
        return f"({path.name} unreadable: {err.strerror or err})"
    lines = head.decode("utf-8", errors="replace").strip().splitlines()
    return lines[0] if lines else f"({path.name} is empty)"


# ------------------------------------------------------------------------ the worker side
# Set by the pool initializer in each local worker process; absent on Dask workers.
_WORKER: dict[str, Any] = {"stop": None, "parent": None, "busy": False}
_WORKER_LOCK = threading.Lock()


def _init_worker(blas_threads: int, stop_event: Any, parent_pid: int) -> None:
    """Local pool initializer: BLAS thread limit, the sweep's stop flag, the parent's pid.

    The variables are already in this process's environment (inherited from the
    sweep process at spawn time, before NumPy was imported here); setting them again
    covers any process this worker starts. SIGINT is ignored outside training:
    a Ctrl-C in the terminal reaches every worker, and the sweep process decides
    how to stop them (training itself defers a Ctrl-C to the end of its step).
    """
    for name in BLAS_THREAD_VARIABLES:
        os.environ[name] = str(blas_threads)
    _WORKER["stop"], _WORKER["parent"] = stop_event, parent_pid
    with contextlib.suppress(ValueError):  # not the main thread: nothing to do
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_when_orphaned, name="sweep-parent-watch", daemon=True).start()


def _exit_when_orphaned(poll_s: float = 0.5) -> None:
    """Leave once the sweep process is gone and no run is in progress here.

    An idle pool worker waits on its task queue forever if the sweep process is
    killed outright (the worker holds the queue's write end too, so it never reads
    end-of-file). A run in progress is left to stop itself: its step hook sees the
    missing parent, saves the checkpoint, and then this thread ends the process.
    """
    while True:
        time.sleep(poll_s)
        if os.getppid() != _WORKER["parent"]:
            with _WORKER_LOCK:
                if not _WORKER["busy"]:
                    os._exit(0)


def _should_stop() -> bool:
    stop, parent = _WORKER["stop"], _WORKER["parent"]
    if stop is not None and stop.is_set():
        return True
    return parent is not None and os.getppid() != parent  # the sweep process is gone


def _step_hook(user_hook: Callable | None) -> Callable:
    def on_step(epoch: int, step: int, global_step: int, model: Any) -> None:
        if user_hook is not None:
            user_hook(epoch, step, global_step, model)
        if _should_stop():
            raise KeyboardInterrupt  # train() saves the checkpoint and returns interrupted

    return on_step


def _run_lock(run_dir: Path, wait_s: float | None = None):
    """The run folder's lock (:func:`smartmixed_np.experiments.runfolder.hold`): whoever holds it is
    the only process writing into ``run_dir``, so it may tidy what a killed process left."""
    return runfolder.hold(run_dir, wait_s)


def _read_json_list(path: Path) -> list[dict[str, Any]]:
    """The attempt entries of ``sweep_run.json``; [] when missing or unreadable (any encoding)."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return []
    return [entry for entry in data if isinstance(entry, dict)] if isinstance(data, list) else []


def _tidy(run_dir: Path) -> bool:
    """Repair what a killed process left in ``run_dir``; call it only holding the run's lock.

    * the ``.<name>.*.part`` temporaries of atomic writes that never finished are
      removed (in the run folder and its ``figures/``);
    * an attempt still marked ``running`` in ``sweep_run.json`` belonged to a
      process that died (it would hold the lock otherwise): the last one becomes
      ``done`` if the run is finished (the kill fell between the finished marker and
      the bookkeeping), every other one ``killed``;
    * a finished run loses a ``FAILED`` left by an earlier attempt.

    Returns:
        Whether the run is finished and complete.
    """
    for folder in (run_dir, run_dir / "figures"):
        if folder.is_dir():
            remove_stale_parts(folder)
    finished = runfolder.is_finished(run_dir)
    path = run_dir / RUN_ATTEMPTS
    attempts = _read_json_list(path)
    changed = False
    for index, entry in enumerate(attempts):
        if entry.get("status") != "running":
            continue
        changed = True
        if finished and index == len(attempts) - 1:
            entry["status"] = "done"
            entry["note"] = "finished; its process was killed before it recorded the outcome"
            started = entry.get("started_unix")
            with contextlib.suppress(OSError, TypeError, ValueError):
                entry["wall_s"] = round((run_dir / runfolder.METRICS).stat().st_mtime - float(started), 3)
        else:
            entry["status"] = "killed"
            entry["note"] = "its process ended without recording the outcome (killed?)"
    if changed:
        write_json(path, attempts)
    if finished:
        (run_dir / FAILED).unlink(missing_ok=True)
    return finished


def _aborted_start_problem(run_dir: Path) -> str | None:
    """Make a folder that is neither finished nor resumable ready for a fresh start.

    A run killed before its first checkpoint leaves ``config.json`` alone (train
    writes it first): that is removed, so the run starts again. Any other file of a
    run without a checkpoint (``metrics.json``, the model, the history) may be
    someone's results: those are kept and the reason returned.
    """
    if (run_dir / runfolder.CHECKPOINT).is_file():
        return None
    results = [name for name in (runfolder.METRICS, runfolder.MODEL_ARRAYS, runfolder.MODEL_JSON, runfolder.HISTORY,
                                 runfolder.CHOICES, "figures") if (run_dir / name).exists()]
    if results:
        problem = runfolder.finished_problem(run_dir)
        return (f"{run_dir} holds an unfinished run ({problem}) without {runfolder.CHECKPOINT} to resume from; "
                "move the folder away to train the run again")
    (run_dir / runfolder.CONFIG).unlink(missing_ok=True)
    return None


class _PerThreadStream:
    """Stands in for ``sys.stdout``/``sys.stderr``: writes go to this thread's capture, if any.

    ``contextlib.redirect_stdout`` swaps a process-wide object, which is wrong when
    runs share a process (Dask workers run tasks in threads). This proxy is
    installed once and sends each thread's output to that thread's buffer.
    """

    def __init__(self, default: Any, local: threading.local) -> None:
        self._default, self._local = default, local

    def _target(self) -> Any:
        return getattr(self._local, "buffer", None) or self._default

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def __getattr__(self, name: str) -> Any:  # isatty, encoding, fileno, ...
        return getattr(self._default, name)


class _AppendLog:
    """A text sink that appends every write to a file at once, as UTF-8.

    Each ``write`` goes to the operating system straight away (``O_APPEND``, no
    buffer in this process), so a kill of the process loses nothing printed
    before it; the file is synced to disk (which a crash of the machine would
    need) after a line at most every :attr:`sync_every_s` seconds, and by
    :meth:`close`. The file's earlier content, in whatever encoding, is never read
    or rewritten. A failed write (full disk) does not stop the run: the first error
    is kept in :attr:`error`.
    """

    sync_every_s = 1.0

    def __init__(self, path: Path) -> None:
        self.error: str | None = None
        self._fd: int | None = None
        self._synced = time.monotonic()
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as err:
            self.error = f"{path.name}: {err.strerror or err}"

    def write(self, text: str) -> int:
        data = text.encode("utf-8", errors="replace")
        while data and self._fd is not None:
            try:
                written = os.write(self._fd, data)
            except OSError as err:
                self.error = self.error or f"{RUN_LOG}: {err.strerror or err}"
                break
            data = data[written:]
        if "\n" in text and self._fd is not None and time.monotonic() - self._synced >= self.sync_every_s:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            self._synced = time.monotonic()
        return len(text)

    def flush(self) -> None:  # nothing is buffered here
        pass

    def close(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.fsync(self._fd)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None


_CAPTURE = threading.local()
_CAPTURE_LOCK = threading.Lock()


@contextlib.contextmanager
def _captured_output(sink: Any):
    """Send what this thread prints (stdout and stderr) to ``sink`` (an object with ``write``)."""
    with _CAPTURE_LOCK:
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if not isinstance(stream, _PerThreadStream):
                setattr(sys, name, _PerThreadStream(stream, _CAPTURE))
    _CAPTURE.buffer = sink
    try:
        yield sink
    finally:
        _CAPTURE.buffer = None


def run_task(spec: RunSpec, on_step: Callable | None = None) -> dict[str, Any]:
    """Train (or resume, or skip) one run of a sweep; executed by the workers.

    Never raises for a failed run: the error is written to ``FAILED`` in the run
    folder and returned in the record.

    Returns:
        ``{"key", "status", "action", "error", "wall_s", "test_accuracy", "host",
        "pid", "blas_threads"}``; ``status`` is ``done``, ``skipped`` (already
        finished), ``failed``, ``interrupted`` (stopped, checkpoint saved) or
        ``cancelled`` (the sweep was stopping; not started). ``blas_threads`` is
        the thread count of the BLAS that NumPy calls in this process (read with
        threadpoolctl), which decides the bits of the matrix products.
    """
    record: dict[str, Any] = {
        "key": spec.key, "status": None, "action": None, "error": None, "wall_s": 0.0, "test_accuracy": None,
        "host": socket.gethostname(), "pid": os.getpid(), "blas_threads": runfolder.blas_info().get("threads"),
    }
    with _WORKER_LOCK:
        if _should_stop():
            return {**record, "status": "cancelled"}
        _WORKER["busy"] = True
    try:
        return _run_locked(spec, on_step, record)
    finally:
        _WORKER["busy"] = False


def _run_locked(spec: RunSpec, on_step: Callable | None, record: dict[str, Any]) -> dict[str, Any]:
    """Train one run holding its folder's lock; bookkeeping that a kill at any moment cannot lose.

    The order: tidy what a killed process left; append the attempt (``running``) to
    ``sweep_run.json`` and its header to ``train.log``; train, the output appended to
    the log as it comes; then the outcome (``FAILED`` written or removed, the log
    synced, the attempt's status). Each file is written atomically or appended.
    """
    from .train import TrainConfig, train

    run_dir = Path(spec.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _run_lock(run_dir) as held:
        finished = _tidy(run_dir) if held else runfolder.is_finished(run_dir)
        if finished:
            return {**record, "status": "skipped"}
        started, started_unix, wall_start = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.time(), time.perf_counter()
        resuming = (run_dir / runfolder.CHECKPOINT).is_file()
        record["action"] = "resumed" if resuming else "started"
        attempts = _read_json_list(run_dir / RUN_ATTEMPTS)
        entry = {"started": started, "started_unix": round(started_unix, 3), "action": record["action"], "status": "running",
                 "wall_s": None, "host": record["host"], "pid": record["pid"], "blas_threads": record["blas_threads"], "error": None}
        attempts.append(entry)
        write_json(run_dir / RUN_ATTEMPTS, attempts)
        log = _AppendLog(run_dir / RUN_LOG)
        log.write(f"--- {started} {record['action']} on {record['host']} (pid {record['pid']}, "
                  f"{record['blas_threads']} BLAS thread(s))\n")
        try:
            with _captured_output(log):
                problem = None if resuming or not held else _aborted_start_problem(run_dir)
                if problem:
                    raise SweepError(problem)
                if resuming:
                    # The sweep's own --import modules (the run recorded the same ones).
                    overrides = {"quiet": True, "progress": False, "device": spec.config["device"],
                                 "imports": list(spec.config.get("imports") or ())}
                    if spec.config.get("data_dir"):
                        overrides["data_dir"] = spec.config["data_dir"]
                    result = train(resume=run_dir, overrides=overrides, on_step=_step_hook(on_step))
                else:
                    result = train(TrainConfig.from_json(spec.config), on_step=_step_hook(on_step))
        except Exception as err:  # any failure of this run is recorded, never raised
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
            message = f"{type(err).__name__}: {first_line}" if first_line else type(err).__name__
            record.update(status="failed", error=message)
            log.write(f"{message}\n")
            write_text(run_dir / FAILED, f"{message}\n\n{traceback.format_exc()}")
        else:
            if result.interrupted:
                record["status"] = "interrupted"
            else:
                record.update(status="done", test_accuracy=result.metrics["test"]["accuracy"])
                (run_dir / FAILED).unlink(missing_ok=True)
        finally:
            record["wall_s"] = round(time.perf_counter() - wall_start, 3)
            log.close()
            # No status: something other than an Exception (SystemExit, a second Ctrl-C) ended it.
            entry.update(status=record["status"] or "interrupted", wall_s=record["wall_s"], error=record["error"])
            if log.error:
                entry["log_error"] = log.error
            write_json(run_dir / RUN_ATTEMPTS, attempts)
    return record


# ------------------------------------------------------------------------ the sweep side
@dataclass
class SweepResult:
    """What :func:`run_sweep` returns: the sweep folder and each run's last record, by key."""

    out: Path
    records: dict[str, dict[str, Any]]
    interrupted: bool = False

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.records.values():
            counts[record["status"]] = counts.get(record["status"], 0) + 1
        return counts

    @property
    def failed(self) -> list[str]:
        return [key for key, record in self.records.items() if record["status"] == "failed"]

    @property
    def ok(self) -> bool:
        """Every run finished (now or before)."""
        return not self.interrupted and all(r["status"] in ("done", "skipped") for r in self.records.values())


def _tidy_finished(run_dir: Path) -> None:
    """Complete the bookkeeping of a finished run whose process was killed after its marker.

    Such a run is skipped without a worker, so this process tidies it, holding the
    run's lock (a few seconds at most: a process that holds it on a finished run is
    only writing that bookkeeping itself).
    """
    with contextlib.suppress(OSError), _run_lock(run_dir, wait_s=5.0) as held:
        if held:
            _tidy(run_dir)


def _cores() -> int:
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextlib.contextmanager
def _blas_environment(threads: int):
    """Set the BLAS thread variables in this process's environment, restored afterwards."""
    saved = {name: os.environ.get(name) for name in BLAS_THREAD_VARIABLES}
    os.environ.update({name: str(threads) for name in BLAS_THREAD_VARIABLES})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _sweep_lock(out: Path):
    """Refuse a second sweep process on the same folder (the lock dies with its holder)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(out / ".sweep.lock", "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SweepError(f"another sweep is running in {out}; wait for it or stop it first") from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _shared_options(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _PER_RUN_OPTIONS}


def _default_shared_options() -> dict[str, Any]:
    """The shared training options of a default :class:`~smartmixed_np.experiments.train.TrainConfig`, as JSON."""
    from .train import TrainConfig

    return _shared_options(TrainConfig().to_json())


def _check_sweep_folder(out: Path, specs: list[RunSpec]) -> dict[str, Any]:
    """Compare with ``sweep.json`` of an earlier invocation; return the merged description."""
    options = _shared_options(specs[0].config)
    archs = {spec.arch: list(spec.hidden) for spec in specs}
    path = out / SWEEP_JSON
    description = {"format": SWEEP_FORMAT, "training_options": options, "architectures": archs, "models": [], "seeds": []}
    if path.is_file():
        try:
            previous = json.loads(path.read_bytes().decode("utf-8"))
            old_options, old_archs = previous["training_options"], previous["architectures"]
            if not isinstance(old_options, dict) or not isinstance(old_archs, dict):
                raise TypeError("training_options and architectures must be objects")
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
            raise SweepError(f"{path}: not a readable sweep description ({type(err).__name__}: {err})"[:300]) from None
        # A folder written before an option existed ran with the option's default.
        old_options = {**_default_shared_options(), **old_options}
        changed = [f"{k}: {old_options.get(k)!r} -> {options.get(k)!r}" for k in sorted(set(options) | set(old_options))
                   if old_options.get(k) != options.get(k)]
        if changed:
            raise SweepError(f"{out} holds a sweep with other training options ({'; '.join(changed)}); "
                             "use the same options to continue it, or another --out")
        for label, widths in archs.items():
            if label in old_archs and list(old_archs[label]) != widths:
                raise SweepError(f"{out}: architecture {label} had hidden widths {old_archs[label]} there, now {widths}")
        description.update(architectures={**old_archs, **archs}, models=list(previous.get("models", [])),
                           seeds=list(previous.get("seeds", [])))
    for spec in specs:
        if spec.model not in description["models"]:
            description["models"].append(spec.model)
        if spec.seed not in description["seeds"]:
            description["seeds"].append(spec.seed)
    return description


def _check_data(config: dict[str, Any]) -> None:
    """Find (or download, once, here rather than in every worker) an IDX dataset's files.

    Raises:
        DataError: the data folder does not exist or lacks a file.
    """
    from ..data import find_dataset_folder
    from ..data.datasets import _IDX_DATASETS

    if config["dataset"] in _IDX_DATASETS:
        find_dataset_folder(config["dataset"], config.get("data_dir"), progress=True, mirror=config.get("mirror"))


def _check_executor(executor: Any, scheduler: Any, workers: Any, blas_threads: Any) -> None:
    """Refuse bad parallelism options before anything is written."""
    if isinstance(executor, str) and executor not in ("process", "dask"):
        raise SweepError(f"unknown executor {executor!r}; use process or dask")
    if not isinstance(executor, (str, Executor)):
        raise SweepError(f"executor must be 'process', 'dask' or a concurrent.futures.Executor, got {executor!r}")
    for name, value in (("--workers", workers), ("--blas-threads", blas_threads)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SweepError(f"{name} must be a positive integer, got {value!r}")
    if executor == "dask":
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise SweepError("the dask executor needs Dask: pip install 'smartmixed_np[dask]'") from None
        if scheduler is None:
            raise SweepError("the dask executor needs --scheduler ADDRESS (for example tcp://127.0.0.1:8786)")
        _check_dask_address(scheduler)
    elif scheduler is not None:
        raise SweepError("--scheduler is for --executor dask only")


def _check_dask_address(scheduler: Any) -> None:
    """Refuse a scheduler that is neither a ``distributed.Client`` nor an address of the form Dask connects to."""
    from distributed import Client

    if isinstance(scheduler, Client):
        return
    shown = repr(scheduler) if len(repr(scheduler)) <= 80 else repr(scheduler)[:77] + "..."
    if not isinstance(scheduler, str):
        raise SweepError(f"--scheduler must be an address such as tcp://10.0.0.5:8786 or a distributed.Client, got {shown}")
    if scheduler.startswith("inproc://"):
        return
    match = _DASK_ADDRESS.match(scheduler)
    if match is None or not 1 <= int(match.group(1)) <= 65535:
        raise SweepError(f"--scheduler {shown}: not a Dask scheduler address; expected [tcp://]HOST:PORT "
                         "such as tcp://10.0.0.5:8786 (schemes tcp, tls, ws, wss, ucx; port 1-65535)")


def _make_dask_executor(scheduler: Any) -> tuple[Executor, Callable[[], None]]:
    """A Dask executor on ``scheduler`` and its closer; any failure to connect is one SweepError line."""
    try:
        from distributed import Client
    except ImportError:
        raise SweepError("the dask executor needs Dask: pip install 'smartmixed_np[dask]'") from None
    # The address was checked by _check_executor before anything was written.
    if isinstance(scheduler, Client):
        client, owned = scheduler, False
    else:
        try:
            client, owned = Client(scheduler, timeout=f"{_DASK_CONNECT_TIMEOUT_S}s"), True
        except Exception as err:  # OSError, TimeoutError, ValueError (a scheme Dask lacks), ...
            reason = " ".join(str(err).split()) or type(err).__name__
            raise SweepError(f"cannot reach the Dask scheduler at {scheduler}: {reason}"[:400]) from None
    executor = client.get_executor(pure=False)

    def close() -> None:
        executor.shutdown(wait=False)
        if owned:
            client.close()

    return executor, close


def run_sweep(
    out: str | os.PathLike,
    archs: Iterable[int] | Mapping[Any, Iterable[int]] = (1, 2, 4),
    models: Iterable[str] = DEFAULT_MODELS,
    seeds: Iterable[int] = (0, 1, 2),
    config: Any = None,
    *,
    workers: int | None = None,
    blas_threads: int | None = None,
    executor: str | Executor = "process",
    scheduler: Any = None,
    retry_failed: bool = True,
    on_step: Callable | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    quiet: bool = False,
) -> SweepResult:
    """Run every (architecture, model, seed) of a sweep into ``out``, skipping finished runs.

    Args:
        out, archs, models, seeds, config: as for :func:`plan_sweep`.
        workers: local pool size (default: the number of cores, at most the number
            of runs to do).
        blas_threads: BLAS threads per local worker (default: cores // workers, at least 1).
        executor: ``"process"`` (local spawn pool), ``"dask"`` (needs ``scheduler``:
            an address or a ``distributed.Client``), or an Executor instance that the
            caller owns.
        retry_failed: run again the runs that an earlier invocation recorded as failed.
        on_step: passed to every run's ``train(on_step=...)`` in the worker (must be
            picklable; tests use it to slow or stop runs).
        on_result: called in this process with each run's record as it arrives.
        quiet: print nothing.

    Returns:
        A :class:`SweepResult`; ``interrupted`` after Ctrl-C.

    Raises:
        SweepError, ConfigError: invalid options, or a sweep folder holding other options.
    """
    out = Path(out).expanduser().resolve()
    specs = plan_sweep(out, archs, models, seeds, config)
    _check_executor(executor, scheduler, workers, blas_threads)
    _check_data(specs[0].config)
    say = (lambda *a: None) if quiet else (lambda text: print(text, flush=True))
    out.mkdir(parents=True, exist_ok=True)
    with _sweep_lock(out):
        description = _check_sweep_folder(out, specs)
        remove_stale_parts(out)  # only this process writes here, and it holds the sweep's lock
        write_json(out / SWEEP_JSON, description)
        records: dict[str, dict[str, Any]] = {}
        todo: list[RunSpec] = []
        states = {spec.key: run_state(spec.run_dir) for spec in specs}
        for spec in specs:
            state = states[spec.key]
            if state == "finished":
                _tidy_finished(Path(spec.run_dir))
                records[spec.key] = {"key": spec.key, "status": "skipped"}
            elif state == "failed" and not retry_failed:
                error = _first_line(Path(spec.run_dir) / FAILED)
                records[spec.key] = {"key": spec.key, "status": "failed", "error": error, "retried": False}
            else:
                records[spec.key] = {"key": spec.key, "status": "pending"}
                todo.append(spec)
        state_counts = {s: sum(1 for spec in todo if states[spec.key] == s) for s in ("resumable", "failed", "new")}
        say(f"sweep: {len(specs)} run(s) in {out}: {len(specs) - len(todo)} finished or kept, {state_counts['resumable']} to resume, "
            f"{state_counts['failed']} failed before (retried), {state_counts['new']} to start")
        status_path = out / STATUS_JSON

        def write_status() -> None:
            counts: dict[str, int] = {}
            for record in records.values():
                counts[record["status"]] = counts.get(record["status"], 0) + 1
            write_json(status_path, {"updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "counts": counts, "runs": records})

        write_status()
        if not todo:
            return SweepResult(out, records)
        runner = _Runner(todo, records, write_status, say, on_step, on_result, workers, blas_threads, executor, scheduler)
        interrupted = runner.run()
        write_status()
    result = SweepResult(out, records, interrupted=interrupted)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(result.counts.items()))
    if interrupted:
        say(f"sweep interrupted ({counts}); run the same command again to continue")
    else:
        say(f"sweep finished: {counts}" + (f"; failed runs are described in {status_path}" if result.failed else "")
            + f"\nreport: smartmixed report {out}")
    return result


class _Runner:
    """Feeds runs to an executor, collects their records, rebuilds a broken local pool."""

    def __init__(self, todo, records, write_status, say, on_step, on_result, workers, blas_threads, executor, scheduler):
        self.queue: deque = deque((spec, 0) for spec in todo)
        self.total = len(todo)
        self.finished = 0
        self.records, self.write_status, self.say = records, write_status, say
        self.on_step, self.on_result = on_step, on_result
        self.kind = executor if isinstance(executor, str) else "custom"
        self.given = executor if self.kind == "custom" else None
        self.scheduler = scheduler
        cores = _cores()
        self.workers = workers or max(1, min(cores, len(todo)))
        self.blas_threads = blas_threads or max(1, cores // self.workers)
        self.stop_event = None

    # -- executors ---------------------------------------------------------------
    def _open(self) -> tuple[Executor, Callable[[], None], int]:
        """An executor, its closer, and how many runs to keep in flight."""
        if self.kind == "custom":
            return self.given, (lambda: None), self.total
        if self.kind == "dask":
            executor, close = _make_dask_executor(self.scheduler)
            return executor, close, self.total  # the scheduler queues and balances them
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        if self.stop_event is None:
            self.stop_event = context.Event()
        pool = ProcessPoolExecutor(
            max_workers=self.workers, mp_context=context, initializer=_init_worker,
            initargs=(self.blas_threads, self.stop_event, os.getpid()),
        )
        # Exactly one run per worker in flight: nothing waits in the pool's queue,
        # so stopping never has to cancel a run that a worker already took.
        return pool, (lambda: pool.shutdown(wait=True, cancel_futures=True)), self.workers

    def run(self) -> bool:
        """Run the queue to the end; True if interrupted."""
        where = {"process": f"{self.workers} local worker process(es), {self.blas_threads} BLAS thread(s) each",
                 "dask": f"Dask scheduler {self.scheduler}", "custom": "the given executor"}[self.kind]
        self.say(f"running {self.total} run(s) on {where}")
        context = _blas_environment(self.blas_threads) if self.kind == "process" else contextlib.nullcontext()
        with context:
            while self.queue:
                executor, close, window = self._open()
                try:
                    broken = self._drain(executor, window)
                except KeyboardInterrupt:
                    self._stop(executor, close)
                    return True
                close()
                if not broken:
                    break
        return False

    def _submit(self, executor: Executor, inflight: dict[Future, tuple[RunSpec, int]]) -> None:
        spec, attempts = self.queue.popleft()
        inflight[executor.submit(run_task, spec, self.on_step)] = (spec, attempts)
        self.records[spec.key] = {"key": spec.key, "status": "submitted"}

    def _drain(self, executor: Executor, window: int) -> bool:
        """Submit and collect until the queue is empty; True if the local pool broke."""
        self.inflight: dict[Future, tuple[RunSpec, int]] = {}
        broken = False
        while self.queue or self.inflight:
            while self.queue and not broken and len(self.inflight) < window:
                self._submit(executor, self.inflight)
            self.write_status()
            if not self.inflight:
                break
            done, _ = wait(self.inflight, return_when=FIRST_COMPLETED)
            for future in done:
                spec, attempts = self.inflight.pop(future)
                try:
                    record = future.result()
                except BrokenProcessPool:
                    broken = True
                    if attempts + 1 < _MAX_POOL_ATTEMPTS:
                        self.queue.appendleft((spec, attempts + 1))
                        self.records[spec.key] = {"key": spec.key, "status": "pending"}
                        continue
                    record = self._failure(spec, "worker process died (killed, or out of memory?) "
                                                 f"in {_MAX_POOL_ATTEMPTS} attempts")
                except Exception as err:  # the executor lost the task (a Dask worker died, ...)
                    record = self._failure(spec, f"{type(err).__name__}: {err}")
                self._record(record)
        return broken

    def _failure(self, spec: RunSpec, message: str) -> dict[str, Any]:
        with contextlib.suppress(OSError):
            Path(spec.run_dir).mkdir(parents=True, exist_ok=True)
            write_text(Path(spec.run_dir) / FAILED, message + "\n")
        return {"key": spec.key, "status": "failed", "action": None, "error": message}

    def _record(self, record: dict[str, Any]) -> None:
        if record["status"] == "cancelled":  # the sweep was stopping: never started
            self.records[record["key"]] = {"key": record["key"], "status": "pending"}
            return
        self.records[record["key"]] = record
        if record["status"] in ("done", "failed", "skipped"):
            self.finished += 1
        status = record["status"]
        line = f"[{self.finished:>{len(str(self.total))}}/{self.total}] {status.upper() if status == 'failed' else status:<11} {record['key']}"
        if status == "done":
            line += f"  test acc {record['test_accuracy']:.4f}  ({record['action']}, {record['wall_s']:.1f} s)"
        elif status == "failed":
            line += f"  {record['error']}"
        self.say(line)
        self.write_status()
        if self.on_result is not None:
            self.on_result(record)

    def _stop(self, executor: Executor, close: Callable[[], None]) -> None:
        """After Ctrl-C: running runs save their checkpoints and stop; nothing new starts."""
        self.say("interrupt: stopping the running runs at their next step (their checkpoints are kept); "
                 "Ctrl-C again to leave at once")
        if self.stop_event is not None:
            self.stop_event.set()
        for future in list(self.inflight):
            future.cancel()
        try:
            if self.kind == "process":
                for future in list(self.inflight):
                    spec, _ = self.inflight.pop(future)
                    try:
                        self._record(future.result())
                    except Exception as err:
                        self.records[spec.key] = {"key": spec.key, "status": "interrupted", "error": repr(err)}
                close()
            else:
                for future, (spec, _) in self.inflight.items():
                    if not future.done():
                        self.records[spec.key] = {"key": spec.key, "status": "interrupted"}
                if self.kind == "dask":
                    self.say("note: runs already started on Dask workers finish there")
                    close()
        except KeyboardInterrupt:
            if self.kind == "process":
                executor.shutdown(wait=False, cancel_futures=True)
        for spec, _ in self.queue:
            self.records[spec.key] = {"key": spec.key, "status": "pending"}
        self.queue.clear()
        for key, record in self.records.items():
            if record["status"] == "submitted":
                self.records[key] = {"key": key, "status": "interrupted"}
