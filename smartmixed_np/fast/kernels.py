r"""Fused, in-place kernels for the built-in activations with their clamp.

The reference computation of a clamped candidate is two readable steps
(:mod:`smartmixed_np.core.activations` and the clamp limits of :func:`~smartmixed_np.core.activations.clamp_limits`)::

    a  = clip(f(z), lo, hi)                     # forward
    dz = da * f'(z) * [lo < a < hi]             # backward

Each step allocates arrays, and several built-ins branch with ``where``, which NumPy
runs as a data-dependent branch per element: on random signs it is some fifty
times slower than plain arithmetic. The kernels here write into a caller's buffer
(``out=``) with a few ufunc calls and no ``where``, and their forward values are
*bitwise equal* to the reference's (the same operations on the same operands; only
the selection between branches is done arithmetically), but for elu and selu on host
float32 arrays on a CPU without AVX-512, whose ``expm1`` is
:func:`smartmixed_np.backend.expm1_into`'s (within 4 ulps of ``np.expm1``, which is
scalar and slow there):

* relu: $\mathrm{clip}(z, 0, c)$; $f' [a < c] = [a > 0][a < c]$.
* sigmoid: with $e = e^{-|z|}$, the reference's $1/(1+e)$ (for $z \ge 0$) or
  $e/(1+e)$ (for $z < 0$) is $e^{\min(z, 0)} / (1 + e)$, since $e^{\min(z,0)}$ is
  exactly 1 for $z \ge 0$ and exactly $e$ for $z < 0$; $f' = a(1 - a)$.
* tanh: ``tanh``; $f' = 1 - a^2$.
* leaky_relu: $\max(z, 0.01z)$; $f' = \mathrm{clip}([a > 0], 0.01, 1)$.
* elu: $\max(\mathrm{expm1}(\min(z, 0)), z)$, because $e^z - 1 \ge z$;
  $f' = e^{\min(z, 0)}$, which is exactly 1 where $z > 0$ ($\alpha = 1$).
* selu: $\lambda(\alpha\,\mathrm{expm1}(\min(z, 0)) + \max(z, 0))$ (one of the two
  terms is an exact zero); $f' = \min(\lambda\alpha\, e^{\min(z, 0)},\ \lambda + [a \le 0] M)$
  with a large finite $M$: $\lambda$ where $z > 0$ (there $e^0 = 1$ and
  $\lambda < \lambda\alpha$), else $\lambda\alpha e^z$.

The elu and selu derivatives take an ``exp`` of $z$ rather than reuse the forward value
as $a + \alpha$: $a = \alpha(e^z - 1)$ is rounded at the scale of $\alpha$, so the sum
keeps only that rounding error once $e^z$ is smaller (it is exactly 0 from $z \approx -17$
on in float32). The ``exp`` in place of an addition makes their backward about 1.5
times as long as before (on a (128, 512) float32 block); every other derivative is still
computed from ``a`` alone.

Phase 1 evaluates every candidate on the same ``z``, and two of them need the same
transcendental function of it: elu and selu take $\mathrm{expm1}(\min(z, 0))$ in the
forward and $e^{\min(z, 0)}$ in the backward. A :class:`SharedParts` for that ``z``, passed
as ``parts=`` to each candidate's kernel, computes each of these once, when the first kernel
asks, and hands the same array to the next; without it (``parts=None``) each kernel computes
its own into its output buffer. The operations are the same either way, so are the bits
(``tests/test_kernels.py``). On a (512, 128) float32 block that is one ``expm1`` and one
``exp`` less per phase-1 layer: about 0.1 ms natively and 0.2 ms under the AVX2 limit, where
``expm1`` goes through ``tanh``.

They apply to the registered built-in :class:`~smartmixed_np.core.activations.Activation`
objects only (a user activation, or a built-in name re-registered by the user, goes
through the reference path): :func:`has_kernel` tells which. ``tests/test_kernels.py``
checks every kernel against the reference, values and gradients, in both dtypes.

Layout: the kernels are elementwise and accept any layout, but they are fastest on
contiguous blocks, which is why the networks keep hidden activations feature-major
(see :mod:`smartmixed_np.nn.mlp`).
"""

from __future__ import annotations

from typing import Any, Callable

from ..core.activations import ELU_ALPHA, LEAKY_SLOPE, SELU_ALPHA, SELU_SCALE, Activation, get_activation
from ..backend import array_module, clip_into, expm1_into
from .workspace import Workspace, get_buffer

__all__ = ["has_kernel", "activation_forward_into", "activation_backward_into", "SharedParts"]

if ELU_ALPHA != 1.0:  # pragma: no cover - the elu kernels use alpha = 1: f' = e^{min(z, 0)} is then 1 for z > 0
    raise ImportError("smartmixed_np.fast.kernels: the elu kernels assume ELU_ALPHA = 1")
_INF = float("inf")
_SELU_SA = SELU_SCALE * SELU_ALPHA
_BIG = 1e30  # finite in float32 and float64; larger than any derivative


def _clamp_into(xp: Any, out: Any, lo: float | None, hi: float | None) -> None:
    # A two-sided clip ufunc is fast; a one-sided maximum/minimum with a scalar is not.
    if lo is not None or hi is not None:
        clip_into(out, -_INF if lo is None else lo, _INF if hi is None else hi, out)


def _mask_into(xp: Any, out: Any, a: Any, lo: float | None, hi: float | None) -> None:
    """``out *= [lo < a < hi]`` for the sides that are given."""
    if lo is not None:
        out *= a > lo
    if hi is not None:
        out *= a < hi


class SharedParts:
    """Functions of one pre-activation array that several candidates' kernels share.

    Each is computed the first time a kernel asks for it and kept for the next kernel that
    asks, in ``workspace`` under ``prefix`` and its rank (the first part asked for is
    ``shared_0``, the second ``shared_1``), or in a fresh array. The caller makes one per
    ``z`` and per pass (see :func:`smartmixed_np.fast.phase1.mixture_forward_fused`), and a
    pass's parts are dead when it ends: the forward's expm1 and the backward's exp then lie
    in the same buffer, one (N, B) array per layer rather than two.

    Args:
        z: the pre-activations every kernel of this pass reads, any shape.
        workspace: where the parts live (overwritten by the next pass that asks); fresh
            arrays if None.
        prefix: the parts' names in ``workspace``.
    """

    def __init__(self, z: Any, workspace: Workspace | None = None, prefix: str = "shared_") -> None:
        self.z, self.workspace, self.prefix = z, workspace, prefix
        self._parts: dict[str, Any] = {}

    def of_min0(self, function: str) -> Any:
        r"""``function``$(\min(z, 0))$, ``z``'s shape: ``"expm1"`` (elu and selu forward) or
        ``"exp"`` (their backward)."""
        part = self._parts.get(function)
        if part is None:
            part = get_buffer(self.workspace, array_module(self.z), f"{self.prefix}{len(self._parts)}",
                              tuple(self.z.shape), self.z.dtype)
            _of_min0_into(function, self.z, part)
            self._parts[function] = part
        return part


def _of_min0_into(function: str, z: Any, out: Any) -> Any:
    """``out[...] = function(min(z, 0))`` for ``function`` ``"expm1"`` or ``"exp"``; returns ``out``."""
    clip_into(z, -_INF, 0.0, out)
    return expm1_into(out, out) if function == "expm1" else array_module(z).exp(out, out=out)


def _of_min0(function: str, z: Any, parts: SharedParts | None, out: Any) -> Any:
    """``function(min(z, 0))``: the shared array when there are ``parts``, else computed into ``out``."""
    return _of_min0_into(function, z, out) if parts is None else parts.of_min0(function)


# --------------------------------------------------------------------------- relu
# Stands in for smartmixed_np.core.activations.relu and relu_derivative, with the clamp.
def _relu_forward(xp, z, lo, hi, out, parts=None):
    # lo is never needed (relu >= 0 >= -c); a positive lo would be a caller's error.
    clip_into(z, 0.0, _INF if hi is None else hi, out)


def _relu_backward(xp, da, z, a, lo, hi, out, parts=None):
    mask = a > 0
    if hi is not None:
        mask &= a < hi
    xp.multiply(da, mask, out=out)


# --------------------------------------------------------------------------- sigmoid
# Stands in for smartmixed_np.core.activations.sigmoid and sigmoid_derivative, with the clamp.
def _sigmoid_forward(xp, z, lo, hi, out, parts=None):
    xp.abs(z, out=out)
    xp.negative(out, out=out)
    xp.exp(out, out=out)  # e = exp(-|z|) <= 1
    out += 1.0  # the denominator 1 + e
    numerator = clip_into(z, -_INF, 0.0, xp.empty_like(out))
    xp.exp(numerator, out=numerator)  # exp(min(z, 0)): 1 where z >= 0, else e (bitwise)
    xp.divide(numerator, out, out=out)
    _clamp_into(xp, out, lo, hi)


def _sigmoid_backward(xp, da, z, a, lo, hi, out, parts=None):
    xp.subtract(1.0, a, out=out)
    out *= a
    out *= da
    _mask_into(xp, out, a, lo, hi)


# --------------------------------------------------------------------------- tanh
# Stands in for smartmixed_np.core.activations.tanh and tanh_derivative, with the clamp.
def _tanh_forward(xp, z, lo, hi, out, parts=None):
    xp.tanh(z, out=out)
    _clamp_into(xp, out, lo, hi)


def _tanh_backward(xp, da, z, a, lo, hi, out, parts=None):
    xp.multiply(a, a, out=out)
    xp.subtract(1.0, out, out=out)
    out *= da
    _mask_into(xp, out, a, lo, hi)


# --------------------------------------------------------------------------- leaky_relu
# Stands in for smartmixed_np.core.activations.leaky_relu and leaky_relu_derivative, with the clamp.
def _leaky_relu_forward(xp, z, lo, hi, out, parts=None):
    xp.multiply(z, LEAKY_SLOPE, out=out)
    xp.maximum(out, z, out=out)
    _clamp_into(xp, out, lo, hi)


def _leaky_relu_backward(xp, da, z, a, lo, hi, out, parts=None):
    out[...] = a > 0
    clip_into(out, LEAKY_SLOPE, 1.0, out)
    out *= da
    _mask_into(xp, out, a, lo, hi)


# --------------------------------------------------------------------------- elu
# Stands in for smartmixed_np.core.activations.elu and elu_derivative, with the clamp.
def _elu_forward(xp, z, lo, hi, out, parts=None):
    m = _of_min0("expm1", z, parts, out)  # alpha = 1
    xp.maximum(m, z, out=out)
    _clamp_into(xp, out, lo, hi)


def _elu_backward(xp, da, z, a, lo, hi, out, parts=None):
    e = _of_min0("exp", z, parts, out)  # e^{min(z, 0)}: exactly 1 where z > 0, e^z elsewhere (alpha = 1)
    xp.multiply(e, da, out=out)
    _mask_into(xp, out, a, lo, hi)


# --------------------------------------------------------------------------- selu
# Stands in for smartmixed_np.core.activations.selu and selu_derivative, with the clamp.
def _selu_forward(xp, z, lo, hi, out, parts=None):
    m = _of_min0("expm1", z, parts, out)
    xp.multiply(m, SELU_ALPHA, out=out)
    out += clip_into(z, 0.0, _INF, xp.empty_like(out))
    out *= SELU_SCALE
    _clamp_into(xp, out, lo, hi)


def _selu_backward(xp, da, z, a, lo, hi, out, parts=None):
    cap = xp.multiply(a <= 0, _BIG, dtype=da.dtype)  # a <= 0 exactly where z <= 0
    cap += SELU_SCALE  # lambda where z > 0, huge elsewhere
    e = _of_min0("exp", z, parts, out)  # e^{min(z, 0)}: exactly 1 where z > 0
    xp.multiply(e, _SELU_SA, out=out)
    xp.minimum(out, cap, out=out)
    out *= da
    _mask_into(xp, out, a, lo, hi)


_KERNELS: dict[str, tuple[Callable, Callable]] = {
    "relu": (_relu_forward, _relu_backward),
    "sigmoid": (_sigmoid_forward, _sigmoid_backward),
    "tanh": (_tanh_forward, _tanh_backward),
    "leaky_relu": (_leaky_relu_forward, _leaky_relu_backward),
    "elu": (_elu_forward, _elu_backward),
    "selu": (_selu_forward, _selu_backward),
}
# Kernels are keyed by the registered object itself: re-registering a name with
# overwrite=True produces a new object, which then (rightly) has no kernel.
_BUILTIN = {name: get_activation(name) for name in _KERNELS}


def has_kernel(activation: Activation) -> bool:
    """True if ``activation`` is a built-in with a fused kernel here."""
    return _BUILTIN.get(activation.name) is activation


def activation_forward_into(activation: Activation, z: Any, lo: float | None, hi: float | None, out: Any,
                            parts: SharedParts | None = None) -> Any:
    """``out[...] = clip(f(z), lo, hi)``; any shape; ``out`` must not overlap ``z``.

    Args:
        activation: a built-in (see :func:`has_kernel`).
        z: pre-activations, any shape.
        lo, hi: clamp sides to apply (None for none), as :func:`~smartmixed_np.core.activations.clamp_limits` gives.
        out: buffer of ``z``'s shape and dtype.
        parts: a :class:`SharedParts` of this ``z`` shared with the other candidates'
            kernels of the same pass, or None; the same values either way.

    Returns:
        ``out``.
    """
    _KERNELS[activation.name][0](array_module(z), z, lo, hi, out, parts)
    return out


def activation_backward_into(
    activation: Activation, da: Any, z: Any, a: Any, lo: float | None, hi: float | None, out: Any,
    parts: SharedParts | None = None,
) -> Any:
    """``out[...] = da * f'(z) * [lo < a < hi]`` with ``a`` from :func:`activation_forward_into`.

    ``out`` must not overlap ``da``, ``z`` or ``a``; ``parts`` as for the forward (a
    :class:`SharedParts` of this ``z`` for this backward pass, or None).

    Returns:
        ``out``.
    """
    _KERNELS[activation.name][1](array_module(da), da, z, a, lo, hi, out, parts)
    return out
