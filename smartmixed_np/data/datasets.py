"""The named datasets, loaded and split the way the SmartMixed paper does it.

:func:`load_dataset` returns a :class:`SplitDataset`: training, validation and test
arrays ready for a network, ``x`` float32 ``(n, d)`` in [0, 1] and ``y`` int64 ``(n,)``.

Protocol for the IDX datasets (MNIST, Fashion-MNIST, KMNIST):

* pixels are divided by 255 into float32 and each image is flattened row by row to
  784 values;
* the official training set is split 90/10 into training and validation sets,
  stratified by class (every class loses the same share to validation, up to rounding
  by one example), with a fixed seed;
* the official test set is the test set, untouched.

Where the files come from, first match wins:

1. ``data_dir``, when given (and then nowhere else);
2. the environment variable ``SMARTMIXED_DATA``;
3. the download cache (:func:`~smartmixed_np.data.download.ensure_dataset`): taken as
   it is when ``download=False``, completed by downloading and verified otherwise.

``data_dir`` and ``SMARTMIXED_DATA`` accept the same two layouts: a parent folder
holding ``<name>/`` (``data/mnist/``, ``data/kmnist/``, ...), or the dataset's own
folder holding the four files. A folder named after another dataset (``.../mnist``
when ``kmnist`` is asked for) is not taken for the dataset's own folder, so that one
setting of ``SMARTMIXED_DATA`` never passes one dataset's files off as another's.
When nothing is found, the one-line error names every place looked in.

Every dataset is checked as it is built (:class:`SplitDataset` checks itself), cheaply
(a few reductions per array): inputs finite, labels integers in ``[0, num_classes)``,
one label per example. IDX files must also hold at least one image of at least one
pixel, and their labels must be whole numbers.

The synthetic datasets (``spirals``, ``synth-digits``) are generated on the fly, each of
the three splits from its own seed derived from one seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..errors import DataError
from .download import DATA_ENV, IDX_FILES, REGISTRY, default_cache_dir, ensure_dataset, local_copy_hint
from .idx import read_idx_pair
from .synthetic import make_spirals, make_synth_digits

__all__ = ["DATASETS", "SplitDataset", "load_dataset", "find_dataset_folder", "stratified_split"]

PathLike = Union[str, "os.PathLike[str]"]

DATASETS = ("mnist", "fashion-mnist", "kmnist", "spirals", "synth-digits")
_IDX_DATASETS = ("mnist", "fashion-mnist", "kmnist")
_IDX_CLASSES = 10

# Default sizes of the generated splits (train, validation, test).
_SYNTHETIC_SIZES = {"spirals": (2400, 600, 1500), "synth-digits": (12000, 2000, 4000)}
_SYNTHETIC_OPTIONS = {
    "spirals": ("n_train", "n_val", "n_test", "seed", "num_classes", "noise", "turns"),
    "synth-digits": ("n_train", "n_val", "n_test", "seed"),
}


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays with == is not a bool
class SplitDataset:
    """A dataset split into training, validation and test sets.

    Attributes:
        x_train, x_val, x_test: float32 ``(n, input_dim)``; pixel data in [0, 1].
        y_train, y_val, y_test: int64 ``(n,)`` in ``[0, num_classes)``.
        num_classes: number of classes.
        input_dim: features per example (784 for 28x28 images, 2 for spirals).
        name: the dataset's name, one of :data:`DATASETS`.
        source: the folder the files were read from, or ``"synthetic"``.
        image_shape: ``(height, width)`` to undo the flattening (``x.reshape(-1, *image_shape)``),
            or ``None`` when the examples are not images.
        train_available: IDX datasets: examples in the official training set, before
            ``train_limit`` and the validation split. ``None`` for generated data, of
            which any number can be made.
        train_requested: the ``train_limit`` asked for, ``None`` when none was.

    Construction checks the arrays and raises :class:`~smartmixed_np.errors.DataError`
    (one line naming the file, or the source) for non-finite inputs, labels that are
    not integers in ``[0, num_classes)``, or splits whose shapes do not match.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_dim: int
    name: str
    source: str
    image_shape: Optional[tuple[int, int]]
    train_available: Optional[int] = None
    train_requested: Optional[int] = None

    def __post_init__(self) -> None:
        _check_split_dataset(self)

    @property
    def train_used(self) -> int:
        """Training-side examples in use: training and validation sets together.

        For IDX data, the examples of the official training set that were kept
        (``min(train_requested, train_available)``).
        """
        return len(self.y_train) + len(self.y_val)

    @property
    def train_limit_capped(self) -> bool:
        """Whether ``train_limit`` asked for more examples than the official training set has.

        Then all ``train_available`` examples are used; a caller can say so, e.g.
        "using all 22,699 training images (--train-limit asked for 100,000)".
        """
        return (
            self.train_requested is not None
            and self.train_available is not None
            and self.train_requested > self.train_available
        )

    def __repr__(self) -> str:
        return (
            f"SplitDataset(name={self.name!r}, train={len(self.y_train)}, val={len(self.y_val)}, "
            f"test={len(self.y_test)}, input_dim={self.input_dim}, num_classes={self.num_classes}, "
            f"source={self.source!r})"
        )


def load_dataset(
    name: str,
    data_dir: PathLike | None = None,
    *,
    train_limit: int | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    download: bool = True,
    progress: bool = False,
    mirror: str | None = None,
    **synthetic_options,
) -> SplitDataset:
    """Load a dataset by name and split it into training, validation and test sets.

    Args:
        name: one of :data:`DATASETS` (case and ``_`` for ``-`` do not matter).
        data_dir: IDX datasets only: the dataset's folder, or a parent folder holding
            ``<name>/``. Default: ``$SMARTMIXED_DATA/<name>``, then the download cache.
        train_limit: keep at most this many training examples, for quick runs. For IDX
            data it is applied to the official training set *before* the validation
            split, stratified by class and determined by ``split_seed``; for synthetic
            data, fewer training examples are generated.
        val_fraction: IDX datasets: share of the official training set held out for
            validation, per class, in [0, 1). Synthetic datasets generate their
            validation set separately (``n_val``) and ignore it.
        split_seed: seed of the train-limit and validation selections (IDX), or of the
            generator (synthetic, unless ``seed=`` is given). The same seed gives the
            same split, bit for bit.
        download: allow downloading an IDX dataset that is not found locally.
        progress: report download progress on stderr.
        mirror: a base URL to download from instead of the dataset's own mirrors.
        **synthetic_options: synthetic datasets only. Both take ``n_train``, ``n_val``,
            ``n_test`` (default 12000/2000/4000 for synth-digits, 2400/600/1500 for
            spirals) and ``seed``; spirals also ``num_classes`` (3), ``noise`` (0.05)
            and ``turns`` (1.25).

    Returns:
        a :class:`SplitDataset`; x float32 ``(n, d)``, y int64 ``(n,)``.

    Raises:
        DataError: unknown name or option, files missing or corrupt, labels out of
            range, or a dataset that is neither local nor downloadable (the message says
            how to point the program at a local copy).
    """
    key = _canonical_name(name)
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if train_limit is not None and (int(train_limit) != train_limit or train_limit < 1):
        raise DataError(f"train_limit must be a positive integer, got {train_limit!r}")

    if key in _SYNTHETIC_SIZES:
        if data_dir is not None:
            raise DataError(f"dataset {key!r} is generated, it takes no data folder (got {data_dir})")
        return _load_synthetic(key, train_limit, split_seed, synthetic_options)

    if synthetic_options:
        raise DataError(f"dataset {key!r} takes no options {sorted(synthetic_options)} (they are for synthetic datasets)")
    folder = find_dataset_folder(key, data_dir, download=download, progress=progress, mirror=mirror)
    return _load_idx(key, folder, train_limit, val_fraction, split_seed)


def find_dataset_folder(
    name: str, data_dir: PathLike | None = None, *, download: bool = True, progress: bool = False, mirror: str | None = None
) -> Path:
    """The folder holding the four IDX files of dataset ``name``.

    Looks in ``data_dir`` (the dataset's folder or its parent), else in
    ``$SMARTMIXED_DATA`` (the same two layouts), else in the download cache,
    downloading if allowed; see the module docstring.

    Args:
        name: one of the IDX datasets of :data:`DATASETS`.
        data_dir: the dataset's folder or a folder holding ``<name>/``; when given,
            the only place looked in.
        download: allow downloading into the cache.
        progress: report download progress on stderr.
        mirror: base URL(s) to download from instead of the dataset's own mirrors
            (the form of :func:`~smartmixed_np.data.download.parse_mirrors`); default
            ``$SMARTMIXED_MIRROR``, else the dataset's own.

    Returns:
        a folder in which every file of :data:`~smartmixed_np.data.download.IDX_FILES`
        exists (each gzip-compressed or, under the name without ``.gz``, raw).

    Raises:
        DataError: a given folder that does not exist or lacks a file (the message names
            the file), a folder named after another dataset, or no local copy and no
            download (one line naming every place looked in, and how to fix it).
    """
    key = _canonical_name(name)
    if data_dir is not None:
        given = Path(data_dir).expanduser()
        if not given.exists():
            raise DataError(f"{given}: data folder for {key} does not exist")
        if not given.is_dir():
            raise DataError(f"{given}: is not a folder (give the folder of {key}, or a folder holding {key}/)")
        folder, other = _locate(given, key)
        if other:
            raise DataError(
                f"{given}: holds the files of dataset {other} (by the folder's name), not {key}; "
                f"give the folder of {key}, or a folder holding {key}/"
            )
        # No layout matched: `given` is then taken for the dataset's own folder, and
        # the error names the files missing from it.
        _require_files(folder or given, key, f"(looked in {given} and {given / key})")
        return folder or given

    searched = []  # every place looked in, for the error message
    env_value = os.environ.get(DATA_ENV, "")
    if env_value:
        given = Path(env_value).expanduser()
        if given.is_dir():
            folder, other = _locate(given, key)
            if folder is not None:
                _require_files(folder, key, f"(from {DATA_ENV}={env_value})")
                return folder
            why = (
                f"it holds the files of dataset {other} (by the folder's name), not {key}"
                if other
                else f"it has no {key}/ subfolder and holds no {key} files"
            )
            searched.append(f"{DATA_ENV}={env_value} ({why})")
        else:
            searched.append(f"{DATA_ENV}={env_value} (no such folder)")
    else:
        searched.append(f"{DATA_ENV} (not set)")

    cache = default_cache_dir() / key
    if not download:
        if all(_existing(cache / file_name).is_file() for file_name in IDX_FILES):
            return cache
        searched.append(f"the download cache {cache} ({'incomplete' if cache.is_dir() else 'nothing there'})")
        raise DataError(
            f"dataset {key} not found: looked in {'; '.join(searched)}; downloading is off; {local_copy_hint(key)}"
        )
    if key not in REGISTRY:
        raise DataError(f"dataset {key} not found: looked in {'; '.join(searched)}; it cannot be downloaded; {local_copy_hint(key)}")
    searched.append(f"the download cache {cache}")
    try:
        return ensure_dataset(key, progress=progress, mirrors=mirror)
    except DataError as error:
        # ensure_dataset's message says what failed and how to use a local copy.
        raise DataError(f"dataset {key} not found locally (looked in {'; '.join(searched)}) and not downloaded: {error}") from None


def _locate(given: Path, key: str) -> tuple[Path | None, str]:
    """Find dataset ``key`` in folder ``given``, in either layout.

    Returns:
        ``(folder, "")``: ``given/<key>`` if that is a folder (``given`` is a parent),
        else ``given`` itself if it holds any of the dataset's files (``given`` is the
        dataset's own folder; whether all four are there is checked by the caller);
        ``(None, other)`` when ``given`` holds such files but is named after another
        dataset ``other``; ``(None, "")`` when neither layout matches.
    """
    if (given / key).is_dir():
        return given / key, ""
    if not any(_existing(given / file_name).is_file() for file_name in IDX_FILES):
        return None, ""
    named_after = given.name.lower().replace("_", "-")
    if named_after in _IDX_DATASETS and named_after != key:
        return None, named_after
    return given, ""


def stratified_split(
    labels: np.ndarray, held_out: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split example indices in two, with the same class proportions in each part.

    Each class ``c`` with ``n_c`` examples gives ``held_out * n_c / n`` of them to the
    held-out part, rounded so that the total is exactly ``held_out`` (largest remainders
    get the extra examples): every class is within one example of its exact share.
    Which examples of a class are held out is chosen by ``rng``.

    Args:
        labels: int ``(n,)``.
        held_out: size of the held-out part, 0..n.
        rng: generator choosing the examples.

    Returns:
        ``(kept, held)``: sorted int64 index arrays ``(n - held_out,)`` and ``(held_out,)``
        that together cover ``0..n-1`` once.
    """
    if not 0 <= held_out <= labels.size:
        raise ValueError(f"held_out must be in 0..{labels.size}, got {held_out}")
    if labels.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    shares = held_out * counts / labels.size
    quota = np.floor(shares).astype(np.int64)
    # Hand the examples lost to flooring to the classes with the largest remainders;
    # a stable sort makes ties go to the smaller class label, deterministically.
    leftovers = held_out - int(quota.sum())
    quota[np.argsort(-(shares - quota), kind="stable")[:leftovers]] += 1

    held_parts = []
    for label, take in zip(classes, quota):
        members = np.flatnonzero(labels == label)
        held_parts.append(rng.permutation(members)[:take])
    held = np.sort(np.concatenate(held_parts))
    is_held = np.zeros(labels.size, dtype=bool)
    is_held[held] = True
    return np.flatnonzero(~is_held), held


def _load_idx(name: str, folder: Path, train_limit, val_fraction: float, split_seed: int) -> SplitDataset:
    x_train_all, y_train_all, image_shape = _read_split(folder, IDX_FILES[0], IDX_FILES[1])
    x_test, y_test, test_shape = _read_split(folder, IDX_FILES[2], IDX_FILES[3])
    if test_shape != image_shape:
        raise DataError(
            f"{folder}: training images are {image_shape[0]}x{image_shape[1]} "
            f"but test images are {test_shape[0]}x{test_shape[1]}"
        )

    # Separate streams for the two selections, so that the validation draw does not
    # depend on whether a train_limit consumed random numbers before it.
    limit_rng, val_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(split_seed).spawn(2))
    train_available = len(y_train_all)
    if train_limit is not None and train_limit < len(y_train_all):
        kept, _ = stratified_split(y_train_all, len(y_train_all) - train_limit, limit_rng)
        x_train_all, y_train_all = x_train_all[kept], y_train_all[kept]
    train, val = stratified_split(y_train_all, round(val_fraction * len(y_train_all)), val_rng)

    return SplitDataset(
        x_train=x_train_all[train],
        y_train=y_train_all[train],
        x_val=x_train_all[val],
        y_val=y_train_all[val],
        x_test=x_test,
        y_test=y_test,
        num_classes=_IDX_CLASSES,
        input_dim=x_test.shape[1],
        name=name,
        source=str(folder),
        image_shape=image_shape,
        train_available=train_available,
        train_requested=None if train_limit is None else int(train_limit),
    )


def _read_split(folder: Path, images_name: str, labels_name: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Read one images/labels pair: x float32 ``(n, h*w)`` in [0, 1], y int64 ``(n,)``, ``(h, w)``."""
    images_path, labels_path = _existing(folder / images_name), _existing(folder / labels_name)
    images, labels = read_idx_pair(images_path, labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{images_path}: expected uint8 images of shape (n, height, width), "
            f"found {images.dtype} of shape {images.shape}"
        )
    count, height, width = images.shape
    if count == 0:
        raise DataError(f"{images_path}: holds no images (the header says 0x{height}x{width})")
    if height == 0 or width == 0:
        raise DataError(f"{images_path}: images of {height}x{width} pixels hold no data")
    labels = _checked_labels(labels, labels_path, _IDX_CLASSES)
    # Divide (not multiply by 1/255) so that 255 maps to exactly 1.0; in place, to
    # spare a second array of the whole set.
    x = images.reshape(count, height * width).astype(np.float32)
    x /= np.float32(255)
    return x, labels, (height, width)


def _checked_labels(labels: np.ndarray, path: Path, num_classes: int) -> np.ndarray:
    """Labels as int64 ``(n,)``, refusing any that are not whole numbers in ``[0, num_classes)``.

    IDX may store labels as floats: whole numbers are accepted, NaN, infinities and
    fractions are not (cast to int64, NaN becomes -2**63 and reaches the loss as an
    index).
    """
    if labels.dtype.kind == "f":
        whole = np.isfinite(labels) & (labels == np.floor(labels))
        if not whole.all():
            index = int(np.flatnonzero(~whole)[0])
            raise DataError(f"{path}: label {float(labels[index])!r} at index {index} is not a whole number")
    elif labels.dtype.kind not in "iu":
        raise DataError(f"{path}: labels must be integers, found {labels.dtype}")
    _check_label_range(labels, num_classes, str(path))
    return labels.astype(np.int64)


def _check_label_range(labels: np.ndarray, num_classes: int, where: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        value = bad[0].item()
        raise DataError(f"{where}: label {value} out of range [0, {num_classes}) ({bad.size} labels out of range)")


def _check_split_dataset(data: SplitDataset) -> None:
    """Refuse arrays that no network can learn from or be scored on, each in a few reductions."""
    if isinstance(data.num_classes, bool) or int(data.num_classes) != data.num_classes or data.num_classes < 1:
        raise DataError(f"dataset {data.name}: num_classes must be a positive integer, got {data.num_classes!r}")
    for split in ("train", "val", "test"):
        x, y = np.asarray(getattr(data, f"x_{split}")), np.asarray(getattr(data, f"y_{split}"))
        if x.ndim != 2 or x.shape[1] != data.input_dim or y.ndim != 1 or len(y) != len(x):
            raise DataError(
                f"{_origin(data, split, 'inputs')}: {split} set of shape {x.shape} with labels of shape "
                f"{y.shape}; expected (n, {data.input_dim}) and (n,)"
            )
        if x.dtype.kind not in "iuf":
            raise DataError(f"{_origin(data, split, 'inputs')}: {split} inputs must be real numbers, found {x.dtype}")
        if x.size and x.dtype.kind == "f":
            # NaN propagates through min and max, and an infinity ends up in one of
            # them: two reductions, without the temporary array of np.isfinite(x).all().
            with np.errstate(invalid="ignore"):
                finite = bool(np.isfinite(x.min())) and bool(np.isfinite(x.max()))
            if not finite:
                bad = ~np.isfinite(x)
                first = int(np.flatnonzero(bad.any(axis=1))[0])
                raise DataError(
                    f"{_origin(data, split, 'inputs')}: the {split} inputs hold {int(bad.sum())} non-finite "
                    f"values (NaN or infinity), the first in example {first}; inputs must be finite numbers"
                )
        if y.dtype.kind not in "iu":
            raise DataError(f"{_origin(data, split, 'labels')}: {split} labels must be integers, found {y.dtype}")
        if y.size and (y.min() < 0 or y.max() >= data.num_classes):
            _check_label_range(y, int(data.num_classes), _origin(data, split, "labels"))


def _origin(data: SplitDataset, split: str, what: str) -> str:
    """The file a split's inputs or labels came from, or the dataset's name and source."""
    if data.name in _IDX_DATASETS and data.source != "synthetic":
        index = (2 if split == "test" else 0) + (1 if what == "labels" else 0)
        return str(_existing(Path(data.source) / IDX_FILES[index]))
    return f"dataset {data.name} ({data.source})"


def _load_synthetic(name: str, train_limit, split_seed: int, options: dict) -> SplitDataset:
    unknown = sorted(set(options) - set(_SYNTHETIC_OPTIONS[name]))
    if unknown:
        raise DataError(
            f"unknown option(s) {', '.join(unknown)} for dataset {name}; "
            f"known: {', '.join(_SYNTHETIC_OPTIONS[name])}"
        )
    sizes = [options.get(key, default) for key, default in zip(("n_train", "n_val", "n_test"), _SYNTHETIC_SIZES[name])]
    for key, size in zip(("n_train", "n_val", "n_test"), sizes):
        if int(size) != size or size < 0:
            raise DataError(f"{key} for dataset {name} must be a non-negative integer, got {size!r}")
    if train_limit is not None:
        sizes[0] = min(sizes[0], train_limit)
    # One seed per split, derived from one seed: the test set stays the same whatever
    # n_train is.
    base_seed = options.get("seed", split_seed)
    seeds = [int(child.generate_state(1)[0]) for child in np.random.SeedSequence(base_seed).spawn(3)]

    if name == "synth-digits":
        splits = [make_synth_digits(int(size), seed=seed) for size, seed in zip(sizes, seeds)]
        num_classes, input_dim, image_shape = 10, 28 * 28, (28, 28)
    else:
        num_classes = int(options.get("num_classes", 3))
        if num_classes < 2:
            raise DataError(f"num_classes for dataset spirals must be at least 2, got {num_classes}")
        spiral_options = {key: float(options[key]) for key in ("noise", "turns") if key in options}
        splits = []
        for size, seed in zip(sizes, seeds):
            # make_spirals interleaves the classes, so any prefix of it is balanced.
            n_per_class = max(1, -(-int(size) // num_classes))
            x, y = make_spirals(n_per_class, num_classes, seed=seed, **spiral_options)
            splits.append((x[: int(size)], y[: int(size)]))
        input_dim, image_shape = 2, None

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = splits
    return SplitDataset(
        x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test,
        num_classes=num_classes, input_dim=input_dim, name=name, source="synthetic", image_shape=image_shape,
        train_requested=None if train_limit is None else int(train_limit),
    )


def _canonical_name(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return key


def _existing(path: Path) -> Path:
    """``path``, or its uncompressed twin (name without ``.gz``) if only that exists."""
    if path.is_file():
        return path
    raw = path.with_suffix("") if path.suffix == ".gz" else path
    return raw if raw.is_file() else path


def _require_files(folder: Path, name: str, context: str) -> None:
    for file_name in IDX_FILES:
        path = folder / file_name
        if os.path.lexists(path) and not path.is_file():  # a folder, FIFO, device or broken link
            kind = "a broken link" if not path.exists() else "not a regular file"
            raise DataError(f"{path}: is {kind}, expected a file of dataset {name} {context}")
    missing = [file_name for file_name in IDX_FILES if not _existing(folder / file_name).is_file()]
    if missing:
        raise DataError(f"{folder / missing[0]}: missing file of dataset {name} {context}; missing: {', '.join(missing)}")
