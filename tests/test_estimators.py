"""Phase-1 gradient estimators (core/estimators.py): each backward against the surrogate it is the
exact gradient of, or against the enumerated exact gradient in expectation; the enumeration itself
against finite differences; the estimators in the layers, the MLP and training runs; ST unchanged."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from smartmixed_np.backend import get_backend, to_host
from smartmixed_np.core.activations import resolve_pool
from smartmixed_np.core.estimators import (
    ESTIMATORS, EnumerationError, RunningBaseline, conditional_gumbel, estimator_forward, exact_expected_gradient,
    expected_loss, gumbel_rao_backward, gumbel_rao_logit_gradient, per_neuron_expected_gradient, reinmax_backward,
    reinmax_logit_gradient, reinmax_surrogate, sample_selection, score_function_backward, score_function_logit_gradient,
    selection_losses, straight_through_backward, weight_gradient,
)
from smartmixed_np.core.gradcheck import check_vjp_per_coordinate
from smartmixed_np.core.losses import softmax_cross_entropy
from smartmixed_np.core.phase1 import gumbel_softmax_weights, mixture_backward, mixture_forward, softmax_backward, straight_through_surrogate
from smartmixed_np.errors import UserError
from smartmixed_np.experiments.checkpoint import load_arrays
from smartmixed_np.experiments.train import ConfigError, TrainConfig, train
from smartmixed_np.fast import compiled
from smartmixed_np.fast.phase1 import mixture_backward_compiled, mixture_backward_fused, mixture_forward_fused
from smartmixed_np.nn.engines import CompiledMixture, LeanMixture, phase1_engine
from smartmixed_np.nn.mlp import MLP
from smartmixed_np.nn.optim import Adam
from smartmixed_np.nn.step import train_step
from strategies import away_from_kinks, batch_sizes, beyond_clamp, seeds, taus

POOL = resolve_pool(None)
SMALL_POOL = ["relu", "tanh", "elu"]
noise_kinds = st.sampled_from(["shared", "per_sample"])


def _inputs(backend, seed, batch, width, noise_kind, clamp_region=False):
    """float64 ``z`` (B, N) away from kinks (or across the clamp), logits (N, K), Gumbel noise, on ``backend``."""
    rng = np.random.default_rng(seed)
    z = beyond_clamp(rng, (batch, width)) if clamp_region else away_from_kinks(rng, (batch, width))
    logits = rng.standard_normal((width, len(POOL)))
    noise = rng.gumbel(size=(width, len(POOL)) if noise_kind == "shared" else (batch, width, len(POOL)))
    return backend.asarray(z), backend.asarray(logits), backend.asarray(noise)


def _onehot(backend, selected, k):
    xp = backend.xp
    return (xp.arange(k) == selected[..., None]).astype(np.float64)


def _softmax(a):
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------- straight-through
def test_straight_through_is_the_mixture_backward_itself(backend):
    z, logits, noise = _inputs(backend, 0, 3, 4, "shared")
    _, cache = mixture_forward(z, logits, noise, POOL, tau=0.4, hard=True)
    dout = backend.asarray(np.random.default_rng(1).standard_normal((3, 4)))
    for got, want in zip(straight_through_backward(dout, cache, POOL), mixture_backward(dout, cache, POOL)):
        assert to_host(got).tobytes() == to_host(want).tobytes()


# --------------------------------------------------------------------------- ReinMax
@given(batch=batch_sizes, width=st.integers(1, 4), seed=seeds, tau=taus, noise_kind=noise_kinds, clamp_region=st.booleans())
def test_reinmax_backward_is_the_exact_gradient_of_its_surrogate(backend, batch, width, seed, tau, noise_kind, clamp_region):
    z, logits, noise = _inputs(backend, seed, batch, width, noise_kind, clamp_region)
    out, cache = estimator_forward(z, logits, noise, POOL, tau=tau)
    onehot = _onehot(backend, cache.selected, len(POOL))
    anchor = logits.copy()

    def surrogate(z, logits):
        return reinmax_surrogate(z, logits, POOL, anchor=anchor, onehot=onehot, tau=tau)

    # The surrogate's value is the hard forward's ...
    np.testing.assert_allclose(to_host(surrogate(z, logits)), to_host(out), rtol=1e-12, atol=1e-12)

    # ... and the ReinMax backward is its exact gradient, in z and in the logits.
    def vjp(dout):
        return reinmax_backward(dout, estimator_forward(z, logits, noise, POOL, tau=tau)[1], POOL)

    assert check_vjp_per_coordinate(surrogate, [z, logits], vjp, seed=seed).max_error < 1e-6


@given(seed=seeds, width=st.integers(1, 4), k=st.integers(2, 6))
def test_reinmax_is_exact_in_expectation_for_a_quadratic_loss_at_tau_one(seed, width, k):
    """Liu et al.'s second-order accuracy: with L(D) quadratic, E_D[ReinMax] is the exact gradient (tau = 1)."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((width, k))
    A, b = rng.standard_normal((width, k, k)), rng.standard_normal((width, k))
    eye = np.eye(k)
    loss = lambda D: np.einsum("ni,nij,nj->n", D, A, D) + np.sum(b * D, axis=-1)  # noqa: E731, one loss per neuron
    slope = lambda D: np.einsum("nij,nj->ni", A + A.transpose(0, 2, 1), D) + b  # noqa: E731, dL/dD
    pi = _softmax(logits)
    # exact: sum_i L(I_i) d pi_i / d alpha, with d pi_i / d alpha_j = pi_i ([i = j] - pi_j)
    values = np.stack([loss(np.broadcast_to(eye[i], (width, k))) for i in range(k)], axis=1)  # (N, K)
    exact = pi * (values - np.sum(pi * values, axis=1, keepdims=True))
    expectation = {tau: np.zeros((width, k)) for tau in (1.0, 0.5)}
    for i in range(k):
        D = np.broadcast_to(eye[i], (width, k)).copy()
        for tau in expectation:
            expectation[tau] += pi[:, i : i + 1] * reinmax_logit_gradient(slope(D), logits, D, tau)
    np.testing.assert_allclose(expectation[1.0], exact, rtol=1e-10, atol=1e-12)
    if k > 2 or width > 1:  # away from tau = 1 the trapezoid is taken at another point: not exact
        assert np.abs(expectation[0.5] - exact).max() > 1e-6


# --------------------------------------------------------------------------- Gumbel-Rao
@given(seed=seeds, noise_kind=noise_kinds, scale=st.floats(0.1, 8.0))
def test_conditional_gumbels_select_the_given_candidate(backend, seed, noise_kind, scale):
    rng = np.random.default_rng(seed)
    logits = scale * rng.standard_normal((3, 5))
    selected = rng.integers(0, 5, size=(3,) if noise_kind == "shared" else (2, 3))
    draws = rng.standard_exponential((7,) + selected.shape + (5,))
    noise = to_host(conditional_gumbel(backend.asarray(logits), backend.asarray(selected), backend.asarray(draws)))
    assert noise.shape == draws.shape and np.isfinite(noise).all()
    np.testing.assert_array_equal(np.argmax(logits + noise, axis=-1), np.broadcast_to(selected, noise.shape[:-1]))


def test_conditional_gumbels_have_the_distribution_of_rejection_sampling():
    """The truncated-Gumbel draws match Gumbels drawn freely and kept when their argmax is s."""
    rng = np.random.default_rng(4)
    logits = np.array([[0.3, -1.0, 1.2, 0.0]])
    free = rng.gumbel(size=(200_000, 1, 4))
    for s in range(4):
        kept = free[np.argmax(logits + free, axis=-1)[:, 0] == s][:, 0]  # (R, 4)
        drawn = to_host(conditional_gumbel(logits, np.array([s]), rng.standard_exponential((50_000, 1, 4))))[:, 0]
        for stat in (lambda g: g, lambda g: g**2):
            a, b = stat(kept), stat(drawn)
            se = np.sqrt(a.var(axis=0) / len(a) + b.var(axis=0) / len(b))
            assert np.all(np.abs(a.mean(axis=0) - b.mean(axis=0)) < 5 * se), (s, a.mean(0), b.mean(0))


@given(seed=seeds, tau=taus, noise_kind=noise_kinds)
def test_gumbel_rao_with_one_draw_is_straight_through_at_the_conditional_noise(backend, seed, tau, noise_kind):
    z, logits, noise = _inputs(backend, seed, 3, 4, noise_kind)
    draws = backend.asarray(np.random.default_rng(seed + 1).standard_exponential((1,) + tuple(noise.shape)))
    _, cache = estimator_forward(z, logits, noise, POOL, tau=tau, exponentials=draws)
    dout = backend.asarray(np.random.default_rng(seed + 2).standard_normal((3, 4)))
    conditional = conditional_gumbel(logits, cache.selected, draws)[0]
    _, st_cache = mixture_forward(z, logits, conditional, POOL, tau=tau, hard=True)
    np.testing.assert_array_equal(to_host(st_cache.selected), to_host(cache.selected))
    dz_gr, dlogits_gr = gumbel_rao_backward(dout, cache, POOL)
    dz_st, dlogits_st = mixture_backward(dout, st_cache, POOL)
    np.testing.assert_allclose(to_host(dlogits_gr), to_host(dlogits_st), rtol=1e-10, atol=1e-13)
    np.testing.assert_array_equal(to_host(dz_gr), to_host(dz_st))


@given(batch=batch_sizes, width=st.integers(1, 3), seed=seeds, tau=taus, noise_kind=noise_kinds, samples=st.integers(1, 4))
def test_gumbel_rao_backward_is_the_exact_gradient_of_the_mean_surrogate(backend, batch, width, seed, tau, noise_kind, samples):
    """With the M conditional draws held, Gumbel-Rao is the gradient of the mean of M straight-through surrogates."""
    z, logits, noise = _inputs(backend, seed, batch, width, noise_kind)
    draws = backend.asarray(np.random.default_rng(seed + 1).standard_exponential((samples,) + tuple(noise.shape)))
    out, cache = estimator_forward(z, logits, noise, POOL, tau=tau, exponentials=draws)
    conditional = conditional_gumbel(logits, cache.selected, draws)
    onehot = _onehot(backend, cache.selected, len(POOL))
    offsets = [onehot - gumbel_softmax_weights(logits, conditional[m], tau) for m in range(samples)]

    def surrogate(z, logits):
        return sum(straight_through_surrogate(z, logits, conditional[m], POOL, tau=tau, offset=offsets[m])
                   for m in range(samples)) / samples

    np.testing.assert_allclose(to_host(surrogate(z, logits)), to_host(out), rtol=1e-12, atol=1e-12)

    def vjp(dout):
        return gumbel_rao_backward(dout, estimator_forward(z, logits, noise, POOL, tau=tau, exponentials=draws)[1], POOL)

    assert check_vjp_per_coordinate(surrogate, [z, logits], vjp, seed=seed).max_error < 1e-6


def test_gumbel_rao_mean_is_straight_through_given_the_selection():
    """E[Gumbel-Rao | s] = E[ST | s]: the latter by rejection sampling of free Gumbel draws."""
    rng = np.random.default_rng(7)
    width, k, tau = 3, 4, 0.5
    logits = rng.standard_normal((width, k))
    dw = rng.standard_normal((width, k))
    selected = np.argmax(logits + rng.gumbel(size=(width, k)), axis=-1)
    free = rng.gumbel(size=(100_000, width, k))
    kept = np.argmax(logits + free, axis=-1) == selected  # (R, N)
    st_grads = softmax_backward(dw, gumbel_softmax_weights(logits, free, tau)) / tau  # (R, N, K)
    count = kept.sum(axis=0)[:, None]
    st_mean = np.sum(kept[..., None] * st_grads, axis=0) / count
    st_var = np.sum(kept[..., None] * (st_grads - st_mean) ** 2, axis=0) / count
    draws = 40_000
    single = np.stack([gumbel_rao_logit_gradient(dw, logits, selected, tau, rng.standard_exponential((1, width, k)))
                       for _ in range(2_000)])  # (R, N, K), one draw each, for the standard error
    gr_mean = gumbel_rao_logit_gradient(dw, logits, selected, tau, rng.standard_exponential((draws, width, k)))
    se = np.sqrt(st_var / count + single.var(axis=0) / draws)
    assert np.all(np.abs(gr_mean - st_mean) < 5 * se + 1e-12), (gr_mean, st_mean, se)
    assert np.all(single.var(axis=0) <= st_var * 1.2 + 1e-12)  # one conditional draw: no more variance than ST given s


# --------------------------------------------------------------------------- the exact gradient
def _tiny(estimator="st", noise_mode="shared", seed=3, device="cpu", sizes=(3, 2, 2, 3)):
    model = MLP(list(sizes), "smartmixed", pool=SMALL_POOL, dtype="float64", seed=seed, estimator=estimator,
                noise_mode=noise_mode, device=device)
    rng = np.random.default_rng(seed)
    for act in model.activations:  # logits away from uniform, so that the expectation has some shape
        act.logits[...] = model.backend.asarray(rng.standard_normal(tuple(act.logits.shape)))
    backend = model.backend
    x = backend.asarray(rng.standard_normal((5, sizes[0])))
    labels = backend.asarray(rng.integers(0, sizes[-1], size=5))
    return model, x, labels


def test_exact_expected_gradient_matches_finite_differences_of_the_expected_loss(backend):
    model, x, labels = _tiny(device=backend)
    exact = exact_expected_gradient(model, x, labels)
    assert exact.evaluations == 3**4
    eps = 1e-6
    for name, grad in exact.gradients.items():
        index = int(name.split(".")[1])
        numeric = np.zeros_like(grad)
        for coordinate in np.ndindex(*grad.shape):
            values = []
            for step in (eps, -eps):
                moved = copy.deepcopy(model)
                host = to_host(moved.activations[index].logits).copy()
                host[coordinate] += step
                moved.activations[index].logits[...] = moved.backend.asarray(host)
                values.append(expected_loss(moved, x, labels))
            numeric[coordinate] = (values[0] - values[1]) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(grad.sum(axis=1), 0, atol=1e-12)  # softmax logits: each row sums to 0
    assert exact.loss == pytest.approx(expected_loss(model, x, labels), rel=1e-14)


def test_selection_losses_are_the_losses_of_the_network_with_those_choices(backend):
    model, x, labels = _tiny(device=backend)
    rng = np.random.default_rng(0)
    selections = rng.integers(0, 3, size=(6, 4))
    losses = selection_losses(model, x, labels, selections)
    for row, loss in zip(selections, losses):
        noise = {}
        for i, chosen in enumerate((row[:2], row[2:])):
            forced = 50.0 * np.eye(3)[chosen] - to_host(model.activations[i].logits)  # argmax(alpha + g) = chosen
            noise[i] = model.backend.asarray(forced)
        out = model.forward(x, train=True, noise=noise)
        model.clear_tape()
        assert float(to_host(softmax_cross_entropy(out, labels)[0])) == pytest.approx(loss, rel=1e-12)


def test_enumeration_is_refused_above_its_limit():
    model, x, labels = _tiny(sizes=(3, 8, 4, 3))
    with pytest.raises(EnumerationError, match=r"531,441 joint selections \(12 phase-1 neurons over 3 candidates\).*per_neuron") as info:
        exact_expected_gradient(model, x, labels)
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)
    assert exact_expected_gradient(_tiny()[0], *_tiny()[1:], max_combinations=81).evaluations == 81
    with pytest.raises(EnumerationError):
        exact_expected_gradient(*_tiny(), max_combinations=80)


def test_per_neuron_gradients_average_to_the_exact_gradient():
    """The mean over s ~ p of the per-neuron enumeration (the others held at s) is the exact gradient."""
    model, x, labels = _tiny()
    exact = exact_expected_gradient(model, x, labels)
    pis = [_softmax(to_host(a.logits)) for a in model.activations]
    mean = {name: np.zeros_like(g) for name, g in exact.gradients.items()}
    for flat in np.ndindex(3, 3, 3, 3):
        selection = [np.array(flat[:2]), np.array(flat[2:])]
        p = np.prod([pis[i][np.arange(2), s] for i, s in enumerate(selection)])
        got = per_neuron_expected_gradient(model, x, labels, selection)
        assert got.evaluations == 4 * 3
        assert got.loss == pytest.approx(selection_losses(model, x, labels, np.array([flat]))[0], rel=1e-14)
        for name in mean:
            mean[name] += p * got.gradients[name]
    for name, grad in exact.gradients.items():
        np.testing.assert_allclose(mean[name], grad, rtol=1e-10, atol=1e-13, err_msg=name)
    with pytest.raises(ValueError, match="selection"):
        per_neuron_expected_gradient(model, x, labels, [np.array([0, 5]), np.array([0, 0])])
    drawn = sample_selection(model, np.random.default_rng(0))
    assert [s.shape for s in drawn] == [(2,), (2,)] and all(((s >= 0) & (s < 3)).all() for s in drawn)


# --------------------------------------------------------------------------- score function
def test_score_function_with_any_constant_baseline_averages_to_the_exact_gradient():
    """sum_s p(s) (L(s) - b)(onehot(s) - pi) is the exact gradient whatever b: the baseline adds no bias."""
    model, x, labels = _tiny()
    exact = exact_expected_gradient(model, x, labels)
    selections = np.array(list(np.ndindex(3, 3, 3, 3)))
    losses = selection_losses(model, x, labels, selections)
    logits = [to_host(a.logits) for a in model.activations]
    pis = [_softmax(a) for a in logits]
    for baseline in (0.0, 1.3, -4.0):
        mean = [np.zeros((2, 3)), np.zeros((2, 3))]
        for row, loss in zip(selections, losses):
            p = pis[0][[0, 1], row[:2]].prod() * pis[1][[0, 1], row[2:]].prod()
            for i, chosen in enumerate((row[:2], row[2:])):
                mean[i] += p * score_function_logit_gradient(logits[i], chosen, loss - baseline)
        for i in range(2):
            np.testing.assert_allclose(mean[i], exact.gradients[f"activations.{i}.logits"], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("noise_mode", ["shared", "per_sample"])
def test_score_function_in_the_network_is_unbiased(noise_mode):
    """The MLP's score-function gradient (running baseline), averaged over draws, is the enumerated exact gradient."""
    model, x, labels = _tiny("score", noise_mode=noise_mode)
    exact = exact_expected_gradient(model, x, labels)
    draws = 4000
    samples = {name: np.empty((draws,) + g.shape) for name, g in exact.gradients.items()}
    for r in range(draws):
        loss, dlogits = softmax_cross_entropy(model.forward(x, train=True), labels)
        model.backward(dlogits, loss=loss)
        for name in samples:
            samples[name][r] = model.gradients()[name]
    for name, grad in exact.gradients.items():
        mean, se = samples[name].mean(axis=0), samples[name].std(axis=0) / np.sqrt(draws)
        assert np.all(np.abs(mean - grad) < 5 * se + 1e-12), (name, mean, grad, se)
        assert np.linalg.norm(mean - grad) < 0.25 * np.linalg.norm(grad)  # and the check has power


def test_running_baseline_is_the_corrected_mean_of_past_losses():
    baseline = RunningBaseline(decay=0.5)
    assert baseline.value == 0.0
    baseline.update(2.0)
    assert baseline.value == 2.0  # bias-corrected: the first loss itself
    baseline.update(np.float64(4.0))
    assert baseline.value == pytest.approx((0.5 * 0.5 * 2 + 0.5 * 4) / (1 - 0.25))
    restored = RunningBaseline()
    restored.load_state_dict(json.loads(json.dumps(baseline.state_dict())))
    assert restored.value == baseline.value and restored.decay == 0.5
    with pytest.raises(ValueError):
        RunningBaseline(decay=1.0)


def test_score_function_needs_the_loss():
    model, x, labels = _tiny("score")
    _, dlogits = softmax_cross_entropy(model.forward(x, train=True), labels)
    assert model.needs_loss and not _tiny()[0].needs_loss
    with pytest.raises(ValueError, match="needs the loss"):
        model.backward(dlogits)
    z, logits, noise = _inputs(get_backend("cpu"), 0, 2, 3, "shared")
    _, cache = estimator_forward(z, logits, noise, POOL, tau=0.5)
    dz, dlogits = score_function_backward(np.ones((2, 3)), cache, POOL, loss=np.float64(2.0), baseline=0.5)
    np.testing.assert_allclose(dlogits, 1.5 * (np.eye(6)[to_host(cache.selected)] - _softmax(logits)))
    np.testing.assert_array_equal(dz, mixture_backward(np.ones((2, 3)), cache, POOL)[0])


def test_weight_gradient_is_the_loss_gradient_of_the_mixture_weights():
    z, logits, noise = _inputs(get_backend("cpu"), 2, 3, 4, "per_sample")
    _, cache = estimator_forward(z, logits, noise, POOL, tau=0.5)
    dout = np.random.default_rng(0).standard_normal((3, 4))
    np.testing.assert_allclose(weight_gradient(dout, cache), np.einsum("bn,kbn->bnk", dout, cache.candidates))
    _, shared = estimator_forward(z, logits, noise[0], POOL, tau=0.5)
    np.testing.assert_allclose(weight_gradient(dout, shared), np.einsum("bn,kbn->nk", dout, shared.candidates))


# --------------------------------------------------------------------------- in the layers and the MLP
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_every_estimator_trains_on_every_backend(backend, estimator):
    model = MLP([4, 5, 3], "smartmixed", estimator=estimator, estimator_samples=3, seed=1, device=backend)
    assert model.activations[0].engine.estimator == estimator
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.standard_normal((6, 4)).astype(np.float32))
    y = backend.asarray(rng.integers(0, 3, 6))
    before = to_host(model.activations[0].logits).copy()
    optimizer = Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss, _ = train_step(model, optimizer, x, y, 1.0)
    assert np.isfinite(float(to_host(loss)))
    grads = {name: to_host(g) for name, g in model.gradients().items()}
    assert all(np.isfinite(g).all() and g.dtype == np.float32 for g in grads.values())
    assert not np.array_equal(to_host(model.activations[0].logits), before)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_estimator_config_round_trip(estimator):
    model = MLP([4, 5, 3], "smartmixed", estimator=estimator, estimator_samples=4, seed=1, noise_mode="per_sample")
    config = json.loads(json.dumps(model.config()))
    assert config["estimator"] == estimator and config["estimator_samples"] == 4
    rebuilt = MLP.from_config(config)
    assert rebuilt.options == model.options
    assert type(rebuilt.activations[0].engine) is type(model.activations[0].engine)
    assert rebuilt.freeze().config()["estimator"] == estimator


def test_a_model_description_without_an_estimator_loads_as_straight_through():
    config = MLP([4, 5, 3], "smartmixed").config()
    del config["estimator"], config["estimator_samples"]
    model = MLP.from_config(config)
    assert model.options["estimator"] == "st" and model.activations[0].engine.name in ("lean", "compiled")


def test_estimator_options_are_checked():
    with pytest.raises(ValueError, match="estimator must be one of st, reinmax, gumbel_rao, score"):
        MLP([4, 5, 3], "smartmixed", estimator="rein")
    with pytest.raises(ValueError, match="positive integer"):
        MLP([4, 5, 3], "smartmixed", estimator="gumbel_rao", estimator_samples=0)
    with pytest.raises(ValueError, match="hard selection"):
        MLP([4, 5, 3], "smartmixed", estimator="reinmax", hard=False)
    with pytest.raises(ValueError, match="sampled selection"):
        MLP([4, 5, 3], "smartmixed", estimator="score", noise_mode="none")
    MLP([4, 5, 3], "smartmixed", hard=False, noise_mode="none")  # straight-through (the default) takes every mode
    for options, message in [
        (dict(estimator="nope"), "--estimator must be one of"),
        (dict(estimator="gumbel_rao", estimator_samples=0), "--estimator-samples must be a positive integer"),
        (dict(estimator="reinmax", hard=False), "drop --soft"),
        (dict(estimator="score", noise_mode="none"), "--noise shared or per_sample"),
    ]:
        with pytest.raises(ConfigError, match=message):
            TrainConfig(dataset="spirals", **options).validate()
    TrainConfig(dataset="spirals", model="relu", estimator="reinmax", hard=False).validate()  # a baseline has no phase 1


def test_moving_a_model_keeps_its_estimator_and_baseline():
    model, x, labels = _tiny("score")
    loss, dlogits = softmax_cross_entropy(model.forward(x, train=True), labels)
    model.backward(dlogits, loss=loss)
    state = model.estimator_state()
    assert set(state) == {"activations.0", "activations.1"} and state["activations.0"]["baseline"]["steps"] == 1
    model.to("cpu", dtype="float32")
    assert model.estimator_state() == state and model.activations[0].estimator == "score"
    assert _tiny()[0].estimator_state() == {}


def _run(tmp_path, name, estimator, **options):
    settings = dict(dataset="spirals", train_limit=160, hidden=(8,), epochs=3, transition_epoch=2, batch_size=32,
                    lr=1e-2, seed=5, quiet=True, progress=False, out=str(tmp_path / name), estimator=estimator,
                    estimator_samples=3)
    settings.update(options)
    return TrainConfig(**settings)


def _same_model(a, b):
    arrays_a, _ = load_arrays(a / "model.npz")
    arrays_b, _ = load_arrays(b / "model.npz")
    assert set(arrays_a) == set(arrays_b)
    return all(arrays_a[name].tobytes() == arrays_b[name].tobytes() for name in arrays_a)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_a_training_run_per_estimator_is_reproducible_bit_for_bit(tmp_path, estimator):
    a = train(_run(tmp_path, "a", estimator))
    b = train(_run(tmp_path, "b", estimator))
    assert _same_model(a.run_dir, b.run_dir)
    strip = lambda h: [{k: v for k, v in row.items() if k != "time_s"} for row in h]  # noqa: E731
    assert strip(a.history) == strip(b.history)
    config = json.loads((a.run_dir / "config.json").read_text())
    assert config["estimator"] == estimator and config["estimator_samples"] == 3


@pytest.mark.parametrize("estimator", ["gumbel_rao", "score"])
def test_a_resumed_run_ends_like_an_uninterrupted_one(tmp_path, estimator):
    """The estimators' state (the conditional draws' stream, the baseline) survives a checkpoint."""
    reference = train(_run(tmp_path, "reference", estimator))

    def stop(epoch, step, global_step, model):
        if global_step == 3:
            raise KeyboardInterrupt

    result = train(_run(tmp_path, "interrupted", estimator), on_step=stop)
    assert result.interrupted
    result = train(resume=result.run_dir)
    assert _same_model(reference.run_dir, result.run_dir)


def test_different_estimators_train_differently(tmp_path):
    st_run = train(_run(tmp_path, "st", "st", epochs=1, transition_epoch=1))
    reinmax_run = train(_run(tmp_path, "reinmax", "reinmax", epochs=1, transition_epoch=1))
    assert not _same_model(st_run.run_dir, reinmax_run.run_dir)


# --------------------------------------------------------------------------- straight-through unchanged
def test_straight_through_keeps_its_fast_engines():
    """Choosing "st" (or nothing) gives the fused/compiled engines of before, and their very numbers."""
    cpu = get_backend("cpu")
    fast = CompiledMixture if compiled.enabled() else LeanMixture
    for engine in (phase1_engine(POOL, True, "shared", cpu), phase1_engine(POOL, True, "none", cpu, estimator="st")):
        assert type(engine) is fast
    model = MLP([4, 6, 3], "smartmixed", seed=2, estimator="st")
    layer = model.activations[0]
    assert type(layer.engine) is fast
    rng = np.random.default_rng(0)
    z = rng.standard_normal((5, 6)).astype(np.float32)
    noise = layer.draw_noise(5)
    out, cache = layer.forward(z, True, noise=noise)
    want_out, want_cache = mixture_forward_fused(z, layer.logits, noise, layer.pool, tau=layer.tau, clamp=layer.clamp)
    assert out.tobytes() == want_out.tobytes()
    dout = rng.standard_normal((5, 6)).astype(np.float32)
    dz = layer.backward(dout, cache)
    backward = mixture_backward_compiled if compiled.enabled() else mixture_backward_fused
    want_dz, want_dlogits = backward(dout, want_cache, layer.pool, None)
    assert dz.tobytes() == want_dz.tobytes() and layer.dlogits.tobytes() == want_dlogits.tobytes()


def test_straight_through_training_is_bitwise_the_default():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((16, 6)).astype(np.float32), rng.integers(0, 3, 16)
    models = [MLP([6, 8, 5, 3], "smartmixed", seed=4), MLP([6, 8, 5, 3], "smartmixed", seed=4, estimator="st")]
    optimizers = [Adam(m.parameters(), lr=1e-2) for m in models]
    for _ in range(3):
        for model, optimizer in zip(models, optimizers):
            train_step(model, optimizer, x, y, 1.0)
    for name, value in models[0].parameters().items():
        assert value.tobytes() == models[1].parameters()[name].tobytes(), name
