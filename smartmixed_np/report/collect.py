"""Reading a sweep folder into one table of runs: ``summary.csv`` and its rows.

A *run folder* is any folder under the sweep folder that holds ``config.json``,
``metrics.json`` or ``FAILED`` (names from :mod:`smartmixed_np.experiments.runfolder` and
:mod:`smartmixed_np.experiments.sweep`); folders
named ``arch{A}/{model}/seed{S}`` (as :mod:`smartmixed_np.experiments.sweep` lays them out) take
their architecture, model and seed from the path, others from ``config.json``.

:func:`summarize_run` turns one folder into a row of :data:`SUMMARY_COLUMNS`, with
a status: ``done`` or ``stopped_early`` (``metrics.json`` is there; the run has a
kept model and a test accuracy, see :data:`SCORED`), ``failed`` (``FAILED``, its
first line is the error), ``incomplete`` (a checkpoint, no metrics) or
``not_started`` (planned in ``sweep.json`` but no folder yet, or an empty one).

:func:`summary_csv` writes the rows with every float in full precision (``repr``), so
that the statistics can be recomputed from ``summary.csv`` alone; :func:`read_summary`
reads it back with typed values. The helpers shared by the other report modules
(the sort orders, :func:`scored`, :func:`read_json`) live here too.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..core.activations import DEFAULT_POOL
from ..errors import UserError
from ..experiments import runfolder
from ..experiments.runfolder import CHECKPOINT, CONFIG, METRICS
from ..experiments.sweep import FAILED, RUN_ATTEMPTS, SWEEP_JSON

__all__ = [
    "SUMMARY_COLUMNS", "SCORED", "ReportError", "collect_runs", "summarize_run", "summary_csv", "read_summary",
    "data_description",
]

SUMMARY_COLUMNS = (
    "arch", "hidden", "model", "seed", "status", "best_epoch_phase1", "best_epoch_phase2", "epochs_run",
    "val_accuracy", "val_loss", "test_accuracy", "test_loss", "phase1_val_accuracy", "phase1_test_accuracy",
    "phase1_test_loss", "train_time_s", "wall_time_s", "error", "run_dir",
)
_INT_COLUMNS = ("seed", "best_epoch_phase1", "best_epoch_phase2", "epochs_run")
_FLOAT_COLUMNS = (
    "val_accuracy", "val_loss", "test_accuracy", "test_loss", "phase1_val_accuracy", "phase1_test_accuracy",
    "phase1_test_loss", "train_time_s", "wall_time_s",
)
SCORED = ("done", "stopped_early")  # statuses whose runs have a kept model and a test accuracy
_RUN_PATH = re.compile(r"^arch([^/]+)/([^/]+)/seed(\d+)$")
SMARTMIXED = "smartmixed"


class ReportError(UserError, ValueError):
    """The folder holds nothing to report on, a file of it cannot be read, or SciPy is missing."""


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file of a run or sweep folder, read by :func:`smartmixed_np.experiments.runfolder.read_json`; ``{}`` if absent.

    Raises:
        ReportError: the file exists but is unreadable, not strict JSON or not an object (one line naming it).
    """
    try:
        return runfolder.read_json(path.parent, path.name, required=False)
    except runfolder.RunFolderError as err:
        raise ReportError(str(err)) from None


def arch_sort_key(label: str) -> tuple:
    """Numbered architectures first, in numeric order ("2" before "10"), then named ones."""
    return (0, int(label), "") if str(label).isdigit() else (1, 0, str(label))


def model_sort_key(model: str) -> tuple:
    """The default pool's order, then SmartMixed, then other models by name."""
    order = list(DEFAULT_POOL) + [SMARTMIXED]
    return (order.index(model), "") if model in order else (len(order), model)


def scored(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows with a :data:`SCORED` status and a finite test accuracy."""
    return [r for r in rows if r["status"] in SCORED and r.get("test_accuracy") is not None and math.isfinite(r["test_accuracy"])]


def _arch_label(hidden: Sequence[int]) -> str:
    from ..experiments.archs import ARCHITECTURES

    for arch_id, widths in ARCHITECTURES.items():
        if list(widths) == list(hidden):
            return str(arch_id)
    return "-".join(str(h) for h in hidden)


def _run_folders(root: Path) -> list[Path]:
    """Folders under ``root`` that are runs: they hold config.json, metrics.json or FAILED."""
    found = set()
    for name in (CONFIG, METRICS, FAILED):
        for path in root.rglob(name):
            relative = path.parent.relative_to(root)
            if not any(part.startswith(".") for part in relative.parts) and path.parent != root:
                found.add(path.parent)
    return sorted(found)


def _first_line(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8").strip().splitlines()
    except OSError:
        return ""
    return lines[0] if lines else ""


def summarize_run(run_dir: Path, root: Path, architectures: Mapping[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """One ``summary.csv`` row for a run folder (typed values; None for missing ones)."""
    config = read_json(run_dir / CONFIG)
    metrics = read_json(run_dir / METRICS)
    relative = run_dir.relative_to(root).as_posix()
    match = _RUN_PATH.match(relative)
    architectures = architectures or {}
    if match:
        arch, model, seed = match.group(1), match.group(2), int(match.group(3))
        hidden = config.get("hidden") or architectures.get(arch) or []
    else:
        hidden = config.get("hidden") or []
        arch, model, seed = _arch_label(hidden), config.get("model", "?"), config.get("seed")
    row: dict[str, Any] = {column: None for column in SUMMARY_COLUMNS}
    row.update(arch=str(arch), hidden="-".join(str(h) for h in hidden), model=str(model).lower(), seed=seed, run_dir=relative)
    if metrics:
        row["status"] = "stopped_early" if metrics.get("stopped_early") else "done"
        best = metrics.get("best_epoch") or {}
        phase1 = metrics.get("phase1") or {}
        row.update(
            best_epoch_phase1=best.get("phase1"), best_epoch_phase2=best.get("phase2"), epochs_run=metrics.get("epochs_run"),
            val_accuracy=metrics["val"]["accuracy"], val_loss=metrics["val"]["loss"],
            test_accuracy=metrics["test"]["accuracy"], test_loss=metrics["test"]["loss"],
            phase1_val_accuracy=phase1.get("val_accuracy"), phase1_test_accuracy=phase1.get("test_accuracy"),
            phase1_test_loss=phase1.get("test_loss"), train_time_s=metrics.get("train_time_s"),
        )
        if metrics.get("stopped_early"):
            row["error"] = str(metrics["stopped_early"])
    elif (run_dir / FAILED).is_file():
        row.update(status="failed", error=_first_line(run_dir / FAILED))
    else:
        row["status"] = "incomplete" if (run_dir / CHECKPOINT).is_file() else "not_started"
    attempts_path = run_dir / RUN_ATTEMPTS  # the sweep's attempts, with wall times
    if attempts_path.is_file():
        try:
            attempts = json.loads(attempts_path.read_text(encoding="utf-8"))
            row["wall_time_s"] = round(sum(float(a.get("wall_s") or 0.0) for a in attempts), 3)
        except (OSError, ValueError, TypeError, AttributeError):
            pass
    return row


def collect_runs(sweep_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every run of a sweep folder as a summary row, sorted by architecture, model, seed.

    Runs planned in ``sweep.json`` that have no folder yet are listed as ``not_started``.

    Raises:
        ReportError: the folder does not exist or holds no run.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise ReportError(f"{root}: no such folder")
    plan = read_json(root / SWEEP_JSON)
    architectures = {str(k): list(v) for k, v in (plan.get("architectures") or {}).items()}
    rows = [summarize_run(folder, root, architectures) for folder in _run_folders(root)]
    seen = {(r["arch"], r["model"], r["seed"]) for r in rows}
    for arch, widths in architectures.items():
        for model in plan.get("models") or []:
            for seed in plan.get("seeds") or []:
                if (arch, model, seed) not in seen:
                    row = {column: None for column in SUMMARY_COLUMNS}
                    row.update(arch=arch, hidden="-".join(map(str, widths)), model=model, seed=seed,
                               status="not_started", run_dir=f"arch{arch}/{model}/seed{seed}")
                    rows.append(row)
    if not rows:
        raise ReportError(f"{root}: no run folders found (a run folder holds config.json, metrics.json or FAILED)")
    rows.sort(key=lambda r: (arch_sort_key(r["arch"]), model_sort_key(r["model"]), r["seed"] if r["seed"] is not None else -1))
    return rows


def cell(value: Any) -> str:
    """A CSV cell: floats in full precision (``repr``), None as empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV text with a header line, cells by :func:`cell`, ``\\n`` line ends."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([cell(v) for v in row])
    return buffer.getvalue()


def summary_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """``summary.csv`` text: :data:`SUMMARY_COLUMNS`, floats in full precision, empty = missing."""
    return csv_text(SUMMARY_COLUMNS, ([row.get(column) for column in SUMMARY_COLUMNS] for row in rows))


def read_summary(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read ``summary.csv`` back with typed values (ints, floats, None for empty cells)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as file:
        for raw in csv.DictReader(file):
            row: dict[str, Any] = {}
            for key, value in raw.items():
                if value in ("", None):
                    row[key] = None
                elif key in _INT_COLUMNS:
                    row[key] = int(value)
                elif key in _FLOAT_COLUMNS:
                    row[key] = float(value)
                else:
                    row[key] = value
            rows.append(row)
    return rows


def _distinct(values: Iterable[Any]) -> str:
    unique = list(dict.fromkeys(v for v in values if v is not None))
    return ", ".join(str(v) for v in unique) if unique else "n/a"


def data_description(rows: Sequence[Mapping[str, Any]], root: Path) -> dict[str, Any]:
    """What data and schedule the runs used, from their config.json (distinct values)."""
    configs = [read_json(root / r["run_dir"] / CONFIG) for r in rows if r["status"] in SCORED]
    configs = [c for c in configs if c]
    smartmixed = [c for c in configs if str(c.get("model")).lower() == SMARTMIXED]
    data = [c.get("data") or {} for c in configs]
    return {
        "dataset": _distinct(c.get("dataset") for c in configs),
        "train_examples": _distinct(d.get("train") for d in data),
        "val_examples": _distinct(d.get("val") for d in data),
        "test_examples": _distinct(d.get("test") for d in data),
        "train_limit": _distinct(c.get("train_limit") if c.get("train_limit") is not None else "none" for c in configs),
        "epochs": _distinct(c.get("epochs") for c in configs),
        "transition_epoch": _distinct(c.get("transition_epoch") for c in smartmixed),
        "optimizer": _distinct(c.get("optimizer") for c in configs),
        "lr": _distinct(c.get("lr") for c in configs),
        "lr_schedule": _distinct(c.get("lr_schedule") for c in configs),
        "batch_size": _distinct(c.get("batch_size") for c in configs),
        "phase2_init": _distinct(c.get("phase2_init") for c in smartmixed),
        "tau": _distinct(c.get("tau") for c in smartmixed),
    }


def status_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many rows have each status, by status name."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return dict(sorted(counts.items()))
