"""Candidate activation functions: value, derivative, and a registry by name.

Every candidate is an :class:`Activation`: a name, ``forward(x) -> y`` and
``derivative(x, y) -> f'(x)``, where ``y = forward(x)`` is passed in so that
derivatives that are cheap in terms of the output (sigmoid, tanh) need not
recompute it. All built-in candidates are elementwise, work for any shape, keep the
dtype of ``x`` (float32 or float64), and are written so that no branch overflows:
``np.where`` evaluates both of its branches, so each branch is itself safe for
``|x|`` up to 1e4 and beyond.

The default SmartMixed pool is :data:`DEFAULT_POOL`, in the order of the reference
implementation: relu, sigmoid, tanh, leaky_relu, elu, selu. GELU, SiLU, Softplus
and Identity are registered too, outside the default pool. A user adds a candidate
with :func:`register_activation`; it can then be named in a pool (phase 1) and is
used by frozen networks (phase 2) like any built-in.

Conventions at kinks follow PyTorch: ``relu'(0) = 0``, ``leaky_relu'(0) = 0.01``,
``elu'(0) = 1``.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

from ..backend import array_module

__all__ = [
    "Activation",
    "DEFAULT_POOL",
    "LEAKY_SLOPE",
    "ELU_ALPHA",
    "SELU_ALPHA",
    "SELU_SCALE",
    "clamp_limits",
    "get_activation",
    "list_activations",
    "register_activation",
    "resolve_pool",
]

LEAKY_SLOPE = 0.01
ELU_ALPHA = 1.0
# The SELU constants (Klambauer et al., 2017), to the precision PyTorch uses.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
GELU_C = math.sqrt(2.0 / math.pi)  # GELU, tanh form: x * sigmoid(2 GELU_C (x + GELU_K x^3))
GELU_K = 0.044715

DEFAULT_POOL: tuple[str, ...] = ("relu", "sigmoid", "tanh", "leaky_relu", "elu", "selu")


@dataclass(frozen=True)
class Activation:
    """One candidate activation.

    Attributes:
        name: registry key, e.g. ``"relu"``.
        forward: ``x -> f(x)``, elementwise, any shape, same dtype.
        derivative: ``(x, y) -> f'(x)`` with ``y = f(x)``; same shape as ``x``.
        formula: LaTeX of ``f`` and ``f'`` for documentation and plots.
        bounds: ``(lo, hi)``, a range that contains every value of ``f`` (``None``
            for unbounded). A clamp to ``[-c, c]`` can skip a side that the bounds
            already guarantee.
    """

    name: str
    forward: Callable[[Any], Any]
    derivative: Callable[[Any, Any], Any]
    formula: str = ""
    bounds: tuple[float | None, float | None] = (None, None)

    def __call__(self, x: Any) -> Any:
        return self.forward(x)

    # Immutable, so a copy may be the object itself; and it must be: the fused kernels
    # know the built-ins by identity (kernels.has_kernel), so a copied network (a
    # gradient check's private copy, say) keeps them only if its pool is not duplicated.
    def __copy__(self) -> "Activation":
        return self

    def __deepcopy__(self, memo: dict) -> "Activation":
        return self


def clamp_limits(activation: Activation, clamp: float | None) -> tuple[float | None, float | None]:
    """The sides of a ``[-clamp, clamp]`` clamp that can change ``activation``'s output.

    A side that :attr:`Activation.bounds` already guarantees is ``None`` (no clamp
    there): sigmoid, within [0, 1], needs neither side of a clamp to [-10, 10], and
    relu only the upper one. Every clamped path (reference, fused kernels, compiled
    loops) takes its limits from here, so that all of them clamp the same sides.

    Returns:
        ``(lo, hi)``: ``-clamp`` or None, ``clamp`` or None (both None if ``clamp`` is None).
    """
    if clamp is None:
        return None, None
    lo_bound, hi_bound = activation.bounds
    lo = None if (lo_bound is not None and lo_bound >= -clamp) else -float(clamp)
    hi = None if (hi_bound is not None and hi_bound <= clamp) else float(clamp)
    return lo, hi


# --------------------------------------------------------------------------- built-ins
def relu(x):
    """$f(x) = \\max(0, x)$."""
    return array_module(x).maximum(x, 0)


def relu_derivative(x, y):
    """$f'(x) = [x > 0]$."""
    return (x > 0).astype(x.dtype)


def sigmoid(x):
    """$f(x) = 1 / (1 + e^{-x})$, as $1/(1+e)$ or $e/(1+e)$ with $e = e^{-|x|} \\le 1$."""
    xp = array_module(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid_derivative(x, y):
    """$f'(x) = f(x)(1 - f(x))$."""
    return y * (1 - y)


def tanh(x):
    """$f(x) = \\tanh(x)$."""
    return array_module(x).tanh(x)


def tanh_derivative(x, y):
    """$f'(x) = 1 - \\tanh^2(x)$."""
    return 1 - y * y


def leaky_relu(x):
    """$f(x) = x$ for $x > 0$, else $0.01x$."""
    xp = array_module(x)
    return xp.where(x > 0, x, x * LEAKY_SLOPE)


def leaky_relu_derivative(x, y):
    """$f'(x) = 1$ for $x > 0$, else $0.01$."""
    xp = array_module(x)
    return xp.where(x > 0, 1.0, LEAKY_SLOPE).astype(x.dtype)


def elu(x):
    """$f(x) = x$ for $x > 0$, else $\\alpha(e^x - 1)$, $\\alpha = 1$ (expm1 of $\\min(x, 0)$)."""
    xp = array_module(x)
    return xp.where(x > 0, x, ELU_ALPHA * xp.expm1(xp.minimum(x, 0)))


def elu_derivative(x, y):
    """$f'(x) = 1$ for $x > 0$, else $\\alpha e^x$ (as $\\alpha e^{\\min(x, 0)}$, which cannot overflow).

    Not $f(x) + \\alpha$: $f(x) = \\alpha(e^x - 1)$ is rounded at the scale of
    $\\alpha$, so adding $\\alpha$ back leaves only that rounding error once $e^x$ is
    smaller (from $x \\approx -17$ on in float32 the sum is exactly 0, against a true
    $4 \\cdot 10^{-8}$). $e^x$ itself keeps its relative precision down to the
    smallest normal number ($x \\approx -87$ in float32, $-708$ in float64).
    """
    xp = array_module(x)
    return xp.where(x > 0, 1.0, ELU_ALPHA * xp.exp(xp.minimum(x, 0))).astype(x.dtype)


def selu(x):
    """$f(x) = \\lambda x$ for $x > 0$, else $\\lambda\\alpha(e^x - 1)$."""
    xp = array_module(x)
    return SELU_SCALE * xp.where(x > 0, x, SELU_ALPHA * xp.expm1(xp.minimum(x, 0)))


def selu_derivative(x, y):
    """$f'(x) = \\lambda$ for $x > 0$, else $\\lambda\\alpha e^x$ (from $e^{\\min(x, 0)}$, as for ELU:
    $f(x) + \\lambda\\alpha$ would cancel)."""
    xp = array_module(x)
    return xp.where(x > 0, SELU_SCALE, SELU_SCALE * SELU_ALPHA * xp.exp(xp.minimum(x, 0))).astype(x.dtype)


def gelu(x):
    """GELU, tanh form: $f(x) = \\tfrac12 x (1 + \\tanh(u)) = x\\,\\sigma(2u)$, $u = c(x + 0.044715x^3)$, $c = \\sqrt{2/\\pi}$.

    NumPy has no ``erf``; the tanh form is PyTorch's ``approximate='tanh'``. It is
    evaluated as $x\\,\\sigma(2u)$ with the stable sigmoid: $1 + \\tanh(u)$ would
    cancel catastrophically for large negative $x$.
    """
    return x * sigmoid(2 * GELU_C * (x + GELU_K * x * x * x))


def gelu_derivative(x, y):
    """$f'(x) = s + 2x\\,s(1 - s)\\,c(1 + 3 \\cdot 0.044715 x^2)$ with $s = \\sigma(2u)$."""
    s = sigmoid(2 * GELU_C * (x + GELU_K * x * x * x))
    return s + 2 * x * s * (1 - s) * GELU_C * (1 + 3 * GELU_K * x * x)


def silu(x):
    """SiLU (swish): $f(x) = x\\,\\sigma(x)$."""
    return x * sigmoid(x)


def silu_derivative(x, y):
    """$f'(x) = \\sigma(x)(1 + x(1 - \\sigma(x)))$."""
    s = sigmoid(x)
    return s * (1 + x * (1 - s))


def softplus(x):
    """$f(x) = \\log(1 + e^x) = \\max(x, 0) + \\log(1 + e^{-|x|})$."""
    xp = array_module(x)
    return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))


def softplus_derivative(x, y):
    """$f'(x) = \\sigma(x)$."""
    return sigmoid(x)


def identity(x):
    """$f(x) = x$."""
    return x.copy()


def identity_derivative(x, y):
    """$f'(x) = 1$."""
    return array_module(x).ones_like(x)


# --------------------------------------------------------------------------- registry
_REGISTRY: dict[str, Activation] = {}


def _as_two_argument(derivative: Callable) -> Callable[[Any, Any], Any]:
    """Accept a user derivative written as ``d(x)`` or ``d(x, y)``."""
    try:
        params = [
            p
            for p in inspect.signature(derivative).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
    except (TypeError, ValueError):  # builtins without a signature: assume d(x)
        params = [None]
    if len(params) >= 2:
        return derivative
    return lambda x, y: derivative(x)


def register_activation(
    name: str,
    forward: Callable[[Any], Any],
    derivative: Callable,
    *,
    formula: str = "",
    bounds: tuple[float | None, float | None] = (None, None),
    overwrite: bool = False,
) -> Activation:
    """Register a candidate activation under ``name``.

    Args:
        name: the key used in pools and activation specs (lower case, no commas).
        forward: ``f(x)``, elementwise. To run on the GPU too, take the array module
            from the input: ``xp = smartmixed_np.backend.array_module(x)``.
        derivative: ``f'(x)``, either as ``d(x)`` or as ``d(x, y)`` with ``y = f(x)``.
        formula: optional LaTeX for plots and docs.
        bounds: optional ``(lo, hi)`` guaranteed range of ``f`` (lets a clamp skip work).
        overwrite: replace an existing registration of ``name``.

    Returns:
        The registered :class:`Activation`.

    Raises:
        ValueError: the name is empty, malformed, or already taken.
        TypeError: ``forward`` or ``derivative`` is not callable.
    """
    if not isinstance(name, str) or not name or name != name.strip() or "," in name:
        raise ValueError(f"activation name must be a non-empty string without commas or spaces, got {name!r}")
    key = name.lower()
    if not callable(forward) or not callable(derivative):
        raise TypeError(f"activation {name!r}: forward and derivative must be callables")
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"activation {key!r} is already registered (pass overwrite=True to replace it)")
    activation = Activation(key, forward, _as_two_argument(derivative), formula, bounds)
    _REGISTRY[key] = activation
    return activation


def get_activation(name: str | Activation) -> Activation:
    """Return the registered activation ``name`` (an :class:`Activation` is returned as is).

    Raises:
        ValueError: no activation of that name is registered (the message lists them).
    """
    if isinstance(name, Activation):
        return name
    if not isinstance(name, str):
        raise TypeError(f"activation must be given by name, got {type(name).__name__}")
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; registered: {', '.join(list_activations())}"
        ) from None


def list_activations() -> list[str]:
    """Names of all registered activations, built-ins first."""
    return list(_REGISTRY)


def resolve_pool(pool: Any = None) -> tuple[Activation, ...]:
    """Turn a pool spec (``None`` for the default, or names/Activations) into Activations.

    Raises:
        ValueError: an unknown name, a duplicate, or an empty pool.
    """
    names = DEFAULT_POOL if pool is None else pool
    if isinstance(names, str):
        names = [part.strip() for part in names.split(",") if part.strip()]
    activations = tuple(get_activation(n) for n in names)
    if not activations:
        raise ValueError("the candidate pool is empty")
    seen = [a.name for a in activations]
    if len(set(seen)) != len(seen):
        raise ValueError(f"the candidate pool names an activation twice: {seen}")
    return activations


for _name, _f, _df, _formula, _bounds in [
    ("relu", relu, relu_derivative, r"$\max(0, x)$", (0.0, None)),
    ("sigmoid", sigmoid, sigmoid_derivative, r"$1/(1+e^{-x})$", (0.0, 1.0)),
    ("tanh", tanh, tanh_derivative, r"$\tanh x$", (-1.0, 1.0)),
    ("leaky_relu", leaky_relu, leaky_relu_derivative, r"$\max(x, 0.01x)$", (None, None)),
    ("elu", elu, elu_derivative, r"$x$ if $x>0$ else $e^x-1$", (-ELU_ALPHA, None)),
    ("selu", selu, selu_derivative, r"$\lambda x$ if $x>0$ else $\lambda\alpha(e^x-1)$", (-SELU_SCALE * SELU_ALPHA, None)),
    ("gelu", gelu, gelu_derivative, r"$\frac{x}{2}(1+\tanh(\sqrt{2/\pi}(x+0.044715x^3)))$", (-0.2, None)),
    ("silu", silu, silu_derivative, r"$x\,\sigma(x)$", (-0.28, None)),
    ("softplus", softplus, softplus_derivative, r"$\log(1+e^x)$", (0.0, None)),
    ("identity", identity, identity_derivative, r"$x$", (None, None)),
]:
    register_activation(_name, _f, _df, formula=_formula, bounds=_bounds)
