"""Data loading: IDX files, the download cache, the named datasets, synthetic data.

Everything here returns host NumPy arrays; moving them to a device is the caller's
business (see :mod:`smartmixed_np.backend`).

    >>> from smartmixed_np.data import load_dataset
    >>> data = load_dataset("synth-digits", n_train=500, n_val=100, n_test=100)
    >>> data.x_train.shape, data.x_train.dtype, data.y_train.dtype
    ((500, 784), dtype('float32'), dtype('int64'))
"""

from .datasets import DATASETS, SplitDataset, find_dataset_folder, load_dataset, stratified_split
from .download import (
    CACHE_ENV,
    DATA_ENV,
    IDX_FILES,
    MIRROR_ENV,
    REGISTRY,
    RemoteDataset,
    default_cache_dir,
    ensure_dataset,
    fetch,
    file_md5,
    parse_mirrors,
)
from .idx import read_idx, read_idx_pair, write_idx
from .synthetic import make_spirals, make_synth_digits

__all__ = [
    "CACHE_ENV",
    "DATASETS",
    "DATA_ENV",
    "IDX_FILES",
    "MIRROR_ENV",
    "REGISTRY",
    "RemoteDataset",
    "SplitDataset",
    "default_cache_dir",
    "ensure_dataset",
    "fetch",
    "file_md5",
    "find_dataset_folder",
    "load_dataset",
    "make_spirals",
    "make_synth_digits",
    "parse_mirrors",
    "read_idx",
    "read_idx_pair",
    "stratified_split",
    "write_idx",
]
