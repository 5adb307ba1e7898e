"""The authors' semantics as options (--loss, --phase2-clamp, --eval-noise, --clamp-grad) and --preset reference."""

from __future__ import annotations

import json

import numpy as np
import pytest

from smartmixed_np.cli import main
from smartmixed_np.core.activations import resolve_pool
from smartmixed_np.core.losses import double_softmax_cross_entropy, softmax_cross_entropy
from smartmixed_np.core.phase1 import mixture_backward, mixture_forward
from smartmixed_np.core.phase2 import fixed_backward, fixed_forward, make_groups
from smartmixed_np.backend import SeededRNG, get_backend
from smartmixed_np.experiments.checkpoint import load_arrays, load_model
from smartmixed_np.experiments.train import CHECKPOINT, PRESETS, ConfigError, TrainConfig, train
from smartmixed_np.nn.layers import FixedMixedActivation, SmartMixedActivation
from smartmixed_np.nn.mlp import MLP
from smartmixed_np.nn.optim import Adam
from smartmixed_np.nn.step import train_step
from tiny_runs import StopAt, strip_times as _strip_times, tiny

REFERENCE = {"loss": "double-softmax", "phase2_init": "fresh", "phase2_clamp": "none", "eval_noise": True, "clamp_grad": "closed"}
OURS = {"loss": "cross-entropy", "phase2_init": "carry", "phase2_clamp": "keep", "eval_noise": False, "clamp_grad": "open"}


def _same_bits(dir_a, dir_b):
    arrays_a, _ = load_arrays(dir_a / "model.npz")
    arrays_b, _ = load_arrays(dir_b / "model.npz")
    assert set(arrays_a) == set(arrays_b)
    for name in arrays_a:
        assert arrays_a[name].tobytes() == arrays_b[name].tobytes(), name


# ------------------------------------------------------------------ the preset's resolution
def test_presets_fill_what_is_not_given_and_explicit_options_win():
    assert PRESETS == {"ours": OURS, "reference": REFERENCE}
    assert {k: getattr(TrainConfig(), k) for k in OURS} == OURS
    assert {k: getattr(TrainConfig(preset="reference"), k) for k in REFERENCE} == REFERENCE
    mixed = TrainConfig(preset="reference", loss="cross-entropy", eval_noise=False)
    assert (mixed.loss, mixed.eval_noise, mixed.clamp_grad, mixed.phase2_clamp) == ("cross-entropy", False, "closed", "none")
    assert TrainConfig(clamp_grad="closed").loss == "cross-entropy"


def test_config_round_trip_and_old_configs_load_as_ours():
    config = TrainConfig(preset="reference", loss="cross-entropy", dataset="synth-digits")
    assert TrainConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    old = TrainConfig().to_json()
    for name in ("preset", "loss", "phase2_clamp", "eval_noise", "clamp_grad"):
        del old[name]
    assert {k: getattr(TrainConfig.from_json(old), k) for k in OURS} == OURS


@pytest.mark.parametrize("option, value, message", [
    ("preset", "theirs", "--preset must be one of ours, reference, got 'theirs'"),
    ("loss", "mse", "--loss must be one of cross-entropy, double-softmax, got 'mse'"),
    ("phase2_clamp", "off", "--phase2-clamp must be keep or none, got 'off'"),
    ("clamp_grad", "half", "--clamp-grad must be one of open, closed, got 'half'"),
])
def test_bad_values_are_one_line(option, value, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        TrainConfig(dataset="synth-digits", **{option: value}).validate()


def test_closed_clamp_gradient_is_for_straight_through_only():
    with pytest.raises(ConfigError, match="--clamp-grad closed is implemented for --estimator st only, not reinmax"):
        TrainConfig(dataset="synth-digits", clamp_grad="closed", estimator="reinmax").validate()


def test_cli_options_reach_the_config(monkeypatch):
    import smartmixed_np.experiments.train as train_module

    seen = []
    monkeypatch.setattr(train_module, "train", lambda config=None, **kw: seen.append(config) or _Done())
    assert main(["train", "--dataset", "synth-digits", "--preset", "reference", "--loss", "cross-entropy", "--no-eval-noise"]) == 0
    config = seen[-1]
    assert (config.preset, config.loss, config.eval_noise, config.clamp_grad, config.phase2_clamp, config.phase2_init) == (
        "reference", "cross-entropy", False, "closed", "none", "fresh")
    assert main(["train", "--dataset", "synth-digits", "--clamp-grad", "closed", "--eval-noise", "--phase2-clamp", "none",
                 "--loss", "double-softmax"]) == 0
    config = seen[-1]
    assert (config.preset, config.loss, config.eval_noise, config.clamp_grad, config.phase2_clamp, config.phase2_init) == (
        "ours", "double-softmax", True, "closed", "none", "carry")


class _Done:
    interrupted = False
    metrics: dict = {}


# ------------------------------------------------------------------ the clamp's gradient at +-c
def _edge_input():
    """Pre-activations at, inside and beyond the clamp of 10, on both sides: (2, 4)."""
    return np.array([[10.0, -10.0, 5.0, 12.0], [-12.0, 9.999, -10.0, 10.0]])


def test_closed_clamp_gradient_differs_from_open_exactly_at_the_edge_phase1():
    z = _edge_input()
    pool = resolve_pool(["identity", "relu"])
    logits = np.tile([[1.0, 0.0]], (4, 1))  # every neuron selects identity (no noise)
    out, cache = mixture_forward(z, logits, None, pool, tau=0.5, hard=True, clamp=10.0)
    dout = np.ones_like(z)
    dz_open, dl_open = mixture_backward(dout, cache, pool)
    dz_closed, dl_closed = mixture_backward(dout, cache, pool, clamp_grad="closed")
    at_edge = np.abs(z) == 10.0
    np.testing.assert_array_equal(dz_open, np.where(np.abs(z) < 10, 1.0, 0.0))
    np.testing.assert_array_equal(dz_closed, np.where(np.abs(z) <= 10, 1.0, 0.0))
    assert np.array_equal(dz_open != dz_closed, at_edge)
    np.testing.assert_array_equal(dl_open, dl_closed)  # the logits' gradient reads the values only


def test_closed_clamp_gradient_differs_from_open_exactly_at_the_edge_phase2():
    z = _edge_input()
    pool = resolve_pool(["identity", "tanh"])
    groups = make_groups(np.array([0, 0, 0, 0]), pool, get_backend("cpu"), contiguous=False, clamp=10.0)
    a, cache = fixed_forward(z, groups)
    dz_open = fixed_backward(np.ones_like(z), cache, groups)
    dz_closed = fixed_backward(np.ones_like(z), cache, groups, clamp_grad="closed")
    assert np.array_equal(dz_open != dz_closed, np.abs(z) == 10.0)
    np.testing.assert_array_equal(dz_closed, np.where(np.abs(z) <= 10, 1.0, 0.0))
    mixed = make_groups(np.array([0, 1, 0, 1]), pool, get_backend("cpu"), contiguous=False, clamp=10.0)
    a, cache = fixed_forward(z, mixed)
    dz_open = fixed_backward(np.ones_like(z), cache, mixed)
    dz_closed = fixed_backward(np.ones_like(z), cache, mixed, clamp_grad="closed")
    identity_at_edge = (np.abs(z) == 10.0) & np.array([True, False, True, False])
    assert np.array_equal(dz_open != dz_closed, identity_at_edge)  # tanh's group has no clamp (its range is [-1, 1])


def test_layers_take_the_reference_engine_for_the_closed_gradient_only_where_a_clamp_applies():
    pool = ["elu", "relu"]  # built-ins with fast paths
    rng = SeededRNG(np.random.SeedSequence(0))
    logits = np.zeros((4, 2))
    assert SmartMixedActivation(logits, pool, rng=rng).engine.name != "reference"
    assert SmartMixedActivation(logits, pool, rng=rng, clamp_grad="closed").engine.name == "reference"
    assert SmartMixedActivation(logits, pool, rng=rng, clamp=None, clamp_grad="closed").engine.name != "reference"
    choices = np.array([0, 0, 1, 1])
    assert FixedMixedActivation(choices, pool, clamp=10.0).engine.name != "reference"
    layer = FixedMixedActivation(choices, pool, clamp=10.0, clamp_grad="closed")
    assert layer.engine.name == "reference" and layer.to("cpu").clamp_grad == "closed"
    assert FixedMixedActivation(choices, pool, clamp=None, clamp_grad="closed").engine.name != "reference"
    layer = FixedMixedActivation(choices, ["identity", "relu"], clamp=10.0, clamp_grad="closed")
    z = _edge_input()
    out, cache = layer.forward(z)
    identity = np.array([True, True, False, False])
    expected = np.where(identity, np.abs(z) <= 10, (z > 0) & (z <= 10)).astype(float)  # relu at 10 passes too
    np.testing.assert_array_equal(layer.backward(np.ones_like(z), cache), expected)
    with pytest.raises(ValueError, match="clamp_grad must be one of open, closed"):
        FixedMixedActivation(choices, pool, clamp=10.0, clamp_grad="half")


def test_mlp_carries_the_clamp_gradient_through_freeze_and_config():
    model = MLP([6, 5, 4, 3], pool=["identity", "relu"], clamp_grad="closed", seed=1)
    assert all(act.clamp_grad == "closed" for act in model.activations)
    frozen = model.freeze()
    assert all(act.clamp_grad == "closed" and act.engine.name == "reference" for act in frozen.activations)
    for rebuilt in (MLP.from_config(model.config()), MLP.from_config(frozen.config())):
        assert rebuilt.options["clamp_grad"] == "closed" and all(act.clamp_grad == "closed" for act in rebuilt.activations)
    old = frozen.config()
    del old["clamp_grad"]  # a model.json from before the option
    assert all(act.clamp_grad == "open" for act in MLP.from_config(old).activations)
    unclamped = model.freeze(keep_clamp=False)
    assert all(act.clamp is None and all(g.lo is None and g.hi is None for g in act.groups) for act in unclamped.activations)


# ------------------------------------------------------------------ the loss in the step
def test_train_step_default_is_bitwise_the_cross_entropy_and_takes_the_double_softmax():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 6)).astype(np.float32), rng.integers(0, 3, size=8)
    results = []
    for loss in (None, "cross-entropy", softmax_cross_entropy, "double-softmax", double_softmax_cross_entropy):
        model = MLP([6, 5, 3], seed=2)
        optimizer = Adam(model.parameters(), lr=1e-2)
        value, logits = train_step(model, optimizer, x, y, 1.0) if loss is None else train_step(model, optimizer, x, y, 1.0, loss=loss)
        results.append((float(value), model.state_dict()))
    for value, state in results[1:3]:
        assert value == results[0][0] and all(state[k].tobytes() == results[0][1][k].tobytes() for k in state)
    assert results[3][0] == results[4][0] != results[0][0]
    assert results[3][0] > np.log(1 + 2 / np.e) - 1e-6  # the double softmax's floor for 3 classes


# ------------------------------------------------------------------ runs
def test_eval_noise_changes_phase1_validation_but_not_the_training_stream(tmp_path):
    plain = train(tiny(tmp_path, "plain", epochs=2))
    noisy = train(tiny(tmp_path, "noisy", epochs=2, eval_noise=True))
    for a, b in zip(plain.history, noisy.history):
        assert (a["train_loss"], a["train_acc"]) == (b["train_loss"], b["train_acc"])  # same steps, same bits
    assert [a["val_loss"] for a in plain.history] != [b["val_loss"] for b in noisy.history]
    assert json.loads((noisy.run_dir / "config.json").read_text())["eval_noise"] is True


def test_phase2_clamp_none_gives_an_unclamped_phase2_model(tmp_path):
    kept = load_model(train(tiny(tmp_path, "keep", epochs=3)).run_dir)
    assert all(act.clamp == 10.0 for act in kept.activations)
    result = train(tiny(tmp_path, "none", epochs=3, phase2_clamp="none", phase2_init="fresh"))
    model = load_model(result.run_dir)
    assert model.phase == 2 and all(act.clamp is None for act in model.activations)
    assert all(g.lo is None and g.hi is None for act in model.activations for g in act.groups)


def test_double_softmax_run_records_its_loss(tmp_path):
    result = train(tiny(tmp_path, epochs=2, loss="double-softmax"))
    assert all(row["train_loss"] > np.log(1 + 9 / np.e) - 1e-6 for row in result.history)  # its floor for 10 classes
    assert json.loads((result.run_dir / "config.json").read_text())["loss"] == "double-softmax"


def test_preset_run_is_bit_reproducible_and_recorded(tmp_path):
    a = train(tiny(tmp_path, "a", preset="reference"))
    b = train(tiny(tmp_path, "b", preset="reference"))
    _same_bits(a.run_dir, b.run_dir)
    assert _strip_times(a.history) == _strip_times(b.history)
    recorded = json.loads((a.run_dir / "config.json").read_text())
    assert recorded["preset"] == "reference" and {k: recorded[k] for k in REFERENCE} == REFERENCE
    model = load_model(a.run_dir)
    assert all(act.clamp is None and act.clamp_grad == "closed" for act in model.activations)
    ours = train(tiny(tmp_path, "ours"))
    assert _strip_times(ours.history) != _strip_times(a.history)


@pytest.mark.parametrize("stops", [(7,), (3, 10, 15)])
def test_resumed_preset_run_ends_exactly_like_an_uninterrupted_one(tmp_path, stops):
    """Stops in phase 1 (the eval-noise stream is checkpointed), at a boundary and in phase 2."""
    reference = train(tiny(tmp_path, "reference", preset="reference"))
    result = train(tiny(tmp_path, "interrupted", preset="reference"), on_step=StopAt(*stops))
    assert result.interrupted and (result.run_dir / CHECKPOINT).is_file()
    while result.interrupted:
        result = train(resume=result.run_dir, on_step=StopAt(*stops))
    _same_bits(reference.run_dir, result.run_dir)
    drop = lambda m: {k: v for k, v in m.items() if k != "train_time_s"}  # noqa: E731
    assert drop(result.metrics) == drop(reference.metrics)
    assert _strip_times(result.history) == _strip_times(reference.history)
