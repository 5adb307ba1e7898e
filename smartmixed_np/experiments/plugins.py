"""Loading a user's own candidate activations from the command line.

A user's module registers candidates with
:func:`smartmixed_np.core.activations.register_activation` when it is imported. The
``--import`` option of ``smartmixed train``/``sweep``/``evaluate`` names such modules
(an importable module name such as ``mypkg.acts``, or a path to a ``.py`` file); a
run records them in its ``config.json`` and ``model.json``.

Importing a module runs its code, so a module is imported only when the user names
it (``--import``, :func:`load_plugins`), never because a file says so: a run folder
from elsewhere must not be able to run code by being evaluated. Loading a model or
resuming a run whose files record modules that are not loaded yet is a one-line
error that names them (:func:`require_loaded`): pass them with ``--import``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Iterable

from ..errors import UserError

__all__ = ["PluginError", "load_plugins", "require_loaded", "normalize"]


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
        key = normalize(spec)
        if key not in _LOADED:
            _LOADED[key] = _import(spec)
        done.append(spec)
    return done


def normalize(spec: str) -> str:
    """The key of a spec: a ``.py`` path made absolute, a module name as it is."""
    spec = str(spec)
    return str(Path(spec).expanduser().resolve()) if spec.endswith(".py") else spec


def require_loaded(specs: Iterable[str], where: str) -> None:
    """Raise :class:`PluginError` unless every module in ``specs`` has been imported.

    Args:
        specs: the modules a file records (``model.json``'s or ``config.json``'s ``imports``).
        where: the file, for the message.
    """
    missing = [str(spec) for spec in specs if normalize(spec) not in _LOADED]
    if missing:
        names = " ".join(f"--import {spec}" for spec in missing)
        raise PluginError(
            f"{where}: the run was trained with a user's module ({', '.join(missing)}); importing it runs its code, "
            f"so it is never done implicitly: pass {names} if you trust it"
        )


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
    except (Exception, SystemExit) as err:  # the user's module failed (or exited): say how, in one line
        message = str(err).splitlines()[0] if str(err) else ""
        raise PluginError(f"--import {spec}: importing it failed: {type(err).__name__}: {message}") from None
