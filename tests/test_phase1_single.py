"""The phase-1 pair without the candidate stack (fast/phase1.mixture_forward_single /
mixture_backward_single, fast/compiled.shared_backward) against the reference and the fused pair."""

from __future__ import annotations

import numpy as np
import pytest

from smartmixed_np.core.activations import Activation, clamp_limits, resolve_pool
from smartmixed_np.core.gradcheck import check_vjp
from smartmixed_np.core.phase1 import (
    MixtureCache, gumbel_softmax_weights, mixture_backward, mixture_forward, straight_through_surrogate,
)
from smartmixed_np.fast import compiled
from smartmixed_np.fast.kernels import activation_forward_into
from smartmixed_np.fast.phase1 import (
    SelectedMixtureCache, _selection, mixture_backward_compiled, mixture_backward_fused, mixture_backward_single,
    mixture_forward_fused, mixture_forward_single,
)
from smartmixed_np.fast.workspace import Workspace
from strategies import beyond_clamp, ulps

pytestmark = pytest.mark.skipif(
    not compiled.status().startswith("numba"), reason=f"the single-pass phase 1 needs Numba: {compiled.status()}"
)

SIX = resolve_pool(None)
DTYPES = [np.float32, np.float64]
#: Each candidate's value in the backward's pass (compiled.shared_candidate_values, from the shared
#: t = e^{-|z|} and m = expm1(-|z|)), against the kernels', in ulps, by dtype, as the docstrings of
#: compiled.shared_backward and fast.phase1.mixture_backward_single state them. Float32: t and m from
#: compiled._exp_parts, measured over every float32 with |z| <= 104 (AVX-512 and the AVX2 limit);
#: float64: t and m NumPy's, tanh measured over 2.5 million inputs, the others exact.
SHARED_ULPS = {
    np.dtype(np.float32): {"sigmoid": 4, "tanh": 4, "elu": 3, "selu": 5},
    np.dtype(np.float64): {"tanh": 4},
}
TANH_ULPS = {dtype: bounds["tanh"] for dtype, bounds in SHARED_ULPS.items()}

#: The forward's values in float32 (compiled.grouped_forward, whose exponentials are computed in the
#: loop: compiled._exp_parts), against the kernels' (NumPy's exp, tanh, expm1), as its docstring
#: states them: measured over every float32 z with |z| <= 104. In float64 the forward is bitwise the kernels'.
FORWARD_ULPS = {"sigmoid": 4, "tanh": 3, "elu": 3, "selu": 5}


def value_ulps(name: str, dtype) -> float:
    """How far (in ulps) a candidate's value from the compiled backward may lie from the kernels'."""
    return SHARED_ULPS[np.dtype(dtype)].get(name, 0)


def forward_ulps(name: str, dtype) -> float:
    """How far (in ulps) the compiled forward's value of ``name`` may lie from the kernels'."""
    return FORWARD_ULPS.get(name, 0) if np.dtype(dtype) == np.float32 else 0


def assert_values_close(ours, reference, names, dtype, bound=forward_ulps):
    """(B, N) forward values: neuron n, whose selected candidate is ``names[n]``, within
    ``bound(names[n], dtype)`` ulps of the reference (bitwise where that is 0), with the reference's sign."""
    ours, reference = np.asarray(ours), np.asarray(reference)
    assert ours.dtype == reference.dtype and ours.shape == reference.shape
    limits = np.array([bound(name, dtype) for name in names])
    exact = limits == 0
    assert_bitwise_equal(ours[:, exact], reference[:, exact])
    assert np.all(ulps(ours, reference) <= limits[None, :])
    normal = np.abs(reference) >= np.finfo(reference.dtype).tiny  # a subnormal's sign may be lost in an ulp
    np.testing.assert_array_equal(np.sign(ours)[normal], np.sign(reference)[normal])


def assert_bitwise_equal(ours, reference):
    ours, reference = np.asarray(ours), np.asarray(reference)
    assert ours.dtype == reference.dtype and ours.shape == reference.shape
    bits = np.uint32 if ours.dtype == np.float32 else np.uint64
    np.testing.assert_array_equal(ours.view(bits), reference.view(bits))


def assert_gradients_close(ours, reference, dout, names, dtype, own_exp=False):
    """(B, N) input gradients, neuron n's candidate ``names[n]``, of two forwards whose values differ by
    :func:`forward_ulps`. Bitwise for relu and leaky relu, and for elu and selu, whose derivatives read
    e^{min(z,0)} (and only the sign of the value), unless ``own_exp``: that e^{min(z,0)} is then the
    shared t (float32: compiled._exp_parts, within about an ulp; the reference's is NumPy's, within
    about 2), and the gradients agree to 4 eps relatively. Sigmoid's a (1 - a) and tanh's 1 - a^2 move
    by at most 2 |delta a| for a in [-1, 1]: within (2 u + 2) eps |dout| for u ulps of a."""
    ours, reference, dout = np.asarray(ours), np.asarray(reference), np.asarray(dout)
    eps = np.finfo(dtype).eps
    values = np.array([forward_ulps(name, dtype) if name in ("sigmoid", "tanh") else 0 for name in names])
    exponential = np.array([own_exp and np.dtype(dtype) == np.float32 and name in ("elu", "selu") for name in names])
    exact = (values == 0) & ~exponential
    assert_bitwise_equal(ours[:, exact], reference[:, exact])
    difference = np.abs(ours.astype(np.float64) - reference.astype(np.float64))
    bound = (2 * values[None, :] + 2) * eps * np.abs(dout.astype(np.float64))
    assert np.all(difference[:, values > 0] <= bound[:, values > 0])
    relative = 4 * eps * np.abs(reference.astype(np.float64))
    assert np.all(difference[:, exponential] <= relative[:, exponential])


def feature_major(host: np.ndarray) -> np.ndarray:
    """A (B, N) view of a C-contiguous (N, B) copy: the networks' layout."""
    return np.ascontiguousarray(host.T).T


def edge_values(clamp: float | None) -> np.ndarray:
    """Inputs at which a candidate's value is exactly at a clamp edge (or would be), and zeros."""
    values = [0.0, -0.0, 1e-30, -1e-30]
    if clamp is not None:
        c = float(clamp)
        values += [c, -c, 100 * c, -100 * c, c / 1.0507009873554805, 1.5 * c, -1.5 * c]
    return np.array(values)


def make_case(seed, batch, width, pool, dtype, clamp=10.0, scale=4.0, noise=True):
    """z, dout (feature-major), logits that make neuron n select candidate n mod K, noise."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((batch, width)) * scale
    z.flat[: min(z.size, 20)] = np.resize(edge_values(clamp), min(z.size, 20))
    dout = rng.standard_normal((batch, width))
    logits = rng.standard_normal((width, len(pool))) * 0.1
    logits[np.arange(width), np.arange(width) % len(pool)] += 20.0
    gumbel = rng.gumbel(size=logits.shape).astype(dtype) if noise else None
    return feature_major(z.astype(dtype)), feature_major(dout.astype(dtype)), logits.astype(dtype), gumbel


# --------------------------------------------------------------------------- candidate values
def _many_inputs(dtype) -> np.ndarray:
    rng = np.random.default_rng(5)
    tiny = np.finfo(dtype).smallest_subnormal
    parts = [
        rng.standard_normal(40_000) * 3, rng.uniform(-30, 30, 40_000), rng.uniform(-1e-3, 1e-3, 20_000),
        np.sign(rng.standard_normal(20_000)) * np.logspace(-30, 3, 20_000),
        np.array([0.0, -0.0, tiny, -tiny, 10.0, -10.0, 0.5, -0.5, 1e4, -1e4, 100.0, -100.0]),
    ]
    return np.concatenate(parts).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("clamp", [None, 10.0, 0.5])
def test_shared_candidate_values_are_the_kernels_to_the_stated_ulps(dtype, clamp):
    """Every candidate's value from t = e^{-|z|} and m = expm1(-|z|): within SHARED_ULPS of the fused
    kernels' (bitwise where that is 0: relu, leaky relu; in float64 all but tanh), with their sign
    (huge, tiny, zero inputs and the clamp edges)."""
    z = _many_inputs(dtype)
    table = compiled.candidate_table(SIX, clamp, np.dtype(dtype))
    values = compiled.shared_candidate_values(np.ascontiguousarray(z[None, :]), table)[:, 0]
    for k, activation in enumerate(SIX):
        lo, hi = clamp_limits(activation, clamp)
        kernel = activation_forward_into(activation, z, lo, hi, np.empty_like(z))
        limit = value_ulps(activation.name, dtype)
        if limit:
            assert ulps(values[k], kernel).max() <= limit
            normal = np.abs(kernel) >= np.finfo(dtype).tiny  # a subnormal's sign may be lost in an ulp
            np.testing.assert_array_equal(np.sign(values[k])[normal], np.sign(kernel)[normal])
        else:
            assert_bitwise_equal(values[k], kernel)


# --------------------------------------------------------------------------- forward
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("clamp", [None, 10.0, 0.5])
@pytest.mark.parametrize("batch, width", [(1, 7), (13, 37), (64, 18)])
@pytest.mark.parametrize("pool", [SIX, resolve_pool("tanh,relu"), resolve_pool("selu,sigmoid,elu,leaky_relu")])
def test_forward_is_the_fused_forward_and_the_reference_to_the_stated_ulps(dtype, clamp, batch, width, pool):
    z, _, logits, noise = make_case(batch * 100 + width, batch, width, pool, dtype, clamp)
    out, cache = mixture_forward_single(z, logits, noise, pool, tau=0.5, clamp=clamp, workspace=Workspace(np))
    assert isinstance(cache, SelectedMixtureCache) and cache.candidates is None
    assert set(cache.selected.tolist()) == set(range(min(width, len(pool))))  # every candidate somewhere
    out_fused, cache_fused = mixture_forward_fused(z, logits, noise, pool, tau=0.5, clamp=clamp)
    names = [pool[k].name for k in cache.selected]
    assert_values_close(out, out_fused, names, dtype)
    np.testing.assert_array_equal(cache.selected, cache_fused.selected)
    assert_bitwise_equal(cache.weights, cache_fused.weights)
    out_ref, cache_ref = mixture_forward(z, logits, noise, pool, tau=0.5, hard=True, clamp=clamp)
    # the reference's values to the same ulps (its elu(-0) is +0, hence not bitwise)
    assert np.all(ulps(out, out_ref) <= np.array([forward_ulps(n, dtype) for n in names])[None, :])
    np.testing.assert_array_equal(cache.selected, cache_ref.selected)


def test_forward_without_noise_selects_by_the_logits():
    z, _, logits, _ = make_case(3, 5, 12, SIX, np.float64)
    _, cache = mixture_forward_single(z, logits, None, SIX, tau=1.0)
    np.testing.assert_array_equal(cache.selected, np.argmax(logits, axis=1))
    assert cache.noise is None


# --------------------------------------------------------------------------- backward
def _backward_case(seed, batch, width, pool, dtype, clamp, tau=0.5):
    z, dout, logits, noise = make_case(seed, batch, width, pool, dtype, clamp)
    _, cache = mixture_forward_single(z, logits, noise, pool, tau=tau, clamp=clamp)
    _, cache_fused = mixture_forward_fused(z, logits, noise, pool, tau=tau, clamp=clamp)
    _, cache_ref = mixture_forward(z, logits, noise, pool, tau=tau, hard=True, clamp=clamp)
    return z, dout, cache, cache_fused, cache_ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("clamp", [None, 10.0, 0.5])
@pytest.mark.parametrize("batch, width", [(1, 1), (13, 37), (128, 24)])
@pytest.mark.parametrize("pool", [SIX, resolve_pool("tanh,relu"), resolve_pool("selu,sigmoid,elu,leaky_relu")])
def test_backward_dz_is_the_fused_dz_and_dlogits_within_the_stated_bound(dtype, clamp, batch, width, pool):
    """dz that of the fused and compiled backwards (the clamp edges ±c included): bitwise, but in float32
    sigmoid's and tanh's, which read the forward's values (assert_gradients_close); dy within
    TANH_ULPS per term (plus the reference sum's own rounding) of the reference's; dlogits to match."""
    z, dout, cache, cache_fused, cache_ref = _backward_case(batch + width, batch, width, pool, dtype, clamp)
    dz, dlogits = mixture_backward_single(dout, cache, pool, workspace=Workspace(np))
    dz_fused, dlogits_fused = mixture_backward_fused(dout, cache_fused, pool)
    dz_compiled, _ = mixture_backward_compiled(dout, cache_fused, pool)
    # from the forward's values: those of sigmoid and tanh differ by a few ulps in float32
    names = [pool[k].name for k in cache.selected]
    assert_gradients_close(dz, dz_fused, dout, names, dtype, own_exp=True)
    assert_gradients_close(dz, dz_compiled, dout, names, dtype, own_exp=True)
    dz_ref, dlogits_ref = mixture_backward(dout, cache_ref, pool)
    eps = np.finfo(dtype).eps
    # relatively to 4 eps (8 where elu's and selu's e^{min(z,0)} is the shared t), and by the forward's
    # ulps where sigmoid's and tanh's derivatives read its values
    values = np.array([forward_ulps(n, dtype) if n in ("sigmoid", "tanh") else 0 for n in names])[None, :]
    relative = 8 if np.dtype(dtype) == np.float32 else 4
    bound = relative * eps * np.abs(dz_ref.astype(np.float64)) + (2 * values + 2) * (values > 0) * eps * np.abs(dout)
    assert np.all(np.abs(dz.astype(np.float64) - dz_ref.astype(np.float64)) <= bound)
    # dy_nk = sum_b dout a_k: each term within value_ulps (relatively), each sum in the dtype (ours
    # and the reference's, in two orders): |error| <= (ulps + 2 batch + 2) eps sum_b |dout a_k|.
    magnitude = np.einsum("bn,kbn->nk", np.abs(dout.astype(np.float64)), np.abs(cache_ref.candidates.astype(np.float64)))
    dy_bound = (max(SHARED_ULPS[np.dtype(dtype)].values()) + 2 * batch + 2) * eps * magnitude
    # dlogits = y (dy - <y, dy>) / tau: an error e in dy moves it by at most 2 max_k e_k / tau.
    bound = 2 * dy_bound.max(axis=1, keepdims=True) / cache.tau + 4 * eps * np.abs(dlogits_ref)
    assert np.all(np.abs(dlogits.astype(np.float64) - dlogits_ref.astype(np.float64)) <= bound)
    assert np.all(np.abs(dlogits.astype(np.float64) - dlogits_fused.astype(np.float64)) <= bound)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dy_is_the_sum_of_the_reference_candidates_to_the_stated_ulps(dtype):
    """compiled.shared_backward's dy against the exact (float64) sum of the reference's own candidate
    values: tanh's few ulps (and in float32 elu's and selu's) separate the terms, and the sum in the
    dtype rounds at most once per term (any order): |dy - exact| <= (ulps + B + 1) eps sum_b |terms|."""
    batch = 96
    z, dout, cache, _, cache_ref = _backward_case(11, batch, 30, SIX, dtype, 10.0)
    zT, doutT = z.T, dout.T
    dy = compiled.shared_backward(doutT, zT, cache.out.T, cache.selected, cache.table, np.empty_like(zT),
                                  np.empty_like(zT), np.empty_like(zT))
    assert dy.dtype == np.dtype(dtype)
    terms = dout.astype(np.float64)[None] * cache_ref.candidates.astype(np.float64)  # (K, B, N)
    exact = terms.sum(axis=1).T
    magnitude = np.abs(terms).sum(axis=1).T
    eps = np.finfo(dtype).eps
    limits = np.array([value_ulps(a.name, dtype) for a in SIX])  # (K,)
    bound = (limits[None, :] + batch + 1) * eps * magnitude + 1e-300
    assert np.all(np.abs(dy - exact) <= bound)
    # and not looser than that: the sums are not those of some other candidate or sign
    wrong = (limits[None, :] + batch + 1) * eps * magnitude < np.abs(exact - exact[:, ::-1])
    assert wrong.any()


def test_the_gradient_at_exactly_the_clamp_is_zero_open_convention():
    """At a value exactly ±c (relu, leaky relu, elu at z = ±c) dz is 0 (ours, "open"), as the reference's."""
    pool = resolve_pool("relu,leaky_relu,elu")
    z = feature_major(np.array([[10.0, 10.0, 10.0], [-1000.0, -10.0, 9.0]]))
    logits = np.eye(3) * 20.0
    out, cache = mixture_forward_single(z, logits, None, pool, tau=1.0, clamp=10.0)
    np.testing.assert_array_equal(out[0], [10.0, 10.0, 10.0])
    dz, _ = mixture_backward_single(feature_major(np.ones((2, 3))), cache, pool)
    _, cache_ref = mixture_forward(z, logits, None, pool, tau=1.0, hard=True, clamp=10.0)
    dz_ref, _ = mixture_backward(np.ones((2, 3)), cache_ref, pool)
    np.testing.assert_array_equal(dz, dz_ref)
    np.testing.assert_array_equal(dz[0], [0.0, 0.0, 0.0])


def test_two_calls_give_the_same_bits():
    z, dout, cache, _, _ = _backward_case(7, 128, 40, SIX, np.float32, 10.0)
    workspace = Workspace(np)
    dz1, dlogits1 = (a.copy() for a in mixture_backward_single(dout, cache, SIX, workspace=workspace))
    dz2, dlogits2 = mixture_backward_single(dout, cache, SIX, workspace=workspace)
    assert_bitwise_equal(dz1, dz2)
    assert_bitwise_equal(dlogits1, dlogits2)


# --------------------------------------------------------------------------- finite differences
def test_straight_through_gradient_matches_finite_differences_of_the_surrogate():
    """float64: the new pair's (dz, dlogits) is the exact gradient of the straight-through surrogate."""
    _, _, logits, noise = make_case(2, 4, 6, SIX, np.float64)
    z = feature_major(beyond_clamp(np.random.default_rng(2), (4, 6)))  # away from 0 and from the clamp's edges
    out, cache = mixture_forward_single(z, logits, noise, SIX, tau=0.7)
    onehot = np.zeros_like(cache.weights)
    onehot[np.arange(len(cache.selected)), cache.selected] = 1.0
    offset = onehot - cache.weights

    def surrogate(z, logits):
        return straight_through_surrogate(z, logits, noise, SIX, tau=0.7, offset=offset)

    np.testing.assert_allclose(surrogate(z, logits), out, rtol=1e-12, atol=1e-12)

    def vjp(dout):
        _, fresh = mixture_forward_single(z, logits, noise, SIX, tau=0.7)
        assert isinstance(fresh, SelectedMixtureCache)
        return mixture_backward_single(feature_major(dout), fresh, SIX)

    assert check_vjp(surrogate, [np.array(z), logits], vjp, seed=3).max_error < 1e-6


# --------------------------------------------------------------------------- memory and fallbacks
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_candidate_stack_is_allocated(dtype):
    """The workspace holds (N, B) buffers only: out (forward) and dz (backward), and in float64
    scratch (forward) and expm1 (backward) for NumPy's exponentials (float32 computes its own
    row by row)."""
    batch, width = 32, 20
    z, dout, logits, noise = make_case(1, batch, width, SIX, dtype)
    workspace = Workspace(np)
    _, cache = mixture_forward_single(z, logits, noise, SIX, tau=1.0, workspace=workspace)
    forward = ("out",) if dtype == np.float32 else ("out", "scratch")
    assert {name: b.shape for name, b in workspace._buffers.items()} == dict.fromkeys(forward, (width, batch))
    mixture_backward_single(dout, cache, SIX, workspace=workspace)
    shapes = {name: b.shape for name, b in workspace._buffers.items()}
    every = forward + (("dz",) if dtype == np.float32 else ("dz", "expm1"))
    assert shapes == dict.fromkeys(every, (width, batch))
    itemsize = np.dtype(dtype).itemsize
    assert workspace.nbytes == len(every) * batch * width * itemsize
    fused = Workspace(np)
    mixture_backward_fused(dout, mixture_forward_fused(z, logits, noise, SIX, tau=1.0, workspace=fused)[1], SIX, fused)
    assert fused.nbytes >= 2 * len(SIX) * batch * width * itemsize  # the old pair's stack and work buffer


def test_a_user_activation_falls_back_to_the_reference():
    cube = Activation("cube", lambda z: z**3, lambda z, a: 3 * z**2, "z^3")
    pool = (SIX[0], cube)
    z, dout, logits, noise = make_case(4, 6, 5, pool, np.float64)
    out, cache = mixture_forward_single(z, logits, noise, pool, tau=1.0)
    assert type(cache) is MixtureCache and cache.candidates is not None
    out_ref, cache_ref = mixture_forward(z, logits, noise, pool, tau=1.0, hard=True)
    np.testing.assert_array_equal(out, out_ref)
    dz, dlogits = mixture_backward_single(dout, cache, pool)
    dz_ref, dlogits_ref = mixture_backward(dout, cache_ref, pool)
    np.testing.assert_allclose(dz, dz_ref, rtol=1e-14)
    np.testing.assert_allclose(dlogits, dlogits_ref, rtol=1e-12, atol=1e-15)


def test_arrays_the_loops_cannot_take_fall_back_with_the_same_numbers(monkeypatch):
    """A (B, N)-contiguous z or dout (not feature-major) or Numba switched off: the fused pair's numbers."""
    z, dout, logits, noise = make_case(9, 8, 12, SIX, np.float64)
    _, cache_ref = mixture_forward(z, logits, noise, SIX, tau=1.0, hard=True)
    dz_ref, dlogits_ref = mixture_backward(dout, cache_ref, SIX)
    _, cache = mixture_forward_single(z, logits, noise, SIX, tau=1.0)
    dz, dlogits = mixture_backward_single(np.ascontiguousarray(dout), cache, SIX)  # dout.T not contiguous
    np.testing.assert_allclose(dz, dz_ref, rtol=1e-14)
    np.testing.assert_allclose(dlogits, dlogits_ref, rtol=1e-12, atol=1e-15)
    _, cache_rows = mixture_forward_single(np.ascontiguousarray(z), logits, noise, SIX, tau=1.0)
    assert type(cache_rows) is MixtureCache  # z.T not contiguous: the fused forward
    monkeypatch.setattr(compiled, "applies", lambda *arrays: False)
    out_off, cache_off = mixture_forward_single(z, logits, noise, SIX, tau=1.0)
    assert type(cache_off) is MixtureCache
    dz_off, dlogits_off = mixture_backward_single(dout, cache_off, SIX)
    np.testing.assert_allclose(dz_off, dz_ref, rtol=1e-14)
    np.testing.assert_allclose(dlogits_off, dlogits_ref, rtol=1e-12, atol=1e-15)


def test_the_selection_takes_the_compiled_loops_or_the_reference_with_the_same_numbers():
    """Contiguous logits and noise of one dtype: the compiled selection; transposed logits or
    noise of another dtype: the reference. The same weights and choices either way."""
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((40, 6)).astype(np.float32)
    noise = rng.gumbel(size=(40, 6)).astype(np.float32)
    calls = []
    real = compiled.softmax_selection
    compiled_selection = lambda *args: calls.append(1) or real(*args)  # noqa: E731
    for lg, nz, expect_compiled in ((logits, noise, True), (logits, None, True),
                                    (np.asfortranarray(logits), noise, False), (logits, noise.astype(np.float64), False)):
        calls.clear()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(compiled, "softmax_selection", compiled_selection)
            weights, selected = _selection(lg, nz, 0.3)
        assert bool(calls) == (expect_compiled and compiled.status().startswith("numba"))
        reference = gumbel_softmax_weights(lg, nz, 0.3)
        np.testing.assert_array_equal(weights, reference)
        np.testing.assert_array_equal(selected, np.argmax(reference, axis=-1))
