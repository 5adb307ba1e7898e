"""The MLP container: end-to-end gradients in both phases, freezing, state, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import reference_autodiff as ref
from smartmixed_np.backend import get_backend, to_host
from smartmixed_np.core.gradcheck import check_directional, check_model_gradients
from smartmixed_np.core.linear import linear_forward
from smartmixed_np.core.losses import softmax_cross_entropy
from smartmixed_np.core.phase1 import mixture_forward, straight_through_surrogate
from smartmixed_np.nn.mlp import MLP
from smartmixed_np.nn.optim import Adam, clip_grad_norm
from strategies import all_candidates, network_sizes, nudge_biases_away_from_kinks, seeds


def _batch(backend, sizes, seed, batch=3):
    rng = np.random.default_rng(seed)
    x = backend.asarray(rng.uniform(-1, 1, size=(batch, sizes[0])))
    labels = backend.asarray(rng.integers(0, sizes[-1], size=batch))
    return x, labels


@given(sizes=network_sizes(), name=all_candidates, seed=seeds)
def test_uniform_network_gradients(backend, sizes, name, seed):
    model = MLP(sizes, name, dtype="float64", seed=seed % 1000, device=backend)
    x, labels = _batch(backend, sizes, seed)
    nudge_biases_away_from_kinks(model, x)
    assert check_model_gradients(model, x, labels, seed=seed).max_error < 1e-6


@given(sizes=network_sizes(), seed=seeds, noise_mode=st.sampled_from(["shared", "per_sample", "none"]))
def test_soft_phase1_network_gradients_including_logits(backend, sizes, seed, noise_mode):
    model = MLP(sizes, "smartmixed", hard=False, noise_mode=noise_mode, dtype="float64", seed=seed % 1000, device=backend)
    x, labels = _batch(backend, sizes, seed)
    model.forward(x, train=True)
    noise = model.last_noise
    nudge_biases_away_from_kinks(model, x, noise=noise)
    probe_logits = model.forward(x, train=True, noise=noise)
    _, dlogits = softmax_cross_entropy(probe_logits, labels)
    model.backward(dlogits)
    grads = {k: v.copy() for k, v in model.gradients().items()}
    assert any(k.endswith("logits") for k in grads)

    def loss_at(point):
        trial = MLP(sizes, "smartmixed", hard=False, noise_mode=noise_mode, dtype="float64", seed=0, device=backend)
        trial.load_state_dict(point)
        return softmax_cross_entropy(trial.forward(x, train=True, noise=noise), labels)[0]

    params = {k: v.copy() for k, v in model.parameters().items()}
    assert check_directional(loss_at, params, grads, seed=seed).max_error < 1e-6


def _surrogate_network_loss(model, x, labels, noise, offsets, point):
    """The network with every hard layer replaced by its straight-through surrogate."""
    h = x
    for i, act in enumerate(model.activations):
        z, _ = linear_forward(h, point[f"layers.{i}.weight"], point[f"layers.{i}.bias"])
        h = straight_through_surrogate(
            z, point[f"activations.{i}.logits"], noise.get(i), act.pool, tau=act.tau, offset=offsets[i], clamp=act.clamp
        )
    last = len(model.activations)
    logits, _ = linear_forward(h, point[f"layers.{last}.weight"], point[f"layers.{last}.bias"])
    return softmax_cross_entropy(logits, labels)[0]


@given(sizes=network_sizes(), seed=seeds, noise_mode=st.sampled_from(["shared", "per_sample", "none"]))
def test_hard_phase1_network_straight_through_gradients(backend, sizes, seed, noise_mode):
    """End to end, the hard network's gradient is the exact gradient of its surrogate network."""
    model = MLP(sizes, "smartmixed", hard=True, noise_mode=noise_mode, dtype="float64", seed=seed % 1000, device=backend)
    x, labels = _batch(backend, sizes, seed)
    model.forward(x, train=True)
    noise = model.last_noise
    nudge_biases_away_from_kinks(model, x, noise=noise)
    params = {k: v.copy() for k, v in model.parameters().items()}

    # Offsets C = onehot(s) - y at the current point, layer by layer.
    offsets, h = [], x
    for i, act in enumerate(model.activations):
        z, _ = linear_forward(h, params[f"layers.{i}.weight"], params[f"layers.{i}.bias"])
        h, cache = mixture_forward(z, params[f"activations.{i}.logits"], noise.get(i), act.pool, tau=act.tau, hard=True)
        onehot = np.zeros(tuple(cache.weights.shape))
        np.put_along_axis(onehot, to_host(cache.selected)[..., None], 1.0, axis=-1)
        offsets.append(backend.asarray(onehot) - cache.weights)

    logits = model.forward(x, train=True, noise=noise)
    loss, dlogits = softmax_cross_entropy(logits, labels)
    surrogate_loss = _surrogate_network_loss(model, x, labels, noise, offsets, params)
    assert float(to_host(loss)) == pytest.approx(float(to_host(surrogate_loss)), rel=1e-12)
    model.backward(dlogits)
    grads = {k: v.copy() for k, v in model.gradients().items()}
    loss_at = lambda point: _surrogate_network_loss(model, x, labels, noise, offsets, point)  # noqa: E731
    assert check_directional(loss_at, params, grads, seed=seed).max_error < 1e-6


@given(sizes=network_sizes(), seed=seeds, contiguous=st.booleans())
def test_frozen_network_gradients(backend, sizes, seed, contiguous):
    phase1 = MLP(sizes, "smartmixed", dtype="float64", seed=seed % 1000, device=backend)
    model = phase1.freeze(contiguous=contiguous)
    x, labels = _batch(backend, sizes, seed)
    nudge_biases_away_from_kinks(model, x)
    assert check_model_gradients(model, x, labels, seed=seed).max_error < 1e-6


@pytest.mark.parametrize("hard", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_second_opinion_from_an_independent_autodiff(backend, hard, seed):
    """Every gradient of a two-hidden-layer SmartMixed network against reference_autodiff."""
    sizes = [5, 7, 6, 3]
    model = MLP(sizes, "smartmixed", hard=hard, dtype="float64", seed=seed, device=backend)
    x, labels = _batch(backend, sizes, seed, batch=4)
    # Scale the first layer so that some candidates exceed the clamp: the clamps are checked too.
    model.linears[0].W *= 8.0
    loss = softmax_cross_entropy(model.forward(x, train=True), labels)[0]
    noise = model.last_noise
    model.forward(x, train=True, noise=noise)
    model.backward(softmax_cross_entropy(model.forward(x, train=True, noise=noise), labels)[1])

    params = {k: ref.Var(to_host(v)) for k, v in model.parameters().items()}
    specs = [("hard" if hard else "soft", to_host(noise[i])) for i in range(2)]
    ref_loss = ref.network_loss(params, to_host(x), to_host(labels), specs)
    ref.backward(ref_loss)
    assert float(to_host(loss)) == pytest.approx(float(ref_loss.value), rel=1e-12)
    for name, grad in model.gradients().items():
        np.testing.assert_allclose(to_host(grad), params[name].grad, rtol=1e-9, atol=1e-12, err_msg=name)


def test_second_opinion_for_uniform_networks(backend):
    sizes = [4, 6, 5, 3]
    for name in ref.CANDIDATES:
        model = MLP(sizes, name, dtype="float64", seed=3, device=backend)
        x, labels = _batch(backend, sizes, 3)
        model.backward(softmax_cross_entropy(model.forward(x, train=True), labels)[1])
        params = {k: ref.Var(to_host(v)) for k, v in model.parameters().items()}
        ref.backward(ref.network_loss(params, to_host(x), to_host(labels), [("uniform", name)] * 2))
        for key, grad in model.gradients().items():
            np.testing.assert_allclose(to_host(grad), params[key].grad, rtol=1e-9, atol=1e-12, err_msg=f"{name} {key}")


@pytest.mark.parametrize("contiguous", [False, True])
def test_freezing_preserves_the_function(backend, contiguous):
    sizes = [10, 16, 12, 8, 4]
    phase1 = MLP(sizes, "smartmixed", seed=5, dtype="float64", device=backend)
    for act in phase1.activations:  # spread the choices over all six candidates
        act.logits[...] = backend.asarray(np.random.default_rng(0).standard_normal(tuple(act.logits.shape)))
    frozen = phase1.freeze(contiguous=contiguous)
    x = backend.asarray(np.random.default_rng(1).uniform(-3, 3, size=(32, 10)))
    expected = to_host(phase1.forward(x, train=False))
    got = to_host(frozen.forward(x))
    if contiguous:  # a permuted sum may round differently
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    else:
        np.testing.assert_array_equal(got, expected)
    for before, after in zip(phase1.choices(), frozen.choices()):
        np.testing.assert_array_equal(before, after)
    assert frozen.choice_names() == phase1.choice_names()
    assert frozen.phase == 2 and phase1.phase == 1
    assert "activations.0.logits" not in frozen.parameters()


def test_contiguous_freeze_permutes_neurons_into_slices(backend):
    phase1 = MLP([6, 12, 5], "smartmixed", seed=2, device=backend)
    frozen = phase1.freeze(contiguous=True)
    act = frozen.activations[0]
    assert all(isinstance(group.columns, slice) for group in act.groups)
    assert np.all(np.diff(act.choices) >= 0)
    order = act.order
    np.testing.assert_array_equal(to_host(frozen.linears[0].W), to_host(phase1.linears[0].W)[order])
    np.testing.assert_array_equal(to_host(frozen.linears[1].W), to_host(phase1.linears[1].W)[:, order])
    np.testing.assert_array_equal(to_host(frozen.linears[1].b), to_host(phase1.linears[1].b))


def test_freeze_with_fresh_weights_keeps_choices(backend):
    phase1 = MLP([6, 12, 5], "smartmixed", seed=2, device=backend)
    fresh = phase1.freeze(reinit_seed=99)
    assert fresh.choice_names() == phase1.choice_names()
    assert not np.allclose(to_host(fresh.linears[1].b), to_host(phase1.linears[1].b))
    with pytest.raises(ValueError, match="only a phase-1"):
        fresh.freeze()


def _one_step(seed):
    model = MLP([8, 6, 5, 3], "smartmixed", seed=seed)
    x, labels = _batch(get_backend("cpu"), [8, 6, 5, 3], 0, batch=5)
    x = x.astype(np.float32)
    opt = Adam(model.parameters(), lr=1e-2)
    logits = model.forward(x, train=True)
    loss, dlogits = softmax_cross_entropy(logits, labels)
    model.backward(dlogits)
    grads = {k: v.copy() for k, v in model.gradients().items()}
    clip_grad_norm(model.gradients(), 1.0)
    opt.step(model.gradients())
    return logits, grads, model.state_dict()


def test_same_seed_is_bit_identical_on_numpy():
    a_logits, a_grads, a_state = _one_step(11)
    b_logits, b_grads, b_state = _one_step(11)
    assert a_logits.tobytes() == b_logits.tobytes()
    for name in a_grads:
        assert a_grads[name].tobytes() == b_grads[name].tobytes(), name
        assert a_state[name].tobytes() == b_state[name].tobytes(), name
    c_logits, _, _ = _one_step(12)
    assert c_logits.tobytes() != a_logits.tobytes()


def test_parameter_names_are_stable(backend):
    model = MLP([4, 3, 2], "smartmixed", device=backend)
    assert list(model.parameters()) == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias", "activations.0.logits"]
    assert list(model.gradients()) == list(model.parameters())
    assert model.num_parameters() == 4 * 3 + 3 + 3 * 2 + 2 + 3 * 6
    assert list(MLP([4, 3, 2], "relu", device=backend).parameters()) == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"]


def test_state_dict_round_trip_and_errors(backend):
    source = MLP([4, 5, 3], "smartmixed", seed=1, device=backend)
    target = MLP([4, 5, 3], "smartmixed", seed=2, device=backend)
    state = source.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    target.load_state_dict(state)
    for name, value in target.state_dict().items():
        np.testing.assert_array_equal(value, state[name])
    broken = dict(state)
    del broken["layers.1.bias"]
    with pytest.raises(ValueError, match="missing layers.1.bias"):
        target.load_state_dict(broken)
    with pytest.raises(ValueError, match="unexpected extra"):
        target.load_state_dict({**state, "extra": np.zeros(1)})
    with pytest.raises(ValueError, match=r"'layers.0.weight'\] has shape \(4, 5\), the network needs \(5, 4\)"):
        target.load_state_dict({**state, "layers.0.weight": np.zeros((4, 5))})


def test_moving_between_devices_keeps_the_function(backend):
    model = MLP([6, 8, 3], "smartmixed", seed=4)
    x_host = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    expected = model.forward(x_host)
    model.to(backend)
    assert model.backend is backend and all(backend.owns(p) for p in model.parameters().values())
    np.testing.assert_allclose(to_host(model.forward(backend.asarray(x_host))), expected, rtol=1e-6)
    model.to("cpu", dtype="float64")
    assert model.dtype == np.float64 and model.linears[0].W.dtype == np.float64


def test_noise_replay_through_the_network(backend):
    model = MLP([6, 8, 7, 3], "smartmixed", seed=4, device=backend)
    x, _ = _batch(backend, [6, 8, 7, 3], 0)
    first = to_host(model.forward(x, train=True))
    noise = model.last_noise
    assert set(noise) == {0, 1}
    assert not np.array_equal(to_host(model.forward(x, train=True)), first) or True  # fresh noise may coincide
    np.testing.assert_array_equal(to_host(model.forward(x, train=True, noise=noise)), first)


@pytest.mark.parametrize(
    "sizes, error, message",
    [
        ([], ValueError, "at least an input and an output"),
        ([784], ValueError, "at least an input and an output"),
        ([784, 0, 10], ValueError, "must be positive"),
        ([784, 12.5, 10], TypeError, "must be integers"),
        ([784, True, 10], TypeError, "must be integers"),
        ("784,10", TypeError, "sequence of layer widths"),
    ],
)
def test_bad_sizes(sizes, error, message):
    with pytest.raises(error, match=message):
        MLP(sizes)


def test_bad_construction_options():
    with pytest.raises(ValueError, match="unknown activation 'rleu'"):
        MLP([4, 3, 2], "rleu")
    with pytest.raises(ValueError, match="2 names for 1 hidden layers"):
        MLP([4, 3, 2], ["relu", "tanh"])
    with pytest.raises(ValueError, match="tau must be a positive"):
        MLP([4, 3, 2], tau=0.0)
    with pytest.raises(ValueError, match="tau must be a positive"):
        MLP([4, 3, 2], tau=-1)
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        MLP([4, 3, 2], dtype="int32")
    with pytest.raises(ValueError, match="unknown device"):
        MLP([4, 3, 2], device="tpu")
    with pytest.raises(ValueError, match="noise_mode"):
        MLP([4, 3, 2], noise_mode="loud")


def test_bad_inputs_are_named(backend):
    model = MLP([4, 3, 2], "smartmixed", device=backend)
    with pytest.raises(ValueError, match="input has 5 features but the network expects 4"):
        model.forward(backend.asarray(np.zeros((2, 5), dtype=np.float32)))
    with pytest.raises(ValueError, match=r"input must be 2-D \(batch, 4\)"):
        model.forward(backend.asarray(np.zeros(4, dtype=np.float32)))
    with pytest.raises(TypeError, match="floating point"):
        model.forward(backend.asarray(np.zeros((2, 4), dtype=np.int64)))
    with pytest.raises(RuntimeError, match="needs a forward"):
        model.backward(backend.asarray(np.zeros((2, 2), dtype=np.float32)))
    model.forward(backend.asarray(np.zeros((2, 4), dtype=np.float32)), train=True)
    with pytest.raises(ValueError, match=r"dlogits must have shape \(2, 2\)"):
        model.backward(backend.asarray(np.zeros((3, 2), dtype=np.float32)))
    logits = model.forward(backend.asarray(np.zeros((2, 4), dtype=np.float32)), train=True)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        softmax_cross_entropy(logits, backend.asarray(np.array([0, 2])))
    model.backward(backend.asarray(np.zeros((2, 2), dtype=np.float32)))
    with pytest.raises(RuntimeError, match="needs a forward"):
        model.backward(backend.asarray(np.zeros((2, 2), dtype=np.float32)))


def test_input_on_another_device_is_refused():
    strict = get_backend("strict")
    model = MLP([4, 3, 2], "relu")
    with pytest.raises(TypeError, match="input lives on strict-device"):
        model.forward(strict.asarray(np.zeros((1, 4), dtype=np.float32)))
    with pytest.raises(TypeError, match="must be an array"):
        model.forward([[0.0] * 4])


@pytest.mark.parametrize("kind", ["smartmixed", "relu", "frozen"])
def test_config_round_trip_rebuilds_the_same_function(backend, kind):
    model = MLP([6, 9, 7, 3], "smartmixed" if kind != "relu" else "relu", seed=8, device=backend)
    if kind == "frozen":
        model = model.freeze(contiguous=True)
    import json

    config = json.loads(json.dumps(model.config()))
    rebuilt = MLP.from_config(config, device=backend)
    rebuilt.load_state_dict(model.state_dict())
    x = backend.asarray(np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32))
    np.testing.assert_array_equal(to_host(rebuilt.forward(x)), to_host(model.forward(x)))
    assert rebuilt.choice_names() == model.choice_names()
    with pytest.raises(ValueError, match="malformed"):
        MLP.from_config({"kind": "fixed"})


def test_set_tau_reaches_every_layer():
    model = MLP([4, 5, 5, 2], "smartmixed")
    model.set_tau(0.7)
    assert all(act.tau == 0.7 for act in model.activations)
    with pytest.raises(ValueError, match="tau"):
        model.set_tau(0)


@pytest.mark.parametrize("kind", ["smartmixed", "relu"])
def test_the_tape_is_public_to_read_and_to_clear(backend, kind):
    """MLP.tape shows the last forward's record; clear_tape drops it, and backward then refuses."""
    model = MLP([4, 5, 3], kind, device=backend, dtype="float64", seed=2)
    x, labels = _batch(backend, [4, 5, 3], 2)
    assert model.tape is None
    logits = model.forward(x, train=True)
    tape = model.tape
    assert tape is not None and tape.train and len(tape.caches) == 2
    _, dlogits = softmax_cross_entropy(logits, labels)
    model.clear_tape()
    assert model.tape is None
    with pytest.raises(RuntimeError, match="forward"):
        model.backward(dlogits)
    model.forward(x, train=False)
    model.backward(dlogits)  # an evaluation pass can be backpropagated (gradient checks do) ...
    assert model.tape is None  # ... once


def test_passes_create_no_attribute_on_the_model(backend):
    """MLP, phase 1 and frozen, declares its state in __init__ (and freeze): passes add no attribute."""
    phase1 = MLP([4, 6, 5, 3], device=backend, dtype="float64", seed=3)
    for model in (phase1, phase1.freeze(contiguous=False)):
        declared = set(vars(model))
        x, labels = _batch(backend, [4, 6, 5, 3], 3)
        for train in (True, False):
            _, dlogits = softmax_cross_entropy(model.forward(x, train=train), labels)
            model.backward(dlogits)
        model.predict(x)
        assert set(vars(model)) == declared
