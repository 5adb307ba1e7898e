"""Activations: derivatives against finite differences, stability, registry."""

from __future__ import annotations

import copy
import functools
from decimal import Decimal, localcontext

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from smartmixed_np.core import activations as A
from smartmixed_np.backend import to_host
from smartmixed_np.core.gradcheck import GradcheckError, check_vjp_per_coordinate
from strategies import all_candidates, away_from_kinks, seeds

BUILT_INS = list(A.DEFAULT_POOL) + ["gelu", "silu", "softplus", "identity"]


def _check_activation(backend, activation, x_host, seed=0):
    act = A.get_activation(activation)
    x = backend.asarray(x_host)
    fn = lambda x: act.forward(x)  # noqa: E731
    vjp = lambda dout: [dout * act.derivative(x, act.forward(x))]  # noqa: E731
    return check_vjp_per_coordinate(fn, [x], vjp, seed=seed)


@given(name=all_candidates, seed=seeds, shape=st.tuples(st.integers(1, 4), st.integers(1, 6)))
def test_derivative_matches_finite_differences(backend, name, seed, shape):
    x = away_from_kinks(np.random.default_rng(seed), shape)
    result = _check_activation(backend, name, x, seed)
    assert result.max_error < 1e-6


@pytest.mark.parametrize("name", BUILT_INS)
def test_derivative_check_would_catch_a_wrong_derivative(backend, name):
    act = A.get_activation(name)
    wrong = A.Activation("wrong", act.forward, lambda x, y: 1.1 * act.derivative(x, y) + 0.05)
    x = away_from_kinks(np.random.default_rng(0), (3, 4))
    with pytest.raises(GradcheckError):
        _check_activation(backend, wrong, x)


@pytest.mark.parametrize("name", BUILT_INS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_for_huge_inputs(name, dtype):
    act = A.get_activation(name)
    x = np.array([-1e4, -1e3, -100.0, -20.0, -1.0, 0.0, 1.0, 20.0, 100.0, 1e3, 1e4], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        y = act.forward(x)
        d = act.derivative(x, y)
    assert y.dtype == dtype and d.dtype == dtype
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(d))


# --------------------------------------------------------------------------- elu/selu far below 0
def negative_inputs(dtype) -> np.ndarray:
    """z in [-80, 0) in ``dtype``: a grid, random points, and tiny negatives down to -1e-30."""
    rng = np.random.default_rng(11)
    parts = [np.linspace(-80, 0, 1601, endpoint=False), -rng.uniform(0, 80, 400), -np.logspace(-30, 0, 61)]
    return np.concatenate(parts).astype(dtype)


@functools.lru_cache(maxsize=None)
def _exact(name: str, values: tuple) -> np.ndarray:
    with localcontext() as context:  # Decimal: e^z to 40 digits from the exact binary value of each z
        context.prec = 40
        factor = Decimal(1) if name == "elu" else Decimal(A.SELU_SCALE) * Decimal(A.SELU_ALPHA)
        return np.array([float(factor * Decimal(v).exp()) for v in values])


def exact_negative_derivative(name: str, z: np.ndarray) -> np.ndarray:
    """The true f'(z) (float64) of elu or selu for z < 0: $e^z$ or $\\lambda\\alpha e^z$ (of the constants as stored)."""
    assert np.all(z < 0)
    return _exact(name, tuple(np.asarray(z, dtype=np.float64).tolist()))


def assert_relatively_accurate(d, z, name, dtype, ulps: float = 4.0) -> None:
    """``d`` is the derivative of ``name`` at ``z`` to within ``ulps`` units of ``dtype``'s epsilon, relatively."""
    d = np.asarray(to_host(d), dtype=np.float64).ravel()
    truth = exact_negative_derivative(name, np.asarray(to_host(z)).ravel())
    relative = np.abs(d - truth) / truth
    worst = int(np.argmax(relative))
    assert relative[worst] <= ulps * np.finfo(dtype).eps, (
        f"{name}'({np.asarray(to_host(z)).ravel()[worst]}) = {d[worst]:.6e}, truth {truth[worst]:.6e}: "
        f"relative error {relative[worst]:.2e}"
    )


@pytest.mark.parametrize("name", ["elu", "selu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_elu_selu_derivatives_are_relatively_accurate_far_below_zero(backend, name, dtype):
    """$\\alpha e^z$ from $e^{\\min(z, 0)}$, not $f(z) + \\alpha$ (which is exactly 0 below z = -17 in float32)."""
    act = A.get_activation(name)
    z_host = negative_inputs(dtype)
    z = backend.asarray(z_host)
    d = act.derivative(z, act.forward(z))
    assert d.dtype == dtype
    assert_relatively_accurate(d, z_host, name, dtype)


def test_known_values():
    x = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    np.testing.assert_allclose(A.relu(x), [0, 0, 0, 0.5, 2])
    np.testing.assert_allclose(A.sigmoid(x), 1 / (1 + np.exp(-x)), rtol=1e-15)
    np.testing.assert_allclose(A.leaky_relu(x), [-0.02, -0.005, 0, 0.5, 2])
    np.testing.assert_allclose(A.elu(x), np.where(x > 0, x, np.exp(x) - 1), rtol=1e-14)
    np.testing.assert_allclose(A.selu(x), 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * (np.exp(x) - 1)), rtol=1e-14)
    np.testing.assert_allclose(A.softplus(x), np.log1p(np.exp(x)), rtol=1e-14)
    np.testing.assert_allclose(A.silu(x), x / (1 + np.exp(-x)), rtol=1e-14)
    assert A.sigmoid(np.array([-1e4]))[0] == 0.0 and A.sigmoid(np.array([1e4]))[0] == 1.0


def test_kink_conventions_follow_pytorch():
    zero = np.zeros(1)
    assert A.relu_derivative(zero, A.relu(zero))[0] == 0.0
    assert A.leaky_relu_derivative(zero, A.leaky_relu(zero))[0] == pytest.approx(0.01)
    assert A.elu_derivative(zero, A.elu(zero))[0] == 1.0


def test_bounds_contain_every_value():
    x = np.linspace(-50, 50, 20001)
    for name in BUILT_INS:
        act = A.get_activation(name)
        y = act.forward(x)
        lo, hi = act.bounds
        assert lo is None or y.min() >= lo - 1e-12, name
        assert hi is None or y.max() <= hi + 1e-12, name


def test_copies_of_an_activation_are_the_activation():
    """A copied network keeps the registered objects, by which the fused kernels know the built-ins."""
    from smartmixed_np.fast.kernels import has_kernel
    from smartmixed_np.nn.mlp import MLP

    elu = A.get_activation("elu")
    assert copy.copy(elu) is elu and copy.deepcopy(elu) is elu
    model = copy.deepcopy(MLP([3, 4, 2], "smartmixed", seed=0))
    assert all(has_kernel(a) for a in model.activations[0].pool)


def test_default_pool_order():
    assert A.DEFAULT_POOL == ("relu", "sigmoid", "tanh", "leaky_relu", "elu", "selu")
    assert [a.name for a in A.resolve_pool(None)] == list(A.DEFAULT_POOL)


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown activation 'swishy'.*relu"):
        A.get_activation("swishy")
    with pytest.raises(ValueError, match="unknown activation"):
        A.resolve_pool(["relu", "nope"])
    with pytest.raises(ValueError, match="twice"):
        A.resolve_pool(["relu", "relu"])
    with pytest.raises(ValueError, match="empty"):
        A.resolve_pool([])


def test_register_a_user_candidate(backend):
    def cube_root_ish(x):
        xp = A.array_module(x)
        return x / (1 + xp.abs(x))  # softsign

    def softsign_derivative(x):
        xp = A.array_module(x)
        return 1 / (1 + xp.abs(x)) ** 2

    try:
        act = A.register_activation("softsign_test", cube_root_ish, softsign_derivative, bounds=(-1.0, 1.0))
        assert A.get_activation("softsign_test") is act
        x = away_from_kinks(np.random.default_rng(3), (3, 5))
        assert _check_activation(backend, "softsign_test", x).passed
        with pytest.raises(ValueError, match="already registered"):
            A.register_activation("softsign_test", cube_root_ish, softsign_derivative)
    finally:
        A._REGISTRY.pop("softsign_test", None)


def test_register_rejects_bad_definitions():
    with pytest.raises(ValueError, match="name"):
        A.register_activation("", A.relu, A.relu_derivative)
    with pytest.raises(ValueError, match="name"):
        A.register_activation("a,b", A.relu, A.relu_derivative)
    with pytest.raises(TypeError, match="callables"):
        A.register_activation("not_callable", 3, A.relu_derivative)


def test_functions_work_on_the_device(backend):
    x = backend.asarray(np.linspace(-3, 3, 7))
    for name in BUILT_INS:
        act = A.get_activation(name)
        y = act.forward(x)
        assert backend.owns(y) and backend.owns(act.derivative(x, y))
        np.testing.assert_allclose(to_host(y), act.forward(np.linspace(-3, 3, 7)))


def test_clamp_sides_skipped_only_where_the_range_allows():
    assert A.clamp_limits(A.get_activation("sigmoid"), 10.0) == (None, None)
    assert A.clamp_limits(A.get_activation("tanh"), 10.0) == (None, None)
    assert A.clamp_limits(A.get_activation("relu"), 10.0) == (None, 10.0)
    assert A.clamp_limits(A.get_activation("elu"), 10.0) == (None, 10.0)
    assert A.clamp_limits(A.get_activation("selu"), 10.0) == (None, 10.0)
    assert A.clamp_limits(A.get_activation("leaky_relu"), 10.0) == (-10.0, 10.0)
    assert A.clamp_limits(A.get_activation("selu"), 1.0) == (-1.0, 1.0)
    assert A.clamp_limits(A.get_activation("relu"), None) == (None, None)
