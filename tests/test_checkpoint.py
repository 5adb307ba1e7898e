"""Checkpoint files: round trip, corrupt and hostile files refused, atomic under SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from smartmixed_np.checkpoint import load_arrays, load_model, save_arrays, save_model
from smartmixed_np.errors import CheckpointError
from smartmixed_np.mlp import MLP


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
from smartmixed_np.checkpoint import save_arrays
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
