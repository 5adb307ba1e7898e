"""Backends: lookup, errors, the host/device boundary, seeded random streams."""

from __future__ import annotations

import builtins
import copy
import pickle

import numpy as np
import pytest

import smartmixed_np.core.activations as activations
from smartmixed_np import backend as B
from smartmixed_np.core.losses import softmax_cross_entropy
from smartmixed_np.nn.mlp import MLP
from strict_backend import HostDeviceMixError, StrictArray


def test_lookup_by_alias():
    assert B.get_backend("cpu") is B.get_backend("numpy") is B.get_backend("NumPy")
    assert B.get_backend(None).name == "numpy"
    assert B.get_backend(B.get_backend("cpu")).name == "numpy"
    with pytest.raises(ValueError, match="unknown device/backend 'tpu'"):
        B.get_backend("tpu")
    with pytest.raises(TypeError):
        B.get_backend(3)


def test_gpu_without_cupy_names_the_extra(monkeypatch):
    if "cupy" in B._REGISTRY:
        pytest.skip("CuPy is loaded on this machine")
    real_import = builtins.__import__

    def no_cupy(name, *args, **kwargs):
        if name == "cupy" or name.startswith("cupy."):
            raise ImportError("No module named 'cupy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cupy)
    monkeypatch.setattr(B.importlib, "import_module", lambda name: no_cupy(name))
    with pytest.raises(B.BackendUnavailableError, match=r"pip install 'smartmixed_np\[gpu\]'"):
        B.get_backend("gpu")


def test_array_module_and_transfers(backend):
    host = np.arange(6.0).reshape(2, 3)
    device = backend.asarray(host)
    assert backend.owns(device)
    assert B.array_module(device) is backend.xp
    assert B.array_module(3.0, None) is np
    back = B.to_host(device)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, host)
    assert B.backend_of(device) is backend
    assert backend.asarray(device) is device


def test_backends_survive_copy_and_pickle(backend):
    assert copy.deepcopy(backend) is backend
    if backend.name == "numpy":
        assert pickle.loads(pickle.dumps(backend)) is backend


def test_seeded_rng_is_reproducible_and_resumable(backend):
    a, b = B.SeededRNG(5), B.SeededRNG(5)
    first = B.to_host(a.gumbel((3, 4), np.float32, backend))
    np.testing.assert_array_equal(first, B.to_host(b.gumbel((3, 4), np.float32, backend)))
    assert first.dtype == np.float32
    state = a.state
    x = B.to_host(a.uniform(-1, 1, (5,), np.float64, backend))
    a.state = state
    np.testing.assert_array_equal(B.to_host(a.uniform(-1, 1, (5,), np.float64, backend)), x)
    perm = B.to_host(a.permutation(10, backend))
    assert sorted(perm.tolist()) == list(range(10))
    with pytest.raises(TypeError, match="seed"):
        B.SeededRNG(1.5)


# ---------------------------------------------------------------- the strict boundary
def test_gumbel_noise_is_numpys_gumbel_stream_to_a_few_ulps_and_the_same_in_float32():
    """The vectorised -log(-log(1 - U)) against Generator.gumbel on the same seeds: float64 to
    a few ulps of max(1, |g|) (the two logs round differently by an ulp at most), float32
    identical on these draws, and the stream left at the same place."""
    cpu = B.get_backend("cpu")
    for seed in range(5):
        ours, theirs = B.SeededRNG(seed), np.random.default_rng(seed)
        g64 = ours.gumbel((400, 250), np.float64, cpu)
        reference = theirs.gumbel(size=(400, 250))
        assert np.max(np.abs(g64 - reference) / np.maximum(1.0, np.abs(reference))) <= 4 * np.finfo(np.float64).eps
        np.testing.assert_array_equal(ours.gumbel((400, 250), np.float32, cpu), theirs.gumbel(size=(400, 250)).astype(np.float32))
        assert ours.generator.random() == theirs.random()  # one double per draw, as Generator.gumbel's


def test_gumbel_noise_stays_finite_where_the_uniform_draw_is_zero(monkeypatch):
    rng = B.SeededRNG(0)
    zeros = type("Zeros", (), {"random": staticmethod(lambda size: np.zeros(size))})()
    monkeypatch.setattr(rng, "_generator", zeros)
    g = rng.gumbel((3,), np.float64, B.get_backend("cpu"))
    assert np.all(np.isfinite(g)) and np.all(g > 36)  # u, the largest double below 1: -log(-log(u)) = 36.7


def test_strict_arrays_refuse_implicit_conversion():
    strict = B.get_backend("strict")
    x = strict.asarray(np.ones(3))
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(x)
    with pytest.raises(TypeError, match="numpy.exp was called on a device array"):
        np.exp(x)
    with pytest.raises(TypeError, match="numpy.concatenate"):
        np.concatenate([x, x])


def test_strict_arrays_refuse_mixing_with_host_arrays():
    strict = B.get_backend("strict")
    x = strict.asarray(np.ones(3))
    with pytest.raises(HostDeviceMixError):
        x + np.ones(3)
    with pytest.raises(TypeError):
        np.ones(3) * x
    with pytest.raises(HostDeviceMixError):
        strict.xp.maximum(x, np.zeros(3))
    with pytest.raises(HostDeviceMixError):
        x[np.array([0, 1])]
    assert isinstance(x * np.float64(2.0), StrictArray)  # numpy scalars are fine, as in CuPy
    assert isinstance(strict.xp.sum(x), StrictArray)  # reductions stay on the device


def test_strict_backend_catches_a_planted_host_device_mix(monkeypatch):
    """A core function that silently falls back to NumPy fails under the strict backend."""
    strict = B.get_backend("strict")
    x = strict.asarray(np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32))
    labels = strict.asarray(np.array([0, 1, 2, 0]))
    model = MLP([5, 6, 3], "tanh", device=strict)
    softmax_cross_entropy(model.forward(x), labels)  # the honest code runs

    def host_tanh(x):  # the planted bug: NumPy called on a (possibly device) array
        return np.tanh(x)

    planted = activations.Activation("tanh", host_tanh, activations.tanh_derivative)
    monkeypatch.setitem(activations._REGISTRY, "tanh", planted)
    leaky = MLP([5, 6, 3], "tanh", device=strict)
    with pytest.raises(TypeError, match="numpy.tanh"):
        leaky.forward(x)
    # On the plain CPU backend the same bug goes unnoticed: that is why the strict run exists.
    MLP([5, 6, 3], "tanh").forward(np.ones((2, 5), dtype=np.float32))

    def host_bias(x):  # a host constant mixed into device arithmetic
        return x + np.zeros(x.shape[-1], dtype=np.float32)

    monkeypatch.setitem(activations._REGISTRY, "tanh", activations.Activation("tanh", host_bias, activations.tanh_derivative))
    with pytest.raises(HostDeviceMixError):
        MLP([5, 6, 3], "tanh", device=strict).forward(x)
