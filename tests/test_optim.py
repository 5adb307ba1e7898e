"""Optimizers and clipping against hand-computed updates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from smartmixed_np.backend import to_host
from smartmixed_np.nn.optim import SGD, Adam, clip_factor, clip_grad_norm, global_grad_norm


def _params(backend):
    return {"w": backend.asarray(np.array([[1.0, -2.0], [0.5, 3.0]])), "b": backend.asarray(np.array([0.1, -0.1]))}


def _grads(backend, scale=1.0):
    return {"w": backend.asarray(scale * np.array([[0.2, -0.4], [1.0, 0.0]])), "b": backend.asarray(scale * np.array([-0.3, 0.6]))}


def test_adam_matches_the_textbook_update(backend):
    params = _params(backend)
    p0 = {k: to_host(v).copy() for k, v in params.items()}
    opt = Adam(params, lr=0.1, betas=(0.9, 0.99), eps=1e-8)
    m = {k: np.zeros_like(v) for k, v in p0.items()}
    v = {k: np.zeros_like(x) for k, x in p0.items()}
    expected = {k: x.copy() for k, x in p0.items()}
    for t in range(1, 4):
        grads = _grads(backend, scale=t)
        opt.step(grads)
        for k in expected:
            g = to_host(grads[k])
            m[k] = 0.9 * m[k] + 0.1 * g
            v[k] = 0.99 * v[k] + 0.01 * g * g
            m_hat, v_hat = m[k] / (1 - 0.9**t), v[k] / (1 - 0.99**t)
            expected[k] = expected[k] - 0.1 * m_hat / (np.sqrt(v_hat) + 1e-8)
            np.testing.assert_allclose(to_host(params[k]), expected[k], rtol=1e-12, atol=1e-15)
    assert opt.step_count == 3


def test_adam_first_step_moves_each_weight_by_about_lr(backend):
    params = _params(backend)
    before = {k: to_host(v).copy() for k, v in params.items()}
    Adam(params, lr=0.01).step(_grads(backend))
    delta = to_host(params["w"]) - before["w"]
    np.testing.assert_allclose(delta, np.array([[-0.01, 0.01], [-0.01, 0.0]]), atol=1e-9)


def test_adam_weight_decay_is_l2(backend):
    params = _params(backend)
    p0 = to_host(params["b"]).copy()
    Adam(params, lr=0.1, weight_decay=0.5).step({k: v * 0 for k, v in _grads(backend).items()})
    g = 0.5 * p0  # gradient from decay only; first step moves by lr * sign
    np.testing.assert_allclose(to_host(params["b"]), p0 - 0.1 * g / (np.abs(g) + 1e-8), rtol=0, atol=1e-15)


def test_sgd_momentum_matches_the_textbook_update(backend):
    params = _params(backend)
    expected = {k: to_host(v).copy() for k, v in params.items()}
    buf = {}
    opt = SGD(params, lr=0.5, momentum=0.9)
    for t in range(3):
        grads = _grads(backend, scale=t + 1)
        opt.step(grads)
        for k in expected:
            g = to_host(grads[k])
            buf[k] = g.copy() if t == 0 else 0.9 * buf[k] + g
            expected[k] = expected[k] - 0.5 * buf[k]
            np.testing.assert_allclose(to_host(params[k]), expected[k], rtol=1e-12)


def test_sgd_nesterov_and_plain(backend):
    params = _params(backend)
    p0 = to_host(params["w"]).copy()
    opt = SGD(params, lr=0.1, momentum=0.5, nesterov=True)
    grads = _grads(backend)
    opt.step(grads)
    g = to_host(grads["w"])
    np.testing.assert_allclose(to_host(params["w"]), p0 - 0.1 * (g + 0.5 * g), rtol=1e-12)
    plain = _params(backend)
    SGD(plain, lr=0.1).step(grads)
    np.testing.assert_allclose(to_host(plain["w"]), p0 - 0.1 * g, rtol=1e-12)


def test_updates_are_in_place(backend):
    params = _params(backend)
    ids = {k: id(v) for k, v in params.items()}
    opt = Adam(params, lr=0.1)
    buffers = {k: id(v) for k, v in opt.m.items()}
    for _ in range(2):
        opt.step(_grads(backend))
    assert {k: id(v) for k, v in params.items()} == ids
    assert {k: id(v) for k, v in opt.m.items()} == buffers


def test_clip_grad_norm(backend):
    grads = _grads(backend, scale=10.0)
    norm_before = math.sqrt(sum(float(np.sum(to_host(g) ** 2)) for g in grads.values()))
    returned = clip_grad_norm(grads, max_norm=1.0)
    assert float(to_host(returned)) == pytest.approx(norm_before)
    assert float(to_host(global_grad_norm(grads))) == pytest.approx(1.0, rel=1e-5)
    small = _grads(backend, scale=0.01)
    before = {k: to_host(v).copy() for k, v in small.items()}
    clip_grad_norm(small, max_norm=1.0)
    for k in small:
        np.testing.assert_array_equal(to_host(small[k]), before[k])  # under the limit: untouched


def test_optimizer_state_round_trip(backend):
    params = _params(backend)
    opt = Adam(params, lr=0.1)
    opt.step(_grads(backend))
    state = opt.state_dict()
    twin_params = {k: v.copy() for k, v in params.items()}
    twin = Adam(twin_params, lr=0.1)
    twin.load_state_dict(state)
    assert twin.step_count == 1
    opt.step(_grads(backend))
    twin.step(_grads(backend))
    for k in params:
        np.testing.assert_array_equal(to_host(params[k]), to_host(twin_params[k]))
    with pytest.raises(ValueError, match="missing 'm.w'"):
        twin.load_state_dict({k: v for k, v in state.items() if k != "m.w"})


def test_bad_optimizer_arguments(backend):
    with pytest.raises(ValueError, match="learning rate"):
        Adam(_params(backend), lr=0)
    with pytest.raises(ValueError, match="betas"):
        Adam(_params(backend), betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="non-empty dict"):
        SGD({}, lr=0.1)
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(_params(backend), nesterov=True)
    with pytest.raises(ValueError, match="do not match"):
        Adam(_params(backend)).step({"w": _grads(backend)["w"]})
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(_grads(backend), 0.0)


@pytest.mark.parametrize("make", [lambda p: Adam(p, lr=1e-2, weight_decay=1e-3), lambda p: SGD(p, lr=0.1, momentum=0.9)])
@pytest.mark.parametrize("grad_scale", [0.1, 30.0])  # clipping inactive, active
def test_step_with_the_clip_factor_equals_clipping_then_stepping(backend, make, grad_scale):
    """step(grads, scale=clip_factor(...)) gives clip_grad_norm + step's numbers, and leaves grads alone."""
    p_clip, p_fold = _params(backend), _params(backend)
    opt_clip, opt_fold = make(p_clip), make(p_fold)
    for _ in range(3):
        grads = _grads(backend, grad_scale)
        before = {k: to_host(g).copy() for k, g in grads.items()}
        norm, factor = clip_factor(grads, 1.0)
        opt_fold.step(grads, scale=factor)
        for name, g in grads.items():
            np.testing.assert_array_equal(to_host(g), before[name])
        assert float(to_host(clip_grad_norm(grads, 1.0))) == float(to_host(norm))
        assert (float(to_host(factor)) < 1.0) == (grad_scale > 1.0)  # the norm at scale 1 is 1.28
        opt_clip.step(grads)
    for name in p_clip:
        np.testing.assert_array_equal(to_host(p_fold[name]), to_host(p_clip[name]))


def test_adam_chooses_its_engine_once_and_uses_the_compiled_loop_when_numba_is_on(monkeypatch):
    """The compiled Adam is the default where Numba is in use; without it, the reference (same numbers)."""
    from smartmixed_np.fast import compiled

    rng = np.random.default_rng(0)
    start = {"w": rng.standard_normal((7, 5)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)}
    grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in start.items()}
    calls = []
    adam_update = compiled.adam_update
    monkeypatch.setattr(compiled, "adam_update", lambda *args, **kw: calls.append(1) or adam_update(*args, **kw))

    def run():
        params = {k: v.copy() for k, v in start.items()}
        opt = Adam(params, lr=0.01)
        for _ in range(3):
            opt.step(grads)
        return opt, params

    fast_opt, fast = run()
    if compiled.enabled():
        assert fast_opt.fast_path is compiled and len(calls) == 3 * len(start)
    else:
        assert fast_opt.fast_path is None and not calls
    monkeypatch.setattr(compiled, "enabled", lambda: False)
    calls.clear()
    reference_opt, reference = run()
    assert reference_opt.fast_path is None and not calls
    for k in start:
        np.testing.assert_array_equal(fast[k], reference[k])
