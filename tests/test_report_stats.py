"""The report's statistics (smartmixed_np/report/stats.py): t quantiles, intervals and p-values.

The numbers frozen below were computed by the report's former hand-written Student t
(a regularized incomplete beta by continued fraction, the quantile by bisection to
1e-13), before it was replaced by ``scipy.stats.t``: the intervals must not move.
The former p-values came from 1 - cdf, which keeps an absolute error of about 1e-13
for small p; SciPy's upper tail (sf) keeps the digits, so the frozen p-values are
compared with an absolute tolerance of 1e-12.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from smartmixed_np.report import ReportError, mean_interval, t_cdf, t_quantile, write_report

LEVELS = (0.9, 0.95, 0.99)

# t_quantile(0.5 + level / 2, df) for level = 0.9, 0.95, 0.99, by the former code.
QUANTILES = {
    1: (6.313751514675232, 12.70620473617464, 63.656741162869366),
    2: (2.919985580353682, 4.302652729749411, 9.92484320091853),
    3: (2.353363434801736, 3.1824463052836336, 5.840909309733206),
    4: (2.131846786326662, 2.776445105197695, 4.604094871350071),
    5: (2.015048373333059, 2.5705818356362897, 4.032142983555218),
    6: (1.9431802805152643, 2.446911851145046, 3.707428021324745),
    9: (1.8331129326562063, 2.262157162798246, 3.249835541592006),
    10: (1.812461122811726, 2.22813885198633, 3.169272672617012),
    19: (1.7291328115213105, 2.0930240544083176, 2.860934606464866),
    29: (1.6991270265335174, 2.0452296421327105, 2.756385903670548),
    59: (1.6710930321038973, 2.0009953780882483, 2.661758752162882),
    100: (1.6602343260854582, 1.9839715185235605, 2.6258905214380093),
}

# mean_interval(values, level) by the former code: values, mean, std, p-value, {level: (low, high)}.
INTERVALS = [
    ((0.1, 0.3, 0.2), 0.19999999999999998, 0.09999999999999999, 0.07417990022744858,
     {0.9: (0.0314145539152976, 0.36858544608470234), 0.95: (-0.048413771175030096, 0.44841377117503006),
      0.99: (-0.37301108937151406, 0.773011089371514)}),
    ((0.91, 0.92), 0.915, 0.007071067811865481, 0.0034787619446738915,
     {0.9: (0.8834312424266239, 0.9465687575733762), 0.95: (0.8514689763191268, 0.9785310236808733),
      0.99: (0.596716294185653, 1.233283705814347)}),
    ((-0.002, 0.001, 0.0035, -0.0007, 0.0041), 0.00118, 0.002626214004988931, 0.37188738890975914,
     {0.9: (-0.0013238084454846371, 0.0036838084454846372), 0.95: (-0.0020808753815731605, 0.004440875381573161),
      0.99: (-0.004227410934329882, 0.006587410934329883)}),
    ((0.0001, 0.0001, 0.0001, 0.0002), 0.000125, 5e-05, 0.015392438073302372,
     {0.9: (6.61659141299566e-05, 0.0001838340858700434), 0.95: (4.543884236790916e-05, 0.00020456115763209083),
      0.99: (-2.1022732743330167e-05, 0.0002710227327433302)}),
    ((0.5, 0.52, 0.49, 0.51, 0.5, 0.53, 0.48, 0.5, 0.51, 0.5), 0.504, 0.014298407059684824, 1.9984014443252818e-15,
     {0.9: (0.4957114821295941, 0.512288517870406), 0.95: (0.49377153576547456, 0.5142284642345254),
      0.99: (0.48930569531068957, 0.5186943046893104)}),
]

# A synthetic sweep: (arch, model) -> test accuracy per seed 0..4 in units of 1e-4 (None: no run).
SYNTHETIC = {
    ("1", "relu"): (9012, 9034, 8991, 9020, 9005),
    ("1", "tanh"): (9001, 9050, 9002, 9011, 8999),
    ("1", "smartmixed"): (9040, 9033, 9010, 9055, 9021),
    ("2", "relu"): (9500, 9512, 9497, 9530, 9488),
    ("2", "tanh"): (9470, 9466, 9481, None, None),
    ("2", "smartmixed"): (9501, 9500, 9514, 9490, 9512),
    ("5", "relu"): (9700, 9711, None, None, None),
    ("5", "smartmixed"): (9702, None, None, None, None),
}
PHASE1 = (7, -12, 3, 25, -4)  # SmartMixed's phase-1 test accuracy is its phase-2 one minus these (1e-4), per seed

# The former report.json of that sweep: (mean_difference, std_difference, ci95_low, ci95_high, p_value).
FIELDS = ("mean_difference", "std_difference", "ci95_low", "ci95_high", "p_value")
FROZEN_REPORT = {
    ("smartmixed_vs_best_fixed", "1"): (0.0019199999999999883, 0.002475277762191551, -0.0011534632828675295,
                                        0.004993463282867506, 0.15785855734449705),
    ("smartmixed_vs_best_fixed", "2"): (-0.00020000000000000017, 0.0025446021299999283, -0.003359540854573413,
                                        0.002959540854573413, 0.8690289603276609),
    ("smartmixed_vs_best_fixed", "5"): (0.00019999999999997797, None, None, None, None),
    ("smartmixed_vs_best_fixed", "all"): (0.0007999999999999927, 0.002490783009416931, -0.0008733307943931213,
                                          0.0024733307943931066, 0.3118083093280748),
    ("phase1_vs_phase2", "1"): (0.00038000000000002474, 0.0013881642554106888, -0.001343633579536701,
                                0.0021036335795367503, 0.5735510547245299),
    ("phase1_vs_phase2", "2"): (0.00037999999999998034, 0.001388164255410714, -0.0013436335795367765,
                                0.0021036335795367373, 0.5735510547245792),
    ("phase1_vs_phase2", "5"): (0.0006999999999999229, None, None, None, None),
    ("phase1_vs_phase2", "all"): (0.0004090909090909044, 0.0012453550059758236, -0.0004275499679234228,
                                  0.0012457317861052316, 0.30149574389716216),
}


def _unchanged(new, old, field="ci"):
    """Equal to the frozen value: to 1e-12 relative (p-values: or 1e-12 absolute, see the module docstring)."""
    if old is None:
        return new is None
    return new == pytest.approx(old, rel=1e-12, abs=1e-12 if field == "p_value" else 0.0)


def synthetic_sweep(root: Path) -> Path:
    """Run folders holding config.json and metrics.json only: no training, exact decimal accuracies."""
    hidden = {"1": [16], "2": [32, 16], "5": [64, 32, 16]}
    for (arch, model), counts in SYNTHETIC.items():
        for seed, count in enumerate(counts):
            if count is None:
                continue
            run = root / f"arch{arch}" / model / f"seed{seed}"
            run.mkdir(parents=True)
            config = {"dataset": "synth-digits", "model": model, "hidden": hidden[arch], "seed": seed, "epochs": 4,
                      "data": {"train": 900, "val": 100, "test": 10000}, "optimizer": "adam", "lr": 0.001,
                      "lr_schedule": "constant", "batch_size": 64, "train_limit": None}
            if model == "smartmixed":
                config.update(transition_epoch=2, phase2_init="carry", tau=0.3)
            metrics = {"epochs_run": 4, "best_epoch": {"phase1": 2 if model == "smartmixed" else None, "phase2": 4},
                       "val": {"accuracy": (count - 3) / 10000, "loss": 0.3 + seed / 100},
                       "test": {"accuracy": count / 10000, "loss": 0.31 + seed / 100}, "train_time_s": 1.5}
            if model == "smartmixed":
                metrics["phase1"] = {"val_accuracy": 0.9, "test_accuracy": (count - PHASE1[seed]) / 10000, "test_loss": 0.4}
            (run / "config.json").write_text(json.dumps(config))
            (run / "metrics.json").write_text(json.dumps(metrics))
    return root


@pytest.fixture(scope="module")
def synthetic_report(tmp_path_factory):
    root = synthetic_sweep(tmp_path_factory.mktemp("report_stats") / "sweep")
    paths = write_report(root)
    return paths, json.loads(paths["report_json"].read_text())


def test_t_quantiles_are_unchanged():
    for df, frozen in QUANTILES.items():
        for level, old in zip(LEVELS, frozen):
            assert t_quantile(0.5 + level / 2, df) == pytest.approx(old, rel=1e-12, abs=0.0), (df, level)
            assert t_quantile(0.5 - level / 2, df) == pytest.approx(-old, rel=1e-12, abs=0.0), (df, level)


def test_mean_intervals_are_unchanged():
    for values, mean, std, p_value, intervals in INTERVALS:
        for level, (low, high) in intervals.items():
            result = mean_interval(values, level)
            assert result["n"] == len(values) and result["mean"] == mean and result["std"] == std
            assert _unchanged(result["low"], low) and _unchanged(result["high"], high), (values, level)
            assert _unchanged(result["p_value"], p_value, "p_value"), values


def test_report_intervals_are_unchanged(synthetic_report):
    paths, report = synthetic_report
    markdown = paths["report_md"].read_text()
    for (section, arch), frozen in FROZEN_REPORT.items():
        entry = report[section]["pooled"] if arch == "all" else next(e for e in report[section]["per_arch"] if e["arch"] == arch)
        for field, old in zip(FIELDS, frozen):
            assert _unchanged(entry[field], old, field), (section, arch, field)
        if frozen[2] is not None:  # the interval as report.md prints it, in percentage points
            assert f"[{100 * frozen[2]:+.2f} pp, {100 * frozen[3]:+.2f} pp]" in markdown, (section, arch)
    assert set(report["figures"]) == {"accuracy.png", "smartmixed_vs_best_fixed.png", "phase1_vs_phase2.png"}


@pytest.mark.parametrize("level", LEVELS)
def test_intervals_and_p_values_agree_with_scipy(level):
    """For n = 2..61 values (df 1..60): the interval is scipy's t.interval, the p-value its one-sample t-test."""
    for df in range(1, 61):
        values = [0.001 * ((7 * k) % 11 - 4.5) + 1e-4 * df for k in range(df + 1)]
        result = mean_interval(values, level)
        expected = scipy.stats.t.interval(level, df, loc=np.mean(values), scale=np.std(values, ddof=1) / math.sqrt(df + 1))
        assert t_quantile(0.5 + level / 2, df) == pytest.approx(scipy.stats.t.ppf(0.5 + level / 2, df), rel=1e-14, abs=0.0)
        assert (result["low"], result["high"]) == pytest.approx(expected, rel=1e-12, abs=0.0), df
        assert result["p_value"] == pytest.approx(scipy.stats.ttest_1samp(values, 0.0).pvalue, rel=1e-9, abs=0.0), df


def test_t_distribution_closed_forms_and_tables():
    # Closed forms: df = 1 (Cauchy) and df = 2.
    for t in [-3.0, -0.5, 0.0, 0.7, 2.0, 15.0]:
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    assert t_cdf(math.inf, 3) == 1.0 and t_cdf(-math.inf, 3) == 0.0
    # Published two-sided 95% critical values.
    table = {1: 12.7062047, 2: 4.3026527, 3: 3.1824463, 4: 2.7764451, 5: 2.5705818, 9: 2.2621572, 29: 2.0452296, 100: 1.9839715}
    for df, value in table.items():
        assert t_quantile(0.975, df) == pytest.approx(value, abs=1e-6)
    assert t_quantile(0.995, 10) == pytest.approx(3.1692726, abs=1e-6)
    assert t_quantile(0.5, 7) == 0.0
    for bad in [(0.0, 3), (1.0, 3), (0.975, 0)]:
        with pytest.raises(ValueError):
            t_quantile(*bad)
    with pytest.raises(ValueError):
        t_cdf(1.0, -1)


def test_small_p_values_keep_their_digits():
    # 1 - cdf would round this p-value (about 3e-15) to a multiple of 1.1e-16, or to 0 for larger statistics.
    values = [0.5, 0.52, 0.49, 0.51, 0.5, 0.53, 0.48, 0.5, 0.51, 0.5]
    assert mean_interval(values)["p_value"] == pytest.approx(scipy.stats.ttest_1samp(values, 0.0).pvalue, rel=1e-9, abs=0.0)
    tiny = mean_interval([1.0, 1.001, 0.999, 1.0005, 0.9995])["p_value"]
    assert 0.0 < tiny < 1e-12


def test_mean_interval_edge_cases():
    assert mean_interval([]) == {"n": 0, "mean": None, "std": None, "low": None, "high": None, "p_value": None}
    single = mean_interval([0.5])
    assert single["mean"] == 0.5 and single["low"] is None and single["p_value"] is None
    equal = mean_interval([0.2, 0.2])
    assert equal["std"] == 0.0 and equal["low"] == equal["high"] == 0.2 and equal["p_value"] is None


# Run in a fresh interpreter where ``import scipy`` fails, as without the report extra.
_WITHOUT_SCIPY = """
import sys
sys.modules["scipy"] = None
sys.modules["scipy.stats"] = None
import smartmixed_np.report as report
from smartmixed_np.cli import main
assert report.mean_interval([0.5])["mean"] == 0.5  # one value needs no t distribution
try:
    report.mean_interval([0.5, 0.6])
except report.ReportError as err:
    print("mean_interval:", err)
sys.exit(main(["report", sys.argv[1]]))
"""


def test_without_scipy_the_package_imports_and_the_command_names_the_extra(tmp_path):
    root = synthetic_sweep(tmp_path / "sweep")
    done = subprocess.run([sys.executable, "-c", _WITHOUT_SCIPY, str(root)], capture_output=True, text=True, timeout=120)
    hint = "pip install 'smartmixed_np[report]'"
    assert done.returncode == 2, done.stderr
    assert done.stdout.startswith("mean_interval:") and hint in done.stdout
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and hint in err[0] and "Traceback" not in done.stderr, done.stderr
    assert not (root / "summary.csv").exists() and not (root / "figures").exists()  # refused before writing anything


def test_report_error_is_a_user_error():
    from smartmixed_np.errors import UserError

    assert issubclass(ReportError, UserError)
