"""The report's figures: accuracy per architecture, SmartMixed against the best fixed model,
phase 1 against phase 2, activation shares per layer and by depth, weights between groups.

Each ``plot_*`` function draws one figure from the numbers of the report (the
structures :mod:`~smartmixed_np.report.stats` and :mod:`~smartmixed_np.report.choices`
return) and writes it as a PNG to ``path``, atomically; it returns the path. The
figure machinery (an Agg canvas per figure, nothing global touched) and the colours
are those of :mod:`smartmixed_np.experiments.plots`: an activation and a model have the same
colour here as in every run figure.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..experiments.plots import DPI, SMARTMIXED_COLOR, activation_colors, model_colors
# The figure helpers of plots.py, shared rather than copied (plots.py has no public names for them yet).
from ..experiments.plots import new_figure, percent_ticks, save_png, text_color_on
from .collect import SMARTMIXED, arch_sort_key, model_sort_key, scored
from .stats import phase_runs

__all__ = [
    "plot_accuracy", "plot_smartmixed_vs_best", "plot_phases", "plot_layer_preferences", "plot_depth_preferences",
    "plot_weight_heatmaps",
]

# One colour per architecture in the phase figure (architectures are not models or
# activations, so they need a palette of their own).
_ARCH_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
                "#bcbd22", "#7f7f7f", "#1b9e77", "#e6ab02", "#7570b3", "#e7298a", "#a6761d", "#66a61e", "#4d4d4d", "#aec7e8")


def _arch_title(arch: str, hidden: str) -> str:
    return f"arch {arch}\n({hidden})" if hidden else f"arch {arch}"


def plot_accuracy(rows: Sequence[Mapping[str, Any]], table: Sequence[Mapping[str, Any]], path: Path, per_row: int = 6) -> Path:
    """Test accuracy per architecture and model: each seed a small dot, the mean with ±1 std.

    Architectures are drawn in rows of at most ``per_row``, each row with its own
    accuracy scale.
    """
    archs = sorted({e["arch"] for e in table}, key=arch_sort_key)
    models = sorted({e["model"] for e in table}, key=model_sort_key)
    colors = model_colors(models)
    hidden = {e["arch"]: e["hidden"] for e in table}
    entries = {(e["arch"], e["model"]): e for e in table}
    runs = scored(rows)
    lines = [archs[k : k + per_row] for k in range(0, len(archs), per_row)]
    columns = max(len(line) for line in lines)
    figure = new_figure(max(6.5, 1.2 + columns * (0.42 * len(models) + 0.5)), 0.9 + 3.6 * len(lines))
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
                seeds = [r["test_accuracy"] for r in runs if r["arch"] == arch and r["model"] == model]
                ax.scatter([x] * len(seeds), seeds, s=10, color=colors[model], alpha=0.45, linewidths=0, zorder=2)
                ax.errorbar(x, entry["mean"], yerr=entry["std"] or 0.0, fmt="D" if model == SMARTMIXED else "o",
                            color=colors[model], markersize=6, capsize=3, linewidth=1.4, zorder=3,
                            label=None if model in labelled else model)
                labelled.add(model)
        ax.set_xticks(range(len(line)), [_arch_title(a, hidden[a]) for a in line], fontsize=9)
        ax.set_xlim(-0.5, columns - 0.5)
        for i in range(len(line) - 1):
            ax.axvline(i + 0.5, color="0.85", linewidth=0.8, zorder=0)
        percent_ticks(ax.yaxis)
        ax.set_ylabel("test accuracy")
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.spines[["top", "right"]].set_visible(False)
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.append(handle)
            labels.append(label)
    order = sorted(range(len(labels)), key=lambda k: model_sort_key(labels[k]))
    figure.legend([handles[k] for k in order], [labels[k] for k in order], loc="outside lower center",
                  ncol=min(len(models), 7), frameon=False)
    figure.suptitle("Test accuracy per architecture (dots: seeds; marker and bar: mean ± 1 std)", fontsize=12)
    return save_png(figure, path, DPI)


def plot_smartmixed_vs_best(comparison: Mapping[str, Any], path: Path) -> Path:
    """SmartMixed minus best fixed activation, per architecture: seeds, mean and 95% interval."""
    from matplotlib.ticker import FuncFormatter

    entries = comparison["per_arch"]
    figure = new_figure(max(5.5, 1.5 + 1.0 * len(entries)), 4.4)
    ax = figure.subplots()
    for i, entry in enumerate(entries):
        differences = entry["differences"]
        ax.scatter([i] * len(differences), differences, s=14, color="0.55", zorder=2,
                   label="one seed" if i == 0 else None)
        if entry["mean_difference"] is not None:
            low, high = entry["ci95_low"], entry["ci95_high"]
            error = None if low is None else [[entry["mean_difference"] - low], [high - entry["mean_difference"]]]
            ax.errorbar(i, entry["mean_difference"], yerr=error, fmt="D", color=SMARTMIXED_COLOR, capsize=4,
                        markersize=6, zorder=3, label="mean, 95% t interval" if i == 0 else None)
    ax.axhline(0.0, color="0.4", linewidth=1.0, linestyle="--", zorder=1)
    ax.set_xticks(range(len(entries)), [f"arch {e['arch']}\nvs {e['best_fixed']}" for e in entries])
    ax.set_xlim(-0.6, len(entries) - 0.4)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{round(100 * value, 6):+g} pp"))
    ax.set_ylabel("test accuracy difference\n(SmartMixed − best fixed)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="best", fontsize=9, framealpha=0.9)
    figure.suptitle("SmartMixed against the best fixed activation of each architecture (paired by seed)", fontsize=11.5)
    return save_png(figure, path, DPI)


def plot_phases(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Phase-1 model's test accuracy (x) against the kept phase-2 model's (y), one point per run."""
    runs = phase_runs(rows)
    archs = sorted({r["arch"] for r in runs}, key=arch_sort_key)
    figure = new_figure(5.6, 5.2)
    ax = figure.subplots()
    values = [r["phase1_test_accuracy"] for r in runs] + [r["test_accuracy"] for r in runs]
    low, high = min(values), max(values)
    margin = max(0.005, 0.08 * (high - low))
    ax.plot([low - margin, high + margin], [low - margin, high + margin], color="0.5", linestyle="--", linewidth=1,
            label="equal (above: phase 2 better)")
    for k, arch in enumerate(archs):
        members = [r for r in runs if r["arch"] == arch]
        ax.scatter([r["phase1_test_accuracy"] for r in members], [r["test_accuracy"] for r in members], s=30,
                   color=_ARCH_COLORS[k % len(_ARCH_COLORS)], label=f"arch {arch} ({members[0]['hidden']})", zorder=3)
    ax.set_xlim(low - margin, high + margin)
    ax.set_ylim(low - margin, high + margin)
    ax.set_aspect("equal")
    percent_ticks(ax.xaxis)
    percent_ticks(ax.yaxis)
    ax.set_xlabel("test accuracy, best phase-1 model")
    ax.set_ylabel("test accuracy, kept phase-2 model")
    ax.grid(True, alpha=0.3)
    figure.legend(loc="outside lower center", ncol=2 if len(archs) > 1 else 1, fontsize=8.5, frameon=False)
    figure.suptitle("SmartMixed: phase 1 against phase 2 (one point per run)", fontsize=12)
    return save_png(figure, path, DPI)


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
                        color=text_color_on(colors[name]))
        left += values
    ax.set_yticks(range(len(labels)), labels, fontsize=9)
    ax.set_ylim(max(rows or 0, len(labels)) - 0.5, -0.5)
    ax.set_xlim(0, 1)
    percent_ticks(ax.xaxis)
    ax.spines[["top", "right"]].set_visible(False)


def plot_layer_preferences(preferences: Mapping[str, Any], path: Path) -> Path:
    """One panel per architecture: the mean share of each candidate in each hidden layer."""
    from matplotlib.patches import Patch

    pool = preferences["pool"]
    colors = activation_colors(pool)
    archs = sorted({e["arch"] for e in preferences["per_layer"]}, key=arch_sort_key)
    depth = {a: sum(1 for e in preferences["per_layer"] if e["arch"] == a) for a in archs}
    columns = min(3, len(archs))
    lines = [archs[k : k + columns] for k in range(0, len(archs), columns)]
    heights = [max(depth[a] for a in line) for line in lines]  # every bar equally thick
    figure = new_figure(4.6 * columns, sum(1.0 + 0.42 * h for h in heights) + 0.9)
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
    return save_png(figure, path, DPI)


def plot_depth_preferences(preferences: Mapping[str, Any], path: Path) -> Path:
    """Mean share of each candidate in the first, middle and last hidden layers (all runs pooled)."""
    from matplotlib.patches import Patch

    pool = preferences["pool"]
    colors = activation_colors(pool)
    entries = preferences["by_depth"]
    figure = new_figure(8.5, 1.7 + 0.55 * len(entries))
    ax = figure.subplots()
    labels = [f"{e['depth']} ({e['layers']} layer(s) in {e['runs']} run(s))" for e in entries]
    _stacked_bars(ax, labels, [e["shares"] for e in entries], pool, colors)
    ax.set_xlabel("share of the neurons (mean over runs)")
    figure.legend(handles=[Patch(color=colors[n], label=n) for n in pool], loc="outside lower center",
                  ncol=len(pool), frameon=False)
    figure.suptitle("Activations chosen by relative depth of the hidden layer", fontsize=12)
    return save_png(figure, path, DPI)


def plot_weight_heatmaps(entry: Mapping[str, Any], pool: Sequence[str], path: Path) -> Path:
    """Mean, median and mean |w| of the weights from group A (rows) into group B (columns)."""
    present_from = [a for a in pool if any(c["from_activation"] == a for c in entry["cells"])]
    present_to = [b for b in pool if any(c["to_activation"] == b for c in entry["cells"])]
    cells = {(c["from_activation"], c["to_activation"]): c for c in entry["cells"]}
    panels = (("mean", "mean weight", "RdBu_r"), ("median", "median weight", "RdBu_r"), ("mean_abs", "mean |weight|", "YlGn"))
    cell = 0.62
    figure = new_figure(3 * (len(present_to) * cell + 1.9) + 0.6, len(present_from) * cell + 2.5)
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
                            color=text_color_on(image.cmap(image.norm(grid[i, j]))))
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
    return save_png(figure, path, DPI)
