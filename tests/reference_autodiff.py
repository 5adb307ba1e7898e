"""An independent second opinion: a tiny tape-based autodiff and the same network in it.

Nothing here uses smartmixed_np's layers or derivative formulas. Each primitive
(add, mul, matmul, exp, ...) knows only its own local derivative; the network is
composed from primitives exactly as the PyTorch reference composes it, including
the straight-through trick ``onehot - detach(y) + y`` and the two clamps. If the
hand-written backward passes of smartmixed_np agree with this to rounding error,
both are very probably right.
"""

from __future__ import annotations

import numpy as np


class Var:
    """A node: a float64 value, its gradient, and how to push the gradient to its parents."""

    def __init__(self, value, parents=(), push=None):
        self.value = np.asarray(value, dtype=np.float64)
        self.parents = parents
        self.push = push  # push(grad) -> one gradient per parent
        self.grad = None


def const(value) -> Var:
    return Var(value)


def _unbroadcast(grad, shape):
    while grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    for axis, size in enumerate(shape):
        if size == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis=axis, keepdims=True)
    return grad


def add(a, b):
    return Var(a.value + b.value, (a, b), lambda g: (_unbroadcast(g, a.value.shape), _unbroadcast(g, b.value.shape)))


def sub(a, b):
    return Var(a.value - b.value, (a, b), lambda g: (_unbroadcast(g, a.value.shape), _unbroadcast(-g, b.value.shape)))


def mul(a, b):
    return Var(
        a.value * b.value,
        (a, b),
        lambda g: (_unbroadcast(g * b.value, a.value.shape), _unbroadcast(g * a.value, b.value.shape)),
    )


def div(a, b):
    return Var(
        a.value / b.value,
        (a, b),
        lambda g: (_unbroadcast(g / b.value, a.value.shape), _unbroadcast(-g * a.value / b.value**2, b.value.shape)),
    )


def scale(a, c: float):
    return Var(a.value * c, (a,), lambda g: (g * c,))


def matmul(a, b):
    return Var(a.value @ b.value, (a, b), lambda g: (g @ b.value.T, a.value.T @ g))


def transpose(a):
    return Var(a.value.T, (a,), lambda g: (g.T,))


def exp(a):
    e = np.exp(a.value)
    return Var(e, (a,), lambda g: (g * e,))


def log(a):
    return Var(np.log(a.value), (a,), lambda g: (g / a.value,))


def where(condition, a, b):
    """``condition`` is a constant boolean array."""
    return Var(
        np.where(condition, a.value, b.value),
        (a, b),
        lambda g: (_unbroadcast(np.where(condition, g, 0.0), a.value.shape), _unbroadcast(np.where(condition, 0.0, g), b.value.shape)),
    )


def clip(a, lo, hi):
    inside = (a.value >= lo) & (a.value <= hi)  # torch.clamp passes the gradient at the edges
    return Var(np.clip(a.value, lo, hi), (a,), lambda g: (g * inside,))


def sum_(a, axis=None, keepdims=False):
    def push(g):
        if axis is not None and not keepdims:
            g = np.expand_dims(g, axis)
        return (np.broadcast_to(g, a.value.shape).copy(),)

    return Var(a.value.sum(axis=axis, keepdims=keepdims), (a,), push)


def detach(a):
    return Var(a.value.copy())


def backward(loss: Var) -> None:
    order, seen = [], set()

    def visit(node):
        if id(node) in seen:
            return
        seen.add(id(node))
        for parent in node.parents:
            visit(parent)
        order.append(node)

    visit(loss)
    for node in order:
        node.grad = np.zeros_like(node.value)
    loss.grad = np.ones_like(loss.value)
    for node in reversed(order):
        if node.push is not None:
            for parent, g in zip(node.parents, node.push(node.grad)):
                parent.grad = parent.grad + g


# ----------------------------------------------------------------- the network
def _zero_like(z):
    return const(np.zeros_like(z.value))


CANDIDATES = {
    "relu": lambda z: where(z.value > 0, z, _zero_like(z)),
    "sigmoid": lambda z: div(const(1.0), add(const(1.0), exp(scale(z, -1.0)))),
    "tanh": lambda z: div(sub(exp(scale(z, 2.0)), const(1.0)), add(exp(scale(z, 2.0)), const(1.0))),
    "leaky_relu": lambda z: where(z.value > 0, z, scale(z, 0.01)),
    "elu": lambda z: where(z.value > 0, z, sub(exp(z), const(1.0))),
    "selu": lambda z: scale(where(z.value > 0, z, scale(sub(exp(z), const(1.0)), 1.6732632423543772)), 1.0507009873554805),
}


def softmax_last(s):
    shifted = sub(s, const(s.value.max(axis=-1, keepdims=True)))
    e = exp(shifted)
    return div(e, sum_(e, axis=-1, keepdims=True))


def network_loss(params: dict, x, labels, layer_specs, tau=0.3, clamp=10.0):
    """Cross-entropy of a SmartMixed/fixed MLP built from primitives.

    Args:
        params: ``{name: Var}`` with smartmixed_np's parameter names.
        x: (B, D) host array. labels: (B,) host ints.
        layer_specs: per hidden layer, ``("uniform", name)``, ``("hard", noise)``
            (noise (N, K) or None), or ``("soft", noise)``.

    Returns:
        The loss Var (mean cross-entropy).
    """
    names = list(CANDIDATES)
    h = const(x)
    for i, (kind, extra) in enumerate(layer_specs):
        z = add(matmul(h, transpose(params[f"layers.{i}.weight"])), params[f"layers.{i}.bias"])
        if kind == "uniform":
            h = CANDIDATES[extra](z)
            continue
        logits = params[f"activations.{i}.logits"]
        s = logits if extra is None else add(logits, const(extra))
        y = softmax_last(scale(s, 1.0 / tau))  # (N, K)
        if kind == "hard":
            onehot = np.zeros_like(y.value)
            onehot[np.arange(y.value.shape[0]), y.value.argmax(axis=1)] = 1.0
            y = add(sub(const(onehot), detach(y)), y)  # straight-through
        out = None
        for k, name in enumerate(names):
            a_k = clip(CANDIDATES[name](z), -clamp, clamp)
            w_k = Var(y.value[:, k], (y,), lambda g, k=k, shape=y.value.shape: (_column_grad(g, k, shape),))
            term = mul(a_k, w_k)
            out = term if out is None else add(out, term)
        h = clip(out, -clamp, clamp)
    last = len(layer_specs)
    scores = add(matmul(h, transpose(params[f"layers.{last}.weight"])), params[f"layers.{last}.bias"])
    shifted = sub(scores, const(scores.value.max(axis=1, keepdims=True)))
    log_probs = sub(shifted, log(sum_(exp(shifted), axis=1, keepdims=True)))
    picked = mul(log_probs, const(np.eye(scores.value.shape[1])[labels]))
    return scale(sum_(picked), -1.0 / x.shape[0])


def _column_grad(g, k, shape):
    full = np.zeros(shape)
    full[:, k] = g.sum(axis=0) if g.ndim == 2 else g
    return full
