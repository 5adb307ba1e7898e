r"""Engines: the code that runs a layer's pass, chosen once, when the layer is built.

A layer object (:mod:`smartmixed_np.nn.layers`) holds its state (choices, groups,
logits) and hands every forward and backward to one engine, picked here by
:func:`phase2_engine` or :func:`phase1_engine` from what is known at construction:
the activations (built-ins have fused kernels; a user's own do not), the mode, the
backend, and whether the compiled loops are on (:func:`smartmixed_np.fast.compiled.enabled`).
This module is the only place where that choice is made. Every engine computes
the reference's function; each one's docstring names the reference it stands in for,
and the tests prove each equal to it.

Phase 2 (one frozen activation per neuron):

* :class:`ReferenceGroups`: :func:`~smartmixed_np.core.phase2.fixed_forward` and
  :func:`~smartmixed_np.core.phase2.fixed_backward` themselves. Any activation, any
  array module.
* :class:`FusedGroups`: the fused kernels (:mod:`smartmixed_np.fast.phase2`) on the
  feature-major view, in a reused workspace; a masked layer of several groups is
  permuted into grouped order first and back after, and its cache is a
  :class:`GroupedCache`. NumPy or CuPy.
* :class:`CompiledGroups`: the compiled group loops (:mod:`smartmixed_np.fast.compiled`):
  every group in one pass, each neuron's row read where it lies. Host arrays.
* :class:`CudaGroups`: the CUDA kernels (:mod:`smartmixed_np.fast.cuda`), one launch each
  way for the whole layer, each neuron's activation read from its code. CuPy, with the
  kernels switched on (``SMARTMIXED_CUDA_KERNELS=1``) and self-checked; off by default.

Phase 1 (training passes; an evaluation pass runs the layer's frozen phase-2 layer):

* :class:`ReferenceMixture`: :func:`~smartmixed_np.core.phase1.mixture_forward` and
  :func:`~smartmixed_np.core.phase1.mixture_backward`. Every mode.
* :class:`FusedMixture`: :func:`~smartmixed_np.fast.phase1.mixture_forward_fused` and
  :func:`~smartmixed_np.fast.phase1.mixture_backward_fused`. Hard selection, shared or
  no noise, built-ins.
* :class:`LeanMixture`: no (K, N, B) candidate stack, on NumPy alone: the selected
  candidate by its kernel on the gathered rows of the neurons that chose it forward
  (:func:`~smartmixed_np.fast.phase1.mixture_forward_lean`), the candidates one at a time
  backward (:func:`~smartmixed_np.fast.phase1.mixture_backward_lean`): bitwise the fused
  engine's numbers. Host arrays, Numba off.
* :class:`CompiledMixture`: no (K, N, B) candidate stack: the selected candidate's value
  alone forward (:func:`~smartmixed_np.fast.phase1.mixture_forward_single`, bitwise but float32
  elu and selu without AVX-512, a few ulps), every
  candidate recomputed from shared exponentials backward
  (:func:`~smartmixed_np.fast.phase1.mixture_backward_single`: dz bitwise, the logits'
  gradient to a stated tolerance). Host arrays.
* :class:`CudaMixture`: :func:`~smartmixed_np.fast.cuda.phase1_forward` and
  :func:`~smartmixed_np.fast.cuda.phase1_backward`, two launches forward, two and a
  reduction backward. CuPy, kernels switched on and self-checked, as for :class:`CudaGroups`.

These three compute the straight-through gradient, the default estimator. The
others (:mod:`smartmixed_np.core.estimators`) run the reference forward and their own
backward, any array module, hard selection with Gumbel noise:

* :class:`ReinMaxMixture`: :func:`~smartmixed_np.core.estimators.reinmax_backward`;
* :class:`GumbelRaoMixture`: :func:`~smartmixed_np.core.estimators.gumbel_rao_backward`,
  its M conditional draws taken from the layer's noise stream in the forward;
* :class:`ScoreFunctionMixture`: :func:`~smartmixed_np.core.estimators.score_function_backward`,
  which needs the batch's loss (``needs_loss``; the MLP passes it from the training
  step) and keeps a :class:`~smartmixed_np.core.estimators.RunningBaseline`.

The clamp's gradient at exactly its edge (``clamp_grad``, :data:`~smartmixed_np.core.phase1.CLAMP_GRADS`):
the fast paths compute ours, ``"open"``; the authors' ``"closed"`` (PyTorch's clamp) is
computed by the reference engines alone, which both choosers take for it wherever a
clamp applies (a layer without one has no edge, and keeps its fast path).

Every phase-1 engine's ``backward`` takes ``loss`` (only the score function reads it),
has ``needs_loss``, and ``state_dict``/``load_state_dict`` for what it learns across
steps (only the score function's baseline).

A compiled engine meets, now and then, arrays its loops cannot take (a float16
input, a view that is not contiguous): it then runs the NumPy code it stands in
for, which gives the same numbers, so its caches need no mark of which ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..backend import Backend, array_module, backend_of, get_backend
from ..core.activations import Activation
from ..core.estimators import (
    DEFAULT_SAMPLES, EstimatorCache, RunningBaseline, check_estimator, estimator_forward, gumbel_rao_backward,
    reinmax_backward, score_function_backward,
)
from ..core.phase1 import CLAMP_GRADS, MixtureCache, mixture_backward, mixture_forward
from ..core.phase2 import FixedCache, Group, contiguous_order, fixed_backward, fixed_forward, make_groups
from ..fast import compiled, cuda
from ..fast.kernels import has_kernel
from ..fast.phase1 import (
    mixture_backward_fused, mixture_backward_lean, mixture_backward_single, mixture_forward_fused, mixture_forward_lean,
    mixture_forward_single,
)
from ..fast.phase2 import grouped_backward_fused, grouped_forward_fused
from ..fast.workspace import Workspace, get_buffer

__all__ = [
    "GroupedCache",
    "ReferenceGroups",
    "FusedGroups",
    "CompiledGroups",
    "CudaGroups",
    "phase2_engine",
    "ReferenceMixture",
    "FusedMixture",
    "LeanMixture",
    "CompiledMixture",
    "CudaMixture",
    "EstimatorMixture",
    "ReinMaxMixture",
    "GumbelRaoMixture",
    "ScoreFunctionMixture",
    "phase1_engine",
]


def _check_clamp_grad(clamp_grad: str) -> None:
    if clamp_grad not in CLAMP_GRADS:
        raise ValueError(f"clamp_grad must be one of {', '.join(CLAMP_GRADS)}, got {clamp_grad!r}")


def _compiled_on(backend: Backend) -> bool:
    """The compiled loops apply to this backend's arrays: host NumPy, Numba on."""
    return backend.name == "numpy" and compiled.enabled()


def _cuda_kernels(backend: Backend, family: str) -> cuda.Kernels | None:
    """The CUDA kernels of ``family`` ("phase2", "phase1") for this backend: a GPU backend, the
    kernels switched on and ``family`` self-checked (:func:`smartmixed_np.fast.cuda.kernels_for`);
    else None, and the plain engines run (always on the CPU, whatever the switch says)."""
    kernels = cuda.kernels_for(backend)
    return kernels if kernels is not None and kernels.usable(family) else None


# --------------------------------------------------------------------------- phase 2
@dataclass
class GroupedCache:
    """The cache of a :class:`FusedGroups` pass over a masked layer: ``z`` and ``a``
    (B, N) with the neurons permuted into grouped order. Only that engine's backward
    reads it (:func:`~smartmixed_np.core.phase2.fixed_backward` refuses it)."""

    z: Any
    a: Any


class ReferenceGroups:
    """The reference, :func:`~smartmixed_np.core.phase2.fixed_forward` /
    :func:`~smartmixed_np.core.phase2.fixed_backward`, over ``groups``, with the clamp's
    gradient ``clamp_grad`` ("open" or "closed"). The workspace is not used: every pass
    returns fresh arrays."""

    name = "reference"

    def __init__(self, groups: Sequence[Group], clamp_grad: str = "open") -> None:
        self.groups = list(groups)
        self.clamp_grad = clamp_grad

    def forward(self, z: Any, workspace: Workspace | None = None) -> tuple[Any, FixedCache]:
        return fixed_forward(z, self.groups)

    def backward(self, da: Any, cache: FixedCache, workspace: Workspace | None = None) -> Any:
        return fixed_backward(da, cache, self.groups, clamp_grad=self.clamp_grad)


class FusedGroups:
    """Stands in for :class:`ReferenceGroups` when every activation is a built-in: the fused
    kernels, feature-major, with the outputs in the workspace's buffers.

    Args:
        choices: (N,) host ints, the layer's choices in its current neuron order.
        pool, groups, backend, clamp: the layer's.

    State (set here): ``sorted_groups``, the groups as slices of rows in grouped order;
    ``perm`` and ``inverse`` (device int64 (N,)), the permutation into grouped order and
    back for a masked layer of several groups, else None; ``rows`` (host int64 (N,)),
    the neuron at each grouped position.
    """

    name = "fused"

    def __init__(self, choices: np.ndarray, pool: Sequence[Activation], groups: Sequence[Group],
                 backend: Backend, clamp: float | None) -> None:
        self.groups = list(groups)
        self.perm = self.inverse = None
        self.sorted_groups = self.groups
        self.rows = np.arange(len(choices), dtype=np.int64)
        if not all(isinstance(group.columns, slice) for group in self.groups):
            self.rows = contiguous_order(choices)
            self.perm = backend.asarray(self.rows)
            self.inverse = backend.asarray(np.argsort(self.rows).astype(np.int64))
            self.sorted_groups = make_groups(choices[self.rows], pool, backend, contiguous=True, clamp=clamp)

    def forward(self, z: Any, workspace: Workspace | None = None) -> tuple[Any, FixedCache | GroupedCache]:
        xp = array_module(z)
        batch, width = z.shape
        zT = z.T
        if self.perm is None:
            aT = grouped_forward_fused(zT, self.sorted_groups, get_buffer(workspace, xp, "a_grouped", (width, batch), z.dtype))
            return aT.T, FixedCache(z=z, a=aT.T)
        zT = xp.take(zT, self.perm, axis=0, out=get_buffer(workspace, xp, "z_grouped", (width, batch), z.dtype))
        aT = grouped_forward_fused(zT, self.sorted_groups, get_buffer(workspace, xp, "a_grouped", (width, batch), z.dtype))
        cache = GroupedCache(z=zT.T, a=aT.T)
        aT = xp.take(aT, self.inverse, axis=0, out=get_buffer(workspace, xp, "a", (width, batch), z.dtype))
        return aT.T, cache

    def backward(self, da: Any, cache: FixedCache | GroupedCache, workspace: Workspace | None = None) -> Any:
        xp = array_module(da)
        batch, width = da.shape
        daT = da.T
        if self.perm is not None:
            if not isinstance(cache, GroupedCache):
                raise TypeError(f"this layer's backward needs the GroupedCache of its forward, got {type(cache).__name__}")
            daT = xp.take(daT, self.perm, axis=0, out=get_buffer(workspace, xp, "da_grouped", (width, batch), da.dtype))
        dzT = get_buffer(workspace, xp, "dz_grouped", (width, batch), da.dtype)
        grouped_backward_fused(daT, cache.z.T, cache.a.T, self.sorted_groups, dzT)
        if self.perm is not None:
            dzT = xp.take(dzT, self.inverse, axis=0, out=get_buffer(workspace, xp, "dz", (width, batch), da.dtype))
        return dzT.T


class CompiledGroups:
    """Stands in for :class:`FusedGroups` (and so for the reference) on host arrays: the
    compiled group loops, :func:`smartmixed_np.fast.compiled.grouped_forward` and
    :func:`~smartmixed_np.fast.compiled.grouped_backward`. Its cache is a
    :class:`~smartmixed_np.core.phase2.FixedCache`, neurons in their own order.

    Arrays the loops cannot take (a dtype other than float32/float64) run the
    reference, whose cache is the same kind.

    State: ``fused``, the :class:`FusedGroups` whose grouped order the loops read;
    ``tables``, the loops' :class:`~smartmixed_np.fast.compiled.GroupTable` by dtype,
    built by :meth:`table` the first time a dtype is seen.
    """

    name = "compiled"

    def __init__(self, choices: np.ndarray, pool: Sequence[Activation], groups: Sequence[Group],
                 backend: Backend, clamp: float | None) -> None:
        self.groups = list(groups)
        self.fused = FusedGroups(choices, pool, groups, backend, clamp)
        self.tables: dict[Any, compiled.GroupTable] = {}

    def table(self, dtype: Any) -> compiled.GroupTable:
        """The loops' table of this layer for arrays of ``dtype`` (built once per dtype)."""
        dtype = np.dtype(dtype)
        table = self.tables.get(dtype)
        if table is None:
            table = self.tables[dtype] = compiled.group_table(self.fused.sorted_groups, self.fused.rows, dtype)
        return table

    def forward(self, z: Any, workspace: Workspace | None = None) -> tuple[Any, FixedCache]:
        zT = z.T
        if not compiled.applies(zT):
            zT = np.ascontiguousarray(zT)
            if not compiled.applies(zT):  # no float32/float64 host array
                return fixed_forward(z, self.groups)
        batch, width = z.shape
        aT = get_buffer(workspace, np, "a", (width, batch), z.dtype)
        table = self.table(z.dtype)
        needs_scratch = table.prepass and not compiled.exponentials_in_loop(z.dtype)  # NumPy's functions run over it
        scratch = get_buffer(workspace, np, "scratch", (width, batch), z.dtype) if needs_scratch else None
        compiled.grouped_forward(zT, table, aT, scratch)
        return aT.T, FixedCache(z=z, a=aT.T)

    def backward(self, da: Any, cache: FixedCache, workspace: Workspace | None = None) -> Any:
        aT, zT = cache.a.T, cache.z.T
        daT = np.ascontiguousarray(da.T)
        if not compiled.applies(daT, aT):
            return fixed_backward(da, cache, self.groups)
        batch, width = da.shape
        dzT = get_buffer(workspace, np, "dz", (width, batch), da.dtype)
        return compiled.grouped_backward(daT, aT, self.table(da.dtype), dzT, zT=np.ascontiguousarray(zT)).T


class CudaGroups:
    """Stands in for :class:`FusedGroups` (and so for the reference) on a GPU with the CUDA kernels
    on: :func:`~smartmixed_np.fast.cuda.coded_forward` / :func:`~smartmixed_np.fast.cuda.coded_backward`,
    one launch each way over the whole (B, N) layer, neuron n's activation and clamp read from its
    code and limits: no groups, no permutation, masked or contiguous alike. Its cache is a
    :class:`~smartmixed_np.core.phase2.FixedCache`, neurons in their own order.

    Arrays of a dtype other than float32/float64 run ``plain``, the :class:`FusedGroups` it stands in for.

    State: ``kernels`` (:class:`~smartmixed_np.fast.cuda.Kernels`); ``plain``; ``tables``, the
    layer's :class:`~smartmixed_np.fast.cuda.NeuronTable` by dtype, built the first time a dtype is seen.
    """

    name = "cuda"

    def __init__(self, choices: np.ndarray, pool: Sequence[Activation], groups: Sequence[Group],
                 backend: Backend, clamp: float | None, kernels: cuda.Kernels) -> None:
        self.groups = list(groups)
        self.kernels = kernels
        self.choices = np.asarray(choices, dtype=np.int64).copy()
        self.pool = tuple(pool)
        self.clamp = clamp
        self.plain = FusedGroups(choices, pool, groups, backend, clamp)
        self.tables: dict[Any, cuda.NeuronTable] = {}

    def table(self, dtype: Any) -> cuda.NeuronTable:
        """The layer's codes and limits on the device, in ``dtype`` (built once per dtype)."""
        dtype = np.dtype(dtype)
        table = self.tables.get(dtype)
        if table is None:
            table = self.tables[dtype] = self.kernels.neuron_table(self.choices, self.pool, self.clamp, dtype)
        return table

    def forward(self, z: Any, workspace: Workspace | None = None) -> tuple[Any, FixedCache | GroupedCache]:
        if z.dtype not in cuda.FLOATS:
            return self.plain.forward(z, workspace)
        a = cuda.coded_forward(self.kernels, z, self.table(z.dtype), workspace)
        return a, FixedCache(z=z, a=a)

    def backward(self, da: Any, cache: FixedCache | GroupedCache, workspace: Workspace | None = None) -> Any:
        if isinstance(cache, GroupedCache):
            return self.plain.backward(da, cache, workspace)
        if da.dtype not in cuda.FLOATS:
            return fixed_backward(da, cache, self.groups)
        return cuda.coded_backward(self.kernels, da, cache.z, cache.a, self.table(da.dtype), workspace)


def phase2_engine(choices: np.ndarray, pool: Sequence[Activation], groups: Sequence[Group], backend: Backend,
                  clamp: float | None, clamp_grad: str = "open") -> ReferenceGroups | FusedGroups | CompiledGroups | CudaGroups:
    """The engine of a phase-2 layer: compiled on host arrays with Numba, the CUDA kernels on a
    GPU when they are switched on, fused where every activation is a built-in, else the
    reference. ``clamp_grad="closed"`` (the authors' clamp gradient) takes the reference
    wherever a group is clamped on some side."""
    _check_clamp_grad(clamp_grad)
    closed = clamp_grad == "closed" and any(group.lo is not None or group.hi is not None for group in groups)
    if closed or not all(has_kernel(group.activation) for group in groups):
        return ReferenceGroups(groups, clamp_grad)
    kernels = _cuda_kernels(backend, "phase2")
    if kernels is not None and all(cuda.has_code(group.activation) for group in groups):
        return CudaGroups(choices, pool, groups, backend, clamp, kernels)
    engine = CompiledGroups if _compiled_on(backend) else FusedGroups
    return engine(choices, pool, groups, backend, clamp)


# --------------------------------------------------------------------------- phase 1
class ReferenceMixture:
    """The reference, :func:`~smartmixed_np.core.phase1.mixture_forward` /
    :func:`~smartmixed_np.core.phase1.mixture_backward`, for every mode: the
    straight-through estimator (``estimator = "st"``) in hard mode, with the clamp's
    gradient ``clamp_grad`` ("open" or "closed")."""

    name = "reference"
    estimator = "st"
    #: whether ``backward`` needs the loss of the pass (only the score function's does)
    needs_loss = False

    def __init__(self, pool: Sequence[Activation], hard: bool, clamp_grad: str = "open") -> None:
        self.pool = tuple(pool)
        self.hard = hard
        self.clamp_grad = clamp_grad

    def forward(self, z: Any, logits: Any, noise: Any, *, tau: float, clamp: float | None,
                workspace: Workspace | None = None) -> tuple[Any, MixtureCache]:
        return mixture_forward(z, logits, noise, self.pool, tau=tau, hard=self.hard, clamp=clamp)

    def backward(self, dout: Any, cache: MixtureCache, workspace: Workspace | None = None, loss: Any = None) -> tuple[Any, Any]:
        return mixture_backward(dout, cache, self.pool, clamp_grad=self.clamp_grad)

    def state_dict(self) -> dict[str, Any]:
        """What the engine learns across steps, JSON-able (nothing, but for the score function)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""


class FusedMixture(ReferenceMixture):
    """Stands in for :class:`ReferenceMixture` with hard selection, shared or no noise and a
    pool of built-ins: :func:`~smartmixed_np.fast.phase1.mixture_forward_fused` /
    :func:`~smartmixed_np.fast.phase1.mixture_backward_fused`, in the workspace's buffers.
    Per-sample noise given to a pass (a replay) runs the reference. The subclasses below
    run another pair of the same signatures (``forward_pass``, ``backward_pass``)."""

    name = "fused"
    forward_pass = staticmethod(mixture_forward_fused)
    backward_pass = staticmethod(mixture_backward_fused)

    def forward(self, z, logits, noise, *, tau, clamp, workspace=None):
        if noise is not None and noise.ndim != 2:
            return ReferenceMixture.forward(self, z, logits, noise, tau=tau, clamp=clamp)
        return self.forward_pass(z, logits, noise, self.pool, tau=tau, clamp=clamp, workspace=workspace)

    def backward(self, dout, cache, workspace=None, loss=None):
        if cache.weights.ndim != 2:
            return ReferenceMixture.backward(self, dout, cache)
        return self.backward_pass(dout, cache, self.pool, workspace)


class LeanMixture(FusedMixture):
    """:class:`FusedMixture` without the candidate stack, on NumPy alone: :func:`~smartmixed_np.fast.phase1.mixture_forward_lean`
    (the selected candidate alone, group by group on gathered rows) and :func:`~smartmixed_np.fast.phase1.mixture_backward_lean`
    (the candidates one at a time into one buffer): bitwise the fused engine's numbers, in two
    (N, B) buffers per layer where the fused one holds 2K + 1. Host arrays, Numba off."""

    name = "lean"
    forward_pass = staticmethod(mixture_forward_lean)
    backward_pass = staticmethod(mixture_backward_lean)


class CompiledMixture(FusedMixture):
    """:class:`FusedMixture` without the candidate stack: :func:`~smartmixed_np.fast.phase1.mixture_forward_single`
    (the selected candidate alone, bitwise but float32 elu and selu without AVX-512) and :func:`~smartmixed_np.fast.phase1.mixture_backward_single`
    (every candidate recomputed from shared exponentials, one compiled pass per neuron): host arrays, Numba on."""

    name = "compiled"
    forward_pass = staticmethod(mixture_forward_single)
    backward_pass = staticmethod(mixture_backward_single)


class CudaMixture(FusedMixture):
    """Stands in for :class:`FusedMixture` on a GPU with the CUDA kernels on:
    :func:`~smartmixed_np.fast.cuda.phase1_forward` / :func:`~smartmixed_np.fast.cuda.phase1_backward`.
    Its cache is a :class:`~smartmixed_np.fast.cuda.KernelMixtureCache` (no candidate stack).
    Per-sample noise given to a pass (a replay) and dtypes other than float32/float64 run
    :class:`FusedMixture`. State: ``kernels``; ``tables``, the pool's codes and limits by (clamp, dtype)."""

    name = "cuda"

    def __init__(self, pool: Sequence[Activation], hard: bool, kernels: cuda.Kernels) -> None:
        super().__init__(pool, hard)
        self.kernels = kernels
        self.tables: dict[tuple, cuda.NeuronTable] = {}

    def forward(self, z, logits, noise, *, tau, clamp, workspace=None):
        if (noise is not None and noise.ndim != 2) or z.dtype not in cuda.FLOATS:
            return super().forward(z, logits, noise, tau=tau, clamp=clamp, workspace=workspace)
        key = (clamp, np.dtype(z.dtype))
        table = self.tables.get(key)
        if table is None:
            table = self.tables[key] = self.kernels.candidate_table(self.pool, clamp, z.dtype)
        return cuda.phase1_forward(self.kernels, z, logits, noise, table, tau=tau, clamp=clamp, workspace=workspace)

    def backward(self, dout, cache, workspace=None, loss=None):
        if isinstance(cache, cuda.KernelMixtureCache):
            return cuda.phase1_backward(self.kernels, dout, cache, workspace)
        return super().backward(dout, cache, workspace)


class EstimatorMixture(ReferenceMixture):
    """What the engines of the estimators other than straight-through share: the hard reference
    forward, :func:`~smartmixed_np.core.estimators.estimator_forward`, whose cache keeps the
    logits their backwards read. A subclass names its ``estimator`` and writes ``backward``."""

    def __init__(self, pool: Sequence[Activation]) -> None:
        super().__init__(pool, hard=True)

    def forward(self, z, logits, noise, *, tau, clamp, workspace=None) -> tuple[Any, EstimatorCache]:
        return estimator_forward(z, logits, noise, self.pool, tau=tau, clamp=clamp)

    def backward(self, dout, cache, workspace=None, loss=None):
        raise NotImplementedError


class ReinMaxMixture(EstimatorMixture):
    """The ReinMax backward, :func:`~smartmixed_np.core.estimators.reinmax_backward`."""

    name = estimator = "reinmax"

    def backward(self, dout, cache, workspace=None, loss=None):
        return reinmax_backward(dout, cache, self.pool)


class GumbelRaoMixture(EstimatorMixture):
    """The hard reference forward, which also draws M x (the noise's shape) Exp(1) variates from the
    layer's stream ``rng`` (after the noise itself), and the Gumbel-Rao backward
    (:func:`~smartmixed_np.core.estimators.gumbel_rao_backward`) over those M conditional draws."""

    name = estimator = "gumbel_rao"

    def __init__(self, pool: Sequence[Activation], samples: int, rng: Any) -> None:
        super().__init__(pool)
        if rng is None:
            raise ValueError("the gumbel_rao estimator draws from the layer's noise stream: give the layer an rng")
        self.samples = int(samples)
        self.rng = rng

    def forward(self, z, logits, noise, *, tau, clamp, workspace=None):
        shape = (self.samples,) + tuple(logits.shape if noise is None else noise.shape)
        host = self.rng.generator.standard_exponential(size=shape).astype(logits.dtype, copy=False)
        exponentials = _backend_of(logits).asarray(host)
        return estimator_forward(z, logits, noise, self.pool, tau=tau, clamp=clamp, exponentials=exponentials)

    def backward(self, dout, cache, workspace=None, loss=None):
        return gumbel_rao_backward(dout, cache, self.pool)


class ScoreFunctionMixture(EstimatorMixture):
    """The score-function backward
    (:func:`~smartmixed_np.core.estimators.score_function_backward`) with the baseline
    ``baseline``, a :class:`~smartmixed_np.core.estimators.RunningBaseline` of the losses of
    earlier passes: each backward reads it, then folds in its own loss."""

    name = estimator = "score"
    needs_loss = True

    def __init__(self, pool: Sequence[Activation]) -> None:
        super().__init__(pool)
        self.baseline = RunningBaseline()

    def backward(self, dout, cache, workspace=None, loss=None):
        if loss is None:
            raise ValueError("the score-function estimator needs the loss of the pass: model.backward(dlogits, loss=loss)")
        grads = score_function_backward(dout, cache, self.pool, loss=loss, baseline=self.baseline.value)
        self.baseline.update(loss)
        return grads

    def state_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "baseline" in state:
            self.baseline.load_state_dict(state["baseline"])


def _backend_of(array: Any) -> Backend:
    backend = backend_of(array)
    return backend if backend is not None else get_backend("cpu")


def phase1_engine(pool: Sequence[Activation], hard: bool, noise_mode: str, backend: Backend, *,
                  estimator: str = "st", samples: int = DEFAULT_SAMPLES, rng: Any = None,
                  clamp_grad: str = "open", clamp: float | None = 10.0) -> ReferenceMixture:
    """The training engine of a phase-1 layer.

    Straight-through (``estimator="st"``), for hard selection with shared or no noise over
    built-ins: on host arrays the compiled engine with Numba, the lean one without; on
    another backend the fused one (the CUDA kernels on a GPU when switched on); else the
    reference.
    Any other estimator (:data:`~smartmixed_np.core.estimators.ESTIMATORS`; hard selection
    with Gumbel noise only, else ValueError): its reference engine, Gumbel-Rao with
    ``samples`` draws from ``rng``, the layer's noise stream.
    ``clamp_grad="closed"`` (the authors' clamp gradient; straight-through only, else
    ValueError) takes the reference engine when the layer has a ``clamp``.
    """
    check_estimator(estimator, hard=hard, noise_mode=noise_mode, samples=samples)
    _check_clamp_grad(clamp_grad)
    if clamp_grad == "closed" and estimator != "st":
        raise ValueError(f"the closed clamp gradient is implemented for the st estimator only, not {estimator}")
    if clamp_grad == "closed" and clamp is not None:
        return ReferenceMixture(pool, hard, clamp_grad)
    if estimator == "reinmax":
        return ReinMaxMixture(pool)
    if estimator == "gumbel_rao":
        return GumbelRaoMixture(pool, samples, rng)
    if estimator == "score":
        return ScoreFunctionMixture(pool)
    if not (hard and noise_mode in ("shared", "none") and all(has_kernel(a) for a in pool)):
        return ReferenceMixture(pool, hard)
    kernels = _cuda_kernels(backend, "phase1")
    if kernels is not None and all(cuda.has_code(a) for a in pool):
        return CudaMixture(pool, hard, kernels)
    if _compiled_on(backend):
        return CompiledMixture(pool, hard)
    return LeanMixture(pool, hard) if backend.name == "numpy" else FusedMixture(pool, hard)
