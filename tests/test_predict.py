"""Predictions on a user's files: IDX, .npy, PNG and JPEG read as the dataset was; bad files skipped, one line each."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smartmixed_np import MLP
from smartmixed_np.cli import main
from smartmixed_np.data.idx import write_idx
from smartmixed_np.experiments.predict import InputError, predict, predictions_csv, read_inputs

DATA = os.environ.get("SMARTMIXED_DATA")
needs_mnist = pytest.mark.skipif(
    not DATA or not (Path(DATA) / "mnist").is_dir(), reason="real MNIST: set SMARTMIXED_DATA to a folder holding mnist/"
)


def _softmax(logits):
    e = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _rows(text):
    return list(csv.DictReader(io.StringIO(text)))


def _digits(n=12, seed=0):
    """(n, 28, 28) uint8 images with some structure (a bright blob on black)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        cy, cx, r = rng.uniform(8, 20), rng.uniform(8, 20), rng.uniform(3, 8)
        images[i] = np.clip(255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)), 0, 255).astype(np.uint8)
    return images


@pytest.fixture(scope="module")
def model():
    return MLP([784, 32, 16, 10], "smartmixed", seed=2).freeze()


def _pixels(images):
    return images.reshape(len(images), -1).astype(np.float32) / np.float32(255)


# --------------------------------------------------------------------------- readers
def test_npy_shapes_and_dtypes_are_read_as_the_dataset_was(tmp_path):
    images = _digits(5)
    expected = _pixels(images)
    cases = {
        "n784.npy": images.reshape(5, 784),
        "n28x28.npy": images,
        "float.npy": expected,
        "int64.npy": images.astype(np.int64),
    }
    for name, array in cases.items():
        np.save(tmp_path / name, array)
        np.testing.assert_array_equal(read_inputs(tmp_path / name, 784), expected, err_msg=name)
    np.save(tmp_path / "one.npy", images[0])
    np.testing.assert_array_equal(read_inputs(tmp_path / "one.npy", 784), expected[:1])
    np.testing.assert_array_equal(read_inputs(tmp_path / "one.npy", 784, invert=True), 1 - expected[:1])


@pytest.mark.parametrize("array, reason", [
    (np.zeros((3, 100), np.uint8), "shape (3, 100)"),
    (np.full((2, 784), 255.0, np.float32), "must lie in [0, 1]"),
    (np.full((2, 784), 300, np.int32), "pixel values lie in 0..255"),
    (np.array([[np.nan] * 784], np.float32), "NaN"),
    (np.zeros((0, 784), np.uint8), "no examples"),
])
def test_unusable_arrays_give_a_reason(tmp_path, array, reason):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(InputError, match=reason.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        read_inputs(tmp_path / "bad.npy", 784)


def test_hostile_npy_files_are_refused_without_loading_them(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="pickle"):
        read_inputs(tmp_path / "objects.npy", 784)
    np.save(tmp_path / "full.npy", np.zeros((100, 784), np.uint8))
    data = (tmp_path / "full.npy").read_bytes()
    (tmp_path / "truncated.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        read_inputs(tmp_path / "truncated.npy", 784)
    (tmp_path / "header.npy").write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': nonsense")
    with pytest.raises(InputError, match="corrupt .npy header"):
        read_inputs(tmp_path / "header.npy", 784)


def test_images_of_any_size_become_28x28_gray(tmp_path):
    images = _digits(3)
    Image.fromarray(images[0], "L").save(tmp_path / "plain.png")
    Image.fromarray(images[1], "L").resize((56, 56), Image.Resampling.NEAREST).save(tmp_path / "big.png")
    Image.fromarray(np.stack([images[2]] * 3, axis=-1), "RGB").save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_inputs(tmp_path / "plain.png", 784), _pixels(images[:1]))
    np.testing.assert_array_equal(read_inputs(tmp_path / "big.png", 784), _pixels(images[1:2]))  # a box filter undoes 2x
    np.testing.assert_array_equal(read_inputs(tmp_path / "rgb.png", 784), _pixels(images[2:3]))
    Image.fromarray(images[0], "L").resize((300, 200)).save(tmp_path / "photo.jpg", quality=90)
    Image.fromarray(images[0], "L").resize((14, 14)).save(tmp_path / "small.png")
    for name in ("photo.jpg", "small.png"):
        x = read_inputs(tmp_path / name, 784)
        assert x.shape == (1, 784) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
        assert np.corrcoef(x[0], _pixels(images[:1])[0])[0, 1] > 0.9, name  # the same picture, resampled


def test_transparency_is_flattened_onto_white_and_16_bit_is_scaled(tmp_path):
    stroke = _digits(1)[0]
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = stroke  # black ink whose opacity is the stroke: on white, a dark digit
    Image.fromarray(rgba, "RGBA").save(tmp_path / "ink.png")
    np.testing.assert_allclose(read_inputs(tmp_path / "ink.png", 784, invert=True), _pixels(stroke[None]), atol=1 / 255 + 1e-6)
    Image.fromarray(stroke.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(read_inputs(tmp_path / "deep.png", 784), _pixels(stroke[None]))


def test_a_network_that_is_not_an_image_network_refuses_images(tmp_path):
    Image.fromarray(_digits(1)[0], "L").save(tmp_path / "a.png")
    with pytest.raises(InputError, match="not a square image"):
        read_inputs(tmp_path / "a.png", 2)
    np.save(tmp_path / "points.npy", np.full((4, 2), 0.5, np.float32))
    assert read_inputs(tmp_path / "points.npy", 2).shape == (4, 2)


# --------------------------------------------------------------------------- predict
def test_predict_skips_bad_files_and_keeps_the_rest(tmp_path, model):
    images = _digits(6)
    Image.fromarray(images[0], "L").save(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "empty.npy").write_bytes(b"")
    write_idx(tmp_path / "images.idx.gz", images)
    told = []
    result = predict(model, [tmp_path / "a.png", tmp_path / "broken.png", tmp_path / "notes.txt", tmp_path / "missing.png",
                             tmp_path / "empty.npy", tmp_path / "images.idx.gz"], on_skip=lambda f, r: told.append((f, r)))
    assert result.skipped == told
    reasons = dict(told)
    assert "not a readable PNG image" in reasons[str(tmp_path / "broken.png")]
    assert "not an IDX, .npy, PNG or JPEG file" in reasons[str(tmp_path / "notes.txt")]
    assert reasons[str(tmp_path / "missing.png")] == "no such file"
    assert reasons[str(tmp_path / "empty.npy")] == "an empty file"
    assert all("\n" not in reason for reason in reasons.values())
    assert result.files == [str(tmp_path / "a.png")] + [str(tmp_path / "images.idx.gz")] * 6
    np.testing.assert_array_equal(result.indices, [0, 0, 1, 2, 3, 4, 5])
    x = _pixels(np.concatenate([images[:1], images]))
    np.testing.assert_array_equal(result.classes, model.predict(x))
    np.testing.assert_allclose(result.probabilities, _softmax(model.forward(x)), rtol=1e-6)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0)


def test_a_folder_stands_for_its_files_in_name_order(tmp_path, model):
    images = _digits(3)
    for i, name in enumerate(["b.png", "a.png", "c.png"]):
        Image.fromarray(images[i], "L").save(tmp_path / name)
    (tmp_path / ".hidden").write_text("ignored")
    (tmp_path / "empty").mkdir()
    result = predict(model, [tmp_path])
    assert [Path(f).name for f in result.files] == ["a.png", "b.png", "c.png"] and not result.skipped  # subfolders are not entered
    assert predict(model, [tmp_path / "empty"]).skipped == [(str(tmp_path / "empty"), "a folder with no files in it")]
    np.testing.assert_array_equal(result.classes, model.predict(_pixels(images[[1, 0, 2]])))


def test_csv_has_a_column_per_class(model, tmp_path):
    np.save(tmp_path / "x.npy", _digits(2))
    text = predictions_csv(predict(model, [tmp_path / "x.npy"]))
    lines = text.splitlines()
    assert lines[0] == "file,index,predicted," + ",".join(f"p{c}" for c in range(10))
    rows = _rows(text)
    assert [row["index"] for row in rows] == ["0", "1"]
    assert all(abs(sum(float(row[f"p{c}"]) for c in range(10)) - 1) < 1e-5 for row in rows)


# --------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def synth_run(tmp_path_factory):
    from smartmixed_np.experiments.train import TrainConfig, train

    folder = tmp_path_factory.mktemp("predict_run")
    config = TrainConfig(dataset="synth-digits", train_limit=320, hidden=(16, 8), epochs=2, transition_epoch=1, lr=1e-2,
                         batch_size=32, seed=3, quiet=True, progress=False, out=str(folder / "run"))
    return train(config).run_dir


def test_cli_predict_exit_status_0_when_all_read_and_csv_on_stdout(synth_run, tmp_path, capsys):
    np.save(tmp_path / "x.npy", _digits(4))
    assert main(["predict", str(synth_run), str(tmp_path / "x.npy")]) == 0
    out, err = capsys.readouterr()
    assert err == "" and len(_rows(out)) == 4


def test_cli_predict_exit_status_1_and_one_line_per_skipped_file(synth_run, tmp_path, capsys):
    np.save(tmp_path / "x.npy", _digits(4))
    (tmp_path / "notes.txt").write_text("hello\n")
    out_csv = tmp_path / "out" / "p.csv"
    out_csv.parent.mkdir()
    assert main(["predict", str(synth_run), str(tmp_path / "x.npy"), str(tmp_path / "notes.txt"), "--out", str(out_csv)]) == 1
    out, err = capsys.readouterr()
    assert err == f"skipped {tmp_path / 'notes.txt'}: not an IDX, .npy, PNG or JPEG file (by its first bytes)\n"
    assert "4 predictions from 1 file written to" in out and "1 skipped" in out
    assert len(_rows(out_csv.read_text())) == 4


def test_cli_predict_usage_errors_are_status_2(synth_run, tmp_path, capsys):
    for argv, expected in [
        (["predict", str(tmp_path / "nowhere"), "x.png"], "no such run folder"),
        (["predict", str(synth_run)], "the following arguments are required: INPUT"),
        (["predict", str(tmp_path), "x.png"], "not a finished run folder"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err


def test_cli_predict_help_explains_the_exit_status():
    result = subprocess.run([sys.executable, "-m", "smartmixed_np", "predict", "--help"], capture_output=True, text=True,
                            env={**os.environ, "MPLBACKEND": "Agg"})
    assert result.returncode == 0
    assert "--invert" in result.stdout and "--out CSV" in result.stdout
    assert "1 some were skipped" in " ".join(result.stdout.split())


# --------------------------------------------------------------------------- real MNIST
@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    from smartmixed_np.data import load_dataset
    from smartmixed_np.experiments.train import TrainConfig, train

    folder = tmp_path_factory.mktemp("predict_mnist")
    config = TrainConfig(dataset="mnist", data_dir=DATA, train_limit=2000, hidden=(64, 32), epochs=2, transition_epoch=1,
                         lr=1e-3, batch_size=64, seed=0, quiet=True, progress=False, out=str(folder / "run"))
    return train(config).run_dir, load_dataset("mnist", DATA, download=False)


@needs_mnist
def test_a_folder_of_test_set_images_predicts_as_the_model_does(mnist_run, tmp_path, capsys):
    """PNGs (some 56x56), JPEGs, an IDX file and .npy arrays of real test images, one corrupt PNG and one text file."""
    from smartmixed_np.experiments.checkpoint import load_model

    run_dir, data = mnist_run
    model = load_model(run_dir)
    images = np.rint(data.x_test[:60].reshape(-1, 28, 28) * 255).astype(np.uint8)
    np.testing.assert_array_equal(_pixels(images), data.x_test[:60])  # the test set is uint8 / 255
    folder = tmp_path / "digits"
    folder.mkdir()
    expected: dict[str, np.ndarray] = {}  # file name -> the pixels the model should see
    for i in range(40):
        image = Image.fromarray(images[i], "L")
        if i % 8 == 7:
            image.save(folder / f"{i:02d}.jpg", quality=92)
            with Image.open(folder / f"{i:02d}.jpg") as decoded:  # JPEG is lossy: what Pillow decodes
                expected[f"{i:02d}.jpg"] = _pixels(np.asarray(decoded.convert("L"))[None])
        elif i % 4 == 1:
            image.resize((56, 56), Image.Resampling.NEAREST).save(folder / f"{i:02d}.png")
            expected[f"{i:02d}.png"] = data.x_test[i:i + 1]
        else:
            image.save(folder / f"{i:02d}.png")
            expected[f"{i:02d}.png"] = data.x_test[i:i + 1]
    (folder / "zz_corrupt.png").write_bytes((folder / "00.png").read_bytes()[:60])
    (folder / "zz_readme.txt").write_text("digits from the MNIST test set\n")
    write_idx(tmp_path / "t10k-part.idx3-ubyte.gz", images[40:50])
    np.save(tmp_path / "part.npy", images[50:58])
    np.save(tmp_path / "flat.npy", data.x_test[58:60])
    out_csv = tmp_path / "predictions.csv"
    status = main(["predict", str(run_dir), str(folder), str(tmp_path / "t10k-part.idx3-ubyte.gz"), str(tmp_path / "part.npy"),
                   str(tmp_path / "flat.npy"), "--out", str(out_csv)])
    out, err = capsys.readouterr()
    assert status == 1
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"skipped {folder / 'zz_corrupt.png'}: not a readable PNG image")
    assert lines[1] == f"skipped {folder / 'zz_readme.txt'}: not an IDX, .npy, PNG or JPEG file (by its first bytes)"
    rows = _rows(out_csv.read_text())
    assert len(rows) == 60
    for name, pixels in expected.items():
        (row,) = [r for r in rows if Path(r["file"]).name == name]
        assert int(row["predicted"]) == int(model.predict(pixels)[0]), name
        probabilities = np.array([float(row[f"p{c}"]) for c in range(10)])
        np.testing.assert_allclose(probabilities, _softmax(model.forward(pixels))[0], atol=1e-6)
    by_file = lambda name: [int(r["predicted"]) for r in rows if Path(r["file"]).name == name]  # noqa: E731
    np.testing.assert_array_equal(by_file("t10k-part.idx3-ubyte.gz"), model.predict(data.x_test[40:50]))
    np.testing.assert_array_equal(by_file("part.npy"), model.predict(data.x_test[50:58]))
    np.testing.assert_array_equal(by_file("flat.npy"), model.predict(data.x_test[58:60]))
    exact = [name for name in expected if name.endswith(".png")]
    predicted = np.array([int(next(r for r in rows if Path(r["file"]).name == n)["predicted"]) for n in exact])
    np.testing.assert_array_equal(predicted, model.predict(np.concatenate([expected[n] for n in exact])))


@needs_mnist
def test_inverted_images_with_invert_predict_as_the_originals(mnist_run, tmp_path):
    run_dir, data = mnist_run
    images = np.rint(data.x_test[:20].reshape(-1, 28, 28) * 255).astype(np.uint8)
    for i, image in enumerate(images):
        Image.fromarray(255 - image, "L").save(tmp_path / f"{i:02d}.png")  # dark digit on white paper
    inverted = predict(run_dir, [tmp_path], invert=True)
    plain = predict(run_dir, [tmp_path])
    from smartmixed_np.experiments.checkpoint import load_model

    expected = load_model(run_dir).predict(data.x_test[:20])
    np.testing.assert_array_equal(inverted.classes, expected)
    assert (plain.classes != expected).any()  # without --invert the model sees black digits on white
