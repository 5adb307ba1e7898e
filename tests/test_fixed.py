"""Phase-2 fixed mixed activation: gradients, masked vs contiguous groups, clamping."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from smartmixed_np.activations import DEFAULT_POOL, resolve_pool
from smartmixed_np.backend import to_host
from smartmixed_np.fixed import FixedMixedActivation, clamp_limits, contiguous_order, fixed_backward, fixed_forward, make_groups
from smartmixed_np.gradcheck import check_vjp
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
    assert check_vjp(lambda z: fixed_forward(z, groups)[0], [z], vjp, seed=seed).max_error < 1e-6


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
    from smartmixed_np import activations

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


@given(batch=batch_sizes, width=st.integers(1, 12), seed=seeds, contiguous=st.booleans(), clamp=st.sampled_from([None, 10.0]))
def test_fused_layer_matches_the_reference_functions(backend, batch, width, seed, contiguous, clamp):
    """The layer's fused path (feature-major, permuted groups) against fixed_forward/fixed_backward."""
    from smartmixed_np.workspace import Workspace

    rng = np.random.default_rng(seed)
    choices = rng.integers(0, len(POOL), size=width)
    if contiguous:
        choices = np.sort(choices)
    layer = FixedMixedActivation(choices, clamp=clamp, contiguous=contiguous, backend=backend)
    assert layer.fused
    z = backend.asarray(beyond_clamp(rng, (batch, width)))
    da = backend.asarray(rng.standard_normal((batch, width)))
    a_ref, cache_ref = fixed_forward(z, layer.groups)
    dz_ref = to_host(fixed_backward(da, cache_ref, layer.groups))
    for workspace in (None, Workspace(backend.xp)):
        a, cache = layer.forward(z, workspace=workspace)
        np.testing.assert_array_equal(to_host(a), to_host(a_ref))
        np.testing.assert_allclose(to_host(layer.backward(da, cache, workspace=workspace)), dz_ref, rtol=1e-14, atol=0)


def test_layer_caches_name_the_path_that_made_them(backend, monkeypatch):
    """FixedCache.path says which forward ran; the layer's backward follows it, and the
    reference backward refuses a cache in grouped order."""
    from smartmixed_np import compiled
    from smartmixed_np.activations import Activation
    from smartmixed_np.fixed import FixedCache

    rng = np.random.default_rng(6)
    z = backend.asarray(rng.standard_normal((6, 4))).T  # feature-major, as an MLP keeps it
    da = backend.asarray(rng.standard_normal((4, 6)))
    masked = np.array([2, 0, 5, 2, 0, 2])
    cube = Activation("cube", lambda x: x**3, lambda x, y: 3 * x**2)  # no fused kernel
    on_host = backend.name == "numpy" and compiled.enabled()
    cases = [
        (FixedMixedActivation(masked, [cube, "relu", "tanh", "elu", "sigmoid", "selu"], clamp=10.0, backend=backend), "reference"),
        (FixedMixedActivation(np.sort(masked), POOL, contiguous=True, clamp=10.0, backend=backend), "compiled" if on_host else "fused"),
        (FixedMixedActivation(masked, POOL, clamp=10.0, backend=backend), "compiled" if on_host else "fused_grouped"),
    ]
    with monkeypatch.context() as patch:
        patch.setattr(compiled, "applies", lambda *arrays: False)
        cases.append((cases[1][0], "fused"))
        cases.append((cases[2][0], "fused_grouped"))
        for layer, path in cases[3:]:
            assert layer.forward(z)[1].path == path
    for layer, path in cases[:3]:
        a, cache = layer.forward(z)
        assert cache.path == path
        reference = FixedMixedActivation(layer.choices, layer.pool, contiguous=layer.contiguous, clamp=10.0, backend=backend)
        a_ref, cache_ref = fixed_forward(z, reference.groups)
        np.testing.assert_allclose(to_host(a), to_host(a_ref), rtol=1e-12)
        np.testing.assert_allclose(
            to_host(layer.backward(da, cache)), to_host(fixed_backward(da, cache_ref, reference.groups)), rtol=1e-12
        )
    with monkeypatch.context() as patch:
        patch.setattr(compiled, "applies", lambda *arrays: False)
        layer = cases[2][0]
        _, grouped = layer.forward(z)
        with pytest.raises(ValueError, match="grouped order"):
            fixed_backward(da, grouped, layer.groups)
    with pytest.raises(ValueError, match="path"):
        FixedCache(z=z, a=z, path="masked")


def test_passes_create_no_attribute_on_the_layer(backend):
    """The layer's state is declared in __init__ (the compiled tables fill a dict declared there)."""
    for choices, contiguous in ((np.array([2, 0, 5, 2, 0, 2]), False), (np.array([0, 0, 2, 2, 5, 5]), True)):
        layer = FixedMixedActivation(choices, POOL, contiguous=contiguous, clamp=10.0, backend=backend)
        declared = set(vars(layer))
        z = backend.asarray(np.random.default_rng(7).standard_normal((3, 6)))
        _, cache = layer.forward(z)
        layer.backward(z, cache)
        assert set(vars(layer)) == declared
