"""Data loading: IDX files, the download cache, the named datasets, synthetic data.

Everything here returns host NumPy arrays; moving them to a device is the caller's
business (see :mod:`smartmixed_np.backend`).
"""

from .download import (
    CACHE_ENV,
    DATA_ENV,
    IDX_FILES,
    REGISTRY,
    RemoteDataset,
    default_cache_dir,
    ensure_dataset,
    fetch,
    file_md5,
)
from .idx import read_idx, read_idx_pair, write_idx
from .synthetic import make_spirals, make_synth_digits

__all__ = [
    "CACHE_ENV",
    "DATA_ENV",
    "IDX_FILES",
    "REGISTRY",
    "RemoteDataset",
    "default_cache_dir",
    "ensure_dataset",
    "fetch",
    "file_md5",
    "make_spirals",
    "make_synth_digits",
    "read_idx",
    "read_idx_pair",
    "write_idx",
]
