"""Scratch buffers reused from one pass to the next.

A training step of an MLP needs the same large arrays every time: pre-activations,
activations, their gradients, the phase-1 candidate stack. Allocating them afresh
costs page faults and cache misses that, at small batch sizes, are as expensive as
the arithmetic. A :class:`Workspace` hands out named buffers and keeps them for the
next call with the same shape.

Aliasing rule: a buffer handed out under a name is the *same memory* the next
time that name is asked for. Whoever owns a workspace must therefore be done with
a buffer's contents before asking for it again; :class:`~smartmixed_np.nn.mlp.MLP`
owns one per batch size and hands out its buffers to exactly one forward pass and
the one backward pass that consumes it (see :meth:`~smartmixed_np.nn.mlp.MLP.forward`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Workspace", "get_buffer"]


class Workspace:
    """Named buffers on one backend, allocated on first use and then reused.

    Args:
        xp: the array module to allocate with (``numpy``, ``cupy``, ...).
    """

    def __init__(self, xp: Any) -> None:
        self.xp = xp
        self._buffers: dict[str, Any] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
        """An uninitialised C-contiguous buffer of ``shape`` and ``dtype`` stored under ``name``."""
        buf = self._buffers.get(name)
        if buf is not None and buf.shape == tuple(shape) and buf.dtype == dtype:  # the common case: a few compares
            return buf
        buf = self.xp.empty(tuple(int(s) for s in shape), dtype=dtype)
        self._buffers[name] = buf
        return buf

    def feature_major(self, name: str, batch: int, features: int, dtype: Any) -> Any:
        """A (batch, features) view of a C-contiguous (features, batch) buffer.

        A neuron's values over the batch are then contiguous in memory, so that a
        block of neurons (a contiguous activation group) is one contiguous block and
        gathering neurons copies whole rows.
        """
        return self.get(name, (features, batch), dtype).T

    # Buffers are scratch: a copy of a workspace (e.g. inside copy.deepcopy of a
    # model) starts empty, and the array module is shared, not copied.
    def __deepcopy__(self, memo: dict) -> "Workspace":
        return Workspace(self.xp)

    def __copy__(self) -> "Workspace":
        return Workspace(self.xp)

    @property
    def nbytes(self) -> int:
        """Total bytes held."""
        return sum(int(b.nbytes) for b in self._buffers.values())


def get_buffer(workspace: Workspace | None, xp: Any, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
    """``workspace.get(name, shape, dtype)``, or a fresh ``xp.empty`` when there is no workspace.

    The layers' forward and backward passes take an optional workspace: with one,
    their outputs live in its buffers (see the aliasing rule above); without one,
    every call allocates afresh and nothing is shared.
    """
    if workspace is None:
        return xp.empty(shape, dtype=dtype)
    return workspace.get(name, shape, dtype)
