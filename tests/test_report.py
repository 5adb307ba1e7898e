"""The sweep report end to end (smartmixed_np/report/): on a trained little sweep, summary.csv, the
numbers recomputed from it, preferences, weight statistics, figures, the CLI.

The statistics themselves (t quantiles, intervals, p-values, frozen against the former
code and compared with SciPy) are tested in tests/test_report_stats.py."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from smartmixed_np.experiments.checkpoint import load_model
from smartmixed_np.cli import main
from smartmixed_np.report import SUMMARY_COLUMNS, read_summary, t_quantile, write_report
from smartmixed_np.experiments.sweep import run_sweep
from smartmixed_np.experiments.train import CHECKPOINT, TrainConfig

TINY = dict(dataset="synth-digits", train_limit=300, epochs=3, transition_epoch=2, lr=1e-2, batch_size=32)
ARCHS = {1: (16,), 3: (16, 12, 8)}
MODELS = ["relu", "tanh", "smartmixed"]
SEEDS = [0, 1]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A finished little sweep (12 runs, one of which fails) and its report."""
    out = tmp_path_factory.mktemp("report") / "sweep"
    broken = out / "arch1" / "tanh" / "seed1"
    broken.mkdir(parents=True)
    (broken / CHECKPOINT).write_bytes(b"garbage")
    run_sweep(out, ARCHS, MODELS, SEEDS, TrainConfig(**TINY), workers=2, quiet=True)
    paths = write_report(out)
    return out, paths, json.loads(paths["report_json"].read_text())


def test_summary_has_one_row_per_run(sweep):
    out, paths, _ = sweep
    with open(out / "summary.csv", newline="") as file:
        reader = csv.DictReader(file)
        assert tuple(reader.fieldnames) == SUMMARY_COLUMNS
        raw = list(reader)
    assert len(raw) == len(ARCHS) * len(MODELS) * len(SEEDS)
    rows = read_summary(out / "summary.csv")
    assert [(r["arch"], r["model"], r["seed"]) for r in rows][:3] == [("1", "relu", 0), ("1", "relu", 1), ("1", "tanh", 0)]
    failed = [r for r in rows if r["status"] != "done"]
    assert len(failed) == 1 and failed[0]["status"] == "failed" and failed[0]["run_dir"] == "arch1/tanh/seed1"
    assert failed[0]["error"].startswith("CheckpointError") and failed[0]["test_accuracy"] is None
    for row in rows:
        assert row["hidden"] == "-".join(map(str, ARCHS[int(row["arch"])]))
        if row["status"] != "done":
            continue
        metrics = json.loads((out / row["run_dir"] / "metrics.json").read_text())
        assert row["test_accuracy"] == metrics["test"]["accuracy"] and row["val_loss"] == metrics["val"]["loss"]
        assert row["best_epoch_phase2"] == metrics["best_epoch"]["phase2"] and row["epochs_run"] == 3
        assert row["wall_time_s"] > 0 and row["train_time_s"] > 0
        if row["model"] == "smartmixed":
            assert row["phase1_test_accuracy"] == metrics["phase1"]["test_accuracy"] and 1 <= row["best_epoch_phase1"] <= 2
        else:
            assert row["phase1_test_accuracy"] is None and row["best_epoch_phase1"] is None


def _recompute(summary_path: Path) -> dict:
    """The report's main numbers, from summary.csv alone, written independently of smartmixed_np.report."""
    groups: dict = {}
    with open(summary_path, newline="") as file:
        for row in csv.DictReader(file):
            if row["status"] == "done":
                groups.setdefault(row["arch"], {}).setdefault(row["model"], {})[int(row["seed"])] = row
    means, stds, ranks = {}, {}, {}
    for arch, models in groups.items():
        for model, seeds in models.items():
            values = [float(r["test_accuracy"]) for r in seeds.values()]
            means[(arch, model)] = statistics.fmean(values)
            stds[(arch, model)] = statistics.stdev(values) if len(values) > 1 else None
        ordered = sorted(models, key=lambda m: -means[(arch, m)])
        for model in models:
            ranks[(arch, model)] = 1 + sum(means[(arch, other)] > means[(arch, model)] for other in ordered)
    all_models = {m for _, m in ranks}
    mrr = {m: statistics.fmean(1 / r for (a, mm), r in ranks.items() if mm == m) for m in all_models}
    firsts = {m: sum(1 for (a, mm), r in ranks.items() if mm == m and r == 1) for m in all_models}
    versus = {}
    for arch, models in groups.items():
        best = max((m for m in models if m != "smartmixed"), key=lambda m: means[(arch, m)])
        diffs = [float(models["smartmixed"][s]["test_accuracy"]) - float(models[best][s]["test_accuracy"])
                 for s in sorted(models["smartmixed"]) if s in models[best]]
        versus[arch] = (best, diffs)
    phases = {arch: [float(r["test_accuracy"]) - float(r["phase1_test_accuracy"]) for r in models["smartmixed"].values()]
              for arch, models in groups.items()}
    return {"means": means, "stds": stds, "ranks": ranks, "mrr": mrr, "firsts": firsts, "versus": versus, "phases": phases}


def test_statistics_match_a_recomputation_from_summary_csv(sweep):
    out, paths, report = sweep
    expected = _recompute(out / "summary.csv")
    table = {(e["arch"], e["model"]): e for e in report["accuracy"]}
    assert set(table) == set(expected["means"])
    assert table[("1", "tanh")]["n"] == 1 and table[("1", "relu")]["n"] == 2  # the failed run is left out
    markdown = paths["report_md"].read_text()
    for key, mean in expected["means"].items():
        assert table[key]["mean"] == pytest.approx(mean, abs=1e-12)
        if expected["stds"][key] is None:
            assert table[key]["std"] is None
        else:
            assert table[key]["std"] == pytest.approx(expected["stds"][key], abs=1e-12)
        assert f"{100 * mean:.2f}%" in markdown
    assert {(a, m): r for a, ranks in report["ranks"].items() for m, r in ranks.items()} == expected["ranks"]
    for model, summary in report["models"].items():
        assert summary["mrr"] == pytest.approx(expected["mrr"][model], abs=1e-12)
        assert summary["first_places"] == expected["firsts"][model]
        assert f"| {model} | {summary['mrr']:.3f} |" in markdown
    for entry in report["smartmixed_vs_best_fixed"]["per_arch"]:
        best, diffs = expected["versus"][entry["arch"]]
        assert entry["best_fixed"] == best and entry["pairs"] == len(diffs)
        assert (entry["wins"], entry["ties"], entry["losses"]) == (sum(d > 0 for d in diffs), sum(d == 0 for d in diffs), sum(d < 0 for d in diffs))
        assert entry["mean_difference"] == pytest.approx(statistics.fmean(diffs), abs=1e-12)
        if len(diffs) > 1:
            half = t_quantile(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
            assert entry["ci95_low"] == pytest.approx(statistics.fmean(diffs) - half, abs=1e-12)
        else:
            assert entry["ci95_low"] is None
    for entry in report["phase1_vs_phase2"]["per_arch"]:
        assert entry["mean_difference"] == pytest.approx(statistics.fmean(expected["phases"][entry["arch"]]), abs=1e-12)
    assert report["runs"] == {"total": 12, "by_status": {"done": 11, "failed": 1}}


def test_report_states_its_data_and_lists_failures(sweep):
    _, paths, report = sweep
    markdown = paths["report_md"].read_text()
    data_line = next(line for line in markdown.splitlines() if line.startswith("**Data and schedule.**"))
    for fact in ["synth-digits", "300 training", "train limit 300", "3 epochs", "phase 1 for 2", "lr 0.01", "batch 32"]:
        assert fact in data_line, fact
    assert report["data"]["dataset"] == "synth-digits" and report["data"]["epochs"] == "3"
    assert "## Runs without results" in markdown and "arch1/tanh/seed1 | failed | CheckpointError" in markdown
    for heading in ["## Test accuracy", "## Ranks", "## SmartMixed against the best fixed activation", "## Phase 1 against phase 2",
                    "## Layer-wise activation preferences", "## Weights between activation groups"]:
        assert heading in markdown


def test_layer_preferences_from_choices(sweep):
    out, paths, report = sweep
    preferences = report["layer_preferences"]
    pool = preferences["pool"]
    per_layer = {(e["arch"], e["layer"]): e for e in preferences["per_layer"]}
    assert sorted(per_layer) == [("1", 1), ("3", 1), ("3", 2), ("3", 3)]
    for (arch, layer), entry in per_layer.items():
        assert entry["runs"] == 2 and entry["width"] == ARCHS[int(arch)][layer - 1]
        assert sum(entry["shares"].values()) == pytest.approx(1.0)
        direct = []
        for seed in SEEDS:
            with open(out / f"arch{arch}" / "smartmixed" / f"seed{seed}" / "choices.csv", newline="") as file:
                names = [r["activation"] for r in csv.DictReader(file) if int(r["layer"]) == layer - 1]
            direct.append({n: names.count(n) / len(names) for n in pool})
        for name in pool:
            assert entry["shares"][name] == pytest.approx(np.mean([d[name] for d in direct]), abs=1e-12)
    depth = {e["depth"]: e for e in preferences["by_depth"]}
    assert {k: (v["runs"], v["layers"]) for k, v in depth.items()} == {"first": (2, 2), "middle": (2, 2), "last": (2, 2), "only": (2, 2)}
    assert depth["first"]["shares"] == pytest.approx(per_layer[("3", 1)]["shares"])
    assert depth["only"]["shares"] == pytest.approx(per_layer[("1", 1)]["shares"])
    with open(paths["layer_preferences_csv"], newline="") as file:
        assert len(list(csv.DictReader(file))) == 4
    assert "| first | 2 | 2 |" in paths["report_md"].read_text()


def test_weight_statistics_follow_the_saved_neuron_order(sweep):
    out, paths, report = sweep
    stats = {(e["from_layer"], e["from_activation"], e["to_activation"]): e
             for e in report["weight_statistics"]["per_layer_pair"] if e["arch"] == "3"}
    blocks: dict = {}
    for seed in SEEDS:
        run_dir = out / "arch3" / "smartmixed" / f"seed{seed}"
        model = load_model(run_dir)  # neurons in their phase-2 (grouped) order
        with open(run_dir / "choices.csv", newline="") as file:
            original = [r["activation"] for r in csv.DictReader(file) if r["layer"] == "0"]
        current = [model.activations[0].pool[k].name for k in model.activations[0].choices]
        pool_order = [activation.name for activation in model.activations[0].pool]
        # The saved phase-2 model holds its neurons grouped by activation, not in the original order.
        assert sorted(current) == sorted(original) and current == sorted(current, key=pool_order.index) != original
        for layer in range(2):
            sources = np.array([model.activations[layer].pool[k].name for k in model.activations[layer].choices])
            targets = np.array([model.activations[layer + 1].pool[k].name for k in model.activations[layer + 1].choices])
            weight = np.asarray(model.linears[layer + 1].W, dtype=np.float64)
            for a in set(sources):
                for b in set(targets):
                    blocks.setdefault((layer + 1, a, b), []).append(weight[np.ix_(targets == b, sources == a)].ravel())
    assert set(stats) == set(blocks)
    for key, parts in blocks.items():
        values = np.concatenate(parts)
        assert stats[key]["count"] == values.size
        assert stats[key]["mean"] == pytest.approx(values.mean(), abs=1e-9)
        assert stats[key]["median"] == pytest.approx(np.median(values), abs=1e-9)
        assert stats[key]["mean_abs"] == pytest.approx(np.abs(values).mean(), abs=1e-9)
    pooled = next(e for e in report["weight_statistics"]["per_arch"] if e["arch"] == "3")
    assert pooled["layer_pairs"] == 2 and pooled["runs"] == 2
    assert sum(c["count"] for c in pooled["cells"]) == 2 * (16 * 12 + 12 * 8)
    assert next(e for e in report["weight_statistics"]["per_arch"] if e["arch"] == "1")["cells"] == []
    with open(paths["weight_stats_csv"], newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(report["weight_statistics"]["per_layer_pair"]) + len(pooled["cells"])


def test_figures_are_png_files_referenced_by_the_report(sweep):
    from matplotlib.image import imread

    out, paths, report = sweep
    markdown = paths["report_md"].read_text()
    expected = {"accuracy.png", "smartmixed_vs_best_fixed.png", "phase1_vs_phase2.png", "layer_preferences.png",
                "depth_preferences.png", "weights_arch3.png"}
    assert set(report["figures"]) == expected
    for name, relative in report["figures"].items():
        path = out / relative
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        image = imread(path)
        assert image.shape[0] > 300 and image.shape[1] > 500, (name, image.shape)
        assert image[..., :3].std() > 0.05, name  # not a blank canvas
        assert f"]({relative})" in markdown, name
    assert not list(out.glob("**/.*.part"))


def test_report_command(sweep, tmp_path, capsys):
    out, _, report = sweep
    target = tmp_path / "elsewhere"
    assert main(["report", str(out), "--out", str(target)]) == 0
    assert "report written" in capsys.readouterr().out
    for name in ["summary.csv", "report.md", "report.json", "layer_preferences.csv", "depth_preferences.csv", "weight_stats.csv"]:
        assert (target / name).is_file(), name
    assert json.loads((target / "report.json").read_text())["accuracy"] == report["accuracy"]
    assert (target / "figures" / "accuracy.png").is_file()
    assert main(["report", str(tmp_path / "no-such")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no such folder" in err[0] and "no run folders found" in err[1]
