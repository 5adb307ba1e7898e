"""Linear layer: gradients, initialisation, shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given

from smartmixed_np.backend import SeededRNG, to_host
from smartmixed_np.core.gradcheck import GradcheckError, check_vjp_per_coordinate
from smartmixed_np.core.linear import Linear, init_linear, linear_backward, linear_forward
from strategies import layer_shapes, seeds, widths


@given(shape=layer_shapes(), d_in=widths, seed=seeds)
def test_linear_gradients_match_finite_differences(backend, shape, d_in, seed):
    batch, n_out = shape
    rng = np.random.default_rng(seed)
    x, W, b = (backend.asarray(rng.standard_normal(s)) for s in [(batch, d_in), (n_out, d_in), (n_out,)])

    def fn(x, W, b):
        return linear_forward(x, W, b)[0]

    def vjp(dz):
        _, cache = linear_forward(x, W, b)
        return linear_backward(dz, cache)

    assert check_vjp_per_coordinate(fn, [x, W, b], vjp, seed=seed).max_error < 1e-6


def test_a_wrong_weight_gradient_is_caught(backend):
    rng = np.random.default_rng(0)
    x, W, b = (backend.asarray(rng.standard_normal(s)) for s in [(3, 4), (2, 4), (2,)])

    def wrong_vjp(dz):
        _, cache = linear_forward(x, W, b)
        dx, dW, db = linear_backward(dz, cache)
        return dx, dW.T.T * 0.9, db  # a 10% error in dW

    with pytest.raises(GradcheckError):
        check_vjp_per_coordinate(lambda x, W, b: linear_forward(x, W, b)[0], [x, W, b], wrong_vjp)


def test_skipping_dx_returns_none_and_keeps_the_other_gradients(backend):
    rng = np.random.default_rng(1)
    x, W, b = (backend.asarray(rng.standard_normal(s)) for s in [(3, 4), (2, 4), (2,)])
    z, cache = linear_forward(x, W, b)
    dz = backend.asarray(rng.standard_normal((3, 2)))
    full = linear_backward(dz, cache)
    dx, dW, db = linear_backward(dz, cache, need_dx=False)
    assert dx is None
    np.testing.assert_array_equal(to_host(dW), to_host(full[1]))
    np.testing.assert_array_equal(to_host(db), to_host(full[2]))


def test_pytorch_default_initialisation(backend):
    W, b = init_linear(400, 300, SeededRNG(0), np.float32, backend)
    bound = 1 / math.sqrt(400)
    W, b = to_host(W), to_host(b)
    assert W.shape == (300, 400) and b.shape == (300,) and W.dtype == np.float32
    assert np.abs(W).max() <= bound and np.abs(b).max() <= bound
    # U(-c, c) has standard deviation c / sqrt(3)
    assert abs(W.std() - bound / math.sqrt(3)) < 0.01 * bound
    W2, _ = init_linear(400, 300, SeededRNG(0), np.float32, backend)
    np.testing.assert_array_equal(W, to_host(W2))


def test_layer_object_writes_gradients_in_place(backend):
    W, b = init_linear(4, 3, SeededRNG(0), np.float64, backend)
    layer = Linear(W, b)
    dW_buffer = layer.dW
    x = backend.asarray(np.ones((2, 4)))
    z, cache = layer.forward(x)
    layer.backward(backend.asarray(np.ones((2, 3))), cache)
    assert layer.dW is dW_buffer
    np.testing.assert_allclose(to_host(layer.dW), 2 * np.ones((3, 4)))
    np.testing.assert_allclose(to_host(layer.db), [2, 2, 2])


def test_bad_parameter_shapes():
    with pytest.raises(ValueError, match="W \\(N, D\\) and b \\(N,\\)"):
        Linear(np.zeros((3, 4)), np.zeros(4))
