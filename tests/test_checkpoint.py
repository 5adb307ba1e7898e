"""Checkpoint files: round trip, corrupt and hostile files refused, atomic under SIGKILL."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartmixed_np.experiments import checkpoint
from smartmixed_np.experiments import runfolder
from smartmixed_np.experiments.checkpoint import load_arrays, load_model, save_arrays, save_model
from smartmixed_np.errors import CheckpointError
from smartmixed_np.nn.mlp import MLP

import hostile_files as hostile


def test_round_trip(tmp_path):
    arrays = {"a": np.arange(6.0).reshape(2, 3), "b/c": np.array([1, 2], dtype=np.int64), "flag": np.array([True])}
    meta = {"epoch": 3, "rng": {"state": 2**100}}
    save_arrays(tmp_path / "x.npz", arrays, meta)
    loaded, loaded_meta = load_arrays(tmp_path / "x.npz")
    assert loaded_meta == meta
    for name, value in arrays.items():
        np.testing.assert_array_equal(loaded[name], value)
        assert loaded[name].dtype == value.dtype


def test_object_arrays_are_never_written(tmp_path):
    with pytest.raises(TypeError, match="only numeric arrays"):
        save_arrays(tmp_path / "x.npz", {"bad": np.array([{"a": 1}], dtype=object)})


def test_pickled_content_is_refused(tmp_path):
    path = tmp_path / "hostile.npz"
    np.savez(path, __meta__=np.frombuffer(b"{}", dtype=np.uint8), payload=np.array([print], dtype=object))
    with pytest.raises(CheckpointError, match="contains pickled Python objects; refusing"):
        load_arrays(path)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[: len(b) // 2], "truncated or corrupt"),
        (lambda b: b"\x00" * len(b), "truncated or corrupt"),
        (lambda b: b"", "truncated or corrupt"),
        (lambda b: b"PK\x03\x04" + os.urandom(200), "truncated or corrupt"),
    ],
)
def test_corrupt_files_are_refused_with_the_file_named(tmp_path, damage, message):
    path = tmp_path / "ckpt.npz"
    save_arrays(path, {"w": np.ones((50, 50))}, {"k": 1})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=message) as info:
        load_arrays(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_flipped_bytes_inside_an_array_are_detected(tmp_path):
    path = tmp_path / "ckpt.npz"
    save_arrays(path, {"w": np.arange(20000, dtype=np.float64)}, {})
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0xFF  # inside the stored (uncompressed) array data
    path.write_bytes(bytes(content))
    with pytest.raises(CheckpointError, match=str(path)):
        load_arrays(path)


def test_files_without_metadata_or_with_bad_metadata(tmp_path):
    np.savez(tmp_path / "plain.npz", w=np.ones(3))
    with pytest.raises(CheckpointError, match="no metadata"):
        load_arrays(tmp_path / "plain.npz")
    np.savez(tmp_path / "badmeta.npz", __meta__=np.frombuffer(b"{not json", dtype=np.uint8))
    with pytest.raises(CheckpointError, match="corrupt metadata"):
        load_arrays(tmp_path / "badmeta.npz")
    with pytest.raises(CheckpointError, match="no such file"):
        load_arrays(tmp_path / "missing.npz")


def _saved_model(tmp_path):
    model = MLP([5, 7, 3], "smartmixed", seed=0).freeze()
    save_model(tmp_path, model)
    return model


def test_model_round_trip(tmp_path):
    model = _saved_model(tmp_path)
    loaded = load_model(tmp_path)
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    description = json.loads((tmp_path / "model.json").read_text())
    assert description["architecture"] == "5-7-3" and len(description["choices"][0]) == 7
    assert load_model(tmp_path / "model.npz").choice_names() == model.choice_names()


def test_model_with_missing_or_misshaped_arrays_is_refused(tmp_path):
    model = _saved_model(tmp_path)
    state = model.state_dict()
    del state["layers.1.bias"]
    save_arrays(tmp_path / "model.npz", state, {})
    with pytest.raises(CheckpointError, match="missing layers.1.bias"):
        load_model(tmp_path)
    state = model.state_dict()
    state["layers.0.weight"] = np.zeros((7, 4), dtype=np.float32)
    save_arrays(tmp_path / "model.npz", state, {})
    with pytest.raises(CheckpointError, match=r"has shape \(7, 4\), the network needs \(7, 5\)"):
        load_model(tmp_path)


def test_model_without_or_with_corrupt_description(tmp_path):
    _saved_model(tmp_path)
    (tmp_path / "model.json").write_text("{")
    with pytest.raises(CheckpointError, match="corrupt model description"):
        load_model(tmp_path)
    (tmp_path / "model.json").unlink()
    with pytest.raises(CheckpointError, match="model.json: no such file"):
        load_model(tmp_path)


_WRITER = """
import sys, numpy as np
from smartmixed_np.experiments.checkpoint import save_arrays
path = sys.argv[1]
version = 0
while True:
    version += 1
    big = np.full((1500, 1500), float(version))
    save_arrays(path, {"a": big, "b": big[:10] * 2}, {"version": version})
    print(version, flush=True)
"""


def test_killing_the_writer_mid_write_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "ckpt.npz"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    rng = np.random.default_rng(0)
    for attempt in range(6):
        process = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True)
        first = process.stdout.readline()  # one complete checkpoint exists from here on
        assert first.strip(), "the writer produced nothing"
        time.sleep(float(rng.uniform(0.0, 0.3)))  # then kill it somewhere inside a later write
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdout.close()
        arrays, meta = load_arrays(path)  # never a half-written file
        assert meta["version"] >= 1
        assert np.all(arrays["a"] == meta["version"]) and np.all(arrays["b"] == 2 * meta["version"])


# ---------------------------------------------------------------- hostile files
# The attacks of the reliability issue, each as a test, then fuzzers over mutations
# of real checkpoints and saved models. Cases that would hang or exhaust the memory
# on a broken loader run in a forked child with a time and an address-space limit.

needs_isolation = pytest.mark.skipif(not hostile.can_isolate(), reason="needs fork and /proc/self/statm")
MEMORY_BOUND = 32 << 20  # the most a fuzzed load of a small file may allocate (tracemalloc peak)


def _checkpoint_bytes() -> bytes:
    """A small checkpoint with the kinds of arrays the project writes (float, int, bool, Fortran order, empty)."""
    rng = np.random.default_rng(5)
    arrays = {
        "model/layers.0.weight": rng.standard_normal((3, 4)).astype(np.float32),
        "optim/step": np.array([7], dtype=np.int64),
        "mask": np.array([True, False]),
        "fortran": np.asfortranarray(rng.standard_normal((2, 3))),
        "empty": np.zeros((0, 2)),
        "scalar": np.float64(2.5),
    }
    buffer = io.BytesIO()
    payload = dict(arrays, __meta__=np.frombuffer(json.dumps({"epoch": 2, "history": [{"loss": 0.5}]}).encode(), np.uint8))
    np.savez(buffer, **payload)
    return buffer.getvalue()


CHECKPOINT_BYTES = _checkpoint_bytes()


def _write(folder: Path, content: bytes, name: str = "ckpt.npz") -> Path:
    path = folder / name
    path.write_bytes(content)
    return path


def assert_checkpoint_error(function, *paths, fragment=""):
    with pytest.raises(CheckpointError) as info:
        function()
    message = str(info.value)
    assert "\n" not in message and any(str(p) in message for p in paths), message
    assert fragment in message, message
    return message


def test_the_model_file_names_come_from_runfolder():
    assert checkpoint.MODEL_ARRAYS is runfolder.MODEL_ARRAYS and checkpoint.MODEL_JSON is runfolder.MODEL_JSON


@pytest.mark.parametrize(
    "mutation, fragment",
    [
        (hostile.AddMember("bytes", "notes.txt", b"hello"), "unexpected member 'notes.txt'"),
        (hostile.AddMember("bytes", "extra.npy", b"not an npy file"), "corrupt .npy header"),
        (hostile.AddMember("bytes", "folder/"), "unexpected member 'folder/'"),
        (hostile.AddMember("pickle", "obj.npy"), "contains pickled Python objects; refusing"),
        (hostile.AddMember("pickle_raw", "obj.npy"), "corrupt .npy header"),
        (hostile.AddMember("pickle_raw", "obj.pkl"), "unexpected member 'obj.pkl'"),
        (hostile.AddMember("array", "mask.npy"), "appears twice"),
    ],
)
def test_members_that_are_not_numeric_arrays_are_refused(tmp_path, mutation, fragment):
    path = _write(tmp_path, mutation.apply(CHECKPOINT_BYTES))
    assert_checkpoint_error(lambda: load_arrays(path), path, fragment=fragment)


@pytest.mark.parametrize("method", [1, 6, 12, 14, 98, 99])
@pytest.mark.parametrize("where", ["central", "both"])
def test_unsupported_compression_methods_are_refused(tmp_path, method, where):
    content = hostile.PatchHeader("central", 0, "method", method).apply(CHECKPOINT_BYTES)
    if where == "both":
        content = hostile.PatchHeader("local", 0, "method", method).apply(content)
    path = _write(tmp_path, content)
    assert_checkpoint_error(lambda: load_arrays(path), path, fragment=f"compression method {method}")


def test_a_deflated_checkpoint_loads(tmp_path):
    path = _write(tmp_path, hostile.Recompress(zipfile.ZIP_DEFLATED).apply(CHECKPOINT_BYTES))
    arrays, meta = load_arrays(path)
    assert meta["epoch"] == 2 and arrays["fortran"].flags.f_contiguous
    np.testing.assert_array_equal(arrays["model/layers.0.weight"], np.load(io.BytesIO(CHECKPOINT_BYTES))["model/layers.0.weight"])


@pytest.mark.parametrize(
    "shape, descr",
    [("(500000, 1000000)", "'<f8'"), ("(2**40,)", "'<f8'"), ("(4611686018427387904, 4611686018427387904)", "'<f8'"),
     ("(1000000,)", "('<f8', (1000000,))"), ("(-1,)", "'<f8'")],
)
def test_a_header_claiming_a_huge_shape_is_refused_before_allocating(tmp_path, shape, descr):
    # 3.64 TiB claimed by a 24-byte member: the claim is checked against the member's size first.
    path = _write(tmp_path, hostile.NpyHeader(0, descr, shape, False).apply(CHECKPOINT_BYTES))
    tracemalloc.start()
    try:
        assert_checkpoint_error(lambda: load_arrays(path), path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND


@needs_isolation
@pytest.mark.parametrize("claim", ["(300000000,)", "(40000, 10000)"])
def test_a_header_claiming_an_allocatable_size_is_refused_without_allocating_it(tmp_path, claim):
    # 2.4 GB / 3.2 GB is allocatable on many machines, but not in a child that may grow by 512 MiB.
    path = _write(tmp_path, hostile.NpyHeader(0, "'<f8'", claim, False).apply(CHECKPOINT_BYTES))
    outcome = hostile.run_in_child(lambda: load_arrays(path), timeout=20.0)
    assert outcome[0] == "raised" and outcome[1] == "CheckpointError", outcome
    assert "its header claims shape" in outcome[2]


@needs_isolation
def test_a_deflated_member_claiming_more_than_deflate_can_produce_is_refused(tmp_path):
    content = hostile.Recompress(zipfile.ZIP_DEFLATED).apply(CHECKPOINT_BYTES)
    content = hostile.PatchHeader("central", 0, "usize", 2**32 - 1).apply(content)
    path = _write(tmp_path, content)
    outcome = hostile.run_in_child(lambda: load_arrays(path), timeout=20.0)
    assert outcome[0] == "raised" and outcome[1] == "CheckpointError", outcome
    assert "more than deflate can produce" in outcome[2]


@pytest.mark.parametrize(
    "meta, fragment",
    [
        (b"[" * 100000 + b"]" * 100000, "nested more than 64 deep"),
        (b'{"a": ' * 5000 + b"1" + b"}" * 5000, "nested more than 64 deep"),
        (b'{"k": "\xe9t\xe9"}', "not UTF-8"),
        (b"\xff\xfe{\x00}\x00", "not UTF-8"),
        (b'{"x": ' + b"9" * 5000 + b"}", "corrupt metadata"),
        (b"[]", "not a JSON object"),
        (b"", "corrupt metadata"),
    ],
)
def test_hostile_metadata_is_refused(tmp_path, meta, fragment):
    path = _write(tmp_path, hostile.Meta(meta).apply(CHECKPOINT_BYTES))
    assert_checkpoint_error(lambda: load_arrays(path), path, fragment=fragment)


def test_metadata_that_is_not_bytes_is_refused(tmp_path):
    path = _write(tmp_path, hostile.Meta(b'{"ok": 1}' * 8, "f8").apply(CHECKPOINT_BYTES))
    assert_checkpoint_error(lambda: load_arrays(path), path, fragment="not bytes")


@needs_isolation
@pytest.mark.parametrize("target", ["fifo", "/dev/zero", "folder", "dangling"])
@pytest.mark.parametrize("which", ["model.npz", "model.json"])
def test_what_is_not_a_regular_file_is_refused_without_blocking(tmp_path, target, which):
    _saved_model(tmp_path)
    path = tmp_path / which
    path.unlink()
    if target == "fifo":
        os.mkfifo(tmp_path / "pipe")
        path.symlink_to(tmp_path / "pipe")
    elif target == "folder":
        path.mkdir()
    elif target == "dangling":
        path.symlink_to(tmp_path / "nothing")
    else:
        if not hostile.dev_zero_available():
            pytest.skip("no /dev/zero character device")
        path.symlink_to(target)
    for function in (lambda: load_model(tmp_path), lambda: load_arrays(path) if which == "model.npz" else None):
        outcome = hostile.run_in_child(function, timeout=10.0)
        assert outcome != ("timeout",), f"loading {target} as {which} hung"
        if outcome[0] == "returned":
            assert which == "model.json" and outcome[1] == "None"  # load_arrays does not read model.json
            continue
        assert outcome[1] == "CheckpointError" and str(path) in outcome[2] and "\n" not in outcome[2], outcome


def _model_files(tmp_path, frozen=False, extra=None):
    model = MLP([4, 6, 5, 3], "smartmixed", seed=1)
    model = model.freeze() if frozen else model
    save_model(tmp_path, model, extra)
    return model, json.loads((tmp_path / "model.json").read_text())


def _rewrite_description(tmp_path, edit):
    description = json.loads((tmp_path / "model.json").read_text())
    edit(description)
    (tmp_path / "model.json").write_text(json.dumps(description))


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"[" * 100000 + b"]" * 100000, "nested more than 64 deep"),
        (b'{"config": ' + b'{"a": ' * 3000 + b"1" + b"}" * 3001, "corrupt model description (JSON nested"),
        (b'{"format": "smartmixed_np.model/1", "config": {"kind": "caf\xe9"}}', "not UTF-8"),
        (b"\xfe\xff\x00{\x00}", "not UTF-8"),
        (b"[1, 2]", "corrupt model description (not a JSON object)"),
        (b"null", "corrupt model description (not a JSON object)"),
        (b'{"config": [1, 2]}', "config must be an object"),
        (b"{}", 'no "config"'),
        (b'{"x": ' + b"9" * 5000 + b"}", "corrupt model description"),
    ],
)
def test_hostile_model_descriptions_are_refused(tmp_path, content, fragment):
    _model_files(tmp_path)
    (tmp_path / "model.json").write_bytes(content)
    assert_checkpoint_error(lambda: load_model(tmp_path), tmp_path / "model.json", fragment=fragment)


def _set(path_in_config, value):
    def edit(description):
        node = description["config"]
        for key in path_in_config[:-1]:
            node = node[key]
        node[path_in_config[-1]] = value
    return edit


@pytest.mark.parametrize(
    "frozen, edit, fragment",
    [
        (False, _set(["sizes"], [4, 2**31, 5, 3]), "config.sizes must be"),
        (False, _set(["sizes"], [4, 10**9, 5, 3]), "network needs"),
        (False, _set(["sizes"], [4, 2**31 - 1, 5, 3]), "network needs (2147483647, 4)"),
        (False, _set(["sizes"], [4, 6, 5, 3] * 300), "config.sizes must be"),
        (False, _set(["sizes"], [4, -6, 5, 3]), "config.sizes must be"),
        (False, _set(["sizes"], [4, True, 5, 3]), "config.sizes must be"),
        (False, _set(["sizes"], [4, 6.0, 5, 3]), "config.sizes must be"),
        (False, _set(["sizes"], {"0": 4}), "config.sizes must be"),
        (False, _set(["sizes"], [4, 6, 5, 4]), "network needs (4, 5)"),
        (False, _set(["seed"], 10**40), "config.seed must be"),
        (False, _set(["seed"], -1), "config.seed must be"),
        (False, _set(["tau"], "0.3"), "config.tau must be"),
        (False, _set(["tau"], float("nan")), "non-standard constant NaN"),  # strict JSON: refused as it is read
        (False, _set(["tau"], 0), "config.tau must be"),
        (False, _set(["hard"], 1), "config.hard must be"),
        (False, _set(["clamp"], -1), "config.clamp must be"),
        (False, _set(["pool"], "relu,tanh"), "config.pool must be"),
        (False, _set(["pool"], ["relu"] * 5000), "config.pool must be"),
        (False, _set(["pool"], ["relu", "tanh"]), "network needs (6, 2)"),
        (False, _set(["pool"], ["relu", "nope", "tanh", "elu", "selu", "sigmoid"]), "unknown activation 'nope'"),
        (False, _set(["kind"], ["fixed"]), "config.kind must be"),
        (False, _set(["dtype"], "float16"), "config.dtype must be"),
        (False, _set(["noise_mode"], {}), "config.noise_mode must be"),
        (True, _set(["layers"], {"0": {}}), "config.layers must be"),
        (True, _set(["layers"], [{}]), "config.layers must be a list of 2"),
        (True, _set(["layers", 0], []), "config.layers[0] must be an object"),
        (True, _set(["layers", 0, "choices"], ["relu"] * 6), "config.layers[0].choices must be"),
        (True, _set(["layers", 0, "choices"], [0, 1, 2, 3, 4, 2**63]), "config.layers[0].choices must be"),
        (True, _set(["layers", 1, "order"], [0, 0, 1, 2, 3]), "config.layers[1].order must be"),
        (True, _set(["layers", 1, "order"], ["0", 1, 2, 3, 4]), "config.layers[1].order must be"),
        (True, _set(["layers", 1, "pool"], None), "config.layers[1].pool must be"),
        (True, _set(["layers", 1, "contiguous"], "yes"), "config.layers[1].contiguous must be"),
        (True, _set(["layers", 1, "clamp"], [10]), "config.layers[1].clamp must be"),
    ],
)
def test_model_descriptions_of_the_wrong_type_or_size_are_refused_before_a_network_is_built(
    tmp_path, monkeypatch, frozen, edit, fragment
):
    _model_files(tmp_path, frozen)
    _rewrite_description(tmp_path, edit)
    built = []
    original_init = MLP.__init__
    monkeypatch.setattr(MLP, "__init__", lambda self, *a, **k: built.append(a) or original_init(self, *a, **k))
    tracemalloc.start()
    try:
        message = assert_checkpoint_error(lambda: load_model(tmp_path), tmp_path / "model.json", tmp_path / "model.npz",
                                          fragment=fragment)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND
    if "unknown activation" not in message:  # names are resolved by the network itself
        assert not built, "a network was built from a description that the checks should have refused"


def test_a_description_whose_sizes_match_arrays_of_a_hostile_file_is_still_bounded(tmp_path):
    # Both files agree on a 2**31-wide layer: the arrays' headers lie about their size.
    _model_files(tmp_path)
    _rewrite_description(tmp_path, _set(["sizes"], [4, 2**31 - 1, 5, 3]))
    content = (tmp_path / "model.npz").read_bytes()
    members = [name for name, _, _ in hostile.zip_members(content)]
    content = hostile.NpyHeader(members.index("layers.0.weight.npy"), "'<f4'", "(2147483647, 4)", False).apply(content)
    (tmp_path / "model.npz").write_bytes(content)
    assert_checkpoint_error(lambda: load_model(tmp_path), tmp_path / "model.npz", fragment="its header claims shape")


@pytest.mark.parametrize("imports", ["mod", [1], [""], {"a": 1}, [["x"]], ["a\0b"]])
def test_imports_must_be_a_list_of_names(tmp_path, imports):
    _model_files(tmp_path, extra={"imports": imports})
    assert_checkpoint_error(lambda: load_model(tmp_path), tmp_path / "model.json", fragment="imports must be a list")


def test_a_module_model_json_names_is_never_imported(tmp_path, monkeypatch):
    """Importing runs code: a model file can name its modules, never make them run."""
    from smartmixed_np.experiments import plugins

    (tmp_path / "marker_plugin.py").write_text("open(__file__ + '.ran', 'w').close()\n")
    _model_files(tmp_path, extra={"imports": [str(tmp_path / "marker_plugin.py"), "some.module"]})
    calls = []
    monkeypatch.setattr(plugins, "load_plugins", lambda specs: calls.append(list(specs)) or list(specs))
    assert_checkpoint_error(lambda: load_model(tmp_path), tmp_path / "model.json", fragment="never done implicitly")
    assert calls == [] and not (tmp_path / "marker_plugin.py.ran").exists()


_PLUGIN = '''
import numpy as np
from smartmixed_np.core.activations import register_activation
register_activation("doubled_tanh", lambda x: 2 * np.tanh(x), lambda x: 2 * (1 - np.tanh(x) ** 2))
'''

_LOAD_IN_A_FRESH_PROCESS = '''
import sys
import numpy as np
from smartmixed_np.experiments import plugins
from smartmixed_np.experiments.checkpoint import load_model
plugins.load_plugins(sys.argv[3:])  # what the user names with --import
model = load_model(sys.argv[1])
x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
np.save(sys.argv[2], model.forward(x))
print(sorted(set(sum(model.choice_names(), []))))
'''


def test_a_model_with_a_user_activation_loads_in_a_fresh_process(tmp_path):
    """A run trained with --import mymodule: loading it asks for the module, and loads with it."""
    plugin = tmp_path / "user_acts.py"
    plugin.write_text(_PLUGIN)
    script = tmp_path / "load.py"
    script.write_text(_LOAD_IN_A_FRESH_PROCESS)
    code = f"""
import sys
from smartmixed_np import MLP, plugins
from smartmixed_np.experiments.checkpoint import save_model
plugins.load_plugins([{str(plugin)!r}])
model = MLP([4, 6, 3], "doubled_tanh", seed=0)
save_model({str(tmp_path / 'run')!r}, model, {{"imports": [{str(plugin)!r}]}})
import numpy as np
np.save({str(tmp_path / 'want.npy')!r}, model.forward(np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)))
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), str(tmp_path / "got.npy")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and f"pass --import {plugin}" in result.stderr
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), str(tmp_path / "got.npy"), str(plugin)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "doubled_tanh" in result.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "got.npy"), np.load(tmp_path / "want.npy"))
    # Without the import, the name is unknown, and the message says where imports go.
    description = json.loads((tmp_path / "run" / "model.json").read_text())
    description["imports"] = []
    (tmp_path / "run" / "model.json").write_text(json.dumps(description))
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), str(tmp_path / "got.npy")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "CheckpointError" in result.stderr and '"imports"' in result.stderr


# ---------------------------------------------------------------- the fuzzers
def _assert_same_as_numpy(path, arrays, meta):
    """An accepted file must hold what ``np.load`` (the independent reader) finds in it."""
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == sorted([*arrays, "__meta__"])
        for name, array in arrays.items():
            want = archive[name]
            assert array.dtype == want.dtype and array.shape == want.shape, name
            assert array.tobytes() == want.tobytes() and array.flags.f_contiguous == want.flags.f_contiguous, name
        assert meta == json.loads(archive["__meta__"].tobytes().decode("utf-8"))


@settings(max_examples=6 * settings().max_examples, deadline=None)
@given(mutations=hostile.npz_mutations)
def test_fuzz_load_arrays_returns_what_the_file_holds_or_one_line(mutations):
    """Property: load_arrays returns exactly what np.load reads from the file, or a one-line
    CheckpointError naming it; never another exception or a large allocation."""
    with tempfile.TemporaryDirectory() as folder:
        path = _write(Path(folder), hostile.apply_all(mutations, CHECKPOINT_BYTES))
        value, peak = hostile.bounded(lambda: load_arrays(path), CheckpointError)
        assert peak < MEMORY_BOUND, f"{peak / 2**20:.0f} MiB allocated"
        if isinstance(value, CheckpointError):
            hostile.assert_one_line_naming(value, path)
        else:
            _assert_same_as_numpy(path, *value)


def _model_bytes(frozen: bool) -> tuple[bytes, bytes]:
    with tempfile.TemporaryDirectory() as folder:
        _model_files(Path(folder), frozen, extra={"imports": []})
        return (Path(folder) / "model.npz").read_bytes(), (Path(folder) / "model.json").read_bytes()


MODEL_BYTES = [_model_bytes(False), _model_bytes(True)]


@settings(max_examples=6 * settings().max_examples, deadline=None)
@given(base=st.sampled_from([0, 1]), json_mutations=st.one_of(st.just(()), hostile.json_mutations),
       npz_mutations=st.one_of(st.just(()), hostile.npz_mutations))
def test_fuzz_load_model_returns_the_saved_network_or_one_line(base, json_mutations, npz_mutations):
    """Property: load_model returns a network whose config is the file's and whose
    parameters are the file's arrays, or a one-line CheckpointError naming one of its files."""
    arrays_bytes, json_bytes = MODEL_BYTES[base]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        arrays_path = _write(folder, hostile.apply_all(npz_mutations, arrays_bytes), "model.npz")
        json_path = _write(folder, hostile.apply_json(json_mutations, json_bytes), "model.json")
        value, peak = hostile.bounded(lambda: load_model(folder), CheckpointError)
        assert peak < MEMORY_BOUND, f"{peak / 2**20:.0f} MiB allocated"
        if isinstance(value, CheckpointError):
            hostile.assert_one_line_naming(value, arrays_path, json_path)
            return
        config = json.loads(json_path.read_bytes())["config"]
        defaults = MLP([2, 2, 2]).config()  # what a key the file lacks is read as (older files lack newer keys)
        for key, got in value.config().items():
            assert got == (config[key] if key in config else defaults[key]), key
        with np.load(arrays_path) as archive:
            for name, parameter in value.state_dict().items():
                np.testing.assert_array_equal(parameter, archive[name].astype(parameter.dtype))


@needs_isolation
def test_not_enough_memory_for_a_valid_checkpoint_is_one_line(tmp_path):
    # A valid 512 MiB checkpoint (written sparse) loaded by a process that may grow by 64 MiB only.
    path = tmp_path / "big.npz"
    hostile.sparse_npz(path, "w", (512, 1024, 1024))
    with np.load(path) as archive:  # it is valid: NumPy sees the array (without reading it)
        assert archive.files == ["__meta__", "w"]
    outcome = hostile.run_in_child(lambda: load_arrays(path), extra_memory=64 << 20)
    assert outcome[:2] == ("raised", "CheckpointError"), outcome
    assert outcome[2] == f"{path}: not enough memory to load array 'w' (0.50 GiB)"


def test_a_sparse_checkpoint_is_valid(tmp_path):
    # The builder of the test above, checked on a size that loads.
    path = tmp_path / "small.npz"
    hostile.sparse_npz(path, "w", (3, 5), meta=b'{"k": 1}')
    arrays, meta = load_arrays(path)
    assert meta == {"k": 1} and arrays["w"].shape == (3, 5) and not arrays["w"].any()
