"""The affine layer ``z = x W^T + b``: forward, backward, initialisation.

Weights are stored as PyTorch stores them, ``W: (N, D)`` for ``D`` inputs and ``N``
outputs, so that a hidden neuron ``n`` owns row ``W[n]`` and entry ``b[n]``, and
the next layer's column ``W'[:, n]``: freezing with contiguous groups permutes
exactly those together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..backend import Backend, SeededRNG, array_module

__all__ = ["LinearCache", "linear_forward", "linear_backward", "init_linear", "Linear"]


@dataclass
class LinearCache:
    """What :func:`linear_backward` needs from the forward pass.

    Attributes:
        x: (B, D) the layer's input.
        W: (N, D) the weights used in the forward pass.
    """

    x: Any
    W: Any


def linear_forward(x: Any, W: Any, b: Any, out: Any = None) -> tuple[Any, LinearCache]:
    """$z = x W^\\top + b$.

    Args:
        x: (B, D) inputs.
        W: (N, D) weights.
        b: (N,) biases.
        out: optional (B, N) buffer to write ``z`` into.

    Returns:
        ``z`` (B, N) and the cache for :func:`linear_backward`.
    """
    xp = array_module(x)
    z = xp.matmul(x, W.T, out=out)
    z += b
    return z, LinearCache(x=x, W=W)


def linear_backward(
    dz: Any,
    cache: LinearCache,
    *,
    need_dx: bool = True,
    dW_out: Any = None,
    db_out: Any = None,
    dx_out: Any = None,
) -> tuple[Any, Any, Any]:
    """Gradients of $z = x W^\\top + b$.

    $dx = dz\\,W$, $dW = dz^\\top x$, $db = \\sum_b dz_b$.

    Args:
        dz: (B, N) upstream gradient.
        cache: from :func:`linear_forward`.
        need_dx: skip the (B, D) product when the input needs no gradient (the
            first layer's input is data): one matrix product saved.
        dW_out, db_out, dx_out: optional (N, D), (N,) and (B, D) buffers to write into.

    Returns:
        ``(dx, dW, db)`` with shapes (B, D) (or None), (N, D), (N,).
    """
    xp = array_module(dz)
    dW = xp.matmul(dz.T, cache.x, out=dW_out)
    db = xp.sum(dz, axis=0, out=db_out)
    dx = xp.matmul(dz, cache.W, out=dx_out) if need_dx else None
    return dx, dW, db


def init_linear(in_features: int, out_features: int, rng: SeededRNG, dtype: Any, backend: Backend) -> tuple[Any, Any]:
    """PyTorch's default ``nn.Linear`` initialisation.

    PyTorch draws ``W`` with ``kaiming_uniform_(a=sqrt(5))``, which works out to
    $W_{ij} \\sim U(-1/\\sqrt{D}, 1/\\sqrt{D})$, and ``b`` from the same interval,
    with $D$ = ``in_features``. Using it keeps results comparable with the
    published PyTorch reference.

    Returns:
        ``W`` (out_features, in_features) and ``b`` (out_features,), on ``backend``.
    """
    bound = 1.0 / math.sqrt(in_features)
    W = rng.uniform(-bound, bound, (out_features, in_features), dtype, backend)
    b = rng.uniform(-bound, bound, (out_features,), dtype, backend)
    return W, b


class Linear:
    """A thin object over :func:`linear_forward`/:func:`linear_backward`.

    Holds ``W`` (N, D), ``b`` (N,) and their gradients ``dW``, ``db`` (allocated once
    and overwritten by every backward). The cache is returned, not stored.
    """

    def __init__(self, W: Any, b: Any) -> None:
        if W.ndim != 2 or b.ndim != 1 or b.shape[0] != W.shape[0]:
            raise ValueError(f"Linear needs W (N, D) and b (N,), got {tuple(W.shape)} and {tuple(b.shape)}")
        xp = array_module(W)
        self.W = W
        self.b = b
        self.dW = xp.zeros_like(W)
        self.db = xp.zeros_like(b)

    @property
    def in_features(self) -> int:
        return int(self.W.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.W.shape[0])

    def forward(self, x: Any, out: Any = None) -> tuple[Any, LinearCache]:
        """(B, D) -> (B, N), and the cache; ``out``: optional (B, N) buffer for ``z``."""
        return linear_forward(x, self.W, self.b, out=out)

    def backward(self, dz: Any, cache: LinearCache, need_dx: bool = True, dx_out: Any = None) -> Any:
        """Write ``dW``, ``db`` in place; return ``dx`` (B, D) (into ``dx_out`` if given) or None."""
        dx, _, _ = linear_backward(dz, cache, need_dx=need_dx, dW_out=self.dW, db_out=self.db, dx_out=dx_out)
        return dx
