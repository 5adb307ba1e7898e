"""Training runs: run folder, model selection, resume identity, interrupts, divergence."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from smartmixed_np.experiments.checkpoint import load_arrays, load_model
from smartmixed_np.errors import UserError
from smartmixed_np.experiments.train import CHECKPOINT, ConfigError, TrainConfig, evaluate, history_from_csv, train
from tiny_runs import StopAt, strip_times as _strip_times, tiny


def test_run_folder_holds_everything(tmp_path):
    result = train(tiny(tmp_path))
    folder = result.run_dir
    for name in ["config.json", "history.csv", "metrics.json", "choices.csv", "model.npz", "model.json", CHECKPOINT]:
        assert (folder / name).is_file(), name
    for name in ["curves.png", "confusion.png", "activation_shares.png", "share_evolution.png", "choice_map.png"]:
        assert (folder / "figures" / name).is_file(), name
    assert not list(folder.glob(".*.part"))

    config = json.loads((folder / "config.json").read_text())
    assert config["seed"] == 3 and config["hidden"] == [16, 8] and "numpy" in config["environment"]["versions"]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["selected"] == {"phase": 2, "epoch": metrics["best_epoch"]["phase2"]}
    assert 1 <= metrics["best_epoch"]["phase1"] <= 2 < metrics["best_epoch"]["phase2"] <= 4
    assert np.array(metrics["test"]["confusion_matrix"]).sum() == 4000
    assert len(metrics["test"]["per_class_accuracy"]) == 10
    assert metrics["test"]["accuracy"] > 0.3  # far above chance after four short epochs
    assert "phase1" in metrics and "test_accuracy" in metrics["phase1"]

    history = history_from_csv(folder / "history.csv")
    assert [row["phase"] for row in history] == [1, 1, 2, 2]
    assert history[0]["share.L0.relu"] is not None and history[3]["share.L0.relu"] is None
    assert all(abs(sum(v for k, v in row.items() if k.startswith("share.L1.")) - 1) < 1e-9 for row in history[:2])

    with open(folder / "choices.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 16 + 8 and {r["layer"] for r in rows} == {"0", "1"}
    model = load_model(folder)
    assert model.choice_names()[0] == [r["activation"] for r in rows if r["layer"] == "0"]
    assert model.phase == 2 and all(g.columns.__class__ is slice for a in model.activations for g in a.groups)


def test_saved_model_rescored_gives_the_reported_accuracy(tmp_path):
    result = train(tiny(tmp_path, epochs=3, transition_epoch=1))
    from smartmixed_np.data import load_dataset

    data = load_dataset("synth-digits", train_limit=320)
    model = load_model(result.run_dir)
    scores = evaluate(model, data.x_test, data.y_test)
    assert scores["accuracy"] == result.metrics["test"]["accuracy"]


def test_baseline_run_has_one_phase_and_no_choices(tmp_path):
    result = train(tiny(tmp_path, model="elu", epochs=2))
    assert result.metrics["transition_epoch"] is None and "phase1" not in result.metrics
    assert not (result.run_dir / "choices.csv").exists()
    assert {row["phase"] for row in result.history} == {2}


def test_same_seed_same_run_bit_for_bit(tmp_path):
    a = train(tiny(tmp_path, "a", epochs=3))
    b = train(tiny(tmp_path, "b", epochs=3))
    arrays_a, _ = load_arrays(a.run_dir / "model.npz")
    arrays_b, _ = load_arrays(b.run_dir / "model.npz")
    for name in arrays_a:
        assert arrays_a[name].tobytes() == arrays_b[name].tobytes(), name
    assert _strip_times(a.history) == _strip_times(b.history)


@pytest.mark.parametrize("dtype, pool", [("float32", "relu,leaky_relu"), ("float64", None)])
def test_compiled_loops_change_no_number_of_phase_2_training(monkeypatch, dtype, pool):
    """Phase-2 training (masked groups, clipping, Adam) gives the same bits with the NumPy paths only:
    the compiled loops of phase 2 and Adam do the NumPy code's operations in its order. Not so for
    float32 sigmoid, tanh, elu and selu, whose exponentials the compiled forward computes in its
    loop, to a few ulps (compiled.grouped_forward), nor for phase 1 (tanh, the sums' order)."""
    import numpy as np

    from smartmixed_np.fast import compiled
    from smartmixed_np.nn.mlp import MLP
    from smartmixed_np.nn.optim import Adam
    from smartmixed_np.nn.step import train_step

    if not compiled.status().startswith("numba"):
        pytest.skip(f"compiled loops: {compiled.status()}")
    rng = np.random.default_rng(5)
    phase1 = MLP([12, 16, 8, 3], "smartmixed", seed=2, pool=pool, dtype=dtype)
    for act in phase1.activations:
        act.logits[...] = rng.standard_normal(act.logits.shape)
    x = rng.standard_normal((32, 12)).astype(dtype)
    y = rng.integers(0, 3, 32)

    def trained(use_compiled):
        with monkeypatch.context() as patch:
            if not use_compiled:
                patch.setattr(compiled, "enabled", lambda: False)  # engines and Adam are chosen at construction
            model = phase1.freeze(contiguous=False)
            optimizer = Adam(model.parameters(), lr=1e-2)
        assert [a.engine.name for a in model.activations] == (["compiled"] * 2 if use_compiled else ["fused"] * 2)
        for _ in range(6):
            train_step(model, optimizer, x, y, clip=1.0)
        return model.parameters()

    fast, plain = trained(True), trained(False)
    for name in fast:
        assert fast[name].tobytes() == plain[name].tobytes(), name


@pytest.mark.parametrize("stops", [(7,), (3, 12), (5, 10, 15)])
def test_resumed_run_ends_exactly_like_an_uninterrupted_one(tmp_path, stops):
    """Interrupt mid-epoch (phase 1 and phase 2) and at an epoch boundary, resume each time."""
    reference = train(tiny(tmp_path, "reference"))
    config = tiny(tmp_path, "interrupted")
    result = train(config, on_step=StopAt(*stops))
    assert result.interrupted and (result.run_dir / CHECKPOINT).is_file()
    while result.interrupted:
        result = train(resume=result.run_dir, on_step=StopAt(*stops))
    ref_arrays, _ = load_arrays(reference.run_dir / "model.npz")
    got_arrays, _ = load_arrays(result.run_dir / "model.npz")
    assert set(ref_arrays) == set(got_arrays)
    for name in ref_arrays:
        assert ref_arrays[name].tobytes() == got_arrays[name].tobytes(), name
    drop = lambda m: {k: v for k, v in m.items() if k != "train_time_s"}  # noqa: E731
    assert drop(result.metrics) == drop(reference.metrics)
    assert _strip_times(result.history) == _strip_times(reference.history)


def test_finished_run_resumes_to_the_same_result(tmp_path):
    first = train(tiny(tmp_path, epochs=2, transition_epoch=1))
    again = train(resume=first.run_dir)
    assert again.metrics["test"] == first.metrics["test"]


def test_divergence_stops_the_run_and_keeps_the_best_model(tmp_path):
    def poison(epoch, step, global_step, model):
        if epoch == 3 and step == 1:
            model.linears[0].W[...] = np.nan

    result = train(tiny(tmp_path), on_step=poison)
    assert "non-finite loss at epoch 3" in result.metrics["stopped_early"]
    assert result.metrics["epochs_run"] == 3
    assert result.metrics["selected"]["phase"] == 1 and result.metrics["selected"]["epoch"] in (1, 2)
    assert np.isfinite(result.metrics["test"]["loss"])


def test_divergence_before_any_good_epoch_is_a_clear_error(tmp_path):
    def poison(epoch, step, global_step, model):
        model.linears[0].W[...] = np.nan

    with pytest.raises(UserError, match="before any epoch produced a finite validation loss"):
        train(tiny(tmp_path, epochs=2), on_step=poison)


def test_phase2_fresh_init_and_schedules(tmp_path):
    result = train(tiny(tmp_path, phase2_init="fresh", lr_schedule="cosine", tau_final=0.1, epochs=4, transition_epoch=3))
    lrs = [row["lr"] for row in result.history]
    assert lrs[0] == pytest.approx(1e-2) and lrs == sorted(lrs, reverse=True)
    taus = [row["tau"] for row in result.history]
    assert taus[0] == pytest.approx(0.3) and taus[2] == pytest.approx(0.1) and taus[3] is None


def test_an_existing_run_is_not_overwritten(tmp_path):
    train(tiny(tmp_path, epochs=1, transition_epoch=1))
    with pytest.raises(ConfigError, match="already holds a run; resume it with --resume"):
        train(tiny(tmp_path, epochs=1, transition_epoch=1))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"epochs": 0}, "--epochs must be a positive integer"),
        ({"transition_epoch": 9}, r"--transition-epoch \(9\) must lie in \[1, --epochs \(4\)\]"),
        ({"lr": -1.0}, "--lr must be a positive number"),
        ({"model": "swish"}, "unknown activation 'swish'"),
        ({"tau": 0.0}, "--tau must be a number of at least"),
        ({"arch": 99}, "unknown architecture ID 99"),
        ({"device": "tpu"}, "unknown device/backend 'tpu'"),
        ({"phase2_init": "warm"}, "--phase2-init must be carry or fresh"),
    ],
)
def test_bad_options_are_named(tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        train(tiny(tmp_path, **options))


def test_resume_of_a_folder_without_checkpoint(tmp_path):
    from smartmixed_np.errors import CheckpointError

    with pytest.raises(CheckpointError, match="no such run folder"):
        train(resume=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="checkpoint.npz: no such file"):
        train(resume=tmp_path / "empty")


def test_ctrl_c_in_a_real_process_saves_and_resumes(tmp_path):
    """SIGINT to the command: it stops at a step boundary, saves, exits 130; --resume finishes."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "smartmixed_np", "train", "--dataset", "synth-digits", "--train-limit", "4000",
               "--hidden", "64,32", "--epochs", "6", "--transition-epoch", "2", "--lr", "1e-3", "--quiet", "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    line = ""
    while "epoch   1/6" not in line and time.monotonic() < deadline:
        line = process.stdout.readline()
        assert line or process.poll() is None, process.stderr.read()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "checkpoint saved" in stderr
    _, meta = load_arrays(out / CHECKPOINT)
    assert 1 <= meta["epoch"] < 6
    done = subprocess.run([sys.executable, "-m", "smartmixed_np", "train", "--resume", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 6


@pytest.mark.skipif(not os.environ.get("SMARTMIXED_DATA"), reason="set SMARTMIXED_DATA to a folder holding mnist/")
def test_short_smartmixed_run_on_real_mnist(tmp_path):
    """A SmartMixed run on real MNIST reaches a sensible accuracy in seconds."""
    started = time.perf_counter()
    result = train(TrainConfig(dataset="mnist", train_limit=12000, hidden=(256, 128), epochs=8, transition_epoch=3,
                               lr=1e-3, seed=0, quiet=True, progress=False, out=str(tmp_path / "mnist")))
    assert time.perf_counter() - started < 60
    assert result.metrics["test"]["accuracy"] > 0.93
    assert sum(result.metrics["test"]["confusion_matrix"][0]) == 980  # digit 0 in the official test set


def _fit(model, x, y, epochs, lr, seed=0):
    """A plain minibatch Adam loop (the library's pieces, no run folder)."""
    from smartmixed_np import Adam, softmax_cross_entropy

    optimizer = Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), 128):
            index = order[start : start + 128]
            _, dlogits = softmax_cross_entropy(model.forward(x[index], train=True), y[index])
            model.backward(dlogits)
            optimizer.step(model.gradients())


def test_synth_digits_needs_more_than_a_linear_model():
    """The demo data is hard enough that a linear classifier does clearly worse than an MLP."""
    from smartmixed_np import MLP
    from smartmixed_np.data import load_dataset

    data = load_dataset("synth-digits", n_train=4000, n_val=10, n_test=2000)
    scores = {}
    for name, sizes in [("linear", [784, 10]), ("mlp", [784, 128, 10])]:
        model = MLP(sizes, "relu", seed=0)
        _fit(model, data.x_train, data.y_train, epochs=8, lr=3e-3)
        scores[name] = evaluate(model, data.x_test, data.y_test)["accuracy"]
    assert scores["mlp"] > scores["linear"] + 0.05, scores
    assert scores["linear"] > 0.5  # learnable, not noise


@pytest.mark.parametrize("dtype, pool", [("float32", ("relu", "sigmoid", "tanh", "leaky_relu")), ("float64", None)])
def test_a_whole_run_on_the_strict_device_backend(tmp_path, monkeypatch, dtype, pool):
    """Training, evaluation, checkpoints and resume never mix host and device arrays, and give the
    numbers of the host's NumPy paths (the compiled loops, host-only, are switched off for the
    reference: the same arithmetic, so the same numbers). Float32 elu and selu are left out: on a
    CPU without AVX-512 their host expm1 is a fast path of its own (backend.expm1_into)."""
    from smartmixed_np.fast import compiled

    options = dict(epochs=3, transition_epoch=1, dtype=dtype, pool=pool)
    result = train(tiny(tmp_path, "strict", device="strict", **options), on_step=StopAt(4))
    assert result.interrupted
    result = train(resume=result.run_dir, overrides={"device": "strict"})
    monkeypatch.setattr(compiled, "enabled", lambda: False)
    reference = train(tiny(tmp_path, "numpy", **options))
    assert result.metrics["test"] == reference.metrics["test"]
    assert result.metrics["selected"]["phase"] == 2
