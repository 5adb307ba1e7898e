"""The module names of 0.1 still import, for one release, with a warning that names the new place."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import smartmixed_np
from smartmixed_np._aliases import MOVED


def _forget(old: str) -> None:
    """Undo an earlier import of an old name, so that the next one goes through the alias again."""
    sys.modules.pop(f"smartmixed_np.{old}", None)
    smartmixed_np.__dict__.pop(old, None)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_each_old_module_name_imports_with_a_warning_naming_its_new_place(old):
    _forget(old)
    with pytest.deprecated_call(match=f"smartmixed_np.{old} is now smartmixed_np.{MOVED[old][0]}"):
        module = importlib.import_module(f"smartmixed_np.{old}")
    for new in MOVED[old]:
        target = importlib.import_module(f"smartmixed_np.{new}")
        for name in getattr(target, "__all__", []):
            assert hasattr(module, name), (old, name)


def test_a_module_that_moved_whole_is_the_new_module_itself():
    """So that patching the old name reaches the code; its own spec is left as it was."""
    _forget("compiled")
    with pytest.deprecated_call():
        from smartmixed_np import compiled as old
    from smartmixed_np.fast import compiled

    assert old is compiled and compiled.__spec__.name == "smartmixed_np.fast.compiled"


def test_a_split_module_finds_each_name_where_it_went():
    _forget("fixed")
    with pytest.deprecated_call():
        from smartmixed_np.fixed import FixedMixedActivation, clamp_limits, fixed_forward, grouped_forward_fused
    from smartmixed_np.core.activations import clamp_limits as new_clamp_limits
    from smartmixed_np.core.phase2 import fixed_forward as new_fixed_forward
    from smartmixed_np.fast.phase2 import grouped_forward_fused as new_fused
    from smartmixed_np.nn.layers import FixedMixedActivation as new_layer

    assert (FixedMixedActivation, clamp_limits, fixed_forward, grouped_forward_fused) == (
        new_layer, new_clamp_limits, new_fixed_forward, new_fused)
    with pytest.raises(ImportError):
        exec("from smartmixed_np.fixed import no_such_name", {})


def test_old_names_work_in_a_fresh_interpreter_and_warn_at_the_users_line():
    code = "import warnings; warnings.simplefilter('always')\nfrom smartmixed_np.mlp import MLP\nprint(MLP([2, 3, 2]).phase)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    assert '<string>:2: DeprecationWarning: smartmixed_np.mlp is now smartmixed_np.nn.mlp' in done.stderr


def test_mlp_kind_is_a_deprecated_view_of_phase():
    model = smartmixed_np.MLP([3, 4, 2])
    with pytest.deprecated_call(match="MLP.phase"):
        assert model.kind == "smartmixed"
    with pytest.deprecated_call():
        assert model.freeze().kind == "fixed"
    assert (model.phase, model.freeze().phase) == (1, 2)
    assert model.config()["kind"] == "smartmixed"  # model.json keeps its format
