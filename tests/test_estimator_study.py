"""The estimator study (experiments/estimator_study.py): quick mode writes every file; the measures
say what the estimators are (the score function unbiased, straight-through pointing the right way);
the table has a row per network, estimator and tau; part 2 is skipped without MNIST; one-line errors."""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from smartmixed_np.core.estimators import ESTIMATORS, exact_expected_gradient
from smartmixed_np.errors import UserError
from smartmixed_np.experiments import estimator_study as study
from smartmixed_np.experiments.estimator_study import (
    QUICK_TAUS, SMALL_NETWORKS, StudyError, add_study_parser, estimator_draws, gradient_quality, paired_difference,
    run_study, run_study_command, small_network,
)

REAL_DATA = os.environ.get("SMARTMIXED_DATA")
PART1_FILES = {"small_networks.csv", "small_networks_per_seed.csv", "small_networks.png", "study.json", "report.md"}
MNIST_FILES = {"mnist_runs.csv", "mnist_paired.csv"}


def _no_mnist(monkeypatch, tmp_path):
    """No MNIST anywhere the study looks: an empty SMARTMIXED_DATA and an empty download cache."""
    (tmp_path / "empty-data").mkdir()
    monkeypatch.setenv("SMARTMIXED_DATA", str(tmp_path / "empty-data"))
    monkeypatch.setenv("SMARTMIXED_CACHE", str(tmp_path / "empty-cache"))


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    """A quick study without part 2 (two seeds), shared by the tests that read its files."""
    out = tmp_path_factory.mktemp("study") / "estimators"
    return run_study(out, quick=True, seeds=(0, 1), mnist=False, quiet=True), out


def test_quick_study_writes_every_file_and_a_row_per_network_estimator_and_tau(quick_study):
    result, out = quick_study
    assert {p.name for p in out.iterdir()} == PART1_FILES
    assert set(result["files"]) == PART1_FILES
    rows = _read_csv(out / "small_networks.csv")
    keys = [(r["network"], r["estimator"], float(r["tau"])) for r in rows]
    assert keys == [(n.name, e, t) for n in SMALL_NETWORKS for e in ESTIMATORS for t in QUICK_TAUS]
    assert all(r["seeds"] == "2" and r["draws"] == str(study.QUICK_DRAWS) for r in rows)
    assert len(_read_csv(out / "small_networks_per_seed.csv")) == 2 * len(rows)
    saved = json.loads((out / "study.json").read_text(encoding="utf-8"))
    assert saved["seeds"] == [0, 1] and saved["quick"] is True and saved["mnist"] is None
    assert saved["command"].startswith("smartmixed study-estimators --out ") and "--quick" in saved["command"]
    assert saved["small_networks"]["exact_depends_on_tau"] is False
    assert (out / "small_networks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "does not depend on tau" in report and "Part 2" in report and "Skipped" in report


def test_the_measures_say_what_the_estimators_are(quick_study):
    """The score function is unbiased: its bias is at the noise floor and tiny beside its variance;
    straight-through points the right way on average (positive cosine) and costs less variance."""
    for row in quick_study[0]["small_networks"]["per_seed"]:  # MSE = bias^2 + variance, per seed
        assert row["mse"] == pytest.approx(row["bias"] ** 2 + row["variance"] * (1 - 1 / row["draws"]), rel=1e-9)
    rows = quick_study[0]["small_networks"]["rows"]
    for row in rows:
        assert all(np.isfinite(row[m]) for m in study.MEASURES), row
        if row["estimator"] == "score":
            assert row["bias"] < 2.5 * row["bias_floor"], row
            assert row["bias"] ** 2 < 0.05 * row["variance"], row
        if row["estimator"] == "st":
            assert row["cosine"] > 0.2, row
            score = next(r for r in rows if r["estimator"] == "score" and r["network"] == row["network"] and r["tau"] == row["tau"])
            assert row["variance"] < score["variance"]


def test_gradient_quality_on_known_samples():
    exact = np.array([3.0, 4.0])  # norm 5
    samples = np.array([[3.0, 4.0], [3.0, 6.0], [3.0, 2.0]])  # mean = exact; deviations 0, 2, 2
    quality = gradient_quality(samples, exact)
    assert quality["bias"] == 0.0
    assert quality["variance"] == pytest.approx((0 + 4 + 4) / 2 / 25)
    assert quality["mse"] == pytest.approx((0 + 4 + 4) / 3 / 25)
    assert quality["bias_floor"] == pytest.approx(np.sqrt(quality["variance"] / 3))
    cosines = [1.0, (9 + 24) / (5 * np.sqrt(45)), (9 + 8) / (5 * np.sqrt(13))]
    assert quality["cosine"] == pytest.approx(np.mean(cosines))
    assert gradient_quality(np.array([[0.0, 0.0], [6.0, 8.0]]), exact)["cosine"] == pytest.approx(0.5)  # a zero draw counts 0
    with pytest.raises(ValueError):
        gradient_quality(samples[:1], exact)


def test_draws_are_those_of_the_network_and_replay_with_the_seed():
    spec = SMALL_NETWORKS[0]
    model, x, labels = small_network(spec, 0, "reinmax")
    first = estimator_draws(model, x, labels, 5, warmup=0)
    exact = exact_expected_gradient(model, x, labels)
    assert first.shape == (5, sum(g.size for g in exact.gradients.values()))
    again = estimator_draws(small_network(spec, 0, "reinmax")[0], x, labels, 5, warmup=0)
    np.testing.assert_array_equal(first, again)
    other = small_network(spec, 1, "reinmax")[0]
    assert not np.array_equal(estimator_draws(other, x, labels, 5, warmup=0), first)
    # Every estimator's network has the same weights and logits for a seed.
    st_model = small_network(spec, 0, "st")[0]
    for name, value in st_model.parameters().items():
        np.testing.assert_array_equal(value, model.parameters()[name])


def test_paired_difference_is_the_t_interval_of_the_differences():
    scipy_stats = pytest.importorskip("scipy.stats")
    got = paired_difference([0.9, 0.8, 0.95], [0.85, 0.82, 0.9])
    diffs = np.array([0.05, -0.02, 0.05])
    half = scipy_stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / np.sqrt(3)
    assert got["mean"] == pytest.approx(diffs.mean()) and got["low"] == pytest.approx(diffs.mean() - half)
    assert got["high"] == pytest.approx(diffs.mean() + half)
    assert (got["wins"], got["ties"], got["losses"]) == (2, 0, 1)
    single = paired_difference([0.9], [0.8])
    assert single["low"] is None and single["mean"] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        paired_difference([0.9], [0.8, 0.7])


def test_without_mnist_part_two_is_skipped_with_the_reason(tmp_path, monkeypatch, capsys):
    _no_mnist(monkeypatch, tmp_path)
    result = run_study(tmp_path / "out", quick=True, seeds=(0,), draws=3)
    assert result["mnist"] is None and "no MNIST found" in result["mnist_skipped"]
    assert "--data-dir" in result["mnist_skipped"] and "SMARTMIXED_DATA" in result["mnist_skipped"]
    assert "part 2 skipped: no MNIST found" in capsys.readouterr().err
    assert {p.name for p in (tmp_path / "out").iterdir()} == PART1_FILES
    assert "no MNIST found" in (tmp_path / "out" / "report.md").read_text(encoding="utf-8")


@pytest.mark.skipif(not REAL_DATA, reason="set SMARTMIXED_DATA to a folder holding mnist/ for the MNIST part")
def test_quick_study_with_mnist_runs_each_estimator_and_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "QUICK_MNIST_RECIPE", study.MnistRecipe(hidden=(16,), train_limit=600, epochs=2, transition_epoch=1))
    result = run_study(tmp_path / "out", quick=True, data_dir=REAL_DATA, seeds=(0, 1), draws=3, quiet=True)
    assert {p.name for p in (tmp_path / "out").iterdir()} == PART1_FILES | MNIST_FILES
    runs = _read_csv(tmp_path / "out" / "mnist_runs.csv")
    assert [(r["estimator"], r["seed"]) for r in runs] == [(e, s) for s in "01" for e in ESTIMATORS]
    assert all(0.0 < float(r["test_accuracy"]) <= 1.0 for r in runs)
    paired = _read_csv(tmp_path / "out" / "mnist_paired.csv")
    assert [(r["estimator"], r["measure"]) for r in paired] == [
        (e, m) for e in ESTIMATORS[1:] for m in ("test_accuracy", "phase1_test_accuracy")]
    assert all(r["low"] and r["high"] and float(r["low"]) <= float(r["mean"]) <= float(r["high"]) for r in paired)
    assert result["mnist"]["recipe"]["train_limit"] == 600
    assert not any(p.name.startswith("estimator-study-") for p in tmp_path.iterdir())  # the run folders are gone
    assert "paired" in (tmp_path / "out" / "report.md").read_text(encoding="utf-8").lower()


def _parse(argv):
    parser = argparse.ArgumentParser(prog="smartmixed")
    commands = parser.add_subparsers(dest="command")
    add_study_parser(commands)
    return parser.parse_args(argv)


def test_the_command_runs_and_prints_the_answer(tmp_path, monkeypatch, capsys):
    _no_mnist(monkeypatch, tmp_path)
    monkeypatch.setattr(study, "QUICK_DRAWS", 3)
    args = _parse(["study-estimators", "--out", str(tmp_path / "cmd"), "--quick", "--seeds", "0"])
    assert args.seeds == [0] and args.quick and args.data_dir is None
    assert run_study_command(args) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "Part 2 did not run: no answer on MNIST." and printed[1].startswith("report: ")
    assert (tmp_path / "cmd" / "report.md").is_file()


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "file.txt", "exists and is not a folder"),
    (lambda tmp: tmp / "file.txt" / "below", "cannot create the output folder"),
])
def test_a_bad_output_path_is_one_line(tmp_path, make, message):
    (tmp_path / "file.txt").write_text("not a folder")
    args = _parse(["study-estimators", "--out", str(make(tmp_path)), "--quick", "--seeds", "0"])
    with pytest.raises(StudyError, match=message) as info:
        run_study_command(args)
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)


def test_bad_seeds_draws_and_data_folder_are_one_line(tmp_path):
    for kwargs, message in [(dict(seeds=()), "at least one"), (dict(seeds=(0, 0)), "distinct"),
                            (dict(seeds=(-1,)), "non-negative"), (dict(draws=1), "at least 2")]:
        with pytest.raises(StudyError, match=message) as info:
            run_study(tmp_path / "x", quick=True, **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="does not exist") as info:
        run_study(tmp_path / "x", quick=True, data_dir=tmp_path / "nowhere")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x").exists()  # a refusal writes nothing
    with pytest.raises(SystemExit):
        _parse(["study-estimators", "--out", "x", "--seeds", "a,b"])


def test_the_cli_wires_the_command_when_it_does(tmp_path, capsys):
    from smartmixed_np import cli

    if "study-estimators" not in cli.build_parser().commands:
        pytest.skip("smartmixed study-estimators is not wired into cli.py yet")
    (tmp_path / "file.txt").write_text("x")
    assert cli.main(["study-estimators", "--out", str(tmp_path / "file.txt"), "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists and is not a folder" in err[0]
