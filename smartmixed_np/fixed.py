"""Phase 2: a fixed activation per neuron, applied group by group.

After phase 1 every hidden neuron ``n`` has a frozen choice ``c[n]`` in the pool.
The layer applies ``a[:, n] = f_{c[n]}(z[:, n])`` without a loop over neurons: the
neurons are split once, at construction, into one group per activation, and each
activation runs once over its whole group. Two ways to address a group:

* ``"masked"``: the group's columns are an index array; the forward gathers
  ``z[:, idx]``, applies ``f``, and scatters the result back.
* ``"contiguous"``: the neurons have been reordered (see :func:`contiguous_order`)
  so that each group is one slice ``z[:, start:stop]``; no gather, no scatter, just
  views. :meth:`smartmixed_np.mlp.MLP.freeze` permutes the weights to make this
  compute the same function as the masked form.

A uniform network (every neuron ReLU, say) is the one-group case, so it runs
through exactly the same code.

Two implementations of the same function. :func:`fixed_forward` and
:func:`fixed_backward` are the reference: plain, layout-agnostic, one
``activation.forward`` and one clamp per group. :class:`FixedMixedActivation` runs
the fused path when every activation of the layer is a built-in with a kernel in
:mod:`smartmixed_np.kernels`: it works on the *feature-major* view ``z.T`` (N, B), in
which a contiguous group is one contiguous block of rows, and a masked layer is
handled by one row permutation into grouped order, the contiguous kernels, and one
permutation back (:func:`grouped_forward_fused`, :func:`grouped_backward_fused`).
``tests/test_fixed.py`` checks the two against each other. On host arrays, with
Numba installed, the fused path runs as the compiled group loops of
:mod:`smartmixed_np.compiled` instead: every group of the layer in one forward and
one backward pass, each neuron's row read where it lies (masked groups need no
permutation); ``tests/test_compiled.py`` checks that they give the fused kernels'
numbers.

Clamping: phase 1 clamps each candidate's output to ``[-c, c]`` (the reference's
choice, c = 10); a frozen layer keeps the same clamp so that freezing preserves the
function. A side of the clamp that an activation's known range already satisfies
(sigmoid never leaves [0, 1]) is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from . import compiled
from .activations import Activation, clamp_limits, resolve_pool  # clamp_limits: also importable from here, as before
from .backend import Backend, array_module, get_backend, to_host
from .kernels import activation_backward_into, activation_forward_into, has_kernel
from .workspace import Workspace, get_buffer

__all__ = [
    "Group",
    "FIXED_PATHS",
    "FixedCache",
    "make_groups",
    "contiguous_order",
    "clamp_limits",
    "fixed_forward",
    "fixed_backward",
    "grouped_forward_fused",
    "grouped_backward_fused",
    "FixedMixedActivation",
]


@dataclass(frozen=True)
class Group:
    """The neurons that share one activation.

    Attributes:
        activation: the candidate applied to the group.
        columns: a ``slice`` (contiguous mode, or the whole layer) or an int index
            array on the device (masked mode).
        lo, hi: the clamp to apply to this group's outputs (``None`` for no clamp on
            that side).
    """

    activation: Activation
    columns: Any
    lo: float | None
    hi: float | None


#: The forward paths of a phase-2 layer, as :attr:`FixedCache.path` names them.
FIXED_PATHS = ("reference", "fused", "fused_grouped", "compiled")


@dataclass
class FixedCache:
    """What the backward pass needs: ``z`` (B, N) the input, ``a`` (B, N) the output.

    ``path`` names the forward that made the cache, and so the backward that consumes it:

    * ``"reference"``: :func:`fixed_forward`; any backward of the same groups can read it.
    * ``"fused"``: the fused kernels (:func:`grouped_forward_fused`), neurons in their
      own order.
    * ``"fused_grouped"``: the fused kernels of a *masked* layer, whose ``z`` and ``a``
      hold the neurons permuted into grouped order (see :class:`FixedMixedActivation`);
      such a cache belongs to that layer's :meth:`~FixedMixedActivation.backward` only.
    * ``"compiled"``: the compiled group loops (:func:`smartmixed_np.compiled.grouped_forward`),
      neurons in their own order; the backward runs the compiled loop too.
    """

    z: Any
    a: Any
    path: str = "reference"

    def __post_init__(self) -> None:
        if self.path not in FIXED_PATHS:
            raise ValueError(f"FixedCache.path must be one of {FIXED_PATHS}, got {self.path!r}")


def contiguous_order(choices: Any) -> np.ndarray:
    """The permutation that sorts neurons by choice (stable), as host int64 (N,).

    ``order[i]`` is the original index of the neuron placed at position ``i``.
    """
    return np.argsort(np.asarray(choices), kind="stable").astype(np.int64)


def make_groups(
    choices: Any,
    pool: Sequence[Activation],
    backend: Backend,
    *,
    contiguous: bool,
    clamp: float | None,
) -> list[Group]:
    """Split neurons into one :class:`Group` per activation present in ``choices``.

    Args:
        choices: (N,) host ints, index into ``pool`` per neuron. In contiguous mode
            they must already be sorted (see :func:`contiguous_order`).
        pool: the candidate activations.
        backend: where the index arrays of masked groups live.
        contiguous: build slices (requires sorted choices) rather than index arrays.
        clamp: the symmetric clamp, or None.

    Groups are built once, on the host, so that a forward pass never has to ask
    the device which neuron has which activation.
    """
    choices = np.asarray(choices)
    if choices.ndim != 1:
        raise ValueError(f"choices must be 1-D (N,), got shape {choices.shape}")
    if choices.size and (choices.min() < 0 or choices.max() >= len(pool)):
        raise ValueError(f"choices must index the pool of {len(pool)} activations, got values in [{choices.min()}, {choices.max()}]")
    if contiguous and np.any(np.diff(choices) < 0):
        raise ValueError("contiguous groups need choices sorted by activation; reorder the neurons first")
    groups = []
    for k in np.unique(choices):
        activation = pool[int(k)]
        lo, hi = clamp_limits(activation, clamp)
        members = np.flatnonzero(choices == k)
        if len(members) == len(choices):
            columns: Any = slice(None)
        elif contiguous:
            columns = slice(int(members[0]), int(members[-1]) + 1)
        else:
            columns = backend.asarray(members.astype(np.int64))
        groups.append(Group(activation, columns, lo, hi))
    return groups


def _apply_clamp(xp: Any, a: Any, lo: float | None, hi: float | None) -> Any:
    if lo is not None or hi is not None:
        xp.clip(a, lo, hi, out=a)
    return a


def _covers_layer(groups: Sequence[Group]) -> bool:
    """One group over every neuron (a uniform layer): no slicing needed at all."""
    return len(groups) == 1 and isinstance(groups[0].columns, slice) and groups[0].columns == slice(None)


def fixed_forward(z: Any, groups: Sequence[Group]) -> tuple[Any, FixedCache]:
    """$a_{:,n} = \\mathrm{clamp}(f_{c_n}(z_{:,n}))$, one vectorised call per group.

    Args:
        z: (B, N) pre-activations.
        groups: from :func:`make_groups`; together they cover every neuron once.

    Returns:
        ``a`` (B, N) and the cache.
    """
    xp = array_module(z)
    if _covers_layer(groups):
        group = groups[0]
        a = _apply_clamp(xp, group.activation.forward(z), group.lo, group.hi)
        return a, FixedCache(z=z, a=a)
    a = xp.empty_like(z)
    for group in groups:
        a[:, group.columns] = _apply_clamp(xp, group.activation.forward(z[:, group.columns]), group.lo, group.hi)
    return a, FixedCache(z=z, a=a)


def _group_derivative(xp: Any, group: Group, z: Any, a: Any) -> Any:
    """$f'(z)$ on one group, zero where the clamp was active."""
    d = group.activation.derivative(z, a)
    if group.lo is not None:
        d = d * (a > group.lo)
    if group.hi is not None:
        d = d * (a < group.hi)
    return d


def fixed_backward(da: Any, cache: FixedCache, groups: Sequence[Group]) -> Any:
    """$dz_{:,n} = da_{:,n} \\cdot f'_{c_n}(z_{:,n})$ (zero where clamped).

    Args:
        da: (B, N) upstream gradient.
        cache: from :func:`fixed_forward`.
        groups: the same groups as the forward.

    Returns:
        ``dz`` (B, N).
    """
    if cache.path == "fused_grouped":
        raise ValueError("this cache holds neurons in grouped order: pass it to its layer's backward()")
    xp = array_module(da)
    z, a = cache.z, cache.a
    if _covers_layer(groups):
        return da * _group_derivative(xp, groups[0], z, a)
    dz = xp.empty_like(da)
    for group in groups:
        cols = group.columns
        dz[:, cols] = da[:, cols] * _group_derivative(xp, group, z[:, cols], a[:, cols])
    return dz


def grouped_forward_fused(zT: Any, groups: Sequence[Group], out: Any) -> Any:
    """Fused forward on the feature-major layout: ``out[rows] = clamp(f(zT[rows]))`` per group.

    Args:
        zT: (N, B) pre-activations, one row per neuron.
        groups: groups whose ``columns`` are slices (here: of rows), all of
            activations with a kernel (:func:`~smartmixed_np.kernels.has_kernel`).
        out: (N, B) buffer, not overlapping ``zT``.

    Returns:
        ``out``.
    """
    for group in groups:
        rows = group.columns
        activation_forward_into(group.activation, zT[rows], group.lo, group.hi, out[rows])
    return out


def grouped_backward_fused(daT: Any, zT: Any, aT: Any, groups: Sequence[Group], out: Any) -> Any:
    """Fused backward on the feature-major layout: ``out[rows] = daT[rows] f'(zT[rows])`` (zero where clamped).

    Args:
        daT, zT, aT: (N, B) upstream gradient, input and output of the forward.
        groups: as for :func:`grouped_forward_fused`.
        out: (N, B) buffer, not overlapping the inputs.

    Returns:
        ``out``.
    """
    for group in groups:
        rows = group.columns
        activation_backward_into(group.activation, daT[rows], zT[rows], aT[rows], group.lo, group.hi, out[rows])
    return out


class FixedMixedActivation:
    """Phase-2 layer: a frozen activation per neuron.

    Args:
        choices: (N,) ints indexing ``pool``, in the layer's *current* neuron order.
        pool: activation names or :class:`Activation` objects (default: the six).
        contiguous: address groups by slices; ``choices`` must then be sorted.
        clamp: symmetric output clamp (``None`` for none).
        order: (N,) the original index of each current neuron (identity if None):
            lets :meth:`original_choices` report choices in the original order.
        backend: where the layer's index arrays live.

    State (all set here; a pass records nothing on the layer, its cache is returned):
        groups: the :class:`Group` per activation, addressing the current neuron order.
        fused: every activation of the layer has a fused kernel, so :meth:`forward`
            takes the fused (or, on host arrays with Numba, the compiled) path.
        _perm, _inverse: for a fused masked layer of several groups, the permutation
            into grouped order and back (device int64 (N,)); else None.
        _sorted_groups: the groups as slices of that grouped order.
        _rows: (N,) host int64, the neuron at each grouped position (for the compiled loops).
        _tables: the compiled loops' :class:`~smartmixed_np.compiled.GroupTable` by
            dtype, filled by :meth:`compiled_table` the first time a dtype is seen.
    """

    def __init__(
        self,
        choices: Any,
        pool: Any = None,
        *,
        contiguous: bool = False,
        clamp: float | None = None,
        order: Any = None,
        backend: Backend | str = "cpu",
    ) -> None:
        self.pool = resolve_pool(pool)
        self.choices = np.asarray(to_host(choices), dtype=np.int64).copy()
        n = self.choices.shape[0] if self.choices.ndim == 1 else -1
        self.order = np.arange(n, dtype=np.int64) if order is None else np.asarray(to_host(order), dtype=np.int64).copy()
        if self.order.shape != self.choices.shape or not np.array_equal(np.sort(self.order), np.arange(len(self.order))):
            raise ValueError(f"order must be a permutation of range({n}), got shape {self.order.shape}")
        if clamp is not None and not clamp > 0:
            raise ValueError(f"clamp must be positive or None, got {clamp}")
        self.contiguous = bool(contiguous)
        self.clamp = None if clamp is None else float(clamp)
        self.backend = get_backend(backend)
        self.groups = make_groups(self.choices, self.pool, self.backend, contiguous=self.contiguous, clamp=self.clamp)
        # The fused path: groups as slices of rows in grouped order; for a masked
        # layer with several groups, the permutation into that order and back.
        self.fused = all(has_kernel(group.activation) for group in self.groups)
        self._perm = self._inverse = None
        self._sorted_groups = self.groups
        if self.fused and not all(isinstance(group.columns, slice) for group in self.groups):
            perm = contiguous_order(self.choices)
            self._perm = self.backend.asarray(perm)
            self._inverse = self.backend.asarray(np.argsort(perm).astype(np.int64))
            self._sorted_groups = make_groups(self.choices[perm], self.pool, self.backend, contiguous=True, clamp=self.clamp)
        # The compiled group loops (host arrays, Numba present) read the sorted groups
        # through the neuron at each sorted position: one table per dtype.
        self._rows = np.arange(self.size, dtype=np.int64) if self._perm is None else perm
        self._tables: dict[Any, compiled.GroupTable] = {}

    @classmethod
    def uniform(cls, activation: str | Activation, size: int, *, backend: Backend | str = "cpu") -> "FixedMixedActivation":
        """Every one of ``size`` neurons uses ``activation``; no clamp (a plain network)."""
        return cls(np.zeros(size, dtype=np.int64), [activation], contiguous=True, clamp=None, backend=backend)

    @property
    def size(self) -> int:
        return int(self.choices.shape[0])

    def to(self, backend: Backend | str) -> "FixedMixedActivation":
        """The same layer with its index arrays on ``backend``."""
        return FixedMixedActivation(
            self.choices, self.pool, contiguous=self.contiguous, clamp=self.clamp, order=self.order, backend=backend
        )

    def forward(self, z: Any, workspace: Workspace | None = None) -> tuple[Any, FixedCache]:
        """(B, N) -> (B, N), and the cache (its ``path`` says which forward ran).

        With a ``workspace``, the output and the cache live in its buffers and are
        overwritten by the next forward given the same workspace; without one, they
        are fresh arrays.
        """
        if not self.fused:
            return fixed_forward(z, self.groups)
        xp = array_module(z)
        batch, width = z.shape
        zT = z.T
        table = self.compiled_table(zT)
        if table is not None:
            aT = get_buffer(workspace, xp, "a", (width, batch), z.dtype)
            scratch = get_buffer(workspace, xp, "scratch", (width, batch), z.dtype)
            compiled.grouped_forward(zT, table, aT, scratch)
            return aT.T, FixedCache(z=z, a=aT.T, path="compiled")
        if self._perm is not None:
            zT = xp.take(zT, self._perm, axis=0, out=get_buffer(workspace, xp, "z_grouped", (width, batch), z.dtype))
        aT = grouped_forward_fused(zT, self._sorted_groups, get_buffer(workspace, xp, "a_grouped", (width, batch), z.dtype))
        cache = FixedCache(z=zT.T, a=aT.T, path="fused" if self._perm is None else "fused_grouped")
        if self._perm is not None:
            aT = xp.take(aT, self._inverse, axis=0, out=get_buffer(workspace, xp, "a", (width, batch), z.dtype))
        return aT.T, cache

    def backward(self, da: Any, cache: FixedCache, workspace: Workspace | None = None) -> Any:
        """(B, N) -> (B, N), by the backward of the path that made ``cache``;
        with a ``workspace``, ``dz`` lives in its buffers."""
        path = cache.path
        if path == "reference":
            return fixed_backward(da, cache, self.groups)
        xp = array_module(da)
        batch, width = da.shape
        if path == "compiled":
            aT = cache.a.T
            dzT = get_buffer(workspace, xp, "dz", (width, batch), da.dtype)
            return compiled.grouped_backward(xp.ascontiguousarray(da.T), aT, self._tables[aT.dtype], dzT, zT=cache.z.T).T
        daT = da.T
        if path == "fused_grouped":
            daT = xp.take(daT, self._perm, axis=0, out=get_buffer(workspace, xp, "da_grouped", (width, batch), da.dtype))
        dzT = get_buffer(workspace, xp, "dz_grouped", (width, batch), da.dtype)
        grouped_backward_fused(daT, cache.z.T, cache.a.T, self._sorted_groups, dzT)
        if path == "fused_grouped":
            dzT = xp.take(dzT, self._inverse, axis=0, out=get_buffer(workspace, xp, "dz", (width, batch), da.dtype))
        return dzT.T

    def compiled_table(self, zT: Any) -> "compiled.GroupTable | None":
        """The compiled group loops' table of this layer for arrays like ``zT`` (N, B), or
        None where the loops do not apply to ``zT`` (device arrays, no Numba, a layer
        without fused kernels). Built once per dtype."""
        if not self.fused or not compiled.applies(zT):
            return None
        table = self._tables.get(zT.dtype)
        if table is None:
            table = self._tables[zT.dtype] = compiled.group_table(self._sorted_groups, self._rows, zT.dtype)
        return table

    def original_choices(self) -> np.ndarray:
        """(N,) choice indices in the neurons' original order."""
        original = np.empty_like(self.choices)
        original[self.order] = self.choices
        return original

    def original_choice_names(self) -> list[str]:
        """Activation name per neuron, in the original order."""
        return [self.pool[k].name for k in self.original_choices()]
