"""smartmixed_np: SmartMixed adaptive-activation networks with explicit, verified gradients."""

__version__ = "0.1.0"
