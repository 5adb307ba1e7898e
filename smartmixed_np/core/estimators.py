r"""Gradient estimators for the hard phase-1 selection, and the exact gradient they estimate.

A hard phase-1 layer (:mod:`smartmixed_np.core.phase1`) selects, for neuron ``n``,
the candidate $s_n = \arg\max_k (\alpha_{nk} + g_{nk})$ with Gumbel noise $g$, so that
$P(s_n = k) = \pi_{nk} = \mathrm{softmax}_k(\alpha_n)$ (the Gumbel-max trick: the
temperature $\tau$ does not change which candidate is drawn, only the soft weights
of the backward). Its output $\mathrm{out}_{bn} = a_{s_n bn}$ does not depend on
$\alpha$ at all, so the gradient of the loss with respect to the logits is zero
almost everywhere; what training wants is the gradient of the *expected* loss
$\nabla_\alpha \mathbb{E}_s[L(s)]$, which each estimator here approximates from one
forward pass. Every estimator shares the forward and the input gradient
$dz_{bn} = dout_{bn}\, f'_{s_n}(z_{bn})$ (the forward value is the selected candidate
whichever estimator runs), and all of them start from

$$dw_{nk} = \sum_b dout_{bn}\, a_{kbn},$$

the gradient of the loss with respect to the mixture weights (one-hot in the
forward), returned by :func:`weight_gradient`. They differ in how $dw$ becomes
$d\alpha$ (with $J(p) = \mathrm{diag}(p) - p p^\top$ the softmax Jacobian, so that
$J(p)^\top v = p \odot (v - \langle p, v \rangle)$, :func:`~smartmixed_np.core.phase1.softmax_backward`):

* ``"st"``, straight-through (the default; Bengio et al. 2013, with the Gumbel-softmax
  of Jang et al. and Maddison et al., ICLR 2017):
  $d\alpha = J(y)^\top dw / \tau$, $y = \mathrm{softmax}((\alpha + g)/\tau)$.
  :func:`straight_through_backward`, which is :func:`~smartmixed_np.core.phase1.mixture_backward`
  itself.
* ``"reinmax"`` (Liu et al., NeurIPS 2023, "Bridging Discrete and Backpropagation:
  Straight-Through and Beyond"): $d\alpha = 2 J(\pi_1)^\top dw - \tfrac12 J(\pi_0)^\top dw$,
  $\pi_0 = \mathrm{softmax}(\alpha)$, $\pi_1 = (D + \mathrm{softmax}(\alpha/\tau))/2$, $D = \mathrm{onehot}(s)$.
  :func:`reinmax_backward`; second-order accurate (exact in expectation for a loss
  quadratic in $D$ at $\tau = 1$, which the tests check).
* ``"gumbel_rao"`` (Paulus et al., ICLR 2021, "Rao-Blackwellizing the Straight-Through
  Gumbel-Softmax Gradient Estimator"): the straight-through gradient averaged over
  $M$ Gumbel draws conditioned on the selection, $d\alpha = \frac1M \sum_m
  J(y^{(m)})^\top dw / \tau$ with $y^{(m)} = \mathrm{softmax}((\alpha + g^{(m)})/\tau)$,
  $g^{(m)} \sim p(g \mid \arg\max(\alpha + g) = s)$ (:func:`conditional_gumbel`).
  :func:`gumbel_rao_backward`; the same expectation as straight-through, less variance.
* ``"score"``, the score function (REINFORCE; Williams 1992) with a baseline $b$:
  $d\alpha = (L - b)\, \nabla_\alpha \log p(s) = (L - b)(D - \pi_0)$, unbiased for
  $\nabla_\alpha \mathbb{E}_s[L]$ whenever $b$ does not depend on $s$. It needs the loss
  value $L$ of the batch, so its backward takes it. The baseline used in training is
  :class:`RunningBaseline`, a bias-corrected running mean of the *previous* steps'
  losses (independent of the current draw, so the estimate stays unbiased).
  :func:`score_function_backward`.

With per-sample noise (weights (B, N, K)) each sample has its own selection; every
formula applies per sample and the per-sample $d\alpha$ are summed over the batch
(as the straight-through backward does); the score function then uses the batch's
loss $L$ with $\nabla \log p$ of the joint draw, $\sum_b (D_b - \pi_0)$.

The truth they are measured against (for small networks): :func:`exact_expected_gradient`
enumerates every joint selection $s$ of the network's phase-1 neurons,

$$\mathbb{E}_s[L] = \sum_s p(s) L(s), \qquad p(s) = \prod_n \pi_{n s_n}, \qquad
  \frac{\partial\, \mathbb{E}_s[L]}{\partial \alpha_{nk}} = \sum_s p(s) L(s) ([s_n = k] - \pi_{nk}),$$

$K^N$ network evaluations for $N$ neurons over $K$ candidates (refused above a
limit); :func:`per_neuron_expected_gradient` enumerates one neuron's $K$ choices at a
time with the others held at a given selection, $N K$ evaluations, whose average over
selections drawn from $p$ is again the exact gradient. (The expected loss is the same
for shared and per-sample noise: the mean over the batch is linear.)

Estimators' backwards are vectorised over neurons (and samples, and draws); only the
enumeration loops, over chunks of selections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..backend import array_module, backend_of, to_host
from ..errors import UserError
from .activations import Activation
from .losses import log_softmax
from .phase1 import MixtureCache, candidate_outputs, gumbel_softmax_weights, mixture_backward, mixture_forward, softmax_backward

__all__ = [
    "ESTIMATORS",
    "DEFAULT_SAMPLES",
    "MAX_COMBINATIONS",
    "EnumerationError",
    "EstimatorCache",
    "check_estimator",
    "estimator_forward",
    "weight_gradient",
    "straight_through_backward",
    "reinmax_logit_gradient",
    "reinmax_backward",
    "reinmax_surrogate",
    "conditional_gumbel",
    "gumbel_rao_logit_gradient",
    "gumbel_rao_backward",
    "score_function_logit_gradient",
    "score_function_backward",
    "RunningBaseline",
    "ExpectedGradient",
    "selection_losses",
    "expected_loss",
    "exact_expected_gradient",
    "per_neuron_expected_gradient",
    "sample_selection",
]

#: The estimators by name, the default first.
ESTIMATORS = ("st", "reinmax", "gumbel_rao", "score")
#: Gumbel-Rao's default number M of conditional draws.
DEFAULT_SAMPLES = 10
#: The most joint selections :func:`exact_expected_gradient` enumerates unless told otherwise.
MAX_COMBINATIONS = 100_000


class EnumerationError(UserError, ValueError):
    """The exact expected gradient would need more network evaluations than allowed."""


def check_estimator(estimator: str, *, hard: bool = True, noise_mode: str = "shared", samples: int = DEFAULT_SAMPLES) -> None:
    """Raise ValueError (one line) unless ``estimator`` can train a layer of this mode.

    Every estimator but straight-through estimates the gradient of a *sampled* hard
    selection: it needs ``hard=True`` and Gumbel noise (``noise_mode`` ``"shared"`` or
    ``"per_sample"``). ``samples`` (Gumbel-Rao's M) must be a positive integer.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    if isinstance(samples, (bool, np.bool_)) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise ValueError(f"estimator samples must be a positive integer, got {samples!r}")
    if estimator != "st" and not hard:
        raise ValueError(f"the {estimator} estimator is for hard selection; a soft mixture has its exact gradient")
    if estimator != "st" and noise_mode == "none":
        raise ValueError(f"the {estimator} estimator needs a sampled selection (Gumbel noise shared or per_sample), not noise_mode 'none'")


# --------------------------------------------------------------------------- the shared forward
@dataclass
class EstimatorCache(MixtureCache):
    """A hard :class:`~smartmixed_np.core.phase1.MixtureCache` with what the estimators' backwards add.

    Attributes (besides the mixture's: ``z``, ``candidates`` (K, B, N), ``weights``,
    ``selected``, ``noise``, ``tau``, ``clamp``):
        logits: (N, K) a copy of the selection logits $\\alpha$ of the forward.
        exponentials: Gumbel-Rao's Exp(1) draws, (M, N, K) for shared noise or
            (M, B, N, K) per sample; None for the other estimators.
    """

    logits: Any = None
    exponentials: Any = None


def estimator_forward(
    z: Any,
    logits: Any,
    noise: Any,
    pool: Sequence[Activation],
    *,
    tau: float,
    clamp: float | None = 10.0,
    exponentials: Any = None,
) -> tuple[Any, EstimatorCache]:
    """The hard forward of :func:`~smartmixed_np.core.phase1.mixture_forward`, keeping $\\alpha$ (and M draws).

    Args:
        z: (B, N); logits: (N, K); noise: (N, K) or (B, N, K); pool: K candidates.
        exponentials: for Gumbel-Rao, Exp(1) draws of shape (M,) + the weights' shape.

    Returns:
        ``out`` (B, N), exactly the selected candidates, and the :class:`EstimatorCache`.
    """
    out, cache = mixture_forward(z, logits, noise, pool, tau=tau, hard=True, clamp=clamp)
    fields = {name: getattr(cache, name) for name in MixtureCache.__dataclass_fields__}
    return out, EstimatorCache(**fields, logits=logits.copy(), exponentials=exponentials)


def weight_gradient(dout: Any, cache: MixtureCache) -> Any:
    """$dw_{nk} = \\sum_b dout_{bn} a_{kbn}$: the loss's gradient with respect to the mixture weights.

    Args:
        dout: (B, N) upstream gradient.
        cache: a hard forward's cache.

    Returns:
        (N, K) for shared or no noise; (B, N, K) per sample (no sum: each sample has its own weights).
    """
    xp = array_module(dout)
    weighted = cache.candidates * dout[None, :, :]  # (K, B, N)
    if cache.weights.ndim == 2:
        return xp.sum(weighted, axis=1).T
    return weighted.transpose(1, 2, 0)


def _onehot(selected: Any, num_candidates: int, dtype: Any) -> Any:
    """$D = \\mathrm{onehot}(s)$: (..., K) from (...,) ints."""
    xp = array_module(selected)
    return (xp.arange(num_candidates) == selected[..., None]).astype(dtype)


def _softmax(logits: Any) -> Any:
    """$\\pi = \\mathrm{softmax}(\\alpha)$ over the last axis (max-subtracted)."""
    return gumbel_softmax_weights(logits, None, 1.0)


def _over_samples(dlogits: Any) -> Any:
    """Per-sample logit gradients (B, N, K) summed over the batch; (N, K) unchanged."""
    return array_module(dlogits).sum(dlogits, axis=0) if dlogits.ndim == 3 else dlogits


def _require_hard(cache: MixtureCache, estimator: str) -> None:
    if cache.selected is None:
        raise ValueError(f"the {estimator} estimator needs the cache of a hard forward pass")
    if getattr(cache, "logits", None) is None:
        raise ValueError(f"the {estimator} estimator needs the logits of the forward: run estimator_forward")


# --------------------------------------------------------------------------- straight-through
def straight_through_backward(dout: Any, cache: MixtureCache, pool: Sequence[Activation]) -> tuple[Any, Any]:
    """Straight-through: $d\\alpha = J(y)^\\top dw / \\tau$, $y = \\mathrm{softmax}((\\alpha + g)/\\tau)$.

    This is :func:`~smartmixed_np.core.phase1.mixture_backward` (the layer's default
    backward, and the exact gradient of
    :func:`~smartmixed_np.core.phase1.straight_through_surrogate`), named here beside
    its rivals.

    Returns:
        ``dz`` (B, N) and ``dlogits`` (N, K).
    """
    return mixture_backward(dout, cache, pool)


# --------------------------------------------------------------------------- ReinMax
def reinmax_logit_gradient(dw: Any, logits: Any, onehot: Any, tau: float) -> Any:
    """ReinMax (Liu et al., NeurIPS 2023): $d\\alpha = 2 J(\\pi_1)^\\top dw - \\tfrac12 J(\\pi_0)^\\top dw$.

    $\\pi_0 = \\mathrm{softmax}(\\alpha)$, the distribution $D$ was drawn from;
    $\\pi_1 = (D + \\mathrm{softmax}(\\alpha/\\tau))/2$. It is the gradient of the
    forward $D + \\pi_2 - \\mathrm{sg}(\\pi_2)$ with
    $\\pi_2 = 2\\,\\mathrm{softmax}(\\alpha + \\mathrm{sg}(\\log \\pi_1 - \\alpha)) - \\pi_0/2$,
    whose value is $2\\pi_1 - \\pi_0/2$ and whose Jacobian is $2J(\\pi_1) - J(\\pi_0)/2$.
    Why: the exact gradient is $\\sum_i L(I_i) \\nabla \\pi_i = \\sum_i (L(I_i) - L(D)) \\nabla \\pi_i$;
    straight-through approximates $L(I_i) - L(D)$ by the first-order term at $D$
    (Euler), ReinMax by the trapezoid rule, the mean of the slopes at $D$ and at $I_i$
    (Heun's method), which is second-order accurate.

    Args:
        dw: (N, K) or (B, N, K), from :func:`weight_gradient`.
        logits: (N, K) $\\alpha$. onehot: $D$, the shape of ``dw``. tau: the layer's temperature.

    Returns:
        The shape of ``dw`` (not yet summed over samples).
    """
    pi0 = _softmax(logits)
    pi1 = (gumbel_softmax_weights(logits, None, tau) + onehot) / 2
    return 2 * softmax_backward(dw, pi1) - 0.5 * softmax_backward(dw, pi0)


def reinmax_backward(dout: Any, cache: EstimatorCache, pool: Sequence[Activation]) -> tuple[Any, Any]:
    """Gradients of a hard phase-1 layer by ReinMax (:func:`reinmax_logit_gradient`).

    Args:
        dout: (B, N). cache: from :func:`estimator_forward`. pool: the forward's candidates.

    Returns:
        ``dz`` (B, N), the selected candidate's derivative (as straight-through), and ``dlogits`` (N, K).
    """
    _require_hard(cache, "reinmax")
    dz, _ = mixture_backward(dout, cache, pool)  # dz is the same for every estimator
    onehot = _onehot(cache.selected, cache.weights.shape[-1], cache.weights.dtype)
    return dz, _over_samples(reinmax_logit_gradient(weight_gradient(dout, cache), cache.logits, onehot, cache.tau))


def _kbn(weights: Any) -> Any:
    """(N, K) -> (K, 1, N), (B, N, K) -> (K, B, N): weights broadcast against the candidate stack."""
    return weights.T[:, None, :] if weights.ndim == 2 else weights.transpose(2, 0, 1)


def reinmax_surrogate(
    z: Any,
    logits: Any,
    pool: Sequence[Activation],
    *,
    anchor: Any,
    onehot: Any,
    tau: float,
    clamp: float | None = 10.0,
) -> Any:
    """$\\sum_k (2\\,\\mathrm{softmax}(\\alpha + c)_k - \\tfrac12 \\mathrm{softmax}(\\alpha)_k + C_k)\\, a_k(z)$, forward only.

    The constants are taken at ``anchor`` $\\alpha_0$ and held: $c = \\log \\pi_1(\\alpha_0) - \\alpha_0$,
    $C = D - (2\\pi_1(\\alpha_0) - \\pi_0(\\alpha_0)/2)$. At $\\alpha = \\alpha_0$ the value is
    the hard forward $\\sum_k D_k a_k$ and the exact gradient is :func:`reinmax_backward`'s,
    so finite differences of this function verify it.

    Args:
        z: (B, N); logits: (N, K), the point evaluated; anchor: (N, K), where the constants are taken;
        onehot: $D$, (N, K) or (B, N, K); tau: the temperature.

    Returns:
        (B, N).
    """
    xp = array_module(z)
    pi1 = (gumbel_softmax_weights(anchor, None, tau) + onehot) / 2
    shift = xp.log(pi1) - anchor
    offset = onehot - (2 * pi1 - _softmax(anchor) / 2)
    weights = 2 * _softmax(logits + shift) - _softmax(logits) / 2 + offset
    return xp.sum(candidate_outputs(z, pool, clamp) * _kbn(weights), axis=0)


# --------------------------------------------------------------------------- Gumbel-Rao
def conditional_gumbel(logits: Any, selected: Any, exponentials: Any) -> Any:
    """Gumbel noise $g$ drawn given that $\\arg\\max_k(\\alpha_k + g_k) = s$ (truncated Gumbels).

    With $E_k \\sim \\mathrm{Exp}(1)$ and $Z = \\sum_k e^{\\alpha_k}$: the maximum
    $\\alpha_s + g_s = \\log Z - \\log E_s$ is Gumbel-distributed around $\\log Z$
    independently of which $k$ attains it, and every other $\\alpha_k + g_k$ is a Gumbel
    around $\\alpha_k$ truncated below it: $-\\log(E_k e^{-\\alpha_k} + E_s / Z)$ (the
    exponential-race view of Gumbel-max; Maddison et al., NeurIPS 2014, "A* Sampling",
    as used by Paulus et al., ICLR 2021). Computed with ``logaddexp``, without overflow.

    Args:
        logits: (N, K) $\\alpha$.
        selected: (N,) or (B, N) ints $s$.
        exponentials: (M, N, K) or (M, B, N, K) Exp(1) draws.

    Returns:
        The noise, the shape of ``exponentials``; $\\arg\\max(\\alpha + g) = s$ in every draw
        (up to rounding ties).
    """
    xp = array_module(logits)
    onehot = _onehot(selected, logits.shape[-1], exponentials.dtype)
    top = xp.max(logits, axis=-1, keepdims=True)
    log_z = top + xp.log(xp.sum(xp.exp(logits - top), axis=-1, keepdims=True))  # (N, 1)
    log_e = xp.log(exponentials)
    maximum = log_z - xp.sum(log_e * onehot, axis=-1, keepdims=True)  # alpha_s + g_s
    others = -xp.logaddexp(log_e - logits, -maximum)  # alpha_k + g_k, k != s, all below the maximum
    return xp.where(onehot > 0, maximum, others) - logits


def gumbel_rao_logit_gradient(dw: Any, logits: Any, selected: Any, tau: float, exponentials: Any) -> Any:
    """Gumbel-Rao (Paulus et al., ICLR 2021): $d\\alpha = \\frac1M \\sum_m J(y^{(m)})^\\top dw / \\tau$.

    $y^{(m)} = \\mathrm{softmax}((\\alpha + g^{(m)})/\\tau)$ with $g^{(m)}$ the conditional
    draws of :func:`conditional_gumbel`, held constant (as the noise of a
    straight-through pass is). $\\mathbb{E}[d\\alpha \\mid s]$ equals the straight-through
    gradient's conditional expectation given $s$, so both have the same mean; the
    average over draws removes the part of straight-through's variance that comes
    from the noise given the selection.

    Args:
        dw: (N, K) or (B, N, K). logits: (N, K). selected: (N,) or (B, N).
        exponentials: (M,) + ``dw.shape``.

    Returns:
        The shape of ``dw`` (not yet summed over samples).
    """
    xp = array_module(dw)
    soft = gumbel_softmax_weights(logits, conditional_gumbel(logits, selected, exponentials), tau)  # (M, ..., N, K)
    return xp.mean(softmax_backward(dw[None], soft), axis=0) / tau


def gumbel_rao_backward(dout: Any, cache: EstimatorCache, pool: Sequence[Activation]) -> tuple[Any, Any]:
    """Gradients of a hard phase-1 layer by Gumbel-Rao with the cache's M draws (:func:`gumbel_rao_logit_gradient`).

    Args:
        dout: (B, N). cache: from :func:`estimator_forward` with ``exponentials``. pool: the forward's candidates.

    Returns:
        ``dz`` (B, N), as straight-through, and ``dlogits`` (N, K).
    """
    _require_hard(cache, "gumbel_rao")
    if cache.exponentials is None:
        raise ValueError("the gumbel_rao estimator needs the forward's Exp(1) draws (estimator_forward(..., exponentials=...))")
    dz, _ = mixture_backward(dout, cache, pool)
    dw = weight_gradient(dout, cache)
    return dz, _over_samples(gumbel_rao_logit_gradient(dw, cache.logits, cache.selected, cache.tau, cache.exponentials))


# --------------------------------------------------------------------------- score function
def score_function_logit_gradient(logits: Any, selected: Any, advantage: float) -> Any:
    """REINFORCE: $d\\alpha = (L - b)\\, \\nabla_\\alpha \\log \\pi_s = (L - b)(\\mathrm{onehot}(s) - \\mathrm{softmax}(\\alpha))$.

    Args:
        logits: (N, K). selected: (N,) or (B, N). advantage: the number $L - b$.

    Returns:
        (N, K) or (B, N, K) (not yet summed over samples).
    """
    return advantage * (_onehot(selected, logits.shape[-1], logits.dtype) - _softmax(logits))


def score_function_backward(
    dout: Any, cache: EstimatorCache, pool: Sequence[Activation], *, loss: Any, baseline: float = 0.0
) -> tuple[Any, Any]:
    """Gradients of a hard phase-1 layer by the score function with a baseline (:func:`score_function_logit_gradient`).

    Unbiased for $\\nabla_\\alpha \\mathbb{E}_s[L]$ when ``baseline`` does not depend on this
    pass's selection. The input gradient is the pathwise one of the sampled network
    (the same as straight-through's), itself unbiased for $\\nabla_z \\mathbb{E}_s[L]$.

    Args:
        dout: (B, N). cache: from :func:`estimator_forward`. pool: the forward's candidates.
        loss: the loss $L$ of this forward pass (a number or a 0-d array).
        baseline: $b$.

    Returns:
        ``dz`` (B, N) and ``dlogits`` (N, K).
    """
    _require_hard(cache, "score")
    dz, _ = mixture_backward(dout, cache, pool)
    advantage = float(to_host(loss)) - float(baseline)
    return dz, _over_samples(score_function_logit_gradient(cache.logits, cache.selected, advantage))


class RunningBaseline:
    """The score function's baseline: a bias-corrected running mean of past losses.

    $m_t = \\beta m_{t-1} + (1 - \\beta) L_t$, $b = m_t / (1 - \\beta^t)$ after $t$ losses
    (0 before any): the mean of the recent losses, weighted $\\beta^{\\text{age}}$, without
    the pull towards 0 of a mean started at 0 (as Adam corrects its moments). Read
    :attr:`value` *before* :meth:`update` with the current loss, so that the baseline of
    a step depends only on earlier draws.

    Args:
        decay: $\\beta$ in [0, 1).

    State: ``mean`` ($m_t$) and ``steps`` ($t$), JSON-able through :meth:`state_dict`.
    """

    def __init__(self, decay: float = 0.9) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"baseline decay must lie in [0, 1), got {decay}")
        self.decay = float(decay)
        self.mean = 0.0
        self.steps = 0

    @property
    def value(self) -> float:
        """$b$: the corrected mean of the losses seen, 0 before the first."""
        return self.mean / (1 - self.decay**self.steps) if self.steps else 0.0

    def update(self, loss: Any) -> None:
        """Fold one loss (a number or 0-d array) into the mean."""
        self.mean = self.decay * self.mean + (1 - self.decay) * float(to_host(loss))
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "mean": self.mean, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay, self.mean, self.steps = float(state["decay"]), float(state["mean"]), int(state["steps"])


# --------------------------------------------------------------------------- the exact gradient
@dataclass(frozen=True)
class ExpectedGradient:
    """An enumerated gradient of the expected loss.

    Attributes:
        loss: :func:`exact_expected_gradient`: $\\mathbb{E}_s[L]$;
            :func:`per_neuron_expected_gradient`: $L$ at the given selection.
        gradients: (N, K) host float64 array per phase-1 layer, under the names of
            :meth:`~smartmixed_np.nn.mlp.MLP.gradients` (``"activations.0.logits"``, ...).
        evaluations: how many selections' losses were computed.
    """

    loss: float
    gradients: dict[str, np.ndarray]
    evaluations: int


def _phase1_layers(model: Any) -> list[int]:
    """Indices of the layers that own selection logits."""
    layers = [i for i, act in enumerate(model.activations) if hasattr(act, "logits")]
    if not layers:
        raise ValueError("the network has no phase-1 layer: there is no selection to enumerate")
    return layers


def _forward_selections(model: Any, x: Any, labels: Any, selections: Any, layers: list[int]) -> Any:
    """Mean cross-entropy (M,) of the network with each row of ``selections`` (M, N_total) as its choices.

    The first layer's candidates are computed once; from the first phase-1 layer on,
    every selection carries its own hidden values, (M, B, width), in float64.
    """
    xp = array_module(x)
    h = x.astype(np.float64)[None]  # (1, B, D)
    batch = int(x.shape[0])
    rows = xp.arange(batch)[None, :, None]
    column = 0
    for i, (linear, act) in enumerate(zip(model.linears, model.activations)):
        z = h @ linear.W.astype(np.float64).T + linear.b.astype(np.float64)  # (1 or M, B, N)
        width = int(z.shape[-1])
        if i in layers:
            stack = candidate_outputs(z, act.pool, act.clamp)  # (K, 1 or M, B, N)
            chosen = selections[:, column : column + width]  # (M, N)
            column += width
            which = xp.arange(chosen.shape[0])[:, None, None] if stack.shape[1] > 1 else 0
            h = stack[chosen[:, None, :], which, rows, xp.arange(width)[None, None, :]]
        else:
            h = act.forward(z.reshape(-1, width))[0].reshape(z.shape)
    logits = h @ model.linears[-1].W.astype(np.float64).T + model.linears[-1].b.astype(np.float64)
    count, _, classes = logits.shape  # (M, B, C): every selection's logits
    log_probs = log_softmax(logits.reshape(-1, classes)).reshape(count, batch, classes)
    return -xp.mean(log_probs[:, xp.arange(batch), labels], axis=1)


def selection_losses(model: Any, x: Any, labels: Any, selections: Any) -> np.ndarray:
    """The loss $L(s)$ (mean softmax cross-entropy over the batch) of the network with each selection, in float64.

    The network is evaluated as phase 2 would run it with those choices: every
    phase-1 neuron ``n`` applies candidate ``s_n`` (clamped as the layer clamps),
    whatever its logits.

    Args:
        model: a phase-1 :class:`~smartmixed_np.nn.mlp.MLP` (or anything with its ``linears``
            and ``activations``). x: (B, D) on its device. labels: (B,) ints there.
        selections: (M, N_total) host ints: per row, the choice of every phase-1
            neuron, layer after layer, in neuron order.

    Returns:
        (M,) host float64.
    """
    layers = _phase1_layers(model)
    selections = np.asarray(selections, dtype=np.int64)
    total = sum(int(model.activations[i].logits.shape[0]) for i in layers)
    if selections.ndim != 2 or selections.shape[1] != total:
        raise ValueError(f"selections must be (M, {total}) for the network's {total} phase-1 neurons, got {selections.shape}")
    backend = backend_of(x)
    widest = max(int(linear.W.shape[0]) for linear in model.linears)
    pool = max(len(model.activations[i].pool) for i in layers)
    chunk = max(1, (1 << 22) // max(1, int(x.shape[0]) * widest * pool))
    losses = [
        to_host(_forward_selections(model, x, labels, backend.asarray(selections[start : start + chunk]), layers))
        for start in range(0, selections.shape[0], chunk)
    ]
    return np.concatenate(losses) if losses else np.zeros(0)


def _host_log_probabilities(model: Any, layers: list[int]) -> list[np.ndarray]:
    """$\\log \\pi_n = \\log \\mathrm{softmax}(\\alpha_n)$ per phase-1 layer, (N, K) host float64."""
    out = []
    for i in layers:
        logits = np.asarray(to_host(model.activations[i].logits), dtype=np.float64)
        shifted = logits - logits.max(axis=1, keepdims=True)
        out.append(shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True)))
    return out


def _all_selections(model: Any, layers: list[int], max_combinations: int) -> np.ndarray:
    """Every joint selection, (prod K^N, N_total), or :class:`EnumerationError` above the limit."""
    radices = [len(model.activations[i].pool) for i in layers for _ in range(int(model.activations[i].logits.shape[0]))]
    count = 1
    for radix in radices:
        count *= radix
    if count > max_combinations:
        pools = sorted({radix for radix in radices})
        raise EnumerationError(
            f"the exact expected gradient enumerates {count:,} joint selections ({len(radices)} phase-1 neurons over "
            f"{'/'.join(map(str, pools))} candidates), above the limit of {max_combinations:,}: use a smaller network, "
            "raise max_combinations, or per_neuron_expected_gradient"
        )
    return np.stack(np.unravel_index(np.arange(count), radices), axis=1).astype(np.int64)


def _marginal_sums(weights: np.ndarray, selections: np.ndarray, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Per layer, $\\sum_s w(s)[s_n = k]$ as (N, K): one bincount over every (selection, neuron)."""
    out, column = [], 0
    for width, pool in sizes:
        chosen = selections[:, column : column + width]
        flat = (np.arange(width) * pool + chosen).ravel()
        out.append(np.bincount(flat, weights=np.repeat(weights, width), minlength=width * pool).reshape(width, pool))
        column += width
    return out


def expected_loss(model: Any, x: Any, labels: Any, *, max_combinations: int = MAX_COMBINATIONS) -> float:
    """$\\mathbb{E}_s[L] = \\sum_s p(s) L(s)$ by enumeration (see :func:`exact_expected_gradient`)."""
    return exact_expected_gradient(model, x, labels, max_combinations=max_combinations).loss


def exact_expected_gradient(model: Any, x: Any, labels: Any, *, max_combinations: int = MAX_COMBINATIONS) -> ExpectedGradient:
    """$\\nabla_\\alpha \\mathbb{E}_s[L]$ of every phase-1 layer, by enumerating every joint selection.

    $p(s) = \\prod_n \\pi_{n s_n}$ with $\\pi_n = \\mathrm{softmax}(\\alpha_n)$ (the
    distribution of the Gumbel-max selection, whatever $\\tau$), $L(s)$ from
    :func:`selection_losses`, and
    $\\partial\\, \\mathbb{E}[L] / \\partial \\alpha_{nk} = \\sum_s p(s) L(s)([s_n = k] - \\pi_{nk})
    = \\pi_{nk}(\\mathbb{E}[L \\mid s_n = k] - \\mathbb{E}[L])$.

    Args:
        model: a phase-1 network (any dtype; evaluated in float64). x: (B, D). labels: (B,).
        max_combinations: refuse (:class:`EnumerationError`) when $\\prod K^{N}$ is larger.

    Returns:
        An :class:`ExpectedGradient` with ``loss`` $\\mathbb{E}_s[L]$.
    """
    layers = _phase1_layers(model)
    selections = _all_selections(model, layers, max_combinations)
    losses = selection_losses(model, x, labels, selections)
    log_pi = _host_log_probabilities(model, layers)
    sizes = [lp.shape for lp in log_pi]
    log_p = np.zeros(selections.shape[0])
    column = 0
    for lp in log_pi:
        width = lp.shape[0]
        log_p += lp[np.arange(width), selections[:, column : column + width]].sum(axis=1)
        column += width
    p = np.exp(log_p)
    expected = float(p @ losses)
    gradients = {
        f"activations.{i}.logits": marginal - np.exp(lp) * expected
        for i, lp, marginal in zip(layers, log_pi, _marginal_sums(p * losses, selections, sizes))
    }
    return ExpectedGradient(expected, gradients, int(selections.shape[0]))


def per_neuron_expected_gradient(model: Any, x: Any, labels: Any, selection: Sequence[Any]) -> ExpectedGradient:
    """Per neuron, the exact gradient of $\\mathbb{E}_{s_n}[L \\mid s_{-n}]$ with the others held at ``selection``.

    For neuron $n$: $d\\alpha_{nk} = \\pi_{nk}\\,(L(k, s_{-n}) - \\sum_j \\pi_{nj} L(j, s_{-n}))$,
    $\\sum_n K_n$ evaluations in all. Since $\\alpha_n$ moves only $s_n$'s distribution,
    the mean of this over $s_{-n} \\sim p$ is the exact $\\nabla_{\\alpha_n} \\mathbb{E}_s[L]$:
    averaged over selections from :func:`sample_selection`, an unbiased, low-variance
    stand-in for :func:`exact_expected_gradient` where enumeration is out of reach.

    Args:
        model, x, labels: as :func:`exact_expected_gradient`.
        selection: one (N,) int array per phase-1 layer (e.g. ``model.choices()`` or
            :func:`sample_selection`).

    Returns:
        An :class:`ExpectedGradient` whose ``loss`` is $L$ at ``selection``.
    """
    layers = _phase1_layers(model)
    if len(selection) != len(layers):
        raise ValueError(f"selection lists {len(selection)} layers, the network has {len(layers)} phase-1 layers")
    base = np.concatenate([np.asarray(to_host(s), dtype=np.int64).ravel() for s in selection])
    log_pi = _host_log_probabilities(model, layers)
    sizes = [lp.shape for lp in log_pi]
    radices = np.concatenate([np.full(width, pool) for width, pool in sizes])
    if base.shape[0] != radices.shape[0] or np.any(base < 0) or np.any(base >= radices):
        raise ValueError(f"selection must hold {radices.shape[0]} choices, each in range of its layer's pool")
    neuron = np.repeat(np.arange(base.shape[0]), radices)  # the neuron varied in each row
    choice = np.concatenate([np.arange(radix) for radix in radices])  # its choice there
    variants = np.repeat(base[None], neuron.shape[0], axis=0)
    variants[np.arange(neuron.shape[0]), neuron] = choice
    losses = selection_losses(model, x, labels, variants)
    gradients, start = {}, 0
    for i, lp in zip(layers, log_pi):
        width, pool = lp.shape
        table = losses[start : start + width * pool].reshape(width, pool)  # L(k, s_-n), rows in neuron order
        pi = np.exp(lp)
        gradients[f"activations.{i}.logits"] = pi * (table - np.sum(pi * table, axis=1, keepdims=True))
        start += width * pool
    at_selection = float(losses[np.flatnonzero(choice == base[neuron])[0]])
    return ExpectedGradient(at_selection, gradients, int(variants.shape[0]))


def sample_selection(model: Any, rng: np.random.Generator) -> list[np.ndarray]:
    """A joint selection drawn from $p$: per phase-1 layer, $\\arg\\max_k(\\alpha_{nk} + g_{nk})$, (N,) host ints."""
    out = []
    for i in _phase1_layers(model):
        logits = np.asarray(to_host(model.activations[i].logits), dtype=np.float64)
        out.append(np.argmax(logits + rng.gumbel(size=logits.shape), axis=1))
    return out
