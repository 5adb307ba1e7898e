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
"""

from __future__ import annotations

from typing import Any, Sequence

from ..backend import array_module
from ..core.activations import Activation, clamp_limits
from ..core.phase1 import MixtureCache, gumbel_softmax_weights, softmax_backward
from . import compiled
from .kernels import activation_backward_into, activation_forward_into
from .workspace import Workspace, get_buffer

__all__ = ["mixture_forward_fused", "mixture_backward_fused", "mixture_backward_compiled"]


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
    idle), and the output is one row gather from the stack. The values are bitwise
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
    for k, activation in enumerate(pool):
        lo, hi = clamp_limits(activation, clamp)
        activation_forward_into(activation, zT, lo, hi, stack[k])
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
    buffer, then the selected rows gathered.

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
    for k, activation in enumerate(pool):
        lo, hi = clamp_limits(activation, cache.clamp)
        activation_backward_into(activation, doutT, zT, stack[k], lo, hi, work[k])
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
