"""Tests for smartmixed_np/data/datasets.py.

Most tests build a tiny MNIST-like dataset in a temporary folder. The tests marked
``real_mnist`` read the real MNIST files through the ``SMARTMIXED_DATA`` environment
variable (a folder holding ``mnist/``) and are skipped when it is not set.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from test_data_download import FileServer

from smartmixed_np.data import datasets, download
from smartmixed_np.data.datasets import DATASETS, SplitDataset, load_dataset, stratified_split
from smartmixed_np.data.download import IDX_FILES, RemoteDataset
from smartmixed_np.data.idx import write_idx
from smartmixed_np.errors import DataError

# Read once, at import, before the autouse fixture below clears it for every test.
REAL_DATA = os.environ.get("SMARTMIXED_DATA")


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path, monkeypatch):
    """No test sees the user's data folder or cache unless it asks for them."""
    monkeypatch.delenv("SMARTMIXED_DATA", raising=False)
    monkeypatch.setenv("SMARTMIXED_CACHE", str(tmp_path / "cache"))


def make_fake_mnist(folder: Path, n_train: int = 200, n_test: int = 50, *, compress: bool = True, seed: int = 0):
    """Write the four files of a small MNIST-like dataset with unequal class sizes."""
    rng = np.random.default_rng(seed)
    # Class c has weight c + 1: unequal classes make stratification observable.
    weights = np.arange(1, 11) / np.arange(1, 11).sum()
    arrays = [
        rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        rng.choice(10, size=n_train, p=weights).astype(np.uint8),
        rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        rng.choice(10, size=n_test, p=weights).astype(np.uint8),
    ]
    arrays[0][0] = 255  # so that the maximum, 1.0, is present
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in zip(IDX_FILES, arrays):
        write_idx(folder / (name if compress else name[: -len(".gz")]), array, gzip=compress)
    return arrays


def assert_stratified(data: SplitDataset, val_fraction: float = 0.1):
    """Every class gives val_fraction of its examples to validation, within one example."""
    train_counts = np.bincount(data.y_train, minlength=data.num_classes)
    val_counts = np.bincount(data.y_val, minlength=data.num_classes)
    totals = train_counts + val_counts
    assert np.all(np.abs(val_counts - val_fraction * totals) <= 1), (val_counts, totals)


# folder resolution -----------------------------------------------------------------------


def test_loads_from_the_dataset_folder_and_from_its_parent(tmp_path):
    arrays = make_fake_mnist(tmp_path / "data" / "mnist")
    from_own = load_dataset("mnist", tmp_path / "data" / "mnist")
    from_parent = load_dataset("mnist", str(tmp_path / "data"))
    assert from_own.source == from_parent.source == str(tmp_path / "data" / "mnist")
    assert from_own.x_train.tobytes() == from_parent.x_train.tobytes()
    np.testing.assert_array_equal(from_own.x_test, arrays[2].reshape(-1, 784) / np.float32(255))
    np.testing.assert_array_equal(from_own.y_test, arrays[3])


def test_uncompressed_files_are_accepted(tmp_path):
    make_fake_mnist(tmp_path / "raw", compress=False)
    data = load_dataset("mnist", tmp_path / "raw")
    assert data.x_train.shape[1] == 784


def test_environment_variable_is_a_parent_folder(tmp_path, monkeypatch):
    make_fake_mnist(tmp_path / "shared" / "fashion-mnist")
    monkeypatch.setenv("SMARTMIXED_DATA", str(tmp_path / "shared"))
    data = load_dataset("fashion_MNIST")  # case and underscores are forgiven
    assert data.name == "fashion-mnist"
    assert data.source == str(tmp_path / "shared" / "fashion-mnist")


def test_explicit_folder_wins_over_environment(tmp_path, monkeypatch):
    make_fake_mnist(tmp_path / "env" / "mnist", n_train=100)
    make_fake_mnist(tmp_path / "explicit" / "mnist", n_train=150)
    monkeypatch.setenv("SMARTMIXED_DATA", str(tmp_path / "env"))
    data = load_dataset("mnist", tmp_path / "explicit")
    assert len(data.y_train) + len(data.y_val) == 150


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", tmp_path / "nowhere")


def test_missing_file_is_named(tmp_path):
    make_fake_mnist(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as info:
        load_dataset("mnist", tmp_path / "mnist")
    message = str(info.value)
    assert str(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz") in message
    assert "missing" in message and "\n" not in message


def test_folder_without_any_dataset_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="missing file of dataset kmnist"):
        load_dataset("kmnist", tmp_path / "empty")


def test_no_local_copy_and_no_download_says_what_to_do(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("mnist", download=False)
    message = str(info.value)
    assert "--data-dir" in message and "SMARTMIXED_DATA" in message and "mnist" in message


def test_environment_without_the_dataset_and_no_download(tmp_path, monkeypatch):
    make_fake_mnist(tmp_path / "shared" / "mnist")
    monkeypatch.setenv("SMARTMIXED_DATA", str(tmp_path / "shared"))
    with pytest.raises(DataError, match="has no kmnist/ subfolder"):
        load_dataset("kmnist", download=False)


def test_downloads_into_the_cache_when_nothing_is_local(tmp_path, monkeypatch):
    """End to end: load_dataset -> ensure_dataset -> fetch from a local HTTP server."""
    make_fake_mnist(tmp_path / "upstream")
    files = {name: (tmp_path / "upstream" / name).read_bytes() for name in IDX_FILES}
    with FileServer(files) as server:
        spec = RemoteDataset(
            name="mnist",
            md5={name: hashlib.md5(body).hexdigest() for name, body in files.items()},
            mirrors=(server.url("missing"), server.url("good")),
        )
        monkeypatch.setitem(download.REGISTRY, "mnist", spec)
        data = load_dataset("mnist")
    assert data.source == str(tmp_path / "cache" / "mnist")
    assert sorted(os.listdir(tmp_path / "cache" / "mnist")) == sorted(IDX_FILES)


# content checks --------------------------------------------------------------------------


def test_labels_out_of_range(tmp_path):
    make_fake_mnist(tmp_path / "mnist")
    write_idx(tmp_path / "mnist" / IDX_FILES[3], np.full(50, 10, dtype=np.uint8))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: label 10 out of range \[0, 10\)"):
        load_dataset("mnist", tmp_path / "mnist")


def test_image_and_label_count_mismatch(tmp_path):
    make_fake_mnist(tmp_path / "mnist")
    write_idx(tmp_path / "mnist" / IDX_FILES[1], np.zeros(199, dtype=np.uint8))
    with pytest.raises(DataError, match="count mismatch"):
        load_dataset("mnist", tmp_path / "mnist")


def test_images_must_be_uint8_rank_3(tmp_path):
    make_fake_mnist(tmp_path / "mnist")
    write_idx(tmp_path / "mnist" / IDX_FILES[0], np.zeros((200, 784), dtype=np.uint8))
    with pytest.raises(DataError, match=r"expected uint8 images of shape \(n, height, width\)"):
        load_dataset("mnist", tmp_path / "mnist")


def test_corrupt_file_surfaces_as_data_error(tmp_path):
    make_fake_mnist(tmp_path / "mnist")
    path = tmp_path / "mnist" / IDX_FILES[0]
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="truncated gzip stream"):
        load_dataset("mnist", tmp_path / "mnist")


# protocol ----------------------------------------------------------------------------------


def test_protocol_on_fake_data(tmp_path):
    arrays = make_fake_mnist(tmp_path / "mnist")
    data = load_dataset("mnist", tmp_path / "mnist")
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (180, 20, 50)
    assert data.x_train.dtype == data.x_val.dtype == data.x_test.dtype == np.float32
    assert data.y_train.dtype == data.y_val.dtype == data.y_test.dtype == np.int64
    assert (data.input_dim, data.num_classes, data.image_shape) == (784, 10, (28, 28))
    assert_stratified(data)
    # Train and validation partition the official training set.
    official = arrays[0].reshape(200, 784) / np.float32(255)
    together = np.concatenate([data.x_train, data.x_val])
    assert sorted(map(bytes, together)) == sorted(map(bytes, official))
    assert data.x_train.max() == 1.0 and data.x_train.min() >= 0.0


def test_split_is_deterministic_and_depends_on_the_seed(tmp_path):
    make_fake_mnist(tmp_path / "mnist")
    first = load_dataset("mnist", tmp_path / "mnist", split_seed=4)
    again = load_dataset("mnist", tmp_path / "mnist", split_seed=4)
    other = load_dataset("mnist", tmp_path / "mnist", split_seed=5)
    assert first.x_val.tobytes() == again.x_val.tobytes()
    np.testing.assert_array_equal(first.y_train, again.y_train)
    assert first.x_val.tobytes() != other.x_val.tobytes()
    assert first.x_test.tobytes() == other.x_test.tobytes()  # the test set never moves


def test_train_limit_is_stratified_and_applied_before_the_split(tmp_path):
    make_fake_mnist(tmp_path / "mnist", n_train=400)
    full = load_dataset("mnist", tmp_path / "mnist")
    limited = load_dataset("mnist", tmp_path / "mnist", train_limit=100)
    assert len(limited.y_train) + len(limited.y_val) == 100
    assert len(limited.y_val) == 10
    assert_stratified(limited)
    kept = np.bincount(np.concatenate([limited.y_train, limited.y_val]), minlength=10)
    everything = np.bincount(np.concatenate([full.y_train, full.y_val]), minlength=10)
    assert np.all(np.abs(kept - 100 * everything / 400) <= 1)
    assert limited.x_test.shape == full.x_test.shape
    again = load_dataset("mnist", tmp_path / "mnist", train_limit=100)
    assert limited.x_train.tobytes() == again.x_train.tobytes()
    # A limit above the size of the training set keeps everything.
    assert len(load_dataset("mnist", tmp_path / "mnist", train_limit=10**6).y_train) == len(full.y_train)


def test_val_fraction(tmp_path):
    make_fake_mnist(tmp_path / "mnist")
    data = load_dataset("mnist", tmp_path / "mnist", val_fraction=0.25)
    assert len(data.y_val) == 50
    assert_stratified(data, 0.25)
    none = load_dataset("mnist", tmp_path / "mnist", val_fraction=0.0)
    assert none.x_val.shape == (0, 784) and none.y_val.shape == (0,)


@pytest.mark.parametrize("kwargs", [{"val_fraction": 1.0}, {"val_fraction": -0.1}, {"train_limit": 0}])
def test_bad_split_arguments(tmp_path, kwargs):
    make_fake_mnist(tmp_path / "mnist")
    with pytest.raises(DataError):
        load_dataset("mnist", tmp_path / "mnist", **kwargs)


def test_stratified_split_counts():
    labels = np.repeat(np.arange(3), [10, 33, 57])
    kept, held = stratified_split(labels, 10, np.random.default_rng(0))
    assert len(held) == 10 and len(kept) == 90
    assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(100))
    np.testing.assert_array_equal(np.bincount(labels[held]), [1, 3, 6])


def test_stratified_split_edge_cases():
    rng = np.random.default_rng(0)
    kept, held = stratified_split(np.zeros(0, dtype=np.int64), 0, rng)
    assert kept.size == held.size == 0
    kept, held = stratified_split(np.array([3, 3, 1]), 3, rng)
    assert kept.size == 0 and list(held) == [0, 1, 2]
    with pytest.raises(ValueError):
        stratified_split(np.array([0, 1]), 3, rng)


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(DataError) as info:
        load_dataset("cifar10")
    assert all(name in str(info.value) for name in DATASETS)


def test_synthetic_options_are_rejected_for_idx_datasets(tmp_path):
    make_fake_mnist(tmp_path / "mnist")
    with pytest.raises(DataError, match="takes no options"):
        load_dataset("mnist", tmp_path / "mnist", n_train=10)


# synthetic datasets ------------------------------------------------------------------------


def test_synth_digits_dataset():
    data = load_dataset("synth-digits", n_train=600, n_val=100, n_test=200, split_seed=1)
    assert (data.x_train.shape, data.x_val.shape, data.x_test.shape) == ((600, 784), (100, 784), (200, 784))
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert (data.num_classes, data.input_dim, data.image_shape, data.source) == (10, 784, (28, 28), "synthetic")
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    # The three splits come from different seeds.
    assert data.x_train[:100].tobytes() != data.x_val.tobytes()
    again = load_dataset("synth-digits", n_train=600, n_val=100, n_test=200, split_seed=1)
    assert again.x_test.tobytes() == data.x_test.tobytes()
    other = load_dataset("synth-digits", n_train=600, n_val=100, n_test=200, seed=2)
    assert other.x_test.tobytes() != data.x_test.tobytes()


def test_synth_digits_default_sizes_and_train_limit():
    data = load_dataset("synth-digits", train_limit=500)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (500, 2000, 4000)
    # The test set does not depend on the size of the training set.
    small = load_dataset("synth-digits", n_train=10, n_val=0)
    assert small.x_test.tobytes() == data.x_test.tobytes()


def test_spirals_dataset():
    data = load_dataset("spirals")
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (2400, 600, 1500)
    assert (data.num_classes, data.input_dim, data.image_shape) == (3, 2, None)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(data.y_train), [800, 800, 800])
    five = load_dataset("spirals", n_train=103, num_classes=5, noise=0.0, turns=2.0)
    assert len(five.y_train) == 103 and five.num_classes == 5
    assert np.bincount(five.y_train).max() - np.bincount(five.y_train).min() <= 1


def test_synthetic_dataset_errors():
    with pytest.raises(DataError, match="unknown option"):
        load_dataset("spirals", colour="red")
    with pytest.raises(DataError, match="takes no data folder"):
        load_dataset("synth-digits", "/some/folder")
    with pytest.raises(DataError, match="n_train"):
        load_dataset("spirals", n_train=-1)


def test_split_dataset_repr_is_short():
    data = load_dataset("spirals", n_train=30, n_val=6, n_test=9)
    assert repr(data) == (
        "SplitDataset(name='spirals', train=30, val=6, test=9, input_dim=2, num_classes=3, source='synthetic')"
    )


# real MNIST ----------------------------------------------------------------------------------

needs_real_mnist = pytest.mark.skipif(
    not REAL_DATA or not (Path(REAL_DATA) / "mnist").is_dir(),
    reason="set SMARTMIXED_DATA to a folder holding mnist/ to run the real-data tests",
)


@pytest.fixture(scope="module")
def real_mnist():
    """The real MNIST, loaded once for the module (about half a second)."""
    return load_dataset("mnist", REAL_DATA)


@needs_real_mnist
def test_real_mnist_shapes_ranges_and_split(real_mnist):
    data = real_mnist
    n_official = len(data.y_train) + len(data.y_val)
    assert data.x_train.shape == (len(data.y_train), 784) and data.x_train.dtype == np.float32
    assert data.x_test.shape == (10000, 784)
    assert data.y_test.dtype == np.int64 and set(np.unique(data.y_test)) == set(range(10))
    for x in (data.x_train, data.x_val, data.x_test):
        assert x.min() == 0.0 and x.max() == 1.0
    assert len(data.y_val) == round(0.1 * n_official)
    assert_stratified(data)
    assert data.image_shape == (28, 28) and data.source.endswith("mnist")


@needs_real_mnist
def test_real_mnist_through_the_environment_variable(monkeypatch, real_mnist):
    monkeypatch.setenv("SMARTMIXED_DATA", REAL_DATA)
    data = load_dataset("mnist", train_limit=2000, split_seed=3)
    assert len(data.y_train) + len(data.y_val) == 2000 and len(data.y_val) == 200
    assert_stratified(data)
    again = load_dataset("mnist", train_limit=2000, split_seed=3)
    assert data.x_val.tobytes() == again.x_val.tobytes()
    assert data.x_test.tobytes() == real_mnist.x_test.tobytes()


@needs_real_mnist
def test_real_mnist_dataset_folder_form(real_mnist):
    data = load_dataset("mnist", Path(REAL_DATA) / "mnist", train_limit=500)
    assert data.source == real_mnist.source
