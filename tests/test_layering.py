"""The package's layering (pyproject.toml's [tool.importlinter] contracts), checked by import-linter.

Three contracts: the layers (the CLI above the report and the experiment side, above the
network, above the fast paths, above the reference core, above the shared ground), so that
the core imports nothing from the experiment side or the CLI; only ``smartmixed_np.backend``
imports CuPy; no import cycles between sibling modules.
The first test runs ``lint-imports`` on the package; the others plant a violation of
each contract in a copy of the package and check that the contract then breaks, so that
the contracts are known to be able to fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="import-linter is not installed (the dev extra has it)")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "smartmixed_np"
CONTRACTS = {
    "layers": "Each layer imports only the layers below it",
    "cupy-only-in-backend": "Only smartmixed_np.backend imports CuPy",
    "no-cycles": "No import cycles between sibling modules (the core's included)",
}


def _lint(package_parent: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with this repository's contracts on the ``smartmixed_np`` under ``package_parent``."""
    env = dict(os.environ, PYTHONPATH=str(package_parent))
    # lint-imports puts its working directory first on the path: run it where the package lies.
    run = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(sys.argv[1], no_cache=True, no_logo=True))"
    command = [sys.executable, "-c", run, str(ROOT / "pyproject.toml")]
    return subprocess.run(command, cwd=package_parent, env=env, capture_output=True, text=True, timeout=120)


def _verdicts(output: str) -> dict[str, str]:
    """{contract id: "KEPT" or "BROKEN"} from lint-imports' summary lines."""
    verdicts = {}
    for key, name in CONTRACTS.items():
        for line in output.splitlines():
            if line.startswith(name + " "):
                verdicts[key] = line.rsplit(" ", 1)[-1]
    return verdicts


def test_the_package_keeps_its_layering_contracts():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _verdicts(result.stdout) == {key: "KEPT" for key in CONTRACTS}


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """A copy of the package under tmp_path, to plant violations in."""
    shutil.copytree(PACKAGE, tmp_path / "smartmixed_np", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _plant(parent: Path, module: str, code: str) -> None:
    path = parent / "smartmixed_np" / module
    path.write_text(path.read_text() + "\n\n" + code + "\n")


@pytest.mark.parametrize(
    "module, code, broken",
    [
        # (an upward import is a circle between subpackages too: the upper one imports the lower)
        # the core reaching up to the trainer, inside a function
        ("core/phase1.py", "def _planted():\n    from ..experiments import train\n", {"layers", "no-cycles"}),
        # the reference reaching for a fast path (the circle compiled and fixed once formed)
        ("core/phase2.py", "def _planted():\n    from ..fast import compiled\n", {"layers", "no-cycles"}),
        # a fast path reaching up to the layers that choose it
        ("fast/kernels.py", "def _planted():\n    from ..nn import engines\n", {"layers", "no-cycles"}),
        # the datasets reaching up to the trainer (a cycle too: train imports data)
        ("data/idx.py", "def _planted():\n    from ..experiments import train\n", {"layers", "no-cycles"}),
        # CuPy imported outside backend, inside a function, whether or not CuPy is installed
        ("nn/layers.py", "def _planted():\n    import cupy\n", {"cupy-only-in-backend"}),
        ("report/stats.py", "def _planted():\n    import cupyx.scipy\n", {"cupy-only-in-backend"}),
        # a circle inside the core: activations <- phase2, and now activations -> phase2
        ("core/activations.py", "def _planted():\n    from . import phase2\n", {"no-cycles"}),
        # a circle inside the fast paths: compiled <- phase1, and now compiled -> phase1
        ("fast/compiled.py", "def _planted():\n    from . import phase1\n", {"no-cycles"}),
    ],
)
def test_a_planted_violation_breaks_its_contract(package_copy, module, code, broken):
    _plant(package_copy, module, code)
    result = _lint(package_copy)
    assert result.returncode != 0
    assert _verdicts(result.stdout) == {key: "BROKEN" if key in broken else "KEPT" for key in CONTRACTS}, result.stdout
