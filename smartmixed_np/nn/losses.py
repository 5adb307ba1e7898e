"""The losses a program uses: those of :mod:`smartmixed_np.core.losses`, with the CUDA kernels'
cross-entropy chosen where it applies.

:func:`softmax_cross_entropy` here is the reference
:func:`smartmixed_np.core.losses.softmax_cross_entropy` everywhere but on a GPU with the CUDA
kernels switched on (``SMARTMIXED_CUDA_KERNELS=1``, :mod:`smartmixed_np.fast.cuda`) and their
``"loss"`` family self-checked: there it is :func:`smartmixed_np.fast.cuda.softmax_cross_entropy`,
two launches (one over the rows, one reduction for the mean) where the reference makes some
twenty, with the same numbers to rounding (its two sums in another order). On the CPU, and with
the kernels off, the numbers are the reference's, bit for bit. The authors' double softmax is
the reference's own.
"""

from __future__ import annotations

from typing import Any, Callable

from ..backend import backend_of
from ..core import losses as reference
from ..core.losses import _check_inputs, double_softmax_cross_entropy, log_softmax
from ..fast import cuda

__all__ = ["softmax_cross_entropy", "double_softmax_cross_entropy", "log_softmax", "LOSSES", "get_loss"]


def softmax_cross_entropy(logits: Any, labels: Any, *, check: bool = True) -> tuple[Any, Any]:
    """:func:`smartmixed_np.core.losses.softmax_cross_entropy` (the same arguments, checks and
    results), in two launches on a GPU with the CUDA kernels (see the module's docstring)."""
    kernels = cuda.kernels_for(backend_of(logits))
    if kernels is not None and kernels.usable("loss") and cuda.applies(kernels, logits) and logits.ndim == 2:
        if check:
            _check_inputs(logits, labels)
        return cuda.softmax_cross_entropy(kernels, logits, labels)
    return reference.softmax_cross_entropy(logits, labels, check=check)


#: The losses by the name ``--loss`` takes (those of :data:`smartmixed_np.core.losses.LOSSES`).
LOSSES: dict[str, Callable] = {"cross-entropy": softmax_cross_entropy, "double-softmax": double_softmax_cross_entropy}


def get_loss(name: str) -> Callable:
    """The loss function called ``name`` (a key of :data:`LOSSES`); the reference's ValueError
    (:func:`smartmixed_np.core.losses.get_loss`, naming them) for any other name."""
    reference.get_loss(name)
    return LOSSES[name]
