"""The report's CSV tables besides ``summary.csv``: layer and depth preferences, weight statistics.

Each function returns the CSV text (cells written by
:func:`smartmixed_np.report.collect.cell`: floats in full precision, empty = missing):

* ``layer_preferences.csv``: arch, hidden, layer, width, runs, ``share_{name}`` per candidate;
* ``depth_preferences.csv``: depth, runs, layers, ``share_{name}`` per candidate;
* ``weight_stats.csv``: arch, from_layer, to_layer, from_activation, to_activation,
  runs, count, mean, median, mean_abs; one row per layer pair and activation pair,
  then the pooled rows of each architecture with ``all`` as the layers.
"""

from __future__ import annotations

from typing import Any, Mapping

from .collect import csv_text

__all__ = ["layer_preferences_csv", "depth_preferences_csv", "weight_stats_csv"]


def layer_preferences_csv(preferences: Mapping[str, Any]) -> str:
    """``layer_preferences.csv`` from :func:`~smartmixed_np.report.choices.layer_preferences`."""
    pool = preferences["pool"]
    return csv_text(
        ["arch", "hidden", "layer", "width", "runs", *[f"share_{n}" for n in pool]],
        ([e["arch"], e["hidden"], e["layer"], e["width"], e["runs"], *[e["shares"][n] for n in pool]]
         for e in preferences["per_layer"]))


def depth_preferences_csv(preferences: Mapping[str, Any]) -> str:
    """``depth_preferences.csv`` from :func:`~smartmixed_np.report.choices.layer_preferences`."""
    pool = preferences["pool"]
    return csv_text(
        ["depth", "runs", "layers", *[f"share_{n}" for n in pool]],
        ([e["depth"], e["runs"], e["layers"], *[e["shares"][n] for n in pool]] for e in preferences["by_depth"]))


def weight_stats_csv(weights: Mapping[str, Any]) -> str:
    """``weight_stats.csv`` from :func:`~smartmixed_np.report.choices.weight_statistics`."""
    rows = [[e["arch"], e["from_layer"], e["to_layer"], e["from_activation"], e["to_activation"], e["runs"],
             e["count"], e["mean"], e["median"], e["mean_abs"]] for e in weights["per_layer_pair"]]
    rows += [[e["arch"], "all", "all", c["from_activation"], c["to_activation"], e["runs"], c["count"], c["mean"],
              c["median"], c["mean_abs"]] for e in weights["per_arch"] for c in e["cells"]]
    return csv_text(
        ["arch", "from_layer", "to_layer", "from_activation", "to_activation", "runs", "count", "mean", "median", "mean_abs"],
        rows)
