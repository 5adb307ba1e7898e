"""Phase 2: a fixed activation per neuron, applied group by group.

After phase 1 every hidden neuron ``n`` has a frozen choice ``c[n]`` in the pool.
The layer applies ``a[:, n] = f_{c[n]}(z[:, n])`` without a loop over neurons: the
neurons are split once, at construction, into one group per activation, and each
activation runs once over its whole group. Two ways to address a group:

* ``"masked"``: the group's columns are an index array; the forward gathers
  ``z[:, idx]``, applies ``f``, and scatters the result back.
* ``"contiguous"``: the neurons have been reordered (see :func:`contiguous_order`)
  so that each group is one slice ``z[:, start:stop]``; no gather, no scatter, just
  views. :meth:`smartmixed_np.nn.mlp.MLP.freeze` permutes the weights to make this
  compute the same function as the masked form.

A uniform network (every neuron ReLU, say) is the one-group case, so it runs
through exactly the same code.

This module is the reference: :func:`fixed_forward` and :func:`fixed_backward`,
plain and layout-agnostic, one ``activation.forward`` and one clamp per group. The
layer, :class:`smartmixed_np.nn.layers.FixedMixedActivation`, chooses once, at
construction, the engine that runs it (:mod:`smartmixed_np.nn.engines`): this
reference, or, when every activation of the layer is a built-in, the fused kernels
of :mod:`smartmixed_np.fast.phase2` on the feature-major view ``z.T`` (N, B), or the
compiled group loops of :mod:`smartmixed_np.fast.compiled` (host arrays, Numba).
``tests/test_fixed.py`` and ``tests/test_compiled.py`` prove them equal.

Clamping: phase 1 clamps each candidate's output to ``[-c, c]`` (the reference's
choice, c = 10); a frozen layer keeps the same clamp so that freezing preserves the
function. A side of the clamp that an activation's known range already satisfies
(sigmoid never leaves [0, 1]) is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..backend import Backend, array_module
from .activations import Activation, clamp_limits

__all__ = [
    "Group",
    "FixedCache",
    "make_groups",
    "contiguous_order",
    "fixed_forward",
    "fixed_backward",
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


@dataclass
class FixedCache:
    """What :func:`fixed_backward` needs: ``z`` (B, N) the input, ``a`` (B, N) the output,
    both with the neurons in the layer's own order.

    The compiled group loops record the same two arrays and read this cache too. (The
    fused kernels of a *masked* layer work in grouped order; their cache is a
    :class:`smartmixed_np.fast.phase2.GroupedCache`, which this backward refuses.)
    """

    z: Any
    a: Any


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


def _group_derivative(xp: Any, group: Group, z: Any, a: Any, clamp_grad: str = "open") -> Any:
    """$f'(z)$ on one group, zero where the clamp was active.

    ``clamp_grad="open"``: zero where the output ``a`` sits at a clamp edge;
    ``"closed"`` (PyTorch's clamp): zero only where the unclamped $f(z)$, recomputed
    here, lies beyond it, so that a value exactly at the edge passes its gradient.
    """
    d = group.activation.derivative(z, a)
    if clamp_grad == "closed" and (group.lo is not None or group.hi is not None):
        raw = group.activation.forward(z)
        if group.lo is not None:
            d = d * (raw >= group.lo)
        if group.hi is not None:
            d = d * (raw <= group.hi)
        return d
    if group.lo is not None:
        d = d * (a > group.lo)
    if group.hi is not None:
        d = d * (a < group.hi)
    return d


def fixed_backward(da: Any, cache: FixedCache, groups: Sequence[Group], *, clamp_grad: str = "open") -> Any:
    """$dz_{:,n} = da_{:,n} \\cdot f'_{c_n}(z_{:,n})$ (zero where clamped).

    Args:
        da: (B, N) upstream gradient.
        cache: from :func:`fixed_forward`.
        groups: the same groups as the forward.
        clamp_grad: the clamp's gradient at exactly its edge: ``"open"`` (ours, zero
            there) or ``"closed"`` (PyTorch's, passed there);
            :data:`smartmixed_np.core.phase1.CLAMP_GRADS`.

    Returns:
        ``dz`` (B, N).
    """
    if not isinstance(cache, FixedCache):
        raise TypeError(f"fixed_backward needs the FixedCache of fixed_forward, got {type(cache).__name__}")
    xp = array_module(da)
    z, a = cache.z, cache.a
    if _covers_layer(groups):
        return da * _group_derivative(xp, groups[0], z, a, clamp_grad)
    dz = xp.empty_like(da)
    for group in groups:
        cols = group.columns
        dz[:, cols] = da[:, cols] * _group_derivative(xp, group, z[:, cols], a[:, cols], clamp_grad)
    return dz
