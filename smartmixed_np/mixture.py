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

Two implementations. :func:`mixture_forward`/:func:`mixture_backward` are the
reference, for every mode. :class:`SmartMixedActivation` uses the fused pair
:func:`mixture_forward_fused`/:func:`mixture_backward_fused` for the common case
(hard selection, one noise draw shared by the batch or none, a pool of built-ins):
the same values, computed feature-major in reused buffers (see
:mod:`smartmixed_np.kernels`); ``tests/test_mixture.py`` checks that they agree.

Evaluation: the argmax of ``alpha``, without noise, i.e. exactly what freezing
produces. (The reference implementation samples noise in evaluation too, so its
validation scores are of a randomly perturbed network; ours are of the network
that phase 2 would continue from.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from . import compiled
from .activations import Activation, clamp_limits, resolve_pool
from .backend import Backend, SeededRNG, array_module, backend_of, get_backend, to_host
from .fixed import FixedMixedActivation
from .kernels import activation_backward_into, activation_forward_into, has_kernel
from .workspace import Workspace, get_buffer

__all__ = [
    "NOISE_MODES",
    "MixtureCache",
    "SMARTMIXED_PATHS",
    "SmartMixedCache",
    "gumbel_softmax_weights",
    "softmax_backward",
    "candidate_outputs",
    "mixture_forward",
    "mixture_backward",
    "mixture_forward_fused",
    "mixture_backward_fused",
    "straight_through_surrogate",
    "init_selection_logits",
    "SmartMixedActivation",
]

NOISE_MODES = ("shared", "per_sample", "none")


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


#: The forward paths of a phase-1 layer, as :attr:`SmartMixedCache.path` names them.
SMARTMIXED_PATHS = ("reference", "fused", "frozen")


@dataclass
class SmartMixedCache:
    """What :meth:`SmartMixedActivation.backward` needs: which forward ran, and its cache.

    Attributes:
        path: ``"reference"`` (training, :func:`mixture_forward`), ``"fused"``
            (training, :func:`mixture_forward_fused`) or ``"frozen"`` (evaluation:
            each neuron's argmax choice through the phase-2 layer ``frozen``).
        mixture: the :class:`MixtureCache` of a training pass; None for ``"frozen"``.
        frozen: the phase-2 layer that ran an evaluation pass; else None.
        fixed: that layer's :class:`~smartmixed_np.fixed.FixedCache`; else None.
    """

    path: str
    mixture: MixtureCache | None = None
    frozen: FixedMixedActivation | None = None
    fixed: Any = None

    def __post_init__(self) -> None:
        if self.path not in SMARTMIXED_PATHS:
            raise ValueError(f"SmartMixedCache.path must be one of {SMARTMIXED_PATHS}, got {self.path!r}")


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


def _candidate_derivatives(z: Any, candidates: Any, pool: Sequence[Activation], clamp: float | None) -> Any:
    """$f'_k(z)$, zero where the clamp is active, stacked: (K, B, N)."""
    xp = array_module(z)
    stack = xp.empty_like(candidates)
    for k, activation in enumerate(pool):
        stack[k] = activation.derivative(z, candidates[k])
    if clamp is not None:
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


def mixture_backward(dout: Any, cache: MixtureCache, pool: Sequence[Activation]) -> tuple[Any, Any]:
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

    Returns:
        ``dz`` (B, N) and ``dlogits`` (N, K).
    """
    xp = array_module(dout)
    derivatives = _candidate_derivatives(cache.z, cache.candidates, pool, cache.clamp)
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


def _selected_rows(xp: Any, selected: Any, width: int) -> Any:
    """Row ``selected[n] * N + n`` of a (K * N, B) stack: neuron n's chosen candidate."""
    return selected * width + xp.arange(width)


def mixture_forward_fused(
    z: Any,
    logits: Any,
    noise: Any,
    pool: Sequence[Activation],
    *,
    tau: float,
    clamp: float | None = 10.0,
    workspace: Workspace | None = None,
) -> tuple[Any, MixtureCache]:
    """:func:`mixture_forward` with ``hard=True`` and (N, K) or no noise, fused.

    The candidates are computed feature-major into one (K, N, B) stack by the kernels
    of :mod:`smartmixed_np.kernels` (each skipping the clamp sides its range makes
    idle), and the output is one row gather from the stack. The values are bitwise
    those of the reference.

    Args:
        z: (B, N); logits: (N, K); noise: (N, K) or None; pool: K built-ins.
        workspace: where the stack and the output live (overwritten by the next
            call with the same workspace); fresh arrays if None.

    Returns:
        ``out`` (B, N) and the cache (``candidates`` is a (K, B, N) view of the stack).
    """
    xp = array_module(z)
    batch, width = z.shape
    weights = gumbel_softmax_weights(logits, noise, tau)
    selected = xp.argmax(weights, axis=-1)
    stack = get_buffer(workspace, xp, "candidates", (len(pool), width, batch), z.dtype)
    zT = z.T
    for k, activation in enumerate(pool):
        lo, hi = clamp_limits(activation, clamp)
        activation_forward_into(activation, zT, lo, hi, stack[k])
    outT = get_buffer(workspace, xp, "out", (width, batch), z.dtype)
    xp.take(stack.reshape(len(pool) * width, batch), _selected_rows(xp, selected, width), axis=0, out=outT)
    return outT.T, MixtureCache(z, stack.transpose(0, 2, 1), weights, selected, noise, tau, clamp)


def mixture_backward_fused(
    dout: Any, cache: MixtureCache, pool: Sequence[Activation], workspace: Workspace | None = None
) -> tuple[Any, Any]:
    """:func:`mixture_backward` for a cache of :func:`mixture_forward_fused`.

    $dy_{nk} = \\sum_b dout_{bn} a_{kbn}$ is one ``einsum`` over the stack.
    $dz = dout \\cdot D_{s_n}$ takes each candidate's fused ``dout * f'_k`` and
    gathers the selected rows, or, on host arrays with Numba, computes the selected
    candidate's derivative alone (:func:`smartmixed_np.compiled.selected_backward`,
    the same numbers).

    Returns:
        ``dz`` (B, N) (in the workspace if given) and ``dlogits`` (N, K).
    """
    xp = array_module(dout)
    batch, width = dout.shape
    stack = cache.candidates.transpose(0, 2, 1)  # (K, N, B)
    doutT = dout.T
    dy = xp.einsum("knb,nb->nk", stack, doutT)  # (N, K); a third of multiply-then-sum's time here
    dzT = get_buffer(workspace, xp, "dz", (width, batch), dout.dtype)
    zT = cache.z.T
    table = compiled.candidate_table(tuple(pool), cache.clamp, dout.dtype) if compiled.applies(doutT, stack, dzT, zT) else None
    if table is not None:  # only the selected candidate's derivative, in one compiled pass
        compiled.selected_backward(doutT, stack, cache.selected, table, dzT, zT=zT)
    else:
        work = get_buffer(workspace, xp, "work", tuple(stack.shape), dout.dtype)
        for k, activation in enumerate(pool):
            lo, hi = clamp_limits(activation, cache.clamp)
            activation_backward_into(activation, doutT, zT, stack[k], lo, hi, work[k])
        xp.take(work.reshape(len(pool) * width, batch), _selected_rows(xp, cache.selected, width), axis=0, out=dzT)
    dlogits = softmax_backward(dy, cache.weights) / cache.tau
    return dzT.T, dlogits


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


class SmartMixedActivation:
    """Phase-1 layer: selection logits over a pool, hard Gumbel-softmax per neuron.

    Args:
        logits: (N, K) initial selection logits (see :func:`init_selection_logits`).
        pool: candidate names or Activations (default: the six, reference order).
        tau: temperature > 0 (default 0.3, the value the reference code passes).
        hard: straight-through hard selection (default) or the soft mixture.
        clamp: candidate output clamp (default 10.0, None to disable).
        noise_mode: ``"shared"`` (one (N, K) draw per forward), ``"per_sample"``,
            or ``"none"`` (deterministic selection).
        rng: the layer's own noise stream. Required unless ``noise_mode="none"``.

    State: the layer holds ``logits`` and their gradient ``dlogits`` (written by
    :meth:`backward`); ``fused``, whether every candidate has a fused kernel (then a
    hard pass with shared or no noise takes the fused pair); and ``_frozen_layer``,
    the phase-2 layer of the current argmax choices that evaluation passes run
    through (None until the first one; rebuilt when a choice changes). A pass's
    cache, a :class:`SmartMixedCache`, is returned by :meth:`forward`, not stored.
    """

    def __init__(
        self,
        logits: Any,
        pool: Any = None,
        *,
        tau: float = 0.3,
        hard: bool = True,
        clamp: float | None = 10.0,
        noise_mode: str = "shared",
        rng: SeededRNG | None = None,
    ) -> None:
        self.pool = resolve_pool(pool)
        if logits.ndim != 2 or logits.shape[1] != len(self.pool):
            raise ValueError(f"selection logits must be (N, {len(self.pool)}), got {tuple(logits.shape)}")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if noise_mode != "none" and rng is None:
            raise ValueError("a SmartMixedActivation with Gumbel noise needs an rng (a SeededRNG)")
        if clamp is not None and not clamp > 0:
            raise ValueError(f"clamp must be positive or None, got {clamp}")
        self.logits = logits
        self.dlogits = array_module(logits).zeros_like(logits)
        self.tau = tau
        self.hard = bool(hard)
        self.clamp = None if clamp is None else float(clamp)
        self.noise_mode = noise_mode
        self.rng = rng
        self.fused = all(has_kernel(activation) for activation in self.pool)
        self._frozen_layer: FixedMixedActivation | None = None

    @property
    def tau(self) -> float:
        return self._tau

    @tau.setter
    def tau(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not value > 0 or not np.isfinite(value):
            raise ValueError(f"tau must be a positive finite number, got {value!r}")
        self._tau = float(value)

    @property
    def size(self) -> int:
        return int(self.logits.shape[0])

    def draw_noise(self, batch_size: int) -> Any:
        """Gumbel noise for one forward: (N, K), (B, N, K), or None."""
        if self.noise_mode == "none":
            return None
        shape = tuple(self.logits.shape) if self.noise_mode == "shared" else (batch_size,) + tuple(self.logits.shape)
        backend = _backend_of_array(self.logits)
        return self.rng.gumbel(shape, self.logits.dtype, backend)

    def forward(self, z: Any, train: bool, noise: Any = None, workspace: Workspace | None = None) -> tuple[Any, SmartMixedCache]:
        """(B, N) -> (B, N), and the cache (its ``path`` says which forward ran).

        Training draws fresh noise unless ``noise`` is given (replay). Evaluation
        applies each neuron's argmax choice, without noise, through the phase-2
        code path (so evaluation and the frozen network agree exactly). With a
        ``workspace``, the output and the cache live in its buffers and are
        overwritten by the next forward given the same workspace.
        """
        if not train:
            frozen = self._frozen()
            out, fixed_cache = frozen.forward(z, workspace=workspace)
            return out, SmartMixedCache("frozen", frozen=frozen, fixed=fixed_cache)
        if noise is None:
            noise = self.draw_noise(z.shape[0])
        if self.fused and self.hard and (noise is None or noise.ndim == 2):
            out, cache = mixture_forward_fused(z, self.logits, noise, self.pool, tau=self.tau, clamp=self.clamp, workspace=workspace)
            return out, SmartMixedCache("fused", mixture=cache)
        out, cache = mixture_forward(z, self.logits, noise, self.pool, tau=self.tau, hard=self.hard, clamp=self.clamp)
        return out, SmartMixedCache("reference", mixture=cache)

    def backward(self, dout: Any, cache: SmartMixedCache, workspace: Workspace | None = None) -> Any:
        """Write ``dlogits`` (N, K) in place; return ``dz`` (B, N), by the backward of ``cache.path``."""
        if cache.path == "frozen":  # evaluation forward: logits get no gradient
            self.dlogits[...] = 0
            return cache.frozen.backward(dout, cache.fixed, workspace=workspace)
        if cache.path == "fused":
            dz, dlogits = mixture_backward_fused(dout, cache.mixture, self.pool, workspace=workspace)
        else:
            dz, dlogits = mixture_backward(dout, cache.mixture, self.pool)
        self.dlogits[...] = dlogits
        return dz

    def _frozen(self) -> FixedMixedActivation:
        """The phase-2 layer of the current choices (rebuilt only when a choice changed,
        so that evaluating batch after batch builds its groups once)."""
        choices = self.choices()
        kept = self._frozen_layer
        backend = _backend_of_array(self.logits)
        if kept is None or not np.array_equal(kept.choices, choices) or kept.clamp != self.clamp or kept.backend is not backend:
            kept = self._frozen_layer = FixedMixedActivation(choices, self.pool, contiguous=False, clamp=self.clamp, backend=backend)
        return kept

    def choices(self) -> np.ndarray:
        """(N,) host ints: each neuron's argmax choice (what freezing keeps)."""
        return to_host(array_module(self.logits).argmax(self.logits, axis=1)).astype(np.int64)


def _backend_of_array(array: Any) -> Backend:
    backend = backend_of(array)
    return backend if backend is not None else get_backend("cpu")
