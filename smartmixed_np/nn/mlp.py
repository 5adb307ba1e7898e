"""The MLP container: Linear layers with an activation layer between each pair.

``MLP([784, 512, 256, 10], "smartmixed")`` builds

    x -> Linear(784, 512) -> act0 -> Linear(512, 256) -> act1 -> Linear(256, 10) -> logits

where each ``act`` is a phase-1 :class:`~smartmixed_np.nn.layers.SmartMixedActivation`
(``"smartmixed"``) or a :class:`~smartmixed_np.nn.layers.FixedMixedActivation` (a fixed
network: one candidate name for every layer, one name per hidden layer, or the
per-neuron choices of a frozen phase-1 network, see :meth:`MLP.freeze`).

Parameters and gradients are dicts under stable dotted names:
``layers.{i}.weight`` (N, D), ``layers.{i}.bias`` (N,) for the i-th Linear, and
``activations.{i}.logits`` (N, K) for a phase-1 layer. All parameters are views of one
flat buffer, laid end to end in that order, and all gradients views of another
(:meth:`MLP._pack`, :func:`smartmixed_np.fast.flat.pack`), so that Adam updates them in
one pass; nothing rebinds them, every write is in place.

State: :meth:`MLP.forward` records a *tape* (a :class:`Tape`: the caches of that
pass, and the noise it used) and :meth:`MLP.backward` consumes it; a second
``backward`` without a new ``forward`` is an error, so a stale cache can never be
used silently. :attr:`MLP.tape` shows it; :meth:`MLP.clear_tape` drops it (after
evaluation passes that will not be backpropagated, so that a ``backward`` then
fails instead of differentiating an evaluation pass).

Buffers: the hidden pre-activations, activations and their gradients live in a
:class:`~smartmixed_np.fast.workspace.Workspace` per batch size, reused by every pass
(a few recently used batch sizes are kept). They are stored feature-major, (N, B)
in memory, so that an activation group is a contiguous block. Aliasing rule: only
the tape of the *last* forward is valid (which the tape already enforces); what
:meth:`MLP.forward` returns (the logits) and what :meth:`MLP.backward` returns (the
input gradient) are fresh arrays that no later pass overwrites.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..backend import Backend, SeededRNG, array_module, backend_of, get_backend, to_host
from ..core.activations import resolve_pool
from ..core.estimators import DEFAULT_SAMPLES, check_estimator
from ..core.linear import Linear, init_linear
from ..core.phase1 import CLAMP_GRADS, NOISE_MODES, init_selection_logits
from ..core.phase2 import contiguous_order
from ..fast.flat import pack
from ..fast.workspace import Workspace
from .layers import FixedMixedActivation, SmartMixedActivation

__all__ = ["MLP", "Tape"]

_DTYPES = {"float32": np.float32, "float64": np.float64}
#: How model.json names each phase (the file format; in code, read MLP.phase).
_KINDS = {1: "smartmixed", 2: "fixed"}
_WORKSPACES_KEPT = 4  # batch sizes whose buffers are kept (training, last partial batch, evaluation, ...)


@dataclass
class Tape:
    """The record of one forward pass, consumed by :meth:`MLP.backward`.

    Attributes:
        train: whether the pass was a training pass.
        caches: per layer pair, (linear cache, activation cache): a
            :class:`~smartmixed_np.core.linear.LinearCache` and the activation layer's
            :class:`~smartmixed_np.nn.layers.SmartMixedCache` (phase 1) or
            :class:`~smartmixed_np.core.phase2.FixedCache` (phase 2); the output layer's
            activation cache is None.
        noise: Gumbel noise used by each phase-1 layer, by hidden-layer index.
    """

    train: bool
    caches: list = field(default_factory=list)
    noise: dict = field(default_factory=dict)


def _check_sizes(sizes: Any) -> list[int]:
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__len__"):
        raise TypeError(f"sizes must be a sequence of layer widths, e.g. [784, 512, 10], got {sizes!r}")
    if len(sizes) < 2:
        raise ValueError(f"sizes needs at least an input and an output width, got {list(sizes)}")
    checked = []
    for size in sizes:
        if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer)):
            raise TypeError(f"layer sizes must be integers, got {size!r} in {list(sizes)}")
        if size < 1:
            raise ValueError(f"layer sizes must be positive, got {size} in {list(sizes)}")
        checked.append(int(size))
    return checked


def _check_dtype(dtype: Any) -> np.dtype:
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in _DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return np.dtype(_DTYPES[name])


class MLP:
    """A feed-forward network with SmartMixed (phase 1) or fixed (phase 2) activations.

    Args:
        sizes: layer widths ``[D_in, H_1, ..., H_L, C]``.
        activation: ``"smartmixed"``; a candidate name for every hidden layer
            (``"relu"``); or a list of ``L`` names, one per hidden layer.
        pool: phase-1 candidates (default: relu, sigmoid, tanh, leaky_relu, elu, selu).
        tau: Gumbel-softmax temperature (default 0.3).
        hard: hard selection with straight-through gradient (default) or soft mixture.
        clamp: phase-1 candidate clamp (default 10.0; None disables it).
        noise_mode: ``"shared"`` (default), ``"per_sample"`` or ``"none"``.
        device: ``"cpu"`` (default) or ``"gpu"``, or a Backend.
        dtype: ``"float32"`` (default) or ``"float64"`` (for gradient checks).
        seed: seeds the initialisation and every layer's noise stream.
        estimator: the phase-1 layers' estimator of the logits' gradient: ``"st"``
            (straight-through, the default), ``"reinmax"``, ``"gumbel_rao"`` or ``"score"``
            (:mod:`smartmixed_np.core.estimators`; all but ``"st"`` need ``hard=True`` and
            Gumbel noise). The score function needs the loss: ``backward(dlogits, loss=loss)``.
        estimator_samples: Gumbel-Rao's number M of conditional draws (default 10).
        clamp_grad: the clamp's gradient at exactly +-c, in phase 1 and in the phase-2
            layers that :meth:`freeze` makes: ``"open"`` (ours, the default: zero there)
            or ``"closed"`` (PyTorch's clamp, the authors': passed there; run by the
            reference engines, straight-through only).

    State besides the layers (all set here): ``phase``, 1 for a phase-1 SmartMixed
    network, 2 for a fixed (frozen or uniform) one; ``_tape``, the :class:`Tape` of the last
    forward pass until :meth:`backward` consumes it (else None; read it as
    :attr:`tape`); ``_workspace_cache``, one :class:`~smartmixed_np.fast.workspace.Workspace`
    per layer for each of the last few batch sizes, {(batch, backend, dtype): list},
    least recently used first (see :meth:`_workspaces`).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str | Sequence[str] = "smartmixed",
        *,
        pool: Any = None,
        tau: float = 0.3,
        hard: bool = True,
        clamp: float | None = 10.0,
        noise_mode: str = "shared",
        device: str | Backend = "cpu",
        dtype: Any = "float32",
        seed: int = 0,
        estimator: str = "st",
        estimator_samples: int = DEFAULT_SAMPLES,
        clamp_grad: str = "open",
    ) -> None:
        self.sizes = _check_sizes(sizes)
        self.dtype = _check_dtype(dtype)
        self.backend = get_backend(device)
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        check_estimator(estimator, samples=estimator_samples)  # the mode is checked by the phase-1 layers
        if clamp_grad not in CLAMP_GRADS:
            raise ValueError(f"clamp_grad must be one of {', '.join(CLAMP_GRADS)}, got {clamp_grad!r}")
        self.seed = int(seed)
        self.pool = resolve_pool(pool)
        hidden = self.sizes[1:-1]
        streams = np.random.SeedSequence(self.seed).spawn(1 + len(hidden))
        init_rng = SeededRNG(streams[0])

        self.linears = [
            Linear(*init_linear(d_in, d_out, init_rng, self.dtype, self.backend))
            for d_in, d_out in zip(self.sizes[:-1], self.sizes[1:])
        ]
        if isinstance(activation, str) and activation.lower() == "smartmixed":
            self.phase = 1
            self.activations: list = [
                SmartMixedActivation(
                    init_selection_logits(width, len(self.pool), init_rng, self.dtype, self.backend),
                    self.pool,
                    tau=tau,
                    hard=hard,
                    clamp=clamp,
                    noise_mode=noise_mode,
                    rng=SeededRNG(streams[1 + i]),
                    estimator=estimator,
                    estimator_samples=estimator_samples,
                    clamp_grad=clamp_grad,
                )
                for i, width in enumerate(hidden)
            ]
        else:
            names = [activation] * len(hidden) if isinstance(activation, str) else list(activation)
            if len(names) != len(hidden):
                raise ValueError(f"activation lists {len(names)} names for {len(hidden)} hidden layers")
            self.phase = 2
            self.activations = [FixedMixedActivation.uniform(name, width, backend=self.backend) for name, width in zip(names, hidden)]
        self.options = {"tau": tau, "hard": bool(hard), "clamp": clamp, "noise_mode": noise_mode,
                        "estimator": estimator, "estimator_samples": int(estimator_samples), "clamp_grad": clamp_grad}
        self._tape: Tape | None = None
        self._workspace_cache: dict[tuple, list[Workspace]] = {}
        self._pack()

    # ------------------------------------------------------------------ structure
    @property
    def num_hidden(self) -> int:
        return len(self.sizes) - 2

    @property
    def kind(self) -> str:
        """Deprecated: ``"smartmixed"`` or ``"fixed"``; read :attr:`phase` (1 or 2) instead."""
        warnings.warn("MLP.kind is deprecated: read MLP.phase (1 or 2)", DeprecationWarning, stacklevel=2)
        return _KINDS[self.phase]

    def _slots(self, weight: str, bias: str, logits: str):
        """``(name, layer, attribute)`` of each parameter-like array, in :meth:`parameters`' order:
        every Linear's ``weight`` and ``bias`` attributes, then each phase-1 layer's ``logits``."""
        for i, linear in enumerate(self.linears):
            yield f"layers.{i}.weight", linear, weight
            yield f"layers.{i}.bias", linear, bias
        for i, act in enumerate(self.activations):
            if isinstance(act, SmartMixedActivation):
                yield f"activations.{i}.logits", act, logits

    def _named(self, weight: str, bias: str, logits: str) -> dict[str, Any]:
        return {name: getattr(layer, attribute) for name, layer, attribute in self._slots(weight, bias, logits)}

    def _pack(self) -> None:
        """Lay the parameters end to end in one flat buffer and the gradients in another.

        The layers' ``W``, ``b``, ``logits`` become views of the first buffer and ``dW``,
        ``db``, ``dlogits`` views of the second (:func:`smartmixed_np.fast.flat.pack`, in
        :meth:`parameters`' order; the values are copied exactly), so that an optimizer can
        update everything in one pass (:func:`smartmixed_np.fast.flat.flat_of` finds the
        buffers). Everything that writes those arrays writes in place (backward passes,
        :meth:`load_state_dict`, optimizers); whatever rebuilds layers (:meth:`freeze`,
        :meth:`to`) calls this again. A layer swapped in by hand simply leaves the model
        unpacked: the optimizers then take their per-parameter path.
        """
        for attributes in (("W", "b", "logits"), ("dW", "db", "dlogits")):
            _, views = pack(self._named(*attributes))
            for name, layer, attribute in self._slots(*attributes):
                setattr(layer, attribute, views[name])

    def parameters(self) -> dict[str, Any]:
        """Trainable arrays by name (live references, updated in place by optimizers)."""
        return self._named("W", "b", "logits")

    def gradients(self) -> dict[str, Any]:
        """Gradient arrays by the same names as :meth:`parameters` (overwritten by backward)."""
        return self._named("dW", "db", "dlogits")

    def num_parameters(self, include_logits: bool = True) -> int:
        """Number of scalar parameters."""
        return sum(int(p.size) for name, p in self.parameters().items() if include_logits or not name.endswith("logits"))

    # ------------------------------------------------------------------ passes
    def check_input(self, x: Any) -> Any:
        """``x`` as the network's dtype, after checking that it is a (B, D_in) floating
        array on the model's device (TypeError or ValueError, naming the problem)."""
        if backend_of(x) is None:
            raise TypeError(f"input must be an array on the model's device ({self.backend.device}), got {type(x).__name__}")
        if backend_of(x) is not self.backend:
            raise TypeError(
                f"input lives on {backend_of(x).device} ({backend_of(x).name}) but the model on "
                f"{self.backend.device} ({self.backend.name}); move it with model.backend.asarray(x)"
            )
        if x.ndim != 2:
            raise ValueError(f"input must be 2-D (batch, {self.sizes[0]}), got shape {tuple(x.shape)}")
        if x.shape[1] != self.sizes[0]:
            raise ValueError(f"input has {x.shape[1]} features but the network expects {self.sizes[0]}")
        if x.dtype.kind != "f":
            raise TypeError(f"input must be floating point, got dtype {x.dtype}")
        return x.astype(self.dtype, copy=False)

    def forward(self, x: Any, train: bool = False, noise: dict[int, Any] | None = None) -> Any:
        """Logits for a batch; records the tape for :meth:`backward`.

        Args:
            x: (B, D_in) inputs on the model's device.
            train: phase-1 layers sample Gumbel noise (True) or use their argmax (False).
            noise: replay: {hidden layer index: noise} as returned by
                :attr:`last_noise`; layers not named draw fresh noise. In an evaluation
                pass (``train=False``), the phase-1 layers it names select by that
                noise (a noisy evaluation, the authors'), the others by their argmax.

        Returns:
            (B, C) logits.
        """
        x = self.check_input(x)
        tape = Tape(train=bool(train))
        self._tape = None  # the buffers of the previous tape are about to be overwritten
        workspaces = self._workspaces(x.shape[0])
        h = x
        for i, (linear, act) in enumerate(zip(self.linears, self.activations)):
            ws = workspaces[i]
            z, linear_cache = linear.forward(h, out=ws.feature_major("z", x.shape[0], linear.out_features, self.dtype))
            if isinstance(act, SmartMixedActivation):
                layer_noise = noise.get(i) if noise else None
                if train and layer_noise is None:
                    layer_noise = act.draw_noise(x.shape[0])
                if layer_noise is not None:
                    tape.noise[i] = layer_noise
                h, act_cache = act.forward(z, train, noise=layer_noise, workspace=ws)
            else:
                h, act_cache = act.forward(z, workspace=ws)
            tape.caches.append((linear_cache, act_cache))
        logits, linear_cache = self.linears[-1].forward(h)
        tape.caches.append((linear_cache, None))
        self._tape = tape
        return logits

    __call__ = forward

    @property
    def tape(self) -> Tape | None:
        """The :class:`Tape` of the last forward pass, until :meth:`backward` consumes it; else None."""
        return self._tape

    def clear_tape(self) -> None:
        """Forget the last forward pass: a ``backward`` now raises until the next ``forward``."""
        self._tape = None

    @property
    def last_noise(self) -> dict[int, Any]:
        """The Gumbel noise of the last forward pass, by hidden-layer index (empty if none)."""
        return dict(self._tape.noise) if self._tape is not None else {}

    def backward(self, dlogits: Any, need_input_grad: bool = False, *, loss: Any = None) -> Any:
        """Backpropagate ``dlogits`` (B, C) through the last forward pass.

        Writes every gradient of :meth:`gradients` in place. Returns ``dx`` (B, D_in)
        if ``need_input_grad``, else None. ``loss``, the pass's loss (0-d array), goes to
        the phase-1 layers whose estimator needs it (the score function's,
        :attr:`needs_loss`); :func:`~smartmixed_np.nn.step.train_step` passes it.

        Raises:
            RuntimeError: no forward pass to differentiate (or it was already used).
            ValueError: ``dlogits`` has the wrong shape.
        """
        tape = self._tape
        if tape is None:
            raise RuntimeError("backward() needs a forward() first (each forward can be backpropagated once)")
        batch = tape.caches[0][0].x.shape[0]
        if tuple(dlogits.shape) != (batch, self.sizes[-1]):
            raise ValueError(f"dlogits must have shape {(batch, self.sizes[-1])}, got {tuple(dlogits.shape)}")
        self._tape = None
        workspaces = self._workspaces(batch)
        grad = dlogits
        last = len(self.linears) - 1
        for i in range(last, -1, -1):
            linear_cache, act_cache = tape.caches[i]
            if i < last:
                act = self.activations[i]
                if isinstance(act, SmartMixedActivation) and act.needs_loss:
                    grad = act.backward(grad, act_cache, workspace=workspaces[i], loss=loss)
                else:
                    grad = act.backward(grad, act_cache, workspace=workspaces[i])
            # dx of layer i > 0 goes to a buffer; the input gradient is returned, so fresh.
            dx_out = workspaces[i].feature_major("dx", batch, self.sizes[i], self.dtype) if i > 0 else None
            grad = self.linears[i].backward(grad, linear_cache, need_dx=(i > 0 or need_input_grad), dx_out=dx_out)
        return grad

    @property
    def needs_loss(self) -> bool:
        """Whether :meth:`backward` needs ``loss=`` (a phase-1 layer with the score-function estimator)."""
        return any(isinstance(act, SmartMixedActivation) and act.needs_loss for act in self.activations)

    def _workspaces(self, batch: int) -> list[Workspace]:
        """One :class:`Workspace` per layer for this batch size (kept for a few sizes)."""
        kept = self._workspace_cache
        key = (int(batch), self.backend.name, self.dtype.name)
        if key in kept:
            kept[key] = kept.pop(key)  # most recently used last
        else:
            while len(kept) >= _WORKSPACES_KEPT:
                kept.pop(next(iter(kept)))
            kept[key] = [Workspace(self.backend.xp) for _ in self.linears]
        return kept[key]

    def predict(self, x: Any) -> Any:
        """Predicted classes (B,) on the device (evaluation mode)."""
        logits = self.forward(x, train=False)
        self.clear_tape()
        return array_module(logits).argmax(logits, axis=1)

    # ------------------------------------------------------------------ phase 2
    def choices(self) -> list[np.ndarray]:
        """Per hidden layer, (N,) choice indices into :attr:`pool`, in original neuron order."""
        if self.phase == 1:
            return [act.choices() for act in self.activations]
        return [act.original_choices() for act in self.activations]

    def choice_names(self) -> list[list[str]]:
        """Per hidden layer, the activation name of each neuron, in original neuron order."""
        if self.phase == 1:
            return [[self.pool[k].name for k in c] for c in self.choices()]
        return [act.original_choice_names() for act in self.activations]

    def choice_shares(self) -> list[dict[str, float]]:
        """Per hidden layer, the share of neurons choosing each pool candidate."""
        shares = []
        for names in self.choice_names():
            counts = {a.name: 0 for a in self.pool} if self.phase == 1 else {}
            for name in names:
                counts[name] = counts.get(name, 0) + 1
            shares.append({name: count / len(names) for name, count in counts.items()})
        return shares

    def freeze(self, contiguous: bool = True, reinit_seed: int | None = None, keep_clamp: bool = True) -> "MLP":
        """A phase-2 network: each neuron keeps its argmax choice, weights copied.

        Args:
            contiguous: reorder each hidden layer's neurons so that every activation
                group is one slice: rows of ``W_i`` and ``b_i`` and columns of
                ``W_{i+1}`` are permuted together, which leaves the function unchanged.
            reinit_seed: if given, the phase-2 weights are freshly initialised from
                this seed instead of copied (the published code's behaviour).
            keep_clamp: the phase-2 layers keep the phase-1 clamp (ours, so that
                freezing preserves the function), or have none (the published code's).

        Returns:
            A new :class:`MLP` with ``kind == "fixed"``; ``self`` is unchanged.
        """
        if self.phase != 1:
            raise ValueError("only a phase-1 SmartMixed network can be frozen")
        frozen = self._empty_like()
        xp = self.backend.xp
        if reinit_seed is None:
            weights = [(lin.W.copy(), lin.b.copy()) for lin in self.linears]
        else:
            rng = SeededRNG(np.random.SeedSequence(int(reinit_seed)))
            weights = [init_linear(lin.in_features, lin.out_features, rng, self.dtype, self.backend) for lin in self.linears]
        activations = []
        for i, act in enumerate(self.activations):
            choices = act.choices()
            order = contiguous_order(choices) if contiguous else np.arange(len(choices), dtype=np.int64)
            if contiguous:
                idx = self.backend.asarray(order)
                W, b = weights[i]
                weights[i] = (xp.ascontiguousarray(W[idx]), b[idx])
                W_next, b_next = weights[i + 1]
                weights[i + 1] = (xp.ascontiguousarray(W_next[:, idx]), b_next)
            activations.append(
                FixedMixedActivation(
                    choices[order], self.pool, contiguous=contiguous, clamp=act.clamp if keep_clamp else None, order=order,
                    backend=self.backend, clamp_grad=act.clamp_grad,
                )
            )
        frozen.linears = [Linear(W, b) for W, b in weights]
        frozen.activations = activations
        frozen._pack()
        return frozen

    def _empty_like(self) -> "MLP":
        clone = object.__new__(MLP)
        clone.sizes = list(self.sizes)
        clone.dtype = self.dtype
        clone.backend = self.backend
        clone.seed = self.seed
        clone.pool = self.pool
        clone.phase = 2
        clone.options = dict(self.options)
        clone._tape = None
        clone._workspace_cache = {}
        return clone

    def set_tau(self, tau: float) -> None:
        """Set the Gumbel-softmax temperature of every phase-1 layer (for annealing)."""
        for act in self.activations:
            if isinstance(act, SmartMixedActivation):
                act.tau = tau
        self.options["tau"] = float(tau)

    # ------------------------------------------------------------------ config
    def config(self) -> dict[str, Any]:
        """A JSON-able description from which :meth:`from_config` rebuilds the architecture.

        Phase-2 layers list their pool, each neuron's choice (current order), the
        permutation to the original order, the clamp and the grouping mode. The clamp's
        gradient is named only when it is the authors' ("closed"): a network of ours is
        described as it was before that option existed.
        """
        options = {k: v for k, v in self.options.items() if not (k == "clamp_grad" and v == "open")}
        config: dict[str, Any] = {
            "sizes": list(self.sizes),
            "kind": _KINDS[self.phase],
            "pool": [a.name for a in self.pool],
            "dtype": self.dtype.name,
            "seed": self.seed,
            **options,
        }
        if self.phase == 2:
            config["layers"] = [
                {
                    "pool": [a.name for a in act.pool],
                    "choices": act.choices.tolist(),
                    "order": act.order.tolist(),
                    "clamp": act.clamp,
                    "contiguous": act.contiguous,
                }
                for act in self.activations
            ]
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], device: str | Backend = "cpu") -> "MLP":
        """Rebuild a network (freshly initialised) from :meth:`config` output.

        Raises:
            ValueError: the description is incomplete or inconsistent.
        """
        try:
            kind = config["kind"]
            common = dict(
                pool=config["pool"], tau=config["tau"], hard=config["hard"], clamp=config["clamp"],
                noise_mode=config["noise_mode"], dtype=config["dtype"], seed=config["seed"], device=device,
                # model.json files written before the estimators were selectable trained straight-through
                estimator=config.get("estimator", "st"), estimator_samples=config.get("estimator_samples", DEFAULT_SAMPLES),
                clamp_grad=config.get("clamp_grad", "open"),  # files written before it was an option: ours
            )
            if kind == "smartmixed":
                return cls(config["sizes"], "smartmixed", **common)
            if kind != "fixed":
                raise ValueError(f"unknown network kind {kind!r}")
            model = cls(config["sizes"], "identity", **common)
            layers = config["layers"]
            if len(layers) != model.num_hidden:
                raise ValueError(f"{len(layers)} layer descriptions for {model.num_hidden} hidden layers")
            activations = []
            for width, layer in zip(model.sizes[1:-1], layers):
                if len(layer["choices"]) != width:
                    raise ValueError(f"a layer of width {width} lists {len(layer['choices'])} choices")
                activations.append(
                    FixedMixedActivation(
                        np.asarray(layer["choices"], dtype=np.int64), layer["pool"], contiguous=layer["contiguous"],
                        clamp=layer["clamp"], order=np.asarray(layer["order"], dtype=np.int64), backend=model.backend,
                        clamp_grad=common["clamp_grad"],
                    )
                )
            model.activations = activations
            return model
        except (KeyError, TypeError) as err:
            raise ValueError(f"incomplete or malformed network description: {err!r}") from None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, np.ndarray]:
        """Host copies of every parameter, by name."""
        return {name: to_host(p).copy() for name, p in self.parameters().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy arrays into the parameters; every name and shape must match.

        Raises:
            ValueError: missing or unexpected names, or a shape mismatch (named).
        """
        params = self.parameters()
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if unexpected:
                parts.append(f"unexpected {', '.join(unexpected)}")
            raise ValueError(f"state_dict does not match the network: {'; '.join(parts)}")
        for name, target in params.items():
            value = state[name]
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"state_dict[{name!r}] has shape {tuple(value.shape)}, the network needs {tuple(target.shape)}")
        for name, target in params.items():
            target[...] = self.backend.asarray(to_host(state[name]), dtype=self.dtype)

    def estimator_state(self) -> dict[str, dict]:
        """What the phase-1 estimators learn across steps (the score function's baseline), by layer name (JSON-able)."""
        states = {}
        for i, act in enumerate(self.activations):
            if isinstance(act, SmartMixedActivation) and act.estimator_state():
                states[f"activations.{i}"] = act.estimator_state()
        return states

    def set_estimator_state(self, states: dict[str, dict]) -> None:
        """Restore :meth:`estimator_state`'s output; layers it does not name keep theirs."""
        for i, act in enumerate(self.activations):
            if isinstance(act, SmartMixedActivation) and f"activations.{i}" in states:
                act.set_estimator_state(states[f"activations.{i}"])

    def rng_state(self) -> dict[str, dict]:
        """The state of every noise stream, by layer name (JSON-able)."""
        return {
            f"activations.{i}": act.rng.state
            for i, act in enumerate(self.activations)
            if isinstance(act, SmartMixedActivation) and act.rng is not None
        }

    def set_rng_state(self, states: dict[str, dict]) -> None:
        """Restore noise streams saved by :meth:`rng_state`."""
        for i, act in enumerate(self.activations):
            key = f"activations.{i}"
            if isinstance(act, SmartMixedActivation) and act.rng is not None:
                if key not in states:
                    raise ValueError(f"rng state for {key} is missing")
                act.rng.state = states[key]

    def to(self, device: str | Backend | None = None, dtype: Any = None) -> "MLP":
        """Move (and/or cast) every array in place; returns ``self``."""
        backend = self.backend if device is None else get_backend(device)
        new_dtype = self.dtype if dtype is None else _check_dtype(dtype)
        convert = lambda a: backend.asarray(to_host(a) if backend is not self.backend else a, dtype=new_dtype)  # noqa: E731
        for i, linear in enumerate(self.linears):
            self.linears[i] = Linear(convert(linear.W), convert(linear.b))
        for i, act in enumerate(self.activations):
            if isinstance(act, SmartMixedActivation):
                moved = SmartMixedActivation(
                    convert(act.logits), act.pool, tau=act.tau, hard=act.hard, clamp=act.clamp, noise_mode=act.noise_mode, rng=act.rng,
                    estimator=act.estimator, estimator_samples=act.estimator_samples, clamp_grad=act.clamp_grad,
                )
                moved.set_estimator_state(act.estimator_state())
                self.activations[i] = moved
            else:
                self.activations[i] = act.to(backend)
        self.backend, self.dtype, self._tape = backend, new_dtype, None
        self._pack()
        return self

    def __repr__(self) -> str:
        arch = "-".join(str(s) for s in self.sizes)
        return f"MLP({arch}, phase={self.phase}, device={self.backend.device!r}, dtype={self.dtype.name})"
