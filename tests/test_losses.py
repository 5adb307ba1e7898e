"""The losses: softmax cross-entropy and the authors' double softmax; gradient, stability, input validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from smartmixed_np.backend import to_host
from smartmixed_np.core.gradcheck import check_vjp_per_coordinate
from smartmixed_np.core.losses import LOSSES, double_softmax_cross_entropy, get_loss, log_softmax, softmax_cross_entropy
from strategies import batch_sizes, seeds


@given(batch=batch_sizes, classes=st.integers(2, 6), seed=seeds)
def test_gradient_matches_finite_differences(backend, batch, classes, seed):
    rng = np.random.default_rng(seed)
    logits = backend.asarray(3 * rng.standard_normal((batch, classes)))
    labels = backend.asarray(rng.integers(0, classes, size=batch))
    fn = lambda s: softmax_cross_entropy(s, labels)[0]  # noqa: E731
    vjp = lambda u: [u * softmax_cross_entropy(logits, labels)[1]]  # noqa: E731
    assert check_vjp_per_coordinate(fn, [logits], vjp, seed=seed).max_error < 1e-6


def test_value_against_direct_formula(backend):
    rng = np.random.default_rng(0)
    s = rng.standard_normal((5, 4))
    y = rng.integers(0, 4, size=5)
    loss, _ = softmax_cross_entropy(backend.asarray(s), backend.asarray(y))
    p = np.exp(s) / np.exp(s).sum(1, keepdims=True)
    assert float(to_host(loss)) == pytest.approx(-np.mean(np.log(p[np.arange(5), y])), rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_for_huge_logits(dtype):
    s = np.array([[1e4, 0.0, -1e4], [-3e4, 3e4, 0.0]], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        loss, d = softmax_cross_entropy(s, np.array([0, 0]))
        lp = log_softmax(s)
    assert np.isfinite(loss) and np.all(np.isfinite(d)) and np.all(np.isfinite(lp))
    assert float(loss) == pytest.approx(6e4 / 2, rel=1e-6)
    assert d.dtype == dtype


def test_bad_inputs_are_named():
    s = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        softmax_cross_entropy(s, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        softmax_cross_entropy(s, np.array([0, -1, 1]))
    with pytest.raises(TypeError, match="labels must be integers"):
        softmax_cross_entropy(s, np.array([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="labels must be 1-D"):
        softmax_cross_entropy(s, np.array([0, 1]))
    with pytest.raises(ValueError, match="logits must be 2-D"):
        softmax_cross_entropy(np.zeros(4), np.array([0]))
    with pytest.raises(ValueError, match="empty batch"):
        softmax_cross_entropy(np.zeros((0, 4)), np.zeros(0, dtype=np.int64))


def test_confident_predictions_keep_full_relative_precision(backend):
    # loss = log(1 + e^-40) = e^-40 to within 1e-17 relative; log(sum) as written gives 0.
    loss, dlogits = softmax_cross_entropy(backend.asarray(np.array([[40.0, 0.0]])), backend.asarray(np.array([0])))
    assert float(to_host(loss)) == pytest.approx(np.exp(-40.0), rel=1e-12)
    np.testing.assert_allclose(to_host(dlogits), [[-np.exp(-40.0), np.exp(-40.0)]], rtol=1e-12)


def test_known_hard_case_for_finite_differences(backend):
    # batch 1, two classes, a confident prediction: found by hypothesis when log(1 + x) lost x.
    rng = np.random.default_rng(3)
    logits = backend.asarray(8 * rng.standard_normal((1, 2)))
    labels = backend.asarray(np.array([int(np.argmax(to_host(logits)))]))
    fn = lambda s: softmax_cross_entropy(s, labels)[0]  # noqa: E731
    vjp = lambda u: [u * softmax_cross_entropy(logits, labels)[1]]  # noqa: E731
    assert check_vjp_per_coordinate(fn, [logits], vjp).max_error < 1e-6


# ---------------------------------------------------------------- the double softmax
@given(batch=batch_sizes, classes=st.integers(2, 6), seed=seeds, scale=st.floats(0.1, 20.0))
def test_double_softmax_gradient_matches_central_differences(batch, classes, seed, scale):
    """float64, every coordinate, central differences (the double softmax has no kinks)."""
    rng = np.random.default_rng(seed)
    logits = scale * rng.standard_normal((batch, classes))
    labels = rng.integers(0, classes, size=batch)
    fn = lambda s: double_softmax_cross_entropy(s, labels)[0]  # noqa: E731
    vjp = lambda u: [u * double_softmax_cross_entropy(logits, labels)[1]]  # noqa: E731
    assert check_vjp_per_coordinate(fn, [logits], vjp, seed=seed).max_error < 1e-6


@given(batch=batch_sizes, classes=st.integers(2, 6), seed=seeds)
def test_double_softmax_value_against_direct_formula(batch, classes, seed):
    rng = np.random.default_rng(seed)
    s = 3 * rng.standard_normal((batch, classes))
    y = rng.integers(0, classes, size=batch)
    p = np.exp(s) / np.exp(s).sum(1, keepdims=True)
    q = np.exp(p) / np.exp(p).sum(1, keepdims=True)
    loss, _ = double_softmax_cross_entropy(s, y)
    assert float(loss) == pytest.approx(-np.mean(np.log(q[np.arange(batch), y])), rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_double_softmax_stable_and_bounded_below(dtype):
    """Huge logits: finite; a certain right answer still costs log(1 + (C-1)/e), and its gradient is zero there."""
    s = np.array([[1e4, 0.0, -1e4], [-3e4, 3e4, 0.0]], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        loss, d = double_softmax_cross_entropy(s, np.array([0, 1]))
    assert np.all(np.isfinite(d)) and d.dtype == dtype
    assert float(loss) == pytest.approx(np.log(1 + 2 / np.e), rel=1e-6)
    assert np.abs(d).max() < 1e-6


def test_double_softmax_on_the_backend(backend):
    rng = np.random.default_rng(1)
    s, y = rng.standard_normal((5, 4)), rng.integers(0, 4, size=5)
    loss, d = double_softmax_cross_entropy(backend.asarray(s), backend.asarray(y))
    loss_host, d_host = double_softmax_cross_entropy(s, y)
    assert float(to_host(loss)) == pytest.approx(float(loss_host), rel=1e-12)
    np.testing.assert_allclose(to_host(d), d_host, rtol=1e-10, atol=1e-15)


def test_double_softmax_refuses_what_cross_entropy_refuses():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        double_softmax_cross_entropy(np.zeros((3, 4)), np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="logits must be 2-D"):
        double_softmax_cross_entropy(np.zeros(4), np.array([0]))


def test_losses_by_name():
    assert get_loss("cross-entropy") is softmax_cross_entropy
    assert get_loss("double-softmax") is double_softmax_cross_entropy
    assert list(LOSSES) == ["cross-entropy", "double-softmax"]
    with pytest.raises(ValueError, match="unknown loss 'mse'; choose one of cross-entropy, double-softmax"):
        get_loss("mse")
