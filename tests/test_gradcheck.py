"""The gradient checker itself: it passes right gradients, fails wrong ones, touches nothing."""

from __future__ import annotations

import numpy as np
import pytest

from smartmixed_np.backend import get_backend, to_host
from smartmixed_np.core.gradcheck import (GradcheckError, check_directional, check_model_gradients, check_vjp,
                                          check_vjp_per_coordinate, numerical_vjp, relative_error)

VJP_CHECKS = [check_vjp, check_vjp_per_coordinate]
from smartmixed_np.nn.mlp import MLP


def test_relative_error_has_a_floor():
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(np.array([1.0]), np.array([1.0 + 1e-9])) < 1e-9
    assert relative_error(np.array([1e-14]), np.array([2e-14])) < 1e-3  # both tiny: judged against the floor


@pytest.mark.parametrize("check", VJP_CHECKS)
def test_vjp_checks_pass_and_fail(backend, check):
    x = backend.asarray(np.array([[0.3, -1.2], [2.0, 0.7]]))
    fn = lambda x: x * x * x  # noqa: E731
    assert check(fn, [x], lambda u: [3 * x * x * u]).max_error < 1e-8
    with pytest.raises(GradcheckError, match="gradient check failed"):
        check(fn, [x], lambda u: [3 * x * u])
    result = check(fn, [x], lambda u: [3 * x * u], raise_on_failure=False)
    assert not result.passed and result.max_error > 0.1


def test_one_direction_check_reports_each_input_and_costs_two_calls_per_input(backend):
    """check_vjp: one error per input position; a wrong gradient of one input fails that one
    only; two evaluations per input plus one, whatever the input sizes (the per-coordinate
    check needs two per element)."""
    rng = np.random.default_rng(2)
    a, b = (backend.asarray(rng.standard_normal(shape)) for shape in [(40, 30), (30,)])
    calls = []

    def fn(a, b):
        calls.append(1)
        return backend.xp.tanh(a * b)

    def vjp(u, wrong_b=False):
        d = u * (1 - backend.xp.tanh(a * b) ** 2)
        db = (d * a).sum(axis=0)
        return [d * b, -db if wrong_b else db]

    result = check_vjp(fn, [a, b], vjp)
    assert result.passed and set(result.errors) == {0, 1} and len(calls) == 1 + 2 * 2
    wrong = check_vjp(fn, [a, b], lambda u: vjp(u, wrong_b=True), raise_on_failure=False)
    assert wrong.errors[0] < 1e-8 and wrong.errors[1] > 0.5
    calls.clear()
    check_vjp_per_coordinate(fn, [a, b], vjp)
    assert len(calls) == 1 + 2 * (a.size + b.size)


def test_numerical_vjp_never_modifies_its_inputs(backend):
    x_host = np.array([1.0, 2.0, 3.0])
    x = backend.asarray(x_host)
    numerical_vjp(lambda x: x * x, [x], backend.asarray(np.ones(3)), 0)
    np.testing.assert_array_equal(to_host(x), x_host)


@pytest.mark.parametrize("check", VJP_CHECKS)
def test_checks_require_float64(backend, check):
    x = backend.asarray(np.ones(3, dtype=np.float32))
    with pytest.raises(TypeError, match="float64"):
        check(lambda x: x * 2, [x], lambda u: [2 * u])


def test_directional_check_never_touches_the_point(backend):
    params = {"a": backend.asarray(np.array([1.0, -2.0]))}
    saved = to_host(params["a"]).copy()
    loss = lambda p: backend.xp.sum(p["a"] ** 2)  # noqa: E731
    assert check_directional(loss, params, {"a": 2 * params["a"]}).passed
    np.testing.assert_array_equal(to_host(params["a"]), saved)
    with pytest.raises(GradcheckError, match="directional"):
        check_directional(loss, params, {"a": 3 * params["a"]})


def test_model_check_leaves_the_model_untouched(backend):
    model = MLP([3, 4, 2], "smartmixed", hard=False, dtype="float64", seed=0, device=backend)
    before = model.state_dict()
    rng_before = model.rng_state()
    x = backend.asarray(np.random.default_rng(0).standard_normal((2, 3)))
    labels = backend.asarray(np.array([0, 1]))
    assert check_model_gradients(model, x, labels).passed
    assert model.rng_state() == rng_before
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_model_check_after_the_model_has_run(backend):
    """A model that already holds reusable buffers can still be checked (it is copied)."""
    model = MLP([3, 4, 2], "tanh", dtype="float64", seed=0, device=backend)
    x = backend.asarray(np.random.default_rng(0).standard_normal((2, 3)))
    model.forward(x, train=True)
    assert check_model_gradients(model, x, backend.asarray(np.array([0, 1]))).passed


# --------------------------------------------------------------------------- per parameter, hard models
def _small_batch(backend):
    rng = np.random.default_rng(2)
    return backend.asarray(rng.standard_normal((4, 6))), backend.asarray(np.array([0, 1, 2, 1]))


def _plant(monkeypatch, name, factor=1.01):
    """Scale the gradient that the layers write for parameter ``name`` (of a [6, 8, 5, 3] MLP) by ``factor``."""
    from smartmixed_np.core.linear import Linear
    from smartmixed_np.nn.layers import SmartMixedActivation

    _, index, kind = name.split(".")
    if kind == "logits":
        original = SmartMixedActivation.backward
        width = [8, 5][int(index)]

        def backward(self, dout, cache, workspace=None):
            dz = original(self, dout, cache, workspace=workspace)
            if self.size == width:
                self.dlogits *= factor
            return dz

        monkeypatch.setattr(SmartMixedActivation, "backward", backward)
        return
    original = Linear.backward
    shape = [(8, 6), (5, 8), (3, 5)][int(index)]

    def backward(self, dz, cache, need_dx=True, dx_out=None):
        dx = original(self, dz, cache, need_dx=need_dx, dx_out=dx_out)
        if tuple(self.W.shape) == shape:
            (self.dW if kind == "weight" else self.db)[...] *= factor
        return dx

    monkeypatch.setattr(Linear, "backward", backward)


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("wrong", ["layers.1.weight", "layers.2.bias", "activations.0.logits"])
def test_model_check_names_the_parameter_whose_gradient_is_wrong(backend, monkeypatch, hard, wrong):
    """A gradient 1% off in one layer fails the check at that parameter's name, and at no other parameter."""
    model = MLP([6, 8, 5, 3], "smartmixed", hard=hard, dtype="float64", seed=0, device=backend)
    x, labels = _small_batch(backend)
    _plant(monkeypatch, wrong)
    result = check_model_gradients(model, x, labels, raise_on_failure=False)
    assert set(result.failures()) == {"directional", wrong}, str(result)
    assert result[wrong] > 1e-3
    assert all(result[name] < 1e-6 for name in model.parameters() if name != wrong), str(result)
    with pytest.raises(GradcheckError, match=f"failed at directional, {wrong}"):
        check_model_gradients(model, x, labels)


def test_model_check_coordinate_by_coordinate_names_the_parameter_and_the_entry(monkeypatch):
    model = MLP([6, 8, 5, 3], "smartmixed", hard=False, dtype="float64", seed=0)
    x, labels = _small_batch(get_backend("cpu"))
    assert check_model_gradients(model, x, labels, coordinates=True).passed
    _plant(monkeypatch, "layers.0.bias", factor=1.5)
    result = check_model_gradients(model, x, labels, coordinates=True, raise_on_failure=False)
    assert set(result.failures()) == {"directional", "layers.0.bias"}, str(result)
    bias = result.checks["layers.0.bias"]
    gradient = np.abs(to_host(_gradients(model, x, labels)["layers.0.bias"]))
    assert bias.worst_index == (int(np.argmax(gradient)),)  # a 50% error is largest where the gradient is
    assert bias.abs_error == pytest.approx(0.5 * gradient.max() / 1.5, rel=1e-4)


def _gradients(model, x, labels):
    from smartmixed_np.core.losses import softmax_cross_entropy

    probe = MLP([6, 8, 5, 3], "smartmixed", hard=False, dtype="float64", seed=0)
    probe.load_state_dict(model.state_dict())
    probe.backward(softmax_cross_entropy(probe.forward(x, train=True), labels)[1])
    return probe.gradients()


@pytest.mark.parametrize("noise_mode", ["shared", "per_sample", "none"])
def test_model_check_of_a_hard_phase1_model_uses_the_straight_through_surrogate(backend, noise_mode):
    """Hard selection: checked against the surrogate by default (and says so); the hard loss itself fails at the logits only."""
    model = MLP([6, 8, 5, 3], "smartmixed", hard=True, noise_mode=noise_mode, dtype="float64", seed=0, device=backend)
    x, labels = _small_batch(backend)
    result = check_model_gradients(model, x, labels)
    assert result.passed and result.max_error < 1e-6, str(result)
    notes = " ".join(result.notes)
    assert "straight-through surrogate" in notes and "activations.0, activations.1" in notes
    assert "note: hard phase-1 layers" in str(result)
    hard_loss = check_model_gradients(model, x, labels, surrogate=False, raise_on_failure=False)
    failing = set(hard_loss.failures()) - {"directional"}
    assert failing and failing <= {"activations.0.logits", "activations.1.logits"}, str(hard_loss)
    assert "surrogate=False" in " ".join(hard_loss.notes)


def test_model_check_result_keeps_the_old_reading_and_prints_a_table():
    model = MLP([6, 8, 5, 3], "smartmixed", hard=False, dtype="float64", seed=0)
    x, labels = _small_batch(get_backend("cpu"))
    result = check_model_gradients(model, x, labels)
    assert result.errors["directional"] == result["directional"] < 1e-8  # the key callers read
    assert list(result) == ["directional", *model.parameters()]
    assert result.max_error == max(result.errors.values()) and result.passed
    text = str(result)
    assert text.startswith("gradient check passed") and repr(result) == text
    assert all(name in text for name in model.parameters()) and "whole model" in text
    assert "note" not in text  # a soft model needs no surrogate
