"""The optimizers a program uses: those of :mod:`smartmixed_np.core.optim`, with
Adam's fast update chosen once, at construction.

:class:`Adam` here is the reference :class:`smartmixed_np.core.optim.Adam` given the
engine :func:`compiled_adam` returns: the one-pass loop of
:func:`smartmixed_np.fast.compiled.adam_update` on host arrays when Numba is on
(bitwise the same numbers as :func:`~smartmixed_np.core.optim.adam_update_reference`),
else none. On a GPU with the CUDA kernels switched on (``SMARTMIXED_CUDA_KERNELS=1``,
:mod:`smartmixed_np.fast.cuda`) and self-checked, :func:`cuda_adam` gives the kernels, and
each parameter's update is one launch, :func:`smartmixed_np.fast.cuda.adam_update`, the clip
factor read on the device, and :func:`clip_factor` computes that factor in two launches over the
flat gradient buffer (:func:`smartmixed_np.fast.cuda.clip_factor`). SGD and
:func:`clip_grad_norm` are the reference's own.

One pass over everything: when the parameters are laid end to end in one flat buffer and
the gradients in another (:class:`~smartmixed_np.nn.mlp.MLP` packs both,
:mod:`smartmixed_np.fast.flat`), :class:`Adam` keeps ``m`` and ``v`` flat too and makes
*one* call of the compiled loop (or one launch of the CUDA kernel, or, with neither, one
run of the reference's array operations) over the flat arrays per step instead of one per
parameter: the same elementwise operations over the concatenation, so bitwise the same
numbers. Whenever anything is not packed it takes the per-parameter path.

With NumPy alone, that run goes chunk by chunk (:func:`chunked_reference_update`): the
reference's 13 array operations over each stretch of :data:`CHUNK_BYTES` per array in turn,
so that the stretch's five arrays stay in the CPU's cache from one operation to the next
instead of streaming all of them from memory 13 times. Elementwise operations, so the same
numbers, bit for bit; on the Xeon of the README, 1.76 against 1.15 ms for the benchmark's
570k parameters after a matrix product.
"""

from __future__ import annotations

import operator
import weakref
from typing import Any

import numpy as np

from ..backend import array_module, backend_of
from ..core import optim as reference
from ..core.optim import SGD, Optimizer, adam_update_reference, clip_grad_norm, global_grad_norm, host_number
from ..fast import compiled, cuda
from ..fast.flat import flat_of, pack

__all__ = ["Optimizer", "SGD", "Adam", "adam_update_reference", "chunked_reference_update", "compiled_adam", "cuda_adam",
           "clip_factor", "clip_grad_norm", "global_grad_norm"]


#: The stretch of each array that :func:`chunked_reference_update` updates at a time: 128 KiB
#: (32k float32 values), so that the five arrays of a stretch (640 KiB) fit a 1 MiB L2 cache.
CHUNK_BYTES = 128 * 1024


def chunked_reference_update(p: Any, g: Any, m: Any, v: Any, *, scratch: Any, **settings: Any) -> None:
    """:func:`~smartmixed_np.core.optim.adam_update_reference` over 1-D host arrays, one stretch of
    :data:`CHUNK_BYTES` per array at a time (the same elementwise operations on every element, so
    bitwise the one call's numbers); any other arrays (CuPy's: one launch per operation is what
    they want) in one call. ``settings``: the reference's keywords (``scale`` included)."""
    size = p.shape[0] if p.ndim == 1 else 0
    step = max(1, CHUNK_BYTES // p.itemsize)
    if type(p) is not np.ndarray or size <= step:
        adam_update_reference(p, g, m, v, scratch=scratch, **settings)
        return
    for start in range(0, size, step):
        stop = min(size, start + step)
        adam_update_reference(p[start:stop], g[start:stop], m[start:stop], v[start:stop], scratch=scratch[start:stop],
                              **settings)


class _KeptFlat:
    """:func:`~smartmixed_np.fast.flat.flat_of` of the dict of arrays last asked about, kept while
    it names the same arrays (the same objects, held by weak references) and asked again when one
    changes: the question costs a few microseconds per array (more on CuPy, whose
    ``__cuda_array_interface__`` is built at each reading), the check a fraction of one. The
    buffer found is let go when the first array is."""

    def __init__(self) -> None:
        self._names: tuple = ()
        self._refs: tuple = ()
        self._flat: Any = None

    def __call__(self, arrays: dict[str, Any]) -> Any:
        values = tuple(arrays.values())
        if not (tuple(arrays) == self._names and len(values) == len(self._refs)
                and all(ref() is a for ref, a in zip(self._refs, values))):
            self._forget(None)
            flat = flat_of(arrays)
            try:
                refs = tuple(weakref.ref(a, self._forget) if j == 0 else weakref.ref(a) for j, a in enumerate(values))
            except TypeError:  # arrays without weak references: asked each time
                return flat
            self._names, self._refs, self._flat = tuple(arrays), refs, flat
        return self._flat

    def _forget(self, _ref: Any) -> None:
        self._names, self._refs, self._flat = (), (), None


_flat_gradients = _KeptFlat()


def clip_factor(grads: dict[str, Any], max_norm: float, eps: float = 1e-6) -> tuple[Any, Any]:
    """:func:`smartmixed_np.core.optim.clip_factor`: ``(norm, factor)``, 0-d device arrays.

    On a GPU with the CUDA kernels on and their ``"clip"`` family self-checked, and the gradients
    tiling one flat buffer (:func:`~smartmixed_np.fast.flat.flat_of`; a network's do), it is
    :func:`smartmixed_np.fast.cuda.clip_factor`: two launches over the flat buffer instead of a
    dot product per parameter and a dozen operations on numbers, the norm the same to rounding.
    Everywhere else (the CPU above all: its numbers stay the reference's, bit for bit) the reference.
    """
    first = next(iter(grads.values()), None) if isinstance(grads, dict) else None
    kernels = cuda.kernels_for(backend_of(first)) if first is not None else None
    if kernels is not None and kernels.usable("clip"):
        flat = _flat_gradients(grads)
        if flat is not None and cuda.applies(kernels, flat):
            reference.check_max_norm(max_norm)
            return cuda.clip_factor(kernels, flat, max_norm, eps)
    return reference.clip_factor(grads, max_norm, eps)


def compiled_adam() -> Any:
    """The module :mod:`smartmixed_np.fast.compiled` when its loops are in use, else None."""
    return compiled if compiled.enabled() else None


def cuda_adam(params: Any) -> cuda.Kernels | None:
    """The CUDA kernels for ``params`` (a dict of arrays) when they live on a GPU backend, the
    kernels are switched on and Adam's passed its self-check; else None (always on the CPU)."""
    first = next(iter(params.values()), None) if isinstance(params, dict) else None
    kernels = cuda.kernels_for(backend_of(first)) if first is not None else None
    return kernels if kernels is not None and kernels.usable("adam") else None


def _same(arrays: Any, kept: tuple) -> bool:
    """Whether ``arrays`` (a sized iterable of arrays) are the very objects ``kept``, in order."""
    return len(arrays) == len(kept) and all(map(operator.is_, arrays, kept))


class Adam(reference.Adam):
    """:class:`smartmixed_np.core.optim.Adam` with the compiled update where it applies
    (asked once, here, of :func:`compiled_adam`), or on a GPU the CUDA kernel (asked once, here,
    of :func:`cuda_adam`; ``cuda`` holds it, else None).

    Flat state: when the parameters tile one flat buffer
    (:func:`smartmixed_np.fast.flat.flat_of`, asked once, here), ``m`` and ``v`` are views of
    flat buffers of their own (:func:`~smartmixed_np.fast.flat.pack`; by name, as before, for
    :meth:`state_dict`) and ``_flat`` holds (the names; the parameter, ``m`` and ``v`` arrays
    as packed; the three flat buffers of parameters, ``m`` and ``v``); else ``_flat`` is None.
    ``_flat_grads`` keeps :meth:`_flat_arrays`' answer for the arrays last seen (the
    gradients' names in order, and every parameter, ``m``, ``v`` and gradient array by identity).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr, betas, eps, weight_decay, engine=compiled_adam())
        self.cuda = cuda_adam(params)
        self._flat: tuple | None = None
        self._flat_grads: tuple | None = None
        self._flat_scratch: Any = None
        flat_p = flat_of(params)
        if flat_p is not None:
            flat_m, self.m = pack(self.m)
            flat_v, self.v = pack(self.v)
            self._flat = (tuple(params), tuple(params.values()), tuple(self.m.values()), tuple(self.v.values()),
                          flat_p, flat_m, flat_v)

    def _flat_arrays(self, grads: dict[str, Any]) -> tuple | None:
        """``(p, g, m, v, engine)``, the four flat buffers and the update that runs over them
        (``"cuda"``, ``"compiled"`` or ``"reference"``), when a one-pass update can take this
        step; else None.

        That needs: the optimizer's parameters, ``m`` and ``v`` still the arrays packed at
        construction; ``grads`` naming the parameters in their order, each of its
        parameter's shape, and tiling one flat buffer of their dtype. The engine: the CUDA
        kernel where it applies to the four, else the compiled loop where it does (host arrays),
        else the reference's operations (any arrays). The answer is kept for the arrays it was
        given (by identity, with the gradients' names in order) and asked again only when one
        of them changes.
        """
        if self._flat is None:
            return None
        arrays = (*self.params.values(), *self.m.values(), *self.v.values(), *grads.values())
        kept = self._flat_grads
        if kept is None or kept[0] != tuple(grads) or not _same(arrays, kept[1]):
            kept = self._flat_grads = (tuple(grads), arrays, self._ask_flat(grads))
        return kept[2]

    def _ask_flat(self, grads: dict[str, Any]) -> tuple | None:
        """:meth:`_flat_arrays`' answer, worked out (a few microseconds per array)."""
        names, params, ms, vs, p, m, v = self._flat
        if not (_same(self.params.values(), params) and _same(self.m.values(), ms) and _same(self.v.values(), vs)):
            return None
        if tuple(grads) != names or any(grads[name].shape != a.shape for name, a in zip(names, params)):
            return None
        g = flat_of(grads)
        if g is None or g.dtype != p.dtype:
            return None
        # Which update runs over them: the CUDA kernel, the compiled loop (host arrays only), or the
        # reference's operations, which take any arrays (CuPy's with the kernels off, Numba or not).
        if self.cuda is not None and cuda.applies(self.cuda, p, g, m, v):
            engine = "cuda"
        elif self.fast_path is not None and compiled.applies(p, g, m, v):
            engine = "compiled"
        else:
            engine = "reference"
        return p, g, m, v, engine

    def step(self, grads: dict[str, Any], scale: Any = None) -> None:
        """One update of every parameter, in place (see :meth:`smartmixed_np.core.optim.Optimizer.step`).

        Packed (see :meth:`_flat_arrays`): one :func:`smartmixed_np.fast.compiled.adam_update`
        over the flat host arrays (when ``scale`` is a host number or None, as the reference's
        compiled path asks), or on a GPU with the kernels one
        :func:`smartmixed_np.fast.cuda.adam_update`, or else :func:`chunked_reference_update`
        (the reference's 13 array operations over the flat arrays, on the host a cache-sized
        stretch at a time; on a GPU without the kernels 13 launches, not 13 per parameter).
        Otherwise per parameter: the reference's step (with its compiled update), or with
        the CUDA kernel the step size and bias correction of the reference's step, then one
        launch per parameter that :func:`smartmixed_np.fast.cuda.applies` to (the others
        take :func:`~smartmixed_np.core.optim.adam_update_reference`).
        """
        flat = self._flat_arrays(grads)
        engine = flat[4] if flat is not None else None
        host_scale = host_number(scale) if engine == "compiled" else None
        if engine is not None and (engine != "compiled" or host_scale is not None):
            self._check_grads(grads)
            self.step_count += 1
            settings = self._settings()
            arrays = flat[:4]
            if engine == "cuda":
                cuda.adam_update(self.cuda, *arrays, scale=scale, **settings)
            elif engine == "compiled":
                compiled.adam_update(*arrays, scale=host_scale, **settings)
            else:  # the reference's operations: NumPy alone, or CuPy without the kernels
                if self._flat_scratch is None:
                    self._flat_scratch = array_module(arrays[0]).empty_like(arrays[0])
                chunked_reference_update(*arrays, scratch=self._flat_scratch, scale=scale, **settings)
            return None
        if self.cuda is None:
            return super().step(grads, scale)
        self._check_grads(grads)
        self.step_count += 1
        settings = self._settings()
        for name, p in self.params.items():
            m, v, g = self.m[name], self.v[name], grads[name]
            if cuda.applies(self.cuda, p, g, m, v):
                cuda.adam_update(self.cuda, p, g, m, v, scale=scale, **settings)
            else:
                adam_update_reference(p, g, m, v, scratch=self._scratch_for(name), scale=scale, **settings)
        return None
