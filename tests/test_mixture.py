"""Phase-1 hard/soft Gumbel mixture: gradients, straight-through surrogate, noise, evaluation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from smartmixed_np.core.activations import resolve_pool
from smartmixed_np.backend import SeededRNG, get_backend, to_host
from smartmixed_np.nn.layers import FixedMixedActivation
from smartmixed_np.core.gradcheck import GradcheckError, check_vjp_per_coordinate
from smartmixed_np.nn.layers import SmartMixedActivation
from smartmixed_np.core.phase1 import gumbel_softmax_weights, init_selection_logits, mixture_backward, mixture_forward, straight_through_surrogate
from strategies import away_from_kinks, batch_sizes, beyond_clamp, seeds, taus

POOL = resolve_pool(None)
noise_shapes = st.sampled_from(["shared", "per_sample", "none"])


def _inputs(backend, seed, batch, width, noise_kind, clamp_region=False):
    rng = np.random.default_rng(seed)
    z = beyond_clamp(rng, (batch, width)) if clamp_region else away_from_kinks(rng, (batch, width))
    logits = rng.standard_normal((width, len(POOL)))
    noise = {
        "shared": lambda: rng.gumbel(size=(width, len(POOL))),
        "per_sample": lambda: rng.gumbel(size=(batch, width, len(POOL))),
        "none": lambda: None,
    }[noise_kind]()
    to = lambda a: None if a is None else backend.asarray(a)  # noqa: E731
    return to(z), to(logits), to(noise)


@given(batch=batch_sizes, width=st.integers(1, 4), seed=seeds, tau=taus, noise_kind=noise_shapes, clamp_region=st.booleans())
def test_soft_mixture_gradients_match_finite_differences(backend, batch, width, seed, tau, noise_kind, clamp_region):
    z, logits, noise = _inputs(backend, seed, batch, width, noise_kind, clamp_region)

    def fn(z, logits):
        return mixture_forward(z, logits, noise, POOL, tau=tau, hard=False)[0]

    def vjp(dout):
        _, cache = mixture_forward(z, logits, noise, POOL, tau=tau, hard=False)
        return mixture_backward(dout, cache, POOL)

    assert check_vjp_per_coordinate(fn, [z, logits], vjp, seed=seed).max_error < 1e-6


@given(batch=batch_sizes, width=st.integers(1, 4), seed=seeds, tau=taus, noise_kind=noise_shapes, clamp_region=st.booleans())
def test_straight_through_gradient_is_the_exact_gradient_of_the_surrogate(backend, batch, width, seed, tau, noise_kind, clamp_region):
    z, logits, noise = _inputs(backend, seed, batch, width, noise_kind, clamp_region)
    hard_out, cache = mixture_forward(z, logits, noise, POOL, tau=tau, hard=True)
    xp = backend.xp
    weights = cache.weights
    onehot = xp.zeros(weights.shape, dtype=weights.dtype)
    onehot_host = np.zeros(weights.shape)
    np.put_along_axis(onehot_host, to_host(cache.selected)[..., None], 1.0, axis=-1)
    onehot = backend.asarray(onehot_host)
    offset = onehot - weights  # held constant: C = onehot(s) - y(alpha_0)

    def surrogate(z, logits):
        return straight_through_surrogate(z, logits, noise, POOL, tau=tau, offset=offset)

    # The surrogate equals the hard forward at the evaluation point ...
    np.testing.assert_allclose(to_host(surrogate(z, logits)), to_host(hard_out), rtol=1e-12, atol=1e-12)

    # ... and the straight-through backward is its exact gradient.
    def vjp(dout):
        _, cache = mixture_forward(z, logits, noise, POOL, tau=tau, hard=True)
        return mixture_backward(dout, cache, POOL)

    assert check_vjp_per_coordinate(surrogate, [z, logits], vjp, seed=seed).max_error < 1e-6


def test_hard_forward_is_exactly_the_selected_candidate(backend):
    z, logits, noise = _inputs(backend, 7, 4, 6, "per_sample", clamp_region=True)
    out, cache = mixture_forward(z, logits, noise, POOL, tau=0.3, hard=True, clamp=10.0)
    z_h, sel = to_host(z), to_host(cache.selected)
    expected = np.empty_like(z_h)
    for b in range(z_h.shape[0]):
        for n in range(z_h.shape[1]):
            expected[b, n] = np.clip(POOL[sel[b, n]].forward(z_h[b, n : n + 1]), -10, 10)[0]
    np.testing.assert_array_equal(to_host(out), expected)
    assert np.abs(to_host(out)).max() <= 10.0


def test_selection_is_the_argmax_of_noisy_logits(backend):
    z, logits, noise = _inputs(backend, 3, 2, 5, "shared")
    _, cache = mixture_forward(z, logits, noise, POOL, tau=0.3, hard=True)
    np.testing.assert_array_equal(to_host(cache.selected), np.argmax(to_host(logits) + to_host(noise), axis=-1))


def test_a_wrong_logit_gradient_is_caught(backend):
    z, logits, noise = _inputs(backend, 5, 3, 3, "shared")

    def vjp(dout):
        _, cache = mixture_forward(z, logits, noise, POOL, tau=0.5, hard=False)
        dz, dlogits = mixture_backward(dout, cache, POOL)
        return dz, dlogits * 0.5  # forgot a factor

    with pytest.raises(GradcheckError):
        check_vjp_per_coordinate(lambda z, l: mixture_forward(z, l, noise, POOL, tau=0.5, hard=False)[0], [z, logits], vjp)


def test_gumbel_softmax_weights_are_stable_and_normalised(backend):
    logits = backend.asarray(np.array([[1e4, 0.0, -1e4], [0.0, 0.0, 0.0]]))
    with np.errstate(over="raise", invalid="raise", under="ignore"):
        y = to_host(gumbel_softmax_weights(logits, None, 0.01))
    np.testing.assert_allclose(y.sum(-1), 1.0)
    np.testing.assert_allclose(y[0], [1, 0, 0])


def test_initial_logits_follow_the_reference(backend):
    logits = to_host(init_selection_logits(50, 6, SeededRNG(0), np.float32, backend))
    assert logits.shape == (50, 6) and logits.dtype == np.float32
    assert np.all((logits == 0) | (logits == np.float32(0.001)))
    np.testing.assert_array_equal((logits > 0).sum(axis=1), np.ones(50))
    assert len(np.unique(logits.argmax(1))) > 1  # spread over the pool


def _layer(backend, noise_mode="shared", width=5, seed=0, **options):
    logits = init_selection_logits(width, 6, SeededRNG(seed), np.float64, backend)
    return SmartMixedActivation(logits, noise_mode=noise_mode, rng=SeededRNG(seed + 1), **options)


def test_noise_shape_follows_the_mode(backend):
    assert tuple(_layer(backend, "shared").draw_noise(3).shape) == (5, 6)
    assert tuple(_layer(backend, "per_sample").draw_noise(3).shape) == (3, 5, 6)
    assert _layer(backend, "none").draw_noise(3) is None


def test_replaying_noise_reproduces_the_forward_exactly(backend):
    layer = _layer(backend)
    z = backend.asarray(np.random.default_rng(0).standard_normal((4, 5)))
    out1, cache1 = layer.forward(z, train=True)
    out2, _ = layer.forward(z, train=True)  # fresh noise
    out3, _ = layer.forward(z, train=True, noise=cache1.mixture.noise)
    np.testing.assert_array_equal(to_host(out1), to_host(out3))
    assert not np.array_equal(to_host(cache1.mixture.noise), to_host(layer.draw_noise(4)))
    assert out2.shape == out1.shape


def test_evaluation_uses_the_argmax_without_noise(backend):
    layer = _layer(backend, width=8)
    z_host = np.random.default_rng(1).standard_normal((3, 8))
    out, _ = layer.forward(backend.asarray(z_host), train=False)
    frozen = FixedMixedActivation(to_host(layer.logits).argmax(1), clamp=10.0, backend=backend)
    np.testing.assert_array_equal(to_host(out), to_host(frozen.forward(backend.asarray(z_host))[0]))
    state = layer.rng.state
    layer.forward(backend.asarray(z_host), train=False)
    assert layer.rng.state == state  # evaluation draws nothing


def test_evaluation_follows_changed_logits(backend):
    """The evaluation layer is kept between calls, but never outlives a change of choice."""
    layer = _layer(backend, width=8)
    z = backend.asarray(np.random.default_rng(1).standard_normal((3, 8)))
    layer.forward(z, train=False)
    new_logits = np.zeros((8, len(POOL)))
    new_logits[np.arange(8), (to_host(layer.logits).argmax(1) + 1) % len(POOL)] = 5.0  # every choice moves
    layer.logits[...] = backend.asarray(new_logits, dtype=layer.logits.dtype)
    out, _ = layer.forward(z, train=False)
    frozen = FixedMixedActivation(new_logits.argmax(1), clamp=10.0, backend=backend)
    np.testing.assert_array_equal(to_host(out), to_host(frozen.forward(z)[0]))


def test_no_noise_mode_is_deterministic(backend):
    layer = _layer(backend, "none", hard=True)
    z = backend.asarray(np.random.default_rng(2).standard_normal((2, 5)))
    a, _ = layer.forward(z, train=True)
    b, _ = layer.forward(z, train=True)
    np.testing.assert_array_equal(to_host(a), to_host(b))


def test_layer_backward_writes_dlogits(backend):
    layer = _layer(backend)
    z = backend.asarray(np.random.default_rng(3).standard_normal((4, 5)))
    out, cache = layer.forward(z, train=True)
    buffer = layer.dlogits
    layer.backward(backend.asarray(np.ones((4, 5))), cache)
    assert layer.dlogits is buffer and float(to_host(abs(layer.dlogits).sum())) > 0


@pytest.mark.parametrize("tau", [0, -1.0, float("nan"), float("inf"), "0.3", None])
def test_bad_tau_is_rejected(tau):
    with pytest.raises(ValueError, match="tau must be a positive finite number"):
        _layer(get_backend("cpu"), tau=tau)


def test_bad_layer_options_are_rejected():
    backend = get_backend("cpu")
    logits = np.zeros((3, 6))
    with pytest.raises(ValueError, match="noise_mode"):
        SmartMixedActivation(logits, noise_mode="sometimes", rng=SeededRNG(0))
    with pytest.raises(ValueError, match="needs an rng"):
        SmartMixedActivation(logits)
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        SmartMixedActivation(np.zeros((3, 5)), rng=SeededRNG(0))
    with pytest.raises(ValueError, match="clamp"):
        SmartMixedActivation(logits, rng=SeededRNG(0), clamp=0)
    assert backend.name == "numpy"


@given(batch=batch_sizes, width=st.integers(1, 9), seed=seeds, tau=taus, shared=st.booleans(), clamp=st.sampled_from([None, 10.0]))
def test_fused_pair_matches_the_reference(backend, batch, width, seed, tau, shared, clamp):
    """mixture_forward_fused/mixture_backward_fused against mixture_forward/mixture_backward (hard)."""
    from smartmixed_np.fast.phase1 import mixture_backward_fused, mixture_forward_fused
    from smartmixed_np.fast.workspace import Workspace

    z, logits, noise = _inputs(backend, seed, batch, width, "shared" if shared else "none", clamp_region=True)
    dout = backend.asarray(np.random.default_rng(seed + 1).standard_normal((batch, width)))
    out_ref, cache_ref = mixture_forward(z, logits, noise, POOL, tau=tau, hard=True, clamp=clamp)
    dz_ref, dlogits_ref = (to_host(g) for g in mixture_backward(dout, cache_ref, POOL))
    for workspace in (None, Workspace(backend.xp)):
        out, cache = mixture_forward_fused(z, logits, noise, POOL, tau=tau, clamp=clamp, workspace=workspace)
        np.testing.assert_array_equal(to_host(out), to_host(out_ref))
        np.testing.assert_array_equal(to_host(cache.selected), to_host(cache_ref.selected))
        dz, dlogits = mixture_backward_fused(dout, cache, POOL, workspace=workspace)
        np.testing.assert_allclose(to_host(dz), dz_ref, rtol=1e-14, atol=0)
        np.testing.assert_allclose(to_host(dlogits), dlogits_ref, rtol=1e-12, atol=1e-15)


@given(batch=batch_sizes, width=st.integers(1, 40), seed=seeds, tau=taus, shared=st.booleans(),
       clamp=st.sampled_from([None, 10.0]), dtype=st.sampled_from([np.float32, np.float64]),
       one_choice=st.booleans())
def test_lean_pair_gives_the_fused_pairs_numbers_bit_for_bit(batch, width, seed, tau, shared, clamp, dtype, one_choice):
    """mixture_forward_lean/mixture_backward_lean (no stack, NumPy alone) against the fused pair:
    the same kernels on the same numbers, so output, dz and dlogits bitwise, with neurons of
    every candidate, and with every neuron on one candidate (the ungathered branch)."""
    from smartmixed_np.fast.phase1 import (
        LeanMixtureCache, mixture_backward_fused, mixture_backward_lean, mixture_forward_fused, mixture_forward_lean,
    )
    from smartmixed_np.fast.workspace import Workspace

    z, logits, noise = (None if a is None else a.astype(dtype)
                        for a in _inputs(get_backend("cpu"), seed, batch, width, "shared" if shared else "none", True))
    if one_choice:
        logits[:, seed % len(POOL)] += 1e3
    dout = np.random.default_rng(seed + 1).standard_normal((width, batch)).astype(dtype).T  # feature-major, as in a network
    workspaces = (None, Workspace(np))
    for workspace in workspaces:
        out_fused, cache_fused = mixture_forward_fused(z, logits, noise, POOL, tau=tau, clamp=clamp, workspace=Workspace(np))
        out, cache = mixture_forward_lean(z, logits, noise, POOL, tau=tau, clamp=clamp, workspace=workspace)
        assert isinstance(cache, LeanMixtureCache) and cache.candidates is None
        assert out.tobytes() == out_fused.tobytes()
        assert cache.selected.tobytes() == cache_fused.selected.tobytes()
        assert sorted(np.concatenate([rows for _, rows in cache.groups]).tolist()) == list(range(width))
        for k, rows in cache.groups:
            assert (cache.selected[rows] == k).all()
        dz_fused, dlogits_fused = mixture_backward_fused(dout, cache_fused, POOL, Workspace(np))
        dz, dlogits = mixture_backward_lean(dout, cache, POOL, workspace)
        assert dz.tobytes() == dz_fused.tobytes()
        assert dlogits.tobytes() == dlogits_fused.tobytes()


def test_lean_pair_keeps_two_buffers_per_layer_and_allocates_little_more():
    """The lean pair's workspace holds out, dz and the shared expm1/exp of elu and selu, (N, B)
    each, where the fused pair holds 2K + 1; a warm pass (forward and backward) allocates no
    more than two (N, B) arrays besides (its gathered blocks, a group at a time)."""
    import tracemalloc

    from smartmixed_np.fast.phase1 import mixture_backward_lean, mixture_forward_lean
    from smartmixed_np.fast.workspace import Workspace

    batch, width = 256, 96
    rng = np.random.default_rng(3)
    z = rng.standard_normal((width, batch)).astype(np.float32).T
    dout = rng.standard_normal((width, batch)).astype(np.float32).T
    logits, noise = rng.standard_normal((width, len(POOL))), rng.gumbel(size=(width, len(POOL)))
    workspace = Workspace(np)

    def step():
        _, cache = mixture_forward_lean(z, logits, noise, POOL, tau=1.0, workspace=workspace)
        mixture_backward_lean(dout, cache, POOL, workspace)

    step()
    assert {name: b.shape for name, b in workspace._buffers.items()} == dict.fromkeys(("out", "dz", "shared_0"),
                                                                                      (width, batch))
    block = batch * width * 4
    tracemalloc.start()
    try:
        step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 2 * block


def test_selection_groups_splits_the_neurons_by_their_choice():
    from smartmixed_np.fast.phase1 import selection_groups

    groups = selection_groups(np.array([2, 0, 2, 5, 0, 2]), 6)
    assert [(k, rows.tolist()) for k, rows in groups] == [(0, [1, 4]), (2, [0, 2, 5]), (5, [3])]
    assert selection_groups(np.array([], dtype=np.int64), 6) == ()


def test_each_layer_chooses_its_training_engine_once_and_its_cache_says_train_or_evaluate(backend):
    """The engine is chosen at construction (for hard selection with shared or no noise over
    built-ins: compiled or lean on the host, the CUDA kernels on a GPU backend when they are
    switched on and passed their self-check, else fused; otherwise the reference); a
    SmartMixedCache holds a training pass's mixture or an evaluation pass's frozen layer,
    never both."""
    from smartmixed_np.fast import compiled, cuda
    from smartmixed_np.nn.layers import SmartMixedCache

    kernels = cuda.kernels_for(backend)
    if kernels is not None and kernels.usable("phase1"):
        fast = "cuda"
    else:
        fast = ("compiled" if compiled.enabled() else "lean") if backend.name == "numpy" else "fused"
    z = backend.asarray(np.random.default_rng(4).standard_normal((3, 5)))
    dout = backend.asarray(np.ones((3, 5)))
    cases = [
        (_layer(backend, "shared"), True, fast),
        (_layer(backend, "none"), True, fast),
        (_layer(backend, "per_sample"), True, "reference"),
        (_layer(backend, "shared", hard=False), True, "reference"),
        (_layer(backend, "shared"), False, fast),
    ]
    for layer, train, engine in cases:
        assert layer.engine.name == engine
        _, cache = layer.forward(z, train=train)
        assert isinstance(cache, SmartMixedCache)
        assert (cache.mixture is not None) == train and (cache.frozen is not None) == (not train)
        dz = layer.backward(dout, cache)
        assert tuple(dz.shape) == (3, 5)
        assert (float(to_host(abs(layer.dlogits).sum())) > 0) == train  # an evaluation pass: zero
    with pytest.raises(ValueError, match="either"):
        SmartMixedCache()


def test_passes_create_no_attribute_on_the_layer(backend):
    """What a layer keeps is declared in __init__: forward and backward add no attribute."""
    for train in (True, False):
        layer = _layer(backend)
        declared = set(vars(layer))
        z = backend.asarray(np.random.default_rng(5).standard_normal((3, 5)))
        _, cache = layer.forward(z, train=train)
        layer.backward(backend.asarray(np.ones((3, 5))), cache)
        assert set(vars(layer)) == declared
