"""The training losses on logits, each with its gradient.

* :func:`softmax_cross_entropy`, ours (the default, ``"cross-entropy"``): the
  cross-entropy of softmax(logits).
* :func:`double_softmax_cross_entropy`, the authors' (``"double-softmax"``): their
  output layer is a softmax whose probabilities go into a loss that applies a
  softmax again (PyTorch's ``nn.CrossEntropyLoss`` after ``nn.Softmax``).

:data:`LOSSES` names them; :func:`get_loss` looks one up by that name.
"""

from __future__ import annotations

from typing import Any

from ..backend import array_module, to_host

__all__ = ["softmax_cross_entropy", "double_softmax_cross_entropy", "log_softmax", "LOSSES", "get_loss"]


def log_softmax(logits: Any) -> Any:
    """$\\log \\mathrm{softmax}(s)_c = s_c - m - \\log(1 + \\sum_{j \\ne j^*} e^{s_j - m})$, $m = s_{j^*} = \\max_j s_j$.

    Subtracting the maximum keeps every exponent <= 0 (no overflow); taking the
    maximum's own term, exactly $e^0 = 1$, out of the sum and using ``log1p`` keeps
    the small losses of confident predictions accurate to full relative precision
    ($\\log(1 + x)$ computed as written would round $x < 10^{-16}$ away).

    Args:
        logits: (B, C).

    Returns:
        (B, C) log-probabilities.
    """
    xp = array_module(logits)
    rows = xp.arange(logits.shape[0])
    top = xp.argmax(logits, axis=1)
    shifted = logits - logits[rows, top][:, None]
    others = xp.exp(shifted)
    others[rows, top] = 0
    return shifted - xp.log1p(xp.sum(others, axis=1, keepdims=True))


def _check_inputs(logits: Any, labels: Any) -> None:
    """Refuse what a loss cannot take: (B, C) logits, B >= 1, (B,) integer labels in [0, C)."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (B, C), got shape {tuple(logits.shape)}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must be 1-D (B,) with B={logits.shape[0]}, got shape {tuple(labels.shape)}")
    if logits.shape[0] == 0:
        raise ValueError("cannot compute a loss over an empty batch")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    low, high = int(to_host(labels.min())), int(to_host(labels.max()))
    if low < 0 or high >= logits.shape[1]:
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got values in [{low}, {high}]")


def softmax_cross_entropy(logits: Any, labels: Any, *, check: bool = True) -> tuple[Any, Any]:
    """Mean cross-entropy of integer labels under softmax(logits), and its gradient.

    $L = -\\frac{1}{B}\\sum_b \\log p_{b, y_b}$, $p = \\mathrm{softmax}(s)$;
    $\\partial L / \\partial s = (p - \\mathrm{onehot}(y)) / B$.

    Args:
        logits: (B, C) scores, float.
        labels: (B,) integer classes in ``[0, C)``, on the same device.
        check: validate shapes, dtype and label range. The range check reads two
            numbers back from the device; a training loop whose labels were
            validated once at load time passes ``check=False``.

    Returns:
        ``loss``, a 0-d array (kept on the device: read it with ``float()`` when
        needed), and ``dlogits`` (B, C).

    Raises:
        ValueError: wrong ranks, mismatched batch sizes, empty batch, labels out of range.
        TypeError: non-integer labels.
    """
    xp = array_module(logits)
    if check:
        _check_inputs(logits, labels)
    batch = logits.shape[0]
    log_probs = log_softmax(logits)
    rows = xp.arange(batch)
    loss = -xp.sum(log_probs[rows, labels]) / batch
    dlogits = xp.exp(log_probs)
    dlogits[rows, labels] = xp.expm1(log_probs[rows, labels])  # p - 1 without cancellation
    dlogits /= batch
    return loss, dlogits


def double_softmax_cross_entropy(logits: Any, labels: Any, *, check: bool = True) -> tuple[Any, Any]:
    """Mean cross-entropy of integer labels under softmax(softmax(logits)), and its gradient.

    The authors' loss: $p = \\mathrm{softmax}(s)$, $q = \\mathrm{softmax}(p)$,
    $L = -\\frac{1}{B}\\sum_b \\log q_{b, y_b}$. Backward, through the two softmaxes:
    $\\partial L / \\partial p = (q - \\mathrm{onehot}(y)) / B =: dp$ and
    $\\partial L / \\partial s = p \\odot (dp - \\langle p, dp \\rangle)$ (row by row).

    Stability: $p$ comes from :func:`log_softmax` (no overflow for any logits) and lies
    in [0, 1], so the second softmax, :func:`log_softmax` of $p$, never overflows
    either. Because $p$ lies in [0, 1], $q_y \\le e / (e + C - 1)$: the loss never
    falls below $\\log(1 + (C - 1)/e)$ (about 1.46 for C = 10), and its
    gradient vanishes as $p$ saturates, which is what the double softmax changes.

    Args:
        logits: (B, C) scores, float.
        labels: (B,) integer classes in ``[0, C)``, on the same device.
        check: validate shapes, dtype and label range (as :func:`softmax_cross_entropy`).

    Returns:
        ``loss``, a 0-d array, and ``dlogits`` (B, C).

    Raises:
        ValueError, TypeError: as :func:`softmax_cross_entropy`.
    """
    xp = array_module(logits)
    if check:
        _check_inputs(logits, labels)
    probs = xp.exp(log_softmax(logits))  # p (B, C)
    loss, dprobs = softmax_cross_entropy(probs, labels, check=False)  # -mean log softmax(p)_y, dp
    dlogits = probs * (dprobs - xp.sum(probs * dprobs, axis=1, keepdims=True))
    return loss, dlogits


#: The losses by the name ``--loss`` takes.
LOSSES = {"cross-entropy": softmax_cross_entropy, "double-softmax": double_softmax_cross_entropy}


def get_loss(name: str) -> Any:
    """The loss function called ``name`` (a key of :data:`LOSSES`); ValueError naming them else."""
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}") from None
