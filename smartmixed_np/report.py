"""The report of a sweep: one table of runs, the comparisons drawn from it, and figures.

``write_report(sweep_dir)`` (and ``smartmixed report DIR``) reads every run folder
under ``sweep_dir`` and writes, into ``sweep_dir`` (or ``out``):

* ``summary.csv``: one row per run (:data:`SUMMARY_COLUMNS`): architecture, hidden
  widths, model, seed, status, best epoch per phase, validation and test accuracy
  and loss of the kept model, the phase-1 model's test accuracy (SmartMixed), time.
  Numbers are written with full precision (``repr``), so that everything below can be
  recomputed from this file alone (except the layer and weight sections, which read
  ``choices.csv`` and ``model.npz``/``model.json``).
* ``report.json``: every number of the report; ``report.md``: the same, readable,
  with Markdown tables and the figures under ``figures/``;
  ``layer_preferences.csv``, ``depth_preferences.csv``, ``weight_stats.csv``.

The statistics, over the runs whose status is ``done`` or ``stopped_early`` (a
run whose loss became non-finite keeps its best model and is counted; the report
says how many):

* accuracy: mean and sample standard deviation (ddof 1) of the test accuracy per
  (architecture, model) over seeds;
* ranks: per architecture the models are ranked by mean test accuracy, 1 for the
  highest; equal means share the better rank (competition ranking: 1, 1, 3). Per
  model: mean rank, number of first places, and the mean reciprocal rank (the mean
  of 1/rank over the architectures where the model ran), as in the published analysis;
* SmartMixed against the best fixed activation of each architecture (the fixed model
  with the highest mean test accuracy there), paired by seed: wins, ties (equal
  accuracy) and losses, the mean difference and its 95% t interval over seeds, and
  the two-sided paired t-test p-value. The best fixed model is picked with the same
  test accuracies, which favours it a little;
* phase 1 against phase 2: per SmartMixed run, the test accuracy of the best phase-1
  model against that of the kept (phase-2) model, summarised the same way;
* layer preferences: the share of each candidate among a hidden layer's neurons,
  averaged over seeds per architecture, and pooled by relative depth (first, middle,
  last hidden layer; a network with one hidden layer has only an "only" layer),
  averaged over all SmartMixed runs;
* weights between activation groups: for consecutive hidden layers l and l+1, the
  weights from the neurons of activation A in layer l into the neurons of activation
  B in layer l+1 (entries of ``layers.{l+1}.weight``, rows = neurons of layer l+1,
  columns = neurons of layer l, both in the saved model's current neuron order, which
  is the order of ``model.json``'s ``config.layers[i].choices``): count, mean,
  median and mean absolute value, per architecture and layer pair, and pooled over
  the layer pairs and seeds of each architecture.

The t quantile and distribution function are computed here (no SciPy): the Student
t distribution function is a regularized incomplete beta function, evaluated by its
continued fraction (modified Lentz method); the quantile is found by bisection.
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

import numpy as np

from .activations import DEFAULT_POOL
from .errors import UserError
from .fileio import atomic_writer, write_json, write_text

__all__ = [
    "SUMMARY_COLUMNS",
    "ReportError",
    "collect_runs",
    "read_summary",
    "accuracy_table",
    "rank_models",
    "compare_smartmixed",
    "compare_phases",
    "layer_preferences",
    "weight_statistics",
    "t_cdf",
    "t_quantile",
    "mean_interval",
    "write_report",
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
DEPTHS = ("first", "middle", "last", "only")
_RUN_PATH = re.compile(r"^arch([^/]+)/([^/]+)/seed(\d+)$")
_SMARTMIXED = "smartmixed"
_SMARTMIXED_COLOR = "#111111"
_ARCH_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
                "#bcbd22", "#7f7f7f", "#1b9e77", "#e6ab02", "#7570b3", "#e7298a", "#a6761d", "#66a61e", "#4d4d4d", "#aec7e8")
DPI = 130


class ReportError(UserError, ValueError):
    """The folder holds nothing to report on, or a file of it cannot be read."""


# =========================================================================== the t distribution
def _betainc_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of I_x(a, b), modified Lentz; converges for x < (a + 1) / (a + b + 2)."""
    tiny, eps = 1e-300, 1e-15
    # f = 1 / (1 + d1 / (1 + d2 / (1 + ...))), with
    # d_{2m+1} = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1)),  d_{2m} = m (b - m) x / ((a + 2m - 1)(a + 2m)).
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 10000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return f


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betainc_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betainc_fraction(b, a, 1.0 - x) / b  # I_x(a, b) = 1 - I_{1-x}(b, a)


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom.

    Uses P(|T| > t) = I_{df / (df + t^2)}(df / 2, 1 / 2).
    """
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`).

    ``t_quantile(0.975, 4)`` = 2.7764..., the factor of a 95% interval from 5 values.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low <= 1e-13 * max(1.0, high):
            break
    return 0.5 * (low + high)


def mean_interval(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean, sample std, ``level`` t interval of the mean and the two-sided p-value of mean = 0.

    Returns:
        ``{"n", "mean", "std", "low", "high", "p_value"}``; ``std``, ``low``, ``high``
        and ``p_value`` are None for fewer than two values (and ``p_value`` when all
        values are equal).
    """
    values = [float(v) for v in values]
    n = len(values)
    result: dict[str, Any] = {"n": n, "mean": None, "std": None, "low": None, "high": None, "p_value": None}
    if n == 0:
        return result
    mean = math.fsum(values) / n
    result["mean"] = mean
    if n < 2:
        return result
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * std / math.sqrt(n)
    result.update(std=std, low=mean - half, high=mean + half)
    if std > 0:
        statistic = mean / (std / math.sqrt(n))
        result["p_value"] = min(1.0, 2.0 * (1.0 - t_cdf(abs(statistic), n - 1)))
    return result


# =========================================================================== reading the runs
def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise ReportError(f"{path}: unreadable ({err})") from None
    return data if isinstance(data, dict) else {}


def _arch_sort_key(label: str) -> tuple:
    return (0, int(label), "") if str(label).isdigit() else (1, 0, str(label))


def _model_sort_key(model: str) -> tuple:
    order = list(DEFAULT_POOL) + [_SMARTMIXED]
    return (order.index(model), "") if model in order else (len(order), model)


def _arch_label(hidden: Sequence[int]) -> str:
    from .archs import ARCHITECTURES

    for arch_id, widths in ARCHITECTURES.items():
        if list(widths) == list(hidden):
            return str(arch_id)
    return "-".join(str(h) for h in hidden)


def _run_folders(root: Path) -> list[Path]:
    """Folders under ``root`` that are runs: they hold config.json, metrics.json or FAILED."""
    found = set()
    for name in ("config.json", "metrics.json", "FAILED"):
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
    from .train import CHECKPOINT

    config = _read_json(run_dir / "config.json")
    metrics = _read_json(run_dir / "metrics.json")
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
    elif (run_dir / "FAILED").is_file():
        row.update(status="failed", error=_first_line(run_dir / "FAILED"))
    else:
        row["status"] = "incomplete" if (run_dir / CHECKPOINT).is_file() else "not_started"
    attempts_path = run_dir / "sweep_run.json"
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
    plan = _read_json(root / "sweep.json")
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
    rows.sort(key=lambda r: (_arch_sort_key(r["arch"]), _model_sort_key(r["model"]), r["seed"] if r["seed"] is not None else -1))
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


def summary_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """``summary.csv`` text: :data:`SUMMARY_COLUMNS`, floats in full precision, empty = missing."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in SUMMARY_COLUMNS])
    return buffer.getvalue()


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


# =========================================================================== statistics from the summary
def _scored(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in rows if r["status"] in SCORED and r.get("test_accuracy") is not None and math.isfinite(r["test_accuracy"])]


def accuracy_table(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (architecture, model): seeds, n, mean and sample std of the test accuracy (and loss)."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in _scored(rows):
        groups.setdefault((row["arch"], row["model"]), []).append(row)
    table = []
    for (arch, model), members in sorted(groups.items(), key=lambda kv: (_arch_sort_key(kv[0][0]), _model_sort_key(kv[0][1]))):
        members = sorted(members, key=lambda r: r["seed"])
        accuracy = mean_interval([r["test_accuracy"] for r in members])
        losses = [r["test_loss"] for r in members if r.get("test_loss") is not None]
        table.append({
            "arch": arch, "hidden": members[0]["hidden"], "model": model, "seeds": [r["seed"] for r in members],
            "n": accuracy["n"], "mean": accuracy["mean"], "std": accuracy["std"],
            "mean_test_loss": math.fsum(losses) / len(losses) if losses else None,
        })
    return table


def rank_models(table: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Ranks per architecture by mean test accuracy (competition ranking), and per-model summaries.

    Returns:
        ``{"ranks": {arch: {model: rank}}, "models": {model: {"archs", "mean_rank",
        "first_places", "mrr"}}}``.
    """
    by_arch: dict[str, dict[str, float]] = {}
    for entry in table:
        by_arch.setdefault(entry["arch"], {})[entry["model"]] = entry["mean"]
    ranks: dict[str, dict[str, int]] = {}
    for arch in sorted(by_arch, key=_arch_sort_key):
        means = by_arch[arch]
        ranks[arch] = {model: 1 + sum(1 for other in means.values() if other > mean)
                       for model, mean in sorted(means.items(), key=lambda kv: _model_sort_key(kv[0]))}
    models: dict[str, dict[str, Any]] = {}
    for model in sorted({m for r in ranks.values() for m in r}, key=_model_sort_key):
        model_ranks = [r[model] for r in ranks.values() if model in r]
        models[model] = {
            "archs": len(model_ranks),
            "mean_rank": math.fsum(model_ranks) / len(model_ranks),
            "first_places": sum(1 for r in model_ranks if r == 1),
            "mrr": math.fsum(1.0 / r for r in model_ranks) / len(model_ranks),
        }
    return {"ranks": ranks, "models": models}


def _paired_summary(pairs: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """Differences b - a of paired values: wins (b > a), ties, losses, mean, 95% interval, p."""
    differences = [b - a for a, b in pairs]
    stats = mean_interval(differences)
    return {
        "pairs": len(pairs),
        "wins": sum(1 for d in differences if d > 0),
        "ties": sum(1 for d in differences if d == 0),
        "losses": sum(1 for d in differences if d < 0),
        "mean_difference": stats["mean"], "std_difference": stats["std"],
        "ci95_low": stats["low"], "ci95_high": stats["high"], "p_value": stats["p_value"],
    }


def compare_smartmixed(rows: Iterable[Mapping[str, Any]], table: Iterable[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """SmartMixed against the best fixed activation of each architecture, paired by seed.

    The best fixed model of an architecture is the non-SmartMixed model with the
    highest mean test accuracy there (the first in pool order on equal means).
    Differences are SmartMixed minus best fixed; a win is a seed where SmartMixed's
    test accuracy is higher.

    Returns:
        ``{"per_arch": [{"arch", "best_fixed", "best_fixed_mean", "smartmixed_mean",
        "seeds", "pairs", "wins", "ties", "losses", "mean_difference", "ci95_low",
        "ci95_high", "p_value", ...}], "pooled": {...over every pair...},
        "archs_won_on_mean": int, "archs": int}``.
    """
    rows = _scored(rows)
    table = list(table) if table is not None else accuracy_table(rows)
    by_key = {(r["arch"], r["model"], r["seed"]): r["test_accuracy"] for r in rows}
    per_arch, all_pairs = [], []
    for arch in sorted({e["arch"] for e in table}, key=_arch_sort_key):
        entries = {e["model"]: e for e in table if e["arch"] == arch}
        fixed = [e for m, e in entries.items() if m != _SMARTMIXED]
        if _SMARTMIXED not in entries or not fixed:
            continue
        best_mean = max(e["mean"] for e in fixed)
        best = next(e for e in sorted(fixed, key=lambda e: _model_sort_key(e["model"])) if e["mean"] == best_mean)
        seeds = sorted(s for (a, m, s) in by_key if a == arch and m == _SMARTMIXED and (arch, best["model"], s) in by_key)
        pairs = [(by_key[(arch, best["model"], s)], by_key[(arch, _SMARTMIXED, s)]) for s in seeds]
        all_pairs += pairs
        per_arch.append({
            "arch": arch, "hidden": best["hidden"], "best_fixed": best["model"], "best_fixed_mean": best["mean"],
            "smartmixed_mean": entries[_SMARTMIXED]["mean"], "seeds": seeds,
            "differences": [b - a for a, b in pairs], **_paired_summary(pairs),
        })
    return {
        "per_arch": per_arch,
        "pooled": _paired_summary(all_pairs),
        "archs": len(per_arch),
        "archs_won_on_mean": sum(1 for e in per_arch if e["smartmixed_mean"] > e["best_fixed_mean"]),
    }


def compare_phases(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Phase 2 (the kept model) against phase 1 (the best phase-1 model), per SmartMixed run.

    Returns:
        ``{"per_arch": [{"arch", "runs", "phase1_mean", "phase2_mean", "wins" (phase 2
        higher), "ties", "losses", "mean_difference", "ci95_low", "ci95_high",
        "p_value"}], "pooled": {...}}``.
    """
    runs = [r for r in _scored(rows) if r["model"] == _SMARTMIXED and r.get("phase1_test_accuracy") is not None]
    per_arch, all_pairs = [], []
    for arch in sorted({r["arch"] for r in runs}, key=_arch_sort_key):
        members = sorted((r for r in runs if r["arch"] == arch), key=lambda r: r["seed"])
        pairs = [(r["phase1_test_accuracy"], r["test_accuracy"]) for r in members]
        all_pairs += pairs
        per_arch.append({
            "arch": arch, "hidden": members[0]["hidden"], "seeds": [r["seed"] for r in members],
            "phase1_mean": math.fsum(a for a, _ in pairs) / len(pairs), "phase2_mean": math.fsum(b for _, b in pairs) / len(pairs),
            **_paired_summary(pairs),
        })
    pooled = _paired_summary(all_pairs)
    if all_pairs:
        pooled.update(phase1_mean=math.fsum(a for a, _ in all_pairs) / len(all_pairs),
                      phase2_mean=math.fsum(b for _, b in all_pairs) / len(all_pairs))
    return {"per_arch": per_arch, "pooled": pooled}


# =========================================================================== statistics from the run files
def _choices_by_layer(run_dir: Path) -> list[list[str]]:
    """Per hidden layer, each neuron's activation name (original order) from choices.csv."""
    layers: dict[int, list[tuple[int, str]]] = {}
    with open(run_dir / "choices.csv", newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            layers.setdefault(int(row["layer"]), []).append((int(row["neuron"]), row["activation"]))
    return [[name for _, name in sorted(neurons)] for _, neurons in sorted(layers.items())]


def _depth_groups(num_layers: int) -> list[str]:
    if num_layers == 1:
        return ["only"]
    return ["first"] + ["middle"] * (num_layers - 2) + ["last"]


def _shares(names: Sequence[str], pool: Sequence[str]) -> dict[str, float]:
    return {activation: sum(1 for n in names if n == activation) / len(names) for activation in pool}


def _pool_of(runs: Iterable[Mapping[str, Any]], root: Path) -> list[str]:
    pool = list(DEFAULT_POOL)
    for row in runs:
        config = _read_json(root / row["run_dir"] / "model.json").get("config") or {}
        for name in config.get("pool") or []:
            if name not in pool:
                pool.append(name)
    return pool


def layer_preferences(rows: Iterable[Mapping[str, Any]], root: str | os.PathLike) -> dict[str, Any]:
    """Share of each candidate per hidden layer (mean over seeds) and by relative depth.

    Returns:
        ``{"pool": [...], "per_layer": [{"arch", "hidden", "layer" (1-based), "width",
        "runs", "shares": {name: mean share}}], "by_depth": [{"depth", "runs",
        "layers", "shares"}]}``. A depth group's share in one run pools the neurons
        of its layers; the groups' shares are then averaged over all runs.
    """
    root = Path(root)
    runs = [r for r in _scored(rows) if r["model"] == _SMARTMIXED and (root / r["run_dir"] / "choices.csv").is_file()]
    pool = _pool_of(runs, root)
    per_layer: dict[tuple[str, int], list[dict[str, float]]] = {}
    widths: dict[tuple[str, int], int] = {}
    hidden: dict[str, str] = {}
    by_depth: dict[str, list[dict[str, float]]] = {d: [] for d in DEPTHS}
    depth_layers: dict[str, int] = {d: 0 for d in DEPTHS}
    for row in runs:
        layers = _choices_by_layer(root / row["run_dir"])
        hidden[row["arch"]] = row["hidden"]
        for index, names in enumerate(layers):
            per_layer.setdefault((row["arch"], index), []).append(_shares(names, pool))
            widths[(row["arch"], index)] = len(names)
        groups = _depth_groups(len(layers))
        for depth in DEPTHS:
            members = [name for names, group in zip(layers, groups) if group == depth for name in names]
            if members:
                by_depth[depth].append(_shares(members, pool))
                depth_layers[depth] += sum(1 for group in groups if group == depth)

    def mean_shares(shares: list[dict[str, float]]) -> dict[str, float]:
        return {name: math.fsum(s[name] for s in shares) / len(shares) for name in pool}

    return {
        "pool": pool,
        "runs": len(runs),
        "per_layer": [
            {"arch": arch, "hidden": hidden[arch], "layer": index + 1, "width": widths[(arch, index)],
             "runs": len(shares), "shares": mean_shares(shares)}
            for (arch, index), shares in sorted(per_layer.items(), key=lambda kv: (_arch_sort_key(kv[0][0]), kv[0][1]))
        ],
        "by_depth": [
            {"depth": depth, "runs": len(by_depth[depth]), "layers": depth_layers[depth], "shares": mean_shares(by_depth[depth])}
            for depth in DEPTHS if by_depth[depth]
        ],
    }


def _layer_activations(run_dir: Path) -> tuple[list[list[str]], dict[str, np.ndarray]]:
    """Per hidden layer, each neuron's activation in the saved model's current order; and its arrays."""
    from .checkpoint import load_arrays

    description = _read_json(run_dir / "model.json")
    config = description.get("config") or {}
    arrays, _ = load_arrays(run_dir / "model.npz")
    if config.get("kind") == "fixed":
        # Phase 2: neurons were regrouped; ``choices`` index the pool in the current order,
        # which is the order of the weight rows and columns.
        names = [[layer["pool"][k] for k in layer["choices"]] for layer in config["layers"]]
    else:
        # A phase-1 model keeps the original order, which is what ``choices`` lists.
        names = [list(layer) for layer in description.get("choices") or []]
    return names, arrays


def weight_statistics(rows: Iterable[Mapping[str, Any]], root: str | os.PathLike) -> dict[str, Any]:
    """Weights from activation group A of hidden layer l into group B of layer l + 1.

    Returns:
        ``{"pool", "per_layer_pair": [{"arch", "from_layer", "to_layer" (1-based),
        "from_activation", "to_activation", "runs", "count", "mean", "median",
        "mean_abs"}], "per_arch": [{"arch", "hidden", "runs", "layer_pairs",
        "cells": [{"from_activation", "to_activation", "count", "mean", "median",
        "mean_abs"}]}]}``; ``per_arch`` pools every layer pair and seed.
    """
    root = Path(root)
    runs = [r for r in _scored(rows) if r["model"] == _SMARTMIXED and (root / r["run_dir"] / "model.npz").is_file()]
    pool = _pool_of(runs, root)
    per_pair: dict[tuple[str, int, str, str], list[np.ndarray]] = {}
    pooled: dict[tuple[str, str, str], list[np.ndarray]] = {}
    run_counts: dict[tuple[str, int, str, str], int] = {}
    arch_runs: dict[str, int] = {}
    arch_pairs: dict[str, int] = {}
    hidden: dict[str, str] = {}
    for row in runs:
        names, arrays = _layer_activations(root / row["run_dir"])
        arch = row["arch"]
        hidden[arch] = row["hidden"]
        arch_runs[arch] = arch_runs.get(arch, 0) + 1
        arch_pairs[arch] = max(0, len(names) - 1)
        for layer in range(len(names) - 1):
            weight = np.asarray(arrays[f"layers.{layer + 1}.weight"], dtype=np.float64)  # (width_{l+1}, width_l)
            sources, targets = np.asarray(names[layer]), np.asarray(names[layer + 1])
            if weight.shape != (len(targets), len(sources)):
                raise ReportError(f"{row['run_dir']}: layers.{layer + 1}.weight has shape {weight.shape}, "
                                  f"expected {(len(targets), len(sources))} from model.json")
            for a in pool:
                columns = sources == a
                if not columns.any():
                    continue
                for b in pool:
                    rows_b = targets == b
                    if not rows_b.any():
                        continue
                    block = weight[np.ix_(rows_b, columns)].ravel()
                    per_pair.setdefault((arch, layer, a, b), []).append(block)
                    run_counts[(arch, layer, a, b)] = run_counts.get((arch, layer, a, b), 0) + 1
                    pooled.setdefault((arch, a, b), []).append(block)

    def describe(blocks: list[np.ndarray]) -> dict[str, Any]:
        values = np.concatenate(blocks)
        return {"count": int(values.size), "mean": float(values.mean()), "median": float(np.median(values)),
                "mean_abs": float(np.abs(values).mean())}

    order = {name: k for k, name in enumerate(pool)}
    per_layer_pair = [
        {"arch": arch, "from_layer": layer + 1, "to_layer": layer + 2, "from_activation": a, "to_activation": b,
         "runs": run_counts[(arch, layer, a, b)], **describe(blocks)}
        for (arch, layer, a, b), blocks in sorted(per_pair.items(), key=lambda kv: (_arch_sort_key(kv[0][0]), kv[0][1], order[kv[0][2]], order[kv[0][3]]))
    ]
    per_arch = []
    for arch in sorted(arch_runs, key=_arch_sort_key):
        cells = [{"from_activation": a, "to_activation": b, **describe(blocks)}
                 for (label, a, b), blocks in sorted(pooled.items(), key=lambda kv: (order[kv[0][1]], order[kv[0][2]])) if label == arch]
        per_arch.append({"arch": arch, "hidden": hidden[arch], "runs": arch_runs[arch], "layer_pairs": arch_pairs[arch], "cells": cells})
    return {"pool": pool, "per_layer_pair": per_layer_pair, "per_arch": per_arch}


# =========================================================================== figures
def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path, "wb") as file:
        figure.savefig(file, format="png", dpi=DPI, facecolor="white", bbox_inches="tight", pad_inches=0.15)
    return path


def _model_colors(models: Sequence[str]) -> dict[str, str]:
    from .plots import activation_colors

    colors = activation_colors([m for m in models if m != _SMARTMIXED])
    colors[_SMARTMIXED] = _SMARTMIXED_COLOR
    return colors


def _arch_title(arch: str, hidden: str) -> str:
    return f"arch {arch}\n({hidden})" if hidden else f"arch {arch}"


def _percent_axis(axis: Any) -> None:
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{round(100 * value, 6):g}%"))


def plot_accuracy(rows: Sequence[Mapping[str, Any]], table: Sequence[Mapping[str, Any]], path: Path, per_row: int = 6) -> Path:
    """Test accuracy per architecture and model: each seed a small dot, the mean with ±1 std.

    Architectures are drawn in rows of at most ``per_row``, each row with its own
    accuracy scale.
    """
    archs = sorted({e["arch"] for e in table}, key=_arch_sort_key)
    models = sorted({e["model"] for e in table}, key=_model_sort_key)
    colors = _model_colors(models)
    hidden = {e["arch"]: e["hidden"] for e in table}
    entries = {(e["arch"], e["model"]): e for e in table}
    scored = _scored(rows)
    lines = [archs[k : k + per_row] for k in range(0, len(archs), per_row)]
    columns = max(len(line) for line in lines)
    figure = _new_figure(max(6.5, 1.2 + columns * (0.42 * len(models) + 0.5)), 0.9 + 3.6 * len(lines))
    axes = np.atleast_1d(figure.subplots(len(lines), 1, squeeze=False)).ravel()
    width = 0.8 / len(models)
    labelled: set[str] = set()
    for ax, line in zip(axes, lines):
        for i, arch in enumerate(line):
            for j, model in enumerate(models):
                entry = entries.get((arch, model))
                if entry is None:
                    continue
                x = i + (j - (len(models) - 1) / 2) * width
                seeds = [r["test_accuracy"] for r in scored if r["arch"] == arch and r["model"] == model]
                ax.scatter([x] * len(seeds), seeds, s=10, color=colors[model], alpha=0.45, linewidths=0, zorder=2)
                ax.errorbar(x, entry["mean"], yerr=entry["std"] or 0.0, fmt="D" if model == _SMARTMIXED else "o",
                            color=colors[model], markersize=6, capsize=3, linewidth=1.4, zorder=3,
                            label=None if model in labelled else model)
                labelled.add(model)
        ax.set_xticks(range(len(line)), [_arch_title(a, hidden[a]) for a in line], fontsize=9)
        ax.set_xlim(-0.5, columns - 0.5)
        for i in range(len(line) - 1):
            ax.axvline(i + 0.5, color="0.85", linewidth=0.8, zorder=0)
        _percent_axis(ax.yaxis)
        ax.set_ylabel("test accuracy")
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.spines[["top", "right"]].set_visible(False)
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.append(handle)
            labels.append(label)
    order = sorted(range(len(labels)), key=lambda k: _model_sort_key(labels[k]))
    figure.legend([handles[k] for k in order], [labels[k] for k in order], loc="outside lower center",
                  ncol=min(len(models), 7), frameon=False)
    figure.suptitle("Test accuracy per architecture (dots: seeds; marker and bar: mean ± 1 std)", fontsize=12)
    return _save(figure, path)


def plot_smartmixed_vs_best(comparison: Mapping[str, Any], path: Path) -> Path:
    """SmartMixed minus best fixed activation, per architecture: seeds, mean and 95% interval."""
    from matplotlib.ticker import FuncFormatter

    entries = comparison["per_arch"]
    figure = _new_figure(max(5.5, 1.5 + 1.0 * len(entries)), 4.4)
    ax = figure.subplots()
    for i, entry in enumerate(entries):
        differences = entry["differences"]
        ax.scatter([i] * len(differences), differences, s=14, color="0.55", zorder=2,
                   label="one seed" if i == 0 else None)
        if entry["mean_difference"] is not None:
            low, high = entry["ci95_low"], entry["ci95_high"]
            error = None if low is None else [[entry["mean_difference"] - low], [high - entry["mean_difference"]]]
            ax.errorbar(i, entry["mean_difference"], yerr=error, fmt="D", color=_SMARTMIXED_COLOR, capsize=4,
                        markersize=6, zorder=3, label="mean, 95% t interval" if i == 0 else None)
    ax.axhline(0.0, color="#d62728", linewidth=1.0, linestyle="--", zorder=1)
    ax.set_xticks(range(len(entries)), [f"arch {e['arch']}\nvs {e['best_fixed']}" for e in entries])
    ax.set_xlim(-0.6, len(entries) - 0.4)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{round(100 * value, 6):+g} pp"))
    ax.set_ylabel("test accuracy difference\n(SmartMixed − best fixed)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="best", fontsize=9, framealpha=0.9)
    figure.suptitle("SmartMixed against the best fixed activation of each architecture (paired by seed)", fontsize=11.5)
    return _save(figure, path)


def plot_phases(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Phase-1 model's test accuracy (x) against the kept phase-2 model's (y), one point per run."""
    runs = [r for r in _scored(rows) if r["model"] == _SMARTMIXED and r.get("phase1_test_accuracy") is not None]
    archs = sorted({r["arch"] for r in runs}, key=_arch_sort_key)
    palette = _ARCH_COLORS
    figure = _new_figure(5.6, 5.2)
    ax = figure.subplots()
    values = [r["phase1_test_accuracy"] for r in runs] + [r["test_accuracy"] for r in runs]
    low, high = min(values), max(values)
    margin = max(0.005, 0.08 * (high - low))
    ax.plot([low - margin, high + margin], [low - margin, high + margin], color="0.5", linestyle="--", linewidth=1,
            label="equal (above: phase 2 better)")
    for k, arch in enumerate(archs):
        members = [r for r in runs if r["arch"] == arch]
        ax.scatter([r["phase1_test_accuracy"] for r in members], [r["test_accuracy"] for r in members], s=30,
                   color=palette[k % len(palette)], label=f"arch {arch} ({members[0]['hidden']})", zorder=3)
    ax.set_xlim(low - margin, high + margin)
    ax.set_ylim(low - margin, high + margin)
    ax.set_aspect("equal")
    _percent_axis(ax.xaxis)
    _percent_axis(ax.yaxis)
    ax.set_xlabel("test accuracy, best phase-1 model")
    ax.set_ylabel("test accuracy, kept phase-2 model")
    ax.grid(True, alpha=0.3)
    figure.legend(loc="outside lower center", ncol=2 if len(archs) > 1 else 1, fontsize=8.5, frameon=False)
    figure.suptitle("SmartMixed: phase 1 against phase 2 (one point per run)", fontsize=12)
    return _save(figure, path)


def _ink_on(color: Any) -> str:
    """Black or white text, whichever reads better on ``color`` (by luminance)."""
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(color)
    return "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.55 else "black"


def _stacked_bars(ax: Any, labels: Sequence[str], shares: Sequence[Mapping[str, float]], pool: Sequence[str],
                  colors: Mapping[str, str], rows: int | None = None) -> None:
    """Horizontal 100% bars, one per label (top to bottom); ``rows`` fixes the axis to that many bars."""
    left = np.zeros(len(labels))
    for name in pool:
        values = np.array([s.get(name, 0.0) for s in shares])
        if not values.any():
            continue
        ax.barh(range(len(labels)), values, left=left, height=0.72, color=colors[name], edgecolor="white", linewidth=0.8)
        for row, (start, value) in enumerate(zip(left, values)):
            if value >= 0.07:
                ax.text(start + value / 2, row, f"{100 * value:.0f}%", ha="center", va="center", fontsize=8,
                        color=_ink_on(colors[name]))
        left += values
    ax.set_yticks(range(len(labels)), labels, fontsize=9)
    ax.set_ylim(max(rows or 0, len(labels)) - 0.5, -0.5)
    ax.set_xlim(0, 1)
    _percent_axis(ax.xaxis)
    ax.spines[["top", "right"]].set_visible(False)


def plot_layer_preferences(preferences: Mapping[str, Any], path: Path) -> Path:
    """One panel per architecture: the mean share of each candidate in each hidden layer."""
    from matplotlib.patches import Patch

    from .plots import activation_colors

    pool = preferences["pool"]
    colors = activation_colors(pool)
    archs = sorted({e["arch"] for e in preferences["per_layer"]}, key=_arch_sort_key)
    depth = {a: sum(1 for e in preferences["per_layer"] if e["arch"] == a) for a in archs}
    columns = min(3, len(archs))
    lines = [archs[k : k + columns] for k in range(0, len(archs), columns)]
    heights = [max(depth[a] for a in line) for line in lines]  # every bar equally thick
    figure = _new_figure(4.6 * columns, sum(1.0 + 0.42 * h for h in heights) + 0.9)
    axes = figure.subplots(len(lines), columns, squeeze=False, gridspec_kw={"height_ratios": [1.0 + 0.42 * h for h in heights]})
    for row, (line, height) in enumerate(zip(lines, heights)):
        for column in range(columns):
            ax = axes[row][column]
            if column >= len(line):
                ax.set_visible(False)
                continue
            entries = [e for e in preferences["per_layer"] if e["arch"] == line[column]]
            _stacked_bars(ax, [f"layer {e['layer']} ({e['width']})" for e in entries], [e["shares"] for e in entries],
                          pool, colors, rows=height)
            ax.set_title(f"arch {line[column]}, {entries[0]['runs']} run(s)\n{entries[0]['hidden']}", fontsize=9.5)
    figure.legend(handles=[Patch(color=colors[n], label=n) for n in pool], loc="outside lower center",
                  ncol=len(pool), frameon=False, title="activation (share of the layer's neurons, mean over seeds)")
    figure.suptitle("Activations chosen by SmartMixed, per hidden layer", fontsize=12)
    return _save(figure, path)


def plot_depth_preferences(preferences: Mapping[str, Any], path: Path) -> Path:
    """Mean share of each candidate in the first, middle and last hidden layers (all runs pooled)."""
    from matplotlib.patches import Patch

    from .plots import activation_colors

    pool = preferences["pool"]
    colors = activation_colors(pool)
    entries = preferences["by_depth"]
    figure = _new_figure(8.5, 1.7 + 0.55 * len(entries))
    ax = figure.subplots()
    labels = [f"{e['depth']} ({e['layers']} layer(s) in {e['runs']} run(s))" for e in entries]
    _stacked_bars(ax, labels, [e["shares"] for e in entries], pool, colors)
    ax.set_xlabel("share of the neurons (mean over runs)")
    figure.legend(handles=[Patch(color=colors[n], label=n) for n in pool], loc="outside lower center",
                  ncol=len(pool), frameon=False)
    figure.suptitle("Activations chosen by relative depth of the hidden layer", fontsize=12)
    return _save(figure, path)


def plot_weight_heatmaps(entry: Mapping[str, Any], pool: Sequence[str], path: Path) -> Path:
    """Mean, median and mean |w| of the weights from group A (rows) into group B (columns)."""
    present_from = [a for a in pool if any(c["from_activation"] == a for c in entry["cells"])]
    present_to = [b for b in pool if any(c["to_activation"] == b for c in entry["cells"])]
    cells = {(c["from_activation"], c["to_activation"]): c for c in entry["cells"]}
    panels = (("mean", "mean weight", "RdBu_r"), ("median", "median weight", "RdBu_r"), ("mean_abs", "mean |weight|", "YlGn"))
    cell = 0.62
    figure = _new_figure(3 * (len(present_to) * cell + 1.9) + 0.6, len(present_from) * cell + 2.5)
    axes = figure.subplots(1, 3)
    for ax, (key, label, cmap) in zip(axes, panels):
        grid = np.full((len(present_from), len(present_to)), np.nan)
        for i, a in enumerate(present_from):
            for j, b in enumerate(present_to):
                if (a, b) in cells:
                    grid[i, j] = cells[(a, b)][key]
        finite = grid[np.isfinite(grid)]
        # Weights are small: show them in units of 10^k so that cells carry two or three digits.
        largest = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
        exponent = min(0, math.floor(math.log10(largest)))
        grid = grid / 10.0 ** exponent
        finite = finite / 10.0 ** exponent
        if exponent:
            label += f"  (×1e{exponent})"
        if key == "mean_abs":  # a sequential scale over the values present
            vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        else:  # diverging, centred on zero
            bound = float(np.abs(finite).max()) if finite.size else 1.0
            vmin, vmax = -bound, bound
        vmax = vmax if vmax > vmin else vmin + 1e-12
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax, aspect="equal")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7.5,
                            color=_ink_on(image.cmap(image.norm(grid[i, j]))))
        ax.set_xticks(range(len(present_to)), present_to, rotation=40, ha="right", fontsize=8.5)
        ax.set_yticks(range(len(present_from)), present_from, fontsize=8.5)
        ax.set_xlabel("to: activation in layer l+1")
        if ax is axes[0]:
            ax.set_ylabel("from: activation in layer l")
        ax.set_title(label, fontsize=10)
        figure.colorbar(image, ax=ax, shrink=0.75, aspect=25)
    figure.suptitle(
        f"Weights between activation groups of consecutive hidden layers: arch {entry['arch']} ({entry['hidden']}), "
        f"{entry['layer_pairs']} layer pair(s) × {entry['runs']} run(s)", fontsize=11)
    return _save(figure, path)


# =========================================================================== the report
def _count(number: Any, noun: str) -> str:
    """``1 run``, ``3 runs``; a number given as text (several values joined) takes the plural."""
    return f"{number} {noun}" if str(number) == "1" else f"{number} {noun}s"


def _pct(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.{digits}f}%"


def _interval(entry: dict) -> str:
    """An entry's 95% interval of a difference, in percentage points ("n/a" if undefined)."""
    if entry["ci95_low"] is None:
        return "n/a"
    return f"[{_pp(entry['ci95_low'])}, {_pp(entry['ci95_high'])}]"


def _pp(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:+.{digits}f} pp"


def _markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def clean(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(clean(h) for h in header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(clean(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _distinct(values: Iterable[Any]) -> str:
    unique = list(dict.fromkeys(v for v in values if v is not None))
    return ", ".join(str(v) for v in unique) if unique else "n/a"


def data_description(rows: Sequence[Mapping[str, Any]], root: Path) -> dict[str, Any]:
    """What data and schedule the runs used, from their config.json (distinct values)."""
    configs = [_read_json(root / r["run_dir"] / "config.json") for r in rows if r["status"] in SCORED]
    configs = [c for c in configs if c]
    smartmixed = [c for c in configs if str(c.get("model")).lower() == _SMARTMIXED]
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


def _counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return dict(sorted(counts.items()))


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return buffer.getvalue()


def write_report(sweep_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write summary.csv, report.json, report.md, the preference and weight tables and figures.

    Args:
        sweep_dir: a sweep folder (or any folder holding run folders).
        out: where to write (default: ``sweep_dir``); figures go to ``out/figures/``.

    Returns:
        ``{"summary_csv", "report_json", "report_md", ...}`` paths, and one entry per figure.

    Raises:
        ReportError: no such folder, or no run in it.
    """
    root = Path(sweep_dir)
    rows = collect_runs(root)
    target = Path(out) if out else root
    target.mkdir(parents=True, exist_ok=True)
    figures_dir = target / "figures"
    paths: dict[str, Path] = {"summary_csv": write_text(target / "summary.csv", summary_csv(rows))}
    # Every statistic below is computed from the summary as written, read back, so
    # that the report agrees with summary.csv to the last digit.
    summary = read_summary(paths["summary_csv"])
    table = accuracy_table(summary)
    ranking = rank_models(table)
    versus = compare_smartmixed(summary, table)
    phases = compare_phases(summary)
    preferences = layer_preferences(summary, root)
    weights = weight_statistics(summary, root)
    data = data_description(summary, root)
    figures: dict[str, str] = {}

    def figure(name: str, draw: Any, *args: Any) -> None:
        try:
            path = draw(*args, figures_dir / name)
        except Exception as err:  # the numbers are written regardless; say what is missing
            print(f"warning: figure {name} not drawn: {err}", flush=True)
            return
        figures[name] = path.relative_to(target).as_posix()

    if table:
        figure("accuracy.png", plot_accuracy, summary, table)
    if versus["per_arch"]:
        figure("smartmixed_vs_best_fixed.png", plot_smartmixed_vs_best, versus)
    if phases["per_arch"]:
        figure("phase1_vs_phase2.png", plot_phases, summary)
    if preferences["per_layer"]:
        figure("layer_preferences.png", plot_layer_preferences, preferences)
        figure("depth_preferences.png", plot_depth_preferences, preferences)
    for entry in weights["per_arch"]:
        if entry["cells"]:
            figure(f"weights_arch{entry['arch']}.png", plot_weight_heatmaps, entry, weights["pool"])

    pool = preferences["pool"]
    paths["layer_preferences_csv"] = write_text(target / "layer_preferences.csv", _csv_text(
        ["arch", "hidden", "layer", "width", "runs", *[f"share_{n}" for n in pool]],
        ([e["arch"], e["hidden"], e["layer"], e["width"], e["runs"], *[e["shares"][n] for n in pool]] for e in preferences["per_layer"])))
    paths["depth_preferences_csv"] = write_text(target / "depth_preferences.csv", _csv_text(
        ["depth", "runs", "layers", *[f"share_{n}" for n in pool]],
        ([e["depth"], e["runs"], e["layers"], *[e["shares"][n] for n in pool]] for e in preferences["by_depth"])))
    weight_rows = [[e["arch"], e["from_layer"], e["to_layer"], e["from_activation"], e["to_activation"], e["runs"],
                    e["count"], e["mean"], e["median"], e["mean_abs"]] for e in weights["per_layer_pair"]]
    weight_rows += [[e["arch"], "all", "all", c["from_activation"], c["to_activation"], e["runs"], c["count"], c["mean"],
                     c["median"], c["mean_abs"]] for e in weights["per_arch"] for c in e["cells"]]
    paths["weight_stats_csv"] = write_text(target / "weight_stats.csv", _csv_text(
        ["arch", "from_layer", "to_layer", "from_activation", "to_activation", "runs", "count", "mean", "median", "mean_abs"],
        weight_rows))

    report = {
        "format": "smartmixed_np.report/1",
        "sweep_dir": str(root.resolve()),
        "data": data,
        "runs": {"total": len(summary), "by_status": _counts(summary)},
        "accuracy": table,
        "ranks": ranking["ranks"],
        "models": ranking["models"],
        "smartmixed_vs_best_fixed": versus,
        "phase1_vs_phase2": phases,
        "layer_preferences": preferences,
        "weight_statistics": weights,
        "figures": figures,
    }
    paths["report_json"] = write_json(target / "report.json", report)
    paths["report_md"] = write_text(target / "report.md", _markdown(report, summary, root))
    paths.update({name: target / relative for name, relative in figures.items()})
    return paths


def _markdown(report: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], root: Path) -> str:
    data, figures = report["data"], report["figures"]
    table, ranks, models = report["accuracy"], report["ranks"], report["models"]
    counts = report["runs"]["by_status"]
    archs = sorted({e["arch"] for e in table}, key=_arch_sort_key)
    model_names = sorted({e["model"] for e in table}, key=_model_sort_key)
    hidden = {e["arch"]: e["hidden"] for e in table}
    out = [f"# Sweep report: {root.resolve().name}\n"]
    out.append(
        f"**Data and schedule.** Dataset {data['dataset']}: {data['train_examples']} training, {data['val_examples']} validation "
        f"and {data['test_examples']} test images (train limit {data['train_limit']}); {_count(data['epochs'], 'epoch')}"
        + (f" (SmartMixed: phase 1 for {data['transition_epoch']}, phase 2 init {data['phase2_init']}, tau {data['tau']})"
           if data["transition_epoch"] != "n/a" else "")
        + f"; {data['optimizer']}, lr {data['lr']} ({data['lr_schedule']}), batch {data['batch_size']}.\n"
    )
    out.append(f"**Runs.** {_count(report['runs']['total'], 'run')}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
               + ". Statistics use the runs with status done or stopped_early (their kept model's test accuracy). "
               "Every number here can be recomputed from `summary.csv` (one row per run); `report.json` holds them all.\n")
    if counts.get("stopped_early"):
        out.append(f"{counts['stopped_early']} run(s) stopped early on a non-finite loss; each kept its best model.\n")

    out.append("## Test accuracy\n")
    if not table:
        out.append("No finished run yet.\n")
    else:
        out.append("Mean ± sample standard deviation over seeds (n seeds); the best mean of each architecture in bold.\n")
        lines = []
        for arch in archs:
            best = max(e["mean"] for e in table if e["arch"] == arch)
            cells = []
            for model in model_names:
                entry = next((e for e in table if e["arch"] == arch and e["model"] == model), None)
                if entry is None:
                    cells.append("")
                    continue
                text = _pct(entry["mean"]) + (f" ± {100 * entry['std']:.2f}" if entry["std"] is not None else "") + f" ({entry['n']})"
                cells.append(f"**{text}**" if entry["mean"] == best else text)
            lines.append([arch, hidden[arch], *cells])
        out.append(_markdown_table(["arch", "hidden", *model_names], lines))
        if "accuracy.png" in figures:
            out.append(f"\n![Test accuracy per architecture and model]({figures['accuracy.png']})\n")

        out.append("## Ranks\n")
        out.append("Per architecture, models ranked by mean test accuracy (1 = best; equal means share the better rank). "
                   "MRR is the mean over architectures of 1/rank.\n")
        out.append(_markdown_table(["arch", *model_names], ([arch, *[ranks[arch].get(m, "") for m in model_names]] for arch in archs)))
        out.append("\n")
        ordered = sorted(models.items(), key=lambda kv: (-kv[1]["mrr"], _model_sort_key(kv[0])))
        out.append(_markdown_table(["model", "MRR", "mean rank", "first places", "architectures"],
                                   ([m, f"{v['mrr']:.3f}", f"{v['mean_rank']:.2f}", v["first_places"], v["archs"]] for m, v in ordered)))

    versus = report["smartmixed_vs_best_fixed"]
    out.append("## SmartMixed against the best fixed activation\n")
    if not versus["per_arch"]:
        out.append("Needs SmartMixed and at least one fixed activation in the same architecture.\n")
    else:
        out.append("Per architecture, the fixed activation with the highest mean test accuracy; differences are SmartMixed "
                   "minus that model, paired by seed (pp = percentage points; the interval is the 95% t interval of the mean "
                   "difference over seeds; p is the two-sided paired t-test). The best fixed model is chosen on the same "
                   "test accuracies, which slightly favours it.\n")
        lines = [[e["arch"], e["best_fixed"], _pct(e["best_fixed_mean"]), _pct(e["smartmixed_mean"]), e["pairs"],
                  f"{e['wins']}/{e['ties']}/{e['losses']}", _pp(e["mean_difference"]),
                  _interval(e),
                  "n/a" if e["p_value"] is None else f"{e['p_value']:.3g}"] for e in versus["per_arch"]]
        pooled = versus["pooled"]
        lines.append(["all", "", "", "", pooled["pairs"], f"{pooled['wins']}/{pooled['ties']}/{pooled['losses']}",
                      _pp(pooled["mean_difference"]),
                      _interval(pooled),
                      "n/a" if pooled["p_value"] is None else f"{pooled['p_value']:.3g}"])
        out.append(_markdown_table(["arch", "best fixed", "its mean", "SmartMixed mean", "pairs", "wins/ties/losses",
                                    "mean difference", "95% interval", "p"], lines))
        out.append(f"\nSmartMixed's mean is higher than the best fixed activation's in {versus['archs_won_on_mean']} of "
                   f"{versus['archs']} architecture(s). The pooled row treats every (architecture, seed) pair as one "
                   "observation.\n")
        if "smartmixed_vs_best_fixed.png" in figures:
            out.append(f"\n![SmartMixed minus best fixed activation]({figures['smartmixed_vs_best_fixed.png']})\n")

    phases = report["phase1_vs_phase2"]
    out.append("## Phase 1 against phase 2\n")
    if not phases["per_arch"]:
        out.append("No finished SmartMixed run with a phase-1 model.\n")
    else:
        out.append("Per SmartMixed run: test accuracy of the best phase-1 model (selection by validation loss) against "
                   "the kept phase-2 model; a win is a run where phase 2 is higher.\n")
        lines = [[e["arch"], e["hidden"], e["pairs"], _pct(e["phase1_mean"]), _pct(e["phase2_mean"]),
                  f"{e['wins']}/{e['ties']}/{e['losses']}", _pp(e["mean_difference"]),
                  _interval(e)] for e in phases["per_arch"]]
        pooled = phases["pooled"]
        lines.append(["all", "", pooled["pairs"], _pct(pooled.get("phase1_mean")), _pct(pooled.get("phase2_mean")),
                      f"{pooled['wins']}/{pooled['ties']}/{pooled['losses']}", _pp(pooled["mean_difference"]),
                      _interval(pooled)])
        out.append(_markdown_table(["arch", "hidden", "runs", "phase 1", "phase 2", "wins/ties/losses", "mean difference",
                                    "95% interval"], lines))
        if "phase1_vs_phase2.png" in figures:
            out.append(f"\n![Phase 1 against phase 2]({figures['phase1_vs_phase2.png']})\n")

    preferences = report["layer_preferences"]
    pool = preferences["pool"]
    out.append("## Layer-wise activation preferences\n")
    if not preferences["per_layer"]:
        out.append("No finished SmartMixed run.\n")
    else:
        out.append("Share of each candidate among a hidden layer's neurons (from `choices.csv`), mean over seeds. "
                   "Also in `layer_preferences.csv`.\n")
        out.append(_markdown_table(["arch", "layer", "width", "runs", *pool],
                                   ([e["arch"], e["layer"], e["width"], e["runs"], *[_pct(e["shares"][n], 1) for n in pool]]
                                    for e in preferences["per_layer"])))
        out.append("\nBy relative depth, all SmartMixed runs pooled (a run's middle layers count as one group; "
                   "a network with one hidden layer has only an 'only' layer). Also in `depth_preferences.csv`.\n")
        out.append(_markdown_table(["depth", "runs", "layers", *pool],
                                   ([e["depth"], e["runs"], e["layers"], *[_pct(e["shares"][n], 1) for n in pool]]
                                    for e in preferences["by_depth"])))
        for name, caption in (("layer_preferences.png", "Activation shares per hidden layer"),
                              ("depth_preferences.png", "Activation shares by relative depth")):
            if name in figures:
                out.append(f"\n![{caption}]({figures[name]})\n")

    weights = report["weight_statistics"]
    out.append("## Weights between activation groups\n")
    if not any(e["cells"] for e in weights["per_arch"]):
        out.append("Needs finished SmartMixed runs with at least two hidden layers.\n")
    else:
        out.append("Weights from the neurons of activation A in hidden layer l into the neurons of activation B in layer "
                   "l+1, pooled over the layer pairs and seeds of each architecture: mean / median (n weights). "
                   "Per layer pair in `weight_stats.csv`.\n")
        for entry in weights["per_arch"]:
            if not entry["cells"]:
                continue
            cells = {(c["from_activation"], c["to_activation"]): c for c in entry["cells"]}
            sources = [a for a in weights["pool"] if any(k[0] == a for k in cells)]
            targets = [b for b in weights["pool"] if any(k[1] == b for k in cells)]
            out.append(f"\n**arch {entry['arch']}** ({entry['hidden']}; {entry['layer_pairs']} layer pair(s), "
                       f"{entry['runs']} run(s)); rows: A (from), columns: B (to)\n\n")
            out.append(_markdown_table(["A \\ B", *targets], (
                [a, *[(f"{cells[(a, b)]['mean']:+.2e} / {cells[(a, b)]['median']:+.2e} ({cells[(a, b)]['count']})"
                       if (a, b) in cells else "") for b in targets]] for a in sources)))
            name = f"weights_arch{entry['arch']}.png"
            if name in figures:
                out.append(f"\n![Weights between activation groups, arch {entry['arch']}]({figures[name]})\n")
        single = [e["arch"] for e in weights["per_arch"] if not e["cells"]]
        if single:
            out.append(f"\nArchitecture(s) {', '.join(single)}: one hidden layer, no layer pair.\n")

    unfinished = [r for r in rows if r["status"] not in SCORED]
    if unfinished:
        out.append("## Runs without results\n")
        out.append(_markdown_table(["run", "status", "error"], ([r["run_dir"], r["status"], r["error"] or ""] for r in unfinished)))
    return "\n\n".join(block.strip("\n") for block in out if block.strip()) + "\n"
