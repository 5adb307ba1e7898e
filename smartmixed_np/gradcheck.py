"""Gradient checking by central finite differences, as a library feature.

Two checks, both in vector-Jacobian (VJP) form:

* :func:`check_vjp` checks the analytic gradients of a function with respect to
  each of its inputs. With a random upstream gradient $u$ (the same shape as the
  output), the scalar $\\phi(x) = \\langle u, f(x) \\rangle$ has gradient
  $\\nabla\\phi = J^\\top u$, which is exactly what a backward pass returns for
  ``dout = u``. Each coordinate of $\\nabla\\phi$ is estimated by a central
  difference $(\\phi(x + \\epsilon e_i) - \\phi(x - \\epsilon e_i)) / 2\\epsilon$, whose
  error is $O(\\epsilon^2)$.
* :func:`check_directional` checks a whole network at the cost of two function
  evaluations: along a random direction $v$ over all parameters,
  $(L(\\theta + \\epsilon v) - L(\\theta - \\epsilon v)) / 2\\epsilon \\approx \\langle \\nabla L, v \\rangle$.

Relative error, with a floor so that two tiny gradients are not judged by noise:
$\\mathrm{err}(a, n) = \\lVert a - n \\rVert / \\max(\\lVert a \\rVert + \\lVert n \\rVert, \\mathrm{floor})$.
:func:`check_vjp` sets the floor from the rounding noise of the differences
themselves: a central difference of $\\phi$ carries an absolute error of about
$\\epsilon_{\\mathrm{mach}} \\sum |u \\odot f(x)| / \\epsilon$, so a gradient that is tiny
(a saturated sigmoid, say) is accepted when it agrees to within ten times that
noise, and judged relatively otherwise.

In float64 with $\\epsilon \\approx 10^{-6}$, a correct gradient gives errors around
$10^{-8}$ to $10^{-10}$; a wrong one, errors of order 1. Checks never modify the
caller's arrays: every perturbation is made on a private copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .backend import array_module, backend_of, to_host

__all__ = [
    "GradcheckError",
    "GradcheckResult",
    "relative_error",
    "numerical_vjp",
    "check_vjp",
    "check_directional",
    "check_model_gradients",
]

DEFAULT_TOLERANCE = 1e-6


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with finite differences."""


@dataclass(frozen=True)
class GradcheckResult:
    """Errors of one check.

    Attributes:
        errors: relative error per checked input (by position or name).
        tolerance: the threshold that was applied.
    """

    errors: dict
    tolerance: float

    @property
    def max_error(self) -> float:
        return max(self.errors.values()) if self.errors else 0.0

    @property
    def passed(self) -> bool:
        return self.max_error <= self.tolerance

    def __str__(self) -> str:
        parts = ", ".join(f"{k}: {v:.2e}" for k, v in self.errors.items())
        return f"relative errors {{{parts}}} (tolerance {self.tolerance:.0e})"


def relative_error(analytic: Any, numeric: Any, floor: float = 1e-10) -> float:
    """$\\lVert a - n \\rVert_2 / \\max(\\lVert a \\rVert_2 + \\lVert n \\rVert_2, \\mathrm{floor})$, on the host."""
    a = np.asarray(to_host(analytic), dtype=np.float64).ravel()
    n = np.asarray(to_host(numeric), dtype=np.float64).ravel()
    if a.shape != n.shape:
        raise ValueError(f"cannot compare gradients of shapes {a.shape} and {n.shape}")
    return float(np.linalg.norm(a - n) / max(np.linalg.norm(a) + np.linalg.norm(n), floor))


def _require_float64(array: Any, what: str) -> None:
    if array.dtype != np.float64:
        raise TypeError(f"finite differences need float64 inputs; {what} is {array.dtype}")


def numerical_vjp(fn: Callable[..., Any], inputs: Sequence[Any], upstream: Any, index: int, eps: float = 1e-6) -> Any:
    """Central-difference estimate of $J_i^\\top u$ for input ``index``.

    Args:
        fn: ``fn(*inputs) -> output``, pure (it must not keep state between calls).
        inputs: the arrays to evaluate at; not modified.
        upstream: $u$, the shape of the output.
        index: which input to differentiate.
        eps: the step.

    Returns:
        An array of the shape of ``inputs[index]``, on its device.
    """
    xp = array_module(inputs[index])
    point = [x.copy() if hasattr(x, "copy") else x for x in inputs]
    x = point[index]
    _require_float64(x, f"input {index}")
    flat = x.reshape(-1)  # a view of our private copy
    grad = xp.zeros(flat.shape, dtype=np.float64)
    for i in range(flat.shape[0]):
        original = float(flat[i])
        flat[i] = original + eps
        plus = xp.sum(upstream * fn(*point))
        flat[i] = original - eps
        minus = xp.sum(upstream * fn(*point))
        flat[i] = original
        grad[i] = (plus - minus) / (2 * eps)
    return grad.reshape(x.shape)


def check_vjp(
    fn: Callable[..., Any],
    inputs: Sequence[Any],
    vjp: Callable[[Any], Sequence[Any]],
    *,
    seed: int = 0,
    eps: float = 1e-6,
    tolerance: float = DEFAULT_TOLERANCE,
    wrt: Sequence[int] | None = None,
    raise_on_failure: bool = True,
) -> GradcheckResult:
    """Check a backward pass against central differences of its forward.

    Args:
        fn: ``fn(*inputs) -> output``, a pure float64 function.
        inputs: arrays to check at (float64); never modified.
        vjp: ``vjp(upstream) -> grads``, one gradient per input (None for an input
            that gets none), computed by the code under test at ``inputs``.
        seed: seeds the random upstream gradient.
        eps: finite-difference step.
        tolerance: maximum accepted relative error.
        wrt: positions of the inputs to check (default: all with a gradient).
        raise_on_failure: raise :class:`GradcheckError` if any error is too large.

    Returns:
        The :class:`GradcheckResult`.
    """
    output = fn(*inputs)
    backend = backend_of(output)
    upstream_host = np.random.default_rng(seed).standard_normal(tuple(output.shape))
    upstream = backend.asarray(upstream_host) if backend is not None else upstream_host
    analytic = list(vjp(upstream))
    if len(analytic) != len(inputs):
        raise ValueError(f"vjp returned {len(analytic)} gradients for {len(inputs)} inputs")
    positions = [i for i in range(len(inputs)) if analytic[i] is not None] if wrt is None else list(wrt)
    # Absolute rounding noise of one central difference, as a floor (see module docstring).
    magnitude = float(np.sum(np.abs(upstream_host * to_host(output))))
    floor = max(1e-10, 10 * np.finfo(np.float64).eps * magnitude / eps / tolerance)
    errors = {}
    for i in positions:
        if tuple(analytic[i].shape) != tuple(inputs[i].shape):
            raise ValueError(f"gradient {i} has shape {tuple(analytic[i].shape)}, its input {tuple(inputs[i].shape)}")
        errors[i] = relative_error(analytic[i], numerical_vjp(fn, inputs, upstream, i, eps), floor=floor)
    result = GradcheckResult(errors, tolerance)
    if raise_on_failure and not result.passed:
        raise GradcheckError(f"gradient check failed: {result}")
    return result


def check_directional(
    loss_fn: Callable[[dict[str, Any]], Any],
    params: dict[str, Any],
    grads: dict[str, Any],
    *,
    seed: int = 0,
    eps: float = 1e-6,
    tolerance: float = DEFAULT_TOLERANCE,
    raise_on_failure: bool = True,
) -> GradcheckResult:
    """Check a whole gradient along one random direction.

    Args:
        loss_fn: ``(params) -> scalar``, the loss at the given parameter values (a
            dict by the same names as ``params``). It must replay the same
            randomness at every call (e.g. fixed Gumbel noise).
        params: the point to check at, by name (float64); never modified: the
            perturbed points are private arrays.
        grads: the analytic gradient of the loss at ``params``, by the same names.
        seed: seeds the random direction $v$ (a unit vector over all parameters).
        eps: finite-difference step.
        tolerance: maximum accepted relative error.

    Returns:
        A :class:`GradcheckResult` with one entry, ``"directional"``.
    """
    rng = np.random.default_rng(seed)
    names = list(params)
    if set(grads) != set(names):
        raise ValueError(f"grads and params name different arrays: {sorted(set(grads) ^ set(names))}")
    for name in names:
        _require_float64(params[name], name)
    directions = {name: rng.standard_normal(tuple(params[name].shape)) for name in names}
    scale = np.sqrt(sum(float(np.sum(d * d)) for d in directions.values()))
    analytic = sum(float(np.sum(to_host(grads[name]) * directions[name])) for name in names) / scale
    steps = {name: backend_of(params[name]).asarray(eps * directions[name] / scale) for name in names}
    plus = float(to_host(loss_fn({name: params[name] + steps[name] for name in names})))
    minus = float(to_host(loss_fn({name: params[name] - steps[name] for name in names})))
    numeric = (plus - minus) / (2 * eps)
    # The rounding noise of the difference itself, as a floor (see the module docstring).
    floor = max(1e-10, 10 * np.finfo(np.float64).eps * (abs(plus) + abs(minus)) / (2 * eps) / tolerance)
    error = relative_error(np.array([analytic]), np.array([numeric]), floor=floor)
    result = GradcheckResult({"directional": error}, tolerance)
    if raise_on_failure and not result.passed:
        raise GradcheckError(f"directional gradient check failed: analytic {analytic:.10e}, numeric {numeric:.10e}; {result}")
    return result


def check_model_gradients(
    model: Any,
    x: Any,
    labels: Any,
    *,
    train: bool = True,
    seed: int = 0,
    eps: float = 1e-6,
    tolerance: float = DEFAULT_TOLERANCE,
    raise_on_failure: bool = True,
) -> GradcheckResult:
    """Directional check of a whole :class:`~smartmixed_np.mlp.MLP` on one batch.

    The model (float64) is copied; the copy runs one forward pass (drawing its
    Gumbel noise once), softmax cross-entropy, and backward; then the loss is
    re-evaluated at perturbed parameters *with the same noise*. The caller's
    model, its parameters and its random streams are left untouched.

    For a hard phase-1 network the loss is piecewise: a perturbation that flips a
    neuron's selection changes the function discontinuously, and the
    straight-through gradient is not the gradient of the hard loss anyway. Check
    hard phase-1 networks in soft mode, or their layers against the surrogate
    (:func:`smartmixed_np.mixture.straight_through_surrogate`).

    Args:
        model: a float64 MLP. x: (B, D) inputs. labels: (B,) classes.

    Returns:
        The :class:`GradcheckResult` of :func:`check_directional`.
    """
    import copy

    from .losses import softmax_cross_entropy

    probe = copy.deepcopy(model)
    logits = probe.forward(x, train=train)
    noise = probe.last_noise
    _, dlogits = softmax_cross_entropy(logits, labels)
    probe.backward(dlogits)
    grads = {name: g.copy() for name, g in probe.gradients().items()}
    params = {name: p.copy() for name, p in probe.parameters().items()}

    def loss_at(point: dict[str, Any]) -> Any:
        probe.load_state_dict(point)
        loss, _ = softmax_cross_entropy(probe.forward(x, train=train, noise=noise), labels)
        return loss

    return check_directional(
        loss_at, params, grads, seed=seed, eps=eps, tolerance=tolerance, raise_on_failure=raise_on_failure
    )
