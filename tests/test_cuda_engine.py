"""The CUDA kernel engine (smartmixed_np/fast/cuda.py) and its wiring in nn/engines.py and nn/optim.py.

Here, without CuPy: the one table that both the CUDA C and the NumPy twins are generated from,
its twins against core/activations (bitwise, clamp edges included); the switch; the fallback
(a fake array module whose kernels fail to build, or return wrong numbers: one warning, the
plain path); the CPU always plain; and the Python glue of every kernel call, run end to end
against an *emulating* fake array module whose kernels are written here from their contracts.

On a ``device`` (a fixture with two values): every kernel against the reference, values and
gradients, float32 and float64; the self-check, and that it catches a mistake planted in the C;
training steps with the kernels on against the plain path. ``host`` runs the kernels' own C
compiled for the CPU (tests/host_kernels.py, wherever there is a C++ compiler), ``cupy`` on a GPU
(``pytest.importorskip("cupy")`` and a device; skipped otherwise). On a GPU only: no host
synchronisation inside a step.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import subprocess
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from smartmixed_np.backend import Backend, BackendUnavailableError, SeededRNG, get_backend, to_host
from smartmixed_np.core.activations import clamp_limits, get_activation, resolve_pool
from smartmixed_np.core.losses import log_softmax, softmax_cross_entropy
from smartmixed_np.core.optim import adam_update_reference
from smartmixed_np.core.phase1 import mixture_backward, mixture_forward
from smartmixed_np.core.phase2 import fixed_backward, fixed_forward, make_groups
from smartmixed_np.fast import cuda
from smartmixed_np.nn.engines import phase1_engine, phase2_engine
from smartmixed_np.nn.layers import FixedMixedActivation, SmartMixedActivation
from smartmixed_np.nn.optim import Adam

import host_kernels

POOL = resolve_pool(None)
FLOATS = (np.float32, np.float64)


@pytest.fixture(autouse=True)
def _fresh_switch():
    """Every test starts with the switch following the environment and no kernels built."""
    cuda.enable(None)
    cuda.reset()
    yield
    cuda.enable(None)
    cuda.reset()


def _z(dtype, rng, size=4000, scale=6.0):
    """Random pre-activations with the kinks, signed zeros, large values and tiny ones among them."""
    z = (rng.standard_normal(size) * scale).astype(dtype)
    z[:8] = [0.0, -0.0, 40.0, -40.0, 1e-30, -1e-30, 700.0 if dtype == np.float64 else 80.0, -700.0 if dtype == np.float64 else -80.0]
    return z


# --------------------------------------------------------------------------- the one table
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("name", [spec.name for spec in cuda.ACTIVATION_SPECS])
def test_numpy_twin_is_the_reference_bitwise(name, dtype):
    activation = get_activation(name)
    twin = cuda.numpy_twin(name)
    z = _z(dtype, np.random.default_rng(1))
    a = activation.forward(z)
    assert twin.forward(z).dtype == z.dtype and twin.derivative(z, a).dtype == z.dtype
    np.testing.assert_array_equal(twin.forward(z), a)
    np.testing.assert_array_equal(twin.derivative(z, a), activation.derivative(z, a))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("clamp", [None, 0.5, 1.0, 1.5, 10.0])
@pytest.mark.parametrize("name", [spec.name for spec in cuda.ACTIVATION_SPECS])
def test_clamped_twin_is_the_phase2_reference_at_the_clamp_edges(name, clamp, dtype):
    """clip(f(z)) and da f'(z) [lo < a < hi] (the open gradient) as fixed_forward/fixed_backward
    compute them, with inputs whose output lies exactly at an edge (their gradient is zero)."""
    activation = get_activation(name)
    rng = np.random.default_rng(2)
    z = _z(dtype, rng, size=600, scale=3.0)
    if clamp is not None:  # inputs at which relu, leaky_relu, elu give exactly +-clamp
        z[8:12] = [clamp, -clamp / 0.01, 2 * clamp, -2 * clamp]
    z = z.reshape(60, 10)
    da = rng.standard_normal(z.shape).astype(dtype)
    groups = make_groups(np.zeros(10, dtype=np.int64), [activation], get_backend("cpu"), contiguous=True, clamp=clamp)
    a_ref, cache = fixed_forward(z, groups)
    dz_ref = fixed_backward(da, cache, groups)
    lo, hi = clamp_limits(activation, clamp)
    lo, hi = (-math.inf if lo is None else lo), (math.inf if hi is None else hi)
    twin = cuda.numpy_twin(name)
    a = twin.clamped_forward(z, lo, hi)
    np.testing.assert_array_equal(a, a_ref)
    np.testing.assert_array_equal(twin.clamped_backward(da, z, a, lo, hi), dz_ref)
    if clamp is not None and hi < math.inf:
        at_edge = a_ref == hi
        assert not np.any(twin.clamped_backward(da, z, a, lo, hi)[at_edge])


def test_c_and_numpy_twins_come_from_one_table():
    """The compiled preamble is regenerated from the table as it stands, each spec's C is in it,
    and a change planted in one spec changes both its C and its NumPy twin."""
    assert cuda._PREAMBLE == cuda._preamble()
    for spec in cuda.ACTIVATION_SPECS:
        assert f"case {spec.code}: {{ {cuda.render_c(spec.forward, 'f')} break; }}" in cuda._PREAMBLE
        assert f"case {spec.code}: {{ {cuda.render_c(spec.derivative, 'd')} break; }}" in cuda._PREAMBLE
    assert sorted(s.code for s in cuda.ACTIVATION_SPECS) == list(range(len(cuda.ACTIVATION_SPECS)))
    # no kernel carries an activation formula of its own: they all go through the preamble's functions
    # (the loss's expm1 is the loss's own: p - 1 at the label, core.losses' formula)
    for name, (kind, args) in cuda._KERNEL_SPECS.items():
        operation = args[2]
        assert "tanh" not in operation and ("expm1" not in operation or name == "softmax_ce")
    tanh = next(s for s in cuda.ACTIVATION_SPECS if s.name == "tanh")
    planted = dataclasses.replace(tanh, derivative="1 - a * a * a")
    assert cuda.render_c(planted.derivative, "d") != cuda.render_c(tanh.derivative, "d")
    twin = cuda._numpy_function(planted.derivative, ["z", "a"])
    z = np.linspace(-2, 2, 9)
    assert not np.array_equal(twin(z, np.tanh(z)), get_activation("tanh").derivative(z, np.tanh(z)))


def test_c_rendering_rounds_every_constant_to_the_dtype():
    c = cuda.render_c("where(z > 0, z, z * LEAKY_SLOPE)", "f")
    assert c == "f = ((z > ((Real)0.0)) ? z : (z * ((Real)0.01)));"
    assert cuda.render_c("e = exp(-abs(z))\ne / (1 + e)", "f") == (
        "const Real e = exp((-fabs(z))); f = (e / (((Real)1.0) + e));")
    assert "_sm_inf<Real>()" in cuda.render_c(cuda.CLAMP_BACKWARD, "d")


@pytest.mark.parametrize("formula", ["sin(z)", "z ** 2", "z if z else a", "where(z, a)", "f(z)\nz = 1", "x.y", "True"])
def test_the_expression_language_refuses_what_it_does_not_know(formula):
    with pytest.raises((ValueError, SyntaxError)):
        cuda.render_c(formula, "f")


def test_codes_only_for_the_six_registered_builtins():
    assert [cuda.activation_code(a) for a in POOL] == [0, 1, 2, 3, 4, 5]
    assert not cuda.has_code(get_activation("gelu"))
    with pytest.raises(ValueError):
        cuda.activation_code(get_activation("softplus"))


# --------------------------------------------------------------------------- fake array modules
class _FakeXP(types.SimpleNamespace):
    """numpy, plus kernel factories given by the test, and a counter of kernels built."""

    def __init__(self, elementwise, reduction):
        super().__init__(ElementwiseKernel=elementwise, ReductionKernel=reduction, built=[])

    def __getattr__(self, name):
        return getattr(np, name)


def _fake_backend(xp, name="fake-gpu"):
    return Backend(name=name, device="gpu", xp=xp, array_type=np.ndarray, _to_device=lambda a: np.array(a),
                   _to_host=lambda a: np.array(a))


def _raising_xp():
    xp = None

    def elementwise(*args, **kwargs):
        xp.built.append(kwargs.get("name"))
        raise RuntimeError("nvrtc: error: planted compile failure")

    xp = _FakeXP(elementwise, elementwise)
    return xp


def _wrong_xp():
    """Kernels that build and run, and write 42 into every output."""
    xp = None

    class Wrong:
        def __init__(self, in_params, out_params, *rest, name="", **kwargs):
            xp.built.append(name)
            self.nin = len(host_kernels.parse_params(in_params))

        def __call__(self, *args, size=None, axis=None):
            if axis is not None:  # a reduction: the broadcast shape without the axis
                shape = np.broadcast_shapes(*(np.shape(a) for a in args))
                return np.full(shape[:axis] + shape[axis + 1:], 42.0, dtype=args[0].dtype)
            for out in args[self.nin:]:
                out[...] = 42
            return args[-1]

    xp = _FakeXP(Wrong, Wrong)
    return xp


def _layer_engines(backend):
    choices = np.array([0, 1, 2, 3, 4, 5, 0, 2], dtype=np.int64)
    groups = make_groups(choices, POOL, backend, contiguous=False, clamp=10.0)
    return (phase2_engine(choices, POOL, groups, backend, 10.0), phase1_engine(POOL, True, "shared", backend),
            cuda.kernels_for(backend))


@pytest.mark.parametrize("make_xp, why", [(_raising_xp, "planted compile failure"), (_wrong_xp, "differs from the reference")])
def test_a_kernel_that_fails_or_disagrees_falls_back_with_one_warning(make_xp, why):
    cuda.enable(True)
    backend = _fake_backend(make_xp())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        phase2, phase1, kernels = _layer_engines(backend)
        again = _layer_engines(backend)  # a second network: checked already, no second warning
    ours = [w for w in caught if issubclass(w.category, cuda.CudaKernelWarning)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    message = str(ours[0].message)
    assert "\n" not in message and "phase2_forward" in message and why in message
    assert phase2.name == again[0].name == "fused" and phase1.name == again[1].name == "fused"
    assert not any(kernels.usable(family) for family in cuda.Kernels.FAMILIES)
    assert "plain" in cuda.status()


def test_switched_off_the_kernels_are_never_built(monkeypatch):
    xp = _wrong_xp()
    backend = _fake_backend(xp)
    monkeypatch.setenv(cuda.KERNELS_ENV, "0")
    phase2, phase1, kernels = _layer_engines(backend)
    assert kernels is None and phase2.name == "fused" and phase1.name == "fused" and xp.built == []
    cuda.enable(True)
    assert cuda.enabled()
    cuda.enable(False)
    monkeypatch.setenv(cuda.KERNELS_ENV, "1")
    assert not cuda.enabled() and cuda.kernels_for(backend) is None and xp.built == []
    cuda.enable(None)
    assert cuda.enabled() and "on" in cuda.status()
    monkeypatch.setenv(cuda.KERNELS_ENV, "off")
    assert not cuda.enabled() and cuda.status().startswith("off")


@pytest.mark.parametrize("device", ["cpu", "strict"])
def test_the_cpu_takes_the_plain_path_whatever_the_switch_says(device, monkeypatch):
    monkeypatch.setenv(cuda.KERNELS_ENV, "1")
    cuda.enable(True)
    backend = get_backend(device)
    layer = FixedMixedActivation(np.array([0, 3, 1, 0]), clamp=10.0, backend=backend)
    assert layer.engine.name in ("fused", "compiled")
    logits = backend.asarray(np.zeros((4, len(POOL)), dtype=np.float32))
    act = SmartMixedActivation(logits, rng=SeededRNG(0))
    assert act.engine.name in ("fused", "lean", "compiled")
    assert Adam({"w": backend.asarray(np.ones(3, dtype=np.float32))}).cuda is None
    assert cuda.kernels_for(backend) is None


# --------------------------------------------------------------------------- the glue, end to end on an emulation
def _coded(function, code, *arrays):
    """``function(*arrays)`` of each neuron's own activation (``code`` broadcast against the arrays)."""
    shape = np.broadcast_shapes(*(np.shape(a) for a in (code,) + arrays))
    out = np.zeros(shape, dtype=arrays[0].dtype)
    for spec in cuda.ACTIVATION_SPECS:
        twin = cuda.numpy_twin(spec.name)
        with np.errstate(all="ignore"):
            value = getattr(twin, function)(*(np.broadcast_to(a, shape) for a in arrays))
        out = np.where(np.broadcast_to(code, shape) == spec.code, value, out)
    return out


def _emulated(name, args):
    """Each kernel's contract, written here in NumPy from its docstring (not from its C)."""
    if name == "phase2_forward":
        z, code, lo, hi, a = args
        a[...] = _coded("clamped_forward", code, z, lo, hi)
    elif name == "phase2_backward":
        da, z, a, code, lo, hi, dz = args
        dz[...] = _coded("clamped_backward", code, da, z, a, lo, hi)
    elif name == "phase1_weights":
        logits, noise, has_noise, count, tau, weights, selected = args
        s = (logits + noise if has_noise else logits) / tau
        e = np.exp(s - s.max(axis=1, keepdims=True))
        weights[...] = e / e.sum(axis=1, keepdims=True)
        selected[...] = weights.argmax(axis=1)
    elif name == "phase1_forward":
        z, sel, codes, lo, hi, out = args
        out[...] = _coded("clamped_forward", codes[sel], z, lo[sel], hi[sel])
    elif name == "phase1_dz":
        dout, z, a, sel, codes, lo, hi, dz = args
        dz[...] = _coded("clamped_backward", codes[sel], dout, z, a, lo[sel], hi[sel])
    elif name == "phase1_dlogits":
        dy, weights, count, width, tau, dlogits = args
        dyT = dy.reshape(count, width).T
        dlogits[...] = weights * (dyT - (weights * dyT).sum(axis=1, keepdims=True)) / tau
    elif name == "adam":
        g, scale, beta1, omb1, beta2, omb2, r, eps, step, wd, p, m, v = args
        g = g * scale[0] + (wd * p if wd else 0)
        m[...] = m * beta1 + g * omb1
        v[...] = v * beta2 + (g * g) * omb2
        p[...] = p - (m / (np.sqrt(v) * r + eps)) * step
    elif name == "clip_factor":
        norm, max_norm, eps, factor = args
        factor[...] = np.minimum(max_norm / (norm + eps), 1)
    elif name == "softmax_ce":
        logits, labels, classes, batch, dlogits, log_p = args
        log_probs = log_softmax(logits)
        rows = np.arange(logits.shape[0])
        log_p[...] = log_probs[rows, labels]
        dlogits[...] = np.exp(log_probs) / batch
        dlogits[rows, labels] = np.expm1(log_p) / batch
    else:  # pragma: no cover - a kernel this emulation does not know
        raise AssertionError(name)


def _emulating_xp():
    xp = None

    class Emulated:
        def __init__(self, in_params, out_params, operation, *rest, name="", preamble="", options=()):
            xp.built.append(name)
            assert name.startswith("smartmixed_") and "--fmad=false" in options and "_sm_forward" in preamble
            self.name, self.nin, self.nout = name[len("smartmixed_"):], len(host_kernels.parse_params(in_params)), len(host_kernels.parse_params(out_params))

        def __call__(self, *args, size=None, axis=None):
            if self.name == "phase1_dy":
                dout, z, code, lo, hi = args
                assert axis == 1 and code.shape == lo.shape == hi.shape and code.shape[1:] == (1, 1)
                return (dout * _coded("clamped_forward", code, z, lo, hi)).sum(axis=1)
            if self.name == "grad_norm":
                (g,) = args
                return np.sqrt(np.asarray(np.dot(g, g)))
            if self.name == "mean_loss":
                log_p, batch = args
                return np.asarray(-np.sum(log_p) / batch)
            assert len(args) == self.nin + self.nout, f"{self.name}: {len(args)} arguments for {self.nin} in + {self.nout} out"
            _emulated(self.name, args)
            return args[-1]

    xp = _FakeXP(Emulated, Emulated)
    return xp


@pytest.mark.parametrize("dtype", FLOATS)
def test_the_engines_glue_runs_every_kernel_as_its_contract_says(dtype):
    """On the emulating fake GPU the self-check passes silently, the engines are the kernels', and
    a masked phase-2 layer, a phase-1 layer (noise and none) and Adam give the reference's numbers."""
    cuda.enable(True)
    backend = _fake_backend(_emulating_xp())
    with warnings.catch_warnings():
        warnings.simplefilter("error", cuda.CudaKernelWarning)
        phase2, phase1, kernels = _layer_engines(backend)
    assert phase2.name == "cuda" and phase1.name == "cuda" and kernels.usable("adam")
    assert copy.deepcopy(phase2).kernels is kernels and copy.copy(kernels) is kernels  # one set per backend
    rng = np.random.default_rng(3)
    choices = np.array([0, 1, 2, 3, 4, 5, 0, 2, 5, 5], dtype=np.int64)
    groups = make_groups(choices, POOL, backend, contiguous=False, clamp=1.5)
    engine = phase2_engine(choices, POOL, groups, backend, 1.5)
    assert engine.name == "cuda"
    zT = rng.normal(0, 2.5, (10, 16)).astype(dtype)  # feature-major, as the networks keep it
    z, da = zT.T, rng.normal(0, 1, (16, 10)).astype(dtype)
    a, cache = engine.forward(z)
    a_ref, cache_ref = fixed_forward(z, groups)
    np.testing.assert_array_equal(a, a_ref)
    assert a.T.flags.c_contiguous
    np.testing.assert_array_equal(engine.backward(da, cache), fixed_backward(da, cache_ref, groups))

    mixture = phase1_engine(POOL, True, "shared", backend)
    logits = rng.normal(0, 1, (10, len(POOL))).astype(dtype)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for noise in (rng.gumbel(size=(10, len(POOL))).astype(dtype), None):
        out, mcache = mixture.forward(z, logits, noise, tau=0.7, clamp=1.5)
        out_ref, mcache_ref = mixture_forward(z, logits, noise, POOL, tau=0.7, hard=True, clamp=1.5)
        assert isinstance(mcache, cuda.KernelMixtureCache) and mcache.candidates is None
        np.testing.assert_array_equal(mcache.selected, mcache_ref.selected)
        np.testing.assert_array_equal(out, out_ref)
        dz, dlogits = mixture.backward(da, mcache)
        dz_ref, dlogits_ref = mixture_backward(da, mcache_ref, POOL)
        np.testing.assert_array_equal(dz, dz_ref)
        np.testing.assert_allclose(dlogits, dlogits_ref, rtol=rtol, atol=rtol)
    per_sample = rng.gumbel(size=(16, 10, len(POOL))).astype(dtype)  # a replay: the plain engine's
    out, mcache = mixture.forward(z, logits, per_sample, tau=0.7, clamp=1.5)
    assert not isinstance(mcache, cuda.KernelMixtureCache)

    p, g, m, v = (rng.normal(0, 1, 7).astype(dtype) for _ in range(4))
    v = np.abs(v)
    mine, ref = [x.copy() for x in (p, g, m, v)], [x.copy() for x in (p, g, m, v)]
    settings = dict(beta1=0.9, beta2=0.999, eps=1e-8, step_size=1e-3, inv_sqrt_bc2=1.2, weight_decay=0.1)
    cuda.adam_update(kernels, *mine, scale=np.asarray(0.5, dtype=dtype), **settings)
    adam_update_reference(*ref, scratch=np.empty_like(p), scale=np.asarray(0.5, dtype=dtype), **settings)
    for got, want in zip(mine, ref):
        np.testing.assert_array_equal(got, want)


def test_device_gumbel_draws_from_the_device_and_keeps_the_host_state():
    class RandomState:
        def __init__(self, seed):
            self.generator = np.random.default_rng(seed)

        def gumbel(self, size, dtype):
            return self.generator.gumbel(size=size).astype(dtype)

    xp = _FakeXP(None, None)
    xp.random = types.SimpleNamespace(RandomState=RandomState)
    backend = _fake_backend(xp)
    host = SeededRNG(5)
    stream = cuda.DeviceGumbel(host, backend)
    noise = stream.gumbel((3, 6), np.float32, backend)
    assert noise.shape == (3, 6) and noise.dtype == np.float32
    state = host.state
    assert stream.state == state and stream.generator is host.generator
    stream.gumbel((3, 6), np.float32, backend)
    assert host.state == state  # device draws leave the host stream alone
    assert copy.deepcopy(stream).state == state
    assert stream.gumbel((2, 2), np.float64, get_backend("cpu")).dtype == np.float64  # another backend: the host's


# --------------------------------------------------------------------------- on a GPU
@pytest.fixture(scope="module")
def gpu():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed: the GPU tests run on a machine with one")
    try:
        backend = get_backend("gpu")
    except BackendUnavailableError as err:
        pytest.skip(f"no usable CUDA device: {err}")
    return backend, cupy


@pytest.fixture(scope="module", params=["host", "cupy"])
def device(request):
    """Where the kernels run: ``host``, a backend standing for a GPU whose kernels are their own C
    compiled as C++ for the CPU (tests/host_kernels.py: on every machine with a compiler, the
    kernels' arithmetic and indexing against the reference, not the device's math library or
    speed), or ``cupy``, a GPU (skipped without one)."""
    if request.param == "host":
        if host_kernels.COMPILER is None:
            pytest.skip("no C++ compiler: the host-compiled kernel tests need one (set CXX)")
        return host_kernels.host_device_backend()
    return request.getfixturevalue("gpu")[0]


@pytest.fixture
def kernels(device):
    return cuda.Kernels(device)


def _close(got, want, dtype, kind="elementwise"):
    rtol, atol = cuda.TOLERANCES[kind][np.dtype(dtype)]
    np.testing.assert_allclose(to_host(got), to_host(want), rtol=rtol, atol=atol)


def _close_dlogits(dlogits, dlogits_ref, dout, cache_ref, dtype):
    """The logits' gradient within the reduction tolerance plus rounding relative to the sizes of
    the batch sums' terms (:func:`smartmixed_np.fast.cuda.dlogits_error_bound`)."""
    bound = cuda.dlogits_error_bound(dout, cache_ref, cuda.TOLERANCES["reduction"][np.dtype(dtype)][0])
    why = cuda._disagreement("phase1_dy/phase1_dlogits", dlogits, dlogits_ref, dtype, "reduction", bound)
    assert why is None, why


def test_kernels_self_check_passes(kernels):
    assert cuda.self_check(kernels) == {}


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("clamp", [None, 1.5, 10.0])
@pytest.mark.parametrize("contiguous", [False, True])
def test_phase2_kernels_are_the_reference(kernels, device, dtype, clamp, contiguous):
    backend = device
    rng = np.random.default_rng(4)
    choices = np.sort(rng.integers(0, len(POOL), 300)) if contiguous else rng.integers(0, len(POOL), 300)
    groups = make_groups(choices, POOL, backend, contiguous=contiguous, clamp=clamp)
    table = kernels.neuron_table(choices, POOL, clamp, dtype)
    z = backend.asarray(_z(dtype, rng, size=64 * 300, scale=4.0).reshape(300, 64)).T  # feature-major
    da = backend.asarray(rng.standard_normal((64, 300)).astype(dtype))
    a_ref, cache = fixed_forward(z, groups)
    a = cuda.coded_forward(kernels, z, table)
    _close(a, a_ref, dtype)
    _close(cuda.coded_backward(kernels, da, z, a_ref, table), fixed_backward(da, cache, groups), dtype)


_SPECIAL = [np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-45, -1e-45, 3e38, -3e38, 10.0, -10.0, 1e-8, 88.7, -88.7, 104.0, -104.0]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("clamp", [None, 1.5, 10.0])
def test_phase2_kernels_meet_the_reference_at_infinities_nan_and_the_edges(kernels, device, dtype, clamp):
    """Every activation on the same special inputs (NaN where the reference gives NaN, the clamp's
    edges and the overflow and underflow thresholds), to a relative 1e-6."""
    choices = np.arange(len(POOL))
    groups = make_groups(choices, POOL, device, contiguous=True, clamp=clamp)
    table = kernels.neuron_table(choices, POOL, clamp, dtype)
    z = device.asarray(np.repeat(np.array(_SPECIAL)[:, None], len(POOL), axis=1).astype(dtype))
    da = device.asarray(np.ones((len(_SPECIAL), len(POOL)), dtype=dtype))
    with np.errstate(all="ignore"):
        a_ref, cache = fixed_forward(z, groups)
        pairs = [(cuda.coded_forward(kernels, z, table), a_ref),
                 (cuda.coded_backward(kernels, da, z, a_ref, table), fixed_backward(da, cache, groups))]
    for got, want in pairs:
        np.testing.assert_allclose(to_host(got), to_host(want), rtol=1e-6, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("with_noise", [True, False])
def test_phase1_kernels_are_the_reference(kernels, device, dtype, with_noise):
    backend = device
    rng = np.random.default_rng(5)
    batch, width = 128, 257
    z = backend.asarray(rng.normal(0, 4, (width, batch)).astype(dtype)).T
    dout = backend.asarray(rng.normal(0, 1, (batch, width)).astype(dtype))
    logits = backend.asarray(rng.normal(0, 1, (width, len(POOL))).astype(dtype))
    noise = backend.asarray(rng.gumbel(size=(width, len(POOL))).astype(dtype)) if with_noise else None
    table = kernels.candidate_table(POOL, 10.0, dtype)
    out_ref, cache_ref = mixture_forward(z, logits, noise, POOL, tau=0.3, hard=True, clamp=10.0)
    out, cache = cuda.phase1_forward(kernels, z, logits, noise, table, tau=0.3, clamp=10.0)
    np.testing.assert_array_equal(to_host(cache.selected), to_host(cache_ref.selected))
    _close(cache.weights, cache_ref.weights, dtype, "reduction")
    _close(out, out_ref, dtype)
    dz_ref, dlogits_ref = mixture_backward(dout, cache_ref, POOL)
    # From the reference's forward output: tanh's f' = 1 - a^2 near saturation would turn the
    # forward's ulps (another tanh) into a relative error of 1e-4 (a ulp of a over 1 - a^2).
    dz, dlogits = cuda.phase1_backward(kernels, dout, dataclasses.replace(cache, out=out_ref))
    _close(dz, dz_ref, dtype)
    _close_dlogits(dlogits, dlogits_ref, dout, cache_ref, dtype)


def test_phase1_weights_kernel_breaks_ties_for_the_first_candidate_as_argmax_does(kernels, device):
    logits = device.asarray(np.zeros((5, len(POOL)), dtype=np.float32))  # no noise: six equal weights
    z = device.asarray(np.ones((3, 5), dtype=np.float32))
    out, cache = cuda.phase1_forward(kernels, z, logits, None, kernels.candidate_table(POOL, 10.0, np.float32),
                                     tau=1.0, clamp=10.0)
    np.testing.assert_array_equal(to_host(cache.selected), np.zeros(5))


@given(batch=st.integers(1, 40), width=st.integers(1, 40), seed=st.integers(0, 2**16),
       clamp=st.sampled_from([None, 0.5, 10.0]), dtype=st.sampled_from(FLOATS), feature_major=st.booleans(),
       tau=st.sampled_from([0.1, 0.3, 1.0]), with_noise=st.booleans())
def test_host_compiled_kernels_are_the_reference_at_any_shape(batch, width, seed, clamp, dtype, feature_major, tau,
                                                              with_noise):
    """Both phases' kernels, compiled on the host, against the reference over shapes, clamps,
    layouts, temperatures and noise drawn by hypothesis (the kernels are built once per process)."""
    if host_kernels.COMPILER is None:
        pytest.skip("no C++ compiler (set CXX)")
    device = host_kernels.host_device_backend()
    kernels = cuda.Kernels(device)  # each kernel's C is compiled once per process (tests/host_kernels.py)
    rng = np.random.default_rng(seed)
    host_z = rng.normal(0, 4, (batch, width)).astype(dtype)
    z = device.asarray(np.ascontiguousarray(host_z.T)).T if feature_major else device.asarray(host_z)
    dout = device.asarray(rng.normal(0, 1, (batch, width)).astype(dtype))
    choices = rng.integers(0, len(POOL), width)
    groups = make_groups(choices, POOL, device, contiguous=False, clamp=clamp)
    a_ref, cache = fixed_forward(z, groups)
    _close(cuda.coded_forward(kernels, z, kernels.neuron_table(choices, POOL, clamp, dtype)), a_ref, dtype)
    _close(cuda.coded_backward(kernels, dout, z, a_ref, kernels.neuron_table(choices, POOL, clamp, dtype)),
           fixed_backward(dout, cache, groups), dtype)
    logits = device.asarray(rng.normal(0, 1, (width, len(POOL))).astype(dtype))
    noise = device.asarray(rng.gumbel(size=(width, len(POOL))).astype(dtype)) if with_noise else None
    out_ref, mixture_ref = mixture_forward(z, logits, noise, POOL, tau=tau, hard=True, clamp=clamp)
    out, mixture = cuda.phase1_forward(kernels, z, logits, noise, kernels.candidate_table(POOL, clamp, dtype), tau=tau,
                                       clamp=clamp)
    np.testing.assert_array_equal(to_host(mixture.selected), to_host(mixture_ref.selected))
    _close(out, out_ref, dtype)
    dz_ref, dlogits_ref = mixture_backward(dout, mixture_ref, POOL)
    dz, dlogits = cuda.phase1_backward(kernels, dout, dataclasses.replace(mixture, out=out_ref))
    _close(dz, dz_ref, dtype)
    _close_dlogits(dlogits, dlogits_ref, dout, mixture_ref, dtype)


@given(batch=st.integers(1, 70), classes=st.integers(2, 12), scale=st.sampled_from([0.1, 3.0, 300.0]),
       sizes=st.lists(st.integers(1, 300), min_size=1, max_size=6), max_norm=st.sampled_from([0.5, 5.0, 1e9]),
       seed=st.integers(0, 2**16), dtype=st.sampled_from(FLOATS))
def test_host_compiled_loss_and_clip_kernels_are_the_reference_at_any_shape(batch, classes, scale, sizes, max_norm,
                                                                            seed, dtype):
    """The loss's and the clip's kernels, compiled on the host, against the reference over batch
    sizes from 1, class counts, logit scales (confident rows at 300), gradient layouts and limits."""
    if host_kernels.COMPILER is None:
        pytest.skip("no C++ compiler (set CXX)")
    from smartmixed_np.core.optim import clip_factor as reference_clip
    from smartmixed_np.fast.flat import pack

    device = host_kernels.host_device_backend()
    kernels = cuda.Kernels(device)
    rng = np.random.default_rng(seed)
    logits = device.asarray(rng.normal(0, scale, (batch, classes)).astype(dtype))
    labels = device.asarray(rng.integers(0, classes, batch))
    loss_ref, dlogits_ref = softmax_cross_entropy(logits, labels, check=False)
    loss, dlogits = cuda.softmax_cross_entropy(kernels, logits, labels)
    _close(loss, loss_ref, dtype, "reduction")
    _close(dlogits, dlogits_ref, dtype, "reduction")
    flat, grads = pack({f"g{j}": device.asarray(rng.normal(0, 1, size).astype(dtype)) for j, size in enumerate(sizes)})
    for got, want in zip(cuda.clip_factor(kernels, flat, max_norm), reference_clip(grads, max_norm)):
        _close(got, want, dtype, "reduction")


#: Planted mistakes, each in one kernel's C: (the kernel, the text, what it becomes, the family).
_PLANTED = {
    "dlogits read transposed": ("phase1_dlogits", "dy[(ptrdiff_t)k * N + i]", "dy[(ptrdiff_t)i * K + k]", "phase1"),
    "bias correction inside the root": ("adam", "sqrt(vi) * inv_sqrt_bc2", "sqrt(vi * inv_sqrt_bc2)", "adam"),
    "candidate's output for dy from z, not dout": ("phase1_dy", "dout * _sm_forward", "z * _sm_forward", "phase1"),
    "the maximum's own term left in the sum": ("softmax_ce", "(c == top) ? (T)0 :", "", "loss"),
    "the norm without its root": ("grad_norm", "norm = sqrt(a)", "norm = a", "clip"),
}


@pytest.mark.parametrize("planted", sorted(_PLANTED))
def test_the_self_check_catches_a_mistake_in_the_compiled_c(planted, monkeypatch):
    if host_kernels.COMPILER is None:
        pytest.skip("no C++ compiler (set CXX)")
    name, text, becomes, family = _PLANTED[planted]
    kind, args = cuda._KERNEL_SPECS[name]
    changed = tuple(a.replace(text, becomes) for a in args)
    assert changed != args
    monkeypatch.setitem(cuda._KERNEL_SPECS, name, (kind, changed))
    failures = cuda.self_check(cuda.Kernels(host_kernels.host_device_backend()))
    assert list(failures) == [family] and "differs from the reference" in failures[family]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("scale", ["device", None, 0.25])
def test_adam_kernel_is_the_reference(kernels, device, dtype, scale):
    backend = device
    rng = np.random.default_rng(6)
    host = [rng.normal(0, 1, (129, 65)).astype(dtype) for _ in range(3)] + [rng.uniform(0, 1, (129, 65)).astype(dtype)]
    mine, ref = [backend.asarray(h) for h in host], [backend.asarray(h) for h in host]
    factor = backend.asarray(np.asarray(0.6, dtype=dtype)) if scale == "device" else scale
    settings = dict(beta1=0.9, beta2=0.999, eps=1e-8, step_size=1e-3 / (1 - 0.9**5),
                    inv_sqrt_bc2=1 / math.sqrt(1 - 0.999**5), weight_decay=0.0 if scale else 0.01)
    cuda.adam_update(kernels, *mine, scale=factor, **settings)
    adam_update_reference(*ref, scratch=backend.xp.empty_like(ref[0]), scale=factor, **settings)
    for got, want in zip(mine, ref):
        _close(got, want, dtype)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("batch, classes", [(1, 2), (12, 10), (300, 3)])
def test_loss_kernels_are_the_reference(kernels, device, dtype, batch, classes):
    """softmax_ce and mean_loss against core.losses.softmax_cross_entropy: ordinary rows, ties for
    the maximum, confident rows (p - 1 near 0), huge and infinite logits, a NaN, int32 labels."""
    backend = device
    rng = np.random.default_rng(10)
    host = rng.normal(0.0, 4.0, (batch, classes)).astype(dtype)
    if batch >= 7:
        host[1, :2] = host[1].max() + 1  # a tie: the first maximum is the one left out of the sum
        host[2] *= 1e4  # confident
        host[3, 0] = 3e38 if dtype == np.float32 else 1e300
        host[4, -1] = -np.inf
        host[5, 1] = np.inf  # inf - inf at the top: NaN, as the reference
        host[6, 0] = np.nan
    logits = backend.asarray(host)
    for label_dtype in (np.int64, np.int32):
        labels = backend.asarray(rng.integers(0, classes, batch).astype(label_dtype))
        with np.errstate(invalid="ignore", over="ignore"):
            loss_ref, dlogits_ref = softmax_cross_entropy(logits, labels, check=False)
            loss, dlogits = cuda.softmax_cross_entropy(kernels, logits, labels)
        assert backend.owns(loss) and loss.shape == () and dlogits.shape == (batch, classes)
        np.testing.assert_array_equal(np.isnan(to_host(dlogits)), np.isnan(to_host(dlogits_ref)))
        assert np.isnan(to_host(loss)) == np.isnan(to_host(loss_ref))
        finite = ~np.isnan(to_host(dlogits_ref))
        _close(to_host(dlogits)[finite], to_host(dlogits_ref)[finite], dtype, "reduction")
        ordinary = slice(7, None) if batch >= 7 else slice(None)  # the rows without a NaN
        loss_ref = softmax_cross_entropy(logits[ordinary], labels[ordinary], check=False)[0]
        _close(cuda.softmax_cross_entropy(kernels, logits[ordinary], labels[ordinary])[0], loss_ref, dtype, "reduction")


def test_loss_kernel_gives_a_nan_for_a_label_out_of_range(kernels):
    backend = kernels.backend
    logits = backend.asarray(np.zeros((3, 4), dtype=np.float32))
    loss, _ = cuda.softmax_cross_entropy(kernels, logits, backend.asarray(np.array([0, 4, 1])))
    assert np.isnan(to_host(loss))


@pytest.mark.parametrize("dtype", FLOATS)
def test_clip_kernels_are_the_reference(kernels, device, dtype):
    """grad_norm and clip_factor over a flat buffer against core.optim.clip_factor over the
    parameters that tile it: clipping, no clipping (a factor of exactly 1), all zeros, a NaN."""
    from smartmixed_np.core.optim import clip_factor as reference
    from smartmixed_np.fast.flat import pack

    backend = device
    rng = np.random.default_rng(11)
    shapes = {"W1": (33, 20), "b1": (33,), "W2": (5, 33), "b2": (5,)}
    host = {name: rng.normal(0.0, 1.0, shape).astype(dtype) for name, shape in shapes.items()}
    flat, grads = pack({name: backend.asarray(h) for name, h in host.items()})
    for max_norm in (1.0, 1e6):
        norm_ref, factor_ref = reference(grads, max_norm)
        norm, factor = cuda.clip_factor(kernels, flat, max_norm)
        assert backend.owns(norm) and backend.owns(factor) and norm.shape == factor.shape == ()
        _close(norm, norm_ref, dtype, "reduction")
        _close(factor, factor_ref, dtype, "reduction")
    assert float(to_host(factor)) == 1.0
    flat[...] = 0
    assert float(to_host(cuda.clip_factor(kernels, flat, 1.0)[1])) == 1.0
    flat[3] = np.nan
    assert np.isnan(to_host(cuda.clip_factor(kernels, flat, 1.0)[1])) and np.isnan(to_host(reference(grads, 1.0)[1]))


@pytest.mark.parametrize("where", ["cpu", "host-kernels on", "host-kernels off"])
def test_the_programs_loss_and_clip_take_the_kernels_only_where_they_apply(where):
    """nn.losses.softmax_cross_entropy and nn.optim.clip_factor: the reference's numbers, bit for
    bit, on the CPU and with the kernels off; two launches each with the kernels on (and packed
    gradients for the clip); the reference's errors everywhere."""
    from smartmixed_np.core import losses as core_losses
    from smartmixed_np.core import optim as core_optim
    from smartmixed_np.fast.flat import pack
    from smartmixed_np.nn import losses, optim

    if where != "cpu" and host_kernels.COMPILER is None:
        pytest.skip("no C++ compiler (set CXX)")
    backend = get_backend("cpu") if where == "cpu" else host_kernels.host_device_backend()
    cuda.enable(where == "host-kernels on")
    rng = np.random.default_rng(12)
    logits = backend.asarray(rng.normal(0, 2, (16, 10)).astype(np.float32))
    labels = backend.asarray(rng.integers(0, 10, 16))
    _, grads = pack({"W": backend.asarray(rng.normal(0, 1, (10, 6)).astype(np.float32)),
                     "b": backend.asarray(rng.normal(0, 1, 10).astype(np.float32))})
    loose = {name: backend.xp.ascontiguousarray(g + 0) for name, g in grads.items()}  # not packed
    cuda.kernels_for(backend)  # built and self-checked here, not inside what is counted
    host_kernels.LAUNCHES.clear()
    loss, dlogits = losses.get_loss("cross-entropy")(logits, labels, check=False)
    loss_launches = sum(host_kernels.LAUNCHES.values())
    host_kernels.LAUNCHES.clear()
    norm, factor = optim.clip_factor(grads, 1.0)
    clip_launches = sum(host_kernels.LAUNCHES.values())
    loss_ref, dlogits_ref = core_losses.softmax_cross_entropy(logits, labels, check=False)
    norm_ref, factor_ref = core_optim.clip_factor(grads, 1.0)
    if where == "host-kernels on":
        assert loss_launches == 2 and clip_launches == 2
        _close(loss, loss_ref, np.float32, "reduction")
        _close(dlogits, dlogits_ref, np.float32, "reduction")
        _close(factor, factor_ref, np.float32, "reduction")
    else:
        assert where == "cpu" or loss_launches > 10 and clip_launches > 5
        for got, want in ((loss, loss_ref), (dlogits, dlogits_ref), (norm, norm_ref), (factor, factor_ref)):
            np.testing.assert_array_equal(to_host(got), to_host(want))
    for got, want in zip(optim.clip_factor(loose, 1.0), core_optim.clip_factor(loose, 1.0)):  # unpacked: the reference
        np.testing.assert_array_equal(to_host(got), to_host(want))
    with pytest.raises(ValueError, match="max_norm must be positive"):
        optim.clip_factor(grads, 0.0)
    with pytest.raises(ValueError, match="labels must lie in"):
        losses.softmax_cross_entropy(logits, labels + 10)
    with pytest.raises(ValueError, match="unknown loss 'hinge'; choose one of cross-entropy, double-softmax"):
        losses.get_loss("hinge")
    assert losses.get_loss("double-softmax") is core_losses.double_softmax_cross_entropy


def _train(device, kernels_on, dtype, steps, activation="smartmixed"):
    from smartmixed_np.nn.mlp import MLP
    from smartmixed_np.nn.step import train_step

    cuda.enable(kernels_on)
    cuda.reset()
    model = MLP([20, 33, 17, 5], activation, seed=3, device=device, dtype=dtype)
    optimizer = Adam(model.parameters(), lr=1e-2)
    backend = model.backend
    rng = np.random.default_rng(7)
    x = backend.asarray(rng.standard_normal((64, 20)).astype(dtype))
    y = backend.asarray(rng.integers(0, 5, 64))
    losses = [float(train_step(model, optimizer, x, y, clip=1.0)[0]) for _ in range(steps)]
    return model, optimizer, losses


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_training_steps_with_the_kernels_follow_the_plain_path(device, dtype):
    model, optimizer, losses = _train(device, True, dtype, 6)
    assert all(act.engine.name == "cuda" for act in model.activations if hasattr(act, "engine"))
    assert optimizer.cuda is not None
    plain_model, plain_optimizer, plain = _train(device, False, dtype, 6)
    assert plain_optimizer.cuda is None
    assert all(act.engine.name != "cuda" for act in plain_model.activations if hasattr(act, "engine"))
    np.testing.assert_allclose(losses, plain, rtol=1e-4 if dtype == "float32" else 1e-10)
    for name, p in model.parameters().items():
        np.testing.assert_allclose(to_host(p), to_host(plain_model.parameters()[name]),
                                   rtol=1e-3 if dtype == "float32" else 1e-9, atol=1e-5 if dtype == "float32" else 1e-12)


def _trained_on_host_kernels(kind, kernels_on, sizes, batch=64):
    """A network of ``kind`` ("relu", "smartmixed" or "frozen") of ``sizes`` on host-kernels, after
    one training step with the clip on a batch of ``batch``, and a function that takes the next
    one (returning its loss and logits)."""
    if host_kernels.COMPILER is None:
        pytest.skip("no C++ compiler (set CXX)")
    from smartmixed_np.nn.mlp import MLP
    from smartmixed_np.nn.step import train_step

    backend = host_kernels.host_device_backend()
    cuda.enable(kernels_on)
    model = MLP(sizes, "relu" if kind == "relu" else "smartmixed", seed=3, device=backend)
    if kind == "frozen":
        model = model.freeze()
    optimizer = Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(9)
    x = backend.asarray(rng.standard_normal((batch, sizes[0])).astype(np.float32))
    y = backend.asarray(rng.integers(0, sizes[-1], batch))
    grads = model.gradients()
    train_step(model, optimizer, x, y, clip=1.0, grads=grads)
    return model, lambda: train_step(model, optimizer, x, y, clip=1.0, grads=grads)


@pytest.mark.parametrize("kernels_on", [True, False])
@pytest.mark.parametrize("kind", ["smartmixed", "relu", "frozen"])
def test_a_step_on_a_device_reads_nothing_back_to_the_host(kernels_on, kind):
    """On host-kernels (a GPU stand-in that counts every read of device values on the host, each a
    wait for the device on a GPU), a training step with the clip reads nothing back: the clip
    factor stays on the device, with the kernels and without (phase 1's noise goes the other way)."""
    model, step = _trained_on_host_kernels(kind, kernels_on, [20, 33, 17, 5])
    assert {act.engine.name for act in model.activations} == ({"cuda"} if kernels_on else {"fused"})
    host_kernels.HOST_READS[0] = 0
    loss = step()[0]
    assert host_kernels.HOST_READS[0] == 0
    assert math.isfinite(float(loss)) and host_kernels.HOST_READS[0] == 1  # the count counts


@pytest.mark.parametrize("kind", ["relu", "frozen", "smartmixed"])
def test_a_step_with_the_kernels_makes_the_launches_of_the_issue_and_no_more(kind):
    """Every device operation of a training step with the kernels on, counted on host-kernels
    (tests/host_kernels.py: LAUNCHES, what would be a kernel launch, a cuBLAS call or a copy on
    CuPy), for a network of L = 4 linear layers and H = 3 hidden ones: the 3L - 1 matrix
    products, the L bias additions and the L bias gradients of the reference's linear layers;
    per phase-2 layer one kernel each way; per phase-1 layer two kernels forward (the weights and
    argmax, the output), two and one reduction backward (dz; dy; the softmax backward), the host
    noise's copy to the device and the copy of dlogits into the layer's gradient; the loss in two
    (the rows, the mean), the clip factor in two (the norm, the factor), Adam in one."""
    _, step = _trained_on_host_kernels(kind, True, [20, 33, 17, 11, 5])
    host_kernels.LAUNCHES.clear()
    step()
    layers, hidden = 4, 3
    expected = {"matmul": 3 * layers - 1, "add": layers, "sum": layers, "smartmixed_softmax_ce": 1,
                "smartmixed_mean_loss": 1, "smartmixed_grad_norm": 1, "smartmixed_clip_factor": 1, "smartmixed_adam": 1}
    if kind == "smartmixed":
        expected.update({f"smartmixed_phase1_{name}": hidden for name in ("weights", "forward", "dz", "dy", "dlogits")},
                        to_device=hidden, setitem=hidden)
    else:
        expected.update(smartmixed_phase2_forward=hidden, smartmixed_phase2_backward=hidden)
    assert dict(host_kernels.LAUNCHES) == expected


def test_the_readmes_table_of_launches_is_what_a_step_makes():
    """The README's launches per training step of the 784-512-256-128-10 network at batch 128, the
    plain CuPy path and the kernels, are the counts of host-kernels (recounted here)."""
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = {"ReLU": "relu", "phase 2 (mixed, frozen)": "frozen", "phase 1 (hard, shared noise)": "smartmixed"}
    table = {kind: (int(m.group(1)), int(m.group(2)))
             for label, kind in rows.items() for m in [re.search(rf"^\| {re.escape(label)} \| (\d+) \| (\d+) \|$", readme, re.M)]
             if m}
    assert table.keys() == set(rows.values()), "the README's table of launches is missing a row"
    for kind, (plain, kernels) in table.items():
        counted = []
        for on in (False, True):
            _, step = _trained_on_host_kernels(kind, on, [784, 512, 256, 128, 10], batch=128)
            host_kernels.LAUNCHES.clear()
            step()
            counted.append(sum(host_kernels.LAUNCHES.values()))
        assert tuple(counted) == (plain, kernels), f"{kind}: the README says {(plain, kernels)}, a step makes {counted}"


_SPIN = r"""
extern "C" __global__ void smartmixed_spin(long long cycles) {
    const long long start = clock64();
    while (clock64() - start < cycles) { }
}
"""


@pytest.mark.parametrize("activation", ["smartmixed", "relu"])
def test_gpu_a_step_with_the_kernels_never_waits_for_the_device(gpu, activation):
    """Queue half a second of device work, then take a step: if the step returned while that work
    is still running, nothing in it waited for the GPU (phase 1 draws its noise on the device here:
    the host stream's copy to the device is outside what the kernels can change)."""
    from smartmixed_np.nn.mlp import MLP
    from smartmixed_np.nn.step import train_step

    backend, cupy = gpu
    cuda.enable(True)
    cuda.reset()
    model = MLP([20, 33, 17, 5], activation, seed=3, device="gpu")
    for act in model.activations:
        if isinstance(act, SmartMixedActivation):
            act.rng = cuda.DeviceGumbel(act.rng, backend)
    optimizer = Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(8)
    x = backend.asarray(rng.standard_normal((64, 20)).astype(np.float32))
    y = backend.asarray(rng.integers(0, 5, 64))
    grads = model.gradients()
    for _ in range(3):  # compile and fill the memory pool
        train_step(model, optimizer, x, y, clip=1.0, grads=grads)
    backend.synchronize()
    spin = cupy.RawKernel(_SPIN, "smartmixed_spin")
    rate_khz = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["clockRate"]
    spin((1,), (1,), (np.int64(rate_khz * 1000 // 2),))  # about half a second
    start = time.perf_counter()
    train_step(model, optimizer, x, y, clip=1.0, grads=grads)
    host_time = time.perf_counter() - start
    still_busy = not cupy.cuda.get_current_stream().done
    backend.synchronize()
    assert still_busy, f"the step waited for the device (it took {host_time:.3f} s on the host)"


# --------------------------------------------------------------------------- the prepared device check
_SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.sh"


def _timing_snippet():
    text = _SCRIPT.read_text()
    return text.split("step kernel_timing \"$TIMING_LIMIT\" \"$PYTHON\" -c '", 1)[1].split("' \"$OUT/kernel_timing.json\"", 1)[0]


def test_gpu_check_script_parses_and_is_executable():
    assert os.access(_SCRIPT, os.X_OK)
    subprocess.run(["bash", "-n", str(_SCRIPT)], check=True)
    compile(_timing_snippet(), "gpu_check.sh kernel_timing", "exec")


def test_gpu_check_kernel_timing_runs_on_the_host_compiled_kernels(tmp_path, monkeypatch):
    """The check's timing step, run here on host-kernels with two rounds: it writes its JSON, and
    with the kernels on every network takes the kernels' engines and Adam the kernel."""
    if host_kernels.COMPILER is None:
        pytest.skip("no C++ compiler (set CXX)")
    import json
    import sys

    monkeypatch.setenv("GPU_CHECK_DEVICE", "host-kernels")
    monkeypatch.setenv("GPU_CHECK_TIMING_ROUNDS", "2")
    out = tmp_path / "kernel_timing.json"
    monkeypatch.setattr(sys, "argv", ["-c", str(out)])
    exec(compile(_timing_snippet(), "gpu_check.sh kernel_timing", "exec"), {"__name__": "__main__"})  # noqa: S102
    report = json.loads(out.read_text())
    for kind in ("smartmixed", "frozen"):
        assert report[f"on_{kind}"]["engines"] == ["cuda"] and report[f"on_{kind}"]["adam_kernel"] is True
        assert "cuda" not in report[f"off_{kind}"]["engines"] and report[f"off_{kind}"]["adam_kernel"] is False
        assert report[f"on_{kind}"]["median_ms"] > 0
    assert "phase1 on" in report["status"]["on"] and report["status"]["off"].startswith("off")


def test_gpu_check_dry_run_prints_each_step_in_its_time_and_runs_nothing(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "GPU_CHECK_DRY": "1", "OUT": str(out)}
    run = subprocess.run(["bash", str(_SCRIPT)], env=env, capture_output=True, text=True, check=True,
                         cwd=_SCRIPT.parent.parent)
    lines = run.stdout.splitlines()
    steps = [line.split("]", 1)[0].lstrip("[") for line in lines]
    assert steps == ["install", "environment", "tests_kernels_off", "tests_kernels_on", "kernel_timing", "bench"]
    assert not out.exists()  # a dry run writes nothing
    by_step = dict(zip(steps, lines))
    assert "pip install --no-deps --no-build-isolation --no-index -e ." in by_step["install"]
    assert "SMARTMIXED_TEST_BACKENDS=cupy SMARTMIXED_CUDA_KERNELS=0" in by_step["tests_kernels_off"]
    assert "SMARTMIXED_TEST_BACKENDS=cupy SMARTMIXED_CUDA_KERNELS=1" in by_step["tests_kernels_on"]
    assert f"smartmixed bench --device gpu --json {out}/bench_gpu.json --plan device --no-jax" in by_step["bench"]
    assert "SMARTMIXED_CUDA_KERNELS=1 smartmixed bench" in by_step["bench"]  # the figures of the GPU's fast path
    words = by_step["tests_kernels_on"].split()
    files = [word for word in words if word.startswith("tests/") and "::" not in word]
    assert files[0] == "tests/test_cuda_engine.py" and all((_SCRIPT.parent.parent / f).is_file() for f in files)
    limits = [int(line.split("--kill-after=10 ", 1)[1].split()[0]) + 10 for line in lines]
    assert sum(limits) <= 7 * 60, f"the check's limits come to {sum(limits)} s: it must fit twice in 15 minutes"
    full = subprocess.run(["bash", str(_SCRIPT)], env={**env, "GPU_CHECK_BENCH": "full"}, capture_output=True,
                          text=True, check=True).stdout
    assert "--plan full" in full.splitlines()[-1] and "bench_gpu.json" in full.splitlines()[-1]
    quick = subprocess.run(["bash", str(_SCRIPT)], env={**env, "GPU_CHECK_BENCH": "quick"}, capture_output=True,
                           text=True, check=True).stdout
    assert "--quick" in quick.splitlines()[-1]


def test_gpu_check_kernels_on_tests_pass_on_the_host_compiled_kernels(tmp_path):
    """The check's kernels-on step as the script gives it, on the ``host-kernels`` backend
    (tests/conftest.py: the kernels' C compiled for the CPU) instead of CuPy: every engine test
    the GPU will run with the kernels on, passing here first."""
    if host_kernels.COMPILER is None:
        pytest.skip("no C++ compiler (set CXX)")
    if os.environ.get("SMARTMIXED_GPU_CHECK_REHEARSAL"):
        pytest.skip("this is the rehearsal's own run (it holds this test too)")
    import shlex
    import sys

    env = {**os.environ, "GPU_CHECK_DRY": "1", "GPU_CHECK_BACKENDS": "host-kernels", "OUT": str(tmp_path),
           "PYTHON": sys.executable}
    root = _SCRIPT.parent.parent
    dry = subprocess.run(["bash", str(_SCRIPT)], env=env, capture_output=True, text=True, check=True, cwd=root)
    line = next(line for line in dry.stdout.splitlines() if line.startswith("[tests_kernels_on] "))
    command = shlex.split(line.split("] ", 1)[1].rsplit(" > ", 1)[0])  # without the redirection to its log
    assert "SMARTMIXED_TEST_BACKENDS=host-kernels" in command and "SMARTMIXED_CUDA_KERNELS=1" in command
    run = subprocess.run(command, cwd=root, capture_output=True, text=True, env={**os.environ, "SMARTMIXED_GPU_CHECK_REHEARSAL": "1"})
    tail = "\n".join(run.stdout.splitlines()[-15:])
    assert run.returncode == 0, tail
    assert " passed" in tail and " failed" not in tail
