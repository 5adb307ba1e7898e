"""Data loading: IDX files, the download cache, the named datasets, synthetic data.

Everything here returns host NumPy arrays; moving them to a device is the caller's
business (see :mod:`smartmixed_np.backend`).
"""

from .idx import read_idx, read_idx_pair, write_idx

__all__ = ["read_idx", "read_idx_pair", "write_idx"]
