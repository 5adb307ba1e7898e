"""Softmax cross-entropy on logits, with its gradient."""

from __future__ import annotations

from typing import Any

from ..backend import array_module, to_host

__all__ = ["softmax_cross_entropy", "log_softmax"]


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
    batch = logits.shape[0]
    log_probs = log_softmax(logits)
    rows = xp.arange(batch)
    loss = -xp.sum(log_probs[rows, labels]) / batch
    dlogits = xp.exp(log_probs)
    dlogits[rows, labels] = xp.expm1(log_probs[rows, labels])  # p - 1 without cancellation
    dlogits /= batch
    return loss, dlogits
