"""Gradient checking by central finite differences, as a library feature.

Checks in vector-Jacobian (VJP) form. With a random upstream gradient $u$ (the
shape of the output), the scalar $\\phi(x) = \\langle u, f(x) \\rangle$ has gradient
$\\nabla\\phi = J^\\top u$, which is exactly what a backward pass returns for ``dout = u``.

* :func:`check_vjp` compares it along one random direction $v$ per input:
  $\\langle J^\\top u, v \\rangle$ against
  $(\\phi(x + \\epsilon v) - \\phi(x - \\epsilon v)) / 2\\epsilon$, two evaluations
  whatever the size of $x$ (the check HIPS autograd calls ``check_vjp``).
* :func:`check_vjp_per_coordinate` estimates every coordinate of $\\nabla\\phi$ by its
  own central difference $(\\phi(x + \\epsilon e_i) - \\phi(x - \\epsilon e_i)) / 2\\epsilon$,
  whose error is $O(\\epsilon^2)$: for small inputs, and it shows which entries are wrong.
* :func:`check_directional` is the one-direction check for a scalar loss of named
  parameters: along a random direction $v$ over all of them,
  $(L(\\theta + \\epsilon v) - L(\\theta - \\epsilon v)) / 2\\epsilon \\approx \\langle \\nabla L, v \\rangle$.
* :func:`check_model_gradients` applies it to an MLP, once over all parameters and
  once per parameter array (the same $v$ restricted to it), so that a wrong gradient
  is reported at its dotted name; hard phase-1 layers are checked against their
  straight-through surrogate (see there why).

Relative error, with a floor so that two tiny gradients are not judged by noise:
$\\mathrm{err}(a, n) = \\lVert a - n \\rVert / \\max(\\lVert a \\rVert + \\lVert n \\rVert, \\mathrm{floor})$.
:func:`check_vjp_per_coordinate` sets the floor from the rounding noise of the
differences themselves (the one-direction checks likewise, from the two values of the
difference): a central difference of $\\phi$ carries an absolute error of about
$\\epsilon_{\\mathrm{mach}} \\sum |u \\odot f(x)| / \\epsilon$, so a gradient that is tiny
(a saturated sigmoid, say) is accepted when it agrees to within ten times that
noise, and judged relatively otherwise.

In float64 with $\\epsilon \\approx 10^{-6}$, a correct gradient gives errors around
$10^{-8}$ to $10^{-10}$; a wrong one, errors of order 1. Checks never modify the
caller's arrays: every perturbation is made on a private copy.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..backend import array_module, backend_of, to_host

__all__ = [
    "GradcheckError",
    "GradcheckResult",
    "relative_error",
    "numerical_vjp",
    "check_vjp",
    "check_vjp_per_coordinate",
    "check_directional",
    "check_model_gradients",
    "straight_through_offsets",
    "ModelGradcheckResult",
    "ParameterCheck",
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
    """Check a backward pass along one random direction per input (as HIPS autograd's ``check_vjp``).

    With a random upstream $u$ (the output's shape) and, for input $i$, a random unit
    direction $v_i$ (the input's shape), the backward's $\\langle J_i^\\top u, v_i \\rangle$
    is compared with the central difference
    $(\\phi(x_i + \\epsilon v_i) - \\phi(x_i - \\epsilon v_i)) / 2\\epsilon$ of
    $\\phi = \\langle u, f \\rangle$: two evaluations of ``fn`` per input, whatever its size.
    A wrong gradient fails it unless it is wrong only orthogonally to $v_i$, which a
    random direction makes a probability-zero event; to see *which* entries are
    wrong, use :func:`check_vjp_per_coordinate`.

    Args:
        fn: ``fn(*inputs) -> output``, a pure float64 function.
        inputs: arrays to check at (float64); never modified.
        vjp: ``vjp(upstream) -> grads``, one gradient per input (None for an input
            that gets none), computed by the code under test at ``inputs``.
        seed: seeds the random upstream gradient and the directions.
        eps: finite-difference step.
        tolerance: maximum accepted relative error.
        wrt: positions of the inputs to check (default: all with a gradient).
        raise_on_failure: raise :class:`GradcheckError` if any error is too large.

    Returns:
        The :class:`GradcheckResult`, one error per checked input position.
    """
    _, upstream, _, analytic, positions = _vjp_at(fn, inputs, vjp, seed, wrt)
    rng = np.random.default_rng([seed, 1])
    errors = {}
    for i in positions:
        _require_float64(inputs[i], f"input {i}")

        def phi(point: dict[str, Any], i: int = i) -> Any:
            args = [point["x"] if j == i else x for j, x in enumerate(inputs)]
            return array_module(upstream).sum(upstream * fn(*args))

        direction = {"x": rng.standard_normal(tuple(inputs[i].shape))}
        a, n, noise = _directional_derivatives(phi, {"x": inputs[i]}, {"x": analytic[i]}, direction, eps)
        errors[i] = relative_error(np.array([a]), np.array([n]), floor=max(1e-10, noise / tolerance))
    result = GradcheckResult(errors, tolerance)
    if raise_on_failure and not result.passed:
        raise GradcheckError(f"gradient check failed (one direction per input): {result}")
    return result


def _vjp_at(fn: Callable[..., Any], inputs: Sequence[Any], vjp: Callable[[Any], Sequence[Any]], seed: int,
            wrt: Sequence[int] | None) -> tuple[Any, Any, np.ndarray, list, list[int]]:
    """``fn``'s output, a random upstream (device and host), the backward's gradients, and the
    positions to check, with the gradients' shapes checked against their inputs'."""
    output = fn(*inputs)
    backend = backend_of(output)
    upstream_host = np.random.default_rng(seed).standard_normal(tuple(output.shape))
    upstream = backend.asarray(upstream_host) if backend is not None else upstream_host
    analytic = list(vjp(upstream))
    if len(analytic) != len(inputs):
        raise ValueError(f"vjp returned {len(analytic)} gradients for {len(inputs)} inputs")
    positions = [i for i in range(len(inputs)) if analytic[i] is not None] if wrt is None else list(wrt)
    for i in positions:
        if tuple(analytic[i].shape) != tuple(inputs[i].shape):
            raise ValueError(f"gradient {i} has shape {tuple(analytic[i].shape)}, its input {tuple(inputs[i].shape)}")
    return output, upstream, upstream_host, analytic, positions


def check_vjp_per_coordinate(
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
    """Check a backward pass against central differences of its forward, coordinate by coordinate.

    Every coordinate of $J_i^\\top u$ is estimated by its own central difference
    (:func:`numerical_vjp`): two evaluations of ``fn`` per input element, so for small
    inputs only, and a wrong entry shows up wherever it is. (This was ``check_vjp``
    before 0.2; :func:`check_vjp` is now the one-direction check.)

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
    output, upstream, upstream_host, analytic, positions = _vjp_at(fn, inputs, vjp, seed, wrt)
    # Absolute rounding noise of one central difference, as a floor (see module docstring).
    magnitude = float(np.sum(np.abs(upstream_host * to_host(output))))
    floor = max(1e-10, 10 * np.finfo(np.float64).eps * magnitude / eps / tolerance)
    errors = {}
    for i in positions:
        errors[i] = relative_error(analytic[i], numerical_vjp(fn, inputs, upstream, i, eps), floor=floor)
    result = GradcheckResult(errors, tolerance)
    if raise_on_failure and not result.passed:
        raise GradcheckError(f"gradient check failed: {result}")
    return result


def _directional_derivatives(
    loss_fn: Callable[[dict[str, Any]], Any], params: dict[str, Any], grads: dict[str, Any], directions: dict[str, Any], eps: float
) -> tuple[float, float, float]:
    """Analytic and central-difference derivatives of the loss along ``directions`` (host arrays, by name).

    The direction is normalised to a unit vector over the names it lists; the other
    parameters stay where they are. Returns ``(analytic, numeric, floor)``, where
    ``floor`` is the rounding noise of the difference (see the module docstring) scaled
    for :func:`relative_error` at tolerance 1 (divide it by the tolerance in use).
    """
    scale = np.sqrt(sum(float(np.sum(d * d)) for d in directions.values()))
    analytic = sum(float(np.sum(to_host(grads[name]) * d)) for name, d in directions.items()) / scale
    steps = {name: backend_of(params[name]).asarray(eps * d / scale) for name, d in directions.items()}
    plus = float(to_host(loss_fn({name: params[name] + steps[name] if name in steps else params[name] for name in params})))
    minus = float(to_host(loss_fn({name: params[name] - steps[name] if name in steps else params[name] for name in params})))
    numeric = (plus - minus) / (2 * eps)
    floor = 10 * np.finfo(np.float64).eps * (abs(plus) + abs(minus)) / (2 * eps)
    return analytic, numeric, floor


def _check_names(params: dict[str, Any], grads: dict[str, Any]) -> list[str]:
    names = list(params)
    if set(grads) != set(names):
        raise ValueError(f"grads and params name different arrays: {sorted(set(grads) ^ set(names))}")
    for name in names:
        _require_float64(params[name], name)
    return names


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
    names = _check_names(params, grads)
    directions = {name: rng.standard_normal(tuple(params[name].shape)) for name in names}
    analytic, numeric, noise = _directional_derivatives(loss_fn, params, grads, directions, eps)
    error = relative_error(np.array([analytic]), np.array([numeric]), floor=max(1e-10, noise / tolerance))
    result = GradcheckResult({"directional": error}, tolerance)
    if raise_on_failure and not result.passed:
        raise GradcheckError(f"directional gradient check failed: analytic {analytic:.10e}, numeric {numeric:.10e}; {result}")
    return result


# --------------------------------------------------------------------------- whole models
@dataclass(frozen=True)
class ParameterCheck:
    """The check of one parameter array of a model.

    Attributes:
        name: the model's dotted name, e.g. ``"layers.0.weight"`` (``"whole model"``
            for the direction over all parameters).
        shape: the array's shape (``()`` for the whole model).
        relative_error: as :func:`relative_error`, with the rounding-noise floor.
        abs_error: $|a - n|$ of the directional derivatives, or, checked coordinate by
            coordinate, $\\max_i |a_i - n_i|$.
        worst_index: the coordinate of that maximum (None for a directional check).
    """

    name: str
    shape: tuple
    relative_error: float
    abs_error: float
    worst_index: tuple | None = None


@dataclass(frozen=True)
class ModelGradcheckResult(GradcheckResult):
    """What :func:`check_model_gradients` found: the whole model, and each parameter by name.

    ``errors`` holds ``"directional"`` (the whole model, as before) and one relative
    error per parameter name; ``result[name]`` reads it. ``passed`` and ``max_error``
    cover them all. ``checks`` has the details by the same keys (``"directional"``
    for the whole model); ``notes`` says how the check was made, e.g. that hard
    phase-1 layers were checked against their straight-through surrogate.
    """

    checks: dict = field(default_factory=dict)
    method: str = ""
    notes: tuple = ()

    def __getitem__(self, key: str) -> float:
        return self.errors[key]

    def __contains__(self, key: object) -> bool:
        return key in self.errors

    def __iter__(self):
        return iter(self.errors)

    def keys(self):
        return self.errors.keys()

    def failures(self) -> list[str]:
        """The keys whose error exceeds the tolerance."""
        return [key for key, error in self.errors.items() if error > self.tolerance]

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED at " + ", ".join(self.failures())
        width = max(len(check.name) for check in self.checks.values())
        shapes = {key: "" if not check.shape else str(tuple(check.shape)) for key, check in self.checks.items()}
        shape_width = max(len(text) for text in shapes.values())
        lines = [f"gradient check {verdict} (tolerance {self.tolerance:.0e}; {self.method})"]
        lines.append(f"  {'':<{width}}  {'':<{shape_width}}  relative error  abs error")
        for key, check in self.checks.items():
            flag = "  <- exceeds the tolerance" if self.errors[key] > self.tolerance else ""
            where = "" if check.worst_index is None else f" at {check.worst_index}"
            lines.append(
                f"  {check.name:<{width}}  {shapes[key]:<{shape_width}}  {check.relative_error:>14.2e}"
                f"  {check.abs_error:.2e}{where}{flag}"
            )
        for note in self.notes:
            lines.extend(textwrap.wrap(note, 100, initial_indent="  note: ", subsequent_indent="        "))
        return "\n".join(lines)

    __repr__ = __str__


def _hard_layers(model: Any, train: bool) -> list[int]:
    """Indices of the phase-1 layers that select hard in a training pass."""
    return [i for i, act in enumerate(model.activations) if train and _selects(act) and act.hard]


def _selects(layer: Any) -> bool:
    """A phase-1 layer: one that owns selection logits (a phase-2 layer owns none)."""
    return hasattr(layer, "logits")


def _surrogate_logits(model: Any, x: Any, noise: dict, offsets: dict) -> Any:
    """Logits of ``model`` with each hard layer ``i`` of ``offsets`` replaced by its straight-through surrogate.

    Layer by layer as :meth:`~smartmixed_np.nn.mlp.MLP.forward` (training pass, noise
    replayed), except that a hard layer's output is
    :func:`~smartmixed_np.core.phase1.straight_through_surrogate` with the constant
    ``offsets[i]``: equal to the hard output at the point where the offsets were
    taken, and with the straight-through gradient as its exact gradient.
    """
    from .linear import linear_forward
    from .phase1 import straight_through_surrogate

    h = model.check_input(x)
    for i, (linear, act) in enumerate(zip(model.linears, model.activations)):
        z, _ = linear_forward(h, linear.W, linear.b)
        if i in offsets:
            h = straight_through_surrogate(
                z, act.logits, noise.get(i), act.pool, tau=act.tau, offset=offsets[i], clamp=act.clamp
            )
        elif _selects(act):
            h, _ = act.forward(z, True, noise=noise.get(i))
        else:
            h, _ = act.forward(z)
    return linear_forward(h, model.linears[-1].W, model.linears[-1].b)[0]


def straight_through_offsets(model: Any, layers: Sequence[int], noise: dict,
                             logits: dict[int, Any] | None = None) -> tuple[dict, dict]:
    """$C = \\mathrm{onehot}(s) - y$ and the selection $s$ per hard layer ``i`` in ``layers``.

    At the given Gumbel ``noise`` (by layer) and the layer's logits, or ``logits[i]`` where
    given. $C$ held constant makes :func:`~smartmixed_np.core.phase1.straight_through_surrogate`
    equal to the hard forward there, with the straight-through gradient as its exact gradient.

    Returns:
        ``(offsets, selected)``, by layer index: (N, K) or (B, N, K) offsets; (N,) or (B, N) ints.
    """
    from .phase1 import gumbel_softmax_weights

    offsets, selected = {}, {}
    for i in layers:
        act = model.activations[i]
        weights = gumbel_softmax_weights(act.logits if logits is None else logits[i], noise.get(i), act.tau)
        xp = array_module(weights)
        selected[i] = xp.argmax(weights, axis=-1)
        onehot = (xp.arange(weights.shape[-1]) == selected[i][..., None]).astype(weights.dtype)
        offsets[i] = onehot - weights
    return offsets, selected


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
    coordinates: bool = False,
    surrogate: bool = True,
) -> ModelGradcheckResult:
    """Check every gradient of a :class:`~smartmixed_np.nn.mlp.MLP` on one batch, whole and by parameter.

    The model (float64) is copied; the copy runs one forward pass (drawing its
    Gumbel noise once), softmax cross-entropy, and backward; then the loss is
    re-evaluated at perturbed parameters *with the same noise*. The caller's
    model, its parameters and its random streams are left untouched.

    What is compared, with $v$ one random direction over all parameters (``seed``):

    * the whole model: $\\langle \\nabla L, v \\rangle$ against
      $(L(\\theta + \\epsilon v) - L(\\theta - \\epsilon v)) / 2\\epsilon$ (key ``"directional"``);
    * each parameter by its dotted name (``"layers.0.weight"``, ...): the same along
      $v$ restricted to that parameter, two more passes per parameter, so that a wrong
      gradient shows *where* it is; or, with ``coordinates=True``, every coordinate of
      that parameter by central differences (two passes per scalar: small models only),
      which also names the worst coordinate.

    Hard phase-1 layers (``hard=True``, training pass): the straight-through gradient
    is not the gradient of the hard loss, which is piecewise constant in the selection
    logits, so finite differences of the hard loss disagree with it at the logits
    (relative errors of 0.1 to 1, which the whole-model number inherits). It is the
    exact gradient of the surrogate network in which each hard layer computes
    $\\sum_k (y_k + C_k)\\, a_k$ with $C = \\mathrm{onehot}(s) - y$ taken at the checked
    point and held constant (:func:`smartmixed_np.core.phase1.straight_through_surrogate`):
    its value is the hard forward's, and with the noise held fixed it is smooth. So by
    default the finite differences are taken of that surrogate, and the result's
    ``notes`` say so. (Where only weights and biases move, the surrogate *is* the hard
    network, so their checks are of the hard network itself.) ``surrogate=False``
    differentiates the hard loss instead, to show the disagreement.

    Args:
        model: a float64 MLP. x: (B, D) inputs. labels: (B,) classes.
        train: check a training pass (noise drawn once, then replayed) or an evaluation pass.
        seed: seeds the random direction.
        eps: finite-difference step.
        tolerance: maximum accepted relative error, for every entry.
        raise_on_failure: raise :class:`GradcheckError`, naming the failing entries.
        coordinates: check each parameter coordinate by coordinate (slow; small models).
        surrogate: check hard phase-1 layers against their straight-through surrogate.

    Returns:
        A :class:`ModelGradcheckResult`: ``result["directional"]`` for the whole model,
        ``result["layers.0.weight"]`` and so on per parameter; ``print(result)`` shows a table.
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
    names = _check_names(params, grads)

    hard = _hard_layers(probe, train)
    offsets = straight_through_offsets(probe, hard, noise)[0] if surrogate else {}
    notes = []
    if hard and surrogate:
        layers = ", ".join(f"activations.{i}" for i in hard)
        notes.append(
            f"hard phase-1 layers ({layers}) checked against their straight-through surrogate, noise held fixed: "
            "the hard loss is piecewise constant in the logits, the surrogate has the same value and, "
            "as its exact gradient, the straight-through one (surrogate=False checks the hard loss)"
        )
    elif hard:
        notes.append(
            "hard phase-1 layers checked against the hard loss itself (surrogate=False): its finite differences "
            "in the logits are not the straight-through gradient, so large errors there are expected"
        )

    def loss_at(point: dict[str, Any]) -> Any:
        probe.load_state_dict(point)
        out = _surrogate_logits(probe, x, noise, offsets) if offsets else probe.forward(x, train=train, noise=noise)
        loss, _ = softmax_cross_entropy(out, labels)
        return loss

    rng = np.random.default_rng(seed)
    directions = {name: rng.standard_normal(tuple(params[name].shape)) for name in names}
    errors: dict[str, float] = {}
    checks: dict[str, ParameterCheck] = {}

    analytic, numeric, noise_floor = _directional_derivatives(loss_at, params, grads, directions, eps)
    errors["directional"] = relative_error([analytic], [numeric], floor=max(1e-10, noise_floor / tolerance))
    checks["directional"] = ParameterCheck("whole model", (), errors["directional"], abs(analytic - numeric))
    for name in names:
        if coordinates:
            checks[name] = _coordinate_check(loss_at, params, grads, name, eps, tolerance)
        else:
            a, n, floor = _directional_derivatives(loss_at, params, grads, {name: directions[name]}, eps)
            error = relative_error([a], [n], floor=max(1e-10, floor / tolerance))
            checks[name] = ParameterCheck(name, tuple(params[name].shape), error, abs(a - n))
        errors[name] = checks[name].relative_error
    method = (
        f"central differences, eps {eps:.0e}, along one random direction"
        + (" and coordinate by coordinate" if coordinates else ", and along it restricted to each parameter")
    )
    result = ModelGradcheckResult(errors, tolerance, checks=checks, method=method, notes=tuple(notes))
    if raise_on_failure and not result.passed:
        raise GradcheckError(f"gradient check failed at {', '.join(result.failures())}:\n{result}")
    return result


def _coordinate_check(
    loss_fn: Callable[[dict[str, Any]], Any], params: dict[str, Any], grads: dict[str, Any], name: str, eps: float,
    tolerance: float,
) -> ParameterCheck:
    """Every coordinate of parameter ``name`` by central differences (two loss evaluations each)."""
    host = np.array(to_host(params[name]), dtype=np.float64)
    backend = backend_of(params[name])
    numeric = np.zeros(host.shape)
    largest = 0.0
    for index in np.ndindex(*host.shape):
        values = []
        for step in (eps, -eps):
            moved = host.copy()
            moved[index] += step
            values.append(float(to_host(loss_fn({**params, name: backend.asarray(moved)}))))
        numeric[index] = (values[0] - values[1]) / (2 * eps)
        largest = max(largest, abs(values[0]) + abs(values[1]))
    analytic = np.asarray(to_host(grads[name]), dtype=np.float64)
    difference = np.abs(analytic - numeric)
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(difference)), difference.shape)) if difference.size else ()
    # The rounding noise of one difference, as a floor (see the module docstring).
    floor = max(1e-10, 10 * np.finfo(np.float64).eps * largest / (2 * eps) / tolerance)
    error = relative_error(analytic, numeric, floor=floor)
    return ParameterCheck(name, tuple(host.shape), error, float(difference.max()) if difference.size else 0.0, worst)
