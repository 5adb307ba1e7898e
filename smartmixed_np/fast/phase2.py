r"""Phase 2, fast: a frozen layer's groups by the fused kernels, feature-major.

Stands in for :func:`smartmixed_np.core.phase2.fixed_forward` and
:func:`~smartmixed_np.core.phase2.fixed_backward` when every activation of the
layer is a built-in with a kernel in :mod:`smartmixed_np.fast.kernels`. They work
on the *feature-major* view ``z.T`` (N, B), in which a group of neurons that are
neighbours is one contiguous block of rows, so that each group is one kernel call
on one block. (A masked layer is first permuted into grouped order; see
:class:`smartmixed_np.nn.engines.FusedGroups`.) ``tests/test_fixed.py`` checks them
against the reference, values and gradients.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..core.phase2 import Group
from .kernels import activation_backward_into, activation_forward_into

__all__ = ["grouped_forward_fused", "grouped_backward_fused"]


def grouped_forward_fused(zT: Any, groups: Sequence[Group], out: Any) -> Any:
    """Fused forward on the feature-major layout: ``out[rows] = clamp(f(zT[rows]))`` per group.

    Args:
        zT: (N, B) pre-activations, one row per neuron.
        groups: groups whose ``columns`` are slices (here: of rows), all of
            activations with a kernel (:func:`~smartmixed_np.fast.kernels.has_kernel`).
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


