"""Benchmarks: every contender measured side by side, with ratios.

One call, :func:`run_benchmarks`, measures (CPU, float32, one process):

* a training step (forward, softmax cross-entropy, backward, clipping to global norm
  1.0, Adam; ours applies the clipping factor inside Adam's pass, see
  :func:`~smartmixed_np.nn.optim.clip_factor`) and an inference forward of
  - ``floor``: the matrix products of a step alone, with preallocated outputs
    (per layer ``x @ W.T``, ``dz.T @ x``, and ``dz @ W`` except for the first layer,
    whose input needs no gradient; inference: ``x @ W.T`` per layer);
  - ``floor_update`` (training step only): the floor's products, then the global
    gradient norm and Adam's update with the clipping factor over a ReLU network's flat
    gradients, as a step runs them (:func:`_floor_update`): what a step with Adam and
    clipping costs at the least, were the activations, loss and biases free. Both
    passes are bound by memory (every parameter, gradient and moment is read), so
    ``floor_update_vs_floor_step_ratio`` is the least ``relu_vs_floor_step_ratio``
    can be on the machine;
  - ``relu``: ``MLP(sizes, "relu")``;
  - ``phase1``: ``MLP(sizes, "smartmixed")`` in training mode (inference: its
    evaluation forward, the argmax network);
  - ``phase2_masked`` / ``phase2_contiguous``: ``phase1.freeze(contiguous=...)``,
    with the phase-1 logits randomised first so that all six activations occur in
    every layer;
  - when PyTorch is importable, ``torch_relu``, ``torch_phase1`` (the published
    reference's semantics: ``torch.stack`` of the six candidates, clamp to [-10, 10],
    ``F.gumbel_softmax(alpha, tau, hard=True)`` = one-hot - y.detach() + y, weighted
    sum, clamp) and ``torch_phase2`` (index gather and scatter per activation
    group), with ``torch.optim.Adam`` and ``clip_grad_norm_``; on CUDA also the same three
    steps captured once in a CUDA graph and replayed (``torch_*_graph``,
    :func:`_torch_graphed_step`; ``torch_graph_skipped`` says why where PyTorch would not
    capture them);
  - when JAX is importable, ``jax_relu``, ``jax_phase1`` (the same reference
    semantics, the Gumbel noise drawn inside the step from a key it carries;
    inference: that forward, noise included, as ``torch_phase1``'s and the reference's
    evaluation) and
    ``jax_phase2`` (the contiguous groups as static slices), on copies of our networks'
    weights, the whole step (forward, loss, ``jax.grad``, clipping, Adam, written out in
    ``jax.numpy``) under one ``jax.jit`` (:func:`_jax_kit`); compilation falls in the
    warm-up; each call waits for its outputs (``block_until_ready``);
* the same over a sweep of batch sizes and of hidden widths;
* one epoch of MNIST (ours vs PyTorch, phase 2 and phase 1) in samples per second,
  when a data directory is given;
* our phase-2 inference against ONNX Runtime on the exported graph, batch 1 and 128
  (:func:`_onnx_inference`; skipped with the reason when onnxruntime is missing);
* peak memory (tracemalloc, which sees NumPy's allocations) and the memory held
  after two successive windows of steps after warm-up: "no growth" when the
  second window adds nothing (a leak would add in every window); and phase 1's
  peak memory during a step against ReLU's at batch 1024 (:func:`_memory_peaks`).

``targets`` then checks the performance issue's thresholds (:data:`_TARGETS`) on the
ratios of medians and of minima. ``smartmixed bench --isa avx2`` holds every library to
AVX2 on a CPU with AVX-512 (:data:`ISA_LIMITS`), so that one machine also measures
what an AVX2-only CPU of its kind would; ``machine.isa_limit`` and ``machine.numpy_simd``
record it.

Timing: ``time.perf_counter``; in each repeat round every contender runs, in a
shuffled order, untimed calls for a settling time (60 ms; the other library's
worker threads spin on the cores that long after their last task) and then one
timed call, so that machine noise (other processes, frequency changes) falls on all
of them alike; a figure is the median over rounds, after warm-up. Ratios are of medians taken in the same rounds. The
report records the load average before and after: on a shared machine, compare
runs taken at low load. Timings are never asserted by tests. The machine section
also names the CPU's vector extensions (:func:`parse_cpuinfo`), the BLAS library, its
version and kernel architecture (threadpoolctl), and every library's version and threads.

    >>> from smartmixed_np.experiments.bench import run_benchmarks
    >>> report = run_benchmarks(quick=True)                          # doctest: +SKIP
    >>> report["ratios"]["phase2_vs_relu_step_ratio"]                # doctest: +SKIP
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
import resource
import sys
import time
import tracemalloc
from dataclasses import dataclass
from functools import lru_cache
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import numpy as np

from ..fast import compiled, cuda
from ..backend import Backend, get_backend, numpy_simd, to_host
from ..core.activations import DEFAULT_POOL
from ..errors import UserError
from ..fileio import atomic_writer, write_json
from ..nn.mlp import MLP
from ..nn.optim import Adam, clip_factor
from ..nn.step import train_step

__all__ = ["run_benchmarks", "DEFAULT_SIZES", "DATA_ENV"]

DEFAULT_SIZES = (784, 512, 256, 128, 10)
DATA_ENV = "SMARTMIXED_DATA"
CLAMP = 10.0
TAU = 0.3

OURS = ("floor", "floor_update", "relu", "phase1", "phase2_masked", "phase2_contiguous")
THEIRS = ("torch_relu", "torch_phase1", "torch_phase2", "torch_relu_graph", "torch_phase1_graph", "torch_phase2_graph")
JAX = ("jax_relu", "jax_phase1", "jax_phase2")

# settle_s: OpenBLAS's idle workers spin for about 95 ms after a call on the project's 2-core
# machines, and a PyTorch or JAX call timed in that window loses whole scheduler slices (a
# PyTorch ReLU step: 4.3 ms after 60 ms of settling, 3.0 ms after 150 ms). The main
# measurement, which the targets read, settles past it; the sweeps keep 60 ms, which keeps
# the full suite near ten minutes on two cores.
_FULL = dict(repeats=60, warmup=10, sweep_repeats=20, settle_s=0.15, sweep_settle_s=0.06,
             batches=(32, 64, 128, 256, 512, 1024),
             widths=((256, 128, 64), (512, 256, 128), (1024, 512, 256)), memory_steps=60, epoch_rounds=3)
_QUICK = dict(repeats=3, warmup=1, sweep_repeats=2, settle_s=0.0, sweep_settle_s=0.0, batches=(8, 16), widths=((16, 8),),
              memory_steps=4, epoch_rounds=1)
#: A GPU's plan: the issue's network at batch 128 and at the batch of its matrix-product floor
#: target (:data:`FLOOR_BATCH`), no width sweep, and no settle (that pause is for OpenBLAS's
#: spinning workers on the CPU; every timed call on a device ends in a synchronisation): about a
#: minute of device time, for a machine lent for minutes.
FLOOR_BATCH = 8192
_DEVICE = dict(repeats=30, warmup=5, sweep_repeats=15, settle_s=0.0, sweep_settle_s=0.0, batches=(FLOOR_BATCH,),
               widths=(), memory_steps=0, epoch_rounds=1)
PLANS = {"full": _FULL, "device": _DEVICE, "quick": _QUICK}


# --------------------------------------------------------------------------- the device
@dataclass(frozen=True)
class _Device:
    """Where the contenders run: our backend, PyTorch's device, and how to wait for both.

    On a GPU, work is queued asynchronously; :meth:`sync` waits for it so that a
    timer measures the work and not only its launch.
    """

    backend: Backend
    torch_device: str = "cpu"

    def sync(self) -> None:
        self.backend.synchronize()
        if self.torch_device != "cpu":
            import torch

            torch.cuda.synchronize()


def _device(name: str, with_torch: bool) -> _Device:
    backend = get_backend(name)
    torch_device = "cpu"
    if backend.device == "gpu" and with_torch:
        import torch

        torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    return _Device(backend, torch_device)


_CPU = _Device(get_backend("cpu"))


# --------------------------------------------------------------------------- our contenders
def _phase1_network(sizes: Sequence[int], seed: int, dev: _Device = _CPU) -> MLP:
    """A phase-1 network whose logits are random, so that every layer uses all six candidates."""
    model = MLP(sizes, "smartmixed", seed=seed, tau=TAU, clamp=CLAMP, device=dev.backend)
    rng = np.random.default_rng(seed)
    for act in model.activations:
        act.logits[...] = dev.backend.asarray(rng.standard_normal(tuple(act.logits.shape)).astype(model.dtype))
    return model


def _numpy_networks(sizes: Sequence[int], seed: int, dev: _Device = _CPU) -> dict[str, MLP]:
    phase1 = _phase1_network(sizes, seed, dev)
    return {
        "relu": MLP(sizes, "relu", seed=seed, device=dev.backend),
        "phase1": phase1,
        "phase2_masked": phase1.freeze(contiguous=False),
        "phase2_contiguous": phase1.freeze(contiguous=True),
    }


def _numpy_step(model: MLP, x: np.ndarray, y: np.ndarray, train: bool = True) -> Callable[[], None]:
    """One training step: forward, softmax-CE, backward, clip to norm 1, Adam."""
    optimizer = Adam(model.parameters(), lr=1e-3)
    params, grads = model.parameters(), model.gradients()

    def step() -> None:
        train_step(model, optimizer, x, y, 1.0, grads=grads, train=train)

    assert params.keys() == grads.keys()
    return step


def _numpy_infer(model: MLP, x: np.ndarray) -> Callable[[], None]:
    return lambda: model.forward(x, train=False)


def _floor(sizes: Sequence[int], batch: int, seed: int, dev: _Device = _CPU) -> tuple[Callable[[], None], Callable[[], None]]:
    """The matrix products of a training step (and of inference) alone, outputs preallocated."""
    rng = np.random.default_rng(seed)
    xp, put = dev.backend.xp, dev.backend.asarray
    f32 = np.float32
    layers = []
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(dict(
            x=put(rng.standard_normal((batch, d_in)).astype(f32)), W=put(rng.standard_normal((d_out, d_in)).astype(f32)),
            z=xp.empty((batch, d_out), f32), dz=put(rng.standard_normal((batch, d_out)).astype(f32)),
            dW=xp.empty((d_out, d_in), f32), dx=xp.empty((batch, d_in), f32) if i > 0 else None,
        ))

    def step() -> None:
        for layer in layers:
            xp.matmul(layer["x"], layer["W"].T, out=layer["z"])
        for layer in reversed(layers):
            xp.matmul(layer["dz"].T, layer["x"], out=layer["dW"])
            if layer["dx"] is not None:
                xp.matmul(layer["dz"], layer["W"], out=layer["dx"])

    def infer() -> None:
        for layer in layers:
            xp.matmul(layer["x"], layer["W"].T, out=layer["z"])

    return step, infer


def _floor_update(sizes: Sequence[int], seed: int, floor_step: Callable[[], None], dev: _Device = _CPU) -> Callable[[], None]:
    """:func:`_floor`'s training step followed by the update of a step: ``clip_factor`` (the
    global norm of every gradient) and ``Adam.step`` with that factor, over the parameters and
    (random, fixed) gradients of ``MLP(sizes, "relu")``, laid out flat as a network lays them.
    The function returned keeps that network as ``model`` (for tests)."""
    model = MLP(sizes, "relu", seed=seed, device=dev.backend)
    grads = model.gradients()
    rng = np.random.default_rng(seed + 2)
    for g in grads.values():
        g[...] = dev.backend.asarray(rng.standard_normal(tuple(g.shape)).astype(model.dtype))
    optimizer = Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        floor_step()
        optimizer.step(grads, scale=clip_factor(grads, 1.0)[1])

    step.model = model  # type: ignore[attr-defined]
    return step


# --------------------------------------------------------------------------- PyTorch contenders
def _torch_models(sizes: Sequence[int], seed: int, threads: int, torch_device: str = "cpu") -> dict[str, Any]:
    """PyTorch networks with the published reference's semantics (empty if torch is missing)."""
    try:
        import torch
        import torch.nn.functional as F
        from torch import nn
    except ImportError:
        return {}
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    candidates = [F.relu, torch.sigmoid, torch.tanh, F.leaky_relu, F.elu, F.selu]

    class Phase1(nn.Module):
        """Hard Gumbel-softmax over the stacked, clamped candidates (reference semantics)."""

        def __init__(self, width: int, alpha: np.ndarray) -> None:
            super().__init__()
            self.alpha = nn.Parameter(torch.from_numpy(alpha))

        def forward(self, z):
            stacked = torch.stack([f(z) for f in candidates], dim=-1).clamp(-CLAMP, CLAMP)  # (B, N, K)
            weights = F.gumbel_softmax(self.alpha, tau=TAU, hard=True)  # one-hot - y.detach() + y
            return (stacked * weights).sum(dim=-1).clamp(-CLAMP, CLAMP)

    class Phase2(nn.Module):
        """A frozen choice per neuron: gather each group's columns, apply, scatter back."""

        def __init__(self, choices: np.ndarray) -> None:
            super().__init__()
            self.groups = [
                (candidates[k], torch.from_numpy(np.flatnonzero(choices == k)).to(torch_device)) for k in np.unique(choices)
            ]

        def forward(self, z):
            out = torch.empty_like(z)
            for f, idx in self.groups:
                out[:, idx] = f(z.index_select(1, idx)).clamp(-CLAMP, CLAMP)
            return out

    phase1_np = _phase1_network(sizes, seed)
    alphas = [to_host(act.logits).copy() for act in phase1_np.activations]

    def network(make_act: Callable[[int, int], nn.Module]) -> nn.Module:
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if i < len(sizes) - 2:
                layers.append(make_act(i, d_out))
        return nn.Sequential(*layers)

    return {
        "torch_relu": network(lambda i, n: nn.ReLU()).to(torch_device),
        "torch_phase1": network(lambda i, n: Phase1(n, alphas[i])).to(torch_device),
        "torch_phase2": network(lambda i, n: Phase2(alphas[i].argmax(axis=1))).to(torch_device),
    }


def _torch_contenders(sizes: Sequence[int], batch: int, seed: int, threads: int, dev: _Device = _CPU) -> dict[str, tuple[Callable, Callable]]:
    """(step, infer) of each PyTorch network on a fixed random batch."""
    models = _torch_models(sizes, seed, threads, dev.torch_device)
    if not models:
        return {}
    x, y = _torch_batch(sizes, batch, seed, dev)
    return {name: (_torch_step(model, x, y), _torch_infer(model, x)) for name, model in models.items()}


def _torch_batch(sizes: Sequence[int], batch: int, seed: int, dev: _Device) -> tuple[Any, Any]:
    """The fixed random batch of the PyTorch contenders, on their device."""
    import torch

    rng = np.random.default_rng(seed + 1)
    x = torch.from_numpy(rng.standard_normal((batch, sizes[0])).astype(np.float32)).to(dev.torch_device)
    y = torch.from_numpy(rng.integers(0, sizes[-1], batch)).to(dev.torch_device)
    return x, y


def _torch_graph_contenders(sizes: Sequence[int], batch: int, seed: int, threads: int,
                            dev: _Device) -> tuple[dict[str, Callable[[], None]], str | None]:
    """The step of each PyTorch network captured in a CUDA graph (``<name>_graph``: steps only;
    on CUDA only, else none), and None, or none and the one line that says why PyTorch would not
    capture them (a contender missing, not a failed run)."""
    if dev.torch_device != "cuda":
        return {}, None
    try:
        models = _torch_models(sizes, seed, threads, dev.torch_device)  # weights of their own, as the eager ones'
        x, y = _torch_batch(sizes, batch, seed, dev)
        return {f"{name}_graph": _torch_graphed_step(model, x, y) for name, model in models.items()}, None
    except Exception as err:  # noqa: BLE001 - whatever PyTorch raises at capture, say it in one line
        return {}, " ".join(f"PyTorch CUDA-graph contenders skipped: {type(err).__name__}: {err}".split())[:300]


def _torch_graphed_step(model, x, y) -> Callable[[], None]:
    """:func:`_torch_step`'s step (the same loss, clip and Adam, Adam made ``capturable``) captured
    once in a CUDA graph, after three warm-up steps on a side stream as PyTorch's CUDA-graph notes
    prescribe; the step returned replays it (the batch stays in ``x``, ``y``). The gradients are
    unset before the capture, so that the captured backward writes them from the graph's pool."""
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
    params = list(model.parameters())

    def step() -> None:
        F.cross_entropy(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def _torch_step(model, x, y) -> Callable[[], None]:
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    params = list(model.parameters())

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    return step


def _torch_infer(model, x) -> Callable[[], None]:
    import torch

    def infer() -> None:
        with torch.no_grad():
            model(x)

    return infer


# --------------------------------------------------------------------------- JAX contenders
def _jax_available() -> str | None:
    """None when jax imports, else the one line that says why the JAX contenders are skipped."""
    try:
        import jax  # noqa: F401
    except ImportError:
        return "JAX contenders skipped: jax is not installed (pip install 'smartmixed_np[bench]')"
    return None


def _jax_device(dev: _Device) -> Any:
    """The device the JAX contenders run on: a GPU when ours does and JAX has one, else the CPU."""
    import jax

    if dev.backend.device == "gpu":
        try:
            return jax.devices("gpu")[0]
        except RuntimeError:  # a CPU-only jaxlib
            pass
    return jax.devices("cpu")[0]


#: The candidates the JAX phase-1 network stacks (our default pool, in its order); Adam's settings, ours.
_JAX_POOL = DEFAULT_POOL
_JAX_LR, _JAX_BETAS, _JAX_EPS = 1e-3, (0.9, 0.999), 1e-8


@lru_cache(maxsize=1)
def _jax_kit() -> SimpleNamespace:
    """The JAX networks and their jitted step and inference, built once (jit keeps its caches here).

    Everything is written with ``jax.numpy`` and ``jax.grad``, nothing from optax or flax:

    * ``forward(params, x, kind, groups, noise)``: (B, D_in) -> (B, C) logits of the
      network ``kind``: ``"relu"``; ``"phase1"``, the published reference's semantics per
      hidden layer, $a = \\mathrm{clamp}(\\sum_k h_k\\, \\mathrm{clamp}(f_k(z)))$ over the
      stacked candidates (B, N, K), with $h = \\mathrm{onehot}(\\arg\\max y) - \\mathrm{sg}(y) + y$,
      $y = \\mathrm{softmax}((\\alpha + g)/\\tau)$ and ``noise[i]`` = g (N, K), one draw shared
      by the batch; or ``"phase2"``, each hidden layer's contiguous groups
      ``groups[i] = ((name, start, stop), ...)``, each clamped to [-c, c].
    * ``loss(params, x, y, kind, groups, noise)``: mean softmax cross-entropy.
    * ``step(state, x, y, kind, groups)``: the whole training step under ``jax.jit``
      (new Gumbel noise from the state's key in phase 1, forward, loss, ``jax.grad``,
      clip to global norm 1.0 with $f = \\min(1, 1/(\\lVert g\\rVert + 10^{-6}))$, Adam
      with PyTorch's bias corrections); the state (params, m, v, t, key) is donated, so
      XLA may update it in place.
    * ``infer(params, x, key, kind, groups)``: the forward under ``jax.jit``; phase 1
      draws its noise from ``key``, as the reference's evaluation does.
    """
    import jax
    import jax.numpy as jnp

    candidates = {
        "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh,
        "leaky_relu": lambda z: jax.nn.leaky_relu(z, 0.01), "elu": jax.nn.elu, "selu": jax.nn.selu,
    }
    pool = tuple(candidates[name] for name in _JAX_POOL)

    def clamp(a):
        """PyTorch's clamp to [-c, c]: the gradient passes on the closed interval, zero beyond.
        (``jnp.clip`` halves it at exactly +-c, which a saturated selected candidate reaches
        in the second, mixture clamp.)"""
        return jnp.where(jnp.abs(a) <= CLAMP, a, jnp.sign(a) * CLAMP)

    def phase1_layer(z, alpha, g):
        stacked = clamp(jnp.stack([f(z) for f in pool], axis=-1))  # (B, N, K)
        y = jax.nn.softmax((alpha + g) / TAU, axis=-1)  # (N, K)
        hard = jax.nn.one_hot(jnp.argmax(y, axis=-1), y.shape[-1], dtype=y.dtype)
        weights = hard - jax.lax.stop_gradient(y) + y  # value one-hot, gradient that of y
        return clamp(jnp.sum(stacked * weights, axis=-1))

    def phase2_layer(z, layer_groups):
        return jnp.concatenate([clamp(candidates[name](z[:, start:stop])) for name, start, stop in layer_groups], axis=1)

    def linear(params, i, h):  # (B, D_i) -> (B, D_{i+1}), W (D_{i+1}, D_i) as ours
        return h @ params[f"layers.{i}.weight"].T + params[f"layers.{i}.bias"]

    def forward(params, x, kind, groups, noise):
        hidden = sum(1 for name in params if name.endswith(".weight")) - 1
        h = x
        for i in range(hidden):
            z = linear(params, i, h)
            if kind == "relu":
                h = jax.nn.relu(z)
            elif kind == "phase1":
                h = phase1_layer(z, params[f"activations.{i}.logits"], noise[i])
            else:
                h = phase2_layer(z, groups[i])
        return linear(params, hidden, h)

    def loss(params, x, y, kind, groups, noise):
        log_p = jax.nn.log_softmax(forward(params, x, kind, groups, noise), axis=-1)
        return -jnp.mean(jnp.take_along_axis(log_p, y[:, None], axis=1))

    def draw_noise(params, key):
        noise = []
        for name in sorted((n for n in params if n.endswith(".logits")), key=lambda n: int(n.split(".")[1])):
            key, sub = jax.random.split(key)
            noise.append(jax.random.gumbel(sub, params[name].shape, params[name].dtype))
        return noise, key

    def step(state, x, y, kind, groups):
        params, m, v, t, key = state
        noise, key = draw_noise(params, key) if kind == "phase1" else ([], key)
        value, grads = jax.value_and_grad(loss)(params, x, y, kind, groups, noise)
        tree_map = jax.tree_util.tree_map
        # clip to global norm 1.0, as clip_grad_norm_ and our clip_factor
        norm = jnp.sqrt(sum(jnp.vdot(g, g) for g in jax.tree_util.tree_leaves(grads)))
        grads = tree_map(lambda g: g * jnp.minimum(1.0, 1.0 / (norm + 1e-6)), grads)
        # Adam, the bias corrections folded into two scalars as torch.optim.Adam does
        b1, b2 = _JAX_BETAS
        t = t + 1
        step_size, inv_sqrt_bc2 = _JAX_LR / (1 - b1**t), 1 / jnp.sqrt(1 - b2**t)
        m = tree_map(lambda m_, g: b1 * m_ + (1 - b1) * g, m, grads)
        v = tree_map(lambda v_, g: b2 * v_ + (1 - b2) * jnp.square(g), v, grads)
        params = tree_map(lambda p, m_, v_: p - step_size * m_ / (jnp.sqrt(v_) * inv_sqrt_bc2 + _JAX_EPS), params, m, v)
        return (params, m, v, t, key), value

    def infer(params, x, key, kind, groups):
        noise = draw_noise(params, key)[0] if kind == "phase1" else []
        return forward(params, x, kind, groups, noise)

    static = ("kind", "groups")
    return SimpleNamespace(
        forward=forward, loss=loss, draw_noise=draw_noise,
        step=jax.jit(step, static_argnames=static, donate_argnames=("state",)),
        infer=jax.jit(infer, static_argnames=static),
    )


def _jax_network(model: MLP, kind: str) -> tuple[tuple, dict[str, np.ndarray]]:
    """``(groups, params)`` of the JAX twin of one of our networks, on the same weights.

    ``kind``: ``"relu"`` (``MLP(sizes, "relu")``), ``"phase1"`` (a SmartMixed network of
    the six built-ins, its selection logits copied) or ``"phase2"`` (a contiguous frozen
    one, whose hidden layers' groups become static slices ``((name, start, stop), ...)``;
    ``()`` for the other kinds). ``params``: host float32 copies by our names
    (``layers.{i}.weight`` (out, in), ``layers.{i}.bias`` (out,), ``activations.{i}.logits`` (N, K)).
    """
    params = {name: np.array(to_host(p), dtype=np.float32) for name, p in model.parameters().items()}
    if kind == "phase1" and tuple(a.name for a in model.pool) != _JAX_POOL:
        raise ValueError(f"the JAX phase-1 network stacks the six built-ins {_JAX_POOL}, not {[a.name for a in model.pool]}")
    if kind != "phase2":
        return (), params
    layer_groups = []
    for act in model.activations:
        if not act.contiguous or act.clamp != CLAMP:
            raise ValueError(f"the JAX phase-2 network slices contiguous groups clamped to {CLAMP}: freeze(contiguous=True)")
        bounds = (np.flatnonzero(np.diff(act.choices)) + 1).tolist()
        starts, stops = [0, *bounds], [*bounds, act.size]
        layer_groups.append(tuple((act.pool[int(act.choices[a])].name, int(a), int(b)) for a, b in zip(starts, stops)))
    return tuple(layer_groups), params


_JAX_TWINS = (("relu", "jax_relu", "relu"), ("phase1", "jax_phase1", "phase1"), ("phase2_contiguous", "jax_phase2", "phase2"))


def _jax_contenders(networks: dict[str, MLP], x_host: np.ndarray, y_host: np.ndarray, seed: int,
                    dev: _Device = _CPU) -> dict[str, tuple[Callable, Callable]]:
    """(step, infer) of ``jax_relu``, ``jax_phase1`` and ``jax_phase2`` on our networks' weights.

    Each call runs the jitted function and waits for its outputs (``block_until_ready``),
    so that the timer measures the work and not only its dispatch.
    """
    import jax
    import jax.numpy as jnp

    kit = _jax_kit()
    device = _jax_device(dev)
    x = jax.device_put(jnp.asarray(x_host, dtype=jnp.float32), device)
    y = jax.device_put(jnp.asarray(y_host, dtype=jnp.int32), device)
    out: dict[str, tuple[Callable, Callable]] = {}
    for ours, theirs, kind in _JAX_TWINS:
        groups, host_params = _jax_network(networks[ours], kind)
        params = {name: jnp.asarray(p) for name, p in host_params.items()}
        state = (params, jax.tree_util.tree_map(jnp.zeros_like, params), jax.tree_util.tree_map(jnp.zeros_like, params),
                 jnp.zeros((), jnp.float32), jax.random.PRNGKey(seed))  # params, m, v, t, key
        # Everything committed to one device: the step's outputs are, and a jit called
        # with uncommitted inputs first and committed ones next would compile twice.
        state = jax.device_put(state, device)
        params, key = state[0], state[4]
        cell = [state]
        # The step donates (invalidates) its state: inference gets copies of its own.
        infer_params, infer_key = jax.tree_util.tree_map(jnp.copy, (params, key))

        def step(cell=cell, kind=kind, groups=groups) -> None:
            cell[0], value = kit.step(cell[0], x, y, kind=kind, groups=groups)
            jax.block_until_ready((cell[0], value))

        def infer(params=infer_params, key=infer_key, kind=kind, groups=groups) -> None:
            kit.infer(params, x, key, kind=kind, groups=groups).block_until_ready()

        out[theirs] = (step, infer)
    return out


def _jax_machine(started: bool) -> dict[str, Any]:
    """The JAX facts for the machine section: ``jax`` (None when it is not installed),
    ``jaxlib``, and, when ``started`` (the JAX contenders run), ``jax_default_backend``
    and ``xla_flags`` (XLA's CPU client takes as many threads as there are cores unless
    ``XLA_FLAGS`` says otherwise). Asking for the backend starts XLA's client, so a run
    without the JAX contenders does not."""
    if _jax_available() is not None:
        return {"jax": None}
    import jax
    import jaxlib

    info: dict[str, Any] = {"jax": jax.__version__, "jaxlib": jaxlib.__version__}
    if started:
        info.update(jax_default_backend=jax.default_backend(), xla_flags=os.environ.get("XLA_FLAGS"))
    return info


# --------------------------------------------------------------------------- timing
def _interleaved(functions: dict[str, Callable[[], None]], repeats: int, warmup: int, seed: int = 0,
                 sync: Callable[[], None] = lambda: None, settle_s: float = 0.0) -> dict[str, dict[str, float]]:
    """Median, quartiles and min of seconds per call, contenders interleaved round by round.

    Each round runs every contender in a freshly shuffled order: untimed calls first,
    for at least ``settle_s`` seconds and at least one call, then one timed call. The
    untimed calls absorb the switch from the previous contender: caches, and above
    all the other library's idle worker threads, which keep spinning on the cores after
    their last task (OpenBLAS's for about 95 ms on a 2-core Xeon here: PyTorch's and
    JAX's calls in that window took several times their time; a settle shorter than
    that leaves part of the timed calls slowed). ``sync`` waits for queued device work
    before the clock starts and before it stops.
    """
    names = list(functions)
    order_rng = np.random.default_rng(seed)
    for _ in range(warmup):
        for name in names:
            functions[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for index in order_rng.permutation(len(names)):
            name = names[index]
            settle_until = time.perf_counter() + settle_s
            functions[name]()
            while time.perf_counter() < settle_until:
                functions[name]()
            sync()
            start = time.perf_counter()
            functions[name]()
            sync()
            samples[name].append(time.perf_counter() - start)
    return {
        name: {
            "median_ms": 1e3 * float(np.median(s)),
            "q25_ms": 1e3 * float(np.percentile(s, 25)),
            "q75_ms": 1e3 * float(np.percentile(s, 75)),
            "min_ms": 1e3 * float(np.min(s)),
            "repeats": len(s),
        }
        for name, s in samples.items()
    }


def _measure(sizes: Sequence[int], batch: int, seed: int, repeats: int, warmup: int, threads: int, with_torch: bool,
             dev: _Device = _CPU, settle_s: float = 0.0, with_jax: bool = False) -> dict[str, Any]:
    """Step and inference timings of every contender at one size and batch.

    ``with_jax``: add the JAX contenders (:func:`_jax_contenders`, on copies of our
    networks' initial weights and the same batch); the caller checks that jax imports.
    """
    rng = np.random.default_rng(seed + 1)
    x_host = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y_host = rng.integers(0, sizes[-1], batch)
    x, y = dev.backend.asarray(x_host), dev.backend.asarray(y_host)
    floor_step, floor_infer = _floor(sizes, batch, seed, dev)
    steps: dict[str, Callable[[], None]] = {"floor": floor_step, "floor_update": _floor_update(sizes, seed, floor_step, dev)}
    infers: dict[str, Callable[[], None]] = {"floor": floor_infer}
    networks = _numpy_networks(sizes, seed, dev)
    if with_jax:  # copies of the weights before our steps change them
        for name, (step, infer) in _jax_contenders(networks, x_host, y_host, seed, dev).items():
            steps[name], infers[name] = step, infer
    for name, model in networks.items():
        steps[name] = _numpy_step(model, x, y)
        infers[name] = _numpy_infer(model, x)
    graph_skipped = None
    if with_torch:
        for name, (step, infer) in _torch_contenders(sizes, batch, seed, threads, dev).items():
            steps[name], infers[name] = step, infer
        graphed, graph_skipped = _torch_graph_contenders(sizes, batch, seed, threads, dev)
        steps.update(graphed)
    result = {
        "step": _interleaved(steps, repeats, warmup, sync=dev.sync, settle_s=settle_s),
        "infer": _interleaved(infers, repeats, warmup, sync=dev.sync, settle_s=settle_s),
    }
    if graph_skipped is not None:
        result["torch_graph_skipped"] = graph_skipped
    return result


def _ratios(timings: dict[str, Any], statistic: str = "median_ms") -> dict[str, float | None]:
    """Every ratio of interest from one :func:`_measure` result (None where a side is missing).

    ``statistic``: ``"median_ms"`` (the headline) or ``"min_ms"`` (the fastest call of
    each contender: on a machine shared with other work, noise only ever adds time,
    so ratios of minima show the intrinsic costs when medians are disturbed).
    """

    def ratio(kind: str, a: str, b: str) -> float | None:
        table = timings[kind]
        if a not in table or b not in table:
            return None
        return table[a][statistic] / table[b][statistic]

    out: dict[str, float | None] = {}
    for kind in ("step", "infer"):
        out[f"phase2_vs_relu_{kind}_ratio"] = ratio(kind, "phase2_contiguous", "relu")
        out[f"phase2_masked_vs_relu_{kind}_ratio"] = ratio(kind, "phase2_masked", "relu")
        out[f"phase1_vs_relu_{kind}_ratio"] = ratio(kind, "phase1", "relu")
        out[f"relu_vs_floor_{kind}_ratio"] = ratio(kind, "relu", "floor")
        if kind == "step":  # the update has no inference twin
            out["floor_update_vs_floor_step_ratio"] = ratio(kind, "floor_update", "floor")
            out["relu_vs_floor_update_step_ratio"] = ratio(kind, "relu", "floor_update")
        out[f"phase1_vs_torch_{kind}_ratio"] = ratio(kind, "phase1", "torch_phase1")
        out[f"phase2_vs_torch_{kind}_ratio"] = ratio(kind, "phase2_contiguous", "torch_phase2")
        out[f"phase2_masked_vs_torch_{kind}_ratio"] = ratio(kind, "phase2_masked", "torch_phase2")
        out[f"relu_vs_torch_{kind}_ratio"] = ratio(kind, "relu", "torch_relu")
    if "torch_relu_graph" in timings["step"]:  # present only where PyTorch captured CUDA graphs
        out["phase1_vs_torch_graph_step_ratio"] = ratio("step", "phase1", "torch_phase1_graph")
        out["phase2_vs_torch_graph_step_ratio"] = ratio("step", "phase2_contiguous", "torch_phase2_graph")
        out["relu_vs_torch_graph_step_ratio"] = ratio("step", "relu", "torch_relu_graph")
    for kind in ("step", "infer"):  # present only where the JAX contenders ran
        if "jax_relu" in timings[kind]:
            out[f"phase1_vs_jax_{kind}_ratio"] = ratio(kind, "phase1", "jax_phase1")
            out[f"phase2_vs_jax_{kind}_ratio"] = ratio(kind, "phase2_contiguous", "jax_phase2")
            out[f"relu_vs_jax_{kind}_ratio"] = ratio(kind, "relu", "jax_relu")
    return out


# --------------------------------------------------------------------------- epoch throughput
def _epoch_throughput(data_dir: str, sizes: Sequence[int], batch: int, seed: int, rounds: int, threads: int,
                      with_torch: bool, train_limit: int | None, dev: _Device = _CPU) -> dict[str, Any]:
    """Samples per second over one shuffled epoch of MNIST, ours and PyTorch's, interleaved by epoch."""
    from ..data import load_dataset

    data = load_dataset("mnist", data_dir, train_limit=train_limit, download=False)
    x_host, y_host = data.x_train.astype(np.float32), data.y_train.astype(np.int64)
    x_all, y_all = dev.backend.asarray(x_host), dev.backend.asarray(y_host)  # moved once, batches gathered there
    n = len(x_host)
    rng = np.random.default_rng(seed)
    epoch_sizes = list(sizes)
    epoch_sizes[0], epoch_sizes[-1] = data.input_dim, data.num_classes
    networks = _numpy_networks(epoch_sizes, seed, dev)

    def ours(model: MLP, train_flag: bool) -> Callable[[], None]:
        optimizer = Adam(model.parameters(), lr=1e-3)
        grads = model.gradients()

        def epoch() -> None:
            order = dev.backend.asarray(rng.permutation(n))
            for start in range(0, n, batch):
                idx = order[start:start + batch]
                train_step(model, optimizer, x_all[idx], y_all[idx], 1.0, grads=grads, train=train_flag)

        return epoch

    epochs: dict[str, Callable[[], None]] = {
        "phase2": ours(networks["phase2_contiguous"], False),
        "phase1": ours(networks["phase1"], True),
    }
    if with_torch:
        try:
            import torch
            import torch.nn.functional as F
        except ImportError:
            torch = None
        if torch is not None:
            contenders = _torch_models(epoch_sizes, seed, threads, dev.torch_device)
            xt, yt = torch.from_numpy(x_host).to(dev.torch_device), torch.from_numpy(y_host).to(dev.torch_device)

            def theirs(model) -> Callable[[], None]:
                optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
                params = list(model.parameters())

                def epoch() -> None:
                    order = torch.from_numpy(rng.permutation(n)).to(dev.torch_device)
                    for start in range(0, n, batch):
                        idx = order[start:start + batch]
                        optimizer.zero_grad(set_to_none=True)
                        F.cross_entropy(model(xt[idx]), yt[idx]).backward()
                        torch.nn.utils.clip_grad_norm_(params, 1.0)
                        optimizer.step()

                return epoch

            epochs["torch_phase2"] = theirs(contenders["torch_phase2"])
            epochs["torch_phase1"] = theirs(contenders["torch_phase1"])
    times = _interleaved(epochs, rounds, warmup=0, sync=dev.sync)
    result: dict[str, Any] = {"dataset": f"mnist training split (a folder named {Path(str(data.source)).name}/, {n} images)", "samples": n, "batch": batch}
    for name, t in times.items():
        result[f"{name}_samples_per_s"] = n / (t["median_ms"] / 1e3)
        result[f"{name}_epoch_s"] = t["median_ms"] / 1e3
    for phase in ("phase2", "phase1"):
        if f"torch_{phase}_samples_per_s" in result:
            key = "epoch_throughput_vs_torch_ratio" if phase == "phase2" else "phase1_epoch_throughput_vs_torch_ratio"
            result[key] = result[f"{phase}_samples_per_s"] / result[f"torch_{phase}_samples_per_s"]
    return result


# --------------------------------------------------------------------------- ONNX Runtime
ONNX_BATCHES = (1, 128)


def _onnx_inference(sizes: Sequence[int], seed: int, threads: int, repeats: int, warmup: int,
                    settle_s: float = 0.0, batches: Sequence[int] = ONNX_BATCHES) -> dict[str, Any]:
    """Our phase-2 network's inference against ONNX Runtime's on its exported graph (CPU, float32).

    The network is ``phase2_contiguous`` (all six activations in every layer, clamp 10);
    ONNX Runtime runs :func:`~smartmixed_np.experiments.export.build_onnx`'s graph with
    the CPU provider and as many intra-op threads as our BLAS has. Per batch size:
    ``ours_forward`` (logits, as ONNX Runtime returns), ``ours_predict`` (logits and
    argmax) and ``onnxruntime``, interleaved by :func:`_interleaved`; the ratio is
    ours_forward / onnxruntime (above 1: ours is slower). Skipped, with the reason,
    when onnx or onnxruntime is missing.
    """
    try:
        import onnxruntime
        from .export import DEFAULT_OPSET, build_onnx, require_onnx

        require_onnx()
    except ImportError:
        return {"skipped": "onnxruntime is not installed: pip install 'smartmixed_np[onnx]'"}
    except UserError as err:  # onnx itself is missing
        return {"skipped": str(err)}
    model = _phase1_network(sizes, seed).freeze(contiguous=True)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(build_onnx(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    result: dict[str, Any] = {"sizes": list(sizes), "onnxruntime": onnxruntime.__version__, "opset": DEFAULT_OPSET,
                              "provider": "CPUExecutionProvider", "intra_op_threads": threads}
    rng = np.random.default_rng(seed + 3)
    for batch in batches:
        x = rng.random((batch, sizes[0]), dtype=np.float32)
        contenders = {
            "ours_forward": lambda: model.forward(x, train=False),
            "ours_predict": lambda: model.predict(x),
            "onnxruntime": lambda: session.run(None, {"pixels": x}),
        }
        times = _interleaved(contenders, repeats, warmup, settle_s=settle_s)
        ours, theirs = model.forward(x), session.run(None, {"pixels": x})[0]
        result[f"batch_{batch}"] = {
            **times,
            "ours_vs_onnxruntime_ratio": times["ours_forward"]["median_ms"] / times["onnxruntime"]["median_ms"],
            "max_abs_logit_difference": float(np.abs(ours - theirs).max()),
        }
    return result


def _onnx_ratios(onnx: dict[str, Any], batches: Sequence[int] = ONNX_BATCHES) -> dict[str, float | None]:
    """``phase2_vs_onnxruntime_infer_batch{B}_ratio`` from :func:`_onnx_inference` (None when skipped)."""
    return {f"phase2_vs_onnxruntime_infer_batch{b}_ratio": onnx.get(f"batch_{b}", {}).get("ours_vs_onnxruntime_ratio")
            for b in batches}


# --------------------------------------------------------------------------- memory
def _memory(sizes: Sequence[int], batch: int, seed: int, steps: int) -> dict[str, Any]:
    """tracemalloc: NumPy memory held after warm-up vs after ``steps`` more steps, and peaks."""
    rng = np.random.default_rng(seed + 2)
    x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch)
    result: dict[str, Any] = {}
    for name, model in _numpy_networks(sizes, seed).items():
        step = _numpy_step(model, x, y)
        for _ in range(3):
            step()
        tracemalloc.start()
        try:
            step()
            tracemalloc.reset_peak()
            held_after_warmup, _ = tracemalloc.get_traced_memory()
            for _ in range(steps):
                step()
            held_mid, _ = tracemalloc.get_traced_memory()
            for _ in range(steps):
                step()
            held_after, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        result[name] = {
            "held_after_warmup_bytes": held_after_warmup,
            "held_after_steps_bytes": held_mid,
            "held_after_twice_the_steps_bytes": held_after,
            "growth_first_window_bytes": held_mid - held_after_warmup,
            "growth_bytes": held_after - held_mid,
            "peak_during_steps_bytes": peak,
            "steps_per_window": steps,
            # A leak grows in every window; a one-off (a cache filled once) only in the
            # first. A few KiB of interpreter bookkeeping is not a (B, N) array (10^4+ bytes).
            "no_growth": bool(held_after - held_mid <= 4096),
        }
    result["ru_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return result


# --------------------------------------------------------------------------- machine, figure
def _blas_threads() -> int:
    try:
        from threadpoolctl import threadpool_info

        counts = [info["num_threads"] for info in threadpool_info() if info.get("user_api") == "blas"]
        if counts:
            return int(counts[0])
    except ImportError:
        pass
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return os.cpu_count() or 1


#: The vector extensions worth naming, in the order reported (x86 ``flags``, then Arm ``Features``).
SIMD_FLAGS = ("sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512dq", "avx512cd", "avx512bw",
              "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
              "asimd", "asimdhp", "sve", "sve2")


#: ``smartmixed bench --isa avx2``: the environment that keeps every library in the process to
#: AVX2 on a CPU that has AVX-512, so that one machine can measure what an AVX2-only CPU of the
#: same microarchitecture would (clock, caches and cores stay this machine's). Read when each
#: library loads, so it must be set before the process starts: the command re-runs itself.
ISA_ENV = "SMARTMIXED_BENCH_ISA"
ISA_LIMITS: dict[str, dict[str, str]] = {
    "avx2": {
        "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",  # NumPy's dispatched loops (NumPy 2.4 names)
        "OPENBLAS_CORETYPE": "Haswell",  # OpenBLAS's GEMM kernels
        "NUMBA_CPU_NAME": "haswell",  # the compiled loops' target: Haswell's tuning,
        "NUMBA_CPU_FEATURES": "+avx2,+fma",  # and Haswell's instructions (with the name alone, the host's)
        "XLA_FLAGS": "--xla_cpu_max_isa=AVX2",  # JAX
        "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's elementwise kernels
        "ONEDNN_MAX_CPU_ISA": "AVX2",  # PyTorch's matrix products
    },
}


def isa_environment(limit: str) -> dict[str, str]:
    """The variables that hold this process's libraries to ``limit`` (a key of :data:`ISA_LIMITS`),
    :data:`ISA_ENV` among them; ValueError for an unknown limit."""
    if limit not in ISA_LIMITS:
        raise ValueError(f"unknown instruction-set limit {limit!r}; choose from {', '.join(ISA_LIMITS)}")
    return {**ISA_LIMITS[limit], ISA_ENV: limit}


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """The CPU's model name, vector extensions and their summary, from the text of ``/proc/cpuinfo``.

    Reads the first processor's ``model name`` and its ``flags`` (x86) or ``Features``
    (Arm) line. Returns ``{"cpu": name or None, "cpu_flags": [those of
    :data:`SIMD_FLAGS` present, in that order], "simd": summary}``, the summary being
    the widest vector extension of "AVX-512", "AVX2", "AVX", "SSE4.2", "SVE", "NEON"
    that the flags show ("AVX-512" needs ``avx512f``, "NEON" Arm's ``asimd``), or None.
    (AMX, a matrix unit, is listed among the flags, not summarised.)
    """
    model, flags = None, None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "model name" and model is None:
            model = value.strip() or None
        elif key in ("flags", "features") and flags is None:
            flags = set(value.split())
    present = [flag for flag in SIMD_FLAGS if flag in (flags or ())]
    simd = None
    for summary, flag in (("AVX-512", "avx512f"), ("AVX2", "avx2"), ("AVX", "avx"), ("SSE4.2", "sse4_2"),
                          ("SVE", "sve"), ("NEON", "asimd")):
        if flag in present:
            simd = summary
            break
    return {"cpu": model, "cpu_flags": present, "simd": simd}


def _blas_libraries() -> list[dict[str, Any]]:
    """Each BLAS that threadpoolctl sees loaded: its implementation (``internal_api``:
    openblas, mkl, blis...), version, kernel architecture and threads (no file paths:
    the report is committed). NumPy's own BLAS first. Empty without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    numpy_dir = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
    pools = [info for info in threadpool_info() if info.get("user_api") == "blas"]
    pools.sort(key=lambda info: not str(info.get("filepath", "")).startswith(os.path.join(numpy_dir, "numpy")))
    fields = ("internal_api", "prefix", "version", "architecture", "threading_layer", "num_threads")
    return [{field: info.get(field) for field in fields} for info in pools]


def _machine(threads: int, cpuinfo_path: str = "/proc/cpuinfo", with_jax: bool = False) -> dict[str, Any]:
    """Versions, CPU (:func:`parse_cpuinfo` of ``cpuinfo_path``), BLAS (:func:`_blas_libraries`) and threads."""
    try:
        with open(cpuinfo_path) as handle:
            cpu = parse_cpuinfo(handle.read())
    except OSError:
        cpu = parse_cpuinfo("")
    cpu["cpu"] = cpu["cpu"] or platform.processor() or ""
    blas_libraries = _blas_libraries()
    info: dict[str, Any] = {
        "python": sys.version.split()[0], "platform": platform.platform(), **cpu, "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "numpy": np.__version__, "blas_threads": threads, "dtype": "float32", "compiled_loops": compiled.status(),
        "blas_library": blas_libraries[0] if blas_libraries else None, "blas_libraries": blas_libraries,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "numpy_simd": numpy_simd(), "isa_limit": os.environ.get(ISA_ENV) or "native",
        "isa_environment": {k: os.environ[k] for k in ISA_LIMITS.get(os.environ.get(ISA_ENV, ""), {}) if k in os.environ},
    }
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # noqa: BLE001 - the build description is informative only
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    info.update(_jax_machine(with_jax))
    return info


def _machine_header(machine: dict[str, Any]) -> list[str]:
    """The lines that open the text output: CPU, vector extensions, BLAS, threads, versions."""
    lines = [f"cpu: {machine['cpu'] or 'unknown'}, {machine['cpu_count']} cores ({machine['cpus_usable']} usable); "
             f"SIMD {machine['simd'] or 'unknown'} ({' '.join(machine['cpu_flags']) or 'no flags read'})"]
    blas = machine.get("blas_library")
    if blas:
        lines.append(f"blas: {blas['internal_api']} {blas['version']} ({blas['architecture']} kernels, "
                     f"{blas['threading_layer']}), {blas['num_threads']} threads")
    else:
        lines.append(f"blas: {machine.get('blas', 'unknown')}, {machine['blas_threads']} threads")
    if machine.get("isa_limit", "native") != "native":
        lines.append(f"instruction sets limited to {machine['isa_limit']} (on a CPU with {machine['simd']}); "
                     f"NumPy dispatches to {' '.join(machine.get('numpy_simd') or []) or 'its baseline'}")
    lines.append(f"numpy {machine['numpy']}; compiled loops: {machine['compiled_loops']}")
    lines.append(f"torch {machine['torch']} ({machine.get('torch_threads')} threads)" if machine.get("torch") else "torch: not installed")
    if machine.get("jax"):
        backend = f", default backend {machine['jax_default_backend']}" if machine.get("jax_default_backend") else ""
        lines.append(f"jax {machine['jax']} (jaxlib {machine['jaxlib']}{backend})")
    return lines


def _figure(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = report["main"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))

    def color(n: str) -> str:
        return ("#555555" if n.startswith("floor") else "#d62728" if n.startswith("torch") else "#2ca02c" if n.startswith("jax")
                else "#1f77b4")

    for ax, kind, title in ((axes[0], "step", "training step"), (axes[1], "infer", "inference forward")):
        names = [n for n in OURS + THEIRS + JAX if n in main[kind]]
        colors = [color(n) for n in names]
        med = [main[kind][n]["median_ms"] for n in names]
        err = [[m - main[kind][n]["q25_ms"] for n, m in zip(names, med)], [main[kind][n]["q75_ms"] - m for n, m in zip(names, med)]]
        ax.barh(names, med, xerr=err, color=colors)
        for i, (m, n) in enumerate(zip(med, names)):
            ax.text(max(m, main[kind][n]["q75_ms"]), i, f"  {m:.2f}", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("ms (median, bars: quartiles)")
        ax.set_title(f"{title}, {'-'.join(map(str, report['config']['sizes']))}, batch {report['config']['batch']}")
    ax = axes[2]
    sweep = report["batch_sweep"]
    batches = [row["batch"] for row in sweep]
    palette = plt.get_cmap("tab20").colors  # one colour per contender: no two lines alike
    for i, name in enumerate(OURS + THEIRS + JAX):
        ys = [1e3 * row["step"][name]["median_ms"] / row["batch"] for row in sweep if name in row["step"]]
        if name in main["step"] and len(ys) == len(batches):
            ax.plot(batches, ys, marker="o", label=name, color=palette[i % len(palette)],
                    linestyle="--" if name.startswith("torch") else ":" if name.startswith("jax") else "-")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("µs per sample (training step)")
    ax.set_title("batch-size sweep")
    ax.legend(fontsize=8)
    machine = report["machine"]
    load = machine.get("load_average_at_start")
    load_text = f", 1-min load average at start {load[0]:.1f}" if load else ""
    simd = f" ({machine['simd']})" if machine.get("simd") else ""
    if machine.get("isa_limit", "native") != "native":
        simd = f" ({machine.get('simd')}, every library held to {machine['isa_limit'].upper()})"
    jit = "" if str(machine.get("compiled_loops", "")).startswith("numba") else ", NumPy paths only"
    fig.suptitle(f"smartmixed_np benchmarks: {machine['cpu']}{simd}, {machine['cpu_count']} cores, {machine['blas_threads']} BLAS threads "
                 f"(torch threads {machine.get('torch_threads')}), float32{jit}{load_text}", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_writer(path, "wb") as file:
        fig.savefig(file, format="png", dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- entry point
def run_benchmarks(
    quick: bool = False,
    data_dir: str | None = None,
    json_path: str | None = None,
    figure_path: str | None = None,
    *,
    sizes: Sequence[int] | None = None,
    batch: int | None = None,
    seed: int = 0,
    with_torch: bool = True,
    log: Callable[[str], None] | None = None,
    device: str = "cpu",
    with_jax: bool = True,
    plan: str | None = None,
) -> dict[str, Any]:
    """Run the benchmark suite and return (and optionally write) its report.

    Args:
        quick: a small network, few repeats, two batch sizes: seconds, for smoke
            tests; the figures are then not meaningful.
        data_dir: folder holding ``mnist/`` (or the MNIST folder itself) for the
            epoch-throughput benchmark; default ``$SMARTMIXED_DATA``; skipped (with a
            note in the report) when neither is set.
        json_path: write the report there as JSON (None: don't).
        figure_path: write a PNG of step times and the batch sweep there (None: don't).
        sizes: layer widths (default 784-512-256-128-10; quick: 784-64-32-10).
        batch: the main batch size (default 128; quick: 32).
        seed: seeds weights, data and noise.
        with_torch: include the PyTorch contenders when torch is importable.
        with_jax: include the JAX contenders (``jax_relu``, ``jax_phase1``,
            ``jax_phase2``: the whole step under ``jax.jit``) when jax is importable;
            without jax, one line of the log says so and the JAX ratios are absent.
        log: called with a line of progress per stage (default: silent).
        device: ``"cpu"`` or ``"gpu"`` (CuPy; PyTorch then runs on CUDA when it can).
            Every timed call is followed by a device synchronisation. The memory
            check (tracemalloc) sees host memory only and is skipped off the CPU.
        plan: ``"full"`` (the CPU's default: both sweeps, settled), ``"device"`` (a GPU's
            default: batch 128 and :data:`FLOOR_BATCH`, no width sweep, no settle; see
            :data:`PLANS`) or ``"quick"`` (what ``quick=True`` asks for).

    Returns:
        A dict: ``machine``, ``config``, ``main`` (step and infer timings per
        contender), ``onnx`` (ours against ONNX Runtime), ``ratios`` (every key contains ``ratio``; None where PyTorch or
        data are missing; the ``*_vs_jax_*`` ones only where the JAX contenders ran), ``batch_sweep``, ``width_sweep``, ``epoch``, ``memory``,
        ``targets`` (each target with its threshold, value and whether it is met).
    """
    say = log or (lambda line: None)
    threads = _blas_threads()
    has_torch = with_torch and _torch_importable()
    jax_missing = _jax_available() if with_jax else None
    has_jax = with_jax and jax_missing is None
    dev = _device(device, has_torch)
    plan_name = "quick" if quick else plan or ("device" if dev.backend.device == "gpu" else "full")
    if plan_name not in PLANS:
        raise ValueError(f"plan must be one of {', '.join(PLANS)}, got {plan!r}")
    quick = plan_name == "quick"
    settings = PLANS[plan_name]
    sizes = list(sizes or ((784, 64, 32, 10) if quick else DEFAULT_SIZES))
    batch = int(batch or (32 if quick else 128))
    report: dict[str, Any] = {
        "machine": {**_machine(threads, with_jax=has_jax), "backend": dev.backend.name, "device": dev.backend.device,
                    "torch_device": dev.torch_device if has_torch else None},
        "config": {"quick": quick, "plan": plan_name, "sizes": sizes, "batch": batch, "seed": seed, "repeats": settings["repeats"],
                   "warmup": settings["warmup"], "settle_s": settings["settle_s"],
                   "sweep_settle_s": settings["sweep_settle_s"], "clamp": CLAMP, "tau": TAU, "torch": has_torch,
                   "jax": has_jax},
    }
    if has_torch:
        import torch

        torch.set_num_threads(threads)
        report["machine"]["torch_threads"] = torch.get_num_threads()

    for line in _machine_header(report["machine"]):
        say(line)
    if jax_missing:
        say(jax_missing)
    say(f"main: {'-'.join(map(str, sizes))} at batch {batch}")
    report["main"] = _measure(sizes, batch, seed, settings["repeats"], settings["warmup"], threads, has_torch, dev, settings["settle_s"],
                              has_jax)
    ratios = _ratios(report["main"])
    report["ratios_of_minima"] = {f"{key}_of_minima": value for key, value in _ratios(report["main"], "min_ms").items()}

    report["batch_sweep"] = []
    for b in settings["batches"]:
        say(f"batch sweep: {b}")
        timings = _measure(sizes, b, seed, settings["sweep_repeats"], max(2, settings["warmup"] // 2), threads, has_torch, dev,
                           settings["sweep_settle_s"], has_jax)
        sweep_ratios = _ratios(timings)
        report["batch_sweep"].append({"batch": b, **timings, "ratios": sweep_ratios})
        if b == FLOOR_BATCH:  # the GPU's matrix-product floor target is at this batch
            key = f"relu_vs_floor_step_ratio_at_batch_{b}"
            ratios[key] = sweep_ratios["relu_vs_floor_step_ratio"]
            report["ratios_of_minima"][f"{key}_of_minima"] = timings["step"]["relu"]["min_ms"] / timings["step"]["floor"]["min_ms"]
    report["width_sweep"] = []
    for hidden in settings["widths"]:
        widths = [sizes[0], *hidden, sizes[-1]]
        say(f"width sweep: {'-'.join(map(str, widths))}")
        timings = _measure(widths, batch, seed, settings["sweep_repeats"], max(2, settings["warmup"] // 2), threads, has_torch, dev,
                           settings["sweep_settle_s"], has_jax)
        report["width_sweep"].append({"sizes": widths, **timings, "ratios": _ratios(timings)})

    data_dir = data_dir or os.environ.get(DATA_ENV)
    if data_dir:
        say(f"epoch: MNIST from {data_dir}")
        epoch = _epoch_throughput(data_dir, sizes, batch, seed, settings["epoch_rounds"], threads,
                                  has_torch, train_limit=2000 if quick else None, dev=dev)
        report["epoch"] = epoch
        ratios["epoch_throughput_vs_torch_ratio"] = epoch.get("epoch_throughput_vs_torch_ratio")
        ratios["phase1_epoch_throughput_vs_torch_ratio"] = epoch.get("phase1_epoch_throughput_vs_torch_ratio")
    else:
        report["epoch"] = {"skipped": f"no data directory: pass data_dir or set {DATA_ENV}"}
        ratios["epoch_throughput_vs_torch_ratio"] = None
        ratios["phase1_epoch_throughput_vs_torch_ratio"] = None

    say("memory")
    if dev.backend.name == "numpy":
        report["memory"] = _memory(sizes, batch, seed, settings["memory_steps"])
        report["memory_peaks"] = _memory_peaks(sizes, 64 if quick else MEMORY_BATCH, seed)
    else:
        report["memory"] = {"skipped": f"tracemalloc sees host memory only; not measured on {dev.backend.name}"}
    say("ONNX Runtime")
    if dev.backend.name == "numpy":
        report["onnx"] = _onnx_inference(sizes, seed, threads, settings["repeats"], settings["warmup"], settings["settle_s"])
    else:
        report["onnx"] = {"skipped": f"ONNX Runtime is compared on the CPU only, not on {dev.backend.name}"}
    ratios.update(_onnx_ratios(report["onnx"]))
    report["ratios"] = ratios
    report["targets"] = _targets(ratios, report["memory"], report["ratios_of_minima"], dev.backend.device,
                                 memory_peaks=report.get("memory_peaks"))
    report["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    # after the runs: on a GPU with the kernels on, which families passed their self-check
    report["config"]["cuda_kernels"] = cuda.status()
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        write_json(json_path, report)
    if figure_path:
        _figure(report, figure_path)
    return report


def _torch_importable() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


#: The performance issue's targets: (ratio key, comparison, threshold, where it applies).
#: "cpu"/"gpu": on that device only; "jit"/"nojit": with the compiled loops on or off
#: (``SMARTMIXED_JIT=0``); None: everywhere. Every ratio is checked on medians (the headline)
#: and on minima (``met_by_minima``: the intrinsic cost when the machine is noisy).
_TARGETS = (
    ("phase1_vs_relu_step_ratio", "<=", 1.3, "jit"),
    ("phase1_vs_relu_step_ratio", "<=", 1.8, "nojit"),
    ("relu_vs_floor_step_ratio", "<=", 1.25, "cpu"),
    ("phase2_vs_relu_step_ratio", "<=", 1.05, None),
    ("phase2_vs_relu_infer_ratio", "<=", 1.05, None),
    ("relu_vs_jax_step_ratio", "<=", 0.7, "cpu"),
    ("phase1_vs_jax_step_ratio", "<=", 0.7, "cpu"),
    ("phase2_vs_jax_step_ratio", "<=", 0.7, "cpu"),
    ("relu_vs_torch_step_ratio", "<=", 0.5, None),
    ("phase1_vs_torch_step_ratio", "<=", 0.5, None),
    ("phase2_vs_torch_step_ratio", "<=", 0.5, None),
    (f"relu_vs_floor_step_ratio_at_batch_{FLOOR_BATCH}", "<=", 1.3, "gpu"),
    ("phase1_vs_torch_graph_step_ratio", "<=", 1.0, "gpu"),
    ("phase2_vs_torch_graph_step_ratio", "<=", 1.0, "gpu"),
    ("epoch_throughput_vs_torch_ratio", ">=", 2.0, "gpu"),
)
#: Phase 1's peak memory during a step against ReLU's, at this batch (tracemalloc, host only).
MEMORY_BATCH = 1024
MEMORY_PEAK_TARGET = 1.5


def _applies(where: str | None, device: str, jit: bool) -> bool:
    return where is None or where == device or (where == "jit" and jit) or (where == "nojit" and not jit)


def _targets(ratios: dict[str, float | None], memory: dict[str, Any], minima: dict[str, float | None] | None = None,
             device: str = "cpu", jit: bool | None = None, memory_peaks: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each target that applies here (``device``, compiled loops on or off) with its threshold,
    value (of medians) and whether it is met; ``met_by_minima`` from the ratios of minima."""
    jit = compiled.enabled() if jit is None else jit
    minima = minima or {}

    def check(value: float | None, op: str, threshold: float) -> bool | None:
        return None if value is None else bool(value <= threshold if op == "<=" else value >= threshold)

    targets: dict[str, Any] = {}
    for key, op, threshold, where in _TARGETS:
        if not _applies(where, device, jit):
            continue
        value, fastest = ratios.get(key), minima.get(f"{key}_of_minima")
        targets[key] = {"target": f"{op} {threshold}", "value": value, "met": check(value, op, threshold),
                        "value_of_minima": fastest, "met_by_minima": check(fastest, op, threshold)}
    measured = [v["no_growth"] for v in memory.values() if isinstance(v, dict) and "no_growth" in v]
    targets["no_memory_growth"] = {"target": "no growth after warm-up", "met": all(measured) if measured else None}
    peaks = memory_peaks or {}
    ratio = peaks.get("phase1_vs_relu_peak_ratio")
    targets["phase1_vs_relu_peak_memory_ratio"] = {
        "target": f"<= {MEMORY_PEAK_TARGET} at batch {peaks.get('batch', MEMORY_BATCH)}", "value": ratio,
        "met": check(ratio, "<=", MEMORY_PEAK_TARGET)}
    return targets


def _memory_peaks(sizes: Sequence[int], batch: int, seed: int, steps: int = 3) -> dict[str, Any]:
    """Peak host memory (tracemalloc) during ``steps`` training steps, after one warm-up step, of
    the ReLU and the phase-1 network at ``batch``: everything the network, its optimizer and its
    step allocate (weights, Adam's moments, work buffers, temporaries), traced from before the
    network is built, but the batch itself."""
    rng = np.random.default_rng(seed + 3)
    x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch)
    builders = {"relu": lambda: MLP(sizes, "relu", seed=seed), "phase1": lambda: _phase1_network(sizes, seed)}
    result: dict[str, Any] = {"batch": batch, "steps": steps}
    for build in builders.values():  # untraced: the code's first use (imports, compiled loops) is no network's memory
        _numpy_step(build(), x, y)()
    for name, build in builders.items():
        tracemalloc.start()
        try:
            step = _numpy_step(build(), x, y)
            step()
            tracemalloc.reset_peak()
            for _ in range(steps):
                step()
            held, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        result[f"{name}_peak_bytes"] = peak
        result[f"{name}_held_bytes"] = held
    result["phase1_vs_relu_peak_ratio"] = result["phase1_peak_bytes"] / result["relu_peak_bytes"]
    return result
