"""The gradient checker itself: it passes right gradients, fails wrong ones, touches nothing."""

from __future__ import annotations

import numpy as np
import pytest

from smartmixed_np.backend import to_host
from smartmixed_np.gradcheck import GradcheckError, check_directional, check_model_gradients, check_vjp, numerical_vjp, relative_error
from smartmixed_np.mlp import MLP


def test_relative_error_has_a_floor():
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(np.array([1.0]), np.array([1.0 + 1e-9])) < 1e-9
    assert relative_error(np.array([1e-14]), np.array([2e-14])) < 1e-3  # both tiny: judged against the floor


def test_check_vjp_passes_and_fails(backend):
    x = backend.asarray(np.array([[0.3, -1.2], [2.0, 0.7]]))
    fn = lambda x: x * x * x  # noqa: E731
    assert check_vjp(fn, [x], lambda u: [3 * x * x * u]).max_error < 1e-8
    with pytest.raises(GradcheckError, match="gradient check failed"):
        check_vjp(fn, [x], lambda u: [3 * x * u])
    result = check_vjp(fn, [x], lambda u: [3 * x * u], raise_on_failure=False)
    assert not result.passed and result.max_error > 0.1


def test_numerical_vjp_never_modifies_its_inputs(backend):
    x_host = np.array([1.0, 2.0, 3.0])
    x = backend.asarray(x_host)
    numerical_vjp(lambda x: x * x, [x], backend.asarray(np.ones(3)), 0)
    np.testing.assert_array_equal(to_host(x), x_host)


def test_checks_require_float64(backend):
    x = backend.asarray(np.ones(3, dtype=np.float32))
    with pytest.raises(TypeError, match="float64"):
        check_vjp(lambda x: x * 2, [x], lambda u: [2 * u])


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
