r"""CuPy kernels: one fused launch where the plain CuPy path makes many (GPU only, off by default).

On a GPU the plain code (:mod:`smartmixed_np.core` run on CuPy arrays, or the fused
array-module kernels of :mod:`smartmixed_np.fast.kernels`) launches one small kernel per
array operation: a phase-2 layer of six activation groups costs some forty launches a
pass, Adam thirteen per parameter. The kernels here do each of those passes in one or two
launches. Each stands in for a reference function and is checked against it:

* **phase 2**, :func:`coded_forward` / :func:`coded_backward`: stand in for
  :func:`smartmixed_np.core.phase2.fixed_forward` / :func:`~smartmixed_np.core.phase2.fixed_backward`
  (open clamp gradient). ONE elementwise kernel each way over the whole (B, N) layer,
  driven by a per-neuron int8 activation code and per-neuron clamp limits: no groups, no
  gather or scatter, so a masked layer costs what a uniform one does.
* **phase 1**, hard straight-through with one noise draw shared by the batch (or none):
  :func:`phase1_forward` / :func:`phase1_backward` stand in for
  :func:`smartmixed_np.core.phase1.mixture_forward` (``hard=True``) /
  :func:`~smartmixed_np.core.phase1.mixture_backward` (open clamp gradient). Forward: one
  kernel for the Gumbel-softmax weights and the argmax per neuron, one for the selected
  candidate's clamped output. Backward: one kernel for ``dz``, one reduction for
  $dy_{nk} = \sum_b dout_{bn}\, a_{kbn}$ (each candidate's output recomputed inside the
  reduction, so the (K, B, N) candidate stack is never stored), one kernel for the softmax
  backward $d\alpha = y \odot (dy - \langle y, dy\rangle)/\tau$.
* **Adam**, :func:`adam_update`: stands in for :func:`smartmixed_np.core.optim.adam_update_reference`;
  ONE kernel per parameter, the clip factor applied inside it, read from a device scalar
  (so a step never waits for the GPU).
* **the clip factor**, :func:`clip_factor`: stands in for :func:`smartmixed_np.core.optim.clip_factor`
  over the network's flat gradient buffer, in two launches (one reduction for the norm, one for
  the factor) where the reference makes a dot product per parameter and a dozen operations on
  numbers.
* **the loss**, :func:`softmax_cross_entropy`: stands in for
  :func:`smartmixed_np.core.losses.softmax_cross_entropy`, in two launches (one kernel over the
  rows for the log-probabilities and the gradient, one reduction for the mean) where the
  reference makes about twenty. The clip and the loss sum in another order than the reference:
  their numbers are its numbers to rounding.
* **Gumbel noise on the device**, :class:`DeviceGumbel`: an optional stand-in for
  :meth:`smartmixed_np.backend.SeededRNG.gumbel` (the host stream stays the default).

**One table, two renderings.** Each activation's formula and derivative are written once,
in :data:`ACTIVATION_SPECS`, in a small expression language (Python syntax: ``+ - * /``,
comparisons, ``|``, ``where``, ``exp``, ``expm1``, ``tanh``, ``abs``, ``minimum``,
``maximum``, ``ind`` = indicator, named constants from :mod:`~smartmixed_np.core.activations`).
:func:`render_c` turns a spec into the CUDA C the kernels compile, :func:`render_numpy` into
a NumPy function, its *twin*; the clamp and its gradient mask are written once the same way
(:data:`CLAMP_FORWARD`, :data:`CLAMP_BACKWARD`). ``tests/test_cuda_engine.py`` checks the
NumPy twins against :mod:`smartmixed_np.core.activations` (bitwise), so the C cannot drift
from the reference without a CPU test failing. Every constant becomes ``(Real)value`` in C
and ``dt(value)`` in NumPy: rounded to the arrays' dtype first, as NumPy rounds a Python
float, and the arithmetic stays in that dtype. The kernels compile with ``--fmad=false``
(no fused multiply-add contraction), so that each ``a * b + c`` rounds twice, as the
one-operation-per-launch reference does.

**Switch and self-check.** Off by default; on with the environment variable
``SMARTMIXED_CUDA_KERNELS=1`` or :func:`enable`. :func:`kernels_for` gives the kernels
of a GPU backend (None on the CPU, or when off), built lazily through the backend's array
module (``xp.ElementwiseKernel``, ``xp.ReductionKernel``: CuPy is imported only in
:mod:`smartmixed_np.backend`). The first time, every kernel runs once on a small random
input, in float32 and float64, against the reference functions on the same device
arrays (:func:`self_check`); a kernel that fails to compile or disagrees beyond
:data:`TOLERANCES` takes its family (``"phase2"``, ``"phase1"``, ``"adam"``, ``"clip"``,
``"loss"``) back to the plain path, with one :class:`CudaKernelWarning` naming the kernel and why.
:mod:`smartmixed_np.nn.engines` and :mod:`smartmixed_np.nn.optim`'s Adam ask :func:`kernels_for`
once, at construction; :func:`smartmixed_np.nn.optim.clip_factor` and
:func:`smartmixed_np.nn.losses.softmax_cross_entropy` at each call (a dictionary look-up).

The clamp's gradient: ``"open"`` (ours, :data:`smartmixed_np.core.phase1.CLAMP_GRADS`),
zero wherever the clamped output sits at an edge; a side the activation's range already
guarantees (:func:`~smartmixed_np.core.activations.clamp_limits`) is no clamp at all, and
is passed to the kernels as an infinite limit. The authors' ``"closed"`` gradient stays
with the reference engines.
"""

from __future__ import annotations

import ast
import math
import os
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np

from ..backend import Backend, array_module, backend_of, to_host
from ..core.activations import ELU_ALPHA, LEAKY_SLOPE, SELU_ALPHA, SELU_SCALE, Activation, clamp_limits
from ..core.optim import adam_update_reference
from ..core.phase1 import MixtureCache, mixture_backward, mixture_forward
from ..core.phase2 import fixed_backward, fixed_forward, make_groups
from .kernels import has_kernel

__all__ = [
    "KERNELS_ENV", "TOLERANCES", "CONSTANTS", "ActivationSpec", "ACTIVATION_SPECS", "CLAMP_FORWARD", "CLAMP_BACKWARD",
    "CudaKernelWarning", "DeviceGumbel", "KernelError", "Kernels", "KernelMixtureCache", "NeuronTable", "activation_code",
    "adam_update", "applies", "clip_factor", "coded_backward", "coded_forward", "dlogits_error_bound", "enable", "enabled", "has_code",
    "kernels_for", "numpy_twin", "phase1_backward", "phase1_forward", "render_c", "render_numpy", "reset", "self_check",
    "softmax_cross_entropy", "status",
]

KERNELS_ENV = "SMARTMIXED_CUDA_KERNELS"
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

#: Named constants the formulas may use (those of core/activations; SELU_SCALE_ALPHA is the
#: product the reference's SELU derivative forms in Python double before rounding).
CONSTANTS: dict[str, float] = {
    "LEAKY_SLOPE": LEAKY_SLOPE,
    "ELU_ALPHA": ELU_ALPHA,
    "SELU_ALPHA": SELU_ALPHA,
    "SELU_SCALE": SELU_SCALE,
    "SELU_SCALE_ALPHA": SELU_SCALE * SELU_ALPHA,
    "INF": math.inf,
}


# --------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class ActivationSpec:
    """One built-in activation as the kernels compute it.

    Attributes:
        name: the registered name (:func:`smartmixed_np.core.activations.get_activation`).
        code: the int8 code the kernels dispatch on.
        forward: $f(z)$ in the expression language: statements ``name = expr`` (one a line),
            then the value; reads ``z``.
        derivative: $f'(z)$, reading ``z`` and ``a`` (the clamped output, as the
            reference's ``derivative(x, y)`` reads ``y``).
    """

    name: str
    code: int
    forward: str
    derivative: str


#: The six built-ins, each written as its reference in core/activations computes it.
ACTIVATION_SPECS: tuple[ActivationSpec, ...] = (
    ActivationSpec("relu", 0, "maximum(z, 0)", "ind(z > 0)"),
    ActivationSpec("sigmoid", 1, "e = exp(-abs(z))\nwhere(z >= 0, 1 / (1 + e), e / (1 + e))", "a * (1 - a)"),
    ActivationSpec("tanh", 2, "tanh(z)", "1 - a * a"),
    ActivationSpec("leaky_relu", 3, "where(z > 0, z, z * LEAKY_SLOPE)", "where(z > 0, 1, LEAKY_SLOPE)"),
    ActivationSpec("elu", 4, "where(z > 0, z, ELU_ALPHA * expm1(minimum(z, 0)))",
                   "where(z > 0, 1, ELU_ALPHA * exp(minimum(z, 0)))"),
    ActivationSpec("selu", 5, "SELU_SCALE * where(z > 0, z, SELU_ALPHA * expm1(minimum(z, 0)))",
                   "where(z > 0, SELU_SCALE, SELU_SCALE_ALPHA * exp(minimum(z, 0)))"),
)
_BY_NAME = {spec.name: spec for spec in ACTIVATION_SPECS}

#: The clamp of ``f`` to [lo, hi] (an absent side is an infinite limit), as ``xp.clip`` computes it.
CLAMP_FORWARD = "where(f < lo, lo, where(f > hi, hi, f))"
#: ``da * f' * [lo < a < hi]``, the open clamp gradient; an infinite limit is no clamp at all
#: (the reference masks only the sides it clamps, so an infinite output keeps its gradient).
CLAMP_BACKWARD = "da * (d * ind((lo == -INF) | (a > lo)) * ind((hi == INF) | (a < hi)))"


def has_code(activation: Activation) -> bool:
    """True if ``activation`` is a registered built-in that the kernels compute."""
    return has_kernel(activation) and activation.name in _BY_NAME


def activation_code(activation: Activation) -> int:
    """The kernels' int8 code of a built-in (see :func:`has_code`)."""
    if not has_code(activation):
        raise ValueError(f"activation {activation.name!r} has no CUDA kernel code")
    return _BY_NAME[activation.name].code


# --------------------------------------------------------------------------- the expression language
_FUNCTIONS_C = {"exp": "exp", "expm1": "expm1", "tanh": "tanh", "abs": "fabs",
                "minimum": "_sm_minimum", "maximum": "_sm_maximum"}
_FUNCTIONS_NP = {"exp": "xp.exp", "expm1": "xp.expm1", "tanh": "xp.tanh", "abs": "xp.abs",
                 "minimum": "xp.minimum", "maximum": "xp.maximum"}
_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_COMPARE = {ast.Gt: ">", ast.Lt: "<", ast.GtE: ">=", ast.LtE: "<=", ast.Eq: "=="}


def _parse(source: str) -> tuple[list[tuple[str, ast.expr]], ast.expr]:
    """``(assignments, value)`` of a formula: ``name = expr`` lines, then an expression."""
    body = ast.parse(source.strip(), mode="exec").body
    if not body or not isinstance(body[-1], ast.Expr):
        raise ValueError(f"a formula must end with an expression: {source!r}")
    lets = []
    for statement in body[:-1]:
        if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1 and isinstance(statement.targets[0], ast.Name)):
            raise ValueError(f"a formula's statements must be 'name = expression': {source!r}")
        lets.append((statement.targets[0].id, statement.value))
    return lets, body[-1].value


def _render(node: ast.expr, c: bool, real: str) -> str:
    """One expression node as CUDA C (``c``) or as NumPy source."""
    r = lambda n: _render(n, c, real)  # noqa: E731
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return _constant(float(node.value), c, real)
    if isinstance(node, ast.Name):
        if node.id in CONSTANTS:
            return _constant(CONSTANTS[node.id], c, real)
        return node.id
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return f"(-{r(node.operand)})"
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return f"({r(node.left)} {_BINARY[type(node.op)]} {r(node.right)})"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):  # logical or of two conditions
        return f"({r(node.left)} {'||' if c else '|'} {r(node.right)})"
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _COMPARE:
        return f"({r(node.left)} {_COMPARE[type(node.ops[0])]} {r(node.comparators[0])})"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        name, args = node.func.id, [r(a) for a in node.args]
        if name == "where" and len(args) == 3:
            return f"({args[0]} ? {args[1]} : {args[2]})" if c else f"xp.where({args[0]}, {args[1]}, {args[2]})"
        if name == "ind" and len(args) == 1:  # the indicator [condition] as a number of the dtype
            return f"(({real})({args[0]}))" if c else f"({args[0]}).astype(dt)"
        table = _FUNCTIONS_C if c else _FUNCTIONS_NP
        if name in table and len(args) == (2 if name in ("minimum", "maximum") else 1):
            return f"{table[name]}({', '.join(args)})"
    raise ValueError(f"not in the kernels' expression language: {ast.dump(node)}")


def _constant(value: float, c: bool, real: str) -> str:
    if math.isinf(value):
        if c:  # no header's INFINITY macro: the preamble's bit pattern
            return f"({'' if value > 0 else '-'}_sm_inf<{real}>())"
        text = "np.inf" if value > 0 else "-np.inf"
    else:
        text = repr(float(value))
    return f"(({real}){text})" if c else f"dt({text})"


def render_c(source: str, target: str, real: str = "Real") -> str:
    """The CUDA C statements that compute formula ``source`` into the variable ``target``.

    Each ``name = expr`` line becomes ``const Real name = ...;``; every constant a
    ``(Real)`` cast, so that a float32 kernel computes in float32, as NumPy does.
    """
    lets, value = _parse(source)
    lines = [f"const {real} {name} = {_render(expr, True, real)};" for name, expr in lets]
    lines.append(f"{target} = {_render(value, True, real)};")
    return " ".join(lines)


def render_numpy(source: str) -> str:
    """The NumPy source (statements, then ``return``) of formula ``source``; names ``xp``, ``dt``, ``np`` free."""
    lets, value = _parse(source)
    lines = [f"{name} = {_render(expr, False, 'dt')}" for name, expr in lets]
    lines.append(f"return {_render(value, False, 'dt')}")
    return "\n".join(lines)


def _numpy_function(source: str, params: Sequence[str]) -> Callable[..., Any]:
    """Compile :func:`render_numpy`'s output as ``f(*params)``; ``dt`` is the dtype of the first."""
    body = "\n    ".join(render_numpy(source).splitlines())
    text = f"def twin({', '.join(params)}):\n    dt = {params[0]}.dtype.type\n    xp = _array_module({params[0]})\n    {body}\n"
    namespace: dict[str, Any] = {"np": np, "_array_module": array_module}
    exec(compile(text, f"<cuda twin {source!r}>", "exec"), namespace)  # noqa: S102 - our own table, not input
    return namespace["twin"]


@dataclass(frozen=True)
class NumpyTwin:
    """The NumPy twins of one spec: ``forward(z)``, ``derivative(z, a)``, and the clamped
    ``clamped_forward(z, lo, hi)`` and ``clamped_backward(da, z, a, lo, hi)`` that the kernels compute."""

    forward: Callable[[Any], Any]
    derivative: Callable[[Any, Any], Any]
    clamped_forward: Callable[..., Any]
    clamped_backward: Callable[..., Any]


def numpy_twin(name: str) -> NumpyTwin:
    """The NumPy twins of the activation ``name``, generated from :data:`ACTIVATION_SPECS`."""
    spec = _BY_NAME[name]
    forward = _numpy_function(spec.forward, ["z"])
    derivative = _numpy_function(spec.derivative, ["z", "a"])
    clamp = _numpy_function(CLAMP_FORWARD, ["f", "lo", "hi"])
    mask = _numpy_function(CLAMP_BACKWARD, ["da", "d", "a", "lo", "hi"])
    return NumpyTwin(
        forward=forward,
        derivative=derivative,
        clamped_forward=lambda z, lo, hi: clamp(forward(z), lo, hi),
        clamped_backward=lambda da, z, a, lo, hi: mask(da, derivative(z, a), a, lo, hi),
    )


def _preamble() -> str:
    """The device functions every kernel shares: ``_sm_forward(code, z, lo, hi)`` and
    ``_sm_backward(code, da, z, a, lo, hi)``, one ``case`` per spec, from the table."""
    forward_cases = "\n".join(
        f"    case {s.code}: {{ {render_c(s.forward, 'f')} break; }}" for s in ACTIVATION_SPECS)
    backward_cases = "\n".join(
        f"    case {s.code}: {{ {render_c(s.derivative, 'd')} break; }}" for s in ACTIVATION_SPECS)
    return f"""
template <typename Real> __device__ __forceinline__ Real _sm_inf() {{
  return (Real)__longlong_as_double(0x7ff0000000000000LL);
}}
template <typename Real> __device__ __forceinline__ Real _sm_nan() {{
  return (Real)__longlong_as_double(0x7ff8000000000000LL);
}}
template <typename Real> __device__ __forceinline__ Real _sm_minimum(Real x, Real y) {{
  return (x != x) ? x : ((y != y) ? y : (x < y ? x : y));
}}
template <typename Real> __device__ __forceinline__ Real _sm_maximum(Real x, Real y) {{
  return (x != x) ? x : ((y != y) ? y : (x > y ? x : y));
}}
template <typename Real> __device__ __forceinline__ Real _sm_forward(int code, Real z, Real lo, Real hi) {{
  Real f;
  switch (code) {{
{forward_cases}
    default: f = _sm_nan<Real>();
  }}
  {render_c(CLAMP_FORWARD, 'f')}
  return f;
}}
template <typename Real> __device__ __forceinline__ Real _sm_backward(int code, Real da, Real z, Real a, Real lo, Real hi) {{
  Real d;
  switch (code) {{
{backward_cases}
    default: d = _sm_nan<Real>();
  }}
  {render_c(CLAMP_BACKWARD, 'd')}
  return d;
}}
"""


# The Adam update of core.optim.adam_update_reference, operation for operation.
_ADAM_OPERATION = """
T gi = g * scale[0];
if (weight_decay != (T)0) gi = gi + weight_decay * p;
const T mi = m * beta1 + gi * one_minus_beta1;
const T vi = v * beta2 + (gi * gi) * one_minus_beta2;
m = mi;
v = vi;
p = p - (mi / (sqrt(vi) * inv_sqrt_bc2 + eps)) * step_size;
"""

# Gumbel-softmax weights and argmax of one neuron's row (core.phase1.gumbel_softmax_weights,
# then xp.argmax): s = (alpha + g) / tau; y = exp(s - max s) / sum; the first maximum of y.
_WEIGHTS_OPERATION = """
const ptrdiff_t base = (ptrdiff_t)i * K;
T top = -_sm_inf<T>();
for (int k = 0; k < K; ++k) {
  const T s = (has_noise ? logits[base + k] + noise[base + k] : logits[base + k]) / tau;
  weights[base + k] = s;
  top = (s > top || s != s) ? s : top;
}
T total = 0;
for (int k = 0; k < K; ++k) {
  const T e = exp(weights[base + k] - top);
  weights[base + k] = e;
  total += e;
}
long long best = 0;
T best_y = -_sm_inf<T>();
for (int k = 0; k < K; ++k) {
  const T y = weights[base + k] / total;
  weights[base + k] = y;
  if (y > best_y) { best_y = y; best = k; }
}
selected = best;
"""

# core.phase1.softmax_backward(dy, y) / tau for one neuron; dy is (K, N), y and dlogits (N, K).
_DLOGITS_OPERATION = """
const ptrdiff_t base = (ptrdiff_t)i * K;
T inner = 0;
for (int k = 0; k < K; ++k) inner += weights[base + k] * dy[(ptrdiff_t)k * N + i];
for (int k = 0; k < K; ++k) {
  const T y = weights[base + k];
  dlogits[base + k] = (y * (dy[(ptrdiff_t)k * N + i] - inner)) / tau;
}
"""

# core.losses.softmax_cross_entropy for row i of the (B, C) logits, operation for operation: the
# first maximum s_t (as xp.argmax: a NaN wins), the sum over the row of e^{s_j - s_t} with the
# maximum's own term 0, log p = (s - s_t) - log1p(sum); dlogits = e^{log p} / B, expm1(log p) / B at
# the label; log_p is the label's log-probability (NaN for a label outside [0, C), which the
# reference's check refuses and its indexing would not read).
_SOFTMAX_CE_OPERATION = """
const ptrdiff_t base = (ptrdiff_t)i * C;
int top = 0;
T best = logits[base];
for (int c = 1; c < C && best == best; ++c) {
  const T s = logits[base + c];
  if (s > best || s != s) { best = s; top = c; }
}
T total = 0;
for (int c = 0; c < C; ++c) total += (c == top) ? (T)0 : exp(logits[base + c] - best);
const T lse = log1p(total);
for (int c = 0; c < C; ++c) {
  const T lp = (logits[base + c] - best) - lse;
  dlogits[base + c] = ((c == label) ? expm1(lp) : exp(lp)) / batch;
}
log_p = (label >= 0 && label < C) ? (logits[base + label] - best) - lse : _sm_nan<T>();
"""

# core.optim.clip_factor's factor from the norm: min(max_norm / (norm + eps), 1), a NaN kept (np.minimum's).
_CLIP_OPERATION = """
const T f = max_norm / (norm + eps);
factor = (f < (T)1 || f != f) ? f : (T)1;
"""

_OPTIONS = ("--fmad=false",)

#: (rtol, atol) of the self-check and of the GPU tests, by dtype: elementwise kernels make the
#: reference's operations (bitwise equal is expected, a few ulps allowed for the device's math
#: library being reached through a different path); sums over the batch and over K are
#: accumulated in another order than CuPy's reductions, hence the wider "reduction" tolerance.
TOLERANCES = {
    "elementwise": {np.dtype(np.float32): (2e-6, 1e-7), np.dtype(np.float64): (1e-14, 1e-15)},
    "reduction": {np.dtype(np.float32): (2e-5, 2e-6), np.dtype(np.float64): (1e-12, 1e-13)},
}


# --------------------------------------------------------------------------- the switch
class CudaKernelWarning(UserWarning):
    """The CUDA kernels were switched on but a family of them fell back to the plain path."""


_switch: bool | None = None
_KERNELS: dict[str, "Kernels"] = {}


def enable(on: bool | None = True) -> None:
    """Switch the kernels on (True) or off (False) for engines built from now on; None: follow
    ``SMARTMIXED_CUDA_KERNELS`` again."""
    global _switch
    _switch = None if on is None else bool(on)


def enabled() -> bool:
    """True when the kernels are switched on (:func:`enable`, else ``SMARTMIXED_CUDA_KERNELS=1``)."""
    if _switch is not None:
        return _switch
    return os.environ.get(KERNELS_ENV, "0").strip().lower() in ("1", "true", "yes", "on")


def reset() -> None:
    """Forget every built and self-checked kernel set (and so its warning): for tests."""
    _KERNELS.clear()


def _applies_to(backend: Backend) -> bool:
    return backend.device == "gpu" and all(hasattr(backend.xp, k) for k in ("ElementwiseKernel", "ReductionKernel"))


def kernels_for(backend: Backend | None) -> "Kernels | None":
    """The kernels of ``backend`` when switched on and it is a GPU backend, self-checked on first
    use; else None. Ask :meth:`Kernels.usable` which families passed."""
    if backend is None or backend.device != "gpu" or not enabled() or not _applies_to(backend):
        return None
    return _kernels_of(backend)


def _kernels_of(backend: Backend) -> "Kernels":
    """This process's kernels of ``backend`` (built and self-checked if need be), whatever the switch says."""
    kernels = _KERNELS.get(backend.name)
    if kernels is None:
        kernels = _KERNELS[backend.name] = Kernels(backend)
        kernels.check()
    return kernels


def status() -> str:
    """What the switch says and, once self-checked, which families are in use."""
    if not enabled():
        return f"off (set {KERNELS_ENV}=1 to switch the CUDA kernels on)"
    if not _KERNELS:
        return "on (not yet used on a GPU)"
    return "; ".join(f"{name}: {kernels.summary()}" for name, kernels in _KERNELS.items())


# --------------------------------------------------------------------------- the kernels
@dataclass(frozen=True)
class NeuronTable:
    """A phase-2 layer as the kernels read it: per neuron, its activation ``code`` (N,) int8 and
    its clamp limits ``lo``, ``hi`` (N,) in one dtype (-inf/inf where a side is not clamped)."""

    code: Any
    lo: Any
    hi: Any


class Kernels:
    """The compiled kernels of one GPU backend, built on first call through ``backend.xp``.

    State: ``backend``; ``failures``, family -> why it fell back (empty until :meth:`check`);
    ``_built``, the kernel objects by name.
    """

    FAMILIES = ("phase2", "phase1", "adam", "clip", "loss")

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.xp = backend.xp
        self.failures: dict[str, str] = {}
        self.checked = False
        self._built: dict[str, Any] = {}
        self._ones: dict[Any, Any] = {}

    # One set per backend and process, like the backend itself: a copied network (a gradient
    # check's private copy) shares it, and a pickled one finds (or builds) its process's set.
    def __copy__(self) -> "Kernels":
        return self

    def __deepcopy__(self, memo: dict) -> "Kernels":
        return self

    def __reduce__(self):
        return (_kernels_of, (self.backend,))

    def usable(self, family: str) -> bool:
        """True if the family ran and agreed with the reference in :meth:`check`."""
        return self.checked and family not in self.failures

    def summary(self) -> str:
        return ", ".join(f"{f} {'on' if self.usable(f) else 'plain (' + self.failures.get(f, 'unchecked') + ')'}"
                         for f in self.FAMILIES)

    def check(self) -> None:
        """Run :func:`self_check` once; warn once, on one line, about the families that fell back."""
        if self.checked:
            return
        self.failures = self_check(self)
        self.checked = True
        if self.failures:
            what = "; ".join(f"{family}: {why}" for family, why in self.failures.items())
            warnings.warn(f"smartmixed_np CUDA kernels fall back to the plain CuPy path for {what}",
                          CudaKernelWarning, stacklevel=3)

    # -- building (lazily, by name) ------------------------------------------------
    def kernel(self, name: str) -> Any:
        """The kernel ``name`` (one of :data:`_KERNEL_SPECS`), built the first time."""
        built = self._built.get(name)
        if built is None:
            kind, args = _KERNEL_SPECS[name]
            try:
                kernel = getattr(self.xp, kind)(*args, name=f"smartmixed_{name}", preamble=_PREAMBLE, options=_OPTIONS)
            except Exception as err:  # noqa: BLE001 - whatever the array module raises, name the kernel
                raise KernelError(f"{name}: {type(err).__name__}: {err}") from err
            built = self._built[name] = _Named(name, kernel)
        return built

    def ones(self, dtype: Any) -> Any:
        """A device (1,) array of ones (Adam's scale when none is given)."""
        dtype = np.dtype(dtype)
        one = self._ones.get(dtype)
        if one is None:
            one = self._ones[dtype] = self.xp.ones(1, dtype=dtype)
        return one

    def neuron_table(self, choices: np.ndarray, pool: Sequence[Activation], clamp: float | None, dtype: Any) -> NeuronTable:
        """The :class:`NeuronTable` of a layer of ``choices`` (N,) over ``pool`` in ``dtype``, on the device."""
        choices = np.asarray(choices, dtype=np.int64)
        codes, lo, hi = _candidate_arrays(pool, clamp, dtype)
        return NeuronTable(self.backend.asarray(codes[choices]), self.backend.asarray(lo[choices]),
                           self.backend.asarray(hi[choices]))

    def candidate_table(self, pool: Sequence[Activation], clamp: float | None, dtype: Any) -> NeuronTable:
        """The pool's codes and limits (K,) on the device (a phase-1 layer's candidates)."""
        codes, lo, hi = _candidate_arrays(pool, clamp, dtype)
        return NeuronTable(self.backend.asarray(codes), self.backend.asarray(lo), self.backend.asarray(hi))


class KernelError(RuntimeError):
    """A kernel failed to build, compile or launch; the message starts with its name."""


class _Named:
    """A built kernel that names itself in any error (CuPy compiles at the first call)."""

    __slots__ = ("name", "kernel")

    def __init__(self, name: str, kernel: Any) -> None:
        self.name = name
        self.kernel = kernel

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.kernel(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            raise KernelError(f"{self.name}: {type(err).__name__}: {err}") from err


_EW, _RED = "ElementwiseKernel", "ReductionKernel"
#: Every kernel: (the array module's factory, its positional arguments).
_KERNEL_SPECS: dict[str, tuple[str, tuple]] = {
    "phase2_forward": (_EW, ("T z, int8 code, T lo, T hi", "T a", "a = _sm_forward<T>((int)code, z, lo, hi)")),
    "phase2_backward": (_EW, ("T da, T z, T a, int8 code, T lo, T hi", "T dz",
                              "dz = _sm_backward<T>((int)code, da, z, a, lo, hi)")),
    "phase1_weights": (_EW, ("raw T logits, raw T noise, bool has_noise, int32 K, T tau", "raw T weights, int64 selected",
                             _WEIGHTS_OPERATION)),
    "phase1_forward": (_EW, ("T z, int64 sel, raw int8 codes, raw T lo, raw T hi", "T out",
                             "out = _sm_forward<T>((int)codes[sel], z, lo[sel], hi[sel])")),
    "phase1_dz": (_EW, ("T dout, T z, T a, int64 sel, raw int8 codes, raw T lo, raw T hi", "T dz",
                        "dz = _sm_backward<T>((int)codes[sel], dout, z, a, lo[sel], hi[sel])")),
    "phase1_dy": (_RED, ("T dout, T z, int8 code, T lo, T hi", "T dy", "dout * _sm_forward<T>((int)code, z, lo, hi)",
                         "a + b", "dy = a", "0")),
    "phase1_dlogits": (_EW, ("raw T dy, raw T weights, int32 K, int32 N, T tau", "raw T dlogits", _DLOGITS_OPERATION)),
    "adam": (_EW, ("T g, raw T scale, T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, T inv_sqrt_bc2, T eps, "
                   "T step_size, T weight_decay", "T p, T m, T v", _ADAM_OPERATION)),
    "grad_norm": (_RED, ("T g", "T norm", "g * g", "a + b", "norm = sqrt(a)", "0")),
    "clip_factor": (_EW, ("T norm, T max_norm, T eps", "T factor", _CLIP_OPERATION)),
    "softmax_ce": (_EW, ("raw T logits, int64 label, int32 C, T batch", "raw T dlogits, T log_p", _SOFTMAX_CE_OPERATION)),
    "mean_loss": (_RED, ("T log_p, T batch", "T loss", "log_p", "a + b", "loss = -a / batch", "0")),
}
_PREAMBLE = _preamble()


def _candidate_arrays(pool: Sequence[Activation], clamp: float | None, dtype: Any) -> tuple[np.ndarray, ...]:
    """Host (K,) codes (int8) and limits (``dtype``, +-inf for no clamp) of ``pool``, by clamp_limits."""
    dtype = np.dtype(dtype)
    codes = np.array([activation_code(a) for a in pool], dtype=np.int8)
    limits = [clamp_limits(a, clamp) for a in pool]
    lo = np.array([-np.inf if l is None else l for l, _ in limits], dtype=dtype)
    hi = np.array([np.inf if h is None else h for _, h in limits], dtype=dtype)
    return codes, lo, hi


def _layout_like(workspace: Any, xp: Any, name: str, x: Any) -> Any:
    """A (B, N) buffer laid out as ``x``: a view of a (N, B) buffer when ``x`` is feature-major."""
    batch, width = x.shape
    feature_major = x.ndim == 2 and x.T.flags.c_contiguous and not x.flags.c_contiguous
    if workspace is None:
        return xp.empty((width, batch), dtype=x.dtype).T if feature_major else xp.empty((batch, width), dtype=x.dtype)
    if feature_major:
        return workspace.feature_major(name, batch, width, x.dtype)
    return workspace.get(name, (batch, width), x.dtype)


# --------------------------------------------------------------------------- phase 2
def coded_forward(kernels: Kernels, z: Any, table: NeuronTable, workspace: Any = None) -> Any:
    """$a_{bn} = \\mathrm{clip}(f_{c_n}(z_{bn}), lo_n, hi_n)$ in one launch; stands in for
    :func:`smartmixed_np.core.phase2.fixed_forward`.

    Args:
        z: (B, N) pre-activations (any layout; the output takes the same one).
        table: the layer's :class:`NeuronTable` in ``z``'s dtype.
        workspace: where ``a`` lives (buffer ``cuda_a``); a fresh array if None.

    Returns:
        ``a`` (B, N).
    """
    out = _layout_like(workspace, kernels.xp, "cuda_a", z)
    kernels.kernel("phase2_forward")(z, table.code, table.lo, table.hi, out)
    return out


def coded_backward(kernels: Kernels, da: Any, z: Any, a: Any, table: NeuronTable, workspace: Any = None) -> Any:
    """$dz_{bn} = da_{bn} f'_{c_n}(z_{bn}) [lo_n < a_{bn} < hi_n]$ in one launch; stands in for
    :func:`smartmixed_np.core.phase2.fixed_backward` (``clamp_grad="open"``).

    Args:
        da, z, a: (B, N) upstream gradient, the forward's input and output.
        table: as for :func:`coded_forward`.

    Returns:
        ``dz`` (B, N), in the buffer ``cuda_dz`` of ``workspace`` when given.
    """
    out = _layout_like(workspace, kernels.xp, "cuda_dz", da)
    kernels.kernel("phase2_backward")(da, z, a, table.code, table.lo, table.hi, out)
    return out


# --------------------------------------------------------------------------- phase 1
@dataclass
class KernelMixtureCache(MixtureCache):
    """The cache of :func:`phase1_forward`: a :class:`~smartmixed_np.core.phase1.MixtureCache` whose
    ``candidates`` is None (the kernels recompute each candidate where the backward needs it,
    rather than store the (K, B, N) stack), with ``out`` (B, N), the selected candidates' clamped
    outputs, and ``table``, the pool's codes and limits. Only :func:`phase1_backward` reads it."""

    out: Any = None
    table: NeuronTable | None = None


def phase1_forward(kernels: Kernels, z: Any, logits: Any, noise: Any, table: NeuronTable, *, tau: float,
                   clamp: float | None, workspace: Any = None) -> tuple[Any, KernelMixtureCache]:
    """:func:`smartmixed_np.core.phase1.mixture_forward` with ``hard=True`` and (N, K) or no noise, in two launches.

    $y_n = \\mathrm{softmax}((\\alpha_n + g_n)/\\tau)$, $s_n = \\arg\\max_k y_{nk}$ (one kernel over the
    N neurons); $out_{bn} = \\mathrm{clip}(f_{s_n}(z_{bn}), lo_{s_n}, hi_{s_n})$ (one over (B, N)).

    Args:
        z: (B, N); logits: (N, K); noise: (N, K) or None; table: the pool's (K,) codes and limits
        (:meth:`Kernels.candidate_table`) in ``z``'s dtype.

    Returns:
        ``out`` (B, N) and the :class:`KernelMixtureCache`.
    """
    xp = kernels.xp
    width, count = logits.shape
    logits = xp.ascontiguousarray(logits)
    noise_arg = logits if noise is None else xp.ascontiguousarray(noise)
    weights = xp.empty((width, count), dtype=logits.dtype)
    selected = xp.empty(width, dtype=np.int64)
    dtype = logits.dtype.type
    kernels.kernel("phase1_weights")(logits, noise_arg, noise is not None, np.int32(count), dtype(tau), weights, selected)
    out = _layout_like(workspace, xp, "cuda_out", z)
    kernels.kernel("phase1_forward")(z, selected, table.code, table.lo, table.hi, out)
    cache = KernelMixtureCache(z, None, weights, selected, noise, tau, clamp, out=out, table=table)
    return out, cache


def phase1_backward(kernels: Kernels, dout: Any, cache: KernelMixtureCache, workspace: Any = None) -> tuple[Any, Any]:
    """:func:`smartmixed_np.core.phase1.mixture_backward` (``clamp_grad="open"``) for a cache of
    :func:`phase1_forward`, in two launches and one reduction.

    $dz_{bn} = dout_{bn} D_{s_n bn}$; $dy_{kn} = \\sum_b dout_{bn} a_{kbn}$ (a reduction over the
    batch of the broadcast (K, B, N), each $a_k$ recomputed); $d\\alpha = \\mathrm{softmax\\_backward}(dy, y)/\\tau$.

    Returns:
        ``dz`` (B, N) and ``dlogits`` (N, K).
    """
    xp = kernels.xp
    table = cache.table
    width, count = cache.weights.shape
    dz = _layout_like(workspace, xp, "cuda_dz", dout)
    kernels.kernel("phase1_dz")(dout, cache.z, cache.out, cache.selected, table.code, table.lo, table.hi, dz)
    column = (count, 1, 1)
    dy = kernels.kernel("phase1_dy")(dout, cache.z, table.code.reshape(column), table.lo.reshape(column),
                                     table.hi.reshape(column), axis=1)  # (K, N)
    dy = xp.ascontiguousarray(dy)
    dlogits = xp.empty((width, count), dtype=cache.weights.dtype)
    kernels.kernel("phase1_dlogits")(dy, cache.weights, np.int32(count), np.int32(width),
                                     cache.weights.dtype.type(cache.tau), dlogits, size=width)
    return dz, dlogits


# --------------------------------------------------------------------------- Adam
def applies(kernels: Kernels, *arrays: Any) -> bool:
    """True if every array is one of ``kernels``' backend, all of one float dtype (float32/float64)."""
    dtype = arrays[0].dtype if arrays else None
    return dtype in FLOATS and all(kernels.backend.owns(a) and a.dtype == dtype for a in arrays)


def adam_update(kernels: Kernels, p: Any, g: Any, m: Any, v: Any, *, beta1: float, beta2: float, eps: float,
                step_size: float, inv_sqrt_bc2: float, weight_decay: float, scale: Any = None) -> None:
    """:func:`smartmixed_np.core.optim.adam_update_reference` in one launch: ``p``, ``m``, ``v`` in place.

    $g \\leftarrow g \\cdot$ ``scale`` ($+ \\lambda p$); $m \\leftarrow \\beta_1 m + (1-\\beta_1) g$;
    $v \\leftarrow \\beta_2 v + (1-\\beta_2) g^2$; $p \\leftarrow p - s\\, m / (\\sqrt v\\, r + \\epsilon)$.
    ``scale`` is read on the device (a 0-d device array such as
    :func:`~smartmixed_np.core.optim.clip_factor`'s, a number, or None for 1): nothing waits for the GPU.
    Every constant is rounded to the parameter's dtype first, as the reference's Python floats are.
    """
    dtype = p.dtype.type
    if scale is None:
        scale_arg = kernels.ones(p.dtype)
    elif backend_of(scale) is kernels.backend:
        scale_arg = scale.astype(p.dtype, copy=False).reshape(1)
    else:  # a host number: one small transfer
        scale_arg = kernels.backend.asarray(np.full(1, float(scale), dtype=p.dtype))
    kernels.kernel("adam")(g, scale_arg, dtype(beta1), dtype(1 - beta1), dtype(beta2), dtype(1 - beta2),
                           dtype(inv_sqrt_bc2), dtype(eps), dtype(step_size), dtype(weight_decay), p, m, v)


# --------------------------------------------------------------------------- clipping and the loss
def clip_factor(kernels: Kernels, flat: Any, max_norm: float, eps: float = 1e-6) -> tuple[Any, Any]:
    r""":func:`smartmixed_np.core.optim.clip_factor` of the gradients that tile ``flat`` (1-D, see
    :func:`smartmixed_np.fast.flat.flat_of`) in two launches instead of some twenty.

    $\lVert g \rVert = \sqrt{\sum_i g_i^2}$ (one reduction over the whole buffer), then
    $f = \min(1, \mathrm{max\_norm} / (\lVert g \rVert + \epsilon))$ (one launch, the
    reference's operations with the constants rounded to the dtype). The reference sums each
    parameter's squares and then the sums: the norm is the same to rounding (every term is
    positive, nothing cancels; ``"reduction"`` of :data:`TOLERANCES`), the factor then the
    reference's operations on it.

    Returns:
        ``(norm, factor)``, 0-d device arrays of ``flat``'s dtype.
    """
    norm = kernels.kernel("grad_norm")(flat)
    factor = kernels.xp.empty((), dtype=flat.dtype)
    dtype = flat.dtype.type
    kernels.kernel("clip_factor")(norm, dtype(max_norm), dtype(eps), factor)
    return norm, factor


def softmax_cross_entropy(kernels: Kernels, logits: Any, labels: Any) -> tuple[Any, Any]:
    r""":func:`smartmixed_np.core.losses.softmax_cross_entropy` (without its check) in two launches instead
    of some twenty: one kernel over the rows for the log-probabilities and ``dlogits``, one reduction for the mean.

    Row $b$: $t = \arg\max_c s_{bc}$, $\log p_{bc} = (s_{bc} - s_{bt}) - \mathrm{log1p}(\sum_{c \ne t}
    e^{s_{bc} - s_{bt}})$; $dlogits_{bc} = e^{\log p_{bc}}/B$ ($\mathrm{expm1}(\log p_{b y_b})/B$ at the
    label); $L = -(\sum_b \log p_{b y_b}) / B$. The reference's operations, but its two sums (over a
    row and over the batch) in another order: the same numbers to rounding (``"reduction"``).

    Args:
        logits: (B, C) of the kernels' backend, float32 or float64.
        labels: (B,) integer classes in ``[0, C)`` on the same device (a label outside gives a NaN loss).

    Returns:
        ``(loss, dlogits)``: a 0-d device array and (B, C).
    """
    xp = kernels.xp
    batch, classes = logits.shape
    logits = xp.ascontiguousarray(logits)
    dtype = logits.dtype.type
    dlogits = xp.empty((batch, classes), dtype=logits.dtype)
    log_p = xp.empty(batch, dtype=logits.dtype)
    kernels.kernel("softmax_ce")(logits, labels.astype(np.int64, copy=False), np.int32(classes), dtype(batch),
                                 dlogits, log_p)
    return kernels.kernel("mean_loss")(log_p, dtype(batch)), dlogits


# --------------------------------------------------------------------------- Gumbel noise on the device
class DeviceGumbel:
    """A layer's noise stream whose Gumbel draws are made on the device (optional; not the default).

    Stands in for :meth:`smartmixed_np.backend.SeededRNG.gumbel`: the same distribution,
    $g = -\\log(-\\log u)$, drawn by ``backend.xp.random.RandomState(seed).gumbel`` where ``seed``
    is drawn once from ``host``, so that a step makes no host-to-device copy. Everything else
    (``generator``, ``state``, ``uniform``...) is the host stream's, so checkpoints still store
    and restore ``host``; the device stream itself is NOT checkpointed (a resumed run draws other
    noise), and the draws differ from the host stream's: use it for speed, not for bit-for-bit runs.
    Use: ``layer.rng = DeviceGumbel(layer.rng, backend)`` for a
    :class:`~smartmixed_np.nn.layers.SmartMixedActivation` on the GPU.
    """

    def __init__(self, host: Any, backend: Backend) -> None:
        self.host = host
        self.backend = backend
        seed = int(host.generator.integers(0, 2**31 - 1))
        self._device = backend.xp.random.RandomState(seed)

    def gumbel(self, shape: tuple[int, ...], dtype: Any, backend: Backend) -> Any:
        """Standard Gumbel noise of ``shape`` and ``dtype`` on the device."""
        if backend is not self.backend:
            return self.host.gumbel(shape, dtype, backend)
        return self._device.gumbel(size=shape, dtype=dtype)

    def __getattr__(self, name: str) -> Any:  # the host stream's generator, uniform, normal...
        host = self.__dict__.get("host")
        if host is None:
            raise AttributeError(name)
        return getattr(host, name)

    @property
    def state(self) -> dict:
        return self.host.state

    @state.setter
    def state(self, value: dict) -> None:
        self.host.state = value


# --------------------------------------------------------------------------- the self-check
def dlogits_error_bound(dout: Any, cache: MixtureCache, rtol: float) -> Any:
    r"""How far the logits' gradient may lie from the reference's by rounding alone: (N, K).

    The sums over the batch, $dy_{kn} = \sum_b dout_{bn} a_{kbn}$, are accumulated in another order
    than the reference's, so each may differ by about ``rtol`` $S_{kn}$ with
    $S_{kn} = \sum_b |dout_{bn} a_{kbn}|$ (the sum of the terms' sizes, not of their values: they
    cancel), and $d\alpha_{nk} = y_{nk}(dy_{kn} - \sum_j y_{nj} dy_{jn})/\tau$ carries that as
    ``rtol`` $y_{nk}(S_{kn} + \sum_j y_{nj} S_{jn})/\tau$. A tolerance relative to $d\alpha$
    itself fails where the difference cancels to a small number, as it does for a neuron whose
    candidates agree.

    Args:
        dout: (B, N); cache: the reference's :class:`~smartmixed_np.core.phase1.MixtureCache`
            (shared noise: ``weights`` (N, K), ``candidates`` (K, B, N)).
    """
    xp = array_module(dout)
    sizes = xp.abs(dout[None] * cache.candidates).sum(axis=1).T  # S^T, (N, K)
    y = cache.weights
    return rtol * y * (sizes + (y * sizes).sum(axis=1, keepdims=True)) / cache.tau


def _disagreement(kernel: str, got: Any, want: Any, dtype: Any, kind: str = "elementwise",
                  bound: Any = None) -> str | None:
    """None if ``got`` matches ``want`` within :data:`TOLERANCES` (plus ``bound``, an absolute
    allowance per entry, where given), else a one-line reason."""
    got, want = to_host(got), to_host(want)
    if got.shape != want.shape:
        return f"{kernel} gave shape {got.shape}, the reference {want.shape}"
    if got.dtype.kind in "iub":
        bad = int(np.count_nonzero(got != want))
        return None if bad == 0 else f"{kernel} disagrees with the reference at {bad} of {got.size} entries ({np.dtype(dtype).name})"
    rtol, atol = TOLERANCES[kind][np.dtype(dtype)]
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.abs(got.astype(np.float64) - want.astype(np.float64))
        limit = atol + rtol * np.abs(want.astype(np.float64)) + (0.0 if bound is None else to_host(bound))
    bad = ~(error <= limit)
    if not bad.any():
        return None
    return (f"{kernel} ({np.dtype(dtype).name}) differs from the reference by up to {float(np.nanmax(np.where(bad, error, 0))):.3g} "
            f"(rtol {rtol:g}, atol {atol:g}; {int(bad.sum())} of {got.size} entries)")


def _check_phase2(kernels: Kernels, rng: np.random.Generator, dtype: Any) -> str | None:
    from ..core.activations import get_activation

    pool = tuple(get_activation(s.name) for s in ACTIVATION_SPECS)
    clamp = 1.5  # active on several candidates' sides, so the mask is exercised
    choices = np.repeat(np.arange(len(pool)), 3)
    rng.shuffle(choices)
    batch, width = 7, len(choices)
    backend = kernels.backend
    z = backend.asarray(rng.normal(0.0, 2.5, (batch, width)).astype(dtype))
    da = backend.asarray(rng.normal(0.0, 1.0, (batch, width)).astype(dtype))
    groups = make_groups(choices, pool, backend, contiguous=False, clamp=clamp)
    table = kernels.neuron_table(choices, pool, clamp, dtype)
    a_ref, cache = fixed_forward(z, groups)
    a = coded_forward(kernels, z, table)
    why = _disagreement("phase2_forward", a, a_ref, dtype)
    if why is None:
        dz = coded_backward(kernels, da, z, a_ref, table)
        why = _disagreement("phase2_backward", dz, fixed_backward(da, cache, groups), dtype)
    return why


def _check_phase1(kernels: Kernels, rng: np.random.Generator, dtype: Any) -> str | None:
    from ..core.activations import get_activation

    pool = tuple(get_activation(s.name) for s in ACTIVATION_SPECS)
    clamp, tau, batch, width = 1.5, 0.7, 9, 11
    backend = kernels.backend
    z = backend.asarray(rng.normal(0.0, 2.5, (batch, width)).astype(dtype))
    dout = backend.asarray(rng.normal(0.0, 1.0, (batch, width)).astype(dtype))
    logits = backend.asarray(rng.normal(0.0, 1.0, (width, len(pool))).astype(dtype))
    noise = backend.asarray(rng.gumbel(size=(width, len(pool))).astype(dtype))
    table = kernels.candidate_table(pool, clamp, dtype)
    out_ref, cache_ref = mixture_forward(z, logits, noise, pool, tau=tau, hard=True, clamp=clamp)
    out, cache = phase1_forward(kernels, z, logits, noise, table, tau=tau, clamp=clamp)
    why = (_disagreement("phase1_weights", cache.weights, cache_ref.weights, dtype, "reduction")
           or _disagreement("phase1_weights (argmax)", cache.selected, cache_ref.selected, dtype)
           or _disagreement("phase1_forward", out, out_ref, dtype))
    if why is None:  # the backward from the reference's forward output: f' read off ``a`` (tanh's
        # 1 - a^2 near saturation) would turn the forward's few ulps into many
        dz_ref, dlogits_ref = mixture_backward(dout, cache_ref, pool)
        dz, dlogits = phase1_backward(kernels, dout, replace(cache, out=out_ref))
        why = (_disagreement("phase1_dz", dz, dz_ref, dtype)
               or _disagreement("phase1_dy/phase1_dlogits", dlogits, dlogits_ref, dtype, "reduction",
                                dlogits_error_bound(dout, cache_ref, TOLERANCES["reduction"][np.dtype(dtype)][0])))
    return why


def _check_adam(kernels: Kernels, rng: np.random.Generator, dtype: Any) -> str | None:
    backend = kernels.backend
    arrays = [rng.normal(0.0, 1.0, 37).astype(dtype) for _ in range(2)] + [rng.normal(0.0, 0.1, 37).astype(dtype),
                                                                          rng.uniform(0.0, 0.1, 37).astype(dtype)]
    mine = [backend.asarray(a) for a in arrays]
    ref = [backend.asarray(a) for a in arrays]
    scale = backend.asarray(np.asarray(0.7, dtype=dtype))
    settings = dict(beta1=0.9, beta2=0.999, eps=1e-8, step_size=1e-3 / (1 - 0.9**3),
                    inv_sqrt_bc2=1.0 / math.sqrt(1 - 0.999**3), weight_decay=0.01)
    adam_update(kernels, mine[0], mine[1], mine[2], mine[3], scale=scale, **settings)
    adam_update_reference(ref[0], ref[1], ref[2], ref[3], scratch=kernels.xp.empty_like(ref[0]), scale=scale, **settings)
    for label, got, want in zip(("p", "g", "m", "v"), mine, ref):
        why = _disagreement(f"adam ({label})", got, want, dtype)
        if why is not None:
            return why
    return None


def _check_clip(kernels: Kernels, rng: np.random.Generator, dtype: Any) -> str | None:
    from ..core.optim import clip_factor as reference

    backend = kernels.backend
    flat = backend.asarray(rng.normal(0.0, 1.0, 1000).astype(dtype))
    grads = {"W": flat[:600].reshape(20, 30), "b": flat[600:]}
    for max_norm in (3.0, 1e6):  # clipping, and a factor of 1
        norm_ref, factor_ref = reference(grads, max_norm)
        norm, factor = clip_factor(kernels, flat, max_norm)
        why = (_disagreement("grad_norm", norm, norm_ref, dtype, "reduction")
               or _disagreement("clip_factor", factor, factor_ref, dtype, "reduction"))
        if why is not None:
            return why
    return None


def _check_loss(kernels: Kernels, rng: np.random.Generator, dtype: Any) -> str | None:
    from ..core.losses import softmax_cross_entropy as reference

    backend = kernels.backend
    logits = rng.normal(0.0, 3.0, (9, 5)).astype(dtype)
    logits[1, 2:4] = logits[1].max() + 1  # a tie for the maximum
    logits[2] *= 1e4  # a confident row: p - 1 near 0 at the label
    logits = backend.asarray(logits)
    labels = backend.asarray(rng.integers(0, 5, 9))
    loss_ref, dlogits_ref = reference(logits, labels, check=False)
    loss, dlogits = softmax_cross_entropy(kernels, logits, labels)
    return (_disagreement("softmax_ce/mean_loss", loss, loss_ref, dtype, "reduction")
            or _disagreement("softmax_ce", dlogits, dlogits_ref, dtype, "reduction"))


_CHECKS = {"phase2": _check_phase2, "phase1": _check_phase1, "adam": _check_adam, "clip": _check_clip,
           "loss": _check_loss}


def self_check(kernels: Kernels, seed: int = 0) -> dict[str, str]:
    """Run every kernel once per float dtype on small random input against the reference
    functions on the same (device) arrays.

    Returns:
        family -> why it must take the plain path (a compile or launch error, or the first
        kernel that disagrees beyond :data:`TOLERANCES`); empty when all agree.
    """
    failures: dict[str, str] = {}
    for family, check in _CHECKS.items():
        rng = np.random.default_rng(seed)
        for dtype in FLOATS:
            try:
                why = check(kernels, rng, dtype)
            except Exception as err:  # noqa: BLE001 - any failure to build or run means: take the plain path
                what = str(err) if isinstance(err, KernelError) else f"{type(err).__name__}: {err}"
                why = " ".join(f"failed to build or run ({np.dtype(dtype).name}): {what}".split())[:300]
            if why is not None:
                failures[family] = why
                break
    return failures
