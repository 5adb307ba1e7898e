"""Reading and writing the IDX format of MNIST, Fashion-MNIST and KMNIST.

An IDX file is a 4-byte magic number, then one big-endian uint32 per dimension, then
the values themselves, big-endian, in C order::

    byte 0-1   0x00 0x00
    byte 2     data type code (table below)
    byte 3     rank, the number of dimensions
    then       rank x uint32 sizes, big-endian
    then       prod(sizes) values of the data type, big-endian

    code  type                   numpy
    0x08  unsigned byte          uint8
    0x09  signed byte            int8
    0x0B  short (2 bytes)        >i2
    0x0C  int (4 bytes)          >i4
    0x0D  float (4 bytes)        >f4
    0x0E  double (8 bytes)       >f8

The files are usually distributed gzip-compressed (``*.gz``). Whether a file is
compressed is decided by its first two bytes (the gzip magic ``1f 8b``), not by its
name, since users unpack files and keep the name, or the reverse.

Every problem with a file raises :class:`~smartmixed_np.errors.DataError` with a
one-line message that starts with the file's path and says what is wrong.
"""

from __future__ import annotations

import gzip as gzip_module
import math
import os
import zlib
from pathlib import Path
from typing import Union

import numpy as np

from ..errors import DataError
from ..fileio import write_bytes

__all__ = ["read_idx", "read_idx_pair", "write_idx", "IDX_DTYPES"]

PathLike = Union[str, "os.PathLike[str]"]

#: IDX data type code -> big-endian NumPy dtype of the values on disk.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_OF_DTYPE = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}
_TYPE_NAMES = {0x08: "ubyte", 0x09: "byte", 0x0B: "short", 0x0C: "int", 0x0D: "float", 0x0E: "double"}

# The format allows rank up to 255, but MNIST-family data uses 1 (labels) and 3
# (images); anything above 4 in a file we are asked to read is far likelier to be
# a corrupt header than real data.
MAX_RANK = 4
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw, into a NumPy array.

    Args:
        path: the file. Compression is detected from the content, not the name.

    Returns:
        array of shape ``(d0, ..., d_{r-1})`` as given by the header (``r`` in 1..4),
        in native byte order, with the dtype of the file's type code (``uint8`` for
        MNIST images and labels). The array is a fresh, writable copy.

    Raises:
        DataError: missing or unreadable file, corrupt or truncated gzip stream,
            wrong magic number, unknown type code, rank outside 1..4, or a payload
            shorter or longer than the header's dimensions imply.
    """
    content = _read_bytes(path)
    if content[:2] == _GZIP_MAGIC:
        content = _gunzip(path, content)

    code, dims = _parse_header(path, content)
    dtype = IDX_DTYPES[code]
    header_len = 4 + 4 * len(dims)
    expected = math.prod(dims) * dtype.itemsize
    found = len(content) - header_len
    if found != expected:
        problem = "truncated IDX file" if found < expected else "trailing bytes after IDX data"
        raise DataError(
            f"{path}: {problem}: header says {_shape_text(dims)} {_TYPE_NAMES[code]} values "
            f"({expected} bytes), found {found} bytes"
        )
    # frombuffer gives a read-only view of `content`; astype to native order copies it.
    values = np.frombuffer(content, dtype=dtype, offset=header_len)
    return values.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


def read_idx_pair(images_path: PathLike, labels_path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an images file and its labels file, checking that they belong together.

    Args:
        images_path: IDX file of images, shape ``(N, ...)`` (``(N, 28, 28)`` for MNIST).
        labels_path: IDX file of labels, shape ``(N,)``.

    Returns:
        ``(images, labels)`` as :func:`read_idx` returns them: images ``(N, ...)``,
        labels ``(N,)``. Label values are not checked here (the caller knows the
        number of classes).

    Raises:
        DataError: anything :func:`read_idx` raises; labels that are not rank 1; or a
            different number of images and labels (the message names both files).
    """
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if labels.ndim != 1:
        raise DataError(
            f"{labels_path}: a labels file must have rank 1, this one has shape {_shape_text(labels.shape)}"
        )
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"count mismatch: {images_path} holds {images.shape[0]} images "
            f"but {labels_path} holds {labels.shape[0]} labels"
        )
    return images, labels


def write_idx(path: PathLike, array: np.ndarray, gzip: bool = True) -> Path:
    """Write an array as an IDX file, atomically.

    The bytes go to a temporary file in the same folder, which is then renamed over
    ``path`` (``os.replace``): a reader never sees a half-written file, and a failed
    write leaves any earlier file at ``path`` untouched.

    Args:
        path: destination; its folder must exist.
        array: shape ``(d0, ..., d_{r-1})`` with rank 1..4 and a dtype among uint8,
            int8, int16, int32, float32, float64 (any byte order).
        gzip: compress the file. The gzip header carries no timestamp, so the same
            array always gives the same bytes (and the same MD5).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        DataError: a dtype or rank the IDX format cannot hold, or a dimension of 2**32
            or more.
    """
    path = Path(path)
    array = np.asarray(array)
    code = _CODE_OF_DTYPE.get(array.dtype.newbyteorder("="))
    if code is None:
        supported = ", ".join(str(dtype.newbyteorder("=")) for dtype in IDX_DTYPES.values())
        raise DataError(f"{path}: cannot write dtype {array.dtype} as IDX (supported: {supported})")
    if not 1 <= array.ndim <= MAX_RANK:
        raise DataError(f"{path}: cannot write rank {array.ndim} as IDX (supported: 1..{MAX_RANK})")
    if any(size >= 2**32 for size in array.shape):
        raise DataError(f"{path}: dimension too large for IDX: {_shape_text(array.shape)}")

    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    content = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    if gzip:
        content = gzip_module.compress(content, mtime=0)
    write_bytes(path, content)
    return path


def _read_bytes(path: PathLike) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected an IDX file") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error.strerror or error}") from None


def _gunzip(path: PathLike, content: bytes) -> bytes:
    """Decompress a gzip file of one or more members, telling apart its failure modes.

    zlib is used rather than ``gzip.decompress`` because it says where the stream
    ended, which separates a cut-off file from garbage appended to a good one.
    """
    parts = []
    rest = content
    while rest:
        decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # 16+: gzip framing
        try:
            parts.append(decompressor.decompress(rest))
        except zlib.error as error:
            raise DataError(f"{path}: not a valid gzip stream ({_one_line(error)})") from None
        if not decompressor.eof:
            raise DataError(f"{path}: truncated gzip stream (the compressed data ends early)")
        rest = decompressor.unused_data
        # Concatenated gzip members are legal; zero padding after the last one is
        # tolerated by gzip(1), and so here.
        if rest and rest[:2] != _GZIP_MAGIC:
            if rest.strip(b"\0"):
                raise DataError(f"{path}: not a valid gzip stream ({len(rest)} bytes of garbage after its end)")
            break
    return b"".join(parts)


def _parse_header(path: PathLike, content: bytes) -> tuple[int, tuple[int, ...]]:
    """Check the magic number and return ``(type code, dimensions)``."""
    if len(content) < 4:
        raise DataError(f"{path}: truncated IDX file: {len(content)} bytes, too short for the 4-byte magic number")
    zero_0, zero_1, code, rank = content[:4]
    magic_text = content[:4].hex(" ")
    if zero_0 != 0 or zero_1 != 0:
        raise DataError(f"{path}: not an IDX file: bad magic number {magic_text} (expected 00 00 <type> <rank>)")
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{known:02X}" for known in IDX_DTYPES)
        raise DataError(f"{path}: unknown IDX data type code 0x{code:02X} in magic number {magic_text} (known: {known})")
    if not 1 <= rank <= MAX_RANK:
        raise DataError(f"{path}: bad IDX rank {rank} in magic number {magic_text} (expected 1..{MAX_RANK})")
    header_len = 4 + 4 * rank
    if len(content) < header_len:
        raise DataError(
            f"{path}: truncated IDX file: a rank-{rank} header needs {header_len} bytes, found {len(content)}"
        )
    dims = tuple(int(size) for size in np.frombuffer(content, dtype=">u4", count=rank, offset=4))
    return code, dims


def _shape_text(dims: tuple[int, ...]) -> str:
    return "x".join(str(size) for size in dims) if dims else "()"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
