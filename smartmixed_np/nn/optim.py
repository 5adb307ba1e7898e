"""The optimizers a program uses: those of :mod:`smartmixed_np.core.optim`, with
Adam's fast update chosen once, at construction.

:class:`Adam` here is the reference :class:`smartmixed_np.core.optim.Adam` given the
engine :func:`compiled_adam` returns: the one-pass loop of
:func:`smartmixed_np.fast.compiled.adam_update` on host arrays when Numba is on
(bitwise the same numbers as :func:`~smartmixed_np.core.optim.adam_update_reference`),
else none. On a GPU with the CUDA kernels switched on (``SMARTMIXED_CUDA_KERNELS=1``,
:mod:`smartmixed_np.fast.cuda`) and self-checked, :func:`cuda_adam` gives the kernels, and
each parameter's update is one launch, :func:`smartmixed_np.fast.cuda.adam_update`, the clip
factor read on the device. SGD and the clipping functions are the reference's own.
"""

from __future__ import annotations

import math
from typing import Any

from ..backend import backend_of
from ..core import optim as reference
from ..core.optim import SGD, Optimizer, adam_update_reference, clip_factor, clip_grad_norm, global_grad_norm
from ..fast import compiled, cuda

__all__ = ["Optimizer", "SGD", "Adam", "adam_update_reference", "compiled_adam", "cuda_adam", "clip_factor",
           "clip_grad_norm", "global_grad_norm"]


def compiled_adam() -> Any:
    """The module :mod:`smartmixed_np.fast.compiled` when its loops are in use, else None."""
    return compiled if compiled.enabled() else None


def cuda_adam(params: Any) -> cuda.Kernels | None:
    """The CUDA kernels for ``params`` (a dict of arrays) when they live on a GPU backend, the
    kernels are switched on and Adam's passed its self-check; else None (always on the CPU)."""
    first = next(iter(params.values()), None) if isinstance(params, dict) else None
    kernels = cuda.kernels_for(backend_of(first)) if first is not None else None
    return kernels if kernels is not None and kernels.usable("adam") else None


class Adam(reference.Adam):
    """:class:`smartmixed_np.core.optim.Adam` with the compiled update where it applies
    (asked once, here, of :func:`compiled_adam`), or on a GPU the CUDA kernel (asked once, here,
    of :func:`cuda_adam`; ``cuda`` holds it, else None)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr, betas, eps, weight_decay, engine=compiled_adam())
        self.cuda = cuda_adam(params)

    def step(self, grads: dict[str, Any], scale: Any = None) -> None:
        """One update of every parameter, in place (see :meth:`smartmixed_np.core.optim.Optimizer.step`).

        With the CUDA kernel: the step size and bias correction of the reference's step, then
        one launch per parameter that :func:`smartmixed_np.fast.cuda.applies` to (the others
        take :func:`~smartmixed_np.core.optim.adam_update_reference`).
        """
        if self.cuda is None:
            return super().step(grads, scale)
        self._check_grads(grads)
        self.step_count += 1
        t = self.step_count
        settings = dict(beta1=self.beta1, beta2=self.beta2, eps=self.eps, step_size=self.lr / (1 - self.beta1**t),
                        inv_sqrt_bc2=1.0 / math.sqrt(1 - self.beta2**t), weight_decay=self.weight_decay)
        for name, p in self.params.items():
            m, v, g = self.m[name], self.v[name], grads[name]
            if cuda.applies(self.cuda, p, g, m, v):
                cuda.adam_update(self.cuda, p, g, m, v, scale=scale, **settings)
            else:
                adam_update_reference(p, g, m, v, scratch=self._scratch_for(name), scale=scale, **settings)
        return None
