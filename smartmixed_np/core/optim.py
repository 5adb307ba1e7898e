"""Optimizers (SGD with momentum, Adam) and global gradient-norm clipping.

Both optimizers update parameters in place and keep their state (momentum
buffers, moment estimates) in arrays allocated once, at construction, on the
parameters' device: a step allocates only small temporaries and never moves data
between host and device. Their updates are PyTorch's (``torch.optim.SGD``,
``torch.optim.Adam``) so that results are comparable with the reference.

Parameters and gradients are passed as dicts by name (``model.parameters()``,
``model.gradients()``); the optimizer state is stored by the same names, so that
:meth:`Optimizer.state_dict` can go into a checkpoint.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..backend import array_module, backend_of, get_backend, to_host

__all__ = ["Optimizer", "SGD", "Adam", "adam_update_reference", "check_max_norm", "clip_factor", "clip_grad_norm",
           "global_grad_norm"]


def global_grad_norm(grads: dict[str, Any]) -> Any:
    """$\\lVert g \\rVert_2$ over all gradient arrays together (a 0-d device array)."""
    arrays = list(grads.values())
    xp = array_module(*arrays)
    total = None
    for g in arrays:
        flat = g.reshape(-1)
        sq = xp.dot(flat, flat)
        total = sq if total is None else total + sq
    return xp.sqrt(total)


def check_max_norm(max_norm: float) -> None:
    """ValueError unless the clipping limit ``max_norm`` is positive."""
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")


def clip_factor(grads: dict[str, Any], max_norm: float, eps: float = 1e-6) -> tuple[Any, Any]:
    """The global norm and the clipping factor, without scaling anything.

    $f = \\min(1, \\mathrm{max\\_norm} / (\\lVert g \\rVert + \\epsilon))$, a 0-d device array
    of the gradients' dtype. ``optimizer.step(grads, scale=f)`` then performs the
    update of :func:`clip_grad_norm` followed by ``optimizer.step(grads)`` with the
    same numbers, without a pass that rewrites the gradients.

    Returns:
        ``(norm, factor)``, both 0-d device arrays.
    """
    check_max_norm(max_norm)
    norm = global_grad_norm(grads)
    xp = array_module(norm)
    return norm, xp.minimum(max_norm / (norm + eps), 1.0).astype(norm.dtype)


def clip_grad_norm(grads: dict[str, Any], max_norm: float, eps: float = 1e-6) -> Any:
    """Scale all gradients in place so that their global L2 norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: $g \\leftarrow g \\cdot \\min(1,
    \\mathrm{max\\_norm} / (\\lVert g \\rVert + \\epsilon))$. The factor is computed and
    applied on the device, so clipping never waits for the GPU.

    Returns:
        The norm before clipping, a 0-d device array.
    """
    norm, factor = clip_factor(grads, max_norm, eps)
    for g in grads.values():
        g *= factor
    return norm


class Optimizer:
    """Base class: holds the parameters by name and the step count."""

    def __init__(self, params: dict[str, Any], lr: float) -> None:
        if not isinstance(params, dict) or not params:
            raise ValueError("an optimizer needs a non-empty dict of parameters by name (model.parameters())")
        if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
            raise ValueError(f"learning rate must be a positive number, got {lr!r}")
        self.params = params
        self.lr = float(lr)
        self.step_count = 0

    def _buffers(self) -> dict[str, dict[str, Any]]:
        """{buffer kind: {param name: array}}; subclasses list their state here."""
        return {}

    def _check_grads(self, grads: dict[str, Any]) -> None:
        if grads.keys() != self.params.keys():
            missing = sorted(set(self.params) - set(grads))
            extra = sorted(set(grads) - set(self.params))
            raise ValueError(f"gradients do not match the parameters (missing {missing}, unexpected {extra})")

    def step(self, grads: dict[str, Any], scale: Any = None) -> None:
        """One update of every parameter, in place.

        Args:
            grads: gradients by parameter name (read, never written).
            scale: optional factor (a number or 0-d array, e.g. from :func:`clip_factor`)
                that every gradient is multiplied by first.
        """
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Host copies of the optimizer state: ``{"step": int, "<kind>.<name>": array}``."""
        state: dict[str, Any] = {"step": self.step_count, "lr": self.lr}
        for kind, buffers in self._buffers().items():
            for name, buf in buffers.items():
                state[f"{kind}.{name}"] = to_host(buf).copy()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (names and shapes must match)."""
        for kind, buffers in self._buffers().items():
            for name, buf in buffers.items():
                key = f"{kind}.{name}"
                if key not in state:
                    raise ValueError(f"optimizer state is missing {key!r}")
                value = np.asarray(state[key])
                if value.shape != tuple(buf.shape):
                    raise ValueError(f"optimizer state {key!r} has shape {value.shape}, expected {tuple(buf.shape)}")
                buf[...] = backend_of(buf).asarray(value, dtype=buf.dtype)
        self.step_count = int(state["step"])
        self.lr = float(state.get("lr", self.lr))


class SGD(Optimizer):
    """SGD with momentum, as ``torch.optim.SGD``.

    $g' = g + \\lambda p$; $v \\leftarrow \\mu v + (1 - d) g'$ (the first step sets
    $v = g'$); $p \\leftarrow p - \\eta (g' + \\mu v)$ with Nesterov, else
    $p \\leftarrow p - \\eta v$. With $\\mu = 0$ it is plain SGD.

    Args:
        params: parameters by name. lr: $\\eta$. momentum: $\\mu$. dampening: $d$.
        weight_decay: $\\lambda$ (L2). nesterov: Nesterov momentum.
    """

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, lr)
        if momentum < 0 or weight_decay < 0:
            raise ValueError("momentum and weight_decay must be non-negative")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and zero dampening")
        self.momentum, self.dampening, self.weight_decay, self.nesterov = momentum, dampening, weight_decay, nesterov
        self.velocity = {name: array_module(p).zeros_like(p) for name, p in params.items()} if momentum else {}

    def _buffers(self):
        return {"velocity": self.velocity} if self.momentum else {}

    def step(self, grads: dict[str, Any], scale: Any = None) -> None:
        """One update of every parameter, in place (see :meth:`Optimizer.step`)."""
        self._check_grads(grads)
        first = self.step_count == 0
        for name, p in self.params.items():
            g = grads[name] if scale is None else grads[name] * scale
            if self.weight_decay:
                g = g + self.weight_decay * p
            if self.momentum:
                v = self.velocity[name]
                if first:
                    v[...] = g
                else:
                    v *= self.momentum
                    v += (1 - self.dampening) * g
                g = g + self.momentum * v if self.nesterov else v
            p -= self.lr * g
        self.step_count += 1


class Adam(Optimizer):
    """Adam with bias correction, as ``torch.optim.Adam``.

    $m \\leftarrow \\beta_1 m + (1-\\beta_1) g$, $v \\leftarrow \\beta_2 v + (1-\\beta_2) g^2$,
    $p \\leftarrow p - \\eta \\frac{m / (1-\\beta_1^t)}{\\sqrt{v / (1-\\beta_2^t)} + \\epsilon}$,
    with $g = \\nabla + \\lambda p$ when ``weight_decay`` $\\lambda > 0$ (L2, not AdamW).

    The update is computed as PyTorch computes it, with the step size and the
    bias corrections folded into two scalars: by :func:`adam_update_reference`
    (NumPy or CuPy, one scratch buffer per parameter), or by an ``engine`` given at
    construction, a module with ``applies(*arrays)`` and an ``adam_update`` that gives
    bitwise the same numbers (:mod:`smartmixed_np.fast.compiled`, its one-pass twin on
    host arrays). This class, the reference, takes none unless given one;
    :class:`smartmixed_np.nn.optim.Adam`, the one the package exports, passes the
    compiled loops when they are on.

    State: ``m`` and ``v`` (the moment estimates, by parameter name, allocated here);
    ``fast_path``, the engine given at construction, or None; ``_scratch``, the reference update's buffer per parameter, filled in the
    first time a parameter takes the reference path (never, for host parameters
    under the compiled engine).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, engine: Any = None):
        super().__init__(params, lr)
        beta1, beta2 = betas
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if not eps > 0 or weight_decay < 0:
            raise ValueError("eps must be positive and weight_decay non-negative")
        self.beta1, self.beta2, self.eps, self.weight_decay = float(beta1), float(beta2), float(eps), float(weight_decay)
        zeros = lambda p: array_module(p).zeros_like(p)  # noqa: E731
        self.m = {name: zeros(p) for name, p in params.items()}
        self.v = {name: zeros(p) for name, p in params.items()}
        self.fast_path = engine
        self._scratch: dict[str, Any] = {}

    def _buffers(self):
        return {"m": self.m, "v": self.v}

    def step(self, grads: dict[str, Any], scale: Any = None) -> None:
        """One update of every parameter, in place (see :meth:`Optimizer.step`)."""
        self._check_grads(grads)
        self.step_count += 1
        settings = self._settings()
        fast = self.fast_path
        host_scale = host_number(scale) if fast is not None else None
        for name, p in self.params.items():
            m, v, g = self.m[name], self.v[name], grads[name]
            if host_scale is not None and fast.applies(p, g, m, v):
                fast.adam_update(p, g, m, v, scale=host_scale, **settings)
            else:
                adam_update_reference(p, g, m, v, scratch=self._scratch_for(name), scale=scale, **settings)

    def _settings(self) -> dict[str, float]:
        """The update's constants at step ``step_count``: the step size $\\eta / (1 - \\beta_1^t)$
        and the bias correction $1/\\sqrt{1 - \\beta_2^t}$ folded in, as PyTorch folds them."""
        t = self.step_count
        return dict(beta1=self.beta1, beta2=self.beta2, eps=self.eps, step_size=self.lr / (1 - self.beta1**t),
                    inv_sqrt_bc2=1.0 / math.sqrt(1 - self.beta2**t), weight_decay=self.weight_decay)

    def _scratch_for(self, name: str) -> Any:
        """The reference update's scratch buffer like parameter ``name`` (allocated the first time)."""
        buffer = self._scratch.get(name)
        if buffer is None:
            buffer = self._scratch[name] = array_module(self.params[name]).empty_like(self.params[name])
        return buffer


def host_number(scale: Any) -> float | None:
    """``scale`` as a Python float when it lives on the host (None: 1.0), else None: the compiled
    update takes its clipping factor as a host number, so only a host (or no) scale qualifies."""
    if scale is None:
        return 1.0
    return float(scale) if backend_of(scale) in (None, get_backend("numpy")) else None


def adam_update_reference(
    p: Any, g: Any, m: Any, v: Any, *, scratch: Any, beta1: float, beta2: float, eps: float,
    step_size: float, inv_sqrt_bc2: float, weight_decay: float, scale: Any = None,
) -> None:
    """One Adam update of ``p``, ``m``, ``v`` in place, one array operation at a time.

    $m \\leftarrow \\beta_1 m + (1-\\beta_1) g$, $v \\leftarrow \\beta_2 v + (1-\\beta_2) g^2$,
    $p \\leftarrow p - s\\, m / (\\sqrt{v}\\, r + \\epsilon)$, where $s$ = ``step_size`` =
    $\\eta / (1 - \\beta_1^t)$ and $r$ = ``inv_sqrt_bc2`` = $1/\\sqrt{1 - \\beta_2^t}$, with
    $g \\leftarrow g + \\lambda p$ first when ``weight_decay`` $\\lambda \\ne 0$, and before
    that $g \\leftarrow g \\cdot$ ``scale`` when a scale is given. This is
    ``torch.optim.Adam``'s arithmetic. Any array module; all arrays of one shape;
    ``scratch`` is overwritten. :func:`smartmixed_np.fast.compiled.adam_update` computes
    the same numbers in one pass.
    """
    xp = array_module(p)
    # Python floats: NumPy then rounds each to the arrays' dtype (a NumPy float64
    # scalar would instead promote the arithmetic to float64).
    beta1, beta2, eps, step_size, inv_sqrt_bc2 = map(float, (beta1, beta2, eps, step_size, inv_sqrt_bc2))
    if scale is not None:
        g = g * scale
    if weight_decay:
        g = g + float(weight_decay) * p
    m *= beta1
    xp.multiply(g, 1 - beta1, out=scratch)
    m += scratch
    v *= beta2
    xp.multiply(g, g, out=scratch)
    scratch *= 1 - beta2
    v += scratch
    # scratch <- sqrt(v) * r + eps ; p -= s * m / scratch
    xp.sqrt(v, out=scratch)
    scratch *= inv_sqrt_bc2
    scratch += eps
    xp.divide(m, scratch, out=scratch)
    scratch *= step_size
    p -= scratch
