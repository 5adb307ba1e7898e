"""Draw figures/overview.png, the README's picture of SmartMixed at a glance.

Run from the repository root:  python figures/make_overview.py

It trains a small SmartMixed network and a ReLU baseline on the generated
synth-digits data (offline, about half a minute on two cores) and shows: the six
candidate activations; one layer's selection probabilities after phase 1 (each
neuron's choice is its argmax); the same neurons regrouped into contiguous
activation groups for phase 2; and validation accuracy through both phases.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from smartmixed_np import DEFAULT_POOL, get_activation, to_host
from smartmixed_np.experiments.checkpoint import load_arrays
from smartmixed_np.fileio import atomic_writer
from smartmixed_np.core.phase1 import gumbel_softmax_weights
from smartmixed_np.experiments.plots import activation_color, model_color
from smartmixed_np.experiments.train import TrainConfig, train

OUT = Path(__file__).resolve().parent / "overview.png"


def main() -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(dataset="synth-digits", hidden=(64, 32), lr=2e-3, epochs=12, batch_size=128, seed=0, quiet=True, progress=False)
        smart = train(TrainConfig(model="smartmixed", transition_epoch=4, out=f"{tmp}/smart", **common))
        relu = train(TrainConfig(model="relu", out=f"{tmp}/relu", **common))
        arrays, _ = load_arrays(Path(tmp) / "smart" / "checkpoint.npz")
        logits = arrays["best_phase1/activations.0.logits"][:32]  # the first 32 neurons of layer 1

    fig = Figure(figsize=(15, 4.2), layout="constrained")
    axes = fig.subplots(1, 4, width_ratios=[1.1, 1.2, 1.0, 1.2])

    ax = axes[0]
    x = np.linspace(-3, 3, 301)
    for name in DEFAULT_POOL:
        ax.plot(x, get_activation(name).forward(x), color=activation_color(name), label=name, lw=2)
    ax.set_title("the candidate pool")
    ax.set_xlabel("z")
    ax.set_ylim(-2, 3)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")

    ax = axes[1]
    probs = gumbel_softmax_weights(logits, None, 0.3)  # selection probabilities at tau = 0.3
    ax.imshow(probs.T, aspect="auto", cmap="Greys", vmin=0, vmax=1)
    choice = probs.argmax(axis=1)
    for n, k in enumerate(choice):
        ax.add_patch(_box(n, k, activation_color(DEFAULT_POOL[k])))
    ax.set_yticks(range(len(DEFAULT_POOL)), DEFAULT_POOL, fontsize=8)
    ax.set_xlabel("neuron (layer 1)")
    ax.set_title("phase 1: each neuron's selection\nsoftmax(logits / tau); box = argmax")

    ax = axes[2]
    order = np.argsort(choice, kind="stable")
    for row, (label, sequence) in enumerate([("as learned", choice), ("regrouped", choice[order])]):
        for n, k in enumerate(sequence):
            ax.add_patch(_cell(n, 1 - row, activation_color(DEFAULT_POOL[k])))
    ax.set_xlim(0, len(choice))
    ax.set_ylim(-0.1, 2.1)
    ax.set_yticks([1.5, 0.5], ["frozen choice", "contiguous\ngroups"])
    ax.set_xlabel("neuron")
    ax.set_title("phase 2: freeze, then permute\nneurons into slices (same function)")

    ax = axes[3]
    for label, result in [("SmartMixed", smart), ("ReLU", relu)]:
        epochs = [row["epoch"] for row in result.history]
        # model_color: the colours of the demo's comparison figure and of the report
        ax.plot(epochs, [100 * row["val_acc"] for row in result.history], marker="o", ms=3, color=model_color(label),
                label=f"{label} (test {100 * result.metrics['test']['accuracy']:.1f}%)")
    ax.axvline(4.5, color="0.3", ls="--", lw=1)
    ax.text(4.6, ax.get_ylim()[1] - 2, "phase 2 \u2192", fontsize=8, color="0.3", va="top")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("synth-digits, 64-32 hidden units")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")

    with atomic_writer(OUT, "wb") as file:
        fig.savefig(file, format="png", dpi=130)
    return OUT


def _box(n, k, color):
    from matplotlib.patches import Rectangle

    return Rectangle((n - 0.5, k - 0.5), 1, 1, fill=False, edgecolor=color, lw=2)


def _cell(n, row, color):
    from matplotlib.patches import Rectangle

    return Rectangle((n, row + 0.05), 1, 0.9, facecolor=color, edgecolor="white", lw=0.5)


if __name__ == "__main__":
    print(main(), file=sys.stderr)
