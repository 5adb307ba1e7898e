"""What SmartMixed chose: activation shares per hidden layer, and weights between activation groups.

These statistics read the files of the SmartMixed runs, not only ``summary.csv``:

* :func:`layer_preferences` reads ``choices.csv`` (one row per neuron: layer, neuron,
  activation, in the original neuron order): the share of each candidate among a
  hidden layer's neurons, averaged over seeds per architecture, and pooled by
  relative depth (first, middle, last hidden layer; a network with one hidden layer
  has only an "only" layer), averaged over all SmartMixed runs.
* :func:`weight_statistics` reads the saved model (``model.npz``, ``model.json``):
  for consecutive hidden layers l and l+1, the weights from the neurons of activation
  A in layer l into the neurons of activation B in layer l+1 (entries of
  ``layers.{l+1}.weight``, shape (width_{l+1}, width_l): rows are neurons of layer
  l+1, columns neurons of layer l, both in the saved model's current neuron order,
  which is the order of ``model.json``'s ``config.layers[i].choices``): count, mean,
  median and mean absolute value, per architecture and layer pair, and pooled over
  the layer pairs and seeds of each architecture.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..core.activations import DEFAULT_POOL
from ..experiments.runfolder import CHOICES, MODEL_ARRAYS, MODEL_JSON, RunFolderError, read_choices
from .collect import SMARTMIXED, ReportError, arch_sort_key, read_json, scored

__all__ = ["DEPTHS", "layer_preferences", "weight_statistics"]

DEPTHS = ("first", "middle", "last", "only")


def _choices_by_layer(run_dir: Path) -> list[list[str]]:
    """Per hidden layer, each neuron's activation name (original order) from choices.csv (ReportError if unreadable)."""
    try:
        return read_choices(run_dir)
    except RunFolderError as err:
        raise ReportError(str(err)) from None


def _depth_groups(num_layers: int) -> list[str]:
    if num_layers == 1:
        return ["only"]
    return ["first"] + ["middle"] * (num_layers - 2) + ["last"]


def _shares(names: Sequence[str], pool: Sequence[str]) -> dict[str, float]:
    return {activation: sum(1 for n in names if n == activation) / len(names) for activation in pool}


def _pool_of(runs: Iterable[Mapping[str, Any]], root: Path) -> list[str]:
    """The default pool, then any other candidate a run's model.json names, in order of appearance."""
    pool = list(DEFAULT_POOL)
    for row in runs:
        config = read_json(root / row["run_dir"] / MODEL_JSON).get("config") or {}
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
    runs = [r for r in scored(rows) if r["model"] == SMARTMIXED and (root / r["run_dir"] / CHOICES).is_file()]
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
            for (arch, index), shares in sorted(per_layer.items(), key=lambda kv: (arch_sort_key(kv[0][0]), kv[0][1]))
        ],
        "by_depth": [
            {"depth": depth, "runs": len(by_depth[depth]), "layers": depth_layers[depth], "shares": mean_shares(by_depth[depth])}
            for depth in DEPTHS if by_depth[depth]
        ],
    }


def _layer_activations(run_dir: Path) -> tuple[list[list[str]], dict[str, np.ndarray]]:
    """Per hidden layer, each neuron's activation in the saved model's current order; and its arrays."""
    from ..experiments.checkpoint import load_arrays

    description = read_json(run_dir / MODEL_JSON)
    config = description.get("config") or {}
    arrays, _ = load_arrays(run_dir / MODEL_ARRAYS)
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

    Raises:
        ReportError: a weight's shape disagrees with the neurons model.json lists.
    """
    root = Path(root)
    runs = [r for r in scored(rows) if r["model"] == SMARTMIXED and (root / r["run_dir"] / MODEL_ARRAYS).is_file()]
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
        for (arch, layer, a, b), blocks in sorted(per_pair.items(), key=lambda kv: (arch_sort_key(kv[0][0]), kv[0][1], order[kv[0][2]], order[kv[0][3]]))
    ]
    per_arch = []
    for arch in sorted(arch_runs, key=arch_sort_key):
        cells = [{"from_activation": a, "to_activation": b, **describe(blocks)}
                 for (label, a, b), blocks in sorted(pooled.items(), key=lambda kv: (order[kv[0][1]], order[kv[0][2]])) if label == arch]
        per_arch.append({"arch": arch, "hidden": hidden[arch], "runs": arch_runs[arch], "layer_pairs": arch_pairs[arch], "cells": cells})
    return {"pool": pool, "per_layer_pair": per_layer_pair, "per_arch": per_arch}
