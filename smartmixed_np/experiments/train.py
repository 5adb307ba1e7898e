"""Two-phase SmartMixed training (and fixed-activation baselines), with resumable checkpoints.

``train(TrainConfig(...))`` runs a whole experiment and writes a run folder:

* a SmartMixed run trains phase 1 (selection logits learned by the hard Gumbel-
  softmax) for ``transition_epoch`` epochs, then freezes each neuron's choice from
  the best-validation phase-1 weights, and trains phase 2 until ``epochs``;
* a baseline run (``model="relu"``, any registered candidate) trains one phase.

The model kept is the one with the lowest validation loss (of phase 2, for a
SmartMixed run); its test accuracy is what is reported.

Reproducibility: everything random (initialisation, Gumbel noise, shuffling,
the data split) flows from ``seed``. A checkpoint (``checkpoint.npz``) is written
atomically after every epoch and on Ctrl-C, mid-epoch; it holds the weights, the
optimizer's moments, every random generator's state and the position in the
epoch, so that on NumPy a resumed run ends bit for bit where an uninterrupted one
would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .archs import get_architecture
from ..backend import SeededRNG, get_backend, to_host
from .checkpoint import load_arrays, save_arrays, save_model
from ..errors import CheckpointError, UserError
from ..fileio import WriteError, remove_stale_parts, write_json, write_text
from ..core.estimators import DEFAULT_SAMPLES, ESTIMATORS
from ..core.losses import LOSSES, get_loss
from ..core.phase1 import CLAMP_GRADS
from ..nn.layers import SmartMixedActivation
from ..nn.mlp import MLP
from ..nn.step import train_step
from ..nn.optim import SGD, Adam
from .plugins import load_plugins, require_loaded
from .runfolder import (
    CHECKPOINT, CHOICES, CONFIG, HISTORY, METRICS, RUN_FOLDER_FORMAT, choices_csv, determinism_mismatch, environment,
    FAILED, RUN_ATTEMPTS, RUN_LOG, RunFolderError, history_csv, hold, read_config,
)
from .runfolder import history_from_csv as history_from_csv  # public here before the run folder had its module

__all__ = ["TrainConfig", "RunResult", "ConfigError", "train", "evaluate", "confusion_matrix", "per_class_accuracy", "CHECKPOINT"]

CHECKPOINT_FORMAT = "smartmixed_np.checkpoint/1"


class ConfigError(UserError, ValueError):
    """A training option is invalid."""


@dataclass
class TrainConfig:
    """Every option of a training run (the defaults are the published ones).

    Data: ``dataset``, ``data_dir`` (or the ``SMARTMIXED_DATA`` environment
    variable), ``train_limit``, ``val_fraction``, ``split_seed`` (fixed by default,
    so that runs with different seeds share one train/validation split). Model: ``model`` ("smartmixed" or
    a candidate name), ``hidden`` widths or an ``arch`` ID, ``tau``, ``tau_final``
    (anneal exponentially over phase 1 when set), ``hard``, ``noise_mode``,
    ``clamp``, ``estimator`` (phase 1's estimator of the logits' gradient: "st",
    "reinmax", "gumbel_rao" or "score"; ignored by a baseline) and
    ``estimator_samples`` (Gumbel-Rao's M). Schedule: ``epochs``, ``transition_epoch``, ``phase2_init`` ("carry"
    the phase-1 weights or start "fresh"), ``contiguous`` phase-2 groups. ``switch``: "fixed" (phase 1
    for exactly ``transition_epoch`` epochs, the paper's) or "adaptive" (phase 1 ends after the first
    epoch that closes ``switch_patience`` epochs in a row in which at most ``switch_threshold`` of the
    hidden neurons changed their argmax choice; ``transition_epoch`` is then the latest end).
    Optimisation: ``optimizer`` ("adam"/"sgd"), ``lr``, ``momentum``,
    ``weight_decay``, ``lr_schedule`` ("constant"/"cosine"), ``batch_size``,
    ``clip`` (global gradient norm; None for none). Run: ``seed``, ``device``,
    ``dtype``, ``eval_batch_size``, ``out``, ``quiet``, ``progress``.

    The authors' semantics (:data:`PRESETS`): ``preset`` ("ours", the default, or
    "reference") fills each of ``loss`` ("cross-entropy" or "double-softmax"),
    ``phase2_init``, ``phase2_clamp`` ("keep" the phase-1 clamp in phase 2, or
    "none"), ``eval_noise`` (phase-1 validation with Gumbel noise, from a stream of its
    own) and ``clamp_grad`` ("open" or "closed") that is left None; an option given
    explicitly wins over the preset. The values are resolved once, at construction,
    and recorded resolved (with the preset's name) in config.json.
    """

    dataset: str = "mnist"
    data_dir: str | None = None
    train_limit: int | None = None
    val_fraction: float = 0.1
    split_seed: int = 0
    mirror: str | None = None
    model: str = "smartmixed"
    pool: tuple[str, ...] | None = None
    imports: tuple[str, ...] = ()
    hidden: tuple[int, ...] = (512, 256, 128)
    arch: int | None = None
    epochs: int = 400
    transition_epoch: int = 50
    lr: float = 1e-4
    batch_size: int = 128
    clip: float | None = 1.0
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    tau: float = 0.3
    tau_final: float | None = None
    hard: bool = True
    noise_mode: str = "shared"
    clamp: float | None = 10.0
    estimator: str = "st"
    estimator_samples: int = DEFAULT_SAMPLES
    preset: str = "ours"
    loss: str | None = None
    phase2_clamp: str | None = None
    eval_noise: bool | None = None
    clamp_grad: str | None = None
    phase2_init: str | None = None
    switch: str = "fixed"
    switch_threshold: float = 0.1
    switch_patience: int = 2
    contiguous: bool = True
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    eval_batch_size: int = 2048
    out: str | None = None
    quiet: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.arch is not None:
            try:
                self.hidden = get_architecture(self.arch)
            except ValueError as err:
                raise ConfigError(str(err)) from None
        self.hidden = tuple(int(h) for h in self.hidden)
        if self.pool is not None:
            self.pool = tuple(str(name).strip().lower() for name in self.pool)
        self.imports = tuple(str(spec) for spec in self.imports)
        for name, value in PRESETS.get(self.preset, PRESETS["ours"]).items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    @property
    def is_smartmixed(self) -> bool:
        return self.model.lower() == "smartmixed"

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid option."""
        from ..core.activations import get_activation, resolve_pool
        from ..core.phase1 import NOISE_MODES
        from .plugins import load_plugins

        def require(condition: bool, message: str) -> None:
            if not condition:
                raise ConfigError(message)

        require(isinstance(self.epochs, int) and self.epochs >= 1, f"--epochs must be a positive integer, got {self.epochs}")
        require(isinstance(self.batch_size, int) and self.batch_size >= 1, f"--batch-size must be a positive integer, got {self.batch_size}")
        require(self.eval_batch_size >= 1, f"eval batch size must be positive, got {self.eval_batch_size}")
        require(math.isfinite(self.lr) and self.lr > 0, f"--lr must be a positive number, got {self.lr}")
        require(self.clip is None or (math.isfinite(self.clip) and self.clip > 0), f"--clip must be positive, got {self.clip}")
        # Below 1e-4 the Gumbel-softmax is an argmax in float32 and logits / tau overflow.
        require(math.isfinite(self.tau) and self.tau >= MIN_TAU, f"--tau must be a number of at least {MIN_TAU:g}, got {self.tau}")
        require(self.tau_final is None or (math.isfinite(self.tau_final) and self.tau_final >= MIN_TAU),
                f"--tau-final must be a number of at least {MIN_TAU:g}, got {self.tau_final}")
        require(self.clamp is None or self.clamp > 0, f"--clamp must be positive, got {self.clamp}")
        require(self.optimizer in ("adam", "sgd"), f"--optimizer must be adam or sgd, got {self.optimizer!r}")
        require(self.switch in SWITCHES, f"--switch must be one of {', '.join(SWITCHES)}, got {self.switch!r}")
        require(isinstance(self.switch_threshold, (int, float)) and 0 <= self.switch_threshold < 1,
                f"--switch-threshold must lie in [0, 1), got {self.switch_threshold}")
        require(isinstance(self.switch_patience, int) and not isinstance(self.switch_patience, bool) and self.switch_patience >= 1,
                f"--switch-patience must be a positive integer, got {self.switch_patience}")
        require(self.lr_schedule in ("constant", "cosine"), f"--lr-schedule must be constant or cosine, got {self.lr_schedule!r}")
        require(self.phase2_init in ("carry", "fresh"), f"--phase2-init must be carry or fresh, got {self.phase2_init!r}")
        require(self.preset in PRESETS, f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        require(self.loss in LOSSES, f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        require(self.phase2_clamp in ("keep", "none"), f"--phase2-clamp must be keep or none, got {self.phase2_clamp!r}")
        require(isinstance(self.eval_noise, bool), f"eval_noise must be true or false, got {self.eval_noise!r}")
        require(self.clamp_grad in CLAMP_GRADS, f"--clamp-grad must be one of {', '.join(CLAMP_GRADS)}, got {self.clamp_grad!r}")
        if self.is_smartmixed and self.clamp_grad == "closed":
            require(self.estimator == "st", f"--clamp-grad closed is implemented for --estimator st only, not {self.estimator}")
        require(self.noise_mode in NOISE_MODES, f"--noise must be one of {', '.join(NOISE_MODES)}, got {self.noise_mode!r}")
        require(self.dtype in ("float32", "float64"), f"--dtype must be float32 or float64, got {self.dtype!r}")
        require(self.estimator in ESTIMATORS, f"--estimator must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")
        require(isinstance(self.estimator_samples, int) and not isinstance(self.estimator_samples, bool) and self.estimator_samples >= 1,
                f"--estimator-samples must be a positive integer, got {self.estimator_samples}")
        if self.is_smartmixed and self.estimator != "st":
            require(self.hard, f"--estimator {self.estimator} is for hard selection: drop --soft (a soft mixture has its exact gradient)")
            require(self.noise_mode != "none", f"--estimator {self.estimator} needs a sampled selection: --noise shared or per_sample, not none")
        require(0 < self.val_fraction < 1, f"validation fraction must lie in (0, 1), got {self.val_fraction}")
        require(self.train_limit is None or self.train_limit >= 10, f"--train-limit must be at least 10, got {self.train_limit}")
        require(isinstance(self.seed, int) and self.seed >= 0, f"--seed must be a non-negative integer, got {self.seed}")
        require(len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden), f"--hidden needs at least one positive width, got {self.hidden}")
        require(math.isfinite(self.momentum) and math.isfinite(self.weight_decay) and self.momentum >= 0 and self.weight_decay >= 0,
                "--momentum and --weight-decay must be finite and non-negative")
        require(all(h <= MAX_WIDTH for h in self.hidden), f"--hidden: widths above {MAX_WIDTH:,} are not supported, got {self.hidden}")
        try:
            get_backend(self.device)
        except ValueError as err:
            raise ConfigError(f"--device: {err}") from None
        load_plugins(self.imports)  # a user's candidates must be registered before names are checked
        if self.pool is not None:
            try:
                resolve_pool(self.pool)
            except ValueError as err:
                raise ConfigError(f"--pool: {err}") from None
        if self.is_smartmixed:
            require(
                isinstance(self.transition_epoch, int) and 1 <= self.transition_epoch <= self.epochs,
                f"--transition-epoch ({self.transition_epoch}) must lie in [1, --epochs ({self.epochs})]: "
                "phase 1 runs that many epochs, phase 2 the rest",
            )
        else:
            try:
                get_activation(self.model)
            except ValueError as err:
                raise ConfigError(f"--model: {err} (or 'smartmixed')") from None
        if self.device in ("cpu", "numpy"):
            _check_memory(self)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["hidden"] = list(self.hidden)
        data["pool"] = None if self.pool is None else list(self.pool)
        data["imports"] = list(self.imports)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training options in the saved configuration: {', '.join(unknown)}")
        data = dict(data)
        data["hidden"] = tuple(data.get("hidden", ()))
        if data.get("pool") is not None:
            data["pool"] = tuple(data["pool"])
        data["imports"] = tuple(data.get("imports", ()))
        data["arch"] = None  # hidden already holds the widths
        return cls(**data)


MIN_TAU = 1e-4
#: ``--switch``: when phase 1 ends (see :class:`TrainConfig` and :class:`_Switch`).
SWITCHES = ("fixed", "adaptive")
MAX_WIDTH = 1 << 20

#: What each ``--preset`` sets, for the options left unset: ours, and the authors'
#: (omidvaramin/SmartMixed: nn.Softmax into nn.CrossEntropyLoss; phase 2 a new network,
#: fresh weights, no clamp; Gumbel noise in evaluation too; PyTorch's clamp gradient).
PRESETS: dict[str, dict[str, Any]] = {
    "ours": {"loss": "cross-entropy", "phase2_init": "carry", "phase2_clamp": "keep", "eval_noise": False, "clamp_grad": "open"},
    "reference": {"loss": "double-softmax", "phase2_init": "fresh", "phase2_clamp": "none", "eval_noise": True,
                  "clamp_grad": "closed"},
}


def estimate_memory(config: TrainConfig, input_dim: int = 784, num_classes: int = 10, examples: int = 70_000) -> int:
    """Bytes a training run needs, roughly, before anything is allocated.

    Parameters P (weights, biases, selection logits) are held about seven times
    (the parameters, their gradients, Adam's two moments, the best model of each
    phase, a checkpoint copy); the activations of a batch about (K + 4) times per
    hidden unit (the K candidates of phase 1); and the dataset once, in the run's
    dtype. An estimate for refusing what cannot fit, not an accounting.
    """
    itemsize = np.dtype(config.dtype).itemsize
    sizes = [input_dim, *config.hidden, num_classes]
    pool = len(config.pool) if config.pool else 6
    params = sum((fan_in + 1) * fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:]))
    params += sum(config.hidden) * pool if config.is_smartmixed else 0
    batch = max(config.batch_size, config.eval_batch_size)
    activations = batch * (sum(config.hidden) * (pool + 4) + input_dim + 2 * num_classes)
    return int(itemsize * (7 * params + activations + examples * input_dim))


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation on this machine (None if unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _check_memory(config: TrainConfig) -> None:
    needed, available = estimate_memory(config), _available_memory()
    if available is not None and needed > available:
        raise ConfigError(
            f"this network needs about {needed / 2**30:.1f} GiB of memory to train (hidden {','.join(map(str, config.hidden))}, "
            f"batch {config.batch_size}, {config.dtype}), and this machine has {available / 2**30:.1f} GiB available"
        )


@dataclass
class RunResult:
    """What :func:`train` returns: where the run was written and what it measured."""

    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    model: MLP
    interrupted: bool = False
    #: the signal that stopped an interrupted run: ``"SIGINT"`` (Ctrl-C) or ``"SIGTERM"``
    stop_signal: str | None = None


# ------------------------------------------------------------------------ evaluation
def evaluate(model: MLP, x: Any, labels: Any, batch_size: int = 2048, *, loss: str = "cross-entropy",
             noise_rng: SeededRNG | None = None) -> dict[str, Any]:
    """Mean loss, accuracy and predictions of ``model`` (evaluation mode) on a dataset.

    Args:
        model: the network. x: (n, D) device array. labels: (n,) device ints.
        batch_size: examples per forward pass.
        loss: the loss reported, by name (:data:`~smartmixed_np.core.losses.LOSSES`).
        noise_rng: a noisy evaluation (the authors'): every phase-1 layer selects by
            Gumbel noise drawn from this stream, one draw per batch (per its noise
            mode), instead of by its argmax. None (ours): the argmax network.

    Returns:
        ``{"loss": float, "accuracy": float, "predictions": host int64 (n,)}``.
    """
    xp = model.backend.xp
    loss_fn = get_loss(loss)
    n = int(x.shape[0])
    loss_sum = xp.zeros((), dtype=np.float64)
    predictions = []
    for start in range(0, n, batch_size):
        xb, yb = x[start : start + batch_size], labels[start : start + batch_size]
        noise = None
        if noise_rng is not None:
            noise = {i: act.draw_noise(int(xb.shape[0]), noise_rng) for i, act in enumerate(model.activations)
                     if isinstance(act, SmartMixedActivation)}
        logits = model.forward(xb, train=False, noise=noise)
        value, _ = loss_fn(logits, yb, check=False)
        loss_sum += value * int(xb.shape[0])
        predictions.append(xp.argmax(logits, axis=1))
    model.clear_tape()  # evaluation passes are never backpropagated
    predicted = to_host(xp.concatenate(predictions)) if predictions else np.zeros(0, dtype=np.int64)
    accuracy = float(np.mean(predicted == to_host(labels))) if n else float("nan")
    return {"loss": float(to_host(loss_sum)) / max(n, 1), "accuracy": accuracy, "predictions": predicted}


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts: rows are true classes, columns predicted ones."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """(C,) share of each true class predicted correctly (0 for a class with no examples)."""
    return np.diag(confusion) / np.maximum(confusion.sum(axis=1), 1)


# ------------------------------------------------------------------------ the run
@dataclass
class _Best:
    """The best model seen so far in one phase (host copies)."""

    epoch: int = 0
    val_loss: float = math.inf
    val_accuracy: float = float("nan")
    state: dict[str, np.ndarray] = field(default_factory=dict)
    config: dict[str, Any] | None = None

    def offer(self, epoch: int, val_loss: float, val_accuracy: float, model: MLP) -> bool:
        if not val_loss < self.val_loss:
            return False
        self.epoch, self.val_loss, self.val_accuracy = epoch, val_loss, val_accuracy
        self.state, self.config = model.state_dict(), model.config()
        return True

    def model(self, backend: Any) -> MLP:
        """The saved network, rebuilt on ``backend``."""
        model = MLP.from_config(self.config, device=backend)
        model.load_state_dict(self.state)
        return model

    def meta(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "val_loss": self.val_loss, "val_accuracy": self.val_accuracy, "config": self.config}


@dataclass
class _Switch:
    """When phase 1 ends: the adaptive switch's state (``--switch adaptive``).

    After each phase-1 epoch, :meth:`observe` compares every hidden neuron's argmax
    choice with the one at the end of the epoch before (the initial logits' before
    the first) and counts the epochs in a row in which the share that changed was at
    most ``threshold``; when the count reaches ``patience``, phase 1 ends with that
    epoch (``ended``). ``transition_epoch`` stays the latest end either way, and
    ``--switch fixed`` ends it exactly there.
    """

    threshold: float
    patience: int
    #: the last phase-1 epoch once decided, else None
    ended: int | None = None
    #: epochs in a row with at most ``threshold`` of the choices changed
    calm: int = 0
    #: per hidden layer, (N,) argmax choices at the end of the last epoch observed
    choices: list[np.ndarray] = field(default_factory=list)

    def changed_share(self, choices: list[np.ndarray]) -> float:
        """The share of hidden neurons whose choice differs from :attr:`choices` (1.0 with none yet)."""
        if len(self.choices) != len(choices):
            return 1.0
        changed = sum(int(np.count_nonzero(old != new)) for old, new in zip(self.choices, choices))
        return changed / max(sum(int(c.size) for c in choices), 1)

    def observe(self, epoch: int, choices: list[np.ndarray], adaptive: bool) -> float:
        """Record the choices at the end of phase-1 epoch ``epoch``; return the share changed."""
        share = self.changed_share(choices)
        self.choices = [np.asarray(c, dtype=np.int64).copy() for c in choices]
        self.calm = self.calm + 1 if share <= self.threshold else 0
        if adaptive and self.ended is None and self.calm >= self.patience:
            self.ended = epoch
        return share

    def meta(self) -> dict[str, Any]:
        return {"ended": self.ended, "calm": self.calm}

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"L{i}": c for i, c in enumerate(self.choices)}

    def load(self, meta: dict[str, Any] | None, arrays: dict[str, np.ndarray]) -> None:
        meta = meta or {}  # absent before the adaptive switch: nothing observed yet
        self.ended = None if meta.get("ended") is None else int(meta["ended"])
        self.calm = int(meta.get("calm", 0))
        self.choices = [np.asarray(arrays[f"L{i}"], dtype=np.int64) for i in range(len(arrays))]


class _Run:
    """The mutable state of one training run; :func:`train` drives it."""

    def __init__(self, config: TrainConfig, run_dir: Path) -> None:
        from ..data import load_dataset

        self.config = config
        self.run_dir = run_dir
        self.backend = get_backend(config.device)
        data = load_dataset(
            config.dataset,
            config.data_dir,
            train_limit=config.train_limit,
            val_fraction=config.val_fraction,
            split_seed=config.split_seed,
            progress=not config.quiet,
            mirror=config.mirror,
        )
        self.data = data
        dtype = np.dtype(config.dtype)
        # The dataset moves to the device once; batches are gathered there.
        self.x_train = self.backend.asarray(data.x_train, dtype=dtype)
        self.y_train = self.backend.asarray(data.y_train)
        self.x_val = self.backend.asarray(data.x_val, dtype=dtype)
        self.y_val = self.backend.asarray(data.y_val)
        self.x_test = self.backend.asarray(data.x_test, dtype=dtype)
        self.y_test = self.backend.asarray(data.y_test)
        self.sizes = [data.input_dim, *config.hidden, data.num_classes]
        self.model = MLP(
            self.sizes,
            "smartmixed" if config.is_smartmixed else config.model,
            pool=config.pool,
            tau=config.tau,
            hard=config.hard,
            clamp=config.clamp,
            noise_mode=config.noise_mode,
            device=self.backend,
            dtype=config.dtype,
            seed=config.seed,
            estimator=config.estimator if config.is_smartmixed else "st",
            estimator_samples=config.estimator_samples,
            clamp_grad=config.clamp_grad if config.is_smartmixed else "open",
        )
        self.optimizer = self._make_optimizer()
        self.shuffle_rng = SeededRNG(np.random.SeedSequence([config.seed, 1]))
        #: --eval-noise's stream: apart from training's, so that the training is the same with or without it
        self.eval_noise_rng = SeededRNG(np.random.SeedSequence([config.seed, 2]))
        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0  # completed steps of the epoch in progress
        self.epoch_start_shuffle: dict | None = None
        self.accumulators = {"loss_sum": 0.0, "correct": 0, "seen": 0}
        self.history: list[dict[str, Any]] = []
        self.best_phase1 = _Best()
        self.best = _Best()
        self.switch = _Switch(config.switch_threshold, config.switch_patience)
        if config.is_smartmixed:
            self.switch.choices = [np.asarray(c, dtype=np.int64).copy() for c in self.model.choices()]
        self.stopped: str | None = None
        self.elapsed = 0.0
        #: True while the state is that of a step boundary (what a checkpoint may hold);
        #: False inside a step and the end-of-epoch bookkeeping.
        self.at_boundary = True
        #: (completed epochs, step in epoch) of the last checkpoint written, if any.
        self.saved_at: tuple[int, int] | None = None
        self.environment = environment(self.backend.name, self.backend.xp)
        #: "resuming DIR at epoch E, step S of N", said once the folder is held.
        self.resume_note: str | None = None

    # -- pieces ------------------------------------------------------------------
    def _make_optimizer(self):
        params = self.model.parameters()
        if self.config.optimizer == "sgd":
            return SGD(params, lr=self.config.lr, momentum=self.config.momentum, weight_decay=self.config.weight_decay)
        return Adam(params, lr=self.config.lr, weight_decay=self.config.weight_decay)

    def phase_of(self, epoch: int) -> int:
        if not self.config.is_smartmixed:
            return 2
        return 1 if epoch <= self.phase1_epochs else 2

    @property
    def phase1_epochs(self) -> int:
        """Phase 1's length: ``transition_epoch``, or fewer once the adaptive switch has ended it."""
        ended = self.switch.ended
        return self.config.transition_epoch if ended is None else min(ended, self.config.transition_epoch)

    def lr_at(self, epoch: int) -> float:
        if self.config.lr_schedule == "cosine":
            return self.config.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / self.config.epochs))
        return self.config.lr

    def tau_at(self, epoch: int) -> float:
        c = self.config
        if c.tau_final is None or c.transition_epoch <= 1:
            return c.tau
        return c.tau * (c.tau_final / c.tau) ** ((epoch - 1) / (c.transition_epoch - 1))

    def enter_phase2(self) -> None:
        """Freeze the best phase-1 network (its argmax choices) and start a fresh optimizer."""
        if self.best_phase1.state:
            self.model.load_state_dict(self.best_phase1.state)
        reinit = self.config.seed if self.config.phase2_init == "fresh" else None
        self.model = self.model.freeze(contiguous=self.config.contiguous, reinit_seed=reinit,
                                       keep_clamp=self.config.phase2_clamp == "keep")
        self.optimizer = self._make_optimizer()

    # -- checkpoints -------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        arrays = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        optimizer_state = self.optimizer.state_dict()
        arrays.update({f"optim/{k}": v for k, v in optimizer_state.items() if isinstance(v, np.ndarray)})
        arrays.update({f"best/{k}": v for k, v in self.best.state.items()})
        arrays.update({f"best_phase1/{k}": v for k, v in self.best_phase1.state.items()})
        arrays.update({f"switch/{k}": v for k, v in self.switch.arrays().items()})
        meta = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_json(),
            "model_config": self.model.config(),
            "optimizer": {"step": optimizer_state["step"], "lr": optimizer_state["lr"]},
            "rng": {"shuffle": self.shuffle_rng.state, "model": self.model.rng_state(), "epoch_start_shuffle": self.epoch_start_shuffle,
                    "eval_noise": self.eval_noise_rng.state},
            "estimator": self.model.estimator_state(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "accumulators": self.accumulators,
            "history": self.history,
            "best": self.best.meta(),
            "best_phase1": self.best_phase1.meta(),
            "switch": self.switch.meta(),
            "stopped": self.stopped,
            "elapsed": self.elapsed,
            "environment": self.environment,
        }
        path = save_arrays(self.run_dir / CHECKPOINT, arrays, meta)
        self.saved_at = (self.epoch, self.step_in_epoch)
        return path

    def load_checkpoint(self, arrays: dict[str, np.ndarray], meta: dict[str, Any], path: Path) -> None:
        try:
            model_config = meta["model_config"]
            if model_config["kind"] == "fixed" and self.model.phase == 1:
                self.model = MLP.from_config(model_config, device=self.backend)
                self.optimizer = self._make_optimizer()
            self.model.load_state_dict(_section(arrays, "model/"))
            self.optimizer.load_state_dict({**_section(arrays, "optim/"), **meta["optimizer"]})
            self.shuffle_rng.state = meta["rng"]["shuffle"]
            self.model.set_rng_state(meta["rng"]["model"])
            self.model.set_estimator_state(meta.get("estimator", {}))  # absent before the estimators had state
            self.epoch_start_shuffle = meta["rng"]["epoch_start_shuffle"]
            if "eval_noise" in meta["rng"]:  # absent before --eval-noise, whose stream was then never drawn from
                self.eval_noise_rng.state = meta["rng"]["eval_noise"]
            self.epoch, self.step_in_epoch = int(meta["epoch"]), int(meta["step_in_epoch"])
            self.accumulators = dict(meta["accumulators"])
            self.history = list(meta["history"])
            for best, key in ((self.best, "best"), (self.best_phase1, "best_phase1")):
                info = meta[key]
                best.epoch, best.val_loss, best.val_accuracy = info["epoch"], info["val_loss"], info["val_accuracy"]
                best.config, best.state = info["config"], _section(arrays, f"{key}/")
            self.switch.load(meta.get("switch"), _section(arrays, "switch/"))
            self.stopped = meta.get("stopped")
            self.elapsed = float(meta.get("elapsed", 0.0))
            self.saved_at = (self.epoch, self.step_in_epoch)
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError, IndexError) as err:
            raise CheckpointError(f"{path}: checkpoint does not match this run ({type(err).__name__}: {err})") from None


def _section(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


def _default_run_dir(config: TrainConfig) -> Path:
    arch = "-".join(str(h) for h in config.hidden)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.dataset}_{config.model}_{arch}_seed{config.seed}_{stamp}"


#: What may stand in a folder before a run starts in it: what a sweep writes first
#: (its log, its attempts, its lock, a failure note) and the hidden temporaries of
#: atomic writes. Anything else means the folder is not meant for a run.
_BEFORE_A_RUN = (RUN_LOG, RUN_ATTEMPTS, FAILED, CONFIG)


def _check_new_run_dir(run_dir: Path) -> None:
    """Refuse a run folder that holds a run already, or other files, or cannot be a folder."""
    for part in run_dir.parts:
        if len(os.fsencode(part)) > 255:
            raise ConfigError(f"--out: the path component {part[:40]!r}... is longer than 255 bytes")
    # config.json alone is a run stopped before its first checkpoint: it starts again.
    if (run_dir / CHECKPOINT).exists() or (run_dir / METRICS).exists():
        raise ConfigError(f"{run_dir} already holds a run; resume it with --resume {run_dir} or choose another --out")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir}: exists and is not a folder")
    if run_dir.is_dir():
        try:
            others = sorted(e.name for e in os.scandir(run_dir) if not e.name.startswith(".") and e.name not in _BEFORE_A_RUN)
        except OSError as err:
            raise ConfigError(f"--out {run_dir}: cannot read the folder ({err.strerror or err})") from None
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise ConfigError(f"--out {run_dir}: the folder holds other files ({shown}); a run needs an empty or new folder")


def _make_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteError(f"--out {run_dir}: cannot create the run folder ({err.strerror or err})") from None


def train(
    config: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    on_step: Callable[[int, int, int, MLP], None] | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunResult:
    """Run (or resume) a training run and write its run folder.

    Args:
        config: the options (ignored when resuming, except ``overrides``).
        resume: a run folder holding ``checkpoint.npz`` to continue.
        on_step: called as ``on_step(epoch, step_in_epoch, global_step, model)``
            after every optimizer step (tests use it to interrupt a run).
        overrides: options that may differ on resume: ``quiet``, ``progress``,
            ``device``, ``data_dir``, ``mirror``, and ``epochs`` (at least the epochs
            already run: a finished run can be continued for more).

    Returns:
        A :class:`RunResult`. After Ctrl-C or SIGTERM the checkpoint is saved at a
        step boundary and the result has ``interrupted=True`` and ``stop_signal``.

    Raises:
        ConfigError, DataError, CheckpointError, WriteError: user errors, with
        one-line messages.
    """
    checkpoint = None
    if resume is not None:
        run_dir = Path(resume)
        path = run_dir / CHECKPOINT
        if not run_dir.is_dir():
            raise CheckpointError(f"{run_dir}: no such run folder to resume")
        arrays, meta = load_arrays(path)
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: not a training checkpoint (format {meta.get('format')!r})")
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - RESUME_OVERRIDES)
        if unknown:
            raise ConfigError(f"cannot change {', '.join(unknown)} when resuming; start a new run with --out")
        if not isinstance(meta.get("config"), dict):
            raise CheckpointError(f"{path}: checkpoint without its training options")
        # The modules the run recorded run code when imported: only those the user
        # names (overrides["imports"], --import) are imported; the rest must be loaded.
        load_plugins(overrides.get("imports", ()))
        recorded = meta["config"].get("imports") or []
        require_loaded(recorded if isinstance(recorded, list) else [], str(path))
        try:
            config = TrainConfig.from_json({**meta["config"], **overrides})
        except ConfigError:
            raise
        except (TypeError, ValueError, OverflowError, AttributeError) as err:
            raise CheckpointError(f"{path}: corrupt training options ({type(err).__name__}: {err})") from None
        checkpoint = (arrays, meta, path)
    else:
        if config is None:
            config = TrainConfig()
        if overrides:
            config = dataclasses.replace(config, **overrides)
        run_dir = Path(config.out) if config.out else _default_run_dir(config)
        _check_new_run_dir(run_dir)
    config.validate()
    config.out = str(run_dir)

    # Everything that can fail on the user's input (data, checkpoint) fails before
    # the folder exists: a failed start leaves nothing behind.
    run = _Run(config, run_dir)
    resumed_from = None
    if checkpoint is not None:
        run.load_checkpoint(*checkpoint)
        resumed_from = _check_resume(run, checkpoint[1])
    _note_train_limit(run)
    _make_run_dir(run_dir)
    with hold(run_dir, wait_s=0) as held:
        if not held and os.name == "posix":  # elsewhere there are no locks to take
            raise ConfigError(f"{run_dir} is in use by another process (a sweep worker or another `smartmixed train`)")
        remove_stale_parts(run_dir)  # only the holder of the folder may remove temporaries
        _write_config(run, resumed_from)
        if run.resume_note:
            _say(run.resume_note, sys.stderr if config.quiet else None)
        try:
            with _interrupt_at_step_boundaries() as interrupt:
                try:
                    # A diverging run overflows: the loop reports a non-finite loss in
                    # one line, so NumPy's warnings would only be noise before it.
                    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                        _train_loop(run, on_step, interrupt)
                    metrics = _finish(run, interrupt)
                except KeyboardInterrupt:
                    return _stopped(run, interrupt)
        except KeyboardInterrupt:  # a signal between the two handlers above
            return _stopped(run, {"set": True, "signal": "SIGINT"})
    return RunResult(run_dir, metrics, run.history, run.model)


#: The options that ``train(resume=..., overrides=...)`` may change.
RESUME_OVERRIDES = frozenset({"quiet", "progress", "device", "data_dir", "mirror", "epochs", "imports"})


def _stopped(run: "_Run", interrupt: dict) -> RunResult:
    """After an interrupt: save the checkpoint if the state is a step boundary, and say so."""
    name = interrupt.get("signal") or "SIGINT"
    again = f"continue with `smartmixed train --resume {run.run_dir}`"
    if run.at_boundary:
        run.save_checkpoint()
        _say(f"interrupted ({name}): checkpoint saved {_position(run.epoch, run.step_in_epoch)}; {again}", sys.stderr)
    elif run.saved_at is not None:
        _say(f"stopped at once ({name} twice, inside a step): the checkpoint saved {_position(*run.saved_at)} is kept; {again}", sys.stderr)
    else:
        _say(f"stopped at once ({name} twice) before the first checkpoint; nothing to resume", sys.stderr)
    return RunResult(run.run_dir, {}, run.history, run.model, interrupted=True, stop_signal=name)


def _position(epochs_done: int, step: int) -> str:
    """Where a checkpoint stands, in words: "after epoch 3" or "at epoch 4, step 92"."""
    return f"after epoch {epochs_done}" if step == 0 else f"at epoch {epochs_done + 1}, step {step}"


def _check_resume(run: "_Run", meta: dict[str, Any]) -> dict[str, Any]:
    """Validate a resume's epochs, warn if the bits will differ, say where it resumes."""
    config = run.config
    if config.epochs < run.epoch:
        raise ConfigError(f"--epochs {config.epochs}: the run has already trained {run.epoch} epochs; give at least that many")
    if config.is_smartmixed and config.epochs < config.transition_epoch:
        raise ConfigError(f"--epochs {config.epochs} is shorter than the run's phase 1 ({config.transition_epoch} epochs)")
    if config.epochs > run.epoch and (run.run_dir / METRICS).exists():
        # A finished run continued for more epochs is unfinished again until it ends.
        try:
            (run.run_dir / METRICS).unlink()
        except OSError as err:
            raise WriteError(f"{run.run_dir / METRICS}: cannot remove the finished marker ({err.strerror or err})") from None
        run.stopped = None
    mismatch = determinism_mismatch(meta.get("environment"), run.environment)
    if mismatch:
        _say(f"warning: {mismatch}: the continuation will not be bit-identical to an uninterrupted run", sys.stderr)
    batches = math.ceil(int(run.x_train.shape[0]) / config.batch_size)
    if run.epoch >= config.epochs:
        where = f"after its last epoch ({run.epoch}): writing the end of the run"
    else:
        where = f"at epoch {run.epoch + 1}, step {run.step_in_epoch} of {batches}"
    run.resume_note = f"resuming {run.run_dir} {where}"
    return {"epoch": run.epoch + 1, "step": run.step_in_epoch, "environment": run.environment}


def _note_train_limit(run: "_Run") -> None:
    """Say when ``--train-limit`` asks for more official training images than exist."""
    data, limit = run.data, run.config.train_limit
    available = getattr(data, "train_available", None)
    if limit is not None and available is not None and limit > available and not run.config.quiet:
        _say(f"note: --train-limit {limit:,} asks for more than the {available:,} official training images; using all of them", sys.stderr)


def _write_config(run: "_Run", resumed_from: dict[str, Any] | None) -> None:
    """config.json: the options, the data, and the environment of the first start and of each resume."""
    path = run.run_dir / CONFIG
    previous: dict[str, Any] = {}
    if resumed_from is not None:
        try:
            previous = read_config(run.run_dir, required=False)
        except RunFolderError as err:
            _say(f"warning: {err}; it is written anew (the first start's environment and earlier resumes are lost)", sys.stderr)
    data = run.data
    content = {**run.config.to_json(), "environment": previous.get("environment", run.environment), "data": {
        "name": data.name, "source": data.source, "train": int(data.x_train.shape[0]),
        "val": int(data.x_val.shape[0]), "test": int(data.x_test.shape[0]), "num_classes": data.num_classes}}
    resumes = previous.get("resumes") if isinstance(previous.get("resumes"), list) else []
    if resumed_from is not None:
        content["resumes"] = [*resumes, resumed_from]
    content["format"] = RUN_FOLDER_FORMAT
    write_json(path, content)


def _say(message: str, stream: Any = None) -> None:
    """Print a line without breaking an active progress bar."""
    from tqdm import tqdm

    tqdm.write(message, file=stream or sys.stdout)


#: The signals a run stops on at the next step boundary: Ctrl-C, and what cluster
#: schedulers (and ``kill``) send. The exit status is 128 + the signal's number.
STOP_SIGNALS = ("SIGINT", "SIGTERM")


@contextlib.contextmanager
def _interrupt_at_step_boundaries() -> Any:
    """Turn the first SIGINT or SIGTERM into a flag that the loop checks between steps.

    An interrupt in the middle of an optimizer update would leave half-updated
    weights; deferring it to the end of the step keeps the checkpoint exact. A
    second signal stops at once (KeyboardInterrupt), and then the half-done step is
    not saved: the last checkpoint stays as it was (see :func:`_stopped`).
    """
    flag: dict[str, Any] = {"set": False, "signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        # Only the flag: no import and no output here. The signal may land anywhere,
        # inside an import or a write to the same stream; the loop says what it does.
        if flag["set"]:
            raise KeyboardInterrupt
        flag["set"], flag["signal"] = True, signal.Signals(signum).name

    previous = {name: signal.signal(getattr(signal, name), handler) for name in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for name, old in previous.items():
            signal.signal(getattr(signal, name), old)


def _train_loop(run: _Run, on_step: Callable | None, interrupt: dict) -> None:
    from tqdm import tqdm

    config = run.config
    xp = run.backend.xp
    n = int(run.x_train.shape[0])
    batches = math.ceil(n / config.batch_size)
    global_step = run.epoch * batches + run.step_in_epoch
    while run.epoch < config.epochs and run.stopped is None:
        epoch = run.epoch + 1
        phase = run.phase_of(epoch)
        if config.is_smartmixed and phase == 2 and run.model.phase == 1:
            run.enter_phase2()
        run.optimizer.lr = run.lr_at(epoch)
        tau = run.tau_at(epoch) if phase == 1 else None
        if tau is not None:
            run.model.set_tau(tau)
        if run.step_in_epoch == 0:
            run.epoch_start_shuffle = run.shuffle_rng.state
            run.accumulators = {"loss_sum": 0.0, "correct": 0, "seen": 0}
        else:  # resuming mid-epoch: replay the same shuffle
            run.shuffle_rng.state = run.epoch_start_shuffle
        order = run.shuffle_rng.permutation(n, run.backend)
        loss_sum = run.backend.asarray(np.asarray(run.accumulators["loss_sum"], dtype=np.float64))
        correct = run.backend.asarray(np.asarray(run.accumulators["correct"], dtype=np.int64))
        seen = int(run.accumulators["seen"])
        started = time.perf_counter()
        bar = tqdm(
            total=batches, initial=run.step_in_epoch, desc=f"epoch {epoch}/{config.epochs}" + (f" (phase {phase})" if config.is_smartmixed else ""),
            disable=config.quiet or not config.progress, leave=False, unit="batch", file=sys.stderr, dynamic_ncols=True,
        )
        try:
            for step in range(run.step_in_epoch, batches):
                run.at_boundary = False
                index = order[step * config.batch_size : (step + 1) * config.batch_size]
                xb, yb = run.x_train[index], run.y_train[index]
                loss, logits = train_step(run.model, run.optimizer, xb, yb, config.clip, loss=config.loss)
                batch = int(xb.shape[0])
                loss_sum += loss * batch
                correct += xp.sum(xp.argmax(logits, axis=1) == yb)
                seen += batch
                run.step_in_epoch = step + 1
                run.accumulators = {"loss_sum": loss_sum, "correct": correct, "seen": seen}
                run.at_boundary = True
                global_step += 1
                if step % 20 == 0 or step == batches - 1:
                    current = float(to_host(loss_sum)) / seen
                    bar.set_postfix(loss=f"{current:.4f}", acc=f"{int(to_host(correct)) / seen:.3f}", refresh=False)
                    if not math.isfinite(current):
                        break
                bar.update(1)
                if on_step is not None:
                    on_step(epoch, step + 1, global_step, run.model)
                if interrupt["set"]:
                    _say(f"{interrupt['signal']} received: stopping after this step", sys.stderr)
                    raise KeyboardInterrupt
        finally:
            bar.close()
            run.accumulators = {
                "loss_sum": float(to_host(loss_sum)), "correct": int(to_host(correct)), "seen": seen,
            }
            run.elapsed += time.perf_counter() - started
        run.at_boundary = False  # the end-of-epoch bookkeeping, until its checkpoint is written
        train_loss = run.accumulators["loss_sum"] / max(seen, 1)
        train_acc = run.accumulators["correct"] / max(seen, 1)
        noisy = config.eval_noise and run.model.phase == 1
        val = evaluate(run.model, run.x_val, run.y_val, config.eval_batch_size, loss=config.loss,
                       noise_rng=run.eval_noise_rng if noisy else None)
        row: dict[str, Any] = {
            "epoch": epoch, "phase": phase, "time_s": round(time.perf_counter() - started, 4),
            "train_loss": train_loss, "train_acc": train_acc, "val_loss": val["loss"], "val_acc": val["accuracy"],
            "lr": run.optimizer.lr, "tau": tau,
        }
        if run.model.phase == 1:
            row["changed"] = run.switch.observe(epoch, run.model.choices(), adaptive=config.switch == "adaptive")
            for layer, shares in enumerate(run.model.choice_shares()):
                for name, share in shares.items():
                    row[f"share.L{layer}.{name}"] = share
        run.history.append(row)
        run.epoch, run.step_in_epoch = epoch, 0
        if not (math.isfinite(train_loss) and math.isfinite(val["loss"])):
            kept = "kept the best model" if (run.best.state or run.best_phase1.state) else "no epoch had a finite loss"
            run.stopped = f"non-finite loss at epoch {epoch} (train {train_loss}, validation {val['loss']}); {kept}"
        elif phase == 1 and config.is_smartmixed:
            run.best_phase1.offer(epoch, val["loss"], val["accuracy"], run.model)
        else:
            run.best.offer(epoch, val["loss"], val["accuracy"], run.model)
        _epoch_line(run, row)
        run.save_checkpoint()
        run.at_boundary = True
        if interrupt["set"]:  # a signal during the evaluation or the checkpoint: stop here
            raise KeyboardInterrupt


def _epoch_line(run: _Run, row: dict[str, Any]) -> None:
    config = run.config
    text = (
        f"epoch {row['epoch']:>3}/{config.epochs}"
        + (f" phase {row['phase']}" if config.is_smartmixed else "")
        + f"  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}"
        + f"  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  {row['time_s']:.1f}s"
    )
    if "changed" in row and config.switch == "adaptive":
        text += f"  changed {row['changed']:.1%}" + ("  (phase 1 ends)" if run.switch.ended == row["epoch"] else "")
    if run.model.phase == 1:
        shares = run.model.choice_shares()
        top = [max(layer, key=layer.get) for layer in shares]
        text += "  top: " + ",".join(top)
    _say(text)


def _finish(run: _Run, interrupt: dict | None = None) -> dict[str, Any]:
    """Select the best model, score it on the test set, write the end of the run folder.

    The files are written in :data:`smartmixed_np.experiments.runfolder.FINISH_ORDER`: the model,
    the history, the choices, the figures, and ``metrics.json`` (the finished marker)
    last, each atomically. A signal that arrives meanwhile stops the run before the
    marker is written: the folder stays resumable, and ``--resume`` writes its end
    again (the checkpoint of the last epoch holds everything needed).
    """
    config = run.config
    interrupt = interrupt if interrupt is not None else {"set": False}

    def stop_if_asked() -> None:
        if interrupt["set"]:
            raise KeyboardInterrupt

    if run.stopped:
        _say(f"stopped: {run.stopped}", sys.stderr)
    best = run.best if run.best.state else run.best_phase1
    if not best.state:
        raise UserError(f"the run diverged before any epoch produced a finite validation loss ({run.stopped}); "
                        "no model to keep: try a smaller --lr")
    model = best.model(run.backend)
    selected_phase = 2 if best is run.best and config.is_smartmixed else (1 if config.is_smartmixed else None)

    val = evaluate(model, run.x_val, run.y_val, config.eval_batch_size, loss=config.loss)
    test = evaluate(model, run.x_test, run.y_test, config.eval_batch_size, loss=config.loss)
    y_test = to_host(run.y_test)
    confusion = confusion_matrix(y_test, test["predictions"], run.data.num_classes)
    per_class = per_class_accuracy(confusion).tolist()
    metrics: dict[str, Any] = {
        "model": config.model,
        "dataset": config.dataset,
        "architecture": "-".join(str(s) for s in run.sizes),
        "seed": config.seed,
        "epochs_run": run.epoch,
        "transition_epoch": config.transition_epoch if config.is_smartmixed else None,
        "phase1_epochs": run.phase1_epochs if config.is_smartmixed else None,
        "selected": {"phase": selected_phase, "epoch": best.epoch},
        "best_epoch": {"phase1": run.best_phase1.epoch or None, "phase2": run.best.epoch or None},
        "val": {"loss": val["loss"], "accuracy": val["accuracy"]},
        "test": {"loss": test["loss"], "accuracy": test["accuracy"], "per_class_accuracy": per_class, "confusion_matrix": confusion.tolist()},
        "num_parameters": model.num_parameters(include_logits=False),
        "train_time_s": run.elapsed,
        "stopped_early": run.stopped,
    }
    if config.is_smartmixed and run.best_phase1.state:
        phase1 = run.best_phase1.model(run.backend)
        phase1_test = evaluate(phase1, run.x_test, run.y_test, config.eval_batch_size, loss=config.loss)
        metrics["phase1"] = {
            "epoch": run.best_phase1.epoch, "val_loss": run.best_phase1.val_loss, "val_accuracy": run.best_phase1.val_accuracy,
            "test_loss": phase1_test["loss"], "test_accuracy": phase1_test["accuracy"],
        }
        metrics["choice_shares"] = model.choice_shares() if model.phase == 2 else phase1.choice_shares()

    folder = run.run_dir
    stop_if_asked()
    save_model(folder, model, {"dataset": config.dataset, "selected": metrics["selected"], "test_accuracy": test["accuracy"],
                               "imports": list(config.imports)})
    stop_if_asked()
    write_text(folder / HISTORY, history_csv(run.history))
    if config.is_smartmixed:
        write_text(folder / CHOICES, choices_csv(model.choice_names()))
    stop_if_asked()
    try:
        from .plots import write_run_figures

        write_run_figures(folder, metrics=metrics)
    except WriteError:
        raise
    except Exception as err:  # a figure must not lose the results
        _say(f"warning: figures could not be drawn: {err}", sys.stderr)
    stop_if_asked()
    write_json(folder / METRICS, metrics)  # the finished marker: last
    _say(f"done: test accuracy {test['accuracy']:.4f} (loss {test['loss']:.4f}) of the model from epoch {best.epoch}; run folder {folder}")
    return metrics

