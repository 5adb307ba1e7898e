"""One training step, as a learner writes it: forward, loss, backward, clip, update.

:func:`train_step` is the step the trainer (:mod:`smartmixed_np.experiments.train`), the
benchmarks (:mod:`smartmixed_np.experiments.bench`) and the notebooks run, so that what is
taught, what is timed and what trains are the same five lines:

1. forward: ``logits = model.forward(x, train=True)`` (phase 1 draws its Gumbel
   noise here), the network records what its backward needs;
2. loss: softmax cross-entropy (or another loss of :data:`smartmixed_np.nn.losses.LOSSES`,
   such as the authors' double softmax) and its gradient ``dlogits`` (mean over the batch);
3. backward: ``model.backward(dlogits, loss=loss)`` fills ``model.gradients()`` (the
   loss is read only by a phase-1 layer whose estimator is the score function,
   :mod:`smartmixed_np.core.estimators`);
4. clip: the global-norm factor $f = \\min(1, c / (\\lVert g \\rVert + \\epsilon))$
   (:func:`~smartmixed_np.nn.optim.clip_factor`), computed on the device;
5. update: ``optimizer.step(grads, scale=f)``, which gives the numbers of
   :func:`~smartmixed_np.nn.optim.clip_grad_norm` followed by a step, in one pass.
"""

from __future__ import annotations

from typing import Any, Callable

from .losses import get_loss
from .optim import clip_factor

__all__ = ["train_step"]


def train_step(model: Any, optimizer: Any, x: Any, y: Any, clip: float | None = None, *,
               grads: dict[str, Any] | None = None, train: bool = True,
               loss: str | Callable = "cross-entropy") -> tuple[Any, Any]:
    """Train ``model`` on one batch and return ``(loss, logits)``.

    Args:
        model: an :class:`~smartmixed_np.nn.mlp.MLP` (phase 1, phase 2 or a baseline).
        optimizer: an optimizer over ``model.parameters()`` (Adam or SGD).
        x: (B, D) inputs on the model's device, in its dtype.
        y: (B,) integer class labels on the same device.
        clip: the global gradient-norm limit, or None for no clipping.
        grads: ``model.gradients()``, when the caller keeps it (the dict holds the
            same arrays from step to step; passing it saves building it again).
        train: the forward's mode (True: phase-1 layers draw Gumbel noise).
        loss: the loss, by name (a key of :data:`~smartmixed_np.nn.losses.LOSSES`:
            ``"cross-entropy"``, the default, or ``"double-softmax"``) or as a function
            ``(logits, labels, check=False) -> (loss, dlogits)``.

    Returns:
        ``(loss, logits)``: the batch's mean loss (0-d device array) and the
        (B, C) logits, for the caller's running accuracy.
    """
    loss_fn = get_loss(loss) if isinstance(loss, str) else loss
    logits = model.forward(x, train=train)
    value, dlogits = loss_fn(logits, y, check=False)
    model.backward(dlogits, loss=value)
    grads = model.gradients() if grads is None else grads
    scale = clip_factor(grads, clip)[1] if clip is not None else None
    optimizer.step(grads, scale=scale)
    return value, logits
