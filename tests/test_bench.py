"""The benchmark suite runs end to end in quick mode and reports every figure (no timing assertions)."""

from __future__ import annotations

import json
import math

import pytest

from smartmixed_np.experiments.bench import run_benchmarks

RATIO_KEYS = [
    "phase2_vs_relu_step_ratio",
    "phase2_vs_relu_infer_ratio",
    "phase2_masked_vs_relu_step_ratio",
    "relu_vs_floor_step_ratio",
    "phase1_vs_relu_step_ratio",
]
TORCH_RATIO_KEYS = ["phase1_vs_torch_step_ratio", "phase2_vs_torch_step_ratio", "relu_vs_torch_step_ratio"]
EPOCH_RATIO_KEYS = ["epoch_throughput_vs_torch_ratio", "phase1_epoch_throughput_vs_torch_ratio"]


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SMARTMIXED_DATA", raising=False)  # no data: the epoch benchmark is skipped
        report = run_benchmarks(
            quick=True, data_dir=None, json_path=str(folder / "bench.json"), figure_path=str(folder / "bench.png"),
            sizes=[20, 12, 8, 4], batch=8,
        )
    return report, folder


def test_quick_run_writes_json_and_figure(quick_report):
    report, folder = quick_report
    on_disk = json.loads((folder / "bench.json").read_text())
    assert on_disk["ratios"].keys() == report["ratios"].keys()
    assert (folder / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for key in ("machine", "config", "main", "ratios", "batch_sweep", "width_sweep", "epoch", "memory", "targets"):
        assert key in on_disk
    assert on_disk["machine"]["blas_threads"] >= 1 and on_disk["machine"]["numpy"]
    assert "skipped" in on_disk["epoch"]  # no data directory was given


def test_every_ratio_is_named_as_one_and_is_finite_where_measurable(quick_report):
    report, _ = quick_report
    ratios = report["ratios"]
    assert all("ratio" in key for key in ratios)
    for key in RATIO_KEYS:
        assert math.isfinite(ratios[key]) and ratios[key] > 0, key
    torch_present = report["config"]["torch"]
    for key in TORCH_RATIO_KEYS:
        assert key in ratios
        if torch_present:
            assert math.isfinite(ratios[key]) and ratios[key] > 0, key
        else:
            assert ratios[key] is None
    for key in EPOCH_RATIO_KEYS:
        assert key in ratios and ratios[key] is None  # no data: reported as missing, not invented
    for row in report["batch_sweep"] + report["width_sweep"]:
        for key in RATIO_KEYS:
            assert math.isfinite(row["ratios"][key]), key


def test_every_contender_is_timed_for_step_and_inference(quick_report):
    report, _ = quick_report
    names = ["floor", "relu", "phase1", "phase2_masked", "phase2_contiguous"]
    if report["config"]["torch"]:
        names += ["torch_relu", "torch_phase1", "torch_phase2"]
    for kind in ("step", "infer"):
        for name in names:
            timing = report["main"][kind][name]
            assert timing["median_ms"] > 0 and timing["repeats"] >= 1


def test_memory_section_reports_growth_per_network(quick_report):
    report, _ = quick_report
    for name in ("relu", "phase1", "phase2_masked", "phase2_contiguous"):
        entry = report["memory"][name]
        assert {"growth_bytes", "peak_during_steps_bytes", "no_growth"} <= entry.keys()
    assert report["targets"]["no_memory_growth"]["met"] in (True, False)


def test_the_suite_runs_on_a_device_backend(tmp_path):
    """On a device backend (the strict CuPy-like one here) every contender runs there and syncs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SMARTMIXED_DATA", raising=False)
        report = run_benchmarks(quick=True, json_path=str(tmp_path / "b.json"), sizes=[20, 12, 8, 4], batch=8,
                                with_torch=False, device="strict")
    assert report["machine"]["backend"] == "strict"
    assert "skipped" in report["memory"] and report["targets"]["no_memory_growth"]["met"] is None
    for key in RATIO_KEYS:
        assert math.isfinite(report["ratios"][key]), key
