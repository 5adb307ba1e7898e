r"""Phase 1, fast: the hard straight-through layer's pass fused and feature-major.

Stands in for :func:`smartmixed_np.core.phase1.mixture_forward` and
:func:`~smartmixed_np.core.phase1.mixture_backward` in the common case: hard
selection, one noise draw shared by the batch (or none), a pool of built-ins with
kernels in :mod:`smartmixed_np.fast.kernels`. The candidates are computed into one
(K, N, B) stack, one contiguous block per candidate; the output is one row gather
from that stack. Forward values are bitwise those of the reference;
``tests/test_mixture.py`` checks values and gradients against it.

Two backwards: :func:`mixture_backward_fused` (every candidate's ``dout * f'_k`` by
the kernels, then the selected rows gathered; any array module) and
:func:`mixture_backward_compiled` (only the selected candidate's derivative, in one
compiled pass; host arrays with Numba). They give the same numbers
(``tests/test_compiled.py``).

A third pair keeps no stack: :func:`mixture_forward_single` computes the selected
candidate's value alone (bitwise the reference's in float64; in float32 within a few ulps,
its exponentials computed in the loop: :func:`smartmixed_np.fast.compiled.selected_forward`) and
:func:`mixture_backward_single` recomputes every candidate's value from two shared exponentials
of each element in one compiled pass per neuron, for $d\alpha$ and $dz$ (within a few ulps
of the reference, see there; bitwise where the operations are the same). Host arrays with
Numba; ``tests/test_phase1_single.py``.

The last pair, for host arrays without Numba, keeps no stack either, with the kernels alone:
:func:`mixture_forward_lean` applies each neuron's selected candidate to its own rows (the
rows that chose one candidate gathered into one block), and :func:`mixture_backward_lean`
computes the candidates one at a time into one (N, B) buffer for $d\alpha$ and each group's
derivative on its gathered rows. The same kernels on the same numbers: values and $dz$
bitwise those of the fused pair, $d\alpha$ from the same sums (``tests/test_mixture.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..backend import array_module
from ..core.activations import Activation, clamp_limits
from ..core.phase1 import MixtureCache, gumbel_softmax_weights, mixture_backward, mixture_forward, softmax_backward
from ..core.phase2 import contiguous_order
from . import compiled
from .kernels import SharedParts, activation_backward_into, activation_forward_into, has_kernel
from .workspace import Workspace, get_buffer

__all__ = [
    "mixture_forward_fused", "mixture_backward_fused", "mixture_backward_compiled", "SelectedMixtureCache",
    "mixture_forward_single", "mixture_backward_single",
    "LeanMixtureCache", "selection_groups", "mixture_forward_lean", "mixture_backward_lean",
]


def _selected_rows(xp: Any, selected: Any, width: int) -> Any:
    """Row ``selected[n] * N + n`` of a (K * N, B) stack: neuron n's chosen candidate."""
    return selected * width + xp.arange(width)


def mixture_forward_fused(
    z: Any,
    logits: Any,
    noise: Any,
    pool: Sequence[Activation],
    *,
    tau: float,
    clamp: float | None = 10.0,
    workspace: Workspace | None = None,
) -> tuple[Any, MixtureCache]:
    """:func:`~smartmixed_np.core.phase1.mixture_forward` with ``hard=True`` and (N, K) or no noise, fused.

    The candidates are computed feature-major into one (K, N, B) stack by the kernels
    of :mod:`smartmixed_np.fast.kernels` (each skipping the clamp sides its range makes
    idle; elu and selu sharing one expm1, :class:`~smartmixed_np.fast.kernels.SharedParts`),
    and the output is one row gather from the stack. The values are bitwise
    those of the reference.

    Args:
        z: (B, N); logits: (N, K); noise: (N, K) or None; pool: K built-ins.
        workspace: where the stack and the output live (overwritten by the next
            call with the same workspace); fresh arrays if None.

    Returns:
        ``out`` (B, N) and the cache (``candidates`` is a (K, B, N) view of the stack).
    """
    xp = array_module(z)
    batch, width = z.shape
    weights = gumbel_softmax_weights(logits, noise, tau)
    selected = xp.argmax(weights, axis=-1)
    stack = get_buffer(workspace, xp, "candidates", (len(pool), width, batch), z.dtype)
    zT = z.T
    parts = SharedParts(zT, workspace)  # elu's and selu's expm1(min(z, 0)), computed once
    for k, activation in enumerate(pool):
        lo, hi = clamp_limits(activation, clamp)
        activation_forward_into(activation, zT, lo, hi, stack[k], parts)
    outT = get_buffer(workspace, xp, "out", (width, batch), z.dtype)
    xp.take(stack.reshape(len(pool) * width, batch), _selected_rows(xp, selected, width), axis=0, out=outT)
    return outT.T, MixtureCache(z, stack.transpose(0, 2, 1), weights, selected, noise, tau, clamp)



def _feature_major(dout: Any, cache: MixtureCache, workspace: Workspace | None) -> tuple:
    """``(xp, stack, doutT, zT, dzT)``: the (K, N, B) candidate stack, the (N, B) views of
    ``dout`` and ``z``, and the (N, B) buffer for ``dz``, as both backwards read them."""
    xp = array_module(dout)
    batch, width = dout.shape
    dzT = get_buffer(workspace, xp, "dz", (width, batch), dout.dtype)
    return xp, cache.candidates.transpose(0, 2, 1), dout.T, cache.z.T, dzT


def _dlogits(stack: Any, doutT: Any, cache: MixtureCache) -> Any:
    """$d\\alpha = \\mathrm{softmax\\_backward}(dy, y)/\\tau$ with $dy_{nk} = \\sum_b dout_{bn} a_{kbn}$:
    one ``einsum`` over the (K, N, B) stack, a third of multiply-then-sum's time here."""
    dy = array_module(doutT).einsum("knb,nb->nk", stack, doutT)  # (N, K)
    return softmax_backward(dy, cache.weights) / cache.tau


def mixture_backward_fused(
    dout: Any, cache: MixtureCache, pool: Sequence[Activation], workspace: Workspace | None = None
) -> tuple[Any, Any]:
    """:func:`~smartmixed_np.core.phase1.mixture_backward` for a cache of :func:`mixture_forward_fused`.

    $dz = dout \\cdot D_{s_n}$: each candidate's fused ``dout * f'_k`` into a (K, N, B)
    buffer (elu and selu sharing one exp), then the selected rows gathered.

    Args:
        dout: (B, N) upstream gradient.
        cache: from :func:`mixture_forward_fused`.
        pool: the same K built-ins.
        workspace: where ``dz`` and the work buffer live; fresh arrays if None.

    Returns:
        ``dz`` (B, N) and ``dlogits`` (N, K).
    """
    xp, stack, doutT, zT, dzT = _feature_major(dout, cache, workspace)
    width, batch = dzT.shape
    work = get_buffer(workspace, xp, "work", tuple(stack.shape), dout.dtype)
    parts = SharedParts(zT, workspace)  # elu's and selu's e^{min(z, 0)}, computed once
    for k, activation in enumerate(pool):
        lo, hi = clamp_limits(activation, cache.clamp)
        activation_backward_into(activation, doutT, zT, stack[k], lo, hi, work[k], parts)
    xp.take(work.reshape(len(pool) * width, batch), _selected_rows(xp, cache.selected, width), axis=0, out=dzT)
    return dzT.T, _dlogits(stack, doutT, cache)


def mixture_backward_compiled(
    dout: Any, cache: MixtureCache, pool: Sequence[Activation], workspace: Workspace | None = None
) -> tuple[Any, Any]:
    """:func:`mixture_backward_fused` with the selected candidate's derivative alone, in one
    compiled pass (:func:`smartmixed_np.fast.compiled.selected_backward`): the same numbers.

    Host arrays with Numba on: ``dout.T``, the stack and ``z.T`` C-contiguous of one
    float dtype (:func:`smartmixed_np.fast.compiled.applies`); otherwise this falls
    back to :func:`mixture_backward_fused`.

    Returns:
        ``dz`` (B, N) and ``dlogits`` (N, K).
    """
    _, stack, doutT, zT, dzT = _feature_major(dout, cache, workspace)
    table = compiled.candidate_table(tuple(pool), cache.clamp, dout.dtype) if compiled.applies(doutT, stack, dzT, zT) else None
    if table is None:
        return mixture_backward_fused(dout, cache, pool, workspace)
    compiled.selected_backward(doutT, stack, cache.selected, table, dzT, zT=zT)
    return dzT.T, _dlogits(stack, doutT, cache)


# --------------------------------------------------------------------------- without the stack
@dataclass
class SelectedMixtureCache(MixtureCache):
    """The cache of :func:`mixture_forward_single`: a :class:`~smartmixed_np.core.phase1.MixtureCache`
    whose ``candidates`` is None (no (K, B, N) stack: the backward recomputes the candidates
    from ``z``), with ``out`` (B, N), the selected candidates' clamped values (a view of the
    forward's output: the derivatives of sigmoid and tanh and every clamp mask are taken from
    it), and ``table``, the pool's codes and clamps. Only :func:`mixture_backward_single` reads it."""

    out: Any = None
    table: compiled.CandidateTable | None = None


def _single_table(pool: Sequence[Activation], clamp: float | None, *arrays: Any) -> compiled.CandidateTable | None:
    """The pool's :class:`~smartmixed_np.fast.compiled.CandidateTable` when the compiled loops take ``arrays``, else None."""
    if not compiled.applies(*arrays):
        return None
    return compiled.candidate_table(tuple(pool), clamp, arrays[0].dtype)


def _selection(logits: Any, noise: Any, tau: float) -> tuple[Any, Any]:
    """``(weights, selected)``: :func:`~smartmixed_np.core.phase1.gumbel_softmax_weights` and its
    argmax, by :func:`smartmixed_np.fast.compiled.softmax_selection` where it applies (bitwise)."""
    if compiled.selection_applies(logits, noise):
        weights = np.empty_like(logits)
        return weights, compiled.softmax_selection(logits, noise, tau, weights)
    weights = gumbel_softmax_weights(logits, noise, tau)
    return weights, np.argmax(weights, axis=-1)


def mixture_forward_single(
    z: Any,
    logits: Any,
    noise: Any,
    pool: Sequence[Activation],
    *,
    tau: float,
    clamp: float | None = 10.0,
    workspace: Workspace | None = None,
) -> tuple[Any, MixtureCache]:
    r""":func:`mixture_forward_fused` without the (K, N, B) stack: the selected candidate's value alone.

    $y = \mathrm{softmax}((\alpha + g)/\tau)$, $s_n = \arg\max_k y_{nk}$ (both by
    :func:`smartmixed_np.fast.compiled.softmax_selection`, bitwise the reference's), then
    $out_{bn} = \mathrm{clip}(f_{s_n}(z_{bn}), lo_{s_n}, hi_{s_n})$ by
    :func:`smartmixed_np.fast.compiled.selected_forward` (in float32 row by row, in float64 with
    the neurons grouped by their selection): one transcendental
    function per element, of the selected candidate only. In float64 bitwise the reference's
    values (the same operations as the fused kernels); in float32 one pass with the
    exponentials in the loop, sigmoid's, tanh's, elu's and selu's values within 4, 3, 3 and 5
    ulps of the kernels' (:func:`smartmixed_np.fast.compiled.grouped_forward`).

    Host arrays with Numba on, ``z.T`` C-contiguous of float32 or float64 (the networks'
    feature-major layout), a pool of built-ins; otherwise :func:`mixture_forward_fused`,
    or, for a pool with a user's activation, the reference
    :func:`~smartmixed_np.core.phase1.mixture_forward` (their caches have the stack;
    :func:`mixture_backward_single` takes every one of them).

    Args:
        z: (B, N); logits: (N, K); noise: (N, K) or None; pool: K built-ins.
        workspace: where the output and, in float64, the scratch live ("out", "scratch": (N, B)
            each); fresh arrays if None.

    Returns:
        ``out`` (B, N) and a :class:`SelectedMixtureCache` (or, on the fallback, the fused cache).
    """
    if not all(has_kernel(a) for a in pool):
        return mixture_forward(z, logits, noise, pool, tau=tau, hard=True, clamp=clamp)
    zT = z.T
    table = _single_table(pool, clamp, zT)
    if table is None:
        return mixture_forward_fused(z, logits, noise, pool, tau=tau, clamp=clamp, workspace=workspace)
    batch, width = z.shape
    weights, selected = _selection(logits, noise, tau)
    outT = get_buffer(workspace, np, "out", (width, batch), z.dtype)
    scratch = None  # float32: the exponentials in the loop
    if not compiled.exponentials_in_loop(z.dtype):
        scratch = get_buffer(workspace, np, "scratch", (width, batch), z.dtype)
    compiled.selected_forward(zT, selected, table, outT, scratch)
    out = outT.T
    return out, SelectedMixtureCache(z, None, weights, selected, noise, tau, clamp, out=out, table=table)


def _restacked(cache: SelectedMixtureCache, pool: Sequence[Activation], workspace: Workspace | None) -> MixtureCache:
    """The fused forward's cache for ``cache``: the (K, N, B) stack rebuilt by the kernels (the fallback)."""
    xp = array_module(cache.z)
    batch, width = cache.z.shape
    stack = get_buffer(workspace, xp, "candidates", (len(pool), width, batch), cache.z.dtype)
    parts = SharedParts(cache.z.T, workspace)
    for k, activation in enumerate(pool):
        lo, hi = clamp_limits(activation, cache.clamp)
        activation_forward_into(activation, cache.z.T, lo, hi, stack[k], parts)
    return MixtureCache(cache.z, stack.transpose(0, 2, 1), cache.weights, cache.selected, cache.noise, cache.tau,
                        cache.clamp)


def mixture_backward_single(
    dout: Any, cache: MixtureCache, pool: Sequence[Activation], workspace: Workspace | None = None
) -> tuple[Any, Any]:
    r""":func:`~smartmixed_np.core.phase1.mixture_backward` (hard, shared or no noise, ``clamp_grad="open"``)
    for a cache of :func:`mixture_forward_single`, without the candidate stack.

    One compiled pass per neuron (:func:`smartmixed_np.fast.compiled.shared_backward`) after
    the passes for $t = e^{-|z|}$ and $m = \mathrm{expm1}(-|z|)$, shared by all K
    candidates: every candidate's clamped value $a_k$ from $t$ and $m$,
    $dy_{nk} = \sum_b dout_{bn} a_{kbn}$, and
    $dz_{bn} = dout_{bn} f'_{s_n}(z_{bn}) [lo < a_{s_n} < hi]$; then
    $d\alpha = \mathrm{softmax\_backward}(dy, y)/\tau$ (by
    :func:`smartmixed_np.fast.compiled.softmax_backward_scaled`, bitwise NumPy's on the same $dy$).

    Agreement with the reference: $dz$ that of :func:`mixture_backward_fused` (which is the
    reference's to rounding, ``tests/test_mixture.py``), bitwise in float64; each candidate
    value the reference's, bitwise for relu and leaky relu and, in float64, all but tanh,
    $\mathrm{sign}(z)(-m)(1+t)/(1+t^2)$ (within 4 ulps of ``np.tanh``); in float32 (its $t$
    and $m$ computed in the loop) sigmoid, tanh, elu and selu within 4, 4, 3 and 5 ulps of
    the kernels' (the bounds: :func:`smartmixed_np.fast.compiled.shared_backward`);
    $dy$ is summed in the arrays' dtype, as the reference sums it but in another order, so
    $d\alpha$ agrees to within $B$ roundings of $\sum_b |dout_{bn} a_{kbn}|$ per sum
    (``tests/test_phase1_single.py``).

    A cache with the stack (the forward's fallback) goes to :func:`mixture_backward_compiled`
    (to the reference for a pool with a user's activation);
    arrays the loops cannot take (``dout.T`` not C-contiguous, another dtype) rebuild the
    stack and go to :func:`mixture_backward_fused`: the same numbers to rounding.

    Args:
        dout: (B, N) upstream gradient.
        cache: from :func:`mixture_forward_single`.
        pool: the same K built-ins.
        workspace: where ``dz`` and, in float64, the two (N, B) work buffers live ("dz", "scratch",
            "expm1"); fresh arrays if None.

    Returns:
        ``dz`` (B, N) and ``dlogits`` (N, K).
    """
    if not isinstance(cache, SelectedMixtureCache):
        if not all(has_kernel(a) for a in pool):
            return mixture_backward(dout, cache, pool)
        return mixture_backward_compiled(dout, cache, pool, workspace)
    doutT, zT, aT = dout.T, cache.z.T, cache.out.T
    if not compiled.applies(doutT, zT, aT):
        return mixture_backward_fused(dout, _restacked(cache, pool, workspace), pool, workspace)
    batch, width = dout.shape
    dzT = get_buffer(workspace, np, "dz", (width, batch), dout.dtype)
    tT = mT = None  # float32: t and m computed row by row, in the pass
    if not compiled.exponentials_in_loop(dout.dtype):
        tT = get_buffer(workspace, np, "scratch", (width, batch), dout.dtype)
        mT = get_buffer(workspace, np, "expm1", (width, batch), dout.dtype)
    dy = compiled.shared_backward(doutT, zT, aT, cache.selected, cache.table, tT, mT, dzT)
    if compiled.selection_applies(cache.weights):
        dlogits = compiled.softmax_backward_scaled(dy, cache.weights, cache.tau, np.empty_like(cache.weights))
    else:
        dlogits = softmax_backward(dy.astype(cache.weights.dtype, copy=False), cache.weights) / cache.tau
    return dzT.T, dlogits


# --------------------------------------------------------------------------- without the stack, NumPy alone
@dataclass
class LeanMixtureCache(MixtureCache):
    """The cache of :func:`mixture_forward_lean`: a :class:`~smartmixed_np.core.phase1.MixtureCache`
    whose ``candidates`` is None, with ``out`` (B, N), the selected candidates' clamped values
    (a view of the forward's output), and ``groups``, the selection as ``((k, rows), ...)``: for
    each candidate k that some neuron selected, those neurons' indices, ascending (int64)."""

    out: Any = None
    groups: tuple = ()


def selection_groups(selected: np.ndarray, count: int) -> tuple[tuple[int, np.ndarray], ...]:
    """``((k, rows), ...)``: for each of ``count`` candidates that some neuron selected, the
    indices of those neurons, ascending (:func:`~smartmixed_np.core.phase2.contiguous_order`,
    the stable sort that freezing uses, split at the counts).

    Args:
        selected: (N,) ints in ``[0, count)``, host.
        count: K, the pool's size.
    """
    order = contiguous_order(selected)
    counts = np.bincount(selected, minlength=count)
    ends = np.cumsum(counts)
    starts = ends - counts
    return tuple((k, order[start:end]) for k, (start, end) in enumerate(zip(starts.tolist(), ends.tolist()))
                 if end > start)


def _on_rows(kernel: Any, activation: Activation, rows: np.ndarray, inputs: tuple, lo: float | None,
             hi: float | None, outT: np.ndarray) -> None:
    """``outT[rows] = kernel(activation, *(x[rows] for x in inputs), lo, hi)`` for a kernel of
    :mod:`~smartmixed_np.fast.kernels` (``activation_forward_into``, ``activation_backward_into``)
    on (N, B) arrays: on the gathered rows, or on the arrays themselves when ``rows`` is every row."""
    if rows.size == outT.shape[0]:  # every neuron chose this candidate: no gathering
        kernel(activation, *inputs, lo, hi, outT)
        return
    blocks = [x.take(rows, axis=0) for x in inputs]
    outT[rows] = kernel(activation, *blocks, lo, hi, np.empty_like(blocks[0]))


def mixture_forward_lean(
    z: Any,
    logits: Any,
    noise: Any,
    pool: Sequence[Activation],
    *,
    tau: float,
    clamp: float | None = 10.0,
    workspace: Workspace | None = None,
) -> tuple[Any, LeanMixtureCache]:
    r""":func:`mixture_forward_fused` without the (K, N, B) stack, on NumPy alone.

    $s_n = \arg\max_k y_{nk}$ as the reference computes it, then for each candidate k the
    rows of ``z.T`` whose neurons selected it, gathered into one (n_k, B) block:
    $out_{bn} = \mathrm{clip}(f_k(z_{bn}), lo_k, hi_k)$ by the candidate's kernel
    (:func:`~smartmixed_np.fast.kernels.activation_forward_into`), scattered back to those rows.
    One candidate per element instead of K; the same kernels on the same numbers, so the
    values are bitwise those of the fused forward (and so of the reference).

    Args:
        z: (B, N) host array; logits: (N, K); noise: (N, K) or None; pool: K built-ins.
        workspace: where the output lives ("out", (N, B)); a fresh array if None.

    Returns:
        ``out`` (B, N) and a :class:`LeanMixtureCache`.
    """
    batch, width = z.shape
    weights = gumbel_softmax_weights(logits, noise, tau)
    selected = np.argmax(weights, axis=-1)
    groups = selection_groups(selected, len(pool))
    zT = z.T
    outT = get_buffer(workspace, np, "out", (width, batch), z.dtype)
    for k, rows in groups:
        _on_rows(activation_forward_into, pool[k], rows, (zT,), *clamp_limits(pool[k], clamp), outT)
    out = outT.T
    return out, LeanMixtureCache(z, None, weights, selected, noise, tau, clamp, out=out, groups=groups)


def mixture_backward_lean(
    dout: Any, cache: LeanMixtureCache, pool: Sequence[Activation], workspace: Workspace | None = None
) -> tuple[Any, Any]:
    r""":func:`mixture_backward_fused` for a cache of :func:`mixture_forward_lean`, without the stack.

    First $dy_{nk} = \sum_b dout_{bn} a_{kbn}$, one candidate at a time: $a_k$ by its kernel
    into one (N, B) buffer (elu and selu sharing one expm1,
    :class:`~smartmixed_np.fast.kernels.SharedParts`), then one ``einsum`` over it. Then
    $dz_{bn} = dout_{bn} f'_{s_n}(z_{bn}) [lo < a_{s_n} < hi]$ group by group, on the gathered
    rows of the neurons that selected each candidate (the derivatives of sigmoid and tanh and
    the clamp masks from the forward's ``out``), and
    $d\alpha = \mathrm{softmax\_backward}(dy, y)/\tau$. The same kernels on the same numbers as
    the fused backward: $dz$ bitwise, $dy$ the same sums of the same products.

    Args:
        dout: (B, N) host upstream gradient.
        cache: from :func:`mixture_forward_lean`.
        pool: the same K built-ins.
        workspace: where ``dz`` (also the candidates' buffer until the dz pass) and the shared
            part live ("dz", "shared_0": (N, B) each); fresh arrays if None.

    Returns:
        ``dz`` (B, N) and ``dlogits`` (N, K).
    """
    batch, width = dout.shape
    doutT, zT, aT = dout.T, cache.z.T, cache.out.T
    dzT = get_buffer(workspace, np, "dz", (width, batch), dout.dtype)
    dy = np.empty((width, len(pool)), dtype=dout.dtype)
    candidate = dzT  # a_k, one candidate at a time, until the dz pass below writes every row
    parts = SharedParts(zT, workspace)
    for k, activation in enumerate(pool):
        lo, hi = clamp_limits(activation, cache.clamp)
        activation_forward_into(activation, zT, lo, hi, candidate, parts)
        np.einsum("nb,nb->n", candidate, doutT, out=dy[:, k])
    for k, rows in cache.groups:
        _on_rows(activation_backward_into, pool[k], rows, (doutT, zT, aT), *clamp_limits(pool[k], cache.clamp), dzT)
    return dzT.T, softmax_backward(dy, cache.weights) / cache.tau
