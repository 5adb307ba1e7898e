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

The package, one module per part, in the order the report is built:

* :mod:`.collect`: run folders -> summary rows, ``summary.csv`` (written and read back);
* :mod:`.stats`: means, t intervals and p-values (SciPy's ``scipy.stats.t``, the
  ``report`` extra), ranks and MRR, the paired comparisons;
* :mod:`.choices`: layer and depth preferences from ``choices.csv``, weights between
  activation groups from the saved models;
* :mod:`.tables`: the CSV tables; :mod:`.figures`: the PNG figures;
  :mod:`.markdown`: ``report.md``.

:func:`write_report` below runs them in that order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..fileio import write_json, write_text
from .choices import DEPTHS, layer_preferences, weight_statistics
from .collect import (
    SCORED, SUMMARY_COLUMNS, ReportError, collect_runs, data_description, read_summary, status_counts, summarize_run,
    summary_csv,
)
from .figures import (
    plot_accuracy, plot_depth_preferences, plot_layer_preferences, plot_phases, plot_smartmixed_vs_best,
    plot_weight_heatmaps,
)
from .markdown import report_markdown
from .stats import (
    accuracy_table, compare_phases, compare_smartmixed, mean_interval, rank_models, t_cdf, t_distribution, t_quantile,
)
from .tables import depth_preferences_csv, layer_preferences_csv, weight_stats_csv

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
# Also importable from here, as before the split (not in __all__): SCORED, DEPTHS,
# summarize_run, summary_csv, data_description, report_markdown and the plot_* functions.


def write_report(sweep_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write summary.csv, report.json, report.md, the preference and weight tables and figures.

    Args:
        sweep_dir: a sweep folder (or any folder holding run folders).
        out: where to write (default: ``sweep_dir``); figures go to ``out/figures/``.

    Returns:
        ``{"summary_csv", "report_json", "report_md", ...}`` paths, and one entry per figure.

    Raises:
        ReportError: no such folder, or no run in it, or SciPy is not installed.
    """
    t_distribution()  # SciPy is there, or a one-line error before anything is written
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

    paths["layer_preferences_csv"] = write_text(target / "layer_preferences.csv", layer_preferences_csv(preferences))
    paths["depth_preferences_csv"] = write_text(target / "depth_preferences.csv", depth_preferences_csv(preferences))
    paths["weight_stats_csv"] = write_text(target / "weight_stats.csv", weight_stats_csv(weights))

    report = {
        "format": "smartmixed_np.report/1",
        "sweep_dir": str(root.resolve()),
        "data": data,
        "runs": {"total": len(summary), "by_status": status_counts(summary)},
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
    paths["report_md"] = write_text(target / "report.md", report_markdown(report, summary, root))
    paths.update({name: target / relative for name, relative in figures.items()})
    return paths
