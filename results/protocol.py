"""The published protocol compared: SmartMixed (ours and the reference preset), the fixed
activations, and a faster recipe, each over the same seeds; writes the tables and the figure
that the README's "The published protocol, run to the end" quotes.

Usage (from the repository root, with SMARTMIXED_DATA or --data-dir for the test set):

    python results/protocol.py --ours SWEEP --reference SWEEP --recipe SWEEP \
        --out results/mnist-protocol --figures figures/mnist-protocol

``--ours`` is a sweep of SmartMixed and fixed activations with our defaults, ``--reference``
one of SmartMixed with ``--preset reference``, ``--recipe`` one of SmartMixed with the faster
recipe; all three at one architecture and the same seeds. Writes ``comparison.md`` and
``comparison.json`` under ``--out`` and ``recipe_vs_protocol.png`` under ``--figures``.
Every number comes from the run folders (metrics.json, history.csv, model.json/.npz); the
test losses under both losses are recomputed from the saved models.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from smartmixed_np.backend import get_backend
from smartmixed_np.core.activations import DEFAULT_POOL
from smartmixed_np.data import load_dataset
from smartmixed_np.experiments.checkpoint import load_model
from smartmixed_np.experiments.plots import plot_recipes
from smartmixed_np.experiments.runfolder import read_config, read_history, read_metrics
from smartmixed_np.experiments.train import evaluate
from smartmixed_np.fileio import write_json, write_text
from smartmixed_np.report.stats import mean_interval

#: how close to the 400-epoch accuracy the faster recipe must come (percentage points)
TOLERANCE_PP = 0.2


def runs_of(sweep: Path, model: str) -> dict[int, Path]:
    """{seed: run folder} of the finished runs of ``model`` in a sweep folder (any architecture)."""
    found = {}
    for metrics in sorted(sweep.glob(f"arch*/{model}/seed*/metrics.json")):
        found[int(metrics.parent.name.removeprefix("seed"))] = metrics.parent
    return found


def pct(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.{digits}f}%"


def pp(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:+.2f}"


def interval(differences: list[float]) -> dict[str, Any]:
    summary = mean_interval(differences)
    return {"n": summary["n"], "mean": summary["mean"], "low": summary["low"], "high": summary["high"],
            "p_value": summary["p_value"], "differences": differences}


def interval_text(summary: dict[str, Any]) -> str:
    if summary["n"] == 0:
        return "n/a"
    text = f"{pp(summary['mean'])} pp"
    if summary["low"] is not None:
        text += f", 95% interval [{pp(summary['low'])}, {pp(summary['high'])}]"
    return text + f" (n = {summary['n']}: " + ", ".join(pp(d) for d in summary["differences"]) + ")"


def describe(run: Path, x_test: Any, y_test: Any) -> dict[str, Any]:
    """What the comparison needs of one run folder."""
    metrics, config = read_metrics(run), read_config(run)
    model = load_model(run)
    losses = {name: evaluate(model, x_test, y_test, 2048, loss=name)["loss"] for name in ("cross-entropy", "double-softmax")}
    history = read_history(run)
    return {
        "run": str(run), "seed": config["seed"], "test_accuracy": metrics["test"]["accuracy"],
        "test_loss": losses, "selected": metrics["selected"], "epochs_run": metrics["epochs_run"],
        "phase1_epochs": metrics.get("phase1_epochs") or metrics.get("transition_epoch"),
        "choice_shares": metrics.get("choice_shares"), "history": history,
    }


def mean_shares(runs: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Per hidden layer, each candidate's share of neurons, averaged over runs."""
    layers = len(runs[0]["choice_shares"])
    names = sorted({name for r in runs for layer in r["choice_shares"] for name in layer})
    return [{name: float(np.mean([r["choice_shares"][i].get(name, 0.0) for r in runs])) for name in names} for i in range(layers)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ours", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--recipe", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--figures", type=Path, required=True)
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)

    reference_config = read_config(next(iter(runs_of(args.ours, "smartmixed").values())))
    data = load_dataset(reference_config["dataset"], args.data_dir, train_limit=reference_config["train_limit"],
                        val_fraction=reference_config["val_fraction"], split_seed=reference_config["split_seed"])
    backend = get_backend("cpu")
    x_test, y_test = backend.asarray(data.x_test, dtype=np.float32), backend.asarray(data.y_test)

    groups: dict[str, dict[int, dict[str, Any]]] = {}
    found = {p.parent.parent.name for p in args.ours.glob("arch*/*/seed*/metrics.json")} - {"smartmixed"}
    fixed_models = [n for n in DEFAULT_POOL if n in found] + sorted(found - set(DEFAULT_POOL))
    for label, sweep, model in [("SmartMixed (ours)", args.ours, "smartmixed"), ("SmartMixed (reference preset)", args.reference, "smartmixed"),
                                ("SmartMixed, faster recipe", args.recipe, "smartmixed")] + [(m, args.ours, m) for m in fixed_models]:
        groups[label] = {seed: describe(run, x_test, y_test) for seed, run in sorted(runs_of(sweep, model).items())}
        print(f"{label}: {len(groups[label])} runs", file=sys.stderr)

    def accuracies(label: str) -> dict[int, float]:
        return {seed: r["test_accuracy"] for seed, r in groups[label].items()}

    def paired(a: str, b: str) -> dict[str, Any]:
        """b - a, paired by seed."""
        seeds = sorted(set(accuracies(a)) & set(accuracies(b)))
        return interval([accuracies(b)[s] - accuracies(a)[s] for s in seeds])

    ours, reference, recipe = "SmartMixed (ours)", "SmartMixed (reference preset)", "SmartMixed, faster recipe"
    means = {label: float(np.mean(list(accuracies(label).values()))) for label in groups if groups[label]}
    best_fixed = max((m for m in fixed_models if m in means), key=lambda m: means[m])
    target = means[ours] - TOLERANCE_PP / 100
    summary = {
        "means": means,
        "per_seed": {label: accuracies(label) for label in groups},
        "best_fixed": best_fixed,
        "ours_minus_best_fixed": paired(best_fixed, ours),
        "reference_minus_ours": paired(ours, reference),
        "recipe_minus_ours": paired(ours, recipe),
        "recipe_target": target,
        "recipe_meets_target": means[recipe] >= target,
        "epochs": {label: sorted({r["epochs_run"] for r in groups[label].values()}) for label in groups},
        "phase1_epochs": {label: [groups[label][s]["phase1_epochs"] for s in sorted(groups[label])] for label in (ours, reference, recipe)},
        "selected_epochs": {label: [groups[label][s]["selected"]["epoch"] for s in sorted(groups[label])] for label in groups},
        "test_loss": {label: {name: float(np.mean([r["test_loss"][name] for r in groups[label].values()]))
                              for name in ("cross-entropy", "double-softmax")} for label in groups},
        "choice_shares": {label: mean_shares(list(groups[label].values())) for label in (ours, reference, recipe)},
    }

    lines = [
        "# The published protocol, run to the end",
        "",
        f"Architecture {reference_config['hidden']}, lr {reference_config['lr']:g}, batch {reference_config['batch_size']}, "
        f"clip {reference_config['clip']:g}, tau {reference_config['tau']:g}, {reference_config['epochs']} epochs with the switch "
        f"after epoch {reference_config['transition_epoch']}; {len(data.y_train)} training, {len(data.y_val)} validation and "
        f"{len(data.y_test)} test images. Each run keeps its lowest-validation-loss epoch (as the authors' code does).",
        "",
        "## Test accuracy per seed",
        "",
        "| run | epochs | " + " | ".join(f"seed {s}" for s in sorted(groups[ours])) + " | mean | epoch kept (per seed) |",
        "| --- | --- | " + " | ".join("---" for _ in groups[ours]) + " | --- | --- |",
    ]
    for label in groups:
        seeds = sorted(groups[ours])
        cells = [pct(accuracies(label).get(s)) for s in seeds]
        lines.append(f"| {label} | {','.join(map(str, summary['epochs'][label]))} | " + " | ".join(cells)
                     + f" | **{pct(means.get(label))}** | {', '.join(map(str, summary['selected_epochs'][label]))} |")
    lines += [
        "",
        "## Paired differences (by seed, 95% t interval)",
        "",
        f"- SmartMixed (ours) minus the best fixed activation ({best_fixed}): {interval_text(summary['ours_minus_best_fixed'])}",
        f"- reference preset minus ours: {interval_text(summary['reference_minus_ours'])}",
        f"- faster recipe minus the 400-epoch SmartMixed: {interval_text(summary['recipe_minus_ours'])}; target: a mean of at "
        f"least {pct(target)} (400-epoch mean less {TOLERANCE_PP} pp): {'met' if summary['recipe_meets_target'] else 'missed'}",
        f"- phase-1 epochs per seed: " + "; ".join(f"{label}: {', '.join(map(str, v))}" for label, v in summary["phase1_epochs"].items()),
        "",
        "## Test loss of the kept models under both losses (mean over seeds)",
        "",
        "| run | cross-entropy on the logits | double softmax |",
        "| --- | --- | --- |",
    ]
    for label in groups:
        loss = summary["test_loss"][label]
        lines.append(f"| {label} | {loss['cross-entropy']:.4f} | {loss['double-softmax']:.4f} |")
    lines += ["", "## Phase-1 choices per hidden layer (share of neurons, mean over seeds)", ""]
    seen = {n for label in summary["choice_shares"] for layer in summary["choice_shares"][label] for n in layer}
    names = [n for n in DEFAULT_POOL if n in seen] + sorted(seen - set(DEFAULT_POOL))
    lines += ["| run | layer | " + " | ".join(names) + " |", "| --- | --- | " + " | ".join("---" for _ in names) + " |"]
    for label, layers in summary["choice_shares"].items():
        for i, shares in enumerate(layers):
            lines.append(f"| {label} | {i + 1} | " + " | ".join(f"{100 * shares.get(n, 0.0):.1f}%" for n in names) + " |")

    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "comparison.md", "\n".join(lines) + "\n")
    write_json(args.out / "comparison.json", summary)
    curves = {"SmartMixed, 400 epochs at lr 1e-4": list(groups[ours].values()), recipe: list(groups[recipe].values())}
    plot_recipes(curves, args.figures / "recipe_vs_protocol.png", target=target,
                 title=f"400 epochs at lr 1e-4 against the faster recipe ({', '.join(map(str, summary['epochs'][recipe]))} epochs)")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
