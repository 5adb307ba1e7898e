"""The layers: thin objects that hold a layer's state and hand its passes to an engine.

* :class:`SmartMixedActivation`, phase 1: selection logits over a pool per neuron,
  a hard Gumbel-softmax with the straight-through gradient (the mathematics and its
  reference code: :mod:`smartmixed_np.core.phase1`), or another estimator of the
  logits' gradient (:mod:`smartmixed_np.core.estimators`).
* :class:`FixedMixedActivation`, phase 2: a frozen activation per neuron, applied
  group by group (:mod:`smartmixed_np.core.phase2`).

Each layer picks its engine once, in ``__init__`` (:mod:`smartmixed_np.nn.engines`):
the reference code itself, or a fast path that computes the same numbers. The
layers' methods contain no other choice of path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import Backend, SeededRNG, array_module, backend_of, get_backend, to_host
from ..core.activations import Activation, resolve_pool
from ..core.estimators import DEFAULT_SAMPLES
from ..core.phase1 import NOISE_MODES, MixtureCache, mixture_forward
from ..core.phase2 import make_groups
from ..fast.workspace import Workspace
from .engines import phase1_engine, phase2_engine

__all__ = ["FixedMixedActivation", "SmartMixedActivation", "SmartMixedCache"]


class FixedMixedActivation:
    """Phase-2 layer: a frozen activation per neuron.

    Args:
        choices: (N,) ints indexing ``pool``, in the layer's *current* neuron order.
        pool: activation names or :class:`Activation` objects (default: the six).
        contiguous: address groups by slices; ``choices`` must then be sorted.
        clamp: symmetric output clamp (``None`` for none).
        order: (N,) the original index of each current neuron (identity if None):
            lets :meth:`original_choices` report choices in the original order.
        backend: where the layer's index arrays live.
        clamp_grad: the clamp's gradient at exactly its edge: ``"open"`` (ours, the
            default: zero there) or ``"closed"`` (PyTorch's clamp, the authors': passed
            there; the reference engine runs it).

    State (all set here; a pass records nothing on the layer, its cache is returned):
        groups: the :class:`~smartmixed_np.core.phase2.Group` per activation, addressing
            the current neuron order.
        engine: what runs the passes, chosen here by
            :func:`~smartmixed_np.nn.engines.phase2_engine`: the reference, the fused
            kernels, or the compiled loops (its ``name`` says which).
    """

    def __init__(
        self,
        choices: Any,
        pool: Any = None,
        *,
        contiguous: bool = False,
        clamp: float | None = None,
        order: Any = None,
        backend: Backend | str = "cpu",
        clamp_grad: str = "open",
    ) -> None:
        self.pool = resolve_pool(pool)
        self.choices = np.asarray(to_host(choices), dtype=np.int64).copy()
        n = self.choices.shape[0] if self.choices.ndim == 1 else -1
        self.order = np.arange(n, dtype=np.int64) if order is None else np.asarray(to_host(order), dtype=np.int64).copy()
        if self.order.shape != self.choices.shape or not np.array_equal(np.sort(self.order), np.arange(len(self.order))):
            raise ValueError(f"order must be a permutation of range({n}), got shape {self.order.shape}")
        if clamp is not None and not clamp > 0:
            raise ValueError(f"clamp must be positive or None, got {clamp}")
        self.contiguous = bool(contiguous)
        self.clamp = None if clamp is None else float(clamp)
        self.backend = get_backend(backend)
        self.groups = make_groups(self.choices, self.pool, self.backend, contiguous=self.contiguous, clamp=self.clamp)
        self.clamp_grad = clamp_grad
        self.engine = phase2_engine(self.choices, self.pool, self.groups, self.backend, self.clamp, clamp_grad)

    @classmethod
    def uniform(cls, activation: str | Activation, size: int, *, backend: Backend | str = "cpu") -> "FixedMixedActivation":
        """Every one of ``size`` neurons uses ``activation``; no clamp (a plain network)."""
        return cls(np.zeros(size, dtype=np.int64), [activation], contiguous=True, clamp=None, backend=backend)

    @property
    def size(self) -> int:
        return int(self.choices.shape[0])

    def to(self, backend: Backend | str) -> "FixedMixedActivation":
        """The same layer with its index arrays on ``backend``."""
        return FixedMixedActivation(
            self.choices, self.pool, contiguous=self.contiguous, clamp=self.clamp, order=self.order, backend=backend,
            clamp_grad=self.clamp_grad,
        )

    def forward(self, z: Any, workspace: Workspace | None = None) -> tuple[Any, Any]:
        """(B, N) -> (B, N), and the cache for :meth:`backward`, by the layer's engine.

        With a ``workspace``, the output and the cache live in its buffers and are
        overwritten by the next forward given the same workspace; without one, they
        are fresh arrays.
        """
        return self.engine.forward(z, workspace)

    def backward(self, da: Any, cache: Any, workspace: Workspace | None = None) -> Any:
        """(B, N) -> (B, N) for the cache of this layer's :meth:`forward`; with a
        ``workspace``, ``dz`` lives in its buffers."""
        return self.engine.backward(da, cache, workspace)

    def original_choices(self) -> np.ndarray:
        """(N,) choice indices in the neurons' original order."""
        original = np.empty_like(self.choices)
        original[self.order] = self.choices
        return original

    def original_choice_names(self) -> list[str]:
        """Activation name per neuron, in the original order."""
        return [self.pool[k].name for k in self.original_choices()]


@dataclass
class SmartMixedCache:
    """What :meth:`SmartMixedActivation.backward` needs: a training pass's cache, or an evaluation pass's.

    Attributes:
        mixture: the :class:`~smartmixed_np.core.phase1.MixtureCache` of a training
            pass (made by the layer's engine); None for an evaluation pass.
        frozen: the phase-2 layer that ran an evaluation pass; None for a training pass.
        fixed: that layer's cache; else None.
    """

    mixture: MixtureCache | None = None
    frozen: "FixedMixedActivation | None" = None
    fixed: Any = None

    def __post_init__(self) -> None:
        if (self.mixture is None) == (self.frozen is None):
            raise ValueError("a SmartMixedCache holds either a training pass's mixture or an evaluation pass's frozen layer")


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
        estimator: how the backward estimates the logits' gradient: ``"st"``
            (straight-through, the default), ``"reinmax"``, ``"gumbel_rao"`` or ``"score"``
            (:mod:`smartmixed_np.core.estimators`; all but ``"st"`` need ``hard=True``
            and Gumbel noise).
        estimator_samples: Gumbel-Rao's number M of conditional draws (default 10),
            drawn from ``rng``.
        clamp_grad: the clamp's gradient at exactly $\\pm c$: ``"open"`` (ours, the
            default: zero there) or ``"closed"`` (PyTorch's clamp, the authors': passed
            there; the reference engine runs it, straight-through only).

    State (all set here): ``logits`` and their gradient ``dlogits`` (written by
    :meth:`backward`); ``engine``, what runs training passes, chosen here by
    :func:`~smartmixed_np.nn.engines.phase1_engine` from the mode and the estimator
    (its ``name`` says which; the score function's also keeps its baseline); and
    ``_frozen_layer``, the phase-2 layer of the current argmax choices that
    evaluation passes run through (None until the first one; rebuilt when a choice
    changes). A pass's cache, a :class:`SmartMixedCache`, is returned by
    :meth:`forward`, not stored.
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
        estimator: str = "st",
        estimator_samples: int = DEFAULT_SAMPLES,
        clamp_grad: str = "open",
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
        self.estimator = estimator
        self.estimator_samples = estimator_samples
        self.clamp_grad = clamp_grad
        self.engine = phase1_engine(self.pool, self.hard, noise_mode, _backend_of_array(logits),
                                    estimator=estimator, samples=estimator_samples, rng=rng,
                                    clamp_grad=clamp_grad, clamp=self.clamp)
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

    @property
    def needs_loss(self) -> bool:
        """Whether :meth:`backward` needs the pass's loss (the score-function estimator)."""
        return self.engine.needs_loss

    def estimator_state(self) -> dict[str, Any]:
        """What the estimator learns across steps (the score function's baseline), JSON-able; else {}."""
        return self.engine.state_dict()

    def set_estimator_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`estimator_state`'s output."""
        self.engine.load_state_dict(state)

    def draw_noise(self, batch_size: int, rng: SeededRNG | None = None) -> Any:
        """Gumbel noise for one forward: (N, K), (B, N, K), or None; from the layer's
        stream, or from ``rng`` when given (a noisy evaluation's own stream)."""
        if self.noise_mode == "none":
            return None
        shape = tuple(self.logits.shape) if self.noise_mode == "shared" else (batch_size,) + tuple(self.logits.shape)
        backend = _backend_of_array(self.logits)
        return (self.rng if rng is None else rng).gumbel(shape, self.logits.dtype, backend)

    def forward(self, z: Any, train: bool, noise: Any = None, workspace: Workspace | None = None) -> tuple[Any, SmartMixedCache]:
        """(B, N) -> (B, N), and the cache for :meth:`backward`.

        Training draws fresh noise unless ``noise`` is given (replay). Evaluation
        applies each neuron's argmax choice, without noise, through the phase-2
        code path (so evaluation and the frozen network agree exactly); an evaluation
        given ``noise`` (the authors' noisy evaluation) selects by it as a hard
        training pass would, by the reference forward, which draws nothing from the
        layer's streams (its cache is a training pass's). With a
        ``workspace``, the output and the cache live in its buffers and are
        overwritten by the next forward given the same workspace.
        """
        if not train and noise is not None:
            out, cache = mixture_forward(z, self.logits, noise, self.pool, tau=self.tau, hard=self.hard, clamp=self.clamp)
            return out, SmartMixedCache(mixture=cache)
        if not train:
            frozen = self._frozen()
            out, fixed_cache = frozen.forward(z, workspace=workspace)
            return out, SmartMixedCache(frozen=frozen, fixed=fixed_cache)
        if noise is None:
            noise = self.draw_noise(z.shape[0])
        out, cache = self.engine.forward(z, self.logits, noise, tau=self.tau, clamp=self.clamp, workspace=workspace)
        return out, SmartMixedCache(mixture=cache)

    def backward(self, dout: Any, cache: SmartMixedCache, workspace: Workspace | None = None, *, loss: Any = None) -> Any:
        """Write ``dlogits`` (N, K) in place; return ``dz`` (B, N), for the cache of this layer's :meth:`forward`.

        ``loss``: the pass's loss (0-d array or number), which the score-function
        estimator needs (:attr:`needs_loss`) and the others ignore.
        """
        if cache.frozen is not None:  # an evaluation pass: the logits get no gradient
            self.dlogits[...] = 0
            return cache.frozen.backward(dout, cache.fixed, workspace=workspace)
        dz, dlogits = self.engine.backward(dout, cache.mixture, workspace, loss=loss)
        self.dlogits[...] = dlogits
        return dz

    def _frozen(self) -> FixedMixedActivation:
        """The phase-2 layer of the current choices (rebuilt only when a choice changed,
        so that evaluating batch after batch builds its groups once)."""
        choices = self.choices()
        kept = self._frozen_layer
        backend = _backend_of_array(self.logits)
        if kept is None or not np.array_equal(kept.choices, choices) or kept.clamp != self.clamp or kept.backend is not backend:
            kept = self._frozen_layer = FixedMixedActivation(choices, self.pool, contiguous=False, clamp=self.clamp, backend=backend,
                                                             clamp_grad=self.clamp_grad)
        return kept

    def choices(self) -> np.ndarray:
        """(N,) host ints: each neuron's argmax choice (what freezing keeps)."""
        return to_host(array_module(self.logits).argmax(self.logits, axis=1)).astype(np.int64)


def _backend_of_array(array: Any) -> Backend:
    backend = backend_of(array)
    return backend if backend is not None else get_backend("cpu")
