r"""Compiled loops for the few places where NumPy's one-pass-per-operation costs most.

NumPy evaluates an expression such as Adam's update one operation at a time: each
``*``, ``+``, ``sqrt`` reads and writes every element once more. For a training step
of a small network that is most of the time not spent in matrix products (Adam alone
makes 13 passes over all 570k parameters of the benchmark network). The loops here
compute the same expressions in *one* pass per element, compiled with Numba.

Rules:

* Optional. Numba comes with the ``fast`` extra (``pip install "smartmixed_np[fast]"``);
  without it, or with the environment variable ``SMARTMIXED_JIT=0``, every caller
  takes its plain NumPy path. :func:`status` says which is in use.
* Host arrays only: :func:`applies` is False for device arrays, which keep the
  array-module code.
* Same numbers. Every loop performs the same float operations, in the same order
  and in the array's own precision, as the NumPy reference it stands in for, so
  the results are *bitwise equal* (Numba does not reassociate or contract
  floating-point operations unless told to, and it is not told to here). The
  reference of each loop is named in its docstring, and ``tests/test_compiled.py``
  checks every pair for equality.
* Compiled on first use, and cached on disk by Numba, so only the first run on a
  machine pays the compilation (about a second per loop).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

__all__ = ["JIT_ENV", "status", "applies", "adam_update"]

JIT_ENV = "SMARTMIXED_JIT"
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


@functools.lru_cache(maxsize=None)
def _numba() -> Any:
    """The ``numba`` module, or None when it is missing or switched off."""
    if os.environ.get(JIT_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        import numba
    except ImportError:
        return None
    return numba


def status() -> str:
    """``"numba <version>"`` when the compiled loops are in use, else why not."""
    numba = _numba()
    if numba is not None:
        return f"numba {numba.__version__}"
    if os.environ.get(JIT_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return f"off ({JIT_ENV}=0)"
    return "off (numba is not installed; pip install 'smartmixed_np[fast]')"


def applies(*arrays: Any) -> bool:
    """True if the compiled loops can take ``arrays``.

    That is: Numba is available and switched on, and every array is a C-contiguous
    host ``numpy.ndarray`` of float32 or float64, all of one dtype.
    """
    if _numba() is None:
        return False
    dtype = arrays[0].dtype if arrays and type(arrays[0]) is np.ndarray else None
    return dtype in _FLOATS and all(
        type(a) is np.ndarray and a.dtype == dtype and a.flags.c_contiguous for a in arrays
    )


def _jit(function: Any) -> Any:
    """Compile ``function`` with Numba on first call (no fast-math: exact IEEE operations).

    ``error_model="numpy"``: a division by zero gives inf or nan as in NumPy, rather
    than raising; it also lets the compiler vectorise loops that divide.
    """
    compiled = None

    @functools.wraps(function)
    def call(*args: Any) -> Any:
        nonlocal compiled
        if compiled is None:
            compiled = _numba().njit(cache=True, error_model="numpy", nogil=True)(function)
        return compiled(*args)

    return call


# --------------------------------------------------------------------------- Adam
@_jit
def _adam_loop(p, g, m, v, beta1, one_minus_beta1, beta2, one_minus_beta2, inv_sqrt_bc2, eps, step_size, weight_decay):
    for i in range(p.shape[0]):
        gi = g[i]
        if weight_decay != 0:
            gi = gi + weight_decay * p[i]
        mi = m[i] * beta1 + gi * one_minus_beta1
        vi = v[i] * beta2 + (gi * gi) * one_minus_beta2
        m[i] = mi
        v[i] = vi
        p[i] = p[i] - (mi / (np.sqrt(vi) * inv_sqrt_bc2 + eps)) * step_size


def adam_update(
    p: np.ndarray,
    g: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    *,
    beta1: float,
    beta2: float,
    eps: float,
    step_size: float,
    inv_sqrt_bc2: float,
    weight_decay: float,
) -> None:
    r"""One Adam update of ``p``, ``m``, ``v`` in place, in one pass.

    Per element, with $g \leftarrow g + \lambda p$ when ``weight_decay`` $\lambda \ne 0$:
    $m \leftarrow \beta_1 m + (1-\beta_1) g$, $v \leftarrow \beta_2 v + (1-\beta_2) g^2$,
    $p \leftarrow p - s \cdot m / (\sqrt{v}\, r + \epsilon)$ with $s$ = ``step_size``
    and $r$ = ``inv_sqrt_bc2``.

    Reference: :func:`smartmixed_np.optim.adam_update_reference` (13 NumPy passes),
    bitwise equal.

    Args:
        p, g, m, v: arrays of one shape, accepted by :func:`applies`; ``g`` is read only.
        beta1, beta2, eps, step_size, inv_sqrt_bc2, weight_decay: Python floats, rounded
            to the arrays' dtype as NumPy rounds a Python scalar in ``a * x``.
    """
    if not (p.shape == g.shape == m.shape == v.shape):
        raise ValueError(f"adam_update needs arrays of one shape, got {p.shape}, {g.shape}, {m.shape}, {v.shape}")
    t = p.dtype.type
    _adam_loop(
        p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1),
        t(beta1), t(1 - beta1), t(beta2), t(1 - beta2), t(inv_sqrt_bc2), t(eps), t(step_size), t(weight_decay),
    )
