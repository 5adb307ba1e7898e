r"""The estimator study: how good is each phase-1 gradient estimator, and does it matter after phase 2?

``smartmixed study-estimators --out results/estimators [--quick] [--data-dir DIR]`` runs
:func:`run_study`, which has two parts.

**Part 1, small networks** (:func:`small_network_study`). For each network of
:data:`SMALL_NETWORKS` (float64, a fixed synthetic batch, one network per seed, logits
drawn away from uniform), the truth is the exact gradient of the expected loss,
$g^\star = \nabla_\alpha \mathbb{E}_s[L(s)]$, by enumerating every joint selection
(:func:`~smartmixed_np.core.estimators.exact_expected_gradient`). It does **not** depend
on $\tau$: the Gumbel-max selection is drawn from $\mathrm{softmax}(\alpha)$ whatever
the temperature. The estimators' draws do: straight-through, ReinMax and Gumbel-Rao
use $\tau$ in their backwards; the score function does not (its line is flat up to
noise). For each estimator and $\tau$, $R$ draws $g_1, \dots, g_R$ of the logits'
gradient (one forward and backward of the network each, all phase-1 layers
concatenated) give, with $\bar g$ their mean (:func:`gradient_quality`):

* bias $= \lVert \bar g - g^\star \rVert / \lVert g^\star \rVert$;
* variance $= \frac{1}{R-1} \sum_r \lVert g_r - \bar g \rVert^2 / \lVert g^\star \rVert^2$;
* the bias floor $\sqrt{\mathrm{variance} / R}$: the bias an *unbiased* estimator
  shows from $R$ draws (its root mean square), so a bias near the floor is noise;
* mean cosine $\frac1R \sum_r \cos(g_r, g^\star)$;
* relative MSE $= \frac1R \sum_r \lVert g_r - g^\star \rVert^2 / \lVert g^\star \rVert^2$.

The score function's running-mean baseline is the one training uses; a few draws
before the measured ones (:data:`WARMUP_DRAWS`) let it settle, for every estimator.

**Part 2, MNIST** (:func:`mnist_study`). Short runs of the two-phase trainer with the
fast recipe's optimiser (Adam, lr 1e-3, batch 128, clip 1, tau 0.3, hard selection,
shared noise, phase 2 from the phase-1 weights; see :data:`MNIST_RECIPE`), one per
estimator and seed, on the same split; the run folders go to a temporary folder that
is removed. Per estimator, the paired difference to straight-through over seeds
(same seed, same initial weights and data order), with a Student-t interval
(:func:`paired_difference`), for the test accuracy after phase 2 and after phase 1.
Without MNIST (no ``data_dir``, nothing under ``$SMARTMIXED_DATA`` or in the download
cache; nothing is downloaded) part 2 is skipped and the report says so.

Output (:func:`run_study`): ``small_networks.csv`` (one row per network, estimator and
$\tau$, means over seeds), ``small_networks_per_seed.csv``, ``small_networks.png``,
``mnist_runs.csv``, ``mnist_paired.csv``, ``report.md`` and ``study.json`` (strict JSON:
every number, the seeds and the command).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .. import __version__
from ..backend import to_host
from ..core.estimators import DEFAULT_SAMPLES, ESTIMATORS, exact_expected_gradient
from ..core.losses import softmax_cross_entropy
from ..errors import DataError, UserError
from ..fileio import write_json, write_text
from ..nn.mlp import MLP

__all__ = [
    "StudyError", "SmallNetwork", "MnistRecipe", "SMALL_NETWORKS", "TAUS", "QUICK_TAUS", "DRAWS", "QUICK_DRAWS",
    "MNIST_RECIPE", "QUICK_MNIST_RECIPE", "ESTIMATOR_LABELS", "small_network", "estimator_draws", "gradient_quality",
    "small_network_study", "mean_over_seeds", "plot_small_networks", "paired_difference", "mnist_study",
    "study_markdown", "run_study", "add_study_parser", "run_study_command",
]


class StudyError(UserError, ValueError):
    """The study cannot run as asked (an unusable output folder, bad seeds)."""


@dataclass(frozen=True)
class SmallNetwork:
    """A small network of part 1: its layer sizes (input, hidden..., classes) and candidate pool."""

    name: str
    sizes: tuple[int, ...]
    pool: tuple[str, ...] | None = None  # None: the default pool


#: Part 1's networks: the default six candidates on one hidden layer of 4 (6^4 = 1,296
#: joint selections), and two hidden layers of 6 and 4 over three candidates (3^10 = 59,049).
SMALL_NETWORKS = (
    SmallNetwork("6-4-3", (6, 4, 3)),
    SmallNetwork("8-6-4-3", (8, 6, 4, 3), ("relu", "tanh", "elu")),
)
TAUS = (0.1, 0.2, 0.3, 0.5, 1.0, 2.0)
QUICK_TAUS = (0.3, 1.0)
DRAWS = 2000
QUICK_DRAWS = 200
#: Draws taken and discarded before the measured ones (the score function's baseline settles).
WARMUP_DRAWS = 20
#: Examples in part 1's fixed synthetic batch, and the seed it is drawn with.
BATCH = 16
BATCH_SEED = 12345
ESTIMATOR_LABELS = {"st": "straight-through", "reinmax": "ReinMax", "gumbel_rao": "Gumbel-Rao", "score": "score function"}


@dataclass(frozen=True)
class MnistRecipe:
    """Part 2's training options (the rest are :class:`~smartmixed_np.experiments.train.TrainConfig`'s defaults)."""

    hidden: tuple[int, ...] = (256, 128)
    train_limit: int | None = None
    epochs: int = 20
    transition_epoch: int = 5
    lr: float = 1e-3
    batch_size: int = 128
    tau: float = 0.3
    estimator_samples: int = DEFAULT_SAMPLES
    extra: dict = field(default_factory=dict)


#: The committed fast recipe (results/mnist-fast) on its architecture 4 (256-128): 20 epochs, phase 1
#: for 5, lr 1e-3, every training image at hand; straight-through's runs are that sweep's SmartMixed runs.
MNIST_RECIPE = MnistRecipe()
QUICK_MNIST_RECIPE = MnistRecipe(hidden=(32,), train_limit=1000, epochs=2, transition_epoch=1)


# --------------------------------------------------------------------------- part 1: small networks
def small_network(spec: SmallNetwork, seed: int, estimator: str = "st", *, tau: float = 0.3,
                  estimator_samples: int = DEFAULT_SAMPLES) -> tuple[MLP, np.ndarray, np.ndarray]:
    """Part 1's float64 network ``spec`` for ``seed`` with ``estimator``, and the fixed batch.

    The weights and the noise stream come from ``seed`` (the same for every estimator);
    the selection logits are redrawn as standard normals (seeded by ``seed``), so that
    the expected loss is not flat in them. The batch does not depend on ``seed``.

    Returns:
        ``(model, x, labels)``: x (BATCH, sizes[0]) float64, labels (BATCH,) int64.
    """
    model = MLP(list(spec.sizes), "smartmixed", pool=spec.pool, tau=tau, dtype="float64", seed=seed,
                estimator=estimator, estimator_samples=estimator_samples)
    rng = np.random.default_rng([seed, 1])
    for act in model.activations:
        act.logits[...] = model.backend.asarray(rng.standard_normal(tuple(act.logits.shape)))
    batch = np.random.default_rng(BATCH_SEED)
    x = batch.standard_normal((BATCH, spec.sizes[0]))
    labels = batch.integers(0, spec.sizes[-1], size=BATCH)
    return model, x, labels


def _logit_names(model: MLP) -> list[str]:
    return [name for name in model.gradients() if name.endswith(".logits")]


def estimator_draws(model: MLP, x: Any, labels: Any, draws: int, *, warmup: int = WARMUP_DRAWS) -> np.ndarray:
    """``draws`` independent draws of the model's estimate of the logits' gradient.

    Each draw is one training forward (fresh Gumbel noise from the model's generator)
    and one backward of the mean cross-entropy; the phase-1 layers' ``dlogits`` are
    flattened and concatenated in layer order. ``warmup`` draws are taken first and dropped.

    Returns:
        (draws, P) host float64, P the number of selection logits.
    """
    names = _logit_names(model)
    out = None
    for r in range(warmup + draws):
        loss, dlogits = softmax_cross_entropy(model.forward(x, train=True), labels)
        model.backward(dlogits, loss=loss)
        if r < warmup:
            continue
        grads = model.gradients()
        row = np.concatenate([to_host(grads[name]).ravel() for name in names]).astype(np.float64)
        if out is None:
            out = np.empty((draws, row.size))
        out[r - warmup] = row
    return out


def gradient_quality(samples: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    """Bias, variance, bias floor, mean cosine and MSE of ``samples`` (R, P) against ``exact`` (P,).

    All relative to $\\lVert$ exact $\\rVert$ (squared for variance and MSE); see the module docstring.
    """
    samples = np.asarray(samples, dtype=np.float64)
    exact = np.asarray(exact, dtype=np.float64).ravel()
    draws = samples.shape[0]
    scale = float(np.linalg.norm(exact))
    if draws < 2 or scale == 0.0:
        raise ValueError(f"need at least 2 draws and a nonzero exact gradient (got {draws} draws, norm {scale})")
    mean = samples.mean(axis=0)
    variance = float(np.sum((samples - mean) ** 2) / (draws - 1)) / scale**2
    norms = np.linalg.norm(samples, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    cosines = np.where(norms > 0, samples @ exact / (safe * scale), 0.0)
    return {
        "bias": float(np.linalg.norm(mean - exact)) / scale,
        "bias_floor": math.sqrt(variance / draws),
        "variance": variance,
        "cosine": float(cosines.mean()),
        "mse": float(np.mean(np.sum((samples - exact) ** 2, axis=1))) / scale**2,
    }


def small_network_study(
    networks: Sequence[SmallNetwork] = SMALL_NETWORKS,
    taus: Sequence[float] = TAUS,
    seeds: Sequence[int] = (0, 1, 2),
    draws: int = DRAWS,
    estimators: Sequence[str] = ESTIMATORS,
    *,
    estimator_samples: int = DEFAULT_SAMPLES,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Part 1: every estimator's draws against the enumerated exact gradient, per network, seed and tau.

    Returns:
        ``{"per_seed": rows, "rows": means over seeds, "exact": per network and seed
        (expected loss, gradient norm, evaluations)}``; a row holds ``network``, ``seed``
        (per-seed rows only), ``estimator``, ``tau``, ``draws`` and the measures of
        :func:`gradient_quality`.
    """
    per_seed: list[dict[str, Any]] = []
    exact_info: list[dict[str, Any]] = []
    for spec in networks:
        for seed in seeds:
            started = time.perf_counter()
            model, x, labels = small_network(spec, seed)
            truth = exact_expected_gradient(model, x, labels)
            exact = np.concatenate([truth.gradients[name].ravel() for name in _logit_names(model)])
            exact_info.append({"network": spec.name, "seed": int(seed), "expected_loss": truth.loss,
                               "gradient_norm": float(np.linalg.norm(exact)), "evaluations": truth.evaluations})
            for estimator in estimators:
                model, x, labels = small_network(spec, seed, estimator, estimator_samples=estimator_samples)
                for tau in taus:
                    model.set_tau(tau)
                    quality = gradient_quality(estimator_draws(model, x, labels, draws), exact)
                    per_seed.append({"network": spec.name, "seed": int(seed), "estimator": estimator,
                                     "tau": float(tau), "draws": int(draws), **quality})
            if say:
                say(f"small network {spec.name} seed {seed}: {truth.evaluations:,} selections enumerated, "
                    f"{len(estimators) * len(taus)} x {draws} draws ({time.perf_counter() - started:.1f} s)")
    return {"per_seed": per_seed, "rows": mean_over_seeds(per_seed), "exact": exact_info}


MEASURES = ("bias", "bias_floor", "variance", "cosine", "mse")


def mean_over_seeds(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (network, estimator, tau), in first-seen order: the mean of each measure over the seeds."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["network"], row["estimator"], row["tau"]), []).append(row)
    out = []
    for (network, estimator, tau), members in groups.items():
        entry: dict[str, Any] = {"network": network, "estimator": estimator, "tau": tau, "seeds": len(members),
                                 "draws": members[0]["draws"]}
        for measure in MEASURES:
            entry[measure] = float(np.mean([m[measure] for m in members]))
        out.append(entry)
    return out


def _csv(header: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "" if not math.isfinite(value) else f"{value:.6g}"
        return "" if value is None else str(value)

    lines = [",".join(header)]
    lines += [",".join(cell(row.get(name)) for name in header) for row in rows]
    return "\n".join(lines) + "\n"


SMALL_HEADER = ("network", "estimator", "tau", "seeds", "draws") + MEASURES
SMALL_PER_SEED_HEADER = ("network", "seed", "estimator", "tau", "draws") + MEASURES
ESTIMATOR_STYLES = {"st": ("tab:blue", "o"), "reinmax": ("tab:orange", "s"), "gumbel_rao": ("tab:green", "^"),
                    "score": ("tab:red", "D")}


def plot_small_networks(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Bias, variance and mean cosine against tau (log x), one line per estimator, one row of panels per network."""
    from matplotlib.ticker import NullLocator

    from .plots import new_figure, save_png

    networks = list(dict.fromkeys(row["network"] for row in rows))
    fig = new_figure(13.0, 3.4 * len(networks))
    axes = fig.subplots(len(networks), 3, squeeze=False)
    panels = (("bias", "bias  |mean - exact| / |exact|", True), ("variance", "variance / |exact|^2", True),
              ("cosine", "mean cosine to the exact gradient", False))
    for axes_row, network in zip(axes, networks):
        for ax, (measure, label, log_y) in zip(axes_row, panels):
            for estimator in dict.fromkeys(row["estimator"] for row in rows):
                line = [row for row in rows if row["network"] == network and row["estimator"] == estimator]
                color, marker = ESTIMATOR_STYLES.get(estimator, ("k", "x"))
                ax.plot([r["tau"] for r in line], [r[measure] for r in line], marker=marker, color=color,
                        label=ESTIMATOR_LABELS.get(estimator, estimator))
                if measure == "bias":
                    ax.plot([r["tau"] for r in line], [r["bias_floor"] for r in line], ":", color=color, lw=1)
            ax.set_xscale("log")
            taus = sorted({row["tau"] for row in rows})
            ax.set_xticks(taus, [f"{t:g}" for t in taus])
            ax.xaxis.set_minor_locator(NullLocator())  # the log axis's minor labels would crowd the taus
            if log_y:
                ax.set_yscale("log")
            ax.set_xlabel("tau")
            ax.set_title(f"{network}: {label}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
        axes_row[2].axhline(0.0, color="k", lw=0.5)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=9,
               title="dotted lines: each estimator's bias floor, sqrt(variance / draws)", title_fontsize=8)
    return save_png(fig, path, dpi=110)


# --------------------------------------------------------------------------- part 2: MNIST
def paired_difference(values: Sequence[float], reference: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """The paired differences ``values[i] - reference[i]``: mean, sample std and Student-t interval.

    Returns:
        ``{"n", "mean", "std", "low", "high", "wins", "ties", "losses"}``; ``std``, ``low``
        and ``high`` are None below two pairs. Needs SciPy for the t quantile.
    """
    if len(values) != len(reference):
        raise ValueError(f"paired values need equal lengths, got {len(values)} and {len(reference)}")
    diffs = np.asarray(values, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    n = int(diffs.size)
    out: dict[str, Any] = {"n": n, "mean": float(diffs.mean()) if n else None, "std": None, "low": None, "high": None,
                           "wins": int(np.sum(diffs > 0)), "ties": int(np.sum(diffs == 0)), "losses": int(np.sum(diffs < 0))}
    if n >= 2:
        try:
            from scipy import stats
        except ImportError:
            raise StudyError("the paired intervals need SciPy: pip install 'smartmixed_np[report]'") from None
        std = float(diffs.std(ddof=1))
        half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
        out.update(std=std, low=out["mean"] - half, high=out["mean"] + half)
    return out


def _find_mnist(data_dir: str | os.PathLike | None) -> tuple[Path | None, str]:
    """MNIST's folder (never downloading), or None and why. A ``data_dir`` given but unusable is an error."""
    from ..data.datasets import find_dataset_folder

    if data_dir is not None:
        return find_dataset_folder("mnist", data_dir, download=False), f"--data-dir {data_dir}"
    try:
        return find_dataset_folder("mnist", None, download=False), "$SMARTMIXED_DATA or the download cache"
    except DataError as err:
        return None, str(err)


def mnist_study(
    data_dir: str | os.PathLike,
    recipe: MnistRecipe = MNIST_RECIPE,
    seeds: Sequence[int] = (0, 1, 2),
    estimators: Sequence[str] = ESTIMATORS,
    *,
    work_dir: str | os.PathLike | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Part 2: one two-phase MNIST run per estimator and seed; paired differences to straight-through.

    Args:
        data_dir: MNIST's folder (or a parent holding ``mnist/``).
        work_dir: where the run folders go (default: a temporary folder, removed at the end).

    Returns:
        ``{"recipe", "data", "seeds", "runs": [...], "paired": [...]}``: the image counts of
        the split; per run the estimator, seed, test
        accuracy after phase 2 and after phase 1, the phase kept and the training time;
        per estimator other than ST the :func:`paired_difference` of both accuracies.
    """
    from .runfolder import read_config
    from .train import TrainConfig, train

    runs: list[dict[str, Any]] = []
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="estimator-study-", dir=work_dir) as scratch:
        for seed in seeds:
            for estimator in estimators:
                config = TrainConfig(
                    dataset="mnist", data_dir=str(data_dir), train_limit=recipe.train_limit, hidden=recipe.hidden,
                    epochs=recipe.epochs, transition_epoch=recipe.transition_epoch, lr=recipe.lr,
                    batch_size=recipe.batch_size, tau=recipe.tau, estimator=estimator,
                    estimator_samples=recipe.estimator_samples, seed=int(seed),
                    out=str(Path(scratch) / f"{estimator}-seed{seed}"), quiet=True, progress=False, **recipe.extra,
                )
                with contextlib.redirect_stdout(io.StringIO()):  # the trainer's epoch lines; ours go to stderr
                    result = train(config)
                metrics = result.metrics
                if not sizes:  # the same split for every run: the counts, never the data folder's path
                    data = read_config(result.run_dir)["data"]
                    sizes = {key: int(data[key]) for key in ("train", "val", "test")}
                run = {"estimator": estimator, "seed": int(seed), "test_accuracy": metrics["test"]["accuracy"],
                       "phase1_test_accuracy": metrics.get("phase1", {}).get("test_accuracy"),
                       "selected_phase": metrics["selected"]["phase"], "train_time_s": metrics["train_time_s"]}
                runs.append(run)
                if say:
                    say(f"mnist {estimator} seed {seed}: test {100 * run['test_accuracy']:.2f}% after phase 2, "
                        f"{100 * run['phase1_test_accuracy']:.2f}% after phase 1 ({run['train_time_s']:.1f} s)")
    paired = []
    by = {(r["estimator"], r["seed"]): r for r in runs}
    for estimator in estimators:
        if estimator == "st" or "st" not in estimators:
            continue
        entry: dict[str, Any] = {"estimator": estimator, "versus": "st"}
        for key in ("test_accuracy", "phase1_test_accuracy"):
            entry[key] = paired_difference([by[(estimator, s)][key] for s in seeds], [by[("st", s)][key] for s in seeds])
        paired.append(entry)
    recipe_dict = asdict(recipe)
    recipe_dict.update(recipe_dict.pop("extra"))
    return {"recipe": recipe_dict, "data": sizes, "seeds": [int(s) for s in seeds], "runs": runs, "paired": paired}


# --------------------------------------------------------------------------- the report
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"


def _pp(value: Any) -> str:
    return "n/a" if value is None else f"{100 * value:+.2f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _small_networks_section(part1: Mapping[str, Any]) -> list[str]:
    rows = part1["rows"]
    lines = ["## Part 1: each estimator against the exact gradient of the expected loss", ""]
    lines.append(
        "Small float64 networks on a fixed synthetic batch of "
        f"{BATCH} examples; the truth is the exact gradient of the expected loss over the selections, by enumerating "
        "every joint selection. It does not depend on tau (the selection is drawn from softmax(alpha) whatever "
        "the temperature); straight-through, ReinMax and Gumbel-Rao use tau in their backwards, the score function "
        "does not. Per network, seed, estimator and tau: "
        f"{rows[0]['draws'] if rows else 0} draws. Bias = |mean - exact| / |exact|; the bias floor "
        "sqrt(variance / draws) is what an unbiased estimator shows from that many draws; variance = mean squared "
        "deviation / |exact|^2; cosine = mean cosine of a draw to the exact gradient; MSE = mean squared distance "
        "to the exact gradient / |exact|^2. Means over the seeds; `small_networks_per_seed.csv` has each seed.")
    lines.append("")
    info = {}
    for entry in part1["exact"]:
        info.setdefault(entry["network"], []).append(entry)
    for network, entries in info.items():
        lines.append(f"- {network}: {entries[0]['evaluations']:,} joint selections enumerated per seed; "
                     f"|exact| = {', '.join(_fmt(e['gradient_norm']) for e in entries)} (seeds "
                     f"{', '.join(str(e['seed']) for e in entries)}).")
    lines.append("")
    lines += _table(["network", "estimator", "tau", "bias", "bias floor", "variance", "cosine", "MSE"],
                    [[r["network"], r["estimator"], f"{r['tau']:g}", _fmt(r["bias"]), _fmt(r["bias_floor"]),
                      _fmt(r["variance"]), _fmt(r["cosine"]), _fmt(r["mse"])] for r in rows])
    lines += ["", "![bias, variance and cosine against tau](small_networks.png)", ""]
    return lines


def _mnist_section(part2: Mapping[str, Any] | None, skipped: str | None) -> list[str]:
    lines = ["## Part 2: short MNIST runs, each estimator in phase 1, then phase 2", ""]
    if part2 is None:
        return lines + [f"Skipped: {skipped}", ""]
    recipe = part2["recipe"]
    limit = "no train limit" if recipe["train_limit"] is None else f"train limit {recipe['train_limit']:,}"
    sizes = part2.get("data", {})
    counts = (f" ({sizes['train']:,} training, {sizes['val']:,} validation and {sizes['test']:,} test images)"
              if sizes else "")
    lines.append(
        f"Hidden {'-'.join(str(h) for h in recipe['hidden'])}, MNIST with {limit}{counts}, "
        f"90/10 stratified validation split (split seed 0); {recipe['epochs']} epochs, "
        f"phase 1 for {recipe['transition_epoch']}, then phase 2 from the phase-1 weights; Adam, lr {recipe['lr']:g}, "
        f"batch {recipe['batch_size']}, gradient-norm clip 1, tau {recipe['tau']:g}, hard selection, shared noise; "
        f"Gumbel-Rao with M = {recipe['estimator_samples']}. Seeds {', '.join(str(s) for s in part2['seeds'])}: "
        "a seed fixes the initial weights, the data order and the noise stream, so runs with the same seed differ "
        "only by their estimator. The kept model is the one of the best validation loss.")
    lines.append("")
    estimators = list(dict.fromkeys(r["estimator"] for r in part2["runs"]))
    rows = []
    for estimator in estimators:
        mine = [r for r in part2["runs"] if r["estimator"] == estimator]
        acc = [r["test_accuracy"] for r in mine]
        p1 = [r["phase1_test_accuracy"] for r in mine]
        rows.append([estimator, " ".join(f"{100 * a:.2f}" for a in acc), f"{100 * np.mean(acc):.2f}",
                     " ".join(f"{100 * a:.2f}" for a in p1), f"{100 * np.mean(p1):.2f}",
                     f"{np.mean([r['train_time_s'] for r in mine]):.1f}"])
    lines += _table(["estimator", "test % after phase 2 (per seed)", "mean", "test % after phase 1 (per seed)",
                     "mean", "training s (this machine)"], rows)
    lines += ["", "Paired differences to straight-through (percentage points, same seed), mean and 95% t interval "
              "over the seeds:", ""]
    rows = []
    for entry in part2["paired"]:
        final, first = entry["test_accuracy"], entry["phase1_test_accuracy"]
        rows.append([entry["estimator"], _pp(final["mean"]), f"[{_pp(final['low'])}, {_pp(final['high'])}]",
                     f"{final['wins']}/{final['ties']}/{final['losses']}", _pp(first["mean"]),
                     f"[{_pp(first['low'])}, {_pp(first['high'])}]"])
    lines += _table(["estimator", "after phase 2", "95% interval", "wins/ties/losses", "after phase 1", "95% interval"], rows)
    lines.append("")
    return lines


def _answer(part2: Mapping[str, Any] | None) -> str:
    if part2 is None:
        return "Part 2 did not run: no answer on MNIST."
    better = [e["estimator"] for e in part2["paired"] if e["test_accuracy"]["low"] is not None and e["test_accuracy"]["low"] > 0]
    worse = [e["estimator"] for e in part2["paired"] if e["test_accuracy"]["high"] is not None and e["test_accuracy"]["high"] < 0]
    if better:
        text = f"After phase 2, {', '.join(better)} beat{'s' if len(better) == 1 else ''} straight-through: the 95% interval lies above 0."
    else:
        text = "After phase 2 no estimator beats straight-through: every paired 95% interval includes 0 or lies below it."
    if worse:
        text += f" {', '.join(worse)} trail{'s' if len(worse) == 1 else ''} it (interval below 0)."
    return text


def study_markdown(study: Mapping[str, Any]) -> str:
    """``report.md`` of a study (the dictionary :func:`run_study` writes as ``study.json``)."""
    lines = ["# How good is the straight-through gradient?", ""]
    lines.append(f"Command: `{study['command']}` (smartmixed_np {study['version']}; seeds "
                 f"{', '.join(str(s) for s in study['seeds'])}{'; quick mode' if study['quick'] else ''}). "
                 "Every number below is in `study.json`; the tables are also CSV files beside this one.")
    lines += ["", f"**Answer.** {_answer(study['mnist'])}", ""]
    lines += _small_networks_section(study["small_networks"])
    lines += _mnist_section(study["mnist"], study["mnist_skipped"])
    return "\n".join(lines)


# --------------------------------------------------------------------------- the whole study
def _prepare_out(out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise StudyError(f"{out}: exists and is not a folder (give a folder for the study's files)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StudyError(f"{out}: cannot create the output folder ({err.strerror or err})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise StudyError(f"{out}: the output folder is not writable")
    return out


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0 for s in seeds):
        raise StudyError(f"seeds must be non-negative integers, at least one, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"seeds must be distinct, got {seeds!r}")
    return [int(s) for s in seeds]


def _command(out_dir: str | os.PathLike, quick: bool, data_dir: Any, seeds: Sequence[int]) -> str:
    parts = ["smartmixed", "study-estimators", "--out", str(out_dir)]
    if quick:
        parts.append("--quick")
    if data_dir is not None:
        parts += ["--data-dir", str(data_dir)]
    if list(seeds) != [0, 1, 2]:
        parts += ["--seeds", ",".join(str(s) for s in seeds)]
    return " ".join(parts)


def run_study(
    out_dir: str | os.PathLike,
    *,
    quick: bool = False,
    data_dir: str | os.PathLike | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    draws: int | None = None,
    mnist: bool = True,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run both parts of the study and write its files into ``out_dir``.

    Args:
        out_dir: the output folder (created; files of an earlier study there are replaced).
        quick: few draws (:data:`QUICK_DRAWS`), two temperatures, a tiny MNIST recipe
            (:data:`QUICK_MNIST_RECIPE`): a smoke test in seconds, not a result.
        data_dir: MNIST's folder (default: ``$SMARTMIXED_DATA``, then the download cache;
            without MNIST part 2 is skipped). Given and unusable: a one-line DataError.
        seeds: the network seeds of part 1 and the training seeds of part 2.
        draws: draws per (network, seed, estimator, tau) instead of the mode's default.
        mnist: False skips part 2.
        quiet: no progress lines on stderr.

    Returns:
        The study (as written to ``study.json``) with ``"files"``: name -> path.

    Raises:
        StudyError, DataError, WriteError: user errors, one line each.
    """
    seeds = _check_seeds(seeds)
    if draws is not None and (isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 2):
        raise StudyError(f"draws must be an integer of at least 2, got {draws!r}")
    mnist_dir, where = _find_mnist(data_dir) if mnist else (None, "part 2 not asked for (mnist=False)")
    out = _prepare_out(out_dir)

    def say(message: str) -> None:
        if not quiet:
            print(f"study-estimators: {message}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    part1 = small_network_study(SMALL_NETWORKS, QUICK_TAUS if quick else TAUS, seeds,
                                draws or (QUICK_DRAWS if quick else DRAWS), say=say)
    part1_s = time.perf_counter() - started
    part2, skipped = None, None
    if mnist_dir is None:
        skipped = (f"no MNIST found ({where}); nothing was downloaded. Point the study at the four IDX files "
                   "with --data-dir DIR or SMARTMIXED_DATA." if mnist else where)
        say(f"part 2 skipped: {skipped}")
    else:
        started2 = time.perf_counter()
        part2 = mnist_study(mnist_dir, QUICK_MNIST_RECIPE if quick else MNIST_RECIPE, seeds, say=say)
        part2["seconds"] = time.perf_counter() - started2
    study = {
        "format": "smartmixed_np.estimator_study/1",
        "version": __version__,
        "command": _command(out_dir, quick, data_dir, seeds),
        "quick": bool(quick),
        "seeds": seeds,
        "estimators": list(ESTIMATORS),
        "estimator_labels": ESTIMATOR_LABELS,
        "machine": {"python": platform.python_version(), "numpy": np.__version__, "cpu_count": os.cpu_count()},
        "small_networks": {
            "networks": [{"name": n.name, "sizes": list(n.sizes), "pool": list(n.pool) if n.pool else "default"}
                         for n in SMALL_NETWORKS],
            "batch": BATCH, "batch_seed": BATCH_SEED, "warmup_draws": WARMUP_DRAWS, "dtype": "float64",
            "taus": list(QUICK_TAUS if quick else TAUS), "seconds": part1_s,
            "exact_depends_on_tau": False,
            **part1,
        },
        "mnist": part2,
        "mnist_skipped": skipped,
        "answer": _answer(part2),
    }
    files = {
        "small_networks.csv": write_text(out / "small_networks.csv", _csv(SMALL_HEADER, part1["rows"])),
        "small_networks_per_seed.csv": write_text(out / "small_networks_per_seed.csv",
                                                  _csv(SMALL_PER_SEED_HEADER, part1["per_seed"])),
        "small_networks.png": plot_small_networks(part1["rows"], out / "small_networks.png"),
    }
    if part2 is not None:
        files["mnist_runs.csv"] = write_text(out / "mnist_runs.csv", _csv(
            ("estimator", "seed", "test_accuracy", "phase1_test_accuracy", "selected_phase", "train_time_s"), part2["runs"]))
        flat = [{"estimator": e["estimator"], "versus": e["versus"], "measure": key, **e[key]}
                for e in part2["paired"] for key in ("test_accuracy", "phase1_test_accuracy")]
        files["mnist_paired.csv"] = write_text(out / "mnist_paired.csv", _csv(
            ("estimator", "versus", "measure", "n", "mean", "std", "low", "high", "wins", "ties", "losses"), flat))
    files["study.json"] = write_json(out / "study.json", study)
    files["report.md"] = write_text(out / "report.md", study_markdown(study))
    say(f"wrote {', '.join(files)} to {out}")
    return {**study, "files": files}


# --------------------------------------------------------------------------- the command
def _seeds_arg(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative integers, got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative integers, got {text!r}")
    return seeds


def _path_arg(text: str) -> str:
    if not text or not text.isprintable():
        raise argparse.ArgumentTypeError(f"expected a printable path, got {text!r}")
    return text


def add_study_parser(commands: Any) -> argparse.ArgumentParser:
    """Add the ``study-estimators`` subcommand to ``commands`` (an argparse subparsers object); return it."""
    parser = commands.add_parser(
        "study-estimators",
        help="measure the phase-1 gradient estimators against the exact gradient, and on short MNIST runs",
        description="Part 1: on small float64 networks, draw each phase-1 gradient estimator (straight-through, "
        "ReinMax, Gumbel-Rao, score function) many times per temperature and measure its bias, variance and cosine "
        "against the exact gradient of the expected loss (all selections enumerated). Part 2: short two-phase MNIST "
        "runs with each estimator and seed, paired against straight-through (skipped without MNIST; nothing is "
        "downloaded). Writes report.md, study.json, CSV tables and a figure.",
        epilog="Examples:\n"
        "  smartmixed study-estimators --out results/estimators\n"
        "  smartmixed study-estimators --out /tmp/study --quick --data-dir ~/data\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, type=_path_arg, metavar="DIR", help="the folder for the study's files")
    parser.add_argument("--quick", action="store_true", help="few draws, two temperatures, tiny MNIST runs (a smoke test)")
    parser.add_argument("--data-dir", type=_path_arg, metavar="DIR", help="MNIST's folder (default: $SMARTMIXED_DATA)")
    parser.add_argument("--seeds", type=_seeds_arg, default=[0, 1, 2], metavar="S1,S2,...",
                        help="network seeds of part 1 and training seeds of part 2 (default: 0,1,2)")
    return parser


def run_study_command(args: argparse.Namespace) -> int:
    """Run ``smartmixed study-estimators`` from parsed ``args``; print where the report is. Returns 0."""
    study = run_study(args.out, quick=args.quick, data_dir=args.data_dir, seeds=args.seeds)
    print(study["answer"])
    print(f"report: {study['files']['report.md']}")
    return 0
