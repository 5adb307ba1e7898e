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
  checks every pair for equality. In float64 the transcendental functions (``exp``,
  ``expm1``, ``tanh``) are NumPy's, applied in place between compiled passes (Numba's
  would be the C library's, scalar, and rounded differently from NumPy's vectorised ones).
  One exception, stated where it applies: in float32, the phase-2 forward
  (:func:`grouped_forward`) and phase 1's shared exponentials (:func:`shared_exponentials`)
  compute $e^x$ and $\mathrm{expm1}(x)$ inside the loop (:func:`_exp_parts`: a range
  reduction and a polynomial in float32 arithmetic, which the compiler vectorises), one
  pass where NumPy's functions took three. Their values are within a few ulps of NumPy's
  (each bound stated and measured over every float32 input), closer than NumPy's to the
  exact values, and the same bits on every instruction set.
* Compiled on first use, and cached on disk by Numba, so only the first run on a
  machine pays the compilation (about a second per loop).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.activations import ELU_ALPHA, LEAKY_SLOPE, SELU_ALPHA, SELU_SCALE, clamp_limits
from .kernels import has_kernel

__all__ = [
    "JIT_ENV", "enabled", "status", "applies", "exponentials_in_loop", "adam_update", "ACTIVATION_CODES", "GroupTable", "group_table", "grouped_forward",
    "grouped_backward", "CandidateTable", "candidate_table", "selected_backward", "selected_group_table", "selected_forward",
    "shared_exponentials", "shared_candidate_values", "shared_backward",
    "SELECTION_MAX_K", "selection_applies", "softmax_selection", "softmax_backward_scaled",
]

JIT_ENV = "SMARTMIXED_JIT"
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _switched_off() -> bool:
    return os.environ.get(JIT_ENV, "1").strip().lower() in ("0", "false", "no", "off")


@functools.lru_cache(maxsize=None)
def _numba() -> Any:
    """The ``numba`` module, or None when it is missing or switched off."""
    if _switched_off():
        return None
    try:
        import numba
    except ImportError:
        return None
    return numba


def enabled() -> bool:
    """True when the compiled loops are in use: Numba is installed and not switched off."""
    return _numba() is not None


def status() -> str:
    """``"numba <version>"`` when the compiled loops are in use, else why not."""
    numba = _numba()
    if numba is not None:
        return f"numba {numba.__version__}"
    if _switched_off():
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


def _jit(function: Any = None, *, reassociate: bool = False, helper: bool = False, inline: bool = False) -> Any:
    """Compile ``function`` with Numba on first call (no fast-math: exact IEEE operations).

    ``error_model="numpy"``: a division by zero gives inf or nan as in NumPy, rather
    than raising; it also lets the compiler vectorise loops that divide.

    ``reassociate=True`` (``@_jit(reassociate=True)``) lets the compiler reorder sums
    (fast-math ``reassoc`` alone), which it needs to vectorise a reduction; the order it
    picks is fixed in the compiled code, so two calls give the same bits, but it is not
    NumPy's: for sums whose reference is a tolerance, not bits. The wrapper's
    ``dispatcher()`` is the compiled function itself, for passing into another loop
    (a compiled loop can call only a Numba function, not this wrapper).

    ``helper=True``: a function that other loops call. A loop
    finds it among the module's globals when it is compiled, under the name that
    :data:`_HELPERS` gives it, which :func:`_bind_helpers` binds to the compiled
    function first. (Passed as an argument instead, a compiled function kept Numba
    from reusing the on-disk cache: a compilation every run.)

    ``inline=True``: a helper whose body Numba copies into each loop that calls it
    (``inline="always"``), so that the compiler sees the caller's loop and the helper's
    together (for :func:`_float32_row_forward`: a call per row kept its loops a third slower).
    """
    if function is None:
        return functools.partial(_jit, reassociate=reassociate, helper=helper, inline=inline)
    compiled = None
    options = dict(error_model="numpy", nogil=True, **({"fastmath": {"reassoc"}} if reassociate else {}))
    if inline:
        options["inline"] = "always"

    def dispatcher() -> Any:
        nonlocal compiled
        if compiled is None:
            if not helper:
                _bind_helpers()
            njit = _numba().njit
            try:
                compiled = njit(cache=True, **options)(function)
            except RuntimeError:  # no writable place for Numba's cache: compile every run
                compiled = njit(cache=False, **options)(function)
        return compiled

    @functools.wraps(function)
    def call(*args: Any) -> Any:
        return dispatcher()(*args)

    call.dispatcher = dispatcher
    return call


def _bind_helpers() -> None:
    """Bind each helper's compiled function to its global name (see :func:`_jit`)."""
    for name, helper in _HELPERS.items():
        if globals()[name] is None:
            globals()[name] = helper.dispatcher()


# --------------------------------------------------------------------------- Adam
@_jit
def _adam_loop(p, g, m, v, scale, beta1, one_minus_beta1, beta2, one_minus_beta2, inv_sqrt_bc2, eps, step_size, weight_decay):
    for i in range(p.shape[0]):
        gi = g[i] * scale
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
    scale: float = 1.0,
) -> None:
    r"""One Adam update of ``p``, ``m``, ``v`` in place, in one pass.

    Per element, with $g \leftarrow g \cdot$ ``scale`` (a gradient-clipping factor,
    applied on the fly) and then $g \leftarrow g + \lambda p$ when ``weight_decay``
    $\lambda \ne 0$:
    $m \leftarrow \beta_1 m + (1-\beta_1) g$, $v \leftarrow \beta_2 v + (1-\beta_2) g^2$,
    $p \leftarrow p - s \cdot m / (\sqrt{v}\, r + \epsilon)$ with $s$ = ``step_size``
    and $r$ = ``inv_sqrt_bc2``.

    Reference: :func:`smartmixed_np.nn.optim.adam_update_reference` (13 NumPy passes),
    bitwise equal.

    Args:
        p, g, m, v: arrays of one shape, accepted by :func:`applies`; ``g`` is read only.
        beta1, beta2, eps, step_size, inv_sqrt_bc2, weight_decay, scale: numbers, rounded
            to the arrays' dtype as NumPy rounds a Python scalar in ``a * x``.
    """
    if not (p.shape == g.shape == m.shape == v.shape):
        raise ValueError(f"adam_update needs arrays of one shape, got {p.shape}, {g.shape}, {m.shape}, {v.shape}")
    t = p.dtype.type
    _adam_loop(
        p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), t(scale),
        t(beta1), t(1 - beta1), t(beta2), t(1 - beta2), t(inv_sqrt_bc2), t(eps), t(step_size), t(weight_decay),
    )


# --------------------------------------------------------------------------- phase-2 groups
# The codes by which the group loops know the built-in activations.
RELU, SIGMOID, TANH, LEAKY_RELU, ELU, SELU = range(6)
ACTIVATION_CODES = {"relu": RELU, "sigmoid": SIGMOID, "tanh": TANH, "leaky_relu": LEAKY_RELU, "elu": ELU, "selu": SELU}


@dataclass(frozen=True)
class GroupTable:
    r"""A phase-2 layer's activation groups, as the compiled group loops read them.

    The layer's arrays are feature-major, (N, B): row ``n`` holds neuron ``n``'s values
    over the batch. The groups are runs of *positions* ``i`` in ``rows``:

    Attributes:
        rows: (N,) int64; ``rows[i]`` is the neuron at position ``i`` (the identity for
            contiguous groups; the sorting permutation for masked groups).
        starts, stops: (G,) int64; group ``k`` holds positions ``starts[k]:stops[k]``.
        codes: (G,) int64 activation codes (:data:`ACTIVATION_CODES`).
        lo, hi: (G,) the clamp of each group in the arrays' dtype; ``-inf``/``inf``
            stands for no clamp on that side.
        constants: the activations' constants, rounded to the dtype (see :func:`group_table`).
        prepass: ``(code, start, stop)`` runs of positions whose transcendental part
            NumPy computes first; neighbouring elu and selu groups share one run.
        idle: ``(start, stop)`` runs of positions with no transcendental part (relu,
            leaky relu), whose scratch rows are neither written nor read: the finishing
            loop takes them in an inner loop of their own, from ``z`` alone (its loop for
            the other groups evaluates every branch for every element and selects, and
            stale scratch values there, NaN or subnormals, slowed it tenfold; zeroing
            those rows first, as before, cost a pass).
        prepass_array: the same as a (R, 3) int64 array, for the compiled loop.
        row_codes, row_lo, row_hi: (N,) the code and clamp of each neuron, in the
            neurons' own order (for the row-wise backward loop).
        identity: (N,) ``arange(N)``.
        exp_rows: (R,) int64, the elu and selu neurons in the neurons' own order, whose
            derivative needs $e^{\min(z, 0)}$ (computed by NumPy for these rows only).
    """

    rows: np.ndarray
    starts: np.ndarray
    stops: np.ndarray
    codes: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    constants: tuple
    prepass: tuple
    idle: tuple
    prepass_array: np.ndarray
    row_codes: np.ndarray
    row_lo: np.ndarray
    row_hi: np.ndarray
    identity: np.ndarray
    exp_rows: np.ndarray


def group_table(groups: Any, rows: np.ndarray, dtype: Any) -> GroupTable:
    """The :class:`GroupTable` of ``groups`` (slices of positions, in order) for arrays of ``dtype``.

    Args:
        groups: :class:`~smartmixed_np.core.phase2.Group` objects whose ``columns`` are
            slices of positions covering ``0..N`` in order, each a built-in activation.
        rows: (N,) host ints, the neuron at each position.
        dtype: float32 or float64.
    """
    n = len(rows)
    starts, stops = [], []
    for group in groups:
        start, stop, _ = group.columns.indices(n)
        starts.append(start)
        stops.append(stop)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    codes = np.asarray([ACTIVATION_CODES[g.activation.name] for g in groups], dtype=np.int64)
    lo = np.asarray([-np.inf if g.lo is None else g.lo for g in groups], dtype=dtype)
    hi = np.asarray([np.inf if g.hi is None else g.hi for g in groups], dtype=dtype)
    prepass, idle = _runs(codes.tolist(), starts, stops)
    group_of_row = np.empty(n, dtype=np.int64)  # each neuron's group, in the neurons' own order
    for k, (start, stop) in enumerate(zip(starts, stops)):
        group_of_row[rows[start:stop]] = k
    return GroupTable(
        rows=rows,
        starts=np.asarray(starts, dtype=np.int64),
        stops=np.asarray(stops, dtype=np.int64),
        codes=codes,
        lo=lo,
        hi=hi,
        constants=_constants(dtype),
        prepass=prepass,
        idle=idle,
        prepass_array=np.asarray(prepass, dtype=np.int64).reshape(-1, 3),
        row_codes=codes[group_of_row],
        row_lo=lo[group_of_row],
        row_hi=hi[group_of_row],
        identity=_identity(n),
        exp_rows=_exp_rows(codes[group_of_row]),
    )


def _runs(codes: list, starts: list, stops: list) -> tuple[tuple, tuple]:
    """A group table's ``(prepass, idle)`` runs (see :class:`GroupTable`) from its groups' codes and spans."""
    prepass: list[tuple[int, int, int]] = []
    idle: list[tuple[int, int]] = []
    for code, start, stop in zip(codes, starts, stops):
        if code in (RELU, LEAKY_RELU):
            idle.append((start, stop))
            continue
        code = ELU if code == SELU else code  # both need expm1(min(z, 0)); sorted by code, elu's run meets selu's
        if prepass and prepass[-1][0] == code and prepass[-1][2] == start:
            prepass[-1] = (code, prepass[-1][1], stop)
        else:
            prepass.append((code, start, stop))
    return tuple(prepass), tuple(idle)


def _exp_rows(row_codes: np.ndarray) -> np.ndarray:
    r"""For (N,) activation codes: the rows whose derivative needs $e^{\min(z, 0)}$ (elu, selu)."""
    return np.flatnonzero((row_codes == ELU) | (row_codes == SELU))


def _constants(dtype: Any) -> tuple:
    """The activations' constants rounded to ``dtype``, as NumPy rounds them in ``a * x``."""
    t = np.dtype(dtype).type
    # The selu derivative's cap, as the NumPy kernel forms it: BIG + lambda in the dtype.
    big_cap = t(1e30) + t(SELU_SCALE)
    return (t(0), t(1), t(LEAKY_SLOPE), t(ELU_ALPHA), t(SELU_ALPHA), t(SELU_SCALE), t(SELU_SCALE * SELU_ALPHA), big_cap)


@_jit
def _prepass_arguments_loop(zT, t, rows, spans, zero):
    # t[i] = the argument of the transcendental function at position i:
    # -|z| (sigmoid), z (tanh), min(z, 0) (elu, selu).
    width = zT.shape[1]
    for k in range(spans.shape[0]):
        code = spans[k, 0]
        for i in range(spans[k, 1], spans[k, 2]):
            z, o = zT[rows[i]], t[i]
            for j in range(width):
                x = z[j]
                if code == SIGMOID:
                    x = -abs(x)
                elif code != TANH and x > zero:
                    x = zero
                o[j] = x


@_jit
def _exp_arguments_loop(zT, rows, t, zero):
    # t[k] = min(z, 0) of neuron rows[k]: the argument of the exp in the elu and selu derivatives.
    for k in range(rows.shape[0]):
        z, o = zT[rows[k]], t[k]
        for j in range(z.shape[0]):
            x = z[j]
            if x > zero:
                x = zero
            o[j] = x


def _exponentials(zT: np.ndarray, rows: np.ndarray, zero: Any) -> np.ndarray:
    r"""(R, B): $e^{\min(z, 0)}$ of the neuron rows ``rows`` of ``zT`` (N, B), in that order.

    The argument is gathered by a compiled pass and the ``exp`` is NumPy's, in place
    over one contiguous block: the same function, on the same operands, as the
    kernels of :mod:`smartmixed_np.fast.kernels` (whose ``clip`` gives the same argument
    up to the sign of a zero, and $e^{\pm 0} = 1$).
    """
    t = np.empty((rows.shape[0], zT.shape[1]), dtype=zT.dtype)
    _exp_arguments_loop(zT, rows, t, zero)
    np.exp(t, out=t)
    return t


def exponentials_in_loop(dtype: Any) -> bool:
    """Whether the loops compute the exponentials of arrays of ``dtype`` themselves (float32,
    by :func:`_exp_parts`), rather than NumPy's functions into (N, B) buffers first (float64).
    Only then do the callers need to hand over those buffers: ``scratch`` of
    :func:`grouped_forward` and :func:`selected_forward`, ``tT`` and ``mT`` of :func:`shared_backward`."""
    return np.dtype(dtype) == np.float32


# --------------------------------------------------------------------------- float32 exp in the loop
# exp and expm1 of x <= 0 in float32 arithmetic, inside a compiled loop that the compiler
# vectorises: NumPy's exp is one pass of its own (with the passes that prepare its argument
# and use its result, three passes where one suffices), and the C library's, which a
# compiled loop would call, is scalar. Only for arguments x <= 0: -|z| and min(z, 0).
#
# x = k ln 2 + r with k an integer and |r| <= ln(2)/2 (Cody and Waite's reduction: ln 2 in
# two parts, the first with 16 significant bits, so that k ln2_hi is exact for |k| < 2^8);
# expm1(r) = r + r^2 P(r) with P of degree 4 (a minimax fit of (expm1(r) - r)/r^2 on
# [-ln(2)/2, ln(2)/2], relative error 1.7e-8 with these float32 coefficients, a seventh of
# float32's epsilon); and 2^k as the bits ((k + 127 + 64) << 23), that is 2^(k+64), scaled back by
# 2^-64 at the end so that results down to the smallest subnormal come out right.
_EXP_LOG2E = np.float32(1.4426950408889634)
_EXP_SHIFT = np.float32(12582912.0)  # 1.5 * 2^23: adding it rounds x log2(e) to the integer k in the low bits
_EXP_LN2_HI = np.float32(0.693145751953125)
_EXP_LN2_LO = np.float32(1.4286068203094173e-06)  # ln 2 - _EXP_LN2_HI
_EXP_P = tuple(np.float32(c) for c in (0.49999997019767761, 0.16666543483734131, 0.041667200624942780,
                                         0.0083665139973163605, 0.0013882522471249104))
_EXP_FLOOR = np.float32(-104.0)  # exp(-104) < 2^-150: rounds to 0 (and -inf comes here)
_EXP_TWO_M64 = np.float32(2.0**-64)


@_jit(helper=True)
def _exp_parts(x):
    # For float32 x <= 0 (or NaN): (q, p) with expm1(r) = q and 2^(k+64) = p, x = k ln 2 + r, so that
    # exp(x) = (q p + p) 2^-64 and expm1(x) = (q p) 2^-64 + (p 2^-64 - 1). NaN gives q = NaN.
    if x < _EXP_FLOOR:
        x = _EXP_FLOOR
    shifted = x * _EXP_LOG2E + _EXP_SHIFT
    k = shifted - _EXP_SHIFT
    r = (x - k * _EXP_LN2_HI) - k * _EXP_LN2_LO
    p2, p3, p4, p5, p6 = _EXP_P
    q = (((((p6 * r + p5) * r + p4) * r + p3) * r + p2) * r) * r + r
    bits = np.float32(shifted).view(np.int32) - np.int32(0x4B400000)  # k, from the low bits of the sum
    return q, np.int32((bits + 191) << 23).view(np.float32)


_exp_parts_compiled = None  # _exp_parts's compiled function, once bound by _bind_helpers


# In the loops below a clamp is written out as "if y < lo: y = lo; if y > hi: y = hi",
# which keeps NaN as NaN, as the clip ufunc does. The branch on the activation sits in
# the innermost loop: the compiler turns it into straight-line vector code that
# evaluates the branches and selects, which measured faster here than one loop per
# activation.
@_jit
def _grouped_forward_loop(zT, t, out, rows, starts, stops, codes, lo, hi, constants):
    zero, one, slope, elu_alpha, selu_alpha, selu_scale, _, _ = constants
    width = zT.shape[1]
    for k in range(codes.shape[0]):
        code, l, h = codes[k], lo[k], hi[k]
        if code == RELU:  # relu's clamp: [0, hi]
            l = zero
        if code == RELU or code == LEAKY_RELU:  # idle rows: no scratch row (see GroupTable.idle)
            for i in range(starts[k], stops[k]):
                z, o = zT[rows[i]], out[rows[i]]
                for j in range(width):
                    y = z[j]
                    if code == LEAKY_RELU:  # leaky relu: max(0.01 z, z); relu: z, clamped to [0, hi]
                        y = z[j] * slope
                        if z[j] > y:
                            y = z[j]
                    if y < l:
                        y = l
                    if y > h:
                        y = h
                    o[j] = y
            continue
        for i in range(starts[k], stops[k]):
            z, e, o = zT[rows[i]], t[i], out[rows[i]]
            for j in range(width):
                if code == SIGMOID:  # sigmoid: exp(min(z, 0)) / (1 + e), e = exp(-|z|)
                    y = (one if z[j] >= zero else e[j]) / (e[j] + one)
                elif code == TANH:  # tanh: e = tanh(z)
                    y = e[j]
                elif code == ELU:  # elu: max(alpha e, z), e = expm1(min(z, 0))
                    y = e[j] * elu_alpha
                    if z[j] > y:
                        y = z[j]
                else:  # selu: scale (alpha e + max(z, 0)), e = expm1(min(z, 0))
                    positive = z[j]
                    if positive < zero:
                        positive = zero
                    y = (e[j] * selu_alpha + positive) * selu_scale
                if y < l:
                    y = l
                if y > h:
                    y = h
                o[j] = y


@_jit(helper=True, inline=True)
def _float32_row_forward(code, l, h, z, o, constants):
    # One neuron's row in float32: o = clamp(f(z), l, h) for the activation of the code, each
    # transcendental function by _exp_parts in the loop (one inner loop per code: the branch
    # on it is outside the loop, and each loop vectorised). Where z >= 0 the value does not
    # come from the exponential (elu: z; selu's exponential part: min(z, 0)), so zeros keep
    # their sign.
    zero, one, slope, elu_alpha, selu_alpha, selu_scale, _, _ = constants
    two, scale_back = np.float32(2.0), _EXP_TWO_M64
    width = z.shape[0]
    if code == RELU:  # z, clamped to [0, hi]
        l = zero
        for j in range(width):
            y = z[j]
            y = l if y < l else y
            o[j] = h if y > h else y
    elif code == LEAKY_RELU:  # max(0.01 z, z)
        for j in range(width):
            y = z[j] * slope
            y = z[j] if z[j] > y else y
            y = l if y < l else y
            o[j] = h if y > h else y
    elif code == SIGMOID:  # exp(min(z, 0)) / (1 + e), e = exp(-|z|)
        for j in range(width):
            q, p = _exp_parts_compiled(-abs(z[j]))
            e = (q * p + p) * scale_back
            y = (one if z[j] >= zero else e) / (e + one)
            y = l if y < l else y
            o[j] = h if y > h else y
    elif code == TANH:  # sign(z) (-m) / (2 + m), m = expm1(-2|z|): (1 - e^{-2|z|}) / (1 + e^{-2|z|})
        for j in range(width):
            q, p = _exp_parts_compiled(-two * abs(z[j]))
            m = (q * p) * scale_back + (p * scale_back - one)
            y = math.copysign(-m / (m + two), z[j])
            y = l if y < l else y
            o[j] = h if y > h else y
    elif code == ELU:  # z, else expm1(z)
        for j in range(width):
            x = zero if z[j] > zero else z[j]
            q, p = _exp_parts_compiled(x)
            m = (q * p) * scale_back + (p * scale_back - one)
            y = z[j] if z[j] >= zero else m * elu_alpha
            y = l if y < l else y
            o[j] = h if y > h else y
    else:  # selu: scale (alpha expm1(min(z, 0)) + max(z, 0))
        for j in range(width):
            x = zero if z[j] > zero else z[j]
            q, p = _exp_parts_compiled(x)
            m = (q * p) * scale_back + (p * scale_back - one)
            m = x if x >= zero else m
            positive = zero if z[j] < zero else z[j]
            y = (m * selu_alpha + positive) * selu_scale
            y = l if y < l else y
            o[j] = h if y > h else y


_float32_row_forward_compiled = None  # _float32_row_forward's compiled function, once bound by _bind_helpers


@_jit
def _float32_forward_loop(zT, out, rows, starts, stops, codes, lo, hi, constants):
    # grouped_forward in float32 in one pass: each group's rows by _float32_row_forward
    for k in range(codes.shape[0]):
        for i in range(starts[k], stops[k]):
            _float32_row_forward_compiled(codes[k], lo[k], hi[k], zT[rows[i]], out[rows[i]], constants)


@_jit
def _float32_selected_forward_loop(zT, out, selected, codes, lo, hi, constants):
    # selected_forward in float32: row n by _float32_row_forward with candidate selected[n]'s
    # code and clamp, in place; returns False (before writing anything) for a candidate
    # outside the pool
    for n in range(selected.shape[0]):
        if selected[n] < 0 or selected[n] >= codes.shape[0]:
            return False
    for n in range(selected.shape[0]):
        k = selected[n]
        _float32_row_forward_compiled(codes[k], lo[k], hi[k], zT[n], out[n], constants)
    return True


@_jit
def _rowwise_backward_loop(daT, a_source, a_rows, out, codes, lo, hi, constants):
    # out[n] = daT[n] * f'(a) * [lo < a < hi] with a = a_source[a_rows[n]], f = codes[n], for
    # every row but the elu and selu ones (their derivative needs z: _exp_backward_loop).
    zero, one, slope = constants[0], constants[1], constants[2]
    width = daT.shape[1]
    for n in range(daT.shape[0]):
        code, l, h = codes[n], lo[n], hi[n]
        if code == ELU or code == SELU:
            continue
        has_lo, has_hi = l != -np.inf, h != np.inf
        da, a, o = daT[n], a_source[a_rows[n]], out[n]
        for j in range(width):
            x = a[j]
            if code == RELU:  # relu: [a > 0] [a < hi]
                d = da[j] * (one if (x > zero and (x < h or not has_hi)) else zero)
            else:
                if code == SIGMOID:  # sigmoid: a (1 - a)
                    d = ((one - x) * x) * da[j]
                elif code == TANH:  # tanh: 1 - a^2
                    d = (one - x * x) * da[j]
                else:  # leaky relu: 1 or 0.01
                    d = (one if x > zero else slope) * da[j]
                if has_lo and not x > l:
                    d = d * zero
                if has_hi and not x < h:
                    d = d * zero
            o[j] = d


@_jit
def _exp_backward_loop(daT, a_source, a_rows, e_source, rows, out, codes, lo, hi, constants):
    # For the elu and selu neurons n = rows[k]: out[n] = daT[n] * f'(z) * [lo < a < hi] with
    # a = a_source[a_rows[n]] and f' from e = e_source[k] = exp(min(z, 0)).
    zero, _, _, _, _, selu_scale, selu_scale_alpha, big_cap = constants
    width = daT.shape[1]
    for k in range(rows.shape[0]):
        n = rows[k]
        code, l, h = codes[n], lo[n], hi[n]
        has_lo, has_hi = l != -np.inf, h != np.inf
        da, a, e, o = daT[n], a_source[a_rows[n]], e_source[k], out[n]
        for j in range(width):
            x = a[j]
            if code == ELU:  # elu: exp(min(z, 0)) (alpha = 1)
                d = e[j] * da[j]
            else:  # selu: lambda where z > 0 (a > 0), else lambda alpha exp(z)
                s = e[j] * selu_scale_alpha
                cap = big_cap if x <= zero else selu_scale
                d = (cap if cap < s else s) * da[j]
            if has_lo and not x > l:
                d = d * zero
            if has_hi and not x < h:
                d = d * zero
            o[j] = d


@_jit
def _float32_exp_backward_loop(daT, a_source, a_rows, zT, rows, out, codes, lo, hi, constants):
    # _exp_backward_loop in float32, with e = exp(min(z, 0)) computed in the loop (_exp_parts)
    # from z = zT[n] rather than read from NumPy's.
    zero, _, _, _, _, selu_scale, selu_scale_alpha, big_cap = constants
    scale_back = _EXP_TWO_M64
    width = daT.shape[1]
    for k in range(rows.shape[0]):
        n = rows[k]
        code, l, h = codes[n], lo[n], hi[n]
        has_lo, has_hi = l != -np.inf, h != np.inf
        da, a, z, o = daT[n], a_source[a_rows[n]], zT[n], out[n]
        for j in range(width):
            q, p = _exp_parts_compiled(zero if z[j] > zero else z[j])
            e = (q * p + p) * scale_back
            x = a[j]
            if code == ELU:  # elu: exp(min(z, 0)) (alpha = 1)
                d = e * da[j]
            else:  # selu: lambda where z > 0 (a > 0), else lambda alpha exp(z)
                s = e * selu_scale_alpha
                cap = big_cap if x <= zero else selu_scale
                d = (cap if cap < s else s) * da[j]
            if has_lo and not x > l:
                d = d * zero
            if has_hi and not x < h:
                d = d * zero
            o[j] = d


def _rowwise_backward(daT: np.ndarray, a_source: np.ndarray, a_rows: np.ndarray, zT: np.ndarray,
                      exp_rows: np.ndarray, out: np.ndarray, codes: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                      constants: tuple) -> None:
    r"""``out[n] = daT[n] f'_{codes[n]}(z) [lo[n] < a < hi[n]]`` with ``a = a_source[a_rows[n]]``.

    The rows ``exp_rows`` (elu, selu) take $e^{\min(z, 0)}$: in float32 computed in the loop
    (:func:`_float32_exp_backward_loop`, by :func:`_exp_parts`), in float64 NumPy's
    (:func:`_exponentials`).
    """
    if zT is None or zT.shape != out.shape or zT.dtype != out.dtype:
        got = "None" if zT is None else f"{zT.shape} {zT.dtype}"
        raise ValueError(f"zT must be {out.shape} {out.dtype}, got {got}")
    _rowwise_backward_loop(daT, a_source, a_rows, out, codes, lo, hi, constants)
    if exp_rows.shape[0] > 0 and exponentials_in_loop(out.dtype):
        _float32_exp_backward_loop(daT, a_source, a_rows, zT, exp_rows, out, codes, lo, hi, constants)
    elif exp_rows.shape[0] > 0:
        e = _exponentials(zT, exp_rows, constants[0])
        _exp_backward_loop(daT, a_source, a_rows, e, exp_rows, out, codes, lo, hi, constants)


def grouped_forward(zT: np.ndarray, table: GroupTable, out: np.ndarray, scratch: np.ndarray | None) -> np.ndarray:
    r"""A phase-2 layer's forward: ``out[n] = clamp(f_{c_n}(zT[n]))`` for every neuron row ``n``.

    In float32, one compiled pass (:func:`_float32_forward_loop`) that computes each
    transcendental function in the loop from one exponential per element
    (:func:`_exp_parts`): sigmoid $e^{\min(z,0)}/(1 + e^{-|z|})$, tanh
    $\mathrm{sign}(z)\,(-m)/(2 + m)$ with $m = \mathrm{expm1}(-2|z|)$, elu and selu from
    $\mathrm{expm1}(\min(z, 0))$. In float64, three steps: one compiled pass writes the
    argument of each group's transcendental function into ``scratch`` in sorted order
    ($-|z|$ for sigmoid, $z$ for tanh, $\min(z, 0)$ for elu and selu); NumPy's vectorised
    ``exp``, ``tanh`` and ``expm1`` run in place over those runs; one compiled pass
    finishes every group and the clamp. Either way each neuron's row is read and written
    where it lies, so masked groups need no gather or scatter.

    Reference: :func:`smartmixed_np.fast.phase2.grouped_forward_fused` over the sorted rows
    (the per-activation kernels of :mod:`smartmixed_np.fast.kernels`). Float64: the same
    numbers. Float32: relu and leaky relu the same numbers; sigmoid, tanh, elu and selu
    within 2.4, 2.5, 1.1 and 2.4 ulps of the exact values (the kernels, from NumPy's float32
    functions: 3.6, 1.4, 2.4 and 3.5 with AVX-512; 3.6, 1.4, 2.9 and 4.0 under the AVX2
    limit), and so within 4, 3, 3 and 5 ulps of the kernels'. Measured over every float32
    $z$ with $|z| \le 104$ (2.24 billion inputs; beyond, every value is that at $\pm 104$ or
    $z$ itself), natively and under the AVX2 limit (``tests/test_compiled.py`` asserts these
    bounds on a sample, and the same bits under the limit). Why not NumPy's
    functions: NumPy's ``exp`` is a pass of its own, between a pass that prepares its
    argument and one that uses its result (and on a CPU without AVX-512 its float32
    ``expm1`` is the C library's, scalar); in one pass the forward of the benchmark's
    phase-2 network takes 30 us less a step on the Xeon. Unlike NumPy's, these values are
    the same bits on every instruction set: plain float32 operations, none contracted.
    The scratch buffer is not used in float32.

    Args:
        zT: (N, B) pre-activations, C-contiguous.
        table: from :func:`group_table`, in ``zT``'s dtype.
        out: (N, B) C-contiguous output buffer, not overlapping ``zT``.
        scratch: (N, B) C-contiguous buffer, overwritten; read only in float64 with a sigmoid,
            tanh, elu or selu group (``table.prepass``): otherwise None will do.

    Returns:
        ``out``.
    """
    if exponentials_in_loop(zT.dtype):  # one pass, the exponentials in the loop
        _float32_forward_loop(zT, out, table.rows, table.starts, table.stops, table.codes, table.lo, table.hi,
                              table.constants)
        return out
    if not table.prepass:  # relu and leaky relu only: no scratch row is read
        _grouped_forward_loop(zT, zT, out, table.rows, table.starts, table.stops, table.codes, table.lo, table.hi,
                              table.constants)
        return out
    _prepass_arguments_loop(zT, scratch, table.rows, table.prepass_array, table.constants[0])
    for code, start, stop in table.prepass:
        t = scratch[start:stop]
        if code == SIGMOID:
            np.exp(t, out=t)
        elif code == TANH:
            np.tanh(t, out=t)
        else:
            np.expm1(t, out=t)
    _grouped_forward_loop(zT, scratch, out, table.rows, table.starts, table.stops, table.codes, table.lo, table.hi,
                          table.constants)
    return out


def grouped_backward(daT: np.ndarray, aT: np.ndarray, table: GroupTable, out: np.ndarray,
                     zT: np.ndarray) -> np.ndarray:
    r"""A phase-2 layer's backward: ``out[n] = daT[n] f'_{c_n}(zT[n]) [lo < aT[n] < hi]``.

    The derivatives of relu, sigmoid, tanh and leaky relu are written in terms of the
    output ``a`` (see :mod:`smartmixed_np.fast.kernels`); those of elu and selu need
    $e^{\min(z, 0)}$: in float32 one compiled pass computes it in the loop
    (:func:`_exp_parts`, within 1.03 ulps of the exact value, NumPy's ``exp`` within about 2);
    in float64 NumPy computes it first for their rows only (:func:`_exponentials`). One
    compiled pass does the rest.

    Reference: :func:`smartmixed_np.fast.phase2.grouped_backward_fused`: the same numbers,
    but float32 elu's and selu's derivatives, to 4 eps relatively (their $e^{\min(z,0)}$),
    and, from a forward by :func:`grouped_forward`, sigmoid's and tanh's, which read its values.

    Args:
        daT, aT: (N, B) upstream gradient and the forward's output, C-contiguous.
        table: as for :func:`grouped_forward`.
        out: (N, B) C-contiguous buffer, not overlapping the inputs.
        zT: (N, B) the forward's input: elu and selu take their derivative from
            $e^{\min(z, 0)}$, not from $a + \alpha$, which cancels (exactly 0 below
            $z \approx -17$ in float32).

    Returns:
        ``out``.
    """
    _rowwise_backward(daT, aT, table.identity, zT, table.exp_rows, out, table.row_codes, table.row_lo, table.row_hi,
                      table.constants)
    return out


# --------------------------------------------------------------------------- phase 1
@dataclass(frozen=True)
class CandidateTable:
    """A phase-1 pool as the compiled loops read it: per candidate ``k``, its code and clamp.

    Attributes:
        codes: (K,) int64 activation codes.
        lo, hi: (K,) the clamps in the arrays' dtype (``-inf``/``inf``: none).
        constants: as in :class:`GroupTable`.
    """

    codes: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    constants: tuple


def candidate_table(pool: tuple, clamp: float | None, dtype: Any) -> CandidateTable | None:
    """The :class:`CandidateTable` of ``pool`` (a tuple of activations) under a
    ``[-clamp, clamp]`` clamp, or None if a candidate is no built-in with a kernel
    (:func:`smartmixed_np.fast.kernels.has_kernel`). Cached: a layer asks at every step."""
    # The kernel test is by identity, so the cache is keyed by the activations' identities
    # (an equal copy of a built-in, which has no kernel, must neither find nor leave the
    # built-in's table there); each entry keeps its activations alive, so that their ids
    # cannot pass to other objects while it is there.
    key = (tuple(map(id, pool)), clamp, dtype)
    kept = _CANDIDATE_TABLES.get(key)
    if kept is not None:
        return kept[1]
    if all(has_kernel(a) and a.name in ACTIVATION_CODES for a in pool):
        table = _candidate_table(tuple(a.name for a in pool), tuple(clamp_limits(a, clamp) for a in pool), np.dtype(dtype))
    else:
        table = None
    if len(_CANDIDATE_TABLES) >= 64:
        _CANDIDATE_TABLES.clear()
    _CANDIDATE_TABLES[key] = (tuple(pool), table)
    return table


#: candidate_table's answers: {(ids of the pool's activations, clamp, dtype): (the pool, its table or None)}
_CANDIDATE_TABLES: dict[tuple, tuple] = {}


def _candidate_table(names: tuple, limits: tuple, dtype: np.dtype) -> CandidateTable:
    return CandidateTable(
        codes=np.asarray([ACTIVATION_CODES[name] for name in names], dtype=np.int64),
        lo=np.asarray([-np.inf if lo is None else lo for lo, _ in limits], dtype=dtype),
        hi=np.asarray([np.inf if hi is None else hi for _, hi in limits], dtype=dtype),
        constants=_constants(dtype),
    )


def selected_backward(doutT: np.ndarray, stack: np.ndarray, selected: np.ndarray, table: CandidateTable,
                      out: np.ndarray, zT: np.ndarray) -> np.ndarray:
    r"""A hard phase-1 layer's input gradient: ``out[n] = doutT[n] f'_{s_n}(zT[n]) [lo < a < hi]``.

    Only the selected candidate $s_n$ of each neuron reaches $dz$ (the forward output
    is that candidate's value), so only its derivative is computed, from its row
    ``stack[s_n, n]`` of the candidate stack, in one pass over (N, B); the
    neurons that selected elu or selu take $e^{\min(z, 0)}$ as in :func:`grouped_backward`.

    Reference: every candidate's derivative by the kernels of
    :mod:`smartmixed_np.fast.kernels`, then the selected rows gathered
    (:func:`smartmixed_np.fast.phase1.mixture_backward_fused`): the same numbers, but
    float32 elu's and selu's, to 4 eps relatively (their $e^{\min(z, 0)}$).

    Args:
        doutT: (N, B) upstream gradient, C-contiguous.
        stack: (K, N, B) clamped candidate values, C-contiguous.
        selected: (N,) host int64, each neuron's selected candidate.
        table: from :func:`candidate_table`, in the arrays' dtype.
        out: (N, B) C-contiguous buffer, not overlapping the inputs.
        zT: (N, B) the forward's input, as for :func:`grouped_backward`.

    Returns:
        ``out``.
    """
    k, n, b = stack.shape
    a_rows = selected * n + np.arange(n)
    codes = table.codes[selected]
    _rowwise_backward(doutT, stack.reshape(k * n, b), a_rows, zT, _exp_rows(codes), out, codes, table.lo[selected],
                      table.hi[selected], table.constants)
    return out



# --------------------------------------------------------------------------- phase 1 without the stack
def selected_group_table(selected: np.ndarray, table: CandidateTable) -> GroupTable:
    """The :class:`GroupTable` of a hard phase-1 layer's selection: neuron ``n`` in the group of
    candidate ``selected[n]``, the neurons sorted (stably) by activation code.

    :func:`grouped_forward` with it computes $\\mathrm{clip}(f_{s_n}(z_n), lo_{s_n}, hi_{s_n})$ for
    every neuron, each transcendental function once per element by NumPy over one contiguous
    run: the selected candidate's values alone, those of the fused kernels (bitwise, but
    float32 elu and selu without AVX-512: see :func:`grouped_forward`).

    Args:
        selected: (N,) host ints, each neuron's candidate.
        table: the pool's :class:`CandidateTable`.
    """
    selected = np.ascontiguousarray(selected, dtype=np.int64)
    width, codes = selected.shape[0], len(ACTIVATION_CODES)
    ints = np.empty((3, width), dtype=np.int64)  # rows, row_codes, exp_rows: one allocation
    limits = np.empty((2, width), dtype=table.lo.dtype)  # row_lo, row_hi
    spans = np.empty((3, codes), dtype=np.int64)  # the groups' starts, stops and codes
    group_limits = np.empty((2, codes), dtype=table.lo.dtype)  # their lo, hi
    rows, row_codes, exp_rows = ints
    exps, groups = _sort_by_code_loop(selected, table.codes, table.lo, table.hi, rows, row_codes, limits[0], limits[1],
                                      exp_rows, spans, group_limits)
    if exps < 0:
        raise ValueError(f"selected holds a candidate outside 0..{len(table.codes) - 1}")
    starts, stops, group_codes = spans[:, :groups]
    prepass, idle = _runs(group_codes.tolist(), starts.tolist(), stops.tolist())
    return GroupTable(
        rows=rows, starts=starts, stops=stops, codes=group_codes, lo=group_limits[0, :groups], hi=group_limits[1, :groups],
        constants=table.constants, prepass=prepass, idle=idle,
        prepass_array=np.asarray(prepass, dtype=np.int64).reshape(-1, 3),
        row_codes=row_codes, row_lo=limits[0], row_hi=limits[1], identity=_identity(width), exp_rows=exp_rows[:exps],
    )


def selected_forward(zT: np.ndarray, selected: np.ndarray, table: CandidateTable, out: np.ndarray,
                     scratch: np.ndarray | None) -> np.ndarray:
    r"""A hard phase-1 layer's forward: $out_n = \mathrm{clip}(f_{s_n}(z_n), lo_{s_n}, hi_{s_n})$ for every neuron row.

    :func:`grouped_forward` with :func:`selected_group_table` ``(selected, table)``, the same
    numbers. In float32 without the table: one compiled pass over the rows in their order,
    each with its candidate's code and clamp looked up in ``table``
    (:func:`_float32_selected_forward_loop`: the row operations of :func:`_float32_forward_loop`,
    so bitwise its values); building and sorting the groups cost more than the pass itself on
    the benchmark's layers (about 12 against 30 us on a (512, 128) one). In float64 through the
    table (NumPy's functions run over each group's contiguous run).

    Args:
        zT: (N, B) pre-activations, C-contiguous, float32 or float64.
        selected: (N,) host int64, each neuron's candidate.
        table: the pool's :class:`CandidateTable` in ``zT``'s dtype.
        out: (N, B) C-contiguous output buffer, not overlapping ``zT``.
        scratch: (N, B) C-contiguous buffer, overwritten; float64 only (in float32 pass None).

    Returns:
        ``out``.

    Raises:
        ValueError: ``selected`` names a candidate outside the pool (nothing written).
    """
    if not exponentials_in_loop(zT.dtype):
        return grouped_forward(zT, selected_group_table(selected, table), out, scratch)
    selected = np.ascontiguousarray(selected, dtype=np.int64)
    if not _float32_selected_forward_loop(zT, out, selected, table.codes, table.lo, table.hi, table.constants):
        raise ValueError(f"selected holds a candidate outside 0..{len(table.codes) - 1}")
    return out


@functools.lru_cache(maxsize=16)
def _identity(width: int) -> np.ndarray:
    """``arange(width)`` (int64), kept per width and read-only: the loops only read it."""
    identity = np.arange(width, dtype=np.int64)
    identity.flags.writeable = False
    return identity


@_jit
def _sort_by_code_loop(selected, candidate_codes, candidate_lo, candidate_hi, rows, row_codes, row_lo, row_hi, exp_rows,
                       spans, group_limits):
    # Neuron n's code and clamp, those of its candidate selected[n]; rows, the neurons stably
    # sorted by code (a counting sort); exp_rows, the elu and selu neurons in order (_exp_rows);
    # spans[:, g] = (start, stop, code) of the g-th code present, in code order, and
    # group_limits[:, g] its clamp (that of the candidate with the code). Returns the number of
    # elu and selu neurons and of groups, or (-1, 0) for a candidate outside the pool.
    codes = spans.shape[1]
    counts = np.zeros(codes, dtype=np.int64)
    code_lo, code_hi = np.empty(codes, dtype=row_lo.dtype), np.empty(codes, dtype=row_hi.dtype)
    exps = 0
    for n in range(selected.shape[0]):
        k = selected[n]
        if k < 0 or k >= candidate_codes.shape[0]:
            return -1, 0
        code = candidate_codes[k]
        row_codes[n], row_lo[n], row_hi[n] = code, candidate_lo[k], candidate_hi[k]
        code_lo[code], code_hi[code] = candidate_lo[k], candidate_hi[k]
        counts[code] += 1
        if code == ELU or code == SELU:
            exp_rows[exps] = n
            exps += 1
    free = np.empty_like(counts)  # the next free position of each code
    position, groups = 0, 0
    for code in range(codes):
        free[code] = position
        if counts[code] > 0:
            spans[0, groups], spans[1, groups], spans[2, groups] = position, position + counts[code], code
            group_limits[0, groups], group_limits[1, groups] = code_lo[code], code_hi[code]
            groups += 1
        position += counts[code]
    for n in range(selected.shape[0]):
        code = row_codes[n]
        rows[free[code]] = n
        free[code] += 1
    return exps, groups


# --------------------------------------------------------------------------- phase-1 selection
#: NumPy sums a row of fewer than 8 values in order, left to right (its pairwise sum starts at 8):
#: the selection loops reproduce that order, so they apply to pools of at most this many candidates.
SELECTION_MAX_K = 7


@_jit
def _selection_scores_loop(logits, noise, has_noise, tau, s):
    # s = (logits + noise) / tau - max_k (...), row by row: gumbel_softmax_weights' operations
    for n in range(logits.shape[0]):
        for k in range(logits.shape[1]):
            x = logits[n, k] + noise[n, k] if has_noise else logits[n, k]
            s[n, k] = x / tau
        top = s[n, 0]
        for k in range(1, s.shape[1]):  # np.maximum: the first operand unless it is smaller (NaN wins)
            top = top if (top >= s[n, k] or top != top) else s[n, k]
        for k in range(s.shape[1]):
            s[n, k] = s[n, k] - top


@_jit
def _selection_finish_loop(e, selected):
    # e / sum_k e (the sum in NumPy's order for a short row), then the first argmax (NaN first)
    for n in range(e.shape[0]):
        total = e[n, 0]
        for k in range(1, e.shape[1]):
            total = total + e[n, k]
        for k in range(e.shape[1]):
            e[n, k] = e[n, k] / total
        best = 0
        for k in range(1, e.shape[1]):
            if e[n, best] != e[n, best]:
                break
            if e[n, k] > e[n, best] or e[n, k] != e[n, k]:
                best = k
        selected[n] = best


def selection_applies(*arrays: Any) -> bool:
    """True if :func:`softmax_selection` and :func:`softmax_backward_scaled` can take ``arrays``
    (None entries skipped): :func:`applies`, and all (N, K) of one shape with K <= :data:`SELECTION_MAX_K`."""
    arrays = tuple(a for a in arrays if a is not None)
    shape = getattr(arrays[0], "shape", None) if arrays else None
    return (applies(*arrays) and len(shape) == 2 and shape[1] <= SELECTION_MAX_K
            and all(a.shape == shape for a in arrays))


def softmax_selection(logits: np.ndarray, noise: np.ndarray | None, tau: float, weights: np.ndarray) -> np.ndarray:
    r"""A hard phase-1 layer's selection: $y = \mathrm{softmax}((\alpha + g)/\tau)$ into ``weights``
    and $s_n = \arg\max_k y_{nk}$, in two compiled passes around NumPy's ``exp``.

    Reference: :func:`smartmixed_np.core.phase1.gumbel_softmax_weights`, then ``np.argmax(y, axis=-1)``;
    bitwise equal (the same operations in the same order: NumPy sums a row of fewer than 8
    values left to right; :data:`SELECTION_MAX_K`). About a fifth of their time on a (512, 6)
    layer, where NumPy's reductions over a short last axis cost most.

    Args:
        logits: (N, K) selection logits, K <= :data:`SELECTION_MAX_K`.
        noise: (N, K) Gumbel noise of the same dtype, or None.
        tau: the temperature, rounded to the dtype as NumPy rounds a Python scalar.
        weights: (N, K) output buffer (not ``logits`` or ``noise``).

    Returns:
        ``selected``: (N,) int64.
    """
    if logits.ndim != 2 or logits.shape[-1] > SELECTION_MAX_K:
        raise ValueError(f"softmax_selection takes (N, K) logits with K <= {SELECTION_MAX_K}, got {logits.shape}")
    if weights.shape != logits.shape or (noise is not None and (noise.shape != logits.shape or noise.dtype != logits.dtype)):
        raise ValueError(f"softmax_selection needs noise and weights of the logits' shape {logits.shape} and dtype")
    has_noise = noise is not None
    _selection_scores_loop(logits, noise if has_noise else logits, has_noise, logits.dtype.type(tau), weights)
    np.exp(weights, out=weights)
    selected = np.empty(logits.shape[0], dtype=np.int64)
    _selection_finish_loop(weights, selected)
    return selected


@_jit
def _softmax_backward_loop(dy, y, tau, out):
    # out = y (dy - sum_k y dy) / tau, row by row; the sum left to right, NumPy's order for a short row
    for n in range(y.shape[0]):
        inner = y[n, 0] * dy[n, 0]
        for k in range(1, y.shape[1]):
            inner = inner + y[n, k] * dy[n, k]
        for k in range(y.shape[1]):
            out[n, k] = (y[n, k] * (dy[n, k] - inner)) / tau


def softmax_backward_scaled(dy: np.ndarray, weights: np.ndarray, tau: float, out: np.ndarray) -> np.ndarray:
    r"""$d\alpha = y \odot (dy - \langle y, dy \rangle) / \tau$ into ``out`` (N, K), in one compiled pass.

    Reference: ``softmax_backward(dy.astype(y.dtype), y) / tau``
    (:func:`smartmixed_np.core.phase1.softmax_backward`); bitwise equal for K <=
    :data:`SELECTION_MAX_K` (the inner product summed left to right, as NumPy sums a short row).

    Args:
        dy: (N, K) float64 or the weights' dtype; rounded to the weights' dtype first.
        weights: (N, K) the selection's softmax weights ``y``.
        tau: the temperature.
        out: (N, K) output buffer of the weights' dtype.
    """
    if weights.ndim != 2 or weights.shape[-1] > SELECTION_MAX_K or dy.shape != weights.shape or out.shape != weights.shape:
        raise ValueError(f"softmax_backward_scaled takes (N, K) arrays with K <= {SELECTION_MAX_K}, got {dy.shape}, {weights.shape}")
    _softmax_backward_loop(dy.astype(weights.dtype, copy=False), weights, weights.dtype.type(tau), out)
    return out


@_jit(reassociate=True, helper=True)
def _dot(x, y, zero):
    # sum_j x[j] y[j] in the arrays' dtype (zero: a 0 of it), in the order the compiler
    # vectorises it: fixed in the compiled code, so two calls agree, but not sequential
    total = zero
    for j in range(x.shape[0]):
        total += x[j] * y[j]
    return total


_dot_compiled = None  # _dot's compiled function, once bound by _bind_helpers


@_jit
def _shared_backward_loop(doutT, zT, aT, tT, mT, own, selected, codes, lo, hi, constants, row, dy, dzT, keep, values):
    # Per neuron n: first, for every candidate k, its clamped value a_k from the shared
    # t = e^{-|z|} and m = expm1(-|z|) into the row buffer (one loop per code: the branch on
    # the code is loop-invariant, and the compiler hoists it and vectorises the loop), and
    # dy[n, k] = sum_b dout[n, b] a_k[n, b] in the arrays' dtype by _dot (whose sum the compiler
    # may reorder; this loop's own operations it may not) (the row is copied to values[k, n]
    # when keep is set); then
    # dz[n] = dout[n] f'_s(z) [lo < a < hi] for the selected candidate s, from the forward's
    # value a = aT[n] and from t. With own set (float32), tT and mT are (1, B) rows, and each
    # neuron's t and m are computed into them just before its pass (_float32_exponentials: the
    # numbers of shared_exponentials, a pass over (N, B) fewer); else they are (N, B), read.
    zero, one, slope, elu_alpha, selu_alpha, selu_scale, selu_scale_alpha, big_cap = constants
    width, batch = zT.shape
    for n in range(width):
        z, d = zT[n], doutT[n]
        if own:
            t, m = tT[0], mT[0]
            _float32_exponentials_compiled(z, t, m)
        else:
            t, m = tT[n], mT[n]
        for k in range(codes.shape[0]):
            code, l, h = codes[k], lo[k], hi[k]
            # One loop per code (a branch inside the loop, even a loop-invariant one, kept the
            # compiler from vectorising it: ten times slower). Each ends in the clamp.
            if code == RELU:  # max(z, 0)
                for j in range(batch):
                    y = z[j] if z[j] >= zero else zero  # >=: -0 stays -0, as in the kernel's clip
                    y = l if y < l else y
                    row[j] = h if y > h else y
            elif code == SIGMOID:  # e^{min(z, 0)} / (1 + t): the fused kernel's operations (t for z < 0)
                for j in range(batch):
                    y = (one if z[j] >= zero else t[j]) / (t[j] + one)
                    y = l if y < l else y
                    row[j] = h if y > h else y
            elif code == TANH:  # sign(z) (1 - t^2) / (1 + t^2), with 1 - t^2 = -m (1 + t)
                for j in range(batch):
                    u, v = t[j], m[j]
                    y = math.copysign(-(v * (u + one)) / (u * u + one), z[j])  # tanh(-0) = -0
                    y = l if y < l else y
                    row[j] = h if y > h else y
            elif code == LEAKY_RELU:  # max(0.01 z, z)
                for j in range(batch):
                    y = z[j] * slope
                    y = z[j] if z[j] > y else y
                    y = l if y < l else y
                    row[j] = h if y > h else y
            elif code == ELU:  # z, else expm1(z) = m
                for j in range(batch):
                    y = z[j] if z[j] >= zero else m[j] * elu_alpha  # >=: the reference's zero keeps its sign
                    y = l if y < l else y
                    row[j] = h if y > h else y
            else:  # selu: scale (alpha expm1(min(z, 0)) + max(z, 0))
                for j in range(batch):
                    y = ((zero if z[j] > zero else m[j]) * selu_alpha + (z[j] if z[j] >= zero else zero)) * selu_scale
                    y = l if y < l else y
                    row[j] = h if y > h else y
            if keep:
                values[k, n, :] = row
            total = _dot_compiled(d, row, zero)
            dy[n, k] = total
        s = selected[n]
        code, l, h = codes[s], lo[s], hi[s]
        has_lo, has_hi = l != -np.inf, h != np.inf
        a, o = aT[n], dzT[n]
        # The mask [lo < a < hi] as a factor of 1 or 0 (0 * inf is NaN, as in the kernels'
        # multiplication by the mask); relu's mask is its derivative. One loop per code, as above.
        if code == RELU:  # [a > 0] [a < hi]
            for j in range(batch):
                o[j] = d[j] * (one if (a[j] > zero and (a[j] < h or not has_hi)) else zero)
            continue
        if code == SIGMOID:  # a (1 - a)
            for j in range(batch):
                o[j] = ((one - a[j]) * a[j]) * d[j]
        elif code == TANH:  # 1 - a^2
            for j in range(batch):
                o[j] = (one - a[j] * a[j]) * d[j]
        elif code == LEAKY_RELU:  # 1 or 0.01
            for j in range(batch):
                o[j] = (one if a[j] > zero else slope) * d[j]
        elif code == ELU:  # e^{min(z, 0)}: t where z <= 0 (there -|z| = z), else 1
            for j in range(batch):
                o[j] = (t[j] if z[j] <= zero else one) * d[j]
        else:  # selu: lambda where z > 0 (a > 0), else lambda alpha e^z (t where z <= 0)
            for j in range(batch):
                q = (t[j] if z[j] <= zero else one) * selu_scale_alpha
                cap = big_cap if a[j] <= zero else selu_scale
                o[j] = (cap if cap < q else q) * d[j]
        if has_lo:
            for j in range(batch):
                o[j] = o[j] * (one if a[j] > l else zero)
        if has_hi:
            for j in range(batch):
                o[j] = o[j] * (one if a[j] < h else zero)


@_jit
def _negative_magnitude_loop(z, out):
    # out = -|z| (exact): np.negative(np.abs(z)) in one pass
    for i in range(z.shape[0]):
        out[i] = -abs(z[i])


@_jit(helper=True, inline=True)
def _float32_exponentials(z, t, m):
    # t = e^{-|z|} and m = expm1(-|z|) (1-D float32 arrays) from one _exp_parts per element;
    # m keeps the sign of a zero, as np.expm1 does: expm1(-0) = -0.
    zero, one, scale_back = np.float32(0.0), np.float32(1.0), _EXP_TWO_M64
    for i in range(z.shape[0]):
        x = -abs(z[i])
        q, p = _exp_parts_compiled(x)
        t[i] = (q * p + p) * scale_back
        v = (q * p) * scale_back + (p * scale_back - one)
        m[i] = x if x == zero else v


_float32_exponentials_compiled = None  # _float32_exponentials's compiled function, once bound by _bind_helpers


@_jit
def _float32_shared_exponentials_loop(z, t, m):
    # shared_exponentials in float32 over the flat arrays
    _float32_exponentials_compiled(z, t, m)


def shared_exponentials(zT: np.ndarray, tT: np.ndarray, mT: np.ndarray) -> None:
    r"""$t = e^{-|z|}$ into ``tT`` and $m = \mathrm{expm1}(-|z|)$ into ``mT`` (all (N, B)).

    Shared by every candidate. Both are needed: $t$ keeps its relative precision for large
    $|z|$ (where $1 + m$ would not), $m$ for small $|z|$ (where $t - 1$ cancels). In float32
    (C-contiguous host arrays), both from one range reduction per element in one compiled
    pass (:func:`_exp_parts`): $t$ within 1.03 ulps of the exact value and $m$ within 1.12
    (measured over every float32 with $|z| \le 104$; NumPy's float32 ``exp`` and ``expm1``
    are within about 2 there). Otherwise NumPy's ``exp`` and ``expm1``.
    """
    if tT.dtype == np.float32 and applies(zT, tT, mT):
        _float32_shared_exponentials_loop(zT.reshape(-1), tT.reshape(-1), mT.reshape(-1))
        return
    if applies(zT, tT):
        _negative_magnitude_loop(zT.reshape(-1), tT.reshape(-1))
    else:
        np.negative(np.abs(zT, out=tT), out=tT)
    np.expm1(tT, out=mT)
    np.exp(tT, out=tT)


def shared_candidate_values(zT: np.ndarray, table: CandidateTable) -> np.ndarray:
    r"""(K, N, B): every candidate's clamped value, as :func:`shared_backward` computes it for $dy$.

    From $t = e^{-|z|}$ and $m = \mathrm{expm1}(-|z|)$ (:func:`shared_exponentials`):
    relu, leaky relu, elu and selu by the fused kernels' operations, and sigmoid as
    $e^{\min(z,0)}/(1 + t)$ (for $z < 0$, $e^{\min(z,0)}$ is $t$ itself); tanh as
    $\mathrm{sign}(z)\,(-m)(1 + t)/(1 + t^2)$, which is $(1 - e^{-2|z|})/(1 + e^{-2|z|})$ with
    $1 - t^2 = -m(1 + t)$ free of cancellation near 0. Relu and leaky relu are bitwise the
    kernels' values, and in float64 all but tanh; the bounds of the others:
    :func:`shared_backward`. For tests and inspection.
    """
    values = np.empty((len(table.codes),) + zT.shape, dtype=zT.dtype)
    _shared_pass(np.zeros_like(zT), zT, zT, np.zeros(zT.shape[0], dtype=np.int64), table, np.empty_like(zT),
                 np.empty_like(zT), np.empty_like(zT), values)
    return values


def _shared_pass(doutT, zT, aT, selected, table, tT, mT, dzT, values):
    dy = np.empty((zT.shape[0], len(table.codes)), dtype=zT.dtype)
    row = np.empty(zT.shape[1], dtype=zT.dtype)
    keep = values is not None
    values = values if keep else np.empty((1, 1, 1), dtype=zT.dtype)
    selected = np.asarray(selected, dtype=np.int64)
    own = exponentials_in_loop(zT.dtype)  # t and m row by row, in the loop
    if own:
        tT, mT = np.empty((2, 1, zT.shape[1]), dtype=zT.dtype)
    else:
        shared_exponentials(zT, tT, mT)
    _shared_backward_loop(doutT, zT, aT, tT, mT, own, selected, table.codes, table.lo, table.hi, table.constants, row,
                          dy, dzT, keep, values)
    return dy


def shared_backward(doutT: np.ndarray, zT: np.ndarray, aT: np.ndarray, selected: np.ndarray, table: CandidateTable,
                    tT: np.ndarray | None, mT: np.ndarray | None, dzT: np.ndarray) -> np.ndarray:
    r"""A hard phase-1 layer's backward without the candidate stack: $dy$ (N, K) and $dz$ into ``dzT``.

    With $t = e^{-|z|}$ and $m = \mathrm{expm1}(-|z|)$ computed once per element
    (in float64 by :func:`shared_exponentials`, into ``tT`` and ``mT``, first; in float32 the
    same numbers row by row inside the pass, a pass over (N, B) fewer), one compiled pass over each
    neuron's row computes every candidate's clamped value $a_k$ from them
    (:func:`shared_candidate_values`), $dy_{nk} = \sum_b dout_{nb}\, a_{knb}$ (accumulated in
    the arrays' dtype, as the reference sums, in a fixed order, so two calls give the same bits), and
    $dz_n = dout_n\, f'_{s_n}(z_n)\, [lo < a < hi]$ for the selected candidate from the
    forward's value ``aT`` and $t$ (as :func:`selected_backward` does, bitwise its numbers
    given the same $t$).

    Reference: :func:`smartmixed_np.core.phase1.mixture_backward`'s $dy$ and $dz$ (``clamp_grad="open"``).
    Float64: $dz$ bitwise that of the fused kernels, each $a_k$ bitwise the reference's
    but tanh's, within 4 ulps of ``np.tanh`` (measured: at most 3 over 2.5 million inputs).
    Float32 ($t$ and $m$ from :func:`_exp_parts`): relu and leaky relu bitwise; sigmoid, tanh,
    elu and selu within 2.4, 3.5, 1.1 and 2.4 ulps of the exact values and 4, 4, 3 and 5 of
    the kernels' (measured over every float32 with $|z| \le 104$, natively and under the AVX2
    limit; ``tests/test_phase1_single.py`` asserts the latter); $dz$ that of the fused kernels
    but elu's and selu's, from $t$, to 4 eps relatively, and sigmoid's and tanh's, which read
    the forward's values (:func:`grouped_forward`). Why tanh is not one rounding: here $m$,
    $t$ and the five operations on them round in the dtype. (Float64 arithmetic in this pass
    was tried: within 4 ulps in float32, and 60 us more per step of the benchmark's
    network.) $dy$ then differs
    from the reference's sum by that and by the order of the sum (here the compiler's
    vectorised order, :func:`_dot`; the reference's, NumPy's), each within $B$ roundings of
    $\sum_b |dout_{nb}\, a_{knb}|$.

    Args:
        doutT, zT, aT: (N, B) upstream gradient, pre-activation and the forward's output, C-contiguous.
        selected: (N,) host int64, each neuron's candidate.
        table: the pool's :class:`CandidateTable` in the arrays' dtype.
        tT, mT: (N, B) work buffers, overwritten; float64 only (in float32 each row's $t$ and
            $m$ are computed in the pass, into two (B,) rows of its own: pass None).
        dzT: (N, B) output buffer, not overlapping the inputs.

    Returns:
        ``dy`` (N, K) in the arrays' dtype.
    """
    return _shared_pass(doutT, zT, aT, selected, table, tT, mT, dzT, None)


#: The helpers' global names (see :func:`_jit`): each is bound to the compiled function of its helper.
_HELPERS = {"_dot_compiled": _dot, "_exp_parts_compiled": _exp_parts, "_float32_row_forward_compiled": _float32_row_forward,
            "_float32_exponentials_compiled": _float32_exponentials}
