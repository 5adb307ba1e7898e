"""The module names of 0.1 (``smartmixed_np.fixed``, ``smartmixed_np.train``, ...), kept for one release.

0.2 moved every module into a subpackage (see the README's package map). An old
name still imports, with a :class:`DeprecationWarning` that names the new place:
a module that moved whole is the new module itself (so that patching or
monkeypatching it still reaches the code); a module that was split in two
(``mixture``, ``fixed``, ``optim``) is a read-only view that finds each name in
the modules it went to.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

__all__ = ["MOVED", "install"]

_EXPERIMENTS = ("train", "runfolder", "checkpoint", "sweep", "plots", "bench", "archs", "plugins")

#: Old module name -> the modules (under ``smartmixed_np``) its names went to, searched in order.
MOVED: dict[str, tuple[str, ...]] = {
    "activations": ("core.activations",),
    "linear": ("core.linear",),
    "losses": ("core.losses",),
    "gradcheck": ("core.gradcheck",),
    "optim": ("nn.optim",),
    "mixture": ("nn.layers", "core.phase1", "fast.phase1"),
    "fixed": ("nn.layers", "core.phase2", "fast.phase2", "core.activations"),
    "kernels": ("fast.kernels",),
    "compiled": ("fast.compiled",),
    "workspace": ("fast.workspace",),
    "mlp": ("nn.mlp",),
    "step": ("nn.step",),
    **{name: (f"experiments.{name}",) for name in _EXPERIMENTS},
}


class _SplitModule(types.ModuleType):
    """An old module that was split: attribute lookups go to the new modules, in order."""

    def __init__(self, name: str, targets: list[types.ModuleType]) -> None:
        super().__init__(name, f"Moved: see {', '.join(t.__name__ for t in targets)}.")
        self._targets = targets

    def __getattr__(self, attribute: str) -> Any:
        for target in self.__dict__["_targets"]:
            if hasattr(target, attribute):
                return getattr(target, attribute)
        raise AttributeError(f"module {self.__name__!r} has no attribute {attribute!r}")

    def __dir__(self) -> list[str]:
        return sorted({name for target in self._targets for name in dir(target)})


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``smartmixed_np.<old name>`` and loads it as its new module(s)."""

    def __init__(self) -> None:
        self._specs: dict[str, Any] = {}

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        package, _, old = fullname.rpartition(".")
        if package != __package__ or old not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        old = spec.name.rpartition(".")[2]
        new = [f"{__package__}.{name}" for name in MOVED[old]]
        warnings.warn(f"{spec.name} is now {' and '.join(new)}; the old name goes in the next release",
                      DeprecationWarning, stacklevel=2)
        targets = [importlib.import_module(name) for name in new]
        if len(targets) > 1:
            return _SplitModule(spec.name, targets)
        self._specs[targets[0].__name__] = targets[0].__spec__  # the import system overwrites it; exec_module puts it back
        return targets[0]

    def exec_module(self, module: types.ModuleType) -> None:
        spec = self._specs.pop(module.__name__, None)
        if spec is not None:
            module.__spec__ = spec


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once), after the standard finders."""
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
