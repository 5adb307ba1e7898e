"""Loading a user's own candidate activations from the command line.

A user's module registers candidates with
:func:`smartmixed_np.activations.register_activation` when it is imported. The
``--import`` option of ``smartmixed train``/``sweep``/``evaluate`` names such modules
(an importable module name such as ``mypkg.acts``, or a path to a ``.py`` file); a
run records them in its ``config.json`` and ``model.json``, so that ``evaluate`` and
``--resume`` import them again before they rebuild the network.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Iterable

from .errors import UserError

__all__ = ["PluginError", "load_plugins"]


class PluginError(UserError, ImportError):
    """A module named by ``--import`` cannot be imported."""


_LOADED: dict[str, str] = {}


def load_plugins(specs: Iterable[str]) -> list[str]:
    """Import each module in ``specs`` once (a module name, or a path to a ``.py`` file).

    Returns:
        The specs, as given, in order.

    Raises:
        PluginError: a module that cannot be found or that fails while importing;
            the message names it and the error, in one line.
    """
    done = []
    for spec in specs:
        spec = str(spec)
        if spec not in _LOADED:
            _LOADED[spec] = _import(spec)
        done.append(spec)
    return done


def _import(spec: str) -> str:
    path = Path(spec)
    try:
        if spec.endswith(".py"):
            if not path.is_file():
                raise PluginError(f"--import {spec}: no such file")
            name = f"smartmixed_user_{abs(hash(str(path.resolve()))):x}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            if module_spec is None or module_spec.loader is None:
                raise PluginError(f"--import {spec}: not a Python module")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
            return name
        importlib.import_module(spec)
        return spec
    except PluginError:
        raise
    except ModuleNotFoundError as err:
        raise PluginError(f"--import {spec}: module not found ({err.name})") from None
    except Exception as err:  # the user's module failed: say how, in one line
        message = str(err).splitlines()[0] if str(err) else ""
        raise PluginError(f"--import {spec}: importing it failed: {type(err).__name__}: {message}") from None
