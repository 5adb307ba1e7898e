"""Fused activation kernels against the reference (activation + clamp), values and gradients."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from smartmixed_np.core.activations import DEFAULT_POOL, get_activation, register_activation
from smartmixed_np.backend import expm1_into, to_host
from smartmixed_np.core.phase2 import clamp_limits
from smartmixed_np.fast.kernels import activation_backward_into, activation_forward_into, has_kernel
from strategies import beyond_clamp, default_candidates, seeds, ulps
from test_activations import assert_relatively_accurate, negative_inputs


def _reference(activation, z, da, lo, hi):
    a = activation.forward(z)
    if lo is not None or hi is not None:
        a = np.clip(a, lo, hi)
    d = activation.derivative(z, a)
    if lo is not None:
        d = d * (a > lo)
    if hi is not None:
        d = d * (a < hi)
    return a, da * d


@given(name=default_candidates, seed=seeds, clamp=st.sampled_from([None, 10.0, 0.5]), dtype=st.sampled_from(["float32", "float64"]))
def test_kernels_match_the_reference(backend, name, seed, clamp, dtype):
    rng = np.random.default_rng(seed)
    activation = get_activation(name)
    lo, hi = clamp_limits(activation, clamp)
    scale = 10.0 if clamp is None else clamp
    z_host = np.concatenate([beyond_clamp(rng, (5, 7), scale), rng.uniform(-200, 200, (2, 7))]).astype(dtype)
    da_host = rng.standard_normal(z_host.shape).astype(dtype)
    a_ref, dz_ref = _reference(activation, z_host, da_host, lo, hi)

    z, da = backend.asarray(z_host), backend.asarray(da_host)
    a = backend.asarray(np.full(z_host.shape, np.nan, dtype=dtype))
    activation_forward_into(activation, z, lo, hi, a)
    if name in ("elu", "selu") and dtype == "float32" and backend.name == "numpy":
        # expm1 by backend.expm1_into (within 4 ulps of np.expm1); selu rounds twice more
        assert ulps(to_host(a), a_ref).max() <= 6
    else:
        np.testing.assert_array_equal(to_host(a), a_ref)  # the same operations: bitwise equal
    dz = backend.asarray(np.full(z_host.shape, np.nan, dtype=dtype))
    activation_backward_into(activation, da, z, a, lo, hi, dz)
    rtol = 1e-6 if dtype == "float32" else 1e-14
    np.testing.assert_allclose(to_host(dz), dz_ref, rtol=rtol, atol=0)


@pytest.mark.parametrize("name", DEFAULT_POOL)
def test_kernels_work_on_strided_views(name):
    activation = get_activation(name)
    z = np.random.default_rng(0).uniform(-20, 20, (6, 9))
    lo, hi = clamp_limits(activation, 10.0)
    out = np.zeros((9, 6)).T  # a feature-major (F-ordered) buffer, written through a column slice
    activation_forward_into(activation, z[:, 2:5], lo, hi, out[:, 2:5])
    np.testing.assert_array_equal(out[:, 2:5], np.clip(activation.forward(z[:, 2:5]), lo, hi))
    assert not out[:, :2].any() and not out[:, 5:].any()


@pytest.mark.parametrize("name", ["elu", "selu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("clamp", [None, 10.0])
def test_elu_selu_kernel_derivatives_are_relatively_accurate_far_below_zero(backend, name, dtype, clamp):
    """The fused backward's f'(z) for z in [-80, 0) (dz with da = 1) to a few ulps, like the reference's."""
    activation = get_activation(name)
    lo, hi = clamp_limits(activation, clamp)
    z_host = negative_inputs(dtype).reshape(1, -1)
    z = backend.asarray(z_host)
    a = backend.asarray(np.empty_like(z_host))
    dz = backend.asarray(np.full(z_host.shape, np.nan, dtype=dtype))
    activation_forward_into(activation, z, lo, hi, a)
    activation_backward_into(activation, backend.asarray(np.ones_like(z_host)), z, a, lo, hi, dz)
    assert_relatively_accurate(dz, z_host, name, dtype)


def test_only_the_registered_builtins_have_kernels():
    assert all(has_kernel(get_activation(name)) for name in DEFAULT_POOL)
    assert not has_kernel(get_activation("gelu"))
    custom = register_activation("kernel_test_square", lambda x: x * x, lambda x: 2 * x, overwrite=True)
    assert not has_kernel(custom)


def test_expm1_into_is_within_its_stated_ulps_on_host_float32_and_numpy_elsewhere():
    """backend.expm1_into: 2u/(1-u), u = tanh(x/2), on host float32: within 4 ulps of np.expm1 and 3 of
    the exact value, from -1e4 to the smallest subnormal; -inf gives -1, NaN stays NaN, -0 stays -0;
    in float64, np.expm1 itself."""
    rng = np.random.default_rng(2)
    x = -np.concatenate([rng.uniform(0, 100, 200_000), rng.uniform(0, 1, 200_000), np.logspace(-45, 4, 100_000),
                         [0.0, np.inf]]).astype(np.float32)
    ours = expm1_into(x, np.empty_like(x))
    finite = np.isfinite(x)
    assert ulps(ours[finite], np.expm1(x[finite])).max() <= 4
    assert ulps(ours[finite], np.expm1(x[finite].astype(np.float64)).astype(np.float32)).max() <= 3
    assert ours[-1] == -1.0 and np.signbit(ours[-2]) and ours[-2] == 0
    assert np.isnan(expm1_into(np.array([np.nan], np.float32), np.empty(1, np.float32))).all()
    in_place = x.copy()
    assert expm1_into(in_place, in_place) is in_place
    np.testing.assert_array_equal(in_place, ours)
    x64 = x.astype(np.float64)
    np.testing.assert_array_equal(expm1_into(x64, np.empty_like(x64)), np.expm1(x64))


def test_the_fast_expm1_choice_follows_numpys_dispatch():
    """backend.NUMPY_EXPM1_IS_FAST: False in a process whose NumPy is held below AVX-512 (there
    expm1_into takes the tanh identity); natively, whatever NumPy's feature table says."""
    import os
    import subprocess
    import sys

    code = "from smartmixed_np.backend import NUMPY_EXPM1_IS_FAST; print(NUMPY_EXPM1_IS_FAST)"
    env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    from smartmixed_np import backend

    assert backend.NUMPY_EXPM1_IS_FAST == backend._numpy_expm1_is_vectorised()


@given(seed=seeds, clamp=st.sampled_from([None, 10.0, 0.5]), dtype=st.sampled_from(["float32", "float64"]))
def test_shared_parts_give_the_same_bits_and_are_computed_once(backend, seed, clamp, dtype):
    """Every candidate's kernel with one SharedParts per pass (as phase 1 runs them) writes
    the bits it writes alone; elu and selu read one expm1 and one exp between them."""
    from smartmixed_np.fast.kernels import SharedParts

    rng = np.random.default_rng(seed)
    z = backend.asarray(rng.uniform(-15, 15, (6, 11)).astype(dtype))
    da = backend.asarray(rng.standard_normal((6, 11)).astype(dtype))
    forward_parts, backward_parts = SharedParts(z), SharedParts(z)
    for name in DEFAULT_POOL:
        activation = get_activation(name)
        lo, hi = clamp_limits(activation, clamp)
        alone, shared = (backend.asarray(np.full(z.shape, np.nan, dtype=dtype)) for _ in range(2))
        activation_forward_into(activation, z, lo, hi, alone)
        activation_forward_into(activation, z, lo, hi, shared, forward_parts)
        np.testing.assert_array_equal(to_host(shared), to_host(alone))
        dz_alone, dz_shared = (backend.asarray(np.full(z.shape, np.nan, dtype=dtype)) for _ in range(2))
        activation_backward_into(activation, da, z, alone, lo, hi, dz_alone)
        activation_backward_into(activation, da, z, alone, lo, hi, dz_shared, backward_parts)
        np.testing.assert_array_equal(to_host(dz_shared), to_host(dz_alone))
    assert sorted(forward_parts._parts) == ["expm1"] and sorted(backward_parts._parts) == ["exp"]
    expm1 = forward_parts.of_min0("expm1")
    assert forward_parts.of_min0("expm1") is expm1  # kept, not recomputed
    np.testing.assert_array_equal(to_host(expm1), to_host(expm1_into(backend.xp.minimum(z, 0), backend.xp.empty_like(z))))


def test_shared_parts_of_two_passes_share_one_buffer_per_workspace():
    """A pass's parts are dead when it ends: the backward's exp reuses the forward's buffer."""
    from smartmixed_np.fast.kernels import SharedParts
    from smartmixed_np.fast.workspace import Workspace

    z = np.random.default_rng(0).uniform(-5, 5, (4, 3))
    workspace = Workspace(np)
    forward = SharedParts(z, workspace).of_min0("expm1")
    np.testing.assert_array_equal(forward, np.expm1(np.minimum(z, 0)))
    backward = SharedParts(z, workspace).of_min0("exp")
    assert backward is forward
    np.testing.assert_array_equal(backward, np.exp(np.minimum(z, 0)))
