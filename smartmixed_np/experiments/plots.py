"""Figures of a run: learning curves, confusion matrix, and which activation each neuron chose.

Every function draws one figure and writes it as a PNG to ``path`` through
:func:`smartmixed_np.fileio.atomic_writer` (a reader never sees half a file), then
returns the written :class:`~pathlib.Path`. Figures are built on
``matplotlib.figure.Figure`` with the Agg canvas directly, never through ``pyplot``:
nothing is registered in pyplot's global figure list, no backend is switched, no
rcParams are changed, and the functions work headless and from several threads.

An activation has the same colour in every figure (:data:`ACTIVATION_COLORS` for
the built-ins; a user-registered name gets a fallback colour derived from its name,
so that it too keeps its colour from one figure to the next). A *model* has one
colour too (:data:`MODEL_COLORS`): a fixed-activation baseline takes its
activation's colour ("ReLU" is drawn like ``relu``) and SmartMixed its own, in
every figure of this module, the overview figure and the report.

Inputs are the plain data a training run writes:

- ``history``: one dict per epoch with ``epoch``, ``phase``, ``train_loss``,
  ``train_acc``, ``val_loss``, ``val_acc`` (...) and, in phase-1 rows of a
  SmartMixed run, ``share.L{i}.{name}`` columns: the fraction of hidden layer ``i``'s
  neurons whose argmax choice is ``name``. Values may be numbers or the strings read
  back from ``history.csv``; ``""`` and ``None`` mean missing.
- ``confusion``: (C, C) counts, rows the true class, columns the predicted one.
- ``choices``: per hidden layer, the activation of each neuron (names, or indices
  into ``pool``), in original neuron order.

:func:`write_run_figures` draws every figure a run folder has the data for.
"""

from __future__ import annotations

import math
import os
import re
import warnings
import zlib
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap, to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from ..core.activations import DEFAULT_POOL
from ..fileio import atomic_writer
from .runfolder import RunFolderError, read_choices, read_history, read_metrics, read_model_description

__all__ = [
    "ACTIVATION_COLORS",
    "DPI",
    "MODEL_COLORS",
    "SMARTMIXED_COLOR",
    "activation_color",
    "activation_colors",
    "model_color",
    "model_colors",
    "new_figure",
    "percent_ticks",
    "save_png",
    "text_color_on",
    "plot_curves",
    "plot_confusion",
    "plot_activation_shares",
    "plot_share_evolution",
    "plot_choice_map",
    "plot_comparison",
    "plot_recipes",
    "write_run_figures",
]

DPI = 130

# The six default candidates take the first six tab10 colours, in pool order; the
# other built-ins take the rest of tab10.
ACTIVATION_COLORS: dict[str, str] = {
    "relu": "#1f77b4",
    "sigmoid": "#ff7f0e",
    "tanh": "#2ca02c",
    "leaky_relu": "#d62728",
    "elu": "#9467bd",
    "selu": "#8c564b",
    "gelu": "#e377c2",
    "silu": "#bcbd22",
    "softplus": "#17becf",
    "identity": "#7f7f7f",
}
# For user-registered names: dark colours first (distinct from tab10), then light ones.
_FALLBACK_COLORS = (
    "#1b9e77", "#e6ab02", "#7570b3", "#e7298a", "#a6761d", "#4d4d4d", "#66a61e",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
)
# SmartMixed is near-black: tab10 is taken by the activations, and a SmartMixed
# network mixes all of them, so it gets the one colour none of them has.
SMARTMIXED_COLOR = "#111111"
# One colour per model, wherever models are compared: a baseline is drawn in the
# colour of its activation, SmartMixed in its own. Keys are model names as
# `smartmixed train --model` takes them; see :func:`model_color` for labels.
MODEL_COLORS: dict[str, str] = {"smartmixed": SMARTMIXED_COLOR, **ACTIVATION_COLORS}
# Train and validation curves of one run (splits, not models).
_TRAIN_COLOR = "#1f77b4"
_VAL_COLOR = "#d62728"
_SHARE_KEY = re.compile(r"^share\.L(\d+)\.(.+)$")


# --------------------------------------------------------------------------- colours
def activation_color(name: str) -> str:
    """The colour of activation ``name`` (a fixed one for built-ins, else derived from the name)."""
    key = str(name).lower()
    if key in ACTIVATION_COLORS:
        return ACTIVATION_COLORS[key]
    return _FALLBACK_COLORS[zlib.crc32(key.encode()) % len(_FALLBACK_COLORS)]


def activation_colors(names: Iterable[str]) -> dict[str, str]:
    """Colours for the names of one figure: built-ins fixed, user names distinct from each other.

    A user name starts from the colour :func:`activation_color` gives it (derived from
    the name, so stable across figures) and moves on to the next free fallback colour
    only if another name of the same figure already holds it.
    """
    colors: dict[str, str] = {}
    used = set()
    for name in names:
        if name in colors:
            continue
        key = str(name).lower()
        if key in ACTIVATION_COLORS:
            colors[name] = ACTIVATION_COLORS[key]
        else:
            start = zlib.crc32(key.encode()) % len(_FALLBACK_COLORS)
            free = [_FALLBACK_COLORS[(start + k) % len(_FALLBACK_COLORS)] for k in range(len(_FALLBACK_COLORS))]
            colors[name] = next((c for c in free if c not in used), free[0])
        used.add(colors[name])
    return colors


def _model_key(label: str) -> str:
    """The model name behind a display label: "SmartMixed" -> "smartmixed", "Leaky ReLU" -> "leaky_relu"."""
    return re.sub(r"[\s-]+", "_", str(label).strip().lower())


def model_color(label: str) -> str:
    """The colour of a model, by name or display label ("SmartMixed", "ReLU", "elu").

    A baseline takes its activation's colour (:func:`activation_color`, so a
    user-registered activation's baseline is stable too); SmartMixed takes
    :data:`SMARTMIXED_COLOR`.
    """
    key = _model_key(label)
    return MODEL_COLORS.get(key) or activation_color(key)


def model_colors(labels: Iterable[str]) -> dict[str, str]:
    """Colours for the models of one figure, keyed by the labels given.

    Known models keep their :data:`MODEL_COLORS` colour; other labels get distinct
    fallback colours as in :func:`activation_colors`. Two labels naming the same
    model ("ReLU", "relu") share a colour.
    """
    keys = {label: _model_key(label) for label in labels}
    colors = activation_colors([key for key in keys.values() if key != "smartmixed"])
    colors["smartmixed"] = SMARTMIXED_COLOR
    return {label: colors[key] for label, key in keys.items()}


def text_color_on(color: str) -> str:
    """Black or white, whichever reads better on ``color``."""
    r, g, b = to_rgb(color)
    return "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.55 else "black"


# --------------------------------------------------------------------------- input helpers
def _num(value: Any) -> float:
    """A history value as a float: numbers pass, numeric strings parse, ``""``/``None``/junk -> NaN."""
    if value is None:
        return math.nan
    if isinstance(value, str):
        value = value.strip()
        if not value or value.lower() in ("none", "null", "nan"):
            return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _column(history: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    """(E,) float column ``key`` of ``history``; NaN where a row lacks it."""
    return np.array([_num(row.get(key)) for row in history], dtype=np.float64)


def _epochs(history: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """(E,) epoch numbers; 1..E where the history does not say."""
    epochs = _column(history, "epoch")
    fallback = np.arange(1, len(history) + 1, dtype=np.float64)
    return np.where(np.isfinite(epochs), epochs, fallback)


def _check_history(history: Any) -> list[Mapping[str, Any]]:
    history = list(history)
    if not history:
        raise ValueError("history is empty: nothing to plot")
    if not all(isinstance(row, Mapping) for row in history):
        raise TypeError("history must be a list of dicts, one per epoch")
    return history


def _pool_names(pool: Any) -> list[str]:
    """Names of a pool given as names or Activation objects (or None for the default pool)."""
    if pool is None:
        return list(DEFAULT_POOL)
    if isinstance(pool, str):
        pool = [part.strip() for part in pool.split(",") if part.strip()]
    return [str(getattr(item, "name", item)) for item in pool]


def _choice_names(choices: Any, pool: list[str]) -> list[list[str]]:
    """Per hidden layer, the activation name of each neuron (indices are looked up in ``pool``)."""
    layers = []
    for layer in choices:
        names = []
        for item in np.asarray(layer, dtype=object).ravel().tolist():
            if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
                if not 0 <= int(item) < len(pool):
                    raise ValueError(f"choice index {item} is outside the pool {pool}")
                names.append(pool[int(item)])
            else:
                names.append(str(getattr(item, "name", item)))
        layers.append(names)
    if not layers:
        raise ValueError("choices lists no hidden layer")
    return layers


def _names_in_order(pool: list[str], seen: Iterable[str]) -> list[str]:
    """The pool's names, then any other name seen in the data, in order of appearance."""
    names = list(dict.fromkeys(pool))
    for name in seen:
        if name not in names:
            names.append(name)
    return names


def _is_fraction(values: Iterable[float]) -> bool:
    """Whether accuracies are fractions in [0, 1] (not percentages)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return not finite or max(finite) <= 1.0


def _format_acc(value: float, fraction: bool) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{100 * value:.2f}%" if fraction else f"{value:.2f}%"


# --------------------------------------------------------------------------- figure helpers
def new_figure(width: float, height: float) -> Figure:
    """A figure with its own Agg canvas and constrained layout (nothing global touched)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str | os.PathLike, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path, "wb") as file:
        # A tight bounding box as a last guard: no label is ever cut off at the edge,
        # even where a fixed aspect (heatmap, cell map) fights the layout engine.
        fig.savefig(file, format="png", dpi=dpi, facecolor="white", bbox_inches="tight", pad_inches=0.15)
    return path


def _phase_boundary(history: Sequence[Mapping[str, Any]], epochs: np.ndarray, transition_epoch: Any) -> float | None:
    """The x position of the phase-1/phase-2 line, or None.

    Where the history says which rows are phase 1 and phase 2, the line goes halfway
    between the last phase-1 epoch and the first phase-2 epoch (the data decide;
    ``transition_epoch`` only asks for the line). Otherwise ``transition_epoch`` is
    taken as the last phase-1 epoch and the line is drawn just after it.
    """
    phases = _column(history, "phase")
    one, two = epochs[phases == 1], epochs[phases == 2]
    if one.size and two.size:
        return (one.max() + two.min()) / 2.0
    transition = _num(transition_epoch)
    if math.isfinite(transition):
        return transition + 0.5
    return None


def _mark_transition(ax: Any, boundary: float | None, label: bool = True, color: str = "0.3") -> None:
    if boundary is None:
        return
    ax.axvline(boundary, color=color, linestyle="--", linewidth=1.2, zorder=1)
    if label:
        # Aligned before rotating: the text reads upwards just left of the line.
        ax.text(
            boundary, 0.5, "phase 2 starts", transform=ax.get_xaxis_transform(), rotation=90,
            rotation_mode="anchor", ha="center", va="bottom", fontsize=8.5, color=color,
            bbox=dict(facecolor="white", edgecolor="none", alpha=0.75, pad=1.0),
        )


def percent_ticks(axis: Any, whole: float = 1.0) -> None:
    """Label ``axis`` in percent of ``whole``, with only the decimals a tick needs ("90%", "92.5%")."""
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{round(100.0 * value / whole, 6):g}%"))


def _legend_columns(count: int) -> int:
    """One legend row for up to 8 entries, else two rows."""
    return count if count <= 8 else math.ceil(count / 2)


def _integer_epochs(ax: Any, epochs: np.ndarray) -> None:
    """Whole-number epoch ticks, and a sensible range when there is a single epoch."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if epochs.size and np.ptp(epochs) < 1:
        ax.set_xlim(epochs.min() - 1, epochs.max() + 1)


# --------------------------------------------------------------------------- figures
def plot_curves(
    history: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    transition_epoch: int | None = None,
    title: str | None = None,
    *,
    dpi: int = DPI,
) -> Path:
    """Learning curves: loss (left) and accuracy (right) of train and validation sets per epoch.

    A dashed vertical line labelled "phase 2 starts" marks the switch from phase 1
    (Gumbel-softmax selection) to phase 2 (frozen choices) when ``transition_epoch``
    is given or the history holds rows of both phases. A star marks the epoch of
    lowest validation loss on both panels (its value is in the legend).

    Args:
        history: (E rows) dicts with ``epoch``, ``train_loss``, ``val_loss``,
            ``train_acc``, ``val_acc`` (numbers or strings; missing -> gap).
        path: where the PNG goes.
        transition_epoch: the last phase-1 epoch (used only when the history lacks
            a ``phase`` column showing both phases).
        title: figure title.
    """
    history = _check_history(history)
    epochs = _epochs(history)
    boundary = _phase_boundary(history, epochs, transition_epoch)
    fig = new_figure(11.0, 4.3)
    ax_loss, ax_acc = fig.subplots(1, 2)
    val_loss = _column(history, "val_loss")
    best = int(np.nanargmin(val_loss)) if np.isfinite(val_loss).any() else None
    accuracies = np.concatenate([_column(history, "train_acc"), _column(history, "val_acc")])
    fraction = _is_fraction(accuracies.tolist())

    for ax, metric, name in [(ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")]:
        markers = "o" if len(history) <= 30 else None
        for split, color, label in [("train", _TRAIN_COLOR, "train"), ("val", _VAL_COLOR, "validation")]:
            values = _column(history, f"{split}_{metric}")
            if np.isfinite(values).any():
                ax.plot(epochs, values, color=color, marker=markers, markersize=3.5, label=label)
        if best is not None:
            value = _column(history, f"val_{metric}")[best]
            if math.isfinite(value):
                if metric == "loss":
                    label = f"best val loss (epoch {epochs[best]:g}): {value:.4g}"
                else:
                    label = f"val acc at best val loss (epoch {epochs[best]:g}): {_format_acc(value, fraction)}"
                ax.plot(epochs[best], value, "*", color="black", markersize=13, zorder=5, label=label)
        _mark_transition(ax, boundary)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(name.capitalize())
        _integer_epochs(ax, epochs)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=9, framealpha=0.9)
    percent_ticks(ax_acc.yaxis, 1.0 if fraction else 100.0)
    fig.suptitle(title or "Learning curves", fontsize=13)
    return save_png(fig, path, dpi)


def plot_confusion(
    confusion: Any,
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    *,
    dpi: int = DPI,
) -> Path:
    """Confusion matrix heatmap: rows the true class, columns the predicted class.

    Cells are coloured by the row-normalised fraction (the share of a true class
    predicted as each class), so that rare classes read as clearly as common ones;
    the raw counts are written in the cells when there are at most 20 classes. Each
    y tick label carries that class's accuracy (recall), and the title the overall
    accuracy and the number of samples.

    Args:
        confusion: (C, C) non-negative counts (array or nested list).
        path: where the PNG goes.
        class_names: (C,) labels; default ``0 .. C-1``.
        title: figure title.
    """
    counts = np.asarray(confusion, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] == 0:
        raise ValueError(f"confusion must be a non-empty square (C, C) matrix, got shape {counts.shape}")
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError("confusion must hold finite, non-negative counts")
    num_classes = counts.shape[0]
    names = [str(i) for i in range(num_classes)] if class_names is None else [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a {num_classes}-class confusion matrix")
    row_sums = counts.sum(axis=1)
    rates = np.divide(counts, row_sums[:, None], out=np.zeros_like(counts), where=row_sums[:, None] > 0)
    per_class = np.divide(np.diag(counts), row_sums, out=np.full(num_classes, np.nan), where=row_sums > 0)
    total = counts.sum()
    overall = np.trace(counts) / total if total > 0 else math.nan

    side = float(np.clip(0.42 * num_classes + 2.6, 5.0, 13.0))
    fig = new_figure(side + 1.6, side)
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    if num_classes <= 20:
        fontsize = 10 if num_classes <= 10 else 7
        integer = np.allclose(counts, np.round(counts))
        for i in range(num_classes):
            for j in range(num_classes):
                text = f"{int(round(counts[i, j]))}" if integer else f"{counts[i, j]:.3g}"
                ax.text(j, i, text, ha="center", va="center", fontsize=fontsize,
                        color="white" if rates[i, j] > 0.55 else "black")
    tick_size = 9 if num_classes <= 20 else 8
    ax.set_xticks(range(num_classes), names, fontsize=tick_size, rotation=45 if max(map(len, names)) > 3 else 0)
    ax.set_yticks(
        range(num_classes),
        [f"{n}  ({100 * a:.1f}%)" if math.isfinite(a) else f"{n}  (n/a)" for n, a in zip(names, per_class)],
        fontsize=tick_size,
    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class  (per-class accuracy)")
    colorbar = fig.colorbar(image, ax=ax, shrink=0.8)
    colorbar.set_label("fraction of the true class")
    percent_ticks(colorbar.ax.yaxis)
    summary = f"accuracy {100 * overall:.2f}%  (n = {int(total)})" if math.isfinite(overall) else "no samples"
    fig.suptitle(f"{title or 'Confusion matrix'}\n{summary}", fontsize=12)
    return save_png(fig, path, dpi)


def plot_activation_shares(
    choices: Any,
    pool: Any,
    path: str | os.PathLike,
    title: str | None = None,
    *,
    dpi: int = DPI,
) -> Path:
    """Which activations each hidden layer chose: one stacked bar per layer.

    A bar is split into the share of the layer's neurons using each activation
    (pool order, left to right); segments of at least 5% carry their percentage.
    Bars are labelled ``layer i (width)``, layer 1 on top.

    Args:
        choices: per hidden layer, (N_i,) activation names (or indices into ``pool``).
        pool: the candidate names (or Activations) in their pool order.
        path: where the PNG goes.
        title: figure title.
    """
    pool_names = _pool_names(pool)
    layers = _choice_names(choices, pool_names)
    names = _names_in_order(pool_names, (n for layer in layers for n in layer))
    colors = activation_colors(names)
    num_layers = len(layers)
    fig = new_figure(9.5, 1.9 + 0.55 * num_layers)
    ax = fig.subplots()
    labels = [f"layer {i + 1} ({len(layer)})" for i, layer in enumerate(layers)]
    left = np.zeros(num_layers)
    for name in names:
        shares = np.array([layer.count(name) / len(layer) if layer else 0.0 for layer in layers])
        ax.barh(range(num_layers), shares, left=left, height=0.7, color=colors[name], label=name,
                edgecolor="white", linewidth=0.8)
        for row, (start, share) in enumerate(zip(left, shares)):
            if share >= 0.05:
                ax.text(start + share / 2, row, f"{100 * share:.0f}%", ha="center", va="center",
                        fontsize=8.5, color=text_color_on(colors[name]))
        left += shares
    ax.set_yticks(range(num_layers), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    percent_ticks(ax.xaxis)
    ax.set_xlabel("share of the layer's neurons")
    ax.spines[["top", "right"]].set_visible(False)
    fig.legend(handles=[Patch(color=colors[n], label=n) for n in names], loc="outside lower center",
               ncol=_legend_columns(len(names)), frameon=False, title="activation")
    fig.suptitle(title or "Activation chosen per neuron, by hidden layer", fontsize=12)
    return save_png(fig, path, dpi)


def _share_columns(history: Sequence[Mapping[str, Any]]) -> dict[int, dict[str, str]]:
    """{layer index: {activation name: column key}} of the ``share.L{i}.{name}`` columns."""
    columns: dict[int, dict[str, str]] = {}
    for row in history:
        for key in row:
            match = _SHARE_KEY.match(str(key))
            if match:
                columns.setdefault(int(match.group(1)), {}).setdefault(match.group(2), key)
    return dict(sorted(columns.items()))


def plot_share_evolution(
    history: Sequence[Mapping[str, Any]],
    pool: Any,
    path: str | os.PathLike,
    title: str | None = None,
    *,
    dpi: int = DPI,
) -> Path:
    """How the choices settle during phase 1: per hidden layer, each activation's share per epoch.

    One panel per hidden layer (from the ``share.L{i}.{name}`` columns), one line per
    activation: the fraction of that layer's neurons whose argmax choice it is at
    the end of each phase-1 epoch. Rows without share values (phase 2, baselines)
    are left out. Layer keys counted from 0 (``share.L0.*``) are shown counted from 1
    like in the other figures.

    Args:
        history: (E rows) dicts, as for :func:`plot_curves`.
        pool: the candidate names (fixes the line order and colours).
        path: where the PNG goes.
        title: figure title.

    Raises:
        ValueError: the history has no share values.
    """
    history = _check_history(history)
    columns = _share_columns(history)
    rows = [row for row in history if any(math.isfinite(_num(row.get(k))) for c in columns.values() for k in c.values())]
    if not rows:
        raise ValueError("history has no share.L{i}.{name} values (not a SmartMixed phase-1 history?)")
    epochs = _epochs(rows)
    names = _names_in_order(_pool_names(pool), (n for c in columns.values() for n in c))
    colors = activation_colors(names)
    offset = 1 if min(columns) == 0 else 0
    num_layers = len(columns)
    ncols = min(num_layers, 3)
    nrows = math.ceil(num_layers / ncols)
    fig = new_figure(4.4 * ncols + 0.6, 3.3 * nrows + 0.9)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)).ravel()
    markers = "o" if len(rows) <= 30 else None
    for ax, (layer, layer_columns) in zip(axes, columns.items()):
        for name in names:
            if name in layer_columns:
                values = _column(rows, layer_columns[name])
                ax.plot(epochs, values, color=colors[name], marker=markers, markersize=3.5, linewidth=1.8, label=name)
        ax.set_title(f"layer {layer + offset}")
        ax.set_ylim(-0.02, 1.02)
        percent_ticks(ax.yaxis)
        _integer_epochs(ax, epochs)
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("epoch (phase 1)")
    for ax in axes[num_layers:]:
        ax.set_visible(False)
    for ax in axes[::ncols]:
        ax.set_ylabel("share of neurons")
    for ax in axes:
        ax.xaxis.set_tick_params(labelbottom=True)
    fig.legend(handles=[Line2D([], [], color=colors[n], linewidth=2.5, label=n) for n in names],
               loc="outside lower center", ncol=_legend_columns(len(names)), frameon=False, title="activation")
    fig.suptitle(title or "Activation shares during phase 1", fontsize=12)
    return save_png(fig, path, dpi)


def plot_choice_map(
    choices: Any,
    pool: Any,
    path: str | os.PathLike,
    title: str | None = None,
    *,
    width: int = 64,
    dpi: int = DPI,
) -> Path:
    """Every neuron's choice as a coloured cell, one block of rows per hidden layer.

    A layer's neurons are laid out in their original order, row by row, ``width``
    cells to a row (fewer if no layer is that wide), so a layer of 512 neurons is a
    block of 8 rows of 64. Blocks are stacked top to bottom (layer 1 first) with a
    gap between them and a ``layer i (width)`` label to the left.

    Args:
        choices: per hidden layer, (N_i,) activation names (or indices into ``pool``).
        pool: the candidate names (fixes the colours and legend order).
        path: where the PNG goes.
        title: figure title.
        width: cells per row.
    """
    pool_names = _pool_names(pool)
    layers = _choice_names(choices, pool_names)
    names = _names_in_order(pool_names, (n for layer in layers for n in layer))
    colors = activation_colors(names)
    index = {name: k for k, name in enumerate(names)}
    columns = max(1, min(int(width), max(len(layer) for layer in layers)))
    blocks, label_rows, row = [], [], 0
    for i, layer in enumerate(layers):
        num_rows = max(1, math.ceil(len(layer) / columns))
        block = np.full(num_rows * columns, np.nan)
        block[: len(layer)] = [index[name] for name in layer]
        if i:
            blocks.append(np.full((1, columns), np.nan))  # the gap between layers
            row += 1
        blocks.append(block.reshape(num_rows, columns))
        label_rows.append(row + num_rows / 2)
        row += num_rows
    grid = np.ma.masked_invalid(np.vstack(blocks))

    # About 8.5 inches of cells across (at most 0.3 inch a cell). The figure is laid
    # out by hand, in inches, not by constrained layout: square cells in a strip one
    # or a few cells high leave the layout engine no room to trade, and it collapses
    # the axes (and warns) for a single layer of 8 to 128 neurons. Text sizes are
    # fixed in points, so one measuring draw is enough to place everything exactly.
    cell = min(0.3, 8.5 / columns)
    map_width, map_height = columns * cell, grid.shape[0] * cell
    fig = Figure(figsize=(map_width + 3.0, map_height + 3.0))  # provisional size, set below
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.3, 0.3, map_width / (map_width + 3.0), map_height / (map_height + 3.0)))
    cmap = ListedColormap([colors[n] for n in names])
    many = grid.size > 6000
    ax.pcolormesh(grid, cmap=cmap, vmin=-0.5, vmax=len(names) - 0.5,
                  edgecolors="none" if many else "white", linewidth=0 if many else 0.4)
    ax.set_xlim(0, columns)
    ax.set_ylim(grid.shape[0], 0)
    ax.set_yticks(label_rows, [f"layer {i + 1} ({len(layer)})" for i, layer in enumerate(layers)])
    ax.tick_params(axis="y", length=0)
    step = 16 if columns >= 32 else max(1, columns // 4)
    ax.set_xticks(np.arange(0, columns, step) + 0.5, [str(x) for x in range(0, columns, step)], fontsize=8)
    if grid.shape[0] == len(layers):  # every layer fits in one row
        ax.set_xlabel("neuron index")
    else:
        ax.set_xlabel(f"neuron index mod {columns}  (neurons fill the rows left to right, top to bottom)")
    for spine in ax.spines.values():
        spine.set_visible(False)
    legend = fig.legend(handles=[Patch(color=colors[n], label=n) for n in names], loc="lower center",
                        ncol=_legend_columns(len(names)), frameon=False)
    suptitle = fig.suptitle(title or "Activation chosen by each neuron", fontsize=12, va="top")
    _place_map(fig, ax, legend, suptitle, map_width, map_height)
    return save_png(fig, path, dpi)


def _place_map(fig: Figure, ax: Any, legend: Any, suptitle: Any, map_width: float, map_height: float) -> None:
    """Size ``fig`` and place its parts, in inches: title, map (``map_width`` x ``map_height``), legend.

    From top to bottom: a margin, the title, a gap, the axes' decorations above the
    map (none here), the map itself at exactly its size (so its cells stay square),
    the tick labels and x label, a gap, the legend, a margin. The map and its labels
    are centred; the figure is as wide as the widest of map+labels, title and legend.
    """
    margin, gap = 0.1, 0.12
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    inch = fig.dpi

    def size(box: Any) -> tuple[float, float]:
        return box.width / inch, box.height / inch

    frame, labelled = ax.get_window_extent(renderer), ax.get_tightbbox(renderer)
    left, right = (frame.x0 - labelled.x0) / inch, max(0.0, (labelled.x1 - frame.x1) / inch)
    below, above = (frame.y0 - labelled.y0) / inch, max(0.0, (labelled.y1 - frame.y1) / inch)
    legend_width, legend_height = size(legend.get_window_extent(renderer))
    title_width, title_height = size(suptitle.get_window_extent(renderer))

    content_width = left + map_width + right
    width = max(content_width, legend_width, title_width) + 2 * margin
    height = margin + title_height + gap + above + map_height + below + gap + legend_height + margin
    fig.set_size_inches(width, height)
    x0 = (width - content_width) / 2 + left
    y0 = margin + legend_height + gap + below
    ax.set_position((x0 / width, y0 / height, map_width / width, map_height / height))
    legend.set_bbox_to_anchor((0.5, margin / height), transform=fig.transFigure)
    suptitle.set_y(1.0 - margin / height)


def _test_accuracy_axis(ax: Any, title: str) -> None:
    """The look of a test-accuracy panel: its labels, no top or right frame, horizontal grid lines behind."""
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def plot_comparison(
    runs: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike,
    title: str | None = None,
    *,
    dpi: int = DPI,
) -> Path:
    """Several runs side by side: validation accuracy per epoch (left), test accuracy (right).

    Each run has its model's colour (:func:`model_colors`: a label such as
    "SmartMixed" or "ReLU" names the model) in both panels; a run with a
    ``transition_epoch`` gets a dashed line of its colour where its phase 2 starts. Test-accuracy bars start at
    zero and carry their value.

    Args:
        runs: ``{label: {"history": [...], "test_accuracy": float | None,
            "transition_epoch": int | None}}``, in the order to show.
        path: where the PNG goes.
        title: figure title.
    """
    if not runs:
        raise ValueError("runs is empty: nothing to compare")
    labels = list(runs)
    colors = model_colors(labels)
    tests = [_num(runs[label].get("test_accuracy")) for label in labels]
    all_acc = list(tests)
    for label in labels:
        all_acc += _column(list(runs[label].get("history") or []), "val_acc").tolist()
    fraction = _is_fraction(all_acc)

    fig = new_figure(12.0, 4.6)
    ax_curve, ax_bar = fig.subplots(1, 2, width_ratios=[1.7, 1.0])
    for label in labels:
        history = list(runs[label].get("history") or [])
        if not history:
            continue
        epochs = _epochs(history)
        values = _column(history, "val_acc")
        if np.isfinite(values).any():
            ax_curve.plot(epochs, values, color=colors[label], linewidth=1.8,
                          marker="o" if len(history) <= 30 else None, markersize=3.5, label=label)
        boundary = _phase_boundary(history, epochs, runs[label].get("transition_epoch"))
        if boundary is not None:
            _mark_transition(ax_curve, boundary, label=False, color=colors[label])
            ax_curve.plot([], [], "--", color=colors[label], label=f"{label}: phase 2 starts")
    ax_curve.set_title("Validation accuracy")
    ax_curve.set_xlabel("epoch")
    ax_curve.set_ylabel("validation accuracy")
    _integer_epochs(ax_curve, np.concatenate([_epochs(list(runs[k].get("history") or [])) for k in labels]))
    percent_ticks(ax_curve.yaxis, 1.0 if fraction else 100.0)
    ax_curve.grid(True, alpha=0.3)
    if ax_curve.get_legend_handles_labels()[0]:
        ax_curve.legend(loc="best", fontsize=9, framealpha=0.9)

    heights = [t if math.isfinite(t) else 0.0 for t in tests]
    bars = ax_bar.bar(range(len(labels)), heights, color=[colors[label] for label in labels], width=0.6)
    top = (1.0 if fraction else 100.0) if not any(map(math.isfinite, tests)) else max(t for t in tests if math.isfinite(t))
    ax_bar.set_ylim(0, top * 1.15)
    for bar, value in zip(bars, tests):
        ax_bar.annotate(_format_acc(value, fraction), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                        fontsize=10, fontweight="bold")
    ax_bar.set_xticks(range(len(labels)), labels, rotation=20 if max(map(len, labels)) > 12 else 0)
    percent_ticks(ax_bar.yaxis, 1.0 if fraction else 100.0)
    _test_accuracy_axis(ax_bar, "Test accuracy")
    fig.suptitle(title or "Run comparison", fontsize=13)
    return save_png(fig, path, dpi)


def plot_recipes(
    recipes: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | os.PathLike,
    title: str | None = None,
    *,
    target: float | None = None,
    dpi: int = DPI,
) -> Path:
    """Training recipes side by side, each over its seeds.

    Left: validation accuracy per epoch, the mean over a recipe's seeds as a line and
    their range shaded, a dashed tick of the recipe's colour where each seed's phase 2
    starts; the epoch axis is logarithmic when the longest recipe runs over 100
    epochs (a 40-epoch recipe beside a 400-epoch one). Right: each seed's test accuracy
    as a dot and their mean as a line, per recipe; ``target`` draws a horizontal line
    (for example, a recipe's mean less a tolerance).

    Args:
        recipes: ``{label: [{"history": [...], "test_accuracy": float}, ...]}``, one
            entry per seed, in the order to show; histories are a run's rows
            (``epoch``, ``phase``, ``val_acc``). Seeds may have run different lengths:
            the mean at an epoch is over the seeds that reached it.
        path: where the PNG goes.
        title: figure title.
        target: a test accuracy to mark, or None.
    """
    if not recipes or not all(recipes.values()):
        raise ValueError("recipes is empty, or a recipe has no runs: nothing to plot")
    labels = list(recipes)
    palette = ["#1f4e9c", "#d95f02", "#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#a6761d", "#666666"]
    colors = {label: palette[i % len(palette)] for i, label in enumerate(labels)}
    fig = new_figure(12.0, 4.8)
    ax_curve, ax_bar = fig.subplots(1, 2, width_ratios=[1.8, 1.0])
    longest, floor, ceiling = 1, math.inf, -math.inf
    for label in labels:
        runs = recipes[label]
        span = max(len(run.get("history") or []) for run in runs)
        longest = max(longest, span)
        grid = np.full((len(runs), span), np.nan)
        for i, run in enumerate(runs):
            values = _column(list(run.get("history") or []), "val_acc")
            grid[i, : values.size] = values
        epochs = np.arange(1, span + 1)
        with warnings.catch_warnings():  # an epoch no seed has a value for stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, low, high = np.nanmean(grid, axis=0), np.nanmin(grid, axis=0), np.nanmax(grid, axis=0)
        ax_curve.plot(epochs, mean, color=colors[label], linewidth=1.6, label=f"{label} ({len(runs)} seed{'' if len(runs) == 1 else 's'})")
        if np.isfinite(mean).any():  # the view starts at epoch 5's mean: the first epochs' climb would flatten the rest
            floor = min(floor, float(mean[min(4, span - 1)]) if np.isfinite(mean[min(4, span - 1)]) else float(np.nanmin(mean)))
            ceiling = max(ceiling, float(np.nanmax(high)))
        ax_curve.fill_between(epochs, low, high, color=colors[label], alpha=0.18, linewidth=0)
        for run in runs:
            history = list(run.get("history") or [])
            boundary = _phase_boundary(history, _epochs(history), None)
            if boundary is not None:
                ax_curve.axvline(boundary, ymin=0.92, ymax=1.0, color=colors[label], linestyle="--", linewidth=1.2)
    if longest > 100:
        ax_curve.set_xscale("log")
        ax_curve.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    else:
        _integer_epochs(ax_curve, np.arange(1, longest + 1, dtype=np.float64))
    if math.isfinite(floor) and ceiling > floor:
        ax_curve.set_ylim(floor - 0.05 * (ceiling - floor), ceiling + 0.12 * (ceiling - floor))
    ax_curve.plot([], [], "--", color="0.35", label="phase 2 starts (a tick at the top per seed)")
    ax_curve.set_title("Validation accuracy (mean over seeds, range shaded)")
    ax_curve.set_xlabel("epoch" + (" (log scale)" if longest > 100 else ""))
    ax_curve.set_ylabel("validation accuracy")
    percent_ticks(ax_curve.yaxis)
    ax_curve.grid(True, alpha=0.3, which="both")
    ax_curve.legend(loc="lower right", fontsize=9, framealpha=0.9)

    tests = {label: np.array([_num(run.get("test_accuracy")) for run in recipes[label]]) for label in labels}
    means = {label: float(np.nanmean(v)) if np.isfinite(v).any() else math.nan for label, v in tests.items()}
    finite = np.concatenate([v[np.isfinite(v)] for v in tests.values()] + [np.array([target] if target is not None else [])])
    for x, label in enumerate(labels):
        if math.isfinite(means[label]):
            ax_bar.hlines(means[label], x - 0.3, x + 0.3, color=colors[label], linewidth=2.5)
            ax_bar.annotate(f"{100 * means[label]:.2f}%", (x + 0.3, means[label]), xytext=(4, 0), textcoords="offset points",
                            ha="left", va="center", fontsize=10, fontweight="bold", color=colors[label])
        values = tests[label]
        ax_bar.scatter(np.full(values.size, x) + np.linspace(-0.12, 0.12, values.size), values, color=colors[label], zorder=3, s=22)
    if target is not None:
        ax_bar.axhline(target, color="0.25", linestyle=":", linewidth=1.3, label=f"target {100 * target:.2f}%")
        ax_bar.legend(loc="lower right", fontsize=9)
    if finite.size:
        spread = max(float(np.ptp(finite)), 0.002)
        ax_bar.set_ylim(float(finite.min()) - 1.5 * spread, float(finite.max()) + 1.0 * spread)
    ax_bar.set_xticks(range(len(labels)), labels, rotation=15 if max(map(len, labels)) > 14 else 0)
    percent_ticks(ax_bar.yaxis)
    ax_bar.set_xlim(-0.6, len(labels) - 0.4 + 0.35)
    _test_accuracy_axis(ax_bar, "Test accuracy (dots: seeds; line: mean)")
    fig.suptitle(title or "Recipes compared", fontsize=13)
    return save_png(fig, path, dpi)


# --------------------------------------------------------------------------- run folders
def _lenient(read: Any, run_dir: Path, empty: Any) -> Any:
    """What ``read(run_dir, required=False)`` returns, or ``empty`` for a file it cannot read: that figure is skipped."""
    try:
        return read(run_dir, required=False)
    except RunFolderError:
        return empty


def write_run_figures(run_dir: str | os.PathLike, metrics: dict[str, Any] | None = None) -> list[Path]:
    """Draw every figure a run folder has the data for, into ``run_dir/figures/``.

    Reads ``history.csv``, ``metrics.json``, ``choices.csv`` and ``model.json`` and
    writes ``curves.png`` (history), ``confusion.png`` (the test confusion matrix in
    metrics), and, for a SmartMixed run, ``activation_shares.png`` (choices.csv),
    ``share_evolution.png`` (the share columns of the history) and
    ``choice_map.png`` (choices.csv). A figure whose input is missing is skipped, so a baseline run
    gets the first two only.

    Returns:
        The written paths, in the order above.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    # A finishing run passes its metrics: metrics.json is written after the figures.
    metrics = metrics if metrics is not None else _lenient(read_metrics, run_dir, {})
    model = _lenient(read_model_description, run_dir, {})
    history = _lenient(read_history, run_dir, [])
    choices = _lenient(read_choices, run_dir, [])
    kind = metrics.get("model") or model.get("kind")
    name = f"{run_dir.name} ({kind})" if kind and kind != run_dir.name else run_dir.name
    pool = model.get("pool") or model.get("config", {}).get("pool") or metrics.get("pool") or list(DEFAULT_POOL)
    out = run_dir / "figures"
    out.mkdir(exist_ok=True)
    written = []

    if history:
        written.append(plot_curves(history, out / "curves.png", metrics.get("transition_epoch"),
                                   title=f"Learning curves: {name}"))
    test = metrics.get("test") if isinstance(metrics.get("test"), dict) else {}
    if test.get("confusion_matrix"):
        written.append(plot_confusion(test["confusion_matrix"], out / "confusion.png",
                                      class_names=metrics.get("class_names"), title=f"Test confusion matrix: {name}"))
    if choices:
        written.append(plot_activation_shares(choices, pool, out / "activation_shares.png",
                                              title=f"Activation chosen per neuron: {name}"))
    if history and _share_columns(history) and any(
        math.isfinite(_num(v)) for row in history for k, v in row.items() if _SHARE_KEY.match(str(k))
    ):
        written.append(plot_share_evolution(history, pool, out / "share_evolution.png",
                                            title=f"Activation shares during phase 1: {name}"))
    if choices:
        written.append(plot_choice_map(choices, pool, out / "choice_map.png",
                                       title=f"Activation chosen by each neuron: {name}"))
    return written
