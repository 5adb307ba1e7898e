"""A user's modules: imported when named, never because a file names them; failures in one line."""

from __future__ import annotations

import pytest

from smartmixed_np.core import activations
from smartmixed_np.experiments import plugins
from smartmixed_np.experiments.plugins import PluginError, load_plugins, normalize, require_loaded


@pytest.fixture
def clean(monkeypatch):
    monkeypatch.setattr(plugins, "_LOADED", {})
    monkeypatch.setattr(activations, "_REGISTRY", dict(activations._REGISTRY))


def test_a_named_module_is_imported_once_and_counts_as_loaded(tmp_path, clean, monkeypatch):
    module = tmp_path / "acts.py"
    module.write_text("import numpy as np\nfrom smartmixed_np.core.activations import register_activation\n"
                      "register_activation('plug_sq', lambda x: x * x, lambda x: 2 * x)\n"
                      "open(__file__ + '.count', 'a').write('x')\n")
    with pytest.raises(PluginError, match="never done implicitly"):
        require_loaded([str(module)], "run/model.json")
    monkeypatch.chdir(tmp_path)
    load_plugins(["acts.py"])
    load_plugins([str(module)])  # the same module by another name: not imported twice
    assert (tmp_path / "acts.py.count").read_text() == "x"
    require_loaded([str(module)], "run/model.json")
    assert normalize("acts.py") == str(module.resolve()) and normalize("pkg.mod") == "pkg.mod"
    assert activations.get_activation("plug_sq")


@pytest.mark.parametrize("body, fragment", [
    ("raise RuntimeError('no\\nway')\n", "RuntimeError: no"),
    ("raise SystemExit(0)\n", "SystemExit"),
    ("def broken(:\n", "SyntaxError"),
])
def test_a_failing_module_is_one_line(tmp_path, clean, body, fragment):
    (tmp_path / "bad.py").write_text(body)
    with pytest.raises(PluginError, match=fragment) as caught:
        load_plugins([str(tmp_path / "bad.py")])
    assert "\n" not in str(caught.value)


def test_missing_modules_are_one_line(tmp_path, clean):
    with pytest.raises(PluginError, match="no such file"):
        load_plugins([str(tmp_path / "absent.py")])
    with pytest.raises(PluginError, match="module not found"):
        load_plugins(["no_such_module_for_smartmixed"])
