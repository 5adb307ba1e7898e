"""Phase-2 fixed mixed activation: gradients, masked vs contiguous groups, clamping."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from smartmixed_np.core.activations import DEFAULT_POOL, resolve_pool
from smartmixed_np.backend import to_host
from smartmixed_np.nn.layers import FixedMixedActivation, make_groups
from smartmixed_np.core.phase2 import clamp_limits, contiguous_order, fixed_backward, fixed_forward
from smartmixed_np.core.gradcheck import check_vjp_per_coordinate
from strategies import away_from_kinks, batch_sizes, beyond_clamp, seeds

POOL = resolve_pool(None)


def _per_neuron_reference(z, choices, clamp):
    """A plain per-neuron loop: the definition the vectorised groups must match."""
    out = np.empty_like(z)
    for n, k in enumerate(choices):
        out[:, n] = POOL[k].forward(z[:, n])
        if clamp is not None:
            out[:, n] = np.clip(out[:, n], -clamp, clamp)
    return out


@given(batch=batch_sizes, width=st.integers(1, 12), seed=seeds, contiguous=st.booleans(), clamp=st.sampled_from([None, 10.0]))
def test_gradient_matches_finite_differences(backend, batch, width, seed, contiguous, clamp):
    rng = np.random.default_rng(seed)
    choices = rng.integers(0, len(POOL), size=width)
    if contiguous:
        choices = np.sort(choices)
    z_host = beyond_clamp(rng, (batch, width)) if clamp else away_from_kinks(rng, (batch, width))
    groups = make_groups(choices, POOL, backend, contiguous=contiguous, clamp=clamp)
    z = backend.asarray(z_host)
    vjp = lambda da: [fixed_backward(da, fixed_forward(z, groups)[1], groups)]  # noqa: E731
    assert check_vjp_per_coordinate(lambda z: fixed_forward(z, groups)[0], [z], vjp, seed=seed).max_error < 1e-6


@given(batch=batch_sizes, width=st.integers(1, 12), seed=seeds, clamp=st.sampled_from([None, 10.0]))
def test_groups_match_a_per_neuron_loop(backend, batch, width, seed, clamp):
    rng = np.random.default_rng(seed)
    choices = rng.integers(0, len(POOL), size=width)
    z_host = beyond_clamp(rng, (batch, width))
    expected = _per_neuron_reference(z_host, choices, clamp)
    masked = FixedMixedActivation(choices, clamp=clamp, backend=backend)
    np.testing.assert_allclose(to_host(masked.forward(backend.asarray(z_host))[0]), expected, rtol=1e-15, atol=0)
    order = contiguous_order(choices)
    sliced = FixedMixedActivation(choices[order], clamp=clamp, contiguous=True, order=order, backend=backend)
    out = to_host(sliced.forward(backend.asarray(z_host[:, order]))[0])
    np.testing.assert_allclose(out, expected[:, order], rtol=1e-15, atol=0)
    np.testing.assert_array_equal(sliced.original_choices(), choices)


def test_contiguous_groups_are_slices_and_masked_are_indices(backend):
    choices = np.array([0, 0, 2, 2, 2, 5])
    contiguous = make_groups(choices, POOL, backend, contiguous=True, clamp=10.0)
    assert [g.columns for g in contiguous] == [slice(0, 2), slice(2, 5), slice(5, 6)]
    masked = make_groups(np.array([2, 0, 5, 2, 0, 2]), POOL, backend, contiguous=False, clamp=10.0)
    assert [to_host(g.columns).tolist() for g in masked] == [[1, 4], [0, 3, 5], [2]]
    with pytest.raises(ValueError, match="sorted"):
        make_groups(np.array([2, 0]), POOL, backend, contiguous=True, clamp=None)
    with pytest.raises(ValueError, match="index the pool"):
        make_groups(np.array([0, 6]), POOL, backend, contiguous=False, clamp=None)


def test_clamp_limits_is_still_importable_from_fixed():
    """clamp_limits moved to activations (next to the ranges it reads); the old name is the same function."""
    from smartmixed_np.core import activations

    assert clamp_limits is activations.clamp_limits


def test_clamped_outputs_get_zero_gradient(backend):
    layer = FixedMixedActivation(np.array([0, 3]), clamp=10.0, backend=backend)
    z = backend.asarray(np.array([[20.0, -2000.0], [3.0, -3.0]]))
    a, cache = layer.forward(z)
    np.testing.assert_allclose(to_host(a), [[10.0, -10.0], [3.0, -0.03]])
    dz = layer.backward(backend.asarray(np.ones((2, 2))), cache)
    np.testing.assert_allclose(to_host(dz), [[0.0, 0.0], [1.0, 0.01]])


def test_uniform_layer_is_a_plain_activation(backend):
    layer = FixedMixedActivation.uniform("tanh", 4, backend=backend)
    z = np.linspace(-20, 20, 8).reshape(2, 4)
    np.testing.assert_allclose(to_host(layer.forward(backend.asarray(z))[0]), np.tanh(z))
    relu = FixedMixedActivation.uniform("relu", 4, backend=backend)
    assert to_host(relu.forward(backend.asarray(z))[0]).max() == 20.0  # a baseline has no clamp
    assert relu.original_choice_names() == ["relu"] * 4


def test_bad_order_is_rejected():
    with pytest.raises(ValueError, match="permutation"):
        FixedMixedActivation(np.array([0, 1]), order=np.array([0, 0]))
    assert DEFAULT_POOL[0] == "relu"


def _fast_engines(backend):
    """The fast phase-2 engines that can run on ``backend``: fused always, compiled on the host with Numba."""
    from smartmixed_np.fast import compiled
    from smartmixed_np.nn.engines import CompiledGroups, FusedGroups

    return [FusedGroups] + ([CompiledGroups] if backend.name == "numpy" and compiled.enabled() else [])


@given(batch=batch_sizes, width=st.integers(1, 12), seed=seeds, contiguous=st.booleans(), clamp=st.sampled_from([None, 10.0]))
def test_fast_engines_match_the_reference_functions(backend, batch, width, seed, contiguous, clamp):
    """Each fast engine (fused kernels, feature-major with permuted groups; compiled loops)
    against fixed_forward/fixed_backward, with and without a workspace."""
    from smartmixed_np.fast.workspace import Workspace

    rng = np.random.default_rng(seed)
    choices = rng.integers(0, len(POOL), size=width)
    if contiguous:
        choices = np.sort(choices)
    layer = FixedMixedActivation(choices, clamp=clamp, contiguous=contiguous, backend=backend)
    assert layer.engine.name != "reference"
    z = backend.asarray(beyond_clamp(rng, (batch, width)))
    da = backend.asarray(rng.standard_normal((batch, width)))
    a_ref, cache_ref = fixed_forward(z, layer.groups)
    dz_ref = to_host(fixed_backward(da, cache_ref, layer.groups))
    for engine_class in _fast_engines(backend):
        engine = engine_class(layer.choices, layer.pool, layer.groups, backend, layer.clamp)
        for workspace in (None, Workspace(backend.xp)):
            for zin in (z, backend.xp.asfortranarray(z)):  # batch-major, and feature-major as an MLP keeps it
                a, cache = engine.forward(zin, workspace=workspace)
                np.testing.assert_array_equal(to_host(a), to_host(a_ref))
                np.testing.assert_allclose(to_host(engine.backward(da, cache, workspace=workspace)), dz_ref, rtol=1e-14, atol=0)


def test_each_layer_chooses_its_engine_once_and_its_caches_fit_it(backend):
    """The engine is chosen at construction: the reference for a user's activation, the
    compiled loops on the host with Numba, the CUDA kernels on a GPU backend when they are
    switched on and passed their self-check, else the fused kernels. A masked layer's fused
    cache is in grouped order, and the reference backward refuses it."""
    from smartmixed_np.fast import compiled, cuda
    from smartmixed_np.core.activations import Activation
    from smartmixed_np.nn.engines import FusedGroups, GroupedCache

    rng = np.random.default_rng(6)
    z = backend.asarray(rng.standard_normal((6, 4))).T  # feature-major, as an MLP keeps it
    da = backend.asarray(rng.standard_normal((4, 6)))
    masked = np.array([2, 0, 5, 2, 0, 2])
    cube = Activation("cube", lambda x: x**3, lambda x, y: 3 * x**2)  # no fused kernel
    kernels = cuda.kernels_for(backend)
    if kernels is not None and kernels.usable("phase2"):
        fast = "cuda"
    else:
        fast = "compiled" if backend.name == "numpy" and compiled.enabled() else "fused"
    cases = [
        (FixedMixedActivation(masked, [cube, "relu", "tanh", "elu", "sigmoid", "selu"], clamp=10.0, backend=backend), "reference"),
        (FixedMixedActivation(np.sort(masked), POOL, contiguous=True, clamp=10.0, backend=backend), fast),
        (FixedMixedActivation(masked, POOL, clamp=10.0, backend=backend), fast),
    ]
    for layer, name in cases:
        assert layer.engine.name == name
        a, cache = layer.forward(z)
        reference = FixedMixedActivation(layer.choices, layer.pool, contiguous=layer.contiguous, clamp=10.0, backend=backend)
        a_ref, cache_ref = fixed_forward(z, reference.groups)
        np.testing.assert_allclose(to_host(a), to_host(a_ref), rtol=1e-12)
        np.testing.assert_allclose(
            to_host(layer.backward(da, cache)), to_host(fixed_backward(da, cache_ref, reference.groups)), rtol=1e-12
        )
    layer = cases[2][0]
    fused = FusedGroups(layer.choices, layer.pool, layer.groups, backend, layer.clamp)
    _, grouped = fused.forward(z)
    assert isinstance(grouped, GroupedCache)
    with pytest.raises(TypeError, match="FixedCache"):
        fixed_backward(da, grouped, layer.groups)
    with pytest.raises(TypeError, match="GroupedCache"):
        fused.backward(da, fixed_forward(z, layer.groups)[1])



def test_passes_create_no_attribute_on_the_layer(backend):
    """The layer's state is declared in __init__ (the compiled tables fill a dict declared there)."""
    for choices, contiguous in ((np.array([2, 0, 5, 2, 0, 2]), False), (np.array([0, 0, 2, 2, 5, 5]), True)):
        layer = FixedMixedActivation(choices, POOL, contiguous=contiguous, clamp=10.0, backend=backend)
        declared = set(vars(layer))
        z = backend.asarray(np.random.default_rng(7).standard_normal((3, 6)))
        _, cache = layer.forward(z)
        layer.backward(z, cache)
        assert set(vars(layer)) == declared
