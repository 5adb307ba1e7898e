"""smartmixed_np: SmartMixed adaptive-activation networks with explicit, verified gradients.

The names most programs need are importable from the package itself::

    from smartmixed_np import MLP, Adam, clip_grad_norm, softmax_cross_entropy
"""

__version__ = "0.1.0"

from .activations import DEFAULT_POOL, get_activation, list_activations, register_activation
from .backend import get_backend, to_host
from .mlp import MLP
from .losses import softmax_cross_entropy
from .optim import SGD, Adam, clip_factor, clip_grad_norm
from .step import train_step

__all__ = [
    "DEFAULT_POOL",
    "MLP",
    "SGD",
    "Adam",
    "clip_factor",
    "clip_grad_norm",
    "get_activation",
    "get_backend",
    "list_activations",
    "register_activation",
    "softmax_cross_entropy",
    "to_host",
    "train_step",
    "__version__",
]
