"""The optimizers a program uses: those of :mod:`smartmixed_np.core.optim`, with
Adam's compiled update chosen once, at construction.

:class:`Adam` here is the reference :class:`smartmixed_np.core.optim.Adam` given the
engine :func:`compiled_adam` returns: the one-pass loop of
:func:`smartmixed_np.fast.compiled.adam_update` on host arrays when Numba is on
(bitwise the same numbers as :func:`~smartmixed_np.core.optim.adam_update_reference`),
else none. SGD and the clipping functions are the reference's own.
"""

from __future__ import annotations

from typing import Any

from ..core import optim as reference
from ..core.optim import SGD, Optimizer, adam_update_reference, clip_factor, clip_grad_norm, global_grad_norm
from ..fast import compiled

__all__ = ["Optimizer", "SGD", "Adam", "adam_update_reference", "compiled_adam", "clip_factor", "clip_grad_norm",
           "global_grad_norm"]


def compiled_adam() -> Any:
    """The module :mod:`smartmixed_np.fast.compiled` when its loops are in use, else None."""
    return compiled if compiled.enabled() else None


class Adam(reference.Adam):
    """:class:`smartmixed_np.core.optim.Adam` with the compiled update where it applies
    (asked once, here, of :func:`compiled_adam`)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr, betas, eps, weight_decay, engine=compiled_adam())
