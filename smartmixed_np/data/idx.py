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

Hostile files are expected (a download gone wrong, a file made to break the
reader), so the reader never trusts the file further than it can check it:

* only regular files are opened (after following links): a FIFO would block the
  reader forever and ``/dev/zero`` would fill the memory;
* the header is read first and the size it claims is checked before the body is
  read: against the file's size for a raw file, against the machine's memory for a
  compressed one;
* a gzip stream is decompressed a bounded piece at a time and never beyond what the
  header claims (plus a bounded look past it to report trailing data), so a small
  file that inflates to gigabytes costs no more memory than its header admits to.
"""

from __future__ import annotations

import gzip as gzip_module
import math
import os
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Union

import numpy as np

from ..errors import DataError
from ..fileio import open_regular_file, write_bytes

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
# Compressed input is read, and output produced, in pieces of this size.
_CHUNK = 1 << 20
# How far past the end of the data a gzip stream is followed to count trailing
# bytes for the message; beyond this the count is reported as "more than".
_TRAILING_LOOK = 1 << 24


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw, into a NumPy array.

    Args:
        path: the file. Compression is detected from the content, not the name.

    Returns:
        array of shape ``(d0, ..., d_{r-1})`` as given by the header (``r`` in 1..4),
        in native byte order, with the dtype of the file's type code (``uint8`` for
        MNIST images and labels). The array is a fresh, writable copy. Dimensions
        of 0 are allowed here (an empty array); :func:`read_idx_pair` refuses them.

    Raises:
        DataError: missing or unreadable file, not a regular file (a folder, FIFO
            or device), corrupt or truncated gzip stream, wrong magic number,
            unknown type code, rank outside 1..4, a payload shorter or longer than
            the header's dimensions imply, or a size this machine cannot hold.
    """
    with _open_regular_file(path) as (file, size):
        try:
            compressed = file.read(2) == _GZIP_MAGIC
            file.seek(0)
            if compressed:
                return _read_compressed(path, _GzipStream(path, file, size))
            return _read_raw(path, file, size)
        except OSError as error:
            raise DataError(f"{path}: cannot read: {error.strerror or _one_line(error)}") from None


def read_idx_pair(images_path: PathLike, labels_path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an images file and its labels file, checking that they belong together.

    Args:
        images_path: IDX file of images, shape ``(N, ...)`` (``(N, 28, 28)`` for MNIST).
        labels_path: IDX file of labels, shape ``(N,)``.

    Returns:
        ``(images, labels)`` as :func:`read_idx` returns them: images ``(N, ...)``
        with rank 2 or more, every value finite; labels ``(N,)``, integers
        ``>= 0``. Labels are not checked against a number of classes here (the
        caller knows it).

    Raises:
        DataError: anything :func:`read_idx` raises; labels that are not rank 1, not
            integers, or negative; images of rank 1, of size 0 (``N x 0 x 0``) or
            holding NaN or infinity; no examples; or a different number of images
            and labels (the message names both files).
    """
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if labels.ndim != 1:
        raise DataError(
            f"{labels_path}: a labels file must have rank 1, this one has shape {_shape_text(labels.shape)}"
        )
    if labels.dtype.kind not in "iu":
        # Float labels would be cast to class indices somewhere later, NaN to -2**63.
        raise DataError(f"{labels_path}: labels must be integers, this file holds {labels.dtype} values")
    if labels.size and labels.min() < 0:
        first = int(np.flatnonzero(labels < 0)[0])
        raise DataError(f"{labels_path}: label {labels[first]} at position {first} is negative (class indices start at 0)")
    if images.ndim < 2:
        raise DataError(
            f"{images_path}: an images file must have rank 2 or more (N, ...), this one has shape "
            f"{_shape_text(images.shape)} (is it a labels file?)"
        )
    if images.shape[0] == 0:
        raise DataError(f"{images_path}: holds no examples (shape {_shape_text(images.shape)})")
    if images.size == 0:
        raise DataError(
            f"{images_path}: images of size {_shape_text(images.shape[1:])} hold no values "
            f"(shape {_shape_text(images.shape)})"
        )
    if images.dtype.kind == "f":
        finite = np.isfinite(images.reshape(len(images), -1)).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise DataError(
                f"{images_path}: {bad.size} images hold NaN or infinite values (the first is image {int(bad[0])})"
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


# ---------------------------------------------------------------- opening the file
def _open_regular_file(path: PathLike) -> Any:
    """Open ``path`` if it is a regular file: :func:`smartmixed_np.fileio.open_regular_file`."""
    return open_regular_file(path, "a regular IDX file", DataError)


# ---------------------------------------------------------------- reading the content
def _read_raw(path: PathLike, file: BinaryIO, size: int) -> np.ndarray:
    """The array of an uncompressed file of ``size`` bytes, checked against its header first."""
    code, dims = _read_header(path, file)
    dtype = IDX_DTYPES[code]
    header_len = 4 + 4 * len(dims)
    expected = math.prod(dims) * dtype.itemsize
    _check_payload_size(path, code, dims, expected, size - header_len)
    _check_fits_in_memory(path, code, dims, expected)
    # Allocate only now that the file is known to hold exactly this many bytes.
    try:
        values = np.empty(math.prod(dims), dtype=dtype)
    except MemoryError:
        _no_memory(path, code, dims, expected)
    target = memoryview(values.view(np.uint8))
    filled = 0
    while filled < expected:
        count = file.readinto(target[filled:])
        if not count:  # the file shrank since fstat
            _check_payload_size(path, code, dims, expected, filled)
        filled += count
    if file.read(1):  # or grew
        _check_payload_size(path, code, dims, expected, expected + 1)
    return _native(values).reshape(dims)


def _read_compressed(path: PathLike, stream: "_GzipStream") -> np.ndarray:
    """The array of a gzip file, never decompressing more than the header claims (+ a bounded look)."""
    code, dims = _read_header(path, stream)
    dtype = IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    _check_fits_in_memory(path, code, dims, expected)
    try:
        body = stream.read(expected)
    except MemoryError:  # less memory free than the machine has (limits, other processes)
        _no_memory(path, code, dims, expected)
    if len(body) < expected:
        _check_payload_size(path, code, dims, expected, len(body))
    extra = stream.count_rest(_TRAILING_LOOK)
    if extra > _TRAILING_LOOK:  # a bomb, or a header that lies: do not inflate it all to count it
        raise DataError(
            f"{path}: trailing bytes after IDX data: header says {_shape_text(dims)} {_TYPE_NAMES[code]} "
            f"values ({expected} bytes), found more than {expected + _TRAILING_LOOK} bytes"
        )
    _check_payload_size(path, code, dims, expected, expected + extra)
    # A bytearray is writable, so the array is too; no copy needed.
    return _native(np.frombuffer(body, dtype=dtype)).reshape(dims)


def _native(values: np.ndarray) -> np.ndarray:
    """``values`` in native byte order, swapped in place (no second copy of the data)."""
    if values.dtype.isnative:
        return values
    values.byteswap(inplace=True)
    return values.view(values.dtype.newbyteorder())


def _check_payload_size(path: PathLike, code: int, dims: tuple[int, ...], expected: int, found: int) -> None:
    if found != expected:
        problem = "truncated IDX file" if found < expected else "trailing bytes after IDX data"
        raise DataError(
            f"{path}: {problem}: header says {_shape_text(dims)} {_TYPE_NAMES[code]} values "
            f"({expected} bytes), found {found} bytes"
        )


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # not on this platform
        return None


def _check_fits_in_memory(path: PathLike, code: int, dims: tuple[int, ...], expected: int) -> None:
    memory = _physical_memory()
    if memory is not None and expected > memory:
        raise DataError(
            f"{path}: header says {_shape_text(dims)} {_TYPE_NAMES[code]} values "
            f"({expected / 2**30:.1f} GiB), more than this machine's memory ({memory / 2**30:.1f} GiB)"
        )


def _no_memory(path: PathLike, code: int, dims: tuple[int, ...], expected: int) -> None:
    raise DataError(
        f"{path}: not enough memory to read {_shape_text(dims)} {_TYPE_NAMES[code]} values "
        f"({expected / 2**30:.2f} GiB)"
    ) from None


def _read_exactly(source, count: int) -> bytes:
    """Up to ``count`` bytes from a file or :class:`_GzipStream` (fewer only at its end)."""
    parts, got = [], 0
    while got < count:
        part = source.read(count - got)
        if not part:
            break
        parts.append(bytes(part))
        got += len(part)
    return b"".join(parts)


def _read_header(path: PathLike, source) -> tuple[int, tuple[int, ...]]:
    """Read and check the magic number and the dimensions; return ``(type code, dimensions)``."""
    content = _read_exactly(source, 4)
    if len(content) == 4:
        content += _read_exactly(source, 4 * content[3])
    return _parse_header(path, content)


class _GzipStream:
    """The decompressed content of a gzip file of one or more members, read a bounded piece at a time.

    zlib is used rather than :mod:`gzip` because it says where a member ended,
    which separates a cut-off file from garbage appended to a good one; its
    ``max_length`` bounds what one call produces. Concatenated members are legal;
    zero padding after the last one is tolerated by gzip(1), and so here. The
    reader never goes past the ``size`` bytes the file had when it was opened.
    """

    def __init__(self, path: PathLike, file: BinaryIO, size: int) -> None:
        self.path, self.file, self.left = path, file, size
        self.decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # 16+: gzip framing
        self.pending = b""  # compressed bytes not yet given to the decompressor
        self.output = b""  # decompressed bytes not yet returned
        self.done = False

    def _input(self) -> bytes:
        data = self.file.read(min(_CHUNK, self.left)) if self.left > 0 else b""
        # A file that shrank since it was opened ends here.
        self.left = self.left - len(data) if data else 0
        return data

    def _produce(self) -> bytes:
        """The next piece of output (at most ``_CHUNK`` bytes); ``b""`` at the end of the last member."""
        while not self.done:
            if not self.pending:
                self.pending = self._input()
            try:
                out = self.decompressor.decompress(self.pending, _CHUNK)
            except zlib.error as error:
                raise DataError(f"{self.path}: not a valid gzip stream ({_one_line(error)})") from None
            self.pending = self.decompressor.unconsumed_tail
            if self.decompressor.eof:
                self._next_member(self.decompressor.unused_data)
            elif not out and not self.pending and self.left <= 0:
                raise DataError(f"{self.path}: truncated gzip stream (the compressed data ends early)")
            if out:
                return out
        return b""

    def _next_member(self, rest: bytes) -> None:
        """After a member's end: start the next member, or accept zero padding to the end of the file."""
        while len(rest) < 2 and self.left > 0:
            rest += self._input()
        if rest[:2] == _GZIP_MAGIC:
            self.decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            self.pending = rest
            return
        # Not another member: only zero padding may follow, up to the end of the file.
        garbage, total = bool(rest.strip(b"\0")), len(rest)
        while self.left > 0:
            data = self._input()
            garbage, total = garbage or bool(data.strip(b"\0")), total + len(data)
        if garbage:
            raise DataError(f"{self.path}: not a valid gzip stream ({total} bytes of garbage after its end)")
        self.done = True

    def read(self, count: int) -> bytearray:
        """Up to ``count`` decompressed bytes (fewer only at the end of the stream)."""
        buffer = bytearray(self.output[:count])
        self.output = self.output[count:]
        while len(buffer) < count:
            piece = self._produce()
            if not piece:
                break
            need = count - len(buffer)
            buffer += piece[:need]
            self.output = piece[need:]
        return buffer

    def count_rest(self, limit: int) -> int:
        """How many bytes are left, counted (not kept) up to just past ``limit``."""
        extra = len(self.output)
        self.output = b""
        while extra <= limit:
            piece = self._produce()
            if not piece:
                break
            extra += len(piece)
        return extra


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
