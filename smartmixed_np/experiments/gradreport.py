r"""``smartmixed gradcheck``: a gradient-verification report that a researcher can cite.

It keeps :mod:`smartmixed_np.core.gradcheck`'s definitions (central differences in
float64 as the truth, its relative error with the rounding-noise floor) and
:func:`smartmixed_np.core.phase1.straight_through_surrogate`; it runs the differences
itself because a study needs more of each one than a pass/fail: both one-sided
differences and the state of every kink at $\theta \pm h$. It checks a whole network
or one activation and writes ``report.md``, ``report.json`` (strict JSON) and figures:

* **Per parameter** (``layers.{i}.weight``, ``layers.{i}.bias``, ``activations.{i}.logits``):
  every coordinate's central difference $(L(\theta + h e_j) - L(\theta - h e_j)) / 2h$
  against the backward pass, in float64; and the same finite differences against the
  backward of the model cast to float32 (``--dtype``), judged by a float32 tolerance.
  Reported: the norm-wise relative error (the verdict), the largest absolute error, the
  largest entrywise relative error, and the worst entry (index, analytic, numeric).
  Coordinate by coordinate costs two forward passes per scalar, so it runs only up to
  :attr:`CheckOptions.max_coordinates` scalars in all.
* **One direction** (any size): with one random unit direction $v$ over all parameters,
  $\langle \nabla L, v \rangle$ against $(L(\theta + hv) - L(\theta - hv)) / 2h$, two
  forward passes whatever the size, for the whole model and restricted to each parameter.
* **The step size**: that directional error for $h$ from $10^{-12}$ to $1$, in float64
  and in float32: the V of truncation ($\propto h^2$) against rounding
  ($\propto \epsilon_{\mathrm{mach}} / h$), with the best $h$ marked.
* **Non-differentiable points**: a finite difference whose step crosses a kink
  measures a mixture of two slopes. An entry is *within h of a kink* when the state of
  a kink changes between $\theta - h e_j$ and $\theta + h e_j$: the sign of a
  pre-activation at ReLU, Leaky ReLU or SELU (ELU at 0, with $\alpha = 1$, is $C^1$:
  both slopes are 1, so it is no kink), a candidate output crossing a clamp edge
  $\pm c$; or, generically (a user's activation), when the two one-sided differences
  disagree and the analytic value matches one of them. Such entries are listed
  separately and left out of the verdict. An argmax boundary of the hard selection
  (the selection at $\alpha \pm h e_j$ differs) is listed too, for information: the
  surrogate below is smooth there, so its check stands.
* **Hard selection**: the straight-through (ST) gradient is not the gradient of the
  hard loss (piecewise constant in the logits) but the exact gradient of the
  surrogate $\sum_k (y_k + C_k) a_k$, $C = \mathrm{onehot}(s) - y$ held fixed, with the
  Gumbel noise held fixed; the per-parameter checks of a hard network are of that
  surrogate (:func:`smartmixed_np.core.phase1.straight_through_surrogate`). Then the ST
  gradient is *measured* (not judged: it is biased by design) against the exact gradient
  of the expected loss $E_s[L]$ over the selections $s$, $p(s) = \prod_n
  \mathrm{softmax}(\alpha_n)_{s_n}$ (the Gumbel-max trick): by enumerating all $K^N$
  joint selections for small networks, else per neuron (the neuron's $K$ choices
  enumerated, the others held at a sampled selection, averaged over the samples: an
  unbiased, Rao-Blackwellised estimate), both from :mod:`smartmixed_np.core.estimators`.
  Every estimator there (straight-through, ReinMax, Gumbel-Rao, the score function:
  :func:`available_estimators`) is measured the same way, by the model's own backward
  with that estimator, over the same noise draws: the cosine and the relative error of
  its mean, their standard error, and the spread of one draw.

Exit status of the command: 0 when every check passes its tolerance, 1 when one fails,
2 for a usage error. Everything runs on host NumPy arrays, on private copies: the
caller's model, arrays and random streams are never touched.
"""

from __future__ import annotations

import argparse
import copy
import math
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import options
from ..backend import to_host
from ..core.activations import Activation, clamp_limits, get_activation, resolve_pool
from ..core.gradcheck import relative_error, straight_through_offsets
from ..core.linear import linear_forward
from ..core.losses import softmax_cross_entropy
from ..core.phase1 import NOISE_MODES, gumbel_softmax_weights, mixture_forward, straight_through_surrogate
from ..errors import UserError
from ..fileio import write_json, write_text
from ..nn.mlp import MLP

__all__ = [
    "KINKED_AT_ZERO",
    "REPORT_FORMAT",
    "ArrayCheck",
    "CheckOptions",
    "DirectionCheck",
    "GradcheckReport",
    "GradcheckUsageError",
    "Kink",
    "NetworkSpec",
    "ParameterReport",
    "StepScan",
    "StraightThroughStudy",
    "add_gradcheck_parser",
    "available_estimators",
    "gradcheck_activation",
    "gradcheck_network",
    "run_gradcheck",
    "write_gradcheck_report",
]

REPORT_FORMAT = "smartmixed-gradcheck/1"
EPS64 = float(np.finfo(np.float64).eps)
EPS32 = float(np.finfo(np.float32).eps)
#: Activations with a kink at 0, and their two slopes (ELU with alpha = 1 is C1 there: not listed).
KINKED_AT_ZERO = {
    "relu": "ReLU at 0 (slopes 0 and 1)",
    "leaky_relu": "Leaky ReLU at 0 (slopes 0.01 and 1)",
    "selu": "SELU at 0 (slopes 1.758 and 1.051)",
}
ELU_NOTE = (
    "ELU at 0 is not a kink: with alpha = 1 both one-sided slopes are 1 (the function is C1; "
    "only its second derivative jumps), so it is checked like a smooth point"
)


class GradcheckUsageError(UserError, ValueError):
    """A ``smartmixed gradcheck`` option or argument is wrong (exit status 2)."""


# --------------------------------------------------------------------------- options
@dataclass(frozen=True)
class CheckOptions:
    r"""How the checks are made.

    Attributes:
        eps: the finite-difference step $h$ of the checks (the step scan tries others).
        tolerance: the largest accepted float64 relative error (norm-wise, with the noise floor).
        tolerance_float32: the same for the float32 re-run, against the float64 differences.
            A float32 backward of a small network accumulates some hundreds of roundings of
            relative size $\epsilon_{32} = 1.2 \cdot 10^{-7}$: errors of $10^{-7}$ to
            $10^{-5}$ are expected, and $10^{-4}$ (about $840\,\epsilon_{32}$) leaves room
            while a wrong gradient is off by $10^{-2}$ or more.
        dtypes: the precisions checked: ``("float64",)`` or ``("float64", "float32")``
            (the float64 finite differences are the truth for both).
        max_coordinates: the coordinate-by-coordinate check runs only when the network has
            at most this many scalar parameters (two forward passes each).
        steps: the step sizes of the scan.
        st_samples: noise draws of the straight-through study.
        max_selections: joint selections enumerated at most ($K^N$); above, per neuron.
        estimators: the estimators measured in the study; None: every one of :func:`available_estimators`.
    """

    eps: float = 1e-6
    tolerance: float = 1e-6
    tolerance_float32: float = 1e-4
    dtypes: tuple = ("float64", "float32")
    max_coordinates: int = 4000
    steps: tuple = tuple(float(h) for h in np.logspace(-12, 0, 25))
    st_samples: int = 200
    max_selections: int = 10_000
    estimators: tuple | None = None

    @classmethod
    def quick(cls, **changes: Any) -> "CheckOptions":
        """Fewer steps and noise draws, a smaller coordinate limit: a smoke test in a second or two."""
        base = cls(max_coordinates=1000, steps=tuple(float(h) for h in np.logspace(-12, 0, 13)), st_samples=40)
        return replace(base, **changes)


@dataclass(frozen=True)
class NetworkSpec:
    """A small network to check, given as ``smartmixed train`` would take it, and its random batch.

    Attributes:
        hidden: hidden widths. inputs: input features $D$. classes: output classes $C$.
        batch: examples in the checked batch (standard normal inputs, uniform labels).
        model: ``"smartmixed"`` or one activation name (a fixed network).
        pool, tau, hard, clamp, noise_mode: the phase-1 options (as :class:`~smartmixed_np.nn.mlp.MLP`).
        input_scale: the inputs' standard deviation (larger values reach the clamp).
    """

    hidden: tuple = (3, 2)
    inputs: int = 6
    classes: int = 3
    batch: int = 4
    model: str = "smartmixed"
    pool: tuple | None = None
    tau: float = 0.3
    hard: bool = True
    clamp: float | None = 10.0
    noise_mode: str = "shared"
    input_scale: float = 1.0

    def build(self, seed: int = 0) -> tuple[MLP, np.ndarray, np.ndarray]:
        """The float64 model (seeded by ``seed``) and its batch: ``x`` (B, D), ``labels`` (B,)."""
        sizes = [self.inputs, *self.hidden, self.classes]
        model = MLP(sizes, self.model, pool=self.pool, tau=self.tau, hard=self.hard, clamp=self.clamp,
                    noise_mode=self.noise_mode, dtype="float64", seed=seed)
        rng = np.random.default_rng([seed, 1])
        x = self.input_scale * rng.standard_normal((self.batch, self.inputs))
        labels = rng.integers(0, self.classes, size=self.batch)
        return model, x, labels


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class ArrayCheck:
    r"""One array of analytic gradients against the float64 central differences, in one precision.

    Attributes:
        dtype: the precision of the backward pass (``"float64"`` or ``"float32"``).
        relative_error: $\lVert a - n \rVert / \max(\lVert a \rVert + \lVert n \rVert, \mathrm{floor})$
            over the entries not at a kink, the floor set by the differences' rounding noise
            (:mod:`smartmixed_np.core.gradcheck`); the verdict.
        tolerance, passed: the threshold and whether ``relative_error`` is within it.
        max_abs_error: $\max_j |a_j - n_j|$.
        max_entry_error: $\max_j |a_j - n_j| / \max(|a_j| + |n_j|, 10^{-3} \max_i (|a_i| + |n_i|))$:
            relative to the entry, or to a thousandth of the largest one when it is smaller.
        worst_index, worst_analytic, worst_numeric: the entry of the largest absolute error.
        checked, excluded: entries compared, and entries left out (within h of a kink).
    """

    dtype: str
    relative_error: float
    tolerance: float
    passed: bool
    max_abs_error: float
    max_entry_error: float
    worst_index: tuple | None
    worst_analytic: float | None
    worst_numeric: float | None
    checked: int
    excluded: int = 0


@dataclass(frozen=True)
class DirectionCheck:
    r"""The one-direction check: $\langle \nabla L, v \rangle$ against $(L(\theta + hv) - L(\theta - hv)) / 2h$.

    Attributes:
        name: ``"whole model"`` or the parameter (``v`` restricted to it).
        dtype: the precision of the backward pass.
        analytic, numeric: the two directional derivatives (numeric: float64 differences).
        relative_error, tolerance, passed: as :class:`ArrayCheck`.
        crosses: kinks the step $\pm hv$ crosses; when any, the check is reported but not counted.
    """

    name: str
    dtype: str
    analytic: float
    numeric: float
    relative_error: float
    tolerance: float
    passed: bool
    crosses: tuple = ()

    @property
    def counted(self) -> bool:
        return not self.crosses


@dataclass(frozen=True)
class Kink:
    """An entry within h of a non-differentiable point.

    Attributes:
        parameter: the array (a parameter's name, or ``"f'(x)"`` for an activation).
        index: the entry.
        reasons: what lies within h (``"ReLU at 0 (slopes 0 and 1): hidden layer 0, neuron 1, sample 2"``).
        analytic, numeric: the backward's value and the central difference.
        forward, backward: the one-sided differences $(L(\theta + h) - L(\theta))/h$ and
            $(L(\theta) - L(\theta - h))/h$.
        excluded: left out of the verdict (False for an argmax boundary, where the
            surrogate that is checked is smooth).
    """

    parameter: str
    index: tuple
    reasons: tuple
    analytic: float
    numeric: float
    forward: float
    backward: float
    excluded: bool = True


@dataclass(frozen=True)
class StepScan:
    """The directional error against the step size: ``errors[dtype][j]`` at ``steps[j]``.

    ``error = |n(h) - a| / |a|`` with $a$ the float64 backward's directional derivative
    and $n(h)$ the central difference computed in that precision. ``best[dtype]`` is
    ``(h, error)`` at the smallest error.
    """

    steps: tuple
    analytic: float
    errors: dict
    best: dict

    def minimum_inside(self, dtype: str = "float64") -> bool:
        """The smallest error lies strictly inside the scanned range (a proper V)."""
        values = np.asarray(self.errors[dtype], dtype=float)
        position = int(np.nanargmin(values))
        return 0 < position < len(values) - 1


@dataclass(frozen=True)
class StraightThroughStudy:
    """The straight-through gradient of the logits against the exact gradient of the expected loss.

    Attributes:
        method: how the exact gradient was had (joint enumeration or per neuron).
        combinations: joint selections enumerated ($K^N$), or forward passes per sample (per neuron).
        expected_loss: $E_s[L]$ (joint enumeration) or None.
        exact: the exact gradient, flattened over the phase-1 layers' logits (host list).
        exact_standard_error: for the per-neuron estimate, the norm of its standard error
            relative to its norm (0 for the joint enumeration).
        estimators: per estimator name, its measurements (see :func:`_measure`).
        names: the logits arrays in the flattening order, with their shapes.
    """

    method: str
    combinations: int
    expected_loss: float | None
    exact: tuple
    exact_standard_error: float
    estimators: dict
    names: tuple


@dataclass(frozen=True)
class ParameterReport:
    """Everything checked of one parameter array: ``coordinates[dtype]`` (absent above the
    coordinate limit) and ``directional[dtype]``."""

    name: str
    shape: tuple
    coordinates: dict = field(default_factory=dict)
    directional: dict = field(default_factory=dict)


@dataclass
class GradcheckReport:
    """What :func:`gradcheck_network` or :func:`gradcheck_activation` found.

    Attributes:
        target: what was checked (JSON-able): the network's sizes and options, or the activation.
        options: the :class:`CheckOptions` used.
        parameters: one :class:`ParameterReport` per parameter (for an activation, its derivative ``f'(x)``).
        whole: the one-direction check over all parameters, per dtype.
        forward: the reference forward against the model's own, per dtype: ``{"difference", "tolerance", "passed"}``.
        step_scan: the :class:`StepScan`.
        kinks: the :class:`Kink` entries found.
        straight_through: the :class:`StraightThroughStudy`, or None (not a hard phase-1 network).
        network: for an activation, the report of a small network using it; else None.
        grid: for an activation, the points $x$ of the check (float32 numbers); else None.
        notes: how the checks were made, and what was skipped.
        command: the command line, when run from the CLI.
    """

    target: dict
    options: CheckOptions
    parameters: list = field(default_factory=list)
    whole: dict = field(default_factory=dict)
    forward: dict = field(default_factory=dict)
    step_scan: StepScan | None = None
    kinks: list = field(default_factory=list)
    straight_through: StraightThroughStudy | None = None
    network: "GradcheckReport | None" = None
    grid: tuple | None = None
    notes: list = field(default_factory=list)
    command: str | None = None

    def failures(self) -> list[str]:
        """One line per failed check, naming the parameter and the precision."""
        lines = []
        for dtype, check in self.forward.items():
            if not check["passed"]:
                lines.append(f"forward ({dtype}): the reference forward differs from the model's by "
                             f"{check['difference']:.2e} (tolerance {check['tolerance']:.0e})")
        for report in self.parameters:
            for dtype, check in report.coordinates.items():
                if not check.passed:
                    lines.append(
                        f"{report.name} ({dtype}, coordinate by coordinate): relative error {check.relative_error:.2e} "
                        f"> {check.tolerance:.0e}; worst entry {_index_text(check.worst_index)}: analytic "
                        f"{check.worst_analytic:.6e}, numeric {check.worst_numeric:.6e}"
                    )
            for dtype, check in report.directional.items():
                if check.counted and not check.passed:
                    lines.append(f"{report.name} ({dtype}, one direction): relative error {check.relative_error:.2e} "
                                 f"> {check.tolerance:.0e}")
        for dtype, check in self.whole.items():
            if check.counted and not check.passed:
                lines.append(f"whole model ({dtype}, one direction): relative error {check.relative_error:.2e} "
                             f"> {check.tolerance:.0e}")
        if self.network is not None:
            lines.extend(f"network: {line}" for line in self.network.failures())
        return lines

    @property
    def passed(self) -> bool:
        return not self.failures()

    def failing_parameters(self) -> list[str]:
        """The names of the parameters with a failed check (coordinates or direction)."""
        names = []
        for report in self.parameters:
            bad = [c for c in report.coordinates.values() if not c.passed]
            bad += [c for c in report.directional.values() if c.counted and not c.passed]
            if bad:
                names.append(report.name)
        return names

    def to_json(self) -> dict:
        """The report as a JSON-able dict (finite floats, lists; :func:`write_gradcheck_report` writes it)."""
        return _plain({
            "format": REPORT_FORMAT,
            "passed": self.passed,
            "failures": self.failures(),
            "target": self.target,
            "command": self.command,
            "options": self.options,
            "forward": self.forward,
            "parameters": self.parameters,
            "whole_model": self.whole,
            "step_scan": self.step_scan,
            "kinks": self.kinks,
            "straight_through": self.straight_through,
            "network": self.network.to_json() if self.network is not None else None,
            "grid": self.grid,
            "notes": self.notes,
        })

    def summary(self) -> str:
        """A few lines for the terminal: the verdict, the errors, the kinks, the study."""
        verdict = "passed" if self.passed else "FAILED"
        lines = [f"gradcheck {verdict}: {self.target.get('description', '')}"]
        for dtype in self.options.dtypes:
            errors = [r.coordinates[dtype].relative_error for r in self.parameters if dtype in r.coordinates]
            how = "coordinate by coordinate"
            if not errors:
                errors = [r.directional[dtype].relative_error for r in self.parameters if dtype in r.directional]
                how = "one direction"
            if errors:
                tol = self.options.tolerance if dtype == "float64" else self.options.tolerance_float32
                lines.append(f"  {dtype}: largest relative error {max(errors):.1e} ({how}; tolerance {tol:.0e})")
        excluded = [k for k in self.kinks if k.excluded]
        if self.kinks:
            lines.append(f"  {len(excluded)} entries within h of a kink (reported, not counted)"
                         + (f", {len(self.kinks) - len(excluded)} near an argmax boundary" if len(excluded) < len(self.kinks) else ""))
        if self.step_scan is not None:
            best = ", ".join(f"{d} h={h:.0e}" for d, (h, _) in self.step_scan.best.items())
            lines.append(f"  best step: {best}")
        study = self.straight_through
        if study is not None and study.estimators:
            how = "enumerated" if study.method.startswith("exact") else "per neuron"
            draws = next(iter(study.estimators.values()))["samples"]
            cosines = ", ".join(f"{name} {m['cosine_of_mean']:.3f}" for name, m in study.estimators.items())
            lines.append(f"  against the exact expected gradient ({how}), cosine of the mean of {draws} draws: {cosines}")
        if self.network is not None:
            lines.append(f"  in a network: {'passed' if self.network.passed else 'FAILED'}")
        lines.extend(f"  failed: {line}" for line in self.failures())
        return "\n".join(lines)

    __str__ = summary


def _index_text(index: Any) -> str:
    return "-" if index is None else "[" + ", ".join(str(i) for i in index) + "]"


def _plain(value: Any) -> Any:
    """Dataclasses, tuples, NumPy scalars and arrays as JSON-able dicts, lists and Python numbers."""
    if hasattr(value, "__dataclass_fields__"):
        out = {name: _plain(getattr(value, name)) for name in value.__dataclass_fields__}
        if isinstance(value, DirectionCheck):
            out["counted"] = value.counted
        return out
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value)
    return value


# --------------------------------------------------------------------------- comparison
def _compare(analytic: np.ndarray, numeric: np.ndarray, excluded: np.ndarray, noise: float, tolerance: float,
             dtype: str) -> ArrayCheck:
    """An :class:`ArrayCheck` of ``analytic`` against ``numeric`` (same shape), leaving out ``excluded``.

    ``noise`` is the absolute rounding noise of one central difference (the floor of the
    norm-wise relative error is ``noise / tolerance``, as in :mod:`smartmixed_np.core.gradcheck`).
    """
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numeric, dtype=np.float64)
    keep = ~np.asarray(excluded, dtype=bool)
    if not keep.any():
        return ArrayCheck(dtype, 0.0, tolerance, True, 0.0, 0.0, None, None, None, 0, int(a.size))
    error = relative_error(a[keep], n[keep], floor=max(1e-10, noise / tolerance))
    difference = np.where(keep, np.abs(a - n), -1.0)
    worst = np.unravel_index(int(np.argmax(difference)), a.shape) if a.ndim else ()
    size = np.abs(a) + np.abs(n)
    scale = max(1e-3 * float(size[keep].max()), 1e-300)
    entry = float((difference[keep] / np.maximum(size[keep], scale)).max())
    return ArrayCheck(
        dtype, float(error), tolerance, bool(error <= tolerance), float(difference[keep].max()), entry,
        tuple(int(i) for i in worst), float(a[worst]), float(n[worst]), int(keep.sum()), int((~keep).sum()),
    )


def _one_sided_kink(a: float, n: float, forward: float, backward: float, scale: float, tolerance: float) -> bool:
    """A failing entry explained by a kink: the one-sided differences disagree and the analytic
    value matches one of them (a smooth function's one-sided slopes differ by $h f''$ only).

    With a kink inside the step, the central difference is about the mean of the two slopes,
    so $|a - n|$ is about half their gap; a wrong derivative of a smooth function gives
    one-sided differences that agree with each other but not with it.
    """
    gap = abs(forward - backward)
    fails = abs(a - n) > tolerance * scale
    return bool(fails and gap >= abs(a - n) and min(abs(a - forward), abs(a - backward)) <= 0.1 * gap)


# --------------------------------------------------------------------------- the network at a point
@dataclass
class _Point:
    r"""A float64 copy of a network at the checked point, with what replays its training pass.

    Attributes:
        probe: the private copy (its arrays are never moved: the loss reads ``params``).
        x: (B, D) float64. labels: (B,) int64.
        noise: the Gumbel noise of the checked pass, by hidden-layer index.
        offsets: $C = \mathrm{onehot}(s) - y$ per hard phase-1 layer (the surrogate's constant).
        selected: $s$ per hard phase-1 layer, (N,) or (B, N).
        params, grads: the parameters and the float64 backward's gradients, by name.
        loss: the model's own loss at the point.
    """

    probe: MLP
    x: np.ndarray
    labels: np.ndarray
    noise: dict
    offsets: dict
    selected: dict
    params: dict
    grads: dict
    loss: float


def _selects(layer: Any) -> bool:
    """A phase-1 layer: one that owns selection logits."""
    return hasattr(layer, "logits")


def _prepare(model: MLP, x: Any, labels: Any) -> _Point:
    """Copy ``model`` as float64, run one training pass (drawing its noise), backward, and keep all of it."""
    if not isinstance(model, MLP):
        raise GradcheckUsageError(f"gradcheck_network takes an MLP or a NetworkSpec, got {type(model).__name__}")
    if model.backend.name != "numpy":
        raise GradcheckUsageError("gradcheck runs on host NumPy arrays: move the model with model.to('cpu') first")
    if model.options.get("estimator", "st") != "st":
        # the checks are of the straight-through gradient; the study measures the other estimators
        probe = MLP.from_config({**model.config(), "estimator": "st", "dtype": "float64"})
        probe.load_state_dict(model.state_dict())
    else:
        probe = copy.deepcopy(model)
    if probe.dtype != np.float64:
        probe.to(dtype="float64")
    x = np.asarray(to_host(x), dtype=np.float64)
    labels = np.asarray(to_host(labels), dtype=np.int64)
    logits = probe.forward(x, train=True)
    noise = probe.last_noise
    loss, dlogits = softmax_cross_entropy(logits, labels)
    probe.backward(dlogits)
    grads = {name: np.array(g, dtype=np.float64) for name, g in probe.gradients().items()}
    params = {name: np.array(p, dtype=np.float64) for name, p in probe.parameters().items()}
    offsets, selected = _straight_through_offsets(probe, params, noise)
    return _Point(probe, x, labels, noise, offsets, selected, params, grads, float(loss))


def _straight_through_offsets(probe: MLP, params: dict, noise: dict) -> tuple[dict, dict]:
    """$C = \\mathrm{onehot}(s) - y$ and $s$ for each hard phase-1 layer, at ``params``' logits and ``noise``."""
    hard = [i for i, act in enumerate(probe.activations) if _selects(act) and act.hard]
    return straight_through_offsets(probe, hard, noise, {i: params[f"activations.{i}.logits"] for i in hard})


def _kink_states(names: np.ndarray, raw: np.ndarray, z: np.ndarray, clamp_lo: np.ndarray, clamp_hi: np.ndarray) -> np.ndarray:
    """The state of every kink that an output depends on, as small ints (same shape as ``z``).

    ``names`` holds each position's activation name; ``raw`` its unclamped output.
    Bit 0: $z > 0$ where the activation has a kink at 0; bits 1-2: below the lower or
    above the upper clamp edge (NaN edges: none).
    """
    kinked = np.isin(names, list(KINKED_AT_ZERO))
    state = (kinked & (z > 0)).astype(np.int8)
    with np.errstate(invalid="ignore"):
        state |= (raw < clamp_lo).astype(np.int8) << 1
        state |= (raw > clamp_hi).astype(np.int8) << 2
    return state


def _edges(pool: Sequence[Activation], clamp: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate, its lower and upper clamp edge (NaN where the clamp cannot act)."""
    limits = [clamp_limits(a, clamp) for a in pool]
    lo = np.array([np.nan if l is None else l for l, _ in limits])
    hi = np.array([np.nan if h is None else h for _, h in limits])
    return lo, hi


def _evaluate(point: _Point, params: dict, *, dtype: Any = np.float64, noise: dict | None = None,
              offsets: dict | None = None, x: np.ndarray | None = None, marks: bool = True) -> tuple[float, dict]:
    """The loss of the checked training pass at ``params`` (the surrogate for hard layers), and its kink marks.

    Layer by layer with the reference functions: $z = h W^\\top + b$; a hard phase-1 layer
    as :func:`~smartmixed_np.core.phase1.straight_through_surrogate` with the point's
    offsets and noise; a soft one as the soft mixture; a phase-2 layer by its own forward.

    Returns:
        ``loss`` and, with ``marks``, {key: int8 array}: the kink states
        (:func:`_kink_states`) per hidden layer (``("kink", i)``) and, for a hard layer, the
        selection of the hard forward at these logits (``("argmax", i)``), with the names
        and pre-activations needed to describe them (``("names", i)``, ``("z", i)``).
    """
    noise = point.noise if noise is None else noise
    offsets = point.offsets if offsets is None else offsets
    h = point.x.astype(dtype) if x is None else x
    found: dict = {}
    for i, act in enumerate(point.probe.activations):
        z, _ = linear_forward(h, params[f"layers.{i}.weight"], params[f"layers.{i}.bias"])
        if _selects(act):
            logits = params[f"activations.{i}.logits"]
            if act.hard:
                h = straight_through_surrogate(z, logits, noise.get(i), act.pool, tau=act.tau, offset=offsets[i],
                                               clamp=act.clamp)
            else:
                h, _ = mixture_forward(z, logits, noise.get(i), act.pool, tau=act.tau, hard=False, clamp=act.clamp)
            if marks:
                found.update(_phase1_marks(i, act, z, logits, noise.get(i), point.selected.get(i)))
        else:
            h, _ = act.forward(z)
            if marks:
                found.update(_phase2_marks(i, act, z))
    out, _ = linear_forward(h, params[f"layers.{len(point.probe.activations)}.weight"],
                            params[f"layers.{len(point.probe.activations)}.bias"])
    loss, _ = softmax_cross_entropy(out, point.labels, check=False)
    return float(loss), found


def _phase1_marks(i: int, act: Any, z: np.ndarray, logits: np.ndarray, noise: Any, selected: Any) -> dict:
    """Kink marks of a phase-1 layer: the selected candidate's (hard) or every candidate's (soft)."""
    names = np.array([a.name for a in act.pool], dtype=object)
    raw = np.stack([a.forward(z) for a in act.pool])  # (K, B, N)
    lo, hi = _edges(act.pool, act.clamp)
    shape = (len(act.pool),) + (1,) * z.ndim
    states = _kink_states(np.broadcast_to(names.reshape(shape), raw.shape), raw, np.broadcast_to(z, raw.shape),
                          np.broadcast_to(lo.reshape(shape), raw.shape), np.broadcast_to(hi.reshape(shape), raw.shape))
    out = {}
    if act.hard:
        index = np.broadcast_to(selected if selected.ndim == 2 else selected[None, :], z.shape)
        pick = lambda stack: np.take_along_axis(stack, index[None], axis=0)[0]  # noqa: E731
        out[("kink", i)] = pick(states)
        out[("names", i)] = pick(np.broadcast_to(names.reshape(shape), raw.shape))
        out[("argmax", i)] = np.argmax(gumbel_softmax_weights(logits, noise, act.tau), axis=-1).astype(np.int16)
    else:
        out[("kink", i)] = states
        out[("names", i)] = np.broadcast_to(names.reshape(shape), raw.shape)
    out[("z", i)] = z
    return out


def _phase2_marks(i: int, act: Any, z: np.ndarray) -> dict:
    """Kink marks of a phase-2 layer: each neuron's own activation."""
    names = np.array([act.pool[k].name for k in act.choices], dtype=object)
    raw = np.empty_like(z)
    lo = np.full(z.shape[1], np.nan)
    hi = np.full(z.shape[1], np.nan)
    for k in np.unique(act.choices):
        columns = act.choices == k
        raw[:, columns] = act.pool[k].forward(z[:, columns])
        lo_k, hi_k = clamp_limits(act.pool[k], act.clamp)
        lo[columns] = np.nan if lo_k is None else lo_k
        hi[columns] = np.nan if hi_k is None else hi_k
    full = lambda row: np.broadcast_to(row, z.shape)  # noqa: E731
    return {("kink", i): _kink_states(full(names), raw, z, full(lo), full(hi)), ("names", i): full(names), ("z", i): z}


def _crossings(center: dict, plus: dict, minus: dict, limit: int = 3) -> tuple[list[str], list[str]]:
    """What the step crosses: kinks (left out of the verdict) and argmax boundaries (for information).

    Returns ``(kinks, boundaries)``, each at most ``limit`` descriptions.
    """
    kinks: list[str] = []
    boundaries: list[str] = []
    for key, state in center.items():
        kind, layer = key
        if kind not in ("kink", "argmax"):
            continue
        changed = (plus[key] != state) | (minus[key] != state)
        for position in zip(*np.nonzero(changed)):
            if kind == "argmax":
                where = f"hidden layer {layer}, neuron {position[-1]}" + (f", sample {position[0]}" if len(position) == 2 else "")
                flip = {int(plus[key][position]), int(minus[key][position]), int(state[position])}
                if len(boundaries) < limit:
                    boundaries.append(f"argmax boundary: {where} (the hard selection takes {sorted(flip)} within h)")
                continue
            if len(kinks) >= limit:
                break
            name = str(center[("names", layer)][position])
            z = float(np.broadcast_to(center[("z", layer)], state.shape)[position])
            bits = int(state[position]) ^ int(plus[key][position]) | int(state[position]) ^ int(minus[key][position])
            what = KINKED_AT_ZERO.get(name, name) if bits & 1 else f"{name} at a clamp edge"
            where = f"hidden layer {layer}, neuron {position[-1]}, sample {position[-2]}"
            if len(position) == 3:
                where += f", candidate {name}"
            kinks.append(f"{what}: {where}, z = {z:.3g}")
    return kinks, boundaries


# --------------------------------------------------------------------------- network checks
def gradcheck_network(
    network: MLP | NetworkSpec,
    x: Any = None,
    labels: Any = None,
    *,
    options: CheckOptions | None = None,
    seed: int = 0,
) -> GradcheckReport:
    """Check every gradient of a network on one batch, and study its straight-through gradient.

    Args:
        network: an :class:`~smartmixed_np.nn.mlp.MLP` (any dtype; copied, cast to float64 for
            the reference), or a :class:`NetworkSpec` to build one (seeded by ``seed``).
        x: (B, D) inputs and labels: (B,) classes; for an MLP without them, a standard normal
            batch of 4 examples seeded by ``seed``.
        options: :class:`CheckOptions` (default: the defaults).
        seed: seeds the network (a spec), the batch, the directions and the noise draws.

    Returns:
        The :class:`GradcheckReport` (``passed``, ``failures()``, ``summary()``).
    """
    options = options or CheckOptions()
    if isinstance(network, NetworkSpec):
        spec = network
        model, x_built, labels_built = spec.build(seed)
        x = x_built if x is None else x
        labels = labels_built if labels is None else labels
    else:
        model = network
        if x is None or labels is None:
            rng = np.random.default_rng([seed, 1])
            x = rng.standard_normal((4, model.sizes[0])) if x is None else x
            labels = rng.integers(0, model.sizes[-1], size=len(to_host(x))) if labels is None else labels
    point = _prepare(model, x, labels)
    report = GradcheckReport(target=_describe_network(point), options=options)
    names = list(point.params)
    center_loss, center = _evaluate(point, point.params)
    report.forward["float64"] = _forward_check(point.loss, center_loss, 1e-10)
    grads32, loss32, notes32 = _float32_pass(point) if "float32" in options.dtypes else (None, None, [])
    if grads32 is not None:
        report.forward["float32"] = _forward_check(loss32, center_loss, options.tolerance_float32)
    report.notes.extend(notes32)

    total = sum(p.size for p in point.params.values())
    coordinates = total <= options.max_coordinates
    rng = np.random.default_rng([seed, 7])
    direction = {name: rng.standard_normal(point.params[name].shape) for name in names}
    for name in names:
        entry = ParameterReport(name, tuple(point.params[name].shape))
        if coordinates:
            entry.coordinates.update(_coordinate_checks(point, name, center_loss, center, grads32, options, report.kinks))
        entry.directional.update(_direction_checks(point, {name: direction[name]}, name, center, grads32, options))
        report.parameters.append(entry)
    report.whole.update(_direction_checks(point, direction, "whole model", center, grads32, options))
    report.step_scan = _step_scan(point, direction, options)
    if not coordinates:
        report.notes.append(
            f"the coordinate-by-coordinate check was skipped: the network has {total} scalar parameters, more than "
            f"the limit of {options.max_coordinates} (two forward passes each); the one-direction checks cover it"
        )
    else:
        report.notes.append(f"every one of the {total} scalar parameters was checked by its own central difference "
                            f"(limit {options.max_coordinates})")
    _network_notes(point, report)
    trained_with = model.options.get("estimator", "st")
    if trained_with != "st":
        report.notes.append(f"the model trains with the {trained_with} estimator: the checks above are of a "
                            "straight-through copy (its backward is the one with a surrogate to differentiate); "
                            f"{trained_with} itself is measured in the study below")
    hard = [i for i, act in enumerate(point.probe.activations) if _selects(act) and act.hard]
    if hard and point.probe.options["noise_mode"] != "none":
        report.straight_through = _straight_through_study(point, hard, options, seed, report.notes)
    elif hard:
        report.notes.append("no Gumbel noise (noise mode none): the selection is deterministic, the expected loss is "
                            "the hard loss itself, so the straight-through gradient has no exact counterpart to be measured against")
    return report


def _describe_network(point: _Point) -> dict:
    """The checked network as JSON: sizes, options, engines, and a one-line description."""
    probe = point.probe
    sizes = "-".join(str(s) for s in probe.sizes)
    target = {"kind": "network", "sizes": list(probe.sizes), "phase": probe.phase, "batch": int(point.x.shape[0])}
    if probe.phase == 1:
        options = probe.options
        target.update(model="smartmixed", pool=[a.name for a in probe.pool], hard=options["hard"], tau=options["tau"],
                      clamp=options["clamp"], noise_mode=options["noise_mode"])
        mode = "hard" if options["hard"] else "soft"
        clamp = "no clamp" if options["clamp"] is None else f"clamp {options['clamp']:g}"
        target["description"] = (f"SmartMixed {sizes} ({mode}, {options['noise_mode']} noise, tau {options['tau']:g}, "
                                 f"{clamp}, pool {','.join(target['pool'])}), batch {target['batch']}")
    else:
        names = sorted({n for layer in probe.choice_names() for n in layer})
        target.update(model=",".join(names))
        target["description"] = f"{','.join(names)} network {sizes}, batch {target['batch']}"
    target["engines"] = [getattr(act.engine, "name", type(act.engine).__name__) for act in probe.activations]
    return target


def _forward_check(model_loss: float, reference_loss: float, tolerance: float) -> dict:
    difference = abs(model_loss - reference_loss) / max(1.0, abs(reference_loss))
    return {"model_loss": model_loss, "reference_loss": reference_loss, "difference": difference,
            "tolerance": tolerance, "passed": bool(difference <= tolerance)}


def _float32_pass(point: _Point) -> tuple[dict, float, list[str]]:
    """The backward of the checked model cast to float32, at the point's float32 parameters and noise."""
    probe = copy.deepcopy(point.probe)
    probe.to(dtype="float32")
    probe.load_state_dict(point.params)
    noise = {i: n.astype(np.float32) for i, n in point.noise.items() if n is not None}
    logits = probe.forward(point.x.astype(np.float32), train=True, noise=noise)
    loss, dlogits = softmax_cross_entropy(logits, point.labels)
    probe.backward(dlogits)
    notes = []
    for i, chosen in point.selected.items():
        act = probe.activations[i]
        chosen32 = np.argmax(gumbel_softmax_weights(act.logits, noise.get(i), act.tau), axis=-1)
        if not np.array_equal(chosen32, chosen):
            notes.append(f"float32 selects differently from float64 in hidden layer {i} (a near tie of the noisy "
                         "logits): its float32 gradients are of another network")
    return {name: np.array(g, dtype=np.float64) for name, g in probe.gradients().items()}, float(loss), notes


def _coordinate_checks(point: _Point, name: str, center_loss: float, center: dict, grads32: dict | None,
                       options: CheckOptions, kinks: list) -> dict:
    """Every coordinate of parameter ``name`` by central differences; the kinks found go into ``kinks``."""
    params = {key: value.copy() for key, value in point.params.items()}
    array = params[name]
    numeric = np.zeros(array.shape)
    forward = np.zeros(array.shape)
    backward = np.zeros(array.shape)
    excluded = np.zeros(array.shape, dtype=bool)
    reasons: dict = {}
    largest = 0.0
    for index in np.ndindex(*array.shape):
        original = array[index]
        array[index] = original + options.eps
        up = array[index] - original
        plus, marks_plus = _evaluate(point, params)
        array[index] = original - options.eps
        down = original - array[index]
        minus, marks_minus = _evaluate(point, params)
        array[index] = original
        numeric[index] = (plus - minus) / (up + down)
        forward[index] = (plus - center_loss) / up
        backward[index] = (center_loss - minus) / down
        largest = max(largest, abs(plus) + abs(minus))
        crossed, boundaries = _crossings(center, marks_plus, marks_minus)
        if crossed:
            excluded[index] = True
            reasons[index] = (tuple(crossed), True)
        elif boundaries:
            reasons[index] = (tuple(boundaries), False)
    noise = 10 * EPS64 * largest / (2 * options.eps)
    analytic = point.grads[name]
    scale = float(np.linalg.norm(analytic) + np.linalg.norm(numeric))
    for index in np.ndindex(*array.shape):
        if not excluded[index] and _one_sided_kink(analytic[index], numeric[index], forward[index], backward[index],
                                                   scale, options.tolerance):
            excluded[index] = True
            reasons[index] = (("one-sided differences disagree, the analytic value matches one of them: "
                               "a kink not known to the checker (a user's activation?)",), True)
    for index, (why, left_out) in reasons.items():
        kinks.append(Kink(name, tuple(int(i) for i in index), why, float(analytic[index]), float(numeric[index]),
                          float(forward[index]), float(backward[index]), left_out))
    checks = {"float64": _compare(analytic, numeric, excluded, noise, options.tolerance, "float64")}
    if grads32 is not None:
        checks["float32"] = _compare(grads32[name], numeric, excluded, noise, options.tolerance_float32, "float32")
    return checks


def _direction_checks(point: _Point, direction: dict, label: str, center: dict, grads32: dict | None,
                      options: CheckOptions) -> dict:
    """The one-direction check along ``direction`` (a dict over some parameters, normalised here)."""
    scale = math.sqrt(sum(float(np.sum(d * d)) for d in direction.values()))
    unit = {name: d / scale for name, d in direction.items()}
    moved = lambda sign: {n: p + sign * options.eps * unit[n] if n in unit else p for n, p in point.params.items()}  # noqa: E731
    plus, marks_plus = _evaluate(point, moved(1))
    minus, marks_minus = _evaluate(point, moved(-1))
    numeric = (plus - minus) / (2 * options.eps)
    noise = 10 * EPS64 * (abs(plus) + abs(minus)) / (2 * options.eps)
    crossed, _ = _crossings(center, marks_plus, marks_minus)
    checks = {}
    for dtype, grads, tolerance in (("float64", point.grads, options.tolerance),
                                    ("float32", grads32, options.tolerance_float32)):
        if grads is None:
            continue
        analytic = sum(float(np.sum(grads[n] * unit[n])) for n in unit)
        error = relative_error([analytic], [numeric], floor=max(1e-10, noise / tolerance))
        checks[dtype] = DirectionCheck(label, dtype, analytic, numeric, error, tolerance, bool(error <= tolerance),
                                       tuple(crossed))
    return checks


def _step_scan(point: _Point, direction: dict, options: CheckOptions) -> StepScan:
    """The directional error at every step of ``options.steps``, in float64 and float32 arithmetic."""
    scale = math.sqrt(sum(float(np.sum(d * d)) for d in direction.values()))
    unit = {name: d / scale for name, d in direction.items()}
    analytic = sum(float(np.sum(point.grads[n] * unit[n])) for n in unit)
    errors, best = {}, {}
    for dtype in options.dtypes:
        kind = np.dtype(dtype).type
        params = {n: p.astype(kind) for n, p in point.params.items()}
        steps = {n: u.astype(kind) for n, u in unit.items()}
        noise = {i: v.astype(kind) for i, v in point.noise.items() if v is not None}
        offsets, _ = _straight_through_offsets(point.probe, params, noise)
        x = point.x.astype(kind)
        values = []
        for h in options.steps:
            step = kind(h)
            up = {n: p + step * steps[n] for n, p in params.items()}
            down = {n: p - step * steps[n] for n, p in params.items()}
            plus, _ = _evaluate(point, up, dtype=kind, noise=noise, offsets=offsets, x=x, marks=False)
            minus, _ = _evaluate(point, down, dtype=kind, noise=noise, offsets=offsets, x=x, marks=False)
            numeric = (float(plus) - float(minus)) / (2 * float(step))
            values.append(abs(numeric - analytic) / max(abs(analytic), 1e-300))
        errors[dtype] = tuple(values)
        position = int(np.argmin(values))
        best[dtype] = (float(options.steps[position]), float(values[position]))
    return StepScan(tuple(options.steps), analytic, errors, best)


def _network_notes(point: _Point, report: GradcheckReport) -> None:
    """Say how a hard network was checked, and which kinks the checker knows."""
    hard = [i for i, act in enumerate(point.probe.activations) if _selects(act) and act.hard]
    if hard:
        layers = ", ".join(f"activations.{i}" for i in hard)
        report.notes.append(
            f"hard phase-1 layers ({layers}): the finite differences are of the straight-through surrogate "
            "sum_k (y_k + C_k) a_k with C = onehot(s) - y taken at the checked point and held fixed, and the Gumbel "
            "noise held fixed: its value is the hard forward's and its exact gradient is the straight-through one, "
            "so the logits' check is of the straight-through gradient against the function it is the gradient of "
            "(the weights and biases see the hard network itself)"
        )
    used = {a.name for a in point.probe.pool} | {n for layer in point.probe.choice_names() for n in layer}
    if "elu" in used:
        report.notes.append(ELU_NOTE)
    unknown = sorted(n for n in used if n not in KINKED_AT_ZERO and n not in _SMOOTH)
    if unknown:
        report.notes.append(f"kinks of {', '.join(unknown)} are not known to the checker: they are found only where "
                            "the one-sided differences disagree")
    report.notes.append("the finite differences are computed in float64 by a reference forward (core functions), "
                        "which is first compared with the model's own forward; the float32 check re-runs the model "
                        "cast to float32 and compares its backward with those float64 differences")


_SMOOTH = {"sigmoid", "tanh", "elu", "gelu", "silu", "softplus", "identity"}


# --------------------------------------------------------------------------- hard selection: the study
def available_estimators() -> tuple[str, ...]:
    """The phase-1 estimators the study can measure: :data:`smartmixed_np.core.estimators.ESTIMATORS`,
    or ``("st",)`` where that module is absent (the straight-through gradient is the model's own)."""
    try:
        from ..core.estimators import ESTIMATORS as names
    except ImportError:
        return ("st",)
    return tuple(names)


def _estimator_draws(point: _Point, layers: list[int], estimator: str, noises: list[dict],
                     warmup: Sequence[dict] = ()) -> np.ndarray:
    """The logits' gradient by ``estimator`` for each noise draw, by a copy of the model's own backward: (M, size).

    The copy runs at the point's parameters; ``"st"`` is the checked model itself, any
    other estimator a rebuilt copy (``MLP(estimator=...)``). A stateful estimator (the
    score function's running baseline) first runs the ``warmup`` draws, uncounted, so
    that its state is what training would have after a few steps at this point, and then
    carries it from draw to draw, as in training.
    """
    if estimator == "st":
        probe = copy.deepcopy(point.probe)
    else:
        probe = MLP.from_config({**point.probe.config(), "estimator": estimator})
        probe.load_state_dict(point.params)
    for k, noise in enumerate(warmup):
        _backward_at(probe, point, noise)
        if k == 0 and not getattr(probe, "estimator_state", dict)():
            break  # stateless: nothing to warm up
    values = []
    for noise in noises:
        _backward_at(probe, point, noise)
        values.append(np.concatenate([np.array(probe.activations[i].dlogits, dtype=np.float64).ravel() for i in layers]))
    return np.stack(values)


def _backward_at(probe: MLP, point: _Point, noise: dict) -> None:
    """One training pass of ``probe`` on the point's batch with ``noise``: forward, loss, backward."""
    logits = probe.forward(point.x, train=True, noise=noise)
    loss, dlogits = softmax_cross_entropy(logits, point.labels)
    if getattr(probe, "needs_loss", False):  # the score function reads the loss
        probe.backward(dlogits, loss=loss)
    else:
        probe.backward(dlogits)


#: Uncounted draws that warm up a stateful estimator (the score function's baseline) before it is measured.
_WARMUP = 20


def _draw_noise(point: _Point, layers: list[int], rng: np.random.Generator) -> dict:
    """One Gumbel draw per hard layer, of the shape the layer's noise mode gives."""
    noise = {}
    for i in layers:
        act = point.probe.activations[i]
        shape = act.logits.shape if act.noise_mode == "shared" else (point.x.shape[0],) + tuple(act.logits.shape)
        noise[i] = rng.gumbel(size=shape)
    return noise


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norm) if norm > 0 else 0.0


def _measure(draws: np.ndarray, exact: np.ndarray) -> dict:
    """Bias, spread and cosine of an estimator's draws (M, size) against the exact gradient (size,)."""
    mean = draws.mean(axis=0)
    norm = max(float(np.linalg.norm(exact)), 1e-300)
    spread = float(np.sqrt(np.sum(draws.var(axis=0, ddof=1)))) if len(draws) > 1 else 0.0
    return {
        "samples": int(len(draws)),
        "cosine_of_mean": _cosine(mean, exact),
        "relative_error_of_mean": float(np.linalg.norm(mean - exact)) / norm,
        "standard_error_of_mean": spread / math.sqrt(len(draws)) / norm,
        "mean_cosine": float(np.mean([_cosine(d, exact) for d in draws])),
        "mean_relative_error": float(np.mean(np.linalg.norm(draws - exact, axis=1))) / norm,
        "relative_spread": spread / norm,
        "mean": mean.tolist(),
    }


def _straight_through_study(point: _Point, layers: list[int], options: CheckOptions, seed: int,
                            notes: list) -> StraightThroughStudy | None:
    """The estimators' draws against the exact gradient of the expected loss (see the module docstring).

    The exact gradient is :func:`smartmixed_np.core.estimators.exact_expected_gradient`
    (every joint selection) up to ``options.max_selections`` joint selections, else the
    mean over the draws of :func:`~smartmixed_np.core.estimators.per_neuron_expected_gradient`
    at selections drawn from $p$ (:func:`~smartmixed_np.core.estimators.sample_selection`).
    """
    try:
        from ..core import estimators as core_estimators
    except ImportError:
        notes.append("the straight-through study was skipped: smartmixed_np.core.estimators (the exact expected "
                     "gradient by enumeration) is not available in this installation")
        return None
    wanted = options.estimators if options.estimators is not None else available_estimators()
    unknown = [name for name in wanted if name not in available_estimators()]
    if unknown:
        raise GradcheckUsageError(f"estimator {unknown[0]!r} is not available; available: {', '.join(available_estimators())}")
    rng = np.random.default_rng([seed, 11])
    noises = [_draw_noise(point, layers, rng) for _ in range(options.st_samples)]
    warm = np.random.default_rng([seed, 12])
    warmup = [_draw_noise(point, layers, warm) for _ in range(_WARMUP)]
    names = tuple((f"activations.{i}.logits", tuple(point.params[f"activations.{i}.logits"].shape)) for i in layers)
    K = len(point.probe.pool)
    total = sum(point.params[f"activations.{i}.logits"].shape[0] for i in layers)
    flatten = lambda grads: np.concatenate([np.asarray(grads[name], dtype=np.float64).ravel() for name, _ in names])  # noqa: E731
    if K ** total <= options.max_selections:
        found = core_estimators.exact_expected_gradient(point.probe, point.x, point.labels,
                                                        max_combinations=options.max_selections)
        exact, expected, count, error = flatten(found.gradients), found.loss, found.evaluations, 0.0
        method = f"exact, by enumerating all {count} joint selections"
    else:
        values = np.stack([
            flatten(core_estimators.per_neuron_expected_gradient(
                point.probe, point.x, point.labels, core_estimators.sample_selection(point.probe, rng)).gradients)
            for _ in range(options.st_samples)
        ])
        exact, expected, count = values.mean(axis=0), None, total * K
        spread = float(np.sqrt(np.sum(values.var(axis=0, ddof=1)))) if len(values) > 1 else 0.0
        error = spread / math.sqrt(len(values)) / max(float(np.linalg.norm(exact)), 1e-300)
        method = (f"per neuron: each neuron's {K} choices enumerated with the others at a selection drawn from p, "
                  f"averaged over {len(values)} draws ({K ** total:.3g} joint selections exceed the limit of "
                  f"{options.max_selections})")
    measured = {}
    for name in wanted:
        try:
            if name != "st":
                core_estimators.check_estimator(name, hard=True, noise_mode=point.probe.options["noise_mode"])
        except ValueError as err:
            notes.append(f"estimator {name} not measured: {err}")
            continue
        measured[name] = _measure(_estimator_draws(point, layers, name, noises, warmup), exact)
    if "score" in measured:
        notes.append(f"the score function's running baseline was warmed up over {_WARMUP} uncounted draws first")
    return StraightThroughStudy(method, int(count), expected, tuple(exact.tolist()), error, measured, names)


# --------------------------------------------------------------------------- one activation
def gradcheck_activation(
    activation: str | Activation,
    *,
    options: CheckOptions | None = None,
    seed: int = 0,
    network: bool = True,
) -> GradcheckReport:
    """Check one activation's derivative on a grid, and (``network``) in a small fixed network.

    The grid: 97 points evenly from -6 to 6 (0 among them), 48 standard normal points
    scaled by 2.5, and +-10, +-20; every point a float32 number, so that both precisions
    are checked at the same inputs. The derivative is diagonal, so one vectorised central
    difference is the whole per-coordinate check; the one-direction check
    (:func:`smartmixed_np.core.gradcheck.check_vjp`'s form) makes no such assumption.

    Args:
        activation: a registered name or an :class:`~smartmixed_np.core.activations.Activation`.
        options: :class:`CheckOptions`. seed: seeds the grid's random points and the direction.
        network: also check a 6-4-3-3 network of this activation (weights and biases).

    Returns:
        The :class:`GradcheckReport`; its one "parameter" is ``f'(x)``.
    """
    options = options or CheckOptions()
    try:
        act = get_activation(activation)
    except ValueError as err:
        raise GradcheckUsageError(str(err)) from None
    rng = np.random.default_rng([seed, 3])
    grid = np.concatenate([np.linspace(-6, 6, 97), 2.5 * rng.standard_normal(48), [-20.0, -10.0, 10.0, 20.0]])
    x = np.unique(grid.astype(np.float32)).astype(np.float64)
    f = _guarded(act, "forward", x)
    analytic = _guarded(act, "derivative", x, f)
    eps = options.eps
    f_plus, f_minus, numeric, forward, backward = _activation_differences(act, x, eps)
    report = GradcheckReport(
        target={"kind": "activation", "name": act.name, "formula": act.formula, "points": int(x.size),
                "description": f"activation {act.name} on {x.size} points in [-20, 20]"},
        options=options,
        grid=tuple(float(v) for v in x),
    )
    excluded = np.zeros(x.shape, dtype=bool)
    label = "f'(x)"
    if act.name in KINKED_AT_ZERO:
        near = np.abs(x) < eps
        for j in np.nonzero(near)[0]:
            report.kinks.append(Kink(label, (int(j),), (f"{KINKED_AT_ZERO[act.name]}: x = {x[j]:.3g}",), float(analytic[j]),
                                     float(numeric[j]), float(forward[j]), float(backward[j])))
        excluded |= near
    scale = np.abs(analytic) + np.abs(numeric)
    for j in range(x.size):
        if not excluded[j] and _one_sided_kink(analytic[j], numeric[j], forward[j], backward[j], max(scale[j], 1.0),
                                               options.tolerance):
            excluded[j] = True
            report.kinks.append(Kink(label, (j,), (f"one-sided differences disagree at x = {x[j]:.3g}: a kink",),
                                     float(analytic[j]), float(numeric[j]), float(forward[j]), float(backward[j])))
    noise = 10 * EPS64 * float(np.max(np.abs(f_plus) + np.abs(f_minus))) / (2 * eps)
    entry = ParameterReport(label, tuple(x.shape))
    entry.coordinates["float64"] = _compare(analytic, numeric, excluded, noise, options.tolerance, "float64")
    if "float32" in options.dtypes:
        x32 = x.astype(np.float32)
        f32 = _guarded(act, "forward", x32)
        d32 = np.asarray(_guarded(act, "derivative", x32, f32))
        if d32.dtype != np.float32 or np.asarray(f32).dtype != np.float32:
            report.notes.append(f"{act.name} does not keep float32: forward gives {np.asarray(f32).dtype}, "
                                f"derivative {d32.dtype}")
        entry.coordinates["float32"] = _compare(d32, numeric, excluded, noise, options.tolerance_float32, "float32")
    smooth = x[~excluded]
    upstream = np.random.default_rng([seed, 5]).standard_normal(smooth.shape)
    direction = np.random.default_rng([seed, 6]).standard_normal(smooth.shape)
    direction /= np.linalg.norm(direction)
    entry.directional.update(_activation_directions(act, smooth, upstream, direction, options))
    report.parameters.append(entry)
    report.step_scan = _activation_step_scan(act, smooth, upstream, direction, options)
    if report.step_scan.best["float64"][0] >= 1e-3:
        report.notes.append(
            f"the float64 error keeps falling up to h = {report.step_scan.best['float64'][0]:.0e}: {act.name} has no "
            "curvature within those steps of the points (piecewise linear there), so truncation appears only once a "
            "step reaches a kink; the V's right arm is that, not h^2")
    if act.name == "elu":
        report.notes.append(ELU_NOTE)
    if act.name not in KINKED_AT_ZERO and act.name not in _SMOOTH:
        report.notes.append(f"kinks of {act.name} are not known to the checker: a point counts as one where the "
                            "one-sided differences disagree and the analytic value matches one of them")
    report.notes.append("the grid's derivative is checked point by point (the Jacobian of an elementwise function "
                        "is diagonal); the one-direction check, along a random v with a random upstream u, does not "
                        "assume it")
    if network:
        report.network = gradcheck_network(NetworkSpec(hidden=(4, 3), model=act.name), options=options, seed=seed)
    return report


def _activation_differences(act: Activation, x: np.ndarray, eps: float) -> tuple[np.ndarray, ...]:
    """$f(x \\pm h)$, the central and the two one-sided differences at every point, with the steps
    actually taken ($(x + h) - x$ in floating point, which is not exactly $h$).

    Returns:
        ``(f_plus, f_minus, central, forward, backward)``, each of ``x``'s shape.
    """
    up, down = (x + eps) - x, x - (x - eps)
    f = _guarded(act, "forward", x)
    f_plus, f_minus = _guarded(act, "forward", x + up), _guarded(act, "forward", x - down)
    return f_plus, f_minus, (f_plus - f_minus) / (up + down), (f_plus - f) / up, (f - f_minus) / down


def _guarded(act: Activation, what: str, x: np.ndarray, y: Any = None) -> np.ndarray:
    """``act.forward(x)`` or ``act.derivative(x, y)`` as a float array of ``x``'s shape; a one-line error otherwise."""
    try:
        value = act.forward(x) if what == "forward" else act.derivative(x, y)
        value = np.asarray(value)
        if value.shape != x.shape:
            raise ValueError(f"returned shape {value.shape} for an input of shape {x.shape}")
        if value.dtype.kind != "f":
            raise TypeError(f"returned dtype {value.dtype}")
    except Exception as err:  # the user's function: say what it did, in one line
        message = str(err).splitlines()[0] if str(err) else ""
        raise GradcheckUsageError(f"activation {act.name!r}: its {what} failed on a {x.dtype} grid: "
                                  f"{type(err).__name__}: {message}") from None
    return value


def _activation_directions(act: Activation, x: np.ndarray, upstream: np.ndarray, direction: np.ndarray,
                           options: CheckOptions) -> dict:
    """$\\langle u \\odot f'(x), v \\rangle$ against $(\\phi(x + hv) - \\phi(x - hv)) / 2h$, $\\phi = \\langle u, f \\rangle$."""
    plus = float(upstream @ act.forward(x + options.eps * direction))
    minus = float(upstream @ act.forward(x - options.eps * direction))
    numeric = (plus - minus) / (2 * options.eps)
    noise = 10 * EPS64 * float(np.sum(np.abs(upstream * act.forward(x)))) / options.eps
    checks = {}
    for dtype, tolerance in (("float64", options.tolerance), ("float32", options.tolerance_float32)):
        if dtype not in options.dtypes:
            continue
        xs = x.astype(dtype)
        derivative = np.asarray(act.derivative(xs, act.forward(xs)), dtype=np.float64)
        analytic = float(np.sum(upstream * derivative * direction))
        error = relative_error([analytic], [numeric], floor=max(1e-10, noise / tolerance))
        checks[dtype] = DirectionCheck("f'(x)", dtype, analytic, numeric, error, tolerance, bool(error <= tolerance))
    return checks


def _activation_step_scan(act: Activation, x: np.ndarray, upstream: np.ndarray, direction: np.ndarray,
                          options: CheckOptions) -> StepScan:
    """The directional error of the activation against the step size, in float64 and float32 arithmetic."""
    analytic = float(np.sum(upstream * act.derivative(x, act.forward(x)) * direction))
    errors, best = {}, {}
    for dtype in options.dtypes:
        kind = np.dtype(dtype).type
        xs, us, vs = x.astype(kind), upstream.astype(kind), direction.astype(kind)
        values = []
        for h in options.steps:
            step = kind(h)
            plus = float(np.sum(us * act.forward(xs + step * vs), dtype=np.float64))
            minus = float(np.sum(us * act.forward(xs - step * vs), dtype=np.float64))
            values.append(abs((plus - minus) / (2 * float(step)) - analytic) / max(abs(analytic), 1e-300))
        errors[dtype] = tuple(values)
        position = int(np.argmin(values))
        best[dtype] = (float(options.steps[position]), float(values[position]))
    return StepScan(tuple(options.steps), analytic, errors, best)


# --------------------------------------------------------------------------- the report files
_DTYPE_COLORS = {"float64": "#1f77b4", "float32": "#ff7f0e"}


def write_gradcheck_report(result: GradcheckReport, out_dir: str | Path) -> list[Path]:
    """Write ``report.md``, ``report.json`` and the figures (PNG) into ``out_dir`` (created; atomic writes).

    Figures: ``step_size.png`` (the V of error against h), ``errors.png`` (relative error per
    parameter and precision), ``straight_through.png`` (the study, for a hard network),
    ``activation.png`` (for an activation); a nested network's get the prefix ``network_``.

    Returns:
        The written paths, the two reports first.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GradcheckUsageError(f"{out}: cannot create the report folder ({err.strerror or err})") from None
    figures = _write_figures(result, out, "")
    if result.network is not None:
        figures += _write_figures(result.network, out, "network_")
    data = result.to_json()
    data["figures"] = [path.name for path in figures]
    written = [write_text(out / "report.md", _markdown(result, [p.name for p in figures])), write_json(out / "report.json", data)]
    return written + figures


def _write_figures(result: GradcheckReport, out: Path, prefix: str) -> list[Path]:
    """The figures of one report (see :func:`write_gradcheck_report`), named with ``prefix``."""
    paths = []
    if result.step_scan is not None:
        paths.append(_plot_step_scan(result, out / f"{prefix}step_size.png"))
    paths.append(_plot_errors(result, out / f"{prefix}errors.png"))
    if result.straight_through is not None:
        paths.append(_plot_straight_through(result.straight_through, out / f"{prefix}straight_through.png"))
    if result.target.get("kind") == "activation":
        paths.append(_plot_activation(result, out / f"{prefix}activation.png"))
    return paths


def _plot_step_scan(result: GradcheckReport, path: Path) -> Path:
    """Relative error of the directional difference against h, log-log, the best h of each precision marked."""
    from .plots import DPI, new_figure, save_png  # matplotlib only when drawing
    scan = result.step_scan
    fig = new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    steps = np.asarray(scan.steps)
    for dtype, values in scan.errors.items():
        values = np.maximum(np.asarray(values, dtype=float), 1e-17)
        color = _DTYPE_COLORS.get(dtype, "0.3")
        ax.loglog(steps, values, "o-", color=color, markersize=3.5, linewidth=1.4, label=dtype)
        h, error = scan.best[dtype]
        ax.plot([h], [max(error, 1e-17)], marker="*", markersize=14, color=color, markeredgecolor="black", zorder=5)
        below = dtype == "float64"
        ax.annotate(f"best h = {h:.0e}, error {error:.1e}", (h, max(error, 1e-17)), textcoords="offset points",
                    xytext=(0, -16 if below else 12), ha="center", va="top" if below else "bottom", fontsize=8.5,
                    color=color, bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=0.8))
    ax.axvline(result.options.eps, color="0.45", linestyle=":", linewidth=1.1)
    ax.text(result.options.eps, 0.98, f" h of the checks ({result.options.eps:.0e})", transform=ax.get_xaxis_transform(),
            va="top", fontsize=8, color="0.35")
    ax.set_xlabel("step h")
    ax.set_ylabel("relative error of the central difference")
    ax.set_title("Error against the step: rounding (∝ ε/h, left) against truncation (∝ h², right)", fontsize=10.5)
    ax.margins(y=0.12)
    ax.grid(True, which="major", color="0.9", linewidth=0.8)
    ax.legend(loc="lower left", fontsize=9, frameon=False)
    return save_png(fig, path, DPI)


def _plot_errors(result: GradcheckReport, path: Path) -> Path:
    """Horizontal bars: each parameter's relative error in each precision, the tolerances dashed."""
    from .plots import DPI, new_figure, save_png  # matplotlib only when drawing
    rows = [r.name for r in result.parameters] + ["whole model"]
    fig = new_figure(6.8, 0.9 + 0.42 * len(rows) * max(1, len(result.options.dtypes)) / 1.4)
    ax = fig.add_subplot()
    dtypes = list(result.options.dtypes)
    height = 0.8 / max(1, len(dtypes))
    for d, dtype in enumerate(dtypes):
        values, hatches = [], []
        for report in result.parameters:
            check = report.coordinates.get(dtype) or report.directional.get(dtype)
            values.append(check.relative_error if check is not None else np.nan)
            hatches.append(check is not None and not check.passed)
        whole = result.whole.get(dtype)
        values.append(whole.relative_error if whole is not None else np.nan)
        hatches.append(whole is not None and whole.counted and not whole.passed)
        y = np.arange(len(rows)) + (d - (len(dtypes) - 1) / 2) * height
        floor = 1e-17
        bars = ax.barh(y, np.maximum(np.nan_to_num(values, nan=floor), floor), height=height * 0.92, left=0,
                       color=_DTYPE_COLORS.get(dtype, "0.5"), label=dtype)
        for bar, failed in zip(bars, hatches):
            if failed:
                bar.set_edgecolor("#b00000")
                bar.set_linewidth(1.6)
                bar.set_hatch("///")
        tolerance = result.options.tolerance if dtype == "float64" else result.options.tolerance_float32
        ax.axvline(tolerance, color=_DTYPE_COLORS.get(dtype, "0.5"), linestyle="--", linewidth=1.1)
    ax.set_xscale("log")
    ax.set_xlim(1e-17, 3.0)
    ax.set_yticks(np.arange(len(rows)), rows, fontsize=8.5)
    ax.invert_yaxis()
    ax.set_xlabel("relative error (bars; dashed: the tolerance of each precision)")
    how = "coordinate by coordinate" if any(r.coordinates for r in result.parameters) else "one direction"
    verdict = "passed" if result.passed else "FAILED (hatched)"
    ax.set_title(f"Gradient check {verdict}, per parameter ({how}; whole model: one direction)", fontsize=10)
    ax.legend(loc="lower right", fontsize=8.5, frameon=False)
    return save_png(fig, path, DPI)


def _plot_straight_through(study: StraightThroughStudy, path: Path) -> Path:
    """Scatter of the exact expected gradient (x) against each estimator's mean (y), entries of the logits."""
    from .plots import DPI, new_figure, save_png  # matplotlib only when drawing
    exact = np.asarray(study.exact)
    fig = new_figure(5.2, 4.8)
    ax = fig.add_subplot()
    markers = {"st": ("#111111", "o"), "reinmax": ("#d62728", "s"), "gumbel_rao": ("#2ca02c", "^"), "score": ("#9467bd", "D")}
    for name, measured in study.estimators.items():
        color, marker = markers.get(name, ("#7f7f7f", "v"))
        ax.scatter(exact, measured["mean"], s=16, color=color, marker=marker, alpha=0.75,
                   label=f"{name}: cosine {measured['cosine_of_mean']:.3f}, rel. error {measured['relative_error_of_mean']:.2f}")
    # the exact values set the scale: a noisy estimator's far points are clipped, not allowed to squash the rest
    limit = 2.5 * max(float(np.max(np.abs(exact))), 1e-12)
    ax.plot([-limit, limit], [-limit, limit], color="0.6", linestyle="--", linewidth=1, label="equal")
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal", adjustable="box")
    ax.axhline(0, color="0.85", linewidth=0.8, zorder=0)
    ax.axvline(0, color="0.85", linewidth=0.8, zorder=0)
    ax.set_xlabel("exact gradient of the expected loss, dE[L]/dα")
    ax.set_ylabel("estimator, mean over the noise draws")
    short = "by enumeration" if study.method.startswith("exact") else "per neuron"
    ax.set_title(f"Logits' gradient: estimators against the exact one ({short})", fontsize=10)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    return save_png(fig, path, DPI)


def _plot_activation(result: GradcheckReport, path: Path) -> Path:
    """The derivative on the grid (analytic line, numeric points) and the pointwise error, kinks marked."""
    from .plots import DPI, new_figure, save_png  # matplotlib only when drawing
    act = get_activation(result.target["name"])
    check = result.parameters[0].coordinates["float64"]
    x = np.asarray(result.grid, dtype=np.float64)
    eps = result.options.eps
    analytic = np.asarray(act.derivative(x, act.forward(x)), dtype=np.float64)
    numeric = _activation_differences(act, x, eps)[2]
    fig = new_figure(6.6, 5.2)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1.2, 1])
    view = np.abs(x) <= 8
    top.plot(x[view], analytic[view], color="#1f77b4", linewidth=1.5, label="f'(x), the backward")
    top.plot(x[view], numeric[view], "o", color="#d62728", markersize=2.6, label="central difference (float64)")
    top.set_ylabel("derivative")
    top.legend(fontsize=8.5, frameon=False)
    top.set_title(f"{act.name}: derivative against central differences (|x| ≤ 8 shown)", fontsize=10.5)
    floor = 1e-18
    bottom.semilogy(x[view], np.maximum(np.abs(analytic - numeric), floor)[view], ".", color="#1f77b4",
                    markersize=3.5, label="float64")
    if "float32" in result.options.dtypes:
        x32 = x.astype(np.float32)
        d32 = np.asarray(act.derivative(x32, act.forward(x32)), dtype=np.float64)
        bottom.semilogy(x[view], np.maximum(np.abs(d32 - numeric), floor)[view], ".", color="#ff7f0e",
                        markersize=3.5, label="float32")
    for kink in result.kinks:
        for axis in (top, bottom):
            axis.axvline(x[kink.index[0]], color="#7f7f7f", linestyle=":", linewidth=1.2)
    bottom.set_ylabel("|analytic − numeric|")
    bottom.set_xlabel("x" + (" (dotted: within h of a kink, not counted)" if result.kinks else ""))
    bottom.legend(fontsize=8.5, frameon=False)
    verdict = "passed" if check.passed else "FAILED"
    bottom.set_title(f"float64 relative error {check.relative_error:.1e} ({verdict})", fontsize=9.5)
    return save_png(fig, path, DPI)


def _markdown(result: GradcheckReport, figures: Sequence[str], level: int = 1) -> str:
    """The Markdown report (a nested network's at the next heading level)."""
    h = "#" * level
    o = result.options
    lines = [f"{h} Gradient check: {'passed' if result.passed else 'FAILED'}", ""]
    lines.append(f"Target: {result.target.get('description', '')}.")
    if result.command:
        lines += ["", "Reproduce with:", "", "```", result.command, "```"]
    lines += ["", f"Method: central differences $(L(\\theta + h e_j) - L(\\theta - h e_j))/2h$ in float64 with $h$ = {o.eps:g}, "
              f"against the backward pass in {' and '.join(o.dtypes)}; tolerances {o.tolerance:.0e} (float64) and "
              f"{o.tolerance_float32:.0e} (float32: about {o.tolerance_float32 / EPS32:.0f} float32 roundings "
              f"of size {EPS32:.1e}) on the norm-wise relative error "
              "$\\lVert a - n \\rVert / \\max(\\lVert a \\rVert + \\lVert n \\rVert, \\mathrm{floor})$, "
              "the floor set by the rounding noise of the differences.", ""]
    failures = result.failures()
    if failures:
        lines += [f"{h}# What failed", ""] + [f"- {line}" for line in failures] + [""]
    lines += [f"{h}# Forward pass", "", "| precision | model's loss | reference loss | difference | tolerance | |",
              "| --- | --- | --- | --- | --- | --- |"]
    for dtype, check in result.forward.items():
        lines.append(f"| {dtype} | {check['model_loss']:.10g} | {check['reference_loss']:.10g} | {check['difference']:.1e} "
                     f"| {check['tolerance']:.0e} | {'ok' if check['passed'] else '**FAILED**'} |")
    if any(r.coordinates for r in result.parameters):
        lines += ["", f"{h}# Every coordinate, per parameter", "",
                  "Worst entry: where the absolute error is largest. Entrywise error: relative to the entry, or to a "
                  "thousandth of the largest entry where that is larger.", "",
                  "| parameter | shape | precision | relative error | tolerance | max abs error | max entrywise | worst entry | analytic | numeric | kinks left out | |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for report in result.parameters:
            for dtype, c in report.coordinates.items():
                worst = "-" if c.worst_index is None else f"{_index_text(c.worst_index)}"
                analytic = "-" if c.worst_analytic is None else f"{c.worst_analytic:.6e}"
                numeric = "-" if c.worst_numeric is None else f"{c.worst_numeric:.6e}"
                lines.append(f"| `{report.name}` | {report.shape} | {dtype} | {c.relative_error:.2e} | {c.tolerance:.0e} | "
                             f"{c.max_abs_error:.2e} | {c.max_entry_error:.2e} | {worst} | {analytic} | {numeric} | "
                             f"{c.excluded} | {'ok' if c.passed else '**FAILED**'} |")
    lines += ["", f"{h}# One random direction", "",
              "$\\langle \\nabla L, v \\rangle$ against $(L(\\theta + hv) - L(\\theta - hv))/2h$ for one random unit "
              "direction $v$ (two forward passes whatever the size), over all parameters and restricted to each.", "",
              "| over | precision | analytic | numeric | relative error | tolerance | |", "| --- | --- | --- | --- | --- | --- | --- |"]
    directions = [(r.name, r.directional) for r in result.parameters] + [("whole model", result.whole)]
    for name, checks in directions:
        for dtype, c in checks.items():
            verdict = ("not counted: crosses " + "; ".join(c.crosses)) if c.crosses else ("ok" if c.passed else "**FAILED**")
            lines.append(f"| `{name}` | {dtype} | {c.analytic:.10e} | {c.numeric:.10e} | {c.relative_error:.2e} | "
                         f"{c.tolerance:.0e} | {verdict} |")
    scan = result.step_scan
    if scan is not None:
        lines += ["", f"{h}# Error against the step size", "",
                  f"Along the same direction (analytic derivative {scan.analytic:.10e}, float64 backward), the central "
                  "difference computed in each precision: the error falls as $h^2$ (truncation) until rounding, "
                  "$\\propto \\epsilon/h$, takes over.", ""]
        lines += ["| h | " + " | ".join(scan.errors) + " |", "| --- |" + " --- |" * len(scan.errors)]
        for j, step in enumerate(scan.steps):
            cells = []
            for dtype, values in scan.errors.items():
                text = f"{values[j]:.2e}"
                cells.append(f"**{text}**" if scan.best[dtype][0] == step else text)
            lines.append(f"| {step:.0e} | " + " | ".join(cells) + " |")
        lines += ["", "Best: " + "; ".join(f"{d} h = {b[0]:.0e} (error {b[1]:.1e})" for d, b in scan.best.items()) + "."]
    lines += ["", f"{h}# Non-differentiable points", ""]
    if result.kinks:
        lines += ["Entries whose step $\\pm h$ crosses a kink, reported here instead of failing the check "
                  "(one-sided differences: forward $(L(\\theta + h) - L(\\theta))/h$, backward $(L(\\theta) - L(\\theta - h))/h$).", "",
                  "| entry | what lies within h | analytic | central | forward | backward | counted |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for k in result.kinks[:200]:
            lines.append(f"| `{k.parameter}`{_index_text(k.index)} | {'; '.join(k.reasons)} | {k.analytic:.6e} | {k.numeric:.6e} "
                         f"| {k.forward:.6e} | {k.backward:.6e} | {'no' if k.excluded else 'yes (the surrogate is smooth there)'} |")
        if len(result.kinks) > 200:
            lines.append(f"| ... | {len(result.kinks) - 200} more in report.json | | | | | |")
    else:
        lines.append("None: no step crossed a kink (ReLU, Leaky ReLU, SELU at 0; a clamp edge), an argmax boundary, "
                     "or a point where the one-sided differences disagree.")
    study = result.straight_through
    if study is not None:
        lines += ["", f"{h}# Hard selection: the straight-through gradient and its rivals", "",
                  "The per-parameter checks above test the straight-through (ST) gradient of the logits against finite "
                  "differences of the surrogate whose exact gradient it is, noise held fixed. Here it is measured "
                  "against the exact gradient of the expected loss $E_s[L]$, $p(s) = \\prod_n \\mathrm{softmax}(\\alpha_n)_{s_n}$ "
                  f"(the Gumbel-max trick; tau does not change it): {study.method}."
                  + (f" $E_s[L]$ = {study.expected_loss:.6f}." if study.expected_loss is not None else
                     f" The estimate's standard error is {study.exact_standard_error:.2f} of its norm."),
                  "Each estimator runs the model's own backward over the same noise draws. This is a measurement, not a "
                  "check: ST and ReinMax are biased by design, the score function is unbiased but noisy, and the verdict "
                  "does not depend on any of it. (`smartmixed_np.core.estimators` holds the estimators and the enumeration.)", "",
                  "| estimator | draws | cosine of the mean | rel. error of the mean | its standard error | mean cosine of one draw | mean rel. error of one draw | rel. spread |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, m in study.estimators.items():
            lines.append(f"| {name} | {m['samples']} | {m['cosine_of_mean']:.4f} | {m['relative_error_of_mean']:.4f} | "
                         f"{m['standard_error_of_mean']:.4f} | {m['mean_cosine']:.4f} | {m['mean_relative_error']:.4f} | "
                         f"{m['relative_spread']:.4f} |")
    if result.notes:
        lines += ["", f"{h}# Notes", ""] + [f"- {note}" for note in result.notes]
    own = [f for f in figures if not f.startswith("network_")] if level == 1 else list(figures)
    if own:
        lines += ["", f"{h}# Figures", ""] + [f"![{Path(f).stem}]({f})" for f in own]
    if result.network is not None:
        nested = [f for f in figures if f.startswith("network_")]
        lines += ["", f"{h}# In a network", "", _markdown(result.network, nested, level + 1)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- command line
_INT_TEXT = options.INT_TEXT
_NAME_TEXT = re.compile(r"[A-Za-z0-9_.+-]{1,64}")
#: The largest network the command builds: per-coordinate checks of more are slow anyway.
MAX_WIDTH = 1024
MAX_BATCH = 4096


_integer, _real = options.integer, options.real


def _hidden(text: str) -> tuple[int, ...]:
    """``"8,6"`` -> (8, 6); each width from 1 to :data:`MAX_WIDTH`, at most 8 layers."""
    parts = [part.strip() for part in re.split(r"[,-]", text)]
    if not 1 <= len(parts) <= 8 or not all(_INT_TEXT.fullmatch(p) and 1 <= int(p) <= MAX_WIDTH for p in parts):
        raise argparse.ArgumentTypeError(
            f"expected hidden widths such as 8,6 (1 to {MAX_WIDTH} each, at most 8 layers), got {text[:40]!r}")
    return tuple(int(p) for p in parts)


def _names(text: str) -> tuple[str, ...]:
    names = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    if not names or not all(_NAME_TEXT.fullmatch(n) for n in names):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text[:40]!r}")
    return names


def _name(text: str) -> str:
    name = text.strip().lower()
    if not _NAME_TEXT.fullmatch(name):
        raise argparse.ArgumentTypeError(f"expected a name, got {text[:40]!r}")
    return name


def _module_spec(text: str) -> str:
    """A module name (``mypkg.acts``) or a path to a ``.py`` file."""
    text = text.strip()
    if text.endswith(".py") and text.isprintable():
        return str(Path(text).expanduser().absolute())
    if not text or not all(part.isidentifier() for part in text.split(".")):
        raise argparse.ArgumentTypeError(f"expected a module name (such as mypkg.acts) or a .py file, got {text[:40]!r}")
    return text


def _activation_spec(text: str) -> tuple[str | None, str]:
    """``NAME`` or ``MODULE:NAME`` -> (module or None, name)."""
    module, sep, name = text.strip().rpartition(":")
    if sep and not module:
        raise argparse.ArgumentTypeError(f"expected NAME or MODULE:NAME, got {text[:40]!r}")
    return (_module_spec(module) if sep else None), _name(name)


def _out_path(text: str) -> str:
    if not text or not text.isprintable() or len(text.encode("utf-8", "surrogatepass")) > 4095:
        raise argparse.ArgumentTypeError(f"expected a folder path, got {text[:40]!r}")
    return text


#: The network options, whose defaults are None so that --activation can refuse them.
_NETWORK_DEFAULTS = {"hidden": (3, 2), "inputs": 6, "classes": 3, "batch": 4, "model": "smartmixed", "pool": None,
                     "tau": 0.3, "clamp": 10.0, "noise_mode": "shared", "input_scale": 1.0}


def add_gradcheck_parser(commands: Any) -> argparse.ArgumentParser:
    """Add the ``gradcheck`` subcommand to ``commands`` (an argparse subparsers object); returns its parser."""
    from ..core.activations import DEFAULT_POOL

    parser = commands.add_parser(
        "gradcheck",
        help="verify every gradient of a network or an activation against finite differences (a citable report)",
        description="Check the backward pass of a small network (given like `smartmixed train`'s) or of one "
        "activation, a user's own included, against central finite differences: per parameter in float64 and "
        "float32, along one random direction, against the step size, with non-differentiable points reported "
        "apart; for hard selection, the straight-through gradient against its surrogate and against the exact "
        "gradient of the expected loss. Writes report.md, report.json and figures.",
        epilog="Exit status: 0 every check passed its tolerance; 1 a check failed (the report says which parameter); "
        "2 a usage error.\n"
        "Examples:\n"
        "  smartmixed gradcheck --hidden 3,2 --out gradcheck/smartmixed\n"
        "  smartmixed gradcheck --model relu --hidden 8,6 --dtype float64 --out gradcheck/relu\n"
        "  smartmixed gradcheck --activation mypkg.acts:swish2 --out gradcheck/swish2\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = parser.add_argument_group("what to check (a network, the default, or one activation)")
    target.add_argument("--activation", type=_activation_spec, metavar="NAME|MODULE:NAME",
                        help="check one activation: a registered name, or MODULE:NAME to import MODULE (a module name or "
                        "a .py file, which calls register_activation) and check the activation it registered as NAME")
    target.add_argument("--model", type=_name, help="'smartmixed' (default) or one activation name (a fixed network)")
    target.add_argument("--hidden", type=_hidden, metavar="W1,W2,...", help="hidden widths (default: 3,2)")
    target.add_argument("--inputs", type=_integer(1, MAX_WIDTH), metavar="D", help="input features (default: 6)")
    target.add_argument("--classes", type=_integer(2, MAX_WIDTH), metavar="C", help="classes (default: 3)")
    target.add_argument("--batch", type=_integer(1, MAX_BATCH), metavar="B", help="examples in the checked batch (default: 4)")
    target.add_argument("--input-scale", type=_real(1e-3, 1e3), metavar="S",
                        help="standard deviation of the random inputs (default: 1; larger ones reach the clamp)")
    target.add_argument("--pool", type=_names, metavar="NAME,NAME,...",
                        help=f"phase-1 candidates (default: {','.join(DEFAULT_POOL)})")
    target.add_argument("--tau", type=_real(1e-3, 1e3), help="Gumbel-softmax temperature (default: 0.3)")
    target.add_argument("--soft", action="store_true", help="soft mixture instead of hard straight-through selection")
    target.add_argument("--noise-mode", "--noise", dest="noise_mode", choices=NOISE_MODES,
                        help="Gumbel noise: shared (default), per_sample or none")
    target.add_argument("--clamp", type=_real(1e-3, 1e6, none=True), help="clamp of candidate outputs (default: 10; 'none' disables)")
    target.add_argument("--import", dest="imports", action="append", type=_module_spec, metavar="MODULE",
                        help="import MODULE first (a module name or a .py file; it may register activations; repeatable)")
    check = parser.add_argument_group("the checks")
    check.add_argument("--dtype", choices=("float64", "float32", "both"), default="both",
                       help="precisions of the backward checked against the float64 differences (default: both)")
    check.add_argument("--eps", type=_real(1e-12, 1e-1), default=1e-6, metavar="H", help="finite-difference step (default: 1e-6)")
    check.add_argument("--tolerance", type=_real(1e-14, 1.0), default=1e-6, help="float64 tolerance (default: 1e-6)")
    check.add_argument("--tolerance-float32", type=_real(1e-10, 1.0), default=1e-4, help="float32 tolerance (default: 1e-4)")
    check.add_argument("--max-coordinates", type=_integer(0, 10**7), metavar="N",
                       help="check coordinate by coordinate up to N scalar parameters (default: 4000; --quick: 1000)")
    check.add_argument("--st-samples", type=_integer(2, 10**6), metavar="M",
                       help="noise draws of the straight-through study (default: 200; --quick: 40)")
    check.add_argument("--estimators", type=_names, metavar="NAME,...",
                       help=f"phase-1 estimators measured against the exact gradient (default: all of "
                       f"{','.join(available_estimators())})")
    check.add_argument("--seed", type=_integer(0, 2**32 - 1), default=0, help="seeds the network, batch, directions and noise (default: 0)")
    check.add_argument("--quick", action="store_true", help="fewer steps and noise draws: a smoke test")
    output = parser.add_argument_group("output")
    output.add_argument("--out", type=_out_path, metavar="DIR", help="report folder (default: runs/gradcheck_<target>_seed<seed>_<time>)")
    output.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return parser


def _options_from(args: argparse.Namespace) -> CheckOptions:
    dtypes = {"float64": ("float64",), "float32": ("float64", "float32"), "both": ("float64", "float32")}[args.dtype]
    options = CheckOptions.quick() if args.quick else CheckOptions()
    changes: dict = {"eps": args.eps, "tolerance": args.tolerance, "tolerance_float32": args.tolerance_float32, "dtypes": dtypes}
    if args.max_coordinates is not None:
        changes["max_coordinates"] = args.max_coordinates
    if args.st_samples is not None:
        changes["st_samples"] = args.st_samples
    if args.estimators is not None:
        unknown = [name for name in args.estimators if name not in available_estimators()]
        if unknown:
            raise GradcheckUsageError(f"smartmixed gradcheck: error: argument --estimators: {unknown[0]!r} is not available "
                                      f"(available: {', '.join(available_estimators())})")
        changes["estimators"] = args.estimators
    return replace(options, **changes)


def _network_from(args: argparse.Namespace) -> NetworkSpec:
    values = {key: getattr(args, key) if getattr(args, key) is not None else default
              for key, default in _NETWORK_DEFAULTS.items()}
    prog = "smartmixed gradcheck: error"
    if values["model"] != "smartmixed":
        try:
            get_activation(values["model"])
        except ValueError as err:
            raise GradcheckUsageError(f"{prog}: argument --model: {err} (or 'smartmixed')") from None
    if values["pool"] is not None:
        try:
            resolve_pool(values["pool"])
        except ValueError as err:
            raise GradcheckUsageError(f"{prog}: argument --pool: {err}") from None
    return NetworkSpec(hard=not args.soft, **values)


def run_gradcheck(args: argparse.Namespace) -> int:
    """Run ``smartmixed gradcheck`` for parsed ``args``; returns 0 (passed) or 1 (a check failed).

    Raises:
        UserError: a usage error (a bad option or module, an unknown name): the CLI prints it and exits 2.
    """
    from .plugins import PluginError, load_plugins

    options = _options_from(args)
    module, name = args.activation if args.activation else (None, None)
    load_plugins(args.imports or ())
    if module:
        try:
            load_plugins([module])
        except PluginError as err:  # say it of the option the user typed
            raise GradcheckUsageError("smartmixed gradcheck: error: argument --activation: "
                                      + str(err).replace(f"--import {module}: ", f"{module}: ", 1)) from None
    if args.activation:
        given = [f"--{key.replace('_', '-')}" for key in _NETWORK_DEFAULTS if getattr(args, key) is not None]
        if args.soft:
            given.append("--soft")
        if given:
            raise GradcheckUsageError(f"smartmixed gradcheck: error: --activation checks one activation; "
                                      f"{', '.join(given)} {'describe' if len(given) > 1 else 'describes'} a network: "
                                      "give one or the other")
        try:
            get_activation(name)
        except ValueError as err:
            hint = f" ({module} was imported: does it call register_activation({name!r}, ...)?)" if module else ""
            raise GradcheckUsageError(f"smartmixed gradcheck: error: argument --activation: {err}{hint}") from None
        label = name
        result = gradcheck_activation(name, options=options, seed=args.seed)
        result.target["module"] = module
    else:
        spec = _network_from(args)
        label = f"{spec.model}_{'-'.join(str(w) for w in spec.hidden)}"
        result = gradcheck_network(spec, options=options, seed=args.seed)
    argv = getattr(args, "argv", None)
    result.command = "smartmixed " + " ".join(_quote(a) for a in argv) if argv else None
    out = Path(args.out) if args.out else Path("runs") / f"gradcheck_{label}_seed{args.seed}_{time.strftime('%Y%m%d-%H%M%S')}"
    written = write_gradcheck_report(result, out)
    if not args.quiet:
        print(result.summary())
        print(f"report: {written[0]}")
    return 0 if result.passed else 1


def _quote(text: str) -> str:
    return text if re.fullmatch(r"[A-Za-z0-9_.,:/=+-]+", text) else "'" + text.replace("'", "'\\''") + "'"
