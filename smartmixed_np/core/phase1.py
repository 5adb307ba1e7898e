"""Phase 1: each neuron picks an activation by a hard Gumbel-softmax.

Neuron ``n`` owns selection logits ``alpha[n] (K,)`` over a pool of ``K`` candidate
activations. In a training forward pass, with Gumbel noise ``g`` and temperature
``tau``:

$$y_{nk} = \\mathrm{softmax}_k\\big((\\alpha_{nk} + g_{nk}) / \\tau\\big), \\qquad
  a_{bnk} = \\mathrm{clamp}\\big(f_k(z_{bn}), -c, c\\big)$$

* soft (``hard=False``): $\\mathrm{out}_{bn} = \\sum_k y_{nk} a_{bnk}$;
* hard (``hard=True``, the default): $\\mathrm{out}_{bn} = a_{bn s_n}$ with
  $s_n = \\arg\\max_k y_{nk}$, exactly the selected candidate, and the
  *straight-through* gradient: the backward pass treats the weights as
  $h = \\mathrm{onehot}(s) - \\mathrm{sg}(y) + y$ (``sg`` = stop-gradient), whose
  value is the one-hot and whose gradient is that of ``y``. It is the exact
  gradient of the surrogate $\\sum_k (y_{nk} + C_{nk}) a_{bnk}$ with the constant
  $C = \\mathrm{onehot}(s) - y$ taken at the current point
  (:func:`straight_through_surrogate`), which is how the tests verify it.

The mixture of clamped candidates is a convex combination, so it already lies in
``[-c, c]``: the reference's second clamp, on the mixture, never changes a value and
is not repeated here.

Noise: one ``g`` of shape (N, K) per forward pass, shared by the batch (as the
reference does), or one per sample, (B, N, K); or none (``noise_mode="none"``,
deterministic selection by ``softmax(alpha / tau)``, an ablation). The noise used is
kept in the cache and can be passed back in to replay a forward pass exactly.

This module is the reference, for every mode: plain array code, one step of the
formula per line. The layer that holds the logits, :class:`smartmixed_np.nn.layers.SmartMixedActivation`,
runs it, or, for the common case (hard selection, one noise draw shared by the
batch or none, a pool of built-ins), its fused stand-in
:func:`smartmixed_np.fast.phase1.mixture_forward_fused` /
:func:`~smartmixed_np.fast.phase1.mixture_backward_fused`: the same values,
computed feature-major in reused buffers. ``tests/test_mixture.py`` checks that
they agree, and every gradient here against finite differences.

Evaluation: the argmax of ``alpha``, without noise, i.e. exactly what freezing
produces. (The reference implementation samples noise in evaluation too, so its
validation scores are of a randomly perturbed network; ours are of the network
that phase 2 would continue from.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..backend import Backend, SeededRNG, array_module
from .activations import Activation

__all__ = [
    "NOISE_MODES",
    "CLAMP_GRADS",
    "MixtureCache",
    "gumbel_softmax_weights",
    "softmax_backward",
    "candidate_outputs",
    "mixture_forward",
    "mixture_backward",
    "straight_through_surrogate",
    "init_selection_logits",
]

NOISE_MODES = ("shared", "per_sample", "none")
#: The clamp's gradient at exactly +-c: "open" (ours: zero wherever the clamped output
#: sits at an edge) or "closed" (PyTorch's clamp, the authors': it passes wherever the
#: unclamped f(z) lies in the closed [-c, c], so at exactly +-c too; zero beyond).
CLAMP_GRADS = ("open", "closed")


@dataclass
class MixtureCache:
    """What :func:`mixture_backward` needs.

    Attributes:
        z: (B, N) pre-activations.
        candidates: (K, B, N) clamped candidate outputs $a_k$.
        weights: soft weights $y$: (N, K) for shared noise, (B, N, K) per sample.
        selected: hard choice $s$: (N,) or (B, N) ints; None in soft mode.
        noise: the Gumbel noise used: (N, K), (B, N, K), or None.
        tau: temperature.
        clamp: the clamp ``c`` or None.
    """

    z: Any
    candidates: Any
    weights: Any
    selected: Any
    noise: Any
    tau: float
    clamp: float | None


def gumbel_softmax_weights(logits: Any, noise: Any, tau: float) -> Any:
    """$y = \\mathrm{softmax}((\\alpha + g)/\\tau)$ over the last axis.

    Args:
        logits: (N, K).
        noise: (N, K), (B, N, K), or None (no noise).
        tau: temperature > 0.

    Returns:
        (N, K) or (B, N, K) weights, rows summing to 1 (max-subtracted, stable).
    """
    xp = array_module(logits)
    s = logits if noise is None else logits + noise
    s = s / tau
    s = s - xp.max(s, axis=-1, keepdims=True)
    e = xp.exp(s)
    return e / xp.sum(e, axis=-1, keepdims=True)


def softmax_backward(dy: Any, y: Any) -> Any:
    """Vector-Jacobian product of the softmax over the last axis: $ds = y \\odot (dy - \\langle y, dy \\rangle)$."""
    xp = array_module(y)
    return y * (dy - xp.sum(y * dy, axis=-1, keepdims=True))


def candidate_outputs(z: Any, pool: Sequence[Activation], clamp: float | None) -> Any:
    """$a_k = \\mathrm{clamp}(f_k(z), -c, c)$ for every candidate, stacked: (K, B, N)."""
    xp = array_module(z)
    stack = xp.empty((len(pool),) + tuple(z.shape), dtype=z.dtype)
    for k, activation in enumerate(pool):
        stack[k] = activation.forward(z)
    if clamp is not None:
        xp.clip(stack, -clamp, clamp, out=stack)
    return stack


def _candidate_derivatives(z: Any, candidates: Any, pool: Sequence[Activation], clamp: float | None,
                           clamp_grad: str = "open") -> Any:
    """$f'_k(z)$, zero where the clamp is active, stacked: (K, B, N).

    ``clamp_grad="open"``: zero where $|a_k| = c$ (the clamped output at an edge);
    ``"closed"``: zero where $|f_k(z)| > c$ (the unclamped value, recomputed here),
    so that a value exactly at $\\pm c$ passes its gradient, as PyTorch's clamp does.
    """
    xp = array_module(z)
    stack = xp.empty_like(candidates)
    for k, activation in enumerate(pool):
        stack[k] = activation.derivative(z, candidates[k])
        if clamp is not None and clamp_grad == "closed":
            stack[k] *= xp.abs(activation.forward(z)) <= clamp
    if clamp is not None and clamp_grad != "closed":
        stack *= xp.abs(candidates) < clamp
    return stack


def _gather_selected(stack: Any, selected: Any) -> Any:
    """``stack[s[b, n], b, n]`` for (K, B, N) ``stack`` and (N,) or (B, N) ``selected``."""
    xp = array_module(stack)
    _, B, N = stack.shape
    rows = xp.arange(B)[:, None]
    cols = xp.arange(N)[None, :]
    index = selected[None, :] if selected.ndim == 1 else selected
    return stack[index, rows, cols]


def _weights_kbn(weights: Any) -> Any:
    """(N, K) -> (K, 1, N) or (B, N, K) -> (K, B, N), to broadcast against the stack."""
    if weights.ndim == 2:
        return weights.T[:, None, :]
    return weights.transpose(2, 0, 1)


def mixture_forward(
    z: Any,
    logits: Any,
    noise: Any,
    pool: Sequence[Activation],
    *,
    tau: float,
    hard: bool = True,
    clamp: float | None = 10.0,
) -> tuple[Any, MixtureCache]:
    """Training forward of the phase-1 layer (formula in the module docstring).

    Args:
        z: (B, N) pre-activations.
        logits: (N, K) selection logits $\\alpha$.
        noise: (N, K) shared, (B, N, K) per sample, or None for none.
        pool: the K candidate activations.
        tau: temperature > 0.
        hard: one-hot forward with straight-through gradient, or the soft mixture.
        clamp: clamp each candidate to ``[-clamp, clamp]``; None for no clamp.

    Returns:
        ``out`` (B, N) and the cache.
    """
    xp = array_module(z)
    weights = gumbel_softmax_weights(logits, noise, tau)
    candidates = candidate_outputs(z, pool, clamp)
    if hard:
        selected = xp.argmax(weights, axis=-1)
        out = _gather_selected(candidates, selected)
    else:
        selected = None
        out = xp.sum(candidates * _weights_kbn(weights), axis=0)
    return out, MixtureCache(z, candidates, weights, selected, noise, tau, clamp)


def mixture_backward(dout: Any, cache: MixtureCache, pool: Sequence[Activation], *,
                     clamp_grad: str = "open") -> tuple[Any, Any]:
    """Gradients of the phase-1 layer.

    With $D_k = f'_k(z)$ (zero where clamped) and $w$ the forward weights (the
    one-hot $h$ in hard mode, $y$ in soft mode):

    * $dz_{bn} = dout_{bn} \\sum_k w_{nk} D_{kbn}$ (hard: $D_{s_n bn}$);
    * $dy_{nk} = \\sum_b dout_{bn} a_{kbn}$ (per sample: no sum over b);
    * $d\\alpha = \\mathrm{softmax\\_backward}(dy, y) / \\tau$, summed over the batch
      for per-sample noise.

    Args:
        dout: (B, N) upstream gradient.
        cache: from :func:`mixture_forward`.
        pool: the same candidates as the forward.
        clamp_grad: the clamp's gradient at exactly $\\pm c$ (:data:`CLAMP_GRADS`):
            ``"open"`` (ours, zero there) or ``"closed"`` (PyTorch's, passed there).

    Returns:
        ``dz`` (B, N) and ``dlogits`` (N, K).
    """
    xp = array_module(dout)
    derivatives = _candidate_derivatives(cache.z, cache.candidates, pool, cache.clamp, clamp_grad)
    if cache.selected is not None:
        dz = dout * _gather_selected(derivatives, cache.selected)
    else:
        dz = dout * xp.sum(derivatives * _weights_kbn(cache.weights), axis=0)
    weighted = cache.candidates * dout[None, :, :]  # (K, B, N)
    if cache.weights.ndim == 2:
        dy = xp.sum(weighted, axis=1).T  # (N, K)
        dlogits = softmax_backward(dy, cache.weights) / cache.tau
    else:
        dy = weighted.transpose(1, 2, 0)  # (B, N, K)
        dlogits = xp.sum(softmax_backward(dy, cache.weights), axis=0) / cache.tau
    return dz, dlogits


def straight_through_surrogate(
    z: Any,
    logits: Any,
    noise: Any,
    pool: Sequence[Activation],
    *,
    tau: float,
    offset: Any,
    clamp: float | None = 10.0,
) -> Any:
    """$\\sum_k (y_{nk}(\\alpha) + C_{nk})\\, a_{bnk}(z)$, forward only (for verification).

    With ``offset`` $C = \\mathrm{onehot}(s) - y(\\alpha_0)$ computed once at a point
    $\\alpha_0$ and then held constant, this function equals the hard forward at
    $\\alpha_0$ and its exact gradient there is the straight-through gradient of
    :func:`mixture_backward`. Finite differences of this function are therefore
    the ground truth for the hard mode.

    Args:
        z: (B, N); logits: (N, K); noise: (N, K), (B, N, K) or None;
        offset: same shape as the weights, (N, K) or (B, N, K).

    Returns:
        (B, N).
    """
    xp = array_module(z)
    weights = gumbel_softmax_weights(logits, noise, tau) + offset
    return xp.sum(candidate_outputs(z, pool, clamp) * _weights_kbn(weights), axis=0)


def init_selection_logits(num_neurons: int, num_candidates: int, rng: SeededRNG, dtype: Any, backend: Backend) -> Any:
    """Zeros, except 0.001 at one random candidate per neuron (the reference's choice).

    The tiny bump breaks ties so that an untrained network's argmax choices are
    spread over the pool instead of all being candidate 0.

    Returns:
        (num_neurons, num_candidates) logits on ``backend``.
    """
    host = np.zeros((num_neurons, num_candidates), dtype=dtype)
    picks = rng.generator.integers(0, num_candidates, size=num_neurons)
    host[np.arange(num_neurons), picks] = 0.001
    return backend.asarray(host)
