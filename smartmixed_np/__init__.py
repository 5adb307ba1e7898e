"""smartmixed_np: SmartMixed adaptive-activation networks with explicit, verified gradients.

The names most programs need are importable from the package itself::

    from smartmixed_np import MLP, Adam, clip_grad_norm, softmax_cross_entropy
"""

__version__ = "0.1.0"

from . import _aliases

from .core.activations import DEFAULT_POOL, get_activation, list_activations, register_activation
from .backend import get_backend, to_host
from .nn.mlp import MLP
from .nn.losses import softmax_cross_entropy
from .nn.optim import SGD, Adam, clip_factor, clip_grad_norm
from .nn.step import train_step

_aliases.install()  # the module names of 0.1 (smartmixed_np.fixed, ...), for one release

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
