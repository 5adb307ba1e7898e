"""Tests for smartmixed_np/data/datasets.py.

Most tests build a tiny MNIST-like dataset in a temporary folder. The tests marked
``real_mnist`` read the real MNIST files through the ``SMARTMIXED_DATA`` environment
variable (a folder holding ``mnist/``) and are skipped when it is not set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from test_data_download import FileServer, closed_port_url  # noqa: F401 (a fixture)

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
    monkeypatch.delenv("SMARTMIXED_MIRROR", raising=False)
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


@pytest.mark.parametrize("layout", ["parent", "dataset folder", "dataset folder of any name"])
@pytest.mark.parametrize("through", ["data_dir", "SMARTMIXED_DATA"])
def test_data_dir_and_environment_take_the_same_layouts(tmp_path, monkeypatch, layout, through):
    own = tmp_path / "data" / ("downloads" if layout == "dataset folder of any name" else "mnist")
    make_fake_mnist(own)
    given = own.parent if layout == "parent" and own.name == "mnist" else own
    if through == "SMARTMIXED_DATA":
        monkeypatch.setenv("SMARTMIXED_DATA", str(given))
        data = load_dataset("mnist", download=False)
    else:
        data = load_dataset("mnist", given, download=False)
    assert data.source == str(own)


def test_a_folder_named_after_another_dataset_is_not_taken_for_it(tmp_path, monkeypatch):
    """SMARTMIXED_DATA=.../mnist must not serve MNIST's files as KMNIST's."""
    make_fake_mnist(tmp_path / "data" / "mnist")
    with pytest.raises(DataError, match=r"mnist: holds the files of dataset mnist \(by the folder's name\), not kmnist"):
        load_dataset("kmnist", tmp_path / "data" / "mnist")
    monkeypatch.setenv("SMARTMIXED_DATA", str(tmp_path / "data" / "mnist"))
    with pytest.raises(DataError) as info:
        load_dataset("kmnist", download=False)
    assert f"SMARTMIXED_DATA={tmp_path / 'data' / 'mnist'} (it holds the files of dataset mnist (by the folder's name), not kmnist)" in str(info.value)
    assert "downloading is off" in str(info.value)
    assert load_dataset("mnist", download=False).source == str(tmp_path / "data" / "mnist")


@pytest.mark.parametrize("environment", ["folder without the dataset", "missing folder", "unset"])
def test_nothing_found_names_every_place_looked_in(tmp_path, monkeypatch, environment):
    shared = tmp_path / "shared"
    if environment != "unset":
        monkeypatch.setenv("SMARTMIXED_DATA", str(shared))
    if environment == "folder without the dataset":
        shared.mkdir()
    with pytest.raises(DataError) as info:
        load_dataset("mnist", download=False)
    message = str(info.value)
    assert "\n" not in message and message.startswith("dataset mnist not found: looked in ")
    where = {
        "folder without the dataset": f"SMARTMIXED_DATA={shared} (it has no mnist/ subfolder and holds no mnist files)",
        "missing folder": f"SMARTMIXED_DATA={shared} (no such folder)",
        "unset": "SMARTMIXED_DATA (not set)",
    }[environment]
    assert where in message
    assert f"the download cache {tmp_path / 'cache' / 'mnist'} (nothing there)" in message
    assert "downloading is off" in message and "--data-dir" in message


def test_a_failed_download_names_the_places_looked_in(tmp_path, monkeypatch, closed_port_url):
    (tmp_path / "shared").mkdir()
    monkeypatch.setenv("SMARTMIXED_DATA", str(tmp_path / "shared"))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", mirror=closed_port_url)
    message = str(info.value)
    assert "\n" not in message and message.startswith("dataset mnist not found locally (looked in SMARTMIXED_DATA=")
    assert str(tmp_path / "cache" / "mnist") in message and closed_port_url in message and "cannot connect" in message
    assert "--data-dir" in message


def test_the_cache_is_used_when_downloading_is_off(tmp_path):
    make_fake_mnist(tmp_path / "cache" / "mnist")
    assert load_dataset("mnist", download=False).source == str(tmp_path / "cache" / "mnist")


def test_the_mirror_setting_reaches_the_downloader(tmp_path, monkeypatch, closed_port_url):
    """SMARTMIXED_MIRROR, and mirror= (which wins over it), replace the dataset's own mirrors."""
    make_fake_mnist(tmp_path / "upstream")
    files = {name: (tmp_path / "upstream" / name).read_bytes() for name in IDX_FILES}
    spec = RemoteDataset(name="mnist", md5={name: hashlib.md5(body).hexdigest() for name, body in files.items()}, mirrors=())
    monkeypatch.setitem(download.REGISTRY, "mnist", spec)
    with FileServer(files) as server:
        monkeypatch.setenv("SMARTMIXED_MIRROR", server.url("good"))
        assert load_dataset("mnist").source == str(tmp_path / "cache" / "mnist")
        for name in IDX_FILES:
            (tmp_path / "cache" / "mnist" / name).unlink()
        monkeypatch.setenv("SMARTMIXED_MIRROR", closed_port_url)
        assert load_dataset("mnist", mirror=server.url("good")).source == str(tmp_path / "cache" / "mnist")
    assert server.requests == ["/good/" + name for name in IDX_FILES] * 2


# content checks --------------------------------------------------------------------------


def test_labels_out_of_range(tmp_path):
    make_fake_mnist(tmp_path / "mnist")
    write_idx(tmp_path / "mnist" / IDX_FILES[3], np.full(50, 10, dtype=np.uint8))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: label 10 out of range \[0, 10\)"):
        load_dataset("mnist", tmp_path / "mnist")


def lenient_reader(monkeypatch, replace: dict):
    """Make the dataset layer read through a reader that checks nothing.

    The IDX reader refuses some of these files itself; the dataset layer must refuse
    them too, whatever reader it is given. ``replace``: file name -> array to return.
    """
    real = datasets.read_idx_pair

    def read(images_path, labels_path):
        images, labels = real(images_path, labels_path)
        return replace.get(Path(images_path).name, images), replace.get(Path(labels_path).name, labels)

    monkeypatch.setattr(datasets, "read_idx_pair", read)


@pytest.mark.parametrize("reader", ["idx", "lenient"])
@pytest.mark.parametrize("value", [np.nan, np.inf, 2.5])
def test_labels_that_are_not_whole_numbers(tmp_path, monkeypatch, value, reader):
    """Float labels with NaN once became -2**63 and reached the loss as an IndexError."""
    make_fake_mnist(tmp_path / "mnist")
    labels = np.arange(200, dtype=np.float32) % 10
    labels[5] = value
    if reader == "idx":
        write_idx(tmp_path / "mnist" / IDX_FILES[1], labels)
    else:
        lenient_reader(monkeypatch, {IDX_FILES[1]: labels})
    with pytest.raises(DataError) as info:
        load_dataset("mnist", tmp_path / "mnist")
    message = str(info.value)
    assert message.startswith(str(tmp_path / "mnist" / IDX_FILES[1])) and "\n" not in message
    if reader == "lenient":
        assert message.endswith(f"label {float(value)!r} at index 5 is not a whole number")


@pytest.mark.parametrize("reader", ["idx", "lenient"])
@pytest.mark.parametrize("shape", [(0, 28, 28), (5, 0, 0), (5, 28, 0)])
def test_image_files_without_pixels(tmp_path, monkeypatch, shape, reader):
    make_fake_mnist(tmp_path / "mnist")
    images, labels = np.zeros(shape, dtype=np.uint8), np.zeros(shape[0], dtype=np.uint8)
    if reader == "idx":
        write_idx(tmp_path / "mnist" / IDX_FILES[2], images)
        write_idx(tmp_path / "mnist" / IDX_FILES[3], labels)
    else:
        lenient_reader(monkeypatch, {IDX_FILES[2]: images, IDX_FILES[3]: labels})
    with pytest.raises(DataError) as info:
        load_dataset("mnist", tmp_path / "mnist")
    message = str(info.value)
    assert message.startswith(str(tmp_path / "mnist" / IDX_FILES[2])) and "\n" not in message
    if reader == "lenient":
        assert ("holds no images" if shape[0] == 0 else "pixels hold no data") in message


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_non_finite_inputs_are_refused_naming_the_file(tmp_path, value, split):
    make_fake_mnist(tmp_path / "mnist")
    data = load_dataset("mnist", tmp_path / "mnist")
    x = getattr(data, f"x_{split}").copy()
    x[7, 100] = value
    x[9, 3] = value
    with pytest.raises(DataError) as info:
        dataclasses.replace(data, **{f"x_{split}": x})
    file_name = IDX_FILES[2] if split == "test" else IDX_FILES[0]
    assert str(info.value) == (
        f"{tmp_path / 'mnist' / file_name}: the {split} inputs hold 2 non-finite values (NaN or infinity), "
        f"the first in example 7; inputs must be finite numbers"
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_finiteness_check_agrees_with_isfinite(dtype):
    """The check reads min and max only: every placement of NaN or an infinity, among
    values as large as the dtype holds, must still be caught, and nothing else refused."""
    data = load_dataset("spirals", n_train=30, n_val=6, n_test=9)
    rng = np.random.default_rng(0)
    huge = np.finfo(dtype).max
    for trial in range(60):
        x = rng.choice(np.array([-huge, -1.0, 0.0, 1e-30, 1.0, huge], dtype=dtype), size=data.x_test.shape)
        if trial % 2:
            x.flat[rng.integers(x.size)] = rng.choice([np.nan, np.inf, -np.inf])
        if np.isfinite(x).all():
            assert dataclasses.replace(data, x_test=x).x_test is x
        else:
            with pytest.raises(DataError, match="non-finite values"):
                dataclasses.replace(data, x_test=x)


@pytest.mark.parametrize("bad", [-1, 10])
def test_labels_out_of_range_are_refused_for_every_dataset(bad):
    data = load_dataset("synth-digits", n_train=50, n_val=10, n_test=20)
    y = data.y_val.copy()
    y[3] = bad
    with pytest.raises(DataError, match=rf"^dataset synth-digits \(synthetic\): label {bad} out of range \[0, 10\)"):
        dataclasses.replace(data, y_val=y)


def test_split_dataset_checks_label_types_and_shapes():
    data = load_dataset("spirals", n_train=30, n_val=6, n_test=9)
    with pytest.raises(DataError, match="train labels must be integers, found float64"):
        dataclasses.replace(data, y_train=data.y_train.astype(np.float64))
    with pytest.raises(DataError, match=r"val set of shape \(6, 3\) with labels of shape \(6,\); expected \(n, 2\)"):
        dataclasses.replace(data, x_val=np.zeros((6, 3), dtype=np.float32))
    with pytest.raises(DataError, match="expected"):
        dataclasses.replace(data, y_test=data.y_test[:-1])
    with pytest.raises(DataError, match="inputs must be real numbers"):
        dataclasses.replace(data, x_test=data.x_test.astype(complex))


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


def test_train_limit_records_what_was_available_and_asked_for(tmp_path):
    """So that a caller can say "using all 200 training images (--train-limit asked for 100,000)"."""
    make_fake_mnist(tmp_path / "mnist", n_train=200)
    facts = lambda data: (data.train_available, data.train_requested, data.train_used, data.train_limit_capped)  # noqa: E731
    full = load_dataset("mnist", tmp_path / "mnist")
    assert facts(full) == (200, None, 200, False)
    assert facts(load_dataset("mnist", tmp_path / "mnist", train_limit=50)) == (200, 50, 50, False)
    assert facts(load_dataset("mnist", tmp_path / "mnist", train_limit=200)) == (200, 200, 200, False)
    many = load_dataset("mnist", tmp_path / "mnist", train_limit=100_000)
    assert facts(many) == (200, 100_000, 200, True)
    assert repr(many) == repr(full)
    assert facts(load_dataset("spirals", train_limit=10)) == (None, 10, 10 + 600, False)


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


@needs_real_mnist
def test_real_mnist_environment_variable_as_the_dataset_folder(monkeypatch, real_mnist):
    monkeypatch.setenv("SMARTMIXED_DATA", str(Path(REAL_DATA) / "mnist"))
    data = load_dataset("mnist", download=False, train_limit=10**6)
    assert data.source == real_mnist.source
    assert data.train_limit_capped and data.train_requested == 10**6
    assert data.train_used == data.train_available == len(real_mnist.y_train) + len(real_mnist.y_val)
    assert data.x_train.tobytes() == real_mnist.x_train.tobytes()


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_a_non_file_where_an_idx_file_belongs_is_named_as_such(tmp_path, kind):
    from smartmixed_np.data.download import IDX_FILES
    from smartmixed_np.data.idx import write_idx

    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in IDX_FILES[1:]:
        write_idx(folder / name, np.zeros((2,) if "labels" in name else (2, 28, 28), dtype=np.uint8))
    target = folder / IDX_FILES[0]
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "folder":
        target.mkdir()
    else:
        target.symlink_to("/dev/null")
    with pytest.raises(DataError, match="is not a regular file"):
        load_dataset("mnist", folder)
