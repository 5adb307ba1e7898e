"""Tests for smartmixed_np/plots.py: every figure is a real, non-blank PNG, written atomically."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
from matplotlib.image import imread

from smartmixed_np.experiments import plots
from smartmixed_np.core.activations import DEFAULT_POOL

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
POOL = list(DEFAULT_POOL)
WIDTHS = (40, 12)
EPOCHS, TRANSITION = 6, 3


def make_history(shares: bool = True) -> list[dict]:
    """6 epochs, phase 1 up to epoch 3; phase-1 rows carry share columns for 2 hidden layers."""
    rng = np.random.default_rng(0)
    history = []
    for epoch in range(1, EPOCHS + 1):
        phase = 1 if epoch <= TRANSITION else 2
        row = {
            "epoch": epoch, "phase": phase, "time_s": 0.5 * epoch,
            "train_loss": 2.0 / epoch, "train_acc": 1 - 0.5 / epoch,
            "val_loss": 2.2 / epoch + 0.05 * epoch, "val_acc": 1 - 0.6 / epoch,
            "lr": 1e-3, "tau": 1.0 / epoch if phase == 1 else None,
        }
        if shares:
            for layer in range(len(WIDTHS)):
                values = rng.dirichlet(np.ones(len(POOL)))
                for name, value in zip(POOL, values):
                    row[f"share.L{layer}.{name}"] = float(value) if phase == 1 else None
        history.append(row)
    return history


def as_csv_strings(history: list[dict]) -> list[dict]:
    """The history as csv.DictReader gives it back: every value a string, None as ""."""
    keys = list(dict.fromkeys(k for row in history for k in row))
    return [{k: "" if row.get(k) is None else str(row[k]) for k in keys} for row in history]


def make_choices(seed: int = 1) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [list(rng.choice(POOL, size=width)) for width in WIDTHS]


def make_confusion(num_classes: int = 4) -> np.ndarray:
    rng = np.random.default_rng(2)
    counts = rng.integers(0, 6, size=(num_classes, num_classes))
    counts[np.diag_indices(num_classes)] += 40
    return counts


def assert_png(path, min_side: int = 150) -> np.ndarray:
    """``path`` is a complete, readable, non-blank PNG and its folder holds no temp files."""
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) >= min_side
    assert image[..., :3].std() > 0.02  # not a blank canvas
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".part")]
    return image


# --------------------------------------------------------------------------- helpers
@pytest.mark.parametrize(
    "value, expected",
    [(1, 1.0), (0.25, 0.25), ("0.5", 0.5), (" 3 ", 3.0), ("1e-3", 1e-3), (np.float32(2.0), 2.0)],
)
def test_num_converts_numbers_and_numeric_strings(value, expected):
    assert plots._num(value) == pytest.approx(expected)


@pytest.mark.parametrize("value", [None, "", "  ", "None", "nan", "abc", float("nan")])
def test_num_maps_missing_values_to_nan(value):
    assert math.isnan(plots._num(value))


def test_builtin_colours_are_fixed_and_user_names_get_distinct_stable_colours():
    colors = plots.activation_colors(POOL + ["my_act", "other_act"])
    assert [colors[n] for n in POOL] == [plots.ACTIVATION_COLORS[n] for n in POOL]
    assert len(set(colors.values())) == len(colors)
    assert plots.activation_color("my_act") == plots.activation_color("my_act")
    assert plots.activation_colors(["my_act"])["my_act"] == plots.activation_color("my_act")


def test_each_model_has_one_colour():
    colors = plots.model_colors(["SmartMixed", "ReLU", "Leaky ReLU", "elu", "relu", "my model", "other model"])
    assert colors["SmartMixed"] == plots.MODEL_COLORS["smartmixed"] == plots.SMARTMIXED_COLOR
    assert colors["ReLU"] == colors["relu"] == plots.ACTIVATION_COLORS["relu"]
    assert colors["Leaky ReLU"] == plots.ACTIVATION_COLORS["leaky_relu"]
    assert colors["elu"] == plots.ACTIVATION_COLORS["elu"]
    assert len({colors[k] for k in ("SmartMixed", "ReLU", "Leaky ReLU", "elu", "my model", "other model")}) == 6
    assert plots.SMARTMIXED_COLOR not in plots.ACTIVATION_COLORS.values()
    assert plots.model_color("SmartMixed") == plots.SMARTMIXED_COLOR
    assert plots.model_color("ReLU") == plots.activation_color("relu")


def _pixels_of(image: np.ndarray, color: str) -> int:
    """How many pixels of ``image`` (H, W, 3+) have exactly ``color`` (8-bit)."""
    from matplotlib.colors import to_rgb

    rgb = np.round(image[..., :3] * 255).astype(int)
    return int(np.all(rgb == np.round(np.array(to_rgb(color)) * 255).astype(int), axis=-1).sum())


def test_comparison_draws_each_model_in_its_colour(tmp_path):
    runs = {
        "SmartMixed": {"history": make_history(), "test_accuracy": 0.91, "transition_epoch": TRANSITION},
        "ReLU": {"history": make_history(shares=False), "test_accuracy": 0.89, "transition_epoch": None},
    }
    image = imread(plots.plot_comparison(runs, tmp_path / "comparison.png"))
    assert _pixels_of(image, plots.SMARTMIXED_COLOR) > 500  # a bar and a line each
    assert _pixels_of(image, plots.ACTIVATION_COLORS["relu"]) > 500
    assert _pixels_of(image, plots.ACTIVATION_COLORS["leaky_relu"]) == 0  # no colour by position


def test_plots_module_does_not_import_pyplot():
    code = "import sys, smartmixed_np.experiments.plots; print('matplotlib.pyplot' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# --------------------------------------------------------------------------- figures
def test_plot_curves(tmp_path):
    path = tmp_path / "curves.png"
    assert plots.plot_curves(make_history(), path, transition_epoch=TRANSITION, title="curves") == path
    image = assert_png(path)
    assert image.shape[1] > image.shape[0]  # two panels side by side


def test_plot_curves_accepts_csv_strings_and_missing_columns(tmp_path):
    history = as_csv_strings(make_history())
    for row in history:
        row["val_loss"] = row["val_acc"] = ""  # no validation set
        del row["phase"]
    assert_png(plots.plot_curves(history, tmp_path / "curves.png", transition_epoch=str(TRANSITION)))


def test_plot_curves_single_epoch_and_overwrite(tmp_path):
    path = tmp_path / "curves.png"
    path.write_bytes(b"old")
    plots.plot_curves(make_history()[:1], path)
    assert_png(path)


def test_plot_curves_rejects_empty_history(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plots.plot_curves([], tmp_path / "curves.png")
    assert not list(tmp_path.iterdir())


def test_plot_confusion(tmp_path):
    path = plots.plot_confusion(make_confusion(4).tolist(), tmp_path / "confusion.png", class_names=list("abcd"))
    assert_png(path)


def test_plot_confusion_many_classes_and_an_empty_row(tmp_path):
    counts = make_confusion(25)
    counts[3] = 0  # a class absent from the test set
    assert_png(plots.plot_confusion(counts, tmp_path / "confusion.png"))


@pytest.mark.parametrize("bad", [np.zeros((2, 3)), np.zeros((0, 0)), -np.ones((2, 2))])
def test_plot_confusion_rejects_bad_matrices(tmp_path, bad):
    with pytest.raises(ValueError):
        plots.plot_confusion(bad, tmp_path / "confusion.png")


def test_plot_activation_shares(tmp_path):
    assert_png(plots.plot_activation_shares(make_choices(), POOL, tmp_path / "shares.png"))


def test_plot_activation_shares_accepts_indices_and_unknown_names(tmp_path):
    choices = [np.array([0, 1, 1, 2, 5]), ["relu", "my_act", "my_act"]]
    assert_png(plots.plot_activation_shares(choices, POOL, tmp_path / "shares.png"))


def test_plot_share_evolution(tmp_path):
    assert_png(plots.plot_share_evolution(make_history(), POOL, tmp_path / "evolution.png"))


def test_plot_share_evolution_from_csv_strings(tmp_path):
    assert_png(plots.plot_share_evolution(as_csv_strings(make_history()), POOL, tmp_path / "evolution.png"))


def test_plot_share_evolution_needs_share_columns(tmp_path):
    with pytest.raises(ValueError, match="share"):
        plots.plot_share_evolution(make_history(shares=False), POOL, tmp_path / "evolution.png")


def test_plot_choice_map(tmp_path):
    assert_png(plots.plot_choice_map(make_choices(), POOL, tmp_path / "map.png"), min_side=120)


def test_plot_choice_map_wraps_wide_layers(tmp_path):
    rng = np.random.default_rng(3)
    choices = [list(rng.choice(POOL, size=width)) for width in (300, 64, 5)]
    image = assert_png(plots.plot_choice_map(choices, POOL, tmp_path / "map.png", width=64))
    assert image.shape[1] > image.shape[0]


def test_plot_comparison(tmp_path):
    baseline = make_history(shares=False)
    for row in baseline:
        row["phase"], row["val_acc"] = 1, row["val_acc"] - 0.02
    runs = {
        "SmartMixed": {"history": make_history(), "test_accuracy": 0.91, "transition_epoch": TRANSITION},
        "ReLU": {"history": as_csv_strings(baseline), "test_accuracy": "0.89", "transition_epoch": None},
        "no test": {"history": [], "test_accuracy": None, "transition_epoch": None},
    }
    assert_png(plots.plot_comparison(runs, tmp_path / "comparison.png"))


def _recipe_run(epochs, switch, peak, seed):
    rng = np.random.default_rng(seed)
    history = [{"epoch": e, "phase": 1 if e <= switch else 2, "val_acc": peak - 0.3 / e + 0.002 * rng.standard_normal()}
               for e in range(1, epochs + 1)]
    return {"history": history, "test_accuracy": peak - 0.001 * seed}


def test_plot_recipes_draws_seeds_of_unequal_lengths_on_a_log_axis(tmp_path):
    recipes = {
        "400 epochs": [_recipe_run(400, 50, 0.965, s) for s in range(3)],
        "fast": [_recipe_run(40, 12 + s, 0.968, s) for s in range(2)] + [_recipe_run(33, 20, 0.966, 9)],
    }
    image = assert_png(plots.plot_recipes(recipes, tmp_path / "recipes.png", target=0.963))
    assert image.shape[1] > image.shape[0]
    assert_png(plots.plot_recipes({"short": [_recipe_run(5, 2, 0.9, 0)]}, tmp_path / "short.png"))


@pytest.mark.parametrize("recipes", [{}, {"none": []}])
def test_plot_recipes_refuses_nothing_to_plot(tmp_path, recipes):
    with pytest.raises(ValueError, match="nothing to plot"):
        plots.plot_recipes(recipes, tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


def test_figures_can_be_drawn_from_threads(tmp_path):
    errors = []

    def draw(k):
        try:
            plots.plot_curves(make_history(), tmp_path / f"curves{k}.png")
        except Exception as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=draw, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for k in range(3):
        assert_png(tmp_path / f"curves{k}.png")


# --------------------------------------------------------------------------- run folders
def write_run(run_dir, history, metrics, choices=None, model=None):
    run_dir.mkdir()
    keys = list(dict.fromkeys(k for row in history for k in row))
    with open(run_dir / "history.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "model.json").write_text(json.dumps(model or {}))
    if choices is not None:
        with open(run_dir / "choices.csv", "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(["layer", "neuron", "activation"])
            rows = [(layer, neuron, name) for layer, names in enumerate(choices) for neuron, name in enumerate(names)]
            writer.writerows(reversed(rows))  # order must come from the columns, not the file
    return run_dir


def test_write_run_figures_smartmixed(tmp_path):
    metrics = {
        "test": {"confusion_matrix": make_confusion(3).tolist(), "accuracy": 0.9},
        "transition_epoch": TRANSITION, "model": "smartmixed",
    }
    run_dir = write_run(tmp_path / "run", make_history(), metrics, make_choices(), {"kind": "smartmixed", "pool": POOL})
    written = plots.write_run_figures(run_dir)
    names = ["curves.png", "confusion.png", "activation_shares.png", "share_evolution.png", "choice_map.png"]
    assert [p.name for p in written] == names
    for path in written:
        assert path.parent == run_dir / "figures"
        assert_png(path, min_side=120)


def test_run_folders_choices_read_back_in_neuron_order(tmp_path):
    """The figures read choices.csv through the run folder's reader, in the neurons' order."""
    from smartmixed_np.experiments.runfolder import read_choices

    run_dir = write_run(tmp_path / "run", make_history(), {"model": "smartmixed"}, make_choices())
    assert read_choices(run_dir) == make_choices()


def test_write_run_figures_baseline(tmp_path):
    metrics = {"test": {"confusion_matrix": make_confusion(3).tolist(), "accuracy": 0.9},
               "transition_epoch": None, "model": "relu"}
    run_dir = write_run(tmp_path / "baseline", make_history(shares=False), metrics, model={"kind": "fixed"})
    written = plots.write_run_figures(run_dir)
    assert [p.name for p in written] == ["curves.png", "confusion.png"]
    for path in written:
        assert_png(path)


def test_write_run_figures_with_only_a_history(tmp_path):
    run_dir = tmp_path / "bare"
    write_run(run_dir, make_history(shares=False), {})
    (run_dir / "metrics.json").unlink()
    (run_dir / "model.json").unlink()
    assert [p.name for p in plots.write_run_figures(run_dir)] == ["curves.png"]


def test_write_run_figures_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        plots.write_run_figures(tmp_path / "nope")


@pytest.mark.parametrize("hidden", [(32,), (8,), (64, 32), (512, 256, 128)], ids=lambda h: "-".join(map(str, h)))
def test_run_figures_draw_without_any_warning(tmp_path, hidden):
    """No layout warning leaks into a training run's output, whatever the widths (1 to 3 layers).

    A single layer of 8 to 128 neurons used to make constrained layout collapse the
    choice map's axes ("axes sizes collapsed to zero"), printed in the middle of a
    `smartmixed train --hidden 32` run.
    """
    rng = np.random.default_rng(4)
    history = make_history(shares=False)
    for row in history:
        for layer in range(len(hidden)):
            values = rng.dirichlet(np.ones(len(POOL)))
            for name, value in zip(POOL, values):
                row[f"share.L{layer}.{name}"] = float(value) if row["phase"] == 1 else None
    choices = [list(rng.choice(POOL, size=width)) for width in hidden]
    metrics = {"test": {"confusion_matrix": make_confusion(3).tolist(), "accuracy": 0.9},
               "transition_epoch": TRANSITION, "model": "smartmixed"}
    run_dir = write_run(tmp_path / "run", history, metrics, choices, {"kind": "smartmixed", "pool": POOL})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        written = plots.write_run_figures(run_dir)
    assert len(written) == 5
    image = assert_png(run_dir / "figures" / "choice_map.png", min_side=60)
    assert image.shape[1] > image.shape[0]


def test_choice_map_cells_are_square(tmp_path):
    """The hand-made layout keeps the map at its size: cells are square, the map not squashed."""
    rng = np.random.default_rng(5)
    path = plots.plot_choice_map([list(rng.choice(POOL, size=32))], POOL, tmp_path / "map.png", dpi=100)
    image = imread(path)[..., :3]
    # Columns and rows of the map: pixels that are neither white nor near-white text.
    coloured = (image.max(axis=2) - image.min(axis=2)) > 0.25
    rows = np.flatnonzero(coloured.sum(axis=1) > 0.5 * coloured.shape[1] * 0.5)
    cols = np.flatnonzero(coloured[rows].any(axis=0))
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert width / height == pytest.approx(32, rel=0.08)
