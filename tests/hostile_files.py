"""Hostile files for the loaders' fuzzers: mutations of real files, reference decoders, isolation.

Used by ``tests/test_data_idx.py`` and ``tests/test_checkpoint.py``. A mutation is a
small frozen dataclass with an ``apply`` method (so hypothesis prints it readably
when it shrinks a failure); the strategies here draw stacks of them.

* IDX: byte flips, truncation at every region, header field rewrites (type code,
  rank, each dimension), insertions and deletions, appended junk or gzip members,
  applied to the compressed bytes or to the content inside the gzip.
* zip/npz: extra or foreign members, non-``.npy`` bytes, rewritten ``.npy`` headers
  (huge shapes, object and structured dtypes, garbage literals), pickled objects,
  patched compression method, flag and size fields, hostile ``__meta__`` JSON.
* JSON: a value anywhere in the tree replaced by a hostile one (wrong type, huge or
  negative numbers, NaN, deep nesting), keys deleted, invalid UTF-8, truncation.

:func:`reference_idx` decodes IDX the plain way (whole buffers, no limits), as the
oracle the real reader must agree with on small files. :func:`run_in_child` runs a
loader in a forked process under a time limit and an address-space limit, for the
cases where a broken loader would hang or exhaust the memory of the test process.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import pickle
import resource
import select
import signal
import tracemalloc
import stat
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from hypothesis import strategies as st

GZIP_MAGIC = b"\x1f\x8b"
IDX_CODES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# Values for a header's dimensions that sit on edges: empty, one, near the
# uint32 limit, the sizes that overflow int32 or make products huge.
EDGE_DIMS = [0, 1, 2, 3, 5, 28, 255, 256, 60000, 65535, 2**24, 2**31 - 1, 2**31, 2**32 - 1]


# ---------------------------------------------------------------- the IDX oracle
def reference_gunzip(data: bytes) -> bytes | None:
    """The content of a gzip file of one or more members with optional zero padding; None if invalid."""
    parts = []
    while True:
        decompressor = zlib.decompressobj(wbits=31)
        try:
            parts.append(decompressor.decompress(data))
        except zlib.error:
            return None
        if not decompressor.eof:
            return None
        data = decompressor.unused_data
        if not data:
            return b"".join(parts)
        if data[:2] != GZIP_MAGIC:
            return b"".join(parts) if not data.strip(b"\0") else None


def reference_idx(content: bytes) -> np.ndarray | None:
    """The array an IDX file holds (native byte order), or None when the file is not valid IDX."""
    if content[:2] == GZIP_MAGIC:
        content = reference_gunzip(content)
        if content is None:
            return None
    if len(content) < 4 or content[0] != 0 or content[1] != 0 or content[2] not in IDX_CODES:
        return None
    rank = content[3]
    if not 1 <= rank <= 4 or len(content) < 4 + 4 * rank:
        return None
    dims = struct.unpack(f">{rank}I", content[4 : 4 + 4 * rank])
    dtype = np.dtype(IDX_CODES[content[2]])
    if len(content) != 4 + 4 * rank + math.prod(dims) * dtype.itemsize:
        return None
    values = np.frombuffer(content, dtype=dtype, offset=4 + 4 * rank)
    return values.astype(dtype.newbyteorder("=")).reshape(dims)


def idx_claim(content: bytes) -> tuple[int, int, tuple[int, ...]] | None:
    """``(header length, payload bytes claimed, dims)`` of a raw IDX header, or None if the header is invalid."""
    if len(content) < 4 or content[0] != 0 or content[1] != 0 or content[2] not in IDX_CODES:
        return None
    rank = content[3]
    if not 1 <= rank <= 4 or len(content) < 4 + 4 * rank:
        return None
    dims = struct.unpack(f">{rank}I", content[4 : 4 + 4 * rank])
    return 4 + 4 * rank, math.prod(dims) * np.dtype(IDX_CODES[content[2]]).itemsize, dims


def reference_pair(images: np.ndarray | None, labels: np.ndarray | None) -> bool:
    """Whether two decoded files make a valid (images, labels) pair for read_idx_pair."""
    if images is None or labels is None:
        return False
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
        return False
    if images.ndim < 2 or images.shape[0] == 0 or images.size == 0:
        return False
    if images.dtype.kind == "f" and not np.isfinite(images).all():
        return False
    return images.shape[0] == labels.shape[0]


# ---------------------------------------------------------------- generic byte mutations
@dataclass(frozen=True)
class Flip:
    """XOR one byte (position taken modulo the length)."""

    position: int
    mask: int

    def apply(self, content: bytes) -> bytes:
        if not content:
            return content
        data = bytearray(content)
        data[self.position % len(data)] ^= self.mask
        return bytes(data)


@dataclass(frozen=True)
class Truncate:
    """Keep the first bytes: ``keep`` counted from the start, or from the end if ``from_end``."""

    keep: int
    from_end: bool = False

    def apply(self, content: bytes) -> bytes:
        if self.from_end:
            return content[: max(0, len(content) - 1 - self.keep % max(1, len(content)))]
        return content[: self.keep % (len(content) + 1)]


@dataclass(frozen=True)
class Insert:
    position: int
    data: bytes

    def apply(self, content: bytes) -> bytes:
        at = self.position % (len(content) + 1)
        return content[:at] + self.data + content[at:]


@dataclass(frozen=True)
class Delete:
    position: int
    length: int

    def apply(self, content: bytes) -> bytes:
        if not content:
            return content
        at = self.position % len(content)
        return content[:at] + content[at + self.length :]


@dataclass(frozen=True)
class Append:
    data: bytes

    def apply(self, content: bytes) -> bytes:
        return content + self.data


positions = st.integers(min_value=0, max_value=2**20)
junk = st.one_of(st.binary(min_size=1, max_size=64), st.integers(1, 300).map(lambda n: b"\0" * n))
byte_mutations = st.one_of(
    st.builds(Flip, positions, st.integers(1, 255)),
    st.builds(Flip, st.integers(0, 40), st.sampled_from([1, 0x80, 0xFF])),  # the headers, often
    st.builds(Truncate, positions, st.booleans()),
    st.builds(Truncate, st.integers(0, 40)),
    st.builds(Insert, positions, st.binary(min_size=1, max_size=16)),
    st.builds(Delete, positions, st.integers(1, 16)),
    st.builds(Append, junk),
)


# ---------------------------------------------------------------- IDX mutations
@dataclass(frozen=True)
class SetHeaderByte:
    """Rewrite byte 0..3 of the magic number (2: type code, 3: rank)."""

    index: int
    value: int

    def apply(self, content: bytes) -> bytes:
        if len(content) <= self.index:
            return content
        data = bytearray(content)
        data[self.index] = self.value
        return bytes(data)


@dataclass(frozen=True)
class SetDim:
    """Rewrite dimension ``which`` (modulo the rank the header claims) to ``value``."""

    which: int
    value: int

    def apply(self, content: bytes) -> bytes:
        if len(content) < 4 or content[3] == 0:
            return content
        at = 4 + 4 * (self.which % content[3])
        if len(content) < at + 4:
            return content
        return content[:at] + struct.pack(">I", self.value) + content[at + 4 :]


@dataclass(frozen=True)
class AppendGzipMember:
    """Append a second gzip member (legal framing) holding ``data``."""

    data: bytes

    def apply(self, content: bytes) -> bytes:
        return content + gzip.compress(self.data, mtime=0)


@dataclass(frozen=True)
class Inside:
    """Apply mutations to the content inside a gzip file and compress it again (raw files: as is)."""

    mutations: tuple
    level: int = 6

    def apply(self, content: bytes) -> bytes:
        inner = reference_gunzip(content) if content[:2] == GZIP_MAGIC else None
        if inner is None:
            return apply_all(self.mutations, content)
        return gzip.compress(apply_all(self.mutations, inner), compresslevel=self.level, mtime=0)


def apply_all(mutations, content: bytes) -> bytes:
    """Apply mutations in order; a zip-level one on bytes that are no longer a zip is skipped."""
    for mutation in mutations:
        try:
            content = mutation.apply(content)
        except NotAZip:
            continue
    return content


idx_header_mutations = st.one_of(
    st.builds(SetHeaderByte, st.just(2), st.one_of(st.sampled_from(sorted(IDX_CODES)), st.integers(0, 255))),
    st.builds(SetHeaderByte, st.just(3), st.one_of(st.integers(0, 6), st.integers(0, 255))),
    st.builds(SetHeaderByte, st.integers(0, 1), st.integers(1, 255)),
    st.builds(SetDim, st.integers(0, 3), st.one_of(st.sampled_from(EDGE_DIMS), st.integers(0, 2**32 - 1))),
)
idx_content_mutations = st.one_of(idx_header_mutations, byte_mutations, st.builds(AppendGzipMember, st.binary(max_size=8)))
idx_mutations = st.lists(
    st.one_of(
        idx_content_mutations,
        st.builds(Inside, st.lists(st.one_of(idx_header_mutations, byte_mutations), min_size=1, max_size=2).map(tuple),
                  st.integers(0, 9)),
    ),
    min_size=1,
    max_size=3,
).map(tuple)


def gzip_bomb(header: bytes, zeros: int) -> bytes:
    """A valid gzip file of ``header`` followed by ``zeros`` zero bytes, built without compressing them all.

    After a full flush the compressor starts afresh, so every 4 MiB block of zeros
    compresses to the same bytes: one is compressed and repeated.
    """
    block = 1 << 22
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate; the gzip framing is added here
    head = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
    unit = compressor.compress(b"\0" * block) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert unit == compressor.compress(b"\0" * block) + compressor.flush(zlib.Z_FULL_FLUSH)
    count, rest = divmod(zeros, block)
    if count < 2:
        return gzip.compress(header + b"\0" * zeros, mtime=0)
    tail = compressor.compress(b"\0" * rest) + compressor.flush()
    crc = zlib.crc32(header)
    zero_block = b"\0" * block
    for _ in range(count):
        crc = zlib.crc32(zero_block, crc)
    crc = zlib.crc32(b"\0" * rest, crc)
    framing = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = struct.pack("<II", crc, (len(header) + zeros) & 0xFFFFFFFF)
    return framing + head + unit * count + tail + trailer


def sparse_idx(path: str | os.PathLike, dims: tuple[int, ...]) -> None:
    """A valid raw ubyte IDX file of ``dims``, all zeros, written sparse (it takes no disk space)."""
    with open(path, "wb") as file:
        file.write(bytes([0, 0, 0x08, len(dims)]) + struct.pack(f">{len(dims)}I", *dims))
        file.truncate(4 + 4 * len(dims) + math.prod(dims))


def _crc_of_zeros(count: int, crc: int) -> int:
    block = b"\0" * (1 << 22)
    for _ in range(count // len(block)):
        crc = zlib.crc32(block, crc)
    return zlib.crc32(b"\0" * (count % len(block)), crc)


def sparse_npz(path: str | os.PathLike, name: str, shape: tuple[int, ...], meta: bytes = b"{}") -> None:
    """A valid .npz (stored members, as np.savez writes) holding ``__meta__`` and a uint8 array of
    zeros of ``shape``, the zeros written sparse: a file too large for a process to load, made in
    a moment and taking no disk space."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    big_header, count = header.getvalue(), math.prod(shape)
    members = [("__meta__.npy", npy_bytes(np.frombuffer(meta, dtype=np.uint8)), None),
               (f"{name}.npy", big_header, count)]
    central = []
    with open(path, "wb") as file:
        for member, data, zeros in members:
            size = len(data) + (zeros or 0)
            crc = _crc_of_zeros(zeros, zlib.crc32(data)) if zeros else zlib.crc32(data)
            offset = file.tell()
            encoded = member.encode()
            fields = struct.pack("<HHHHHIIIHH", 20, 0, 0, 0, 0x21, crc, size, size, len(encoded), 0)
            file.write(b"PK\x03\x04" + fields + encoded + data)
            if zeros:
                file.seek(zeros, os.SEEK_CUR)
            central.append(b"PK\x01\x02" + struct.pack("<HHHHHHIIIHHHHHII", 20, 20, 0, 0, 0, 0x21, crc, size, size,
                                                         len(encoded), 0, 0, 0, 0, 0, offset) + encoded)
        start = file.tell()
        directory = b"".join(central)
        file.write(directory + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, len(central), len(central), len(directory),
                                                              start, 0))


# ---------------------------------------------------------------- zip / npz
class NotAZip(Exception):
    """A zip-level mutation met bytes that an earlier mutation left unreadable as a zip."""


def zip_members(content: bytes) -> list[tuple[str, bytes, int]]:
    """``(name, data, compress_type)`` of every member of a zip archive (NotAZip if unreadable)."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            return [(info.filename, archive.read(info), info.compress_type) for info in archive.infolist()]
    except Exception as error:  # whatever zipfile raises: the mutation is then skipped
        raise NotAZip(str(error)) from None


def build_zip(members: list[tuple[str, bytes, int]]) -> bytes:
    """A zip archive of the members (duplicate names allowed: they are a mutation too)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name"
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, data, compress_type in members:
                archive.writestr(zipfile.ZipInfo(name, date_time=(2000, 1, 1, 0, 0, 0)), data, compress_type=compress_type)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npy_with_header(header_text: str, body: bytes, version: int = 1) -> bytes:
    """A ``.npy`` file with a hand-written header dict literal (padded like NumPy's)."""
    text = header_text.encode("latin1")
    length_field = 2 if version == 1 else 4
    total = 8 + length_field + len(text) + 1
    text += b" " * ((64 - total % 64) % 64) + b"\n"
    length = struct.pack("<H" if version == 1 else "<I", len(text))
    return b"\x93NUMPY" + bytes([version, 0]) + length + text + body


HOSTILE_SHAPES = ["(1000000000000,)", "(2**40,)", "(4611686018427387904, 4611686018427387904)", "(-1,)", "(3, -2)",
                  "()", "(0,)", "(500000, 1000000)", "(3.5,)", "('a',)", "None", "(1,)*70"]
HOSTILE_DESCRS = ["'<f8'", "'|O'", "'<c16'", "'|V8'", "[('a', '<f8')]", "('<f8', (1000000,))", "'|S4'", "'<U2'",
                  "'>f4'", "'garbage'", "'<M8[s]'", "'<f16'", "42", "'|b1'", "'<i8'"]


@dataclass(frozen=True)
class NpyHeader:
    """Replace member ``which``'s .npy header (body kept), CRC recomputed: only the loader's checks can catch it."""

    which: int
    descr: str
    shape: str
    fortran: bool
    raw: str | None = None  # a whole literal instead of the dict (garbage, code)

    def apply(self, content: bytes) -> bytes:
        members = zip_members(content)
        name, data, method = members[self.which % len(members)]
        body = data[_npy_header_length(data):]
        text = self.raw if self.raw is not None else (
            f"{{'descr': {self.descr}, 'fortran_order': {self.fortran}, 'shape': {self.shape}, }}")
        members[self.which % len(members)] = (name, npy_with_header(text, body), method)
        return build_zip(members)


def _npy_header_length(data: bytes) -> int:
    if data[:6] != b"\x93NUMPY" or len(data) < 12:
        return 0
    if data[6] == 1:
        return 10 + struct.unpack("<H", data[8:10])[0]
    return 12 + struct.unpack("<I", data[8:12])[0]


@dataclass(frozen=True)
class AddMember:
    """Add a member: ``kind`` picks foreign bytes, a non-.npy name, a pickled object, a second array."""

    kind: str
    name: str
    data: bytes = b""

    def apply(self, content: bytes) -> bytes:
        members = zip_members(content)
        if self.kind == "bytes":
            member = (self.name, self.data, zipfile.ZIP_STORED)
        elif self.kind == "pickle":
            member = (self.name, npy_bytes(np.array([{"a": 1}, print], dtype=object), allow_pickle=True), zipfile.ZIP_STORED)
        elif self.kind == "pickle_raw":  # a bare pickle, as np.load would accept with allow_pickle=True
            member = (self.name, pickle.dumps({"x": 1}), zipfile.ZIP_STORED)
        else:
            member = (self.name, npy_bytes(np.arange(6, dtype=np.float32).reshape(2, 3)), zipfile.ZIP_DEFLATED)
        return build_zip(members + [member])


@dataclass(frozen=True)
class ReplaceMember:
    """Replace member ``which``'s bytes (the name is kept), or drop it when ``data`` is None."""

    which: int
    data: bytes | None

    def apply(self, content: bytes) -> bytes:
        members = zip_members(content)
        index = self.which % len(members)
        if self.data is None:
            del members[index]
        else:
            members[index] = (members[index][0], self.data, members[index][2])
        return build_zip(members)


@dataclass(frozen=True)
class Meta:
    """Replace ``__meta__`` by a uint8 array of ``data`` (or by an array of another dtype)."""

    data: bytes
    dtype: str = "u1"

    def apply(self, content: bytes) -> bytes:
        members = zip_members(content)
        array = np.frombuffer(self.data, dtype=np.uint8)
        if self.dtype != "u1":
            array = array[: len(array) // 8 * 8].view(np.float64).reshape(-1, 1)
        return build_zip([(n, npy_bytes(array) if n == "__meta__.npy" else d, m) for n, d, m in members])


@dataclass(frozen=True)
class Recompress:
    """Store every member with ``method`` (deflate: as np.savez_compressed would)."""

    method: int

    def apply(self, content: bytes) -> bytes:
        return build_zip([(n, d, self.method) for n, d, _ in zip_members(content)])


@dataclass(frozen=True)
class PatchHeader:
    """Patch a field of the ``which``-th local (PK 03 04) or central (PK 01 02) header.

    ``field``: ``method`` (2 bytes), ``flags`` (2 bytes), ``csize``/``usize``/``crc`` (4 bytes).
    """

    where: str
    which: int
    field: str
    value: int

    OFFSETS = {"local": {"flags": 6, "method": 8, "crc": 14, "csize": 18, "usize": 22},
               "central": {"flags": 8, "method": 10, "crc": 16, "csize": 20, "usize": 24}}
    SIGNATURES = {"local": b"PK\x03\x04", "central": b"PK\x01\x02"}

    def apply(self, content: bytes) -> bytes:
        starts, at = [], content.find(self.SIGNATURES[self.where])
        while at >= 0:
            starts.append(at)
            at = content.find(self.SIGNATURES[self.where], at + 1)
        if not starts:
            return content
        offset = starts[self.which % len(starts)] + self.OFFSETS[self.where][self.field]
        width = 2 if self.field in ("flags", "method") else 4
        data = bytearray(content)
        data[offset : offset + width] = (self.value % 256**width).to_bytes(width, "little")
        return bytes(data)


HOSTILE_JSON_BYTES = [
    b"[" * 100000 + b"]" * 100000,
    b'{"a": ' * 50000 + b"1" + b"}" * 50000,
    b"\xff\xfe{\x00}\x00",
    b'{"k": "\xe9t\xe9"}',
    b"[]",
    b"null",
    b'{"x": NaN, "y": -Infinity}',
    b"1" * 5000,
    b'{"x": ' + b"9" * 5000 + b"}",
    b"",
    b"{\"a\": 1, \"a\": [" + b"0," * 1000 + b"0]}",
    b'"\\ud800"',
]

zip_mutations = st.one_of(
    st.builds(NpyHeader, st.integers(0, 20), st.sampled_from(HOSTILE_DESCRS), st.sampled_from(HOSTILE_SHAPES), st.booleans()),
    st.builds(NpyHeader, st.integers(0, 20), st.just("'<f8'"), st.just("()"), st.just(False),
              st.sampled_from(["{", "__import__('os').system('false')", "{'descr': '<f8'}", "[1, 2]",
                               "{'descr': '<f8', 'fortran_order': 'yes', 'shape': (1,)}", "{" * 3000 + "}" * 3000,
                               "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), 'extra': 1}"])),
    st.builds(AddMember, st.just("bytes"), st.sampled_from(["notes.txt", "extra.npy", "dir/", "w.npy", "__meta__.npy"]),
              st.binary(max_size=40)),
    st.builds(AddMember, st.sampled_from(["pickle", "pickle_raw", "array"]),
              st.sampled_from(["obj.npy", "obj", "w.npy", "__meta__.npy", "layers.0.weight.npy"])),
    st.builds(ReplaceMember, st.integers(0, 20), st.one_of(st.none(), st.binary(max_size=64),
                                                           st.just(npy_bytes(np.zeros((2, 2)))))),
    st.builds(Meta, st.sampled_from(HOSTILE_JSON_BYTES)),
    st.builds(Meta, st.just(b'{"ok": 1}' * 8), st.just("f8")),
    st.builds(Recompress, st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])),
    st.builds(PatchHeader, st.sampled_from(["local", "central"]), st.integers(0, 20), st.just("method"),
              st.sampled_from([0, 1, 6, 8, 9, 12, 14, 93, 95, 98, 99, 0xFFFF])),
    st.builds(PatchHeader, st.sampled_from(["local", "central"]), st.integers(0, 20), st.just("flags"),
              st.sampled_from([0x1, 0x8, 0x20, 0x40, 0x800, 0xFFFF])),
    st.builds(PatchHeader, st.sampled_from(["local", "central"]), st.integers(0, 20), st.sampled_from(["csize", "usize", "crc"]),
              st.one_of(st.sampled_from([0, 1, 2**31, 2**32 - 1]), st.integers(0, 2**32 - 1))),
)
npz_mutations = st.lists(st.one_of(zip_mutations, byte_mutations), min_size=1, max_size=2).map(tuple)


# ---------------------------------------------------------------- JSON
HOSTILE_VALUES = [None, True, False, 0, -1, 1, 2**31, 2**63, 10**30, -(10**30), 0.5, -0.0, 1e308, float("nan"),
                  float("inf"), "", "x", "relu", "float64", [], {}, [1, 2], [[[]]], {"a": 1}, [None], ["relu"] * 3,
                  [2**31, 2**31], [4, 10**9, 3], [0], "\u0000"]


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


@dataclass(frozen=True)
class JsonEdit:
    """Walk into the JSON tree by ``steps`` (each picks a child modulo the count), then edit there.

    ``action``: ``replace`` (by ``value``), ``delete`` (the key or item), ``nest``
    (the value wrapped ``depth`` lists deep).
    """

    steps: tuple
    action: str
    value: Any = None
    depth: int = 0

    def apply(self, content: bytes) -> bytes:
        tree = json.loads(content)
        parent, key, node = None, None, tree
        for step in self.steps:
            if isinstance(node, dict) and node:
                key = sorted(node)[step % len(node)]
            elif isinstance(node, list) and node:
                key = step % len(node)
            else:
                break
            parent, node = node, node[key]
        if parent is None:
            return content if self.action == "delete" else json.dumps(self.value).encode()
        if self.action == "delete":
            del parent[key]
        elif self.action == "nest":
            parent[key] = nested(self.depth)
        else:
            parent[key] = self.value
        return json.dumps(tree).encode()


json_edits = st.one_of(
    st.builds(JsonEdit, st.lists(st.integers(0, 50), min_size=1, max_size=5).map(tuple), st.just("replace"),
              st.sampled_from(HOSTILE_VALUES)),
    st.builds(JsonEdit, st.lists(st.integers(0, 50), min_size=1, max_size=5).map(tuple), st.just("delete")),
    st.builds(JsonEdit, st.lists(st.integers(0, 50), min_size=1, max_size=4).map(tuple), st.just("nest"),
              st.none(), st.sampled_from([2, 70, 5000, 200000])),
)
json_mutations = st.lists(
    st.one_of(json_edits, json_edits, byte_mutations, st.builds(Insert, positions, st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"]))),
    min_size=1,
    max_size=3,
).map(tuple)


def apply_json(mutations, content: bytes) -> bytes:
    """Apply mutations in order; a JSON edit on text that no longer parses leaves it as is."""
    for mutation in mutations:
        try:
            content = mutation.apply(content)
        except (ValueError, RecursionError, NotAZip):  # a JSON edit of text that no longer parses
            continue
    return content


# ---------------------------------------------------------------- isolation
def _address_space() -> int | None:
    try:
        with open("/proc/self/statm") as file:
            return int(file.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def dev_zero_available() -> bool:
    """Whether /dev/zero is the character device (a test elsewhere may have clobbered it with a file)."""
    try:
        return stat.S_ISCHR(os.stat("/dev/zero").st_mode)
    except OSError:
        return False


def can_isolate() -> bool:
    return hasattr(os, "fork") and _address_space() is not None


def run_in_child(function: Callable[[], Any], timeout: float = 20.0, extra_memory: int | None = 512 << 20) -> tuple:
    """Run ``function()`` in a forked child under a time limit and an address-space limit.

    The child may grow its address space by ``extra_memory`` bytes beyond what it
    had at the fork; an allocation past that fails (MemoryError), which shows a
    loader that allocates what a hostile file claims.

    Returns:
        ``("returned", repr(value))``, ``("raised", type name, message, is a UserError)``
        or ``("timeout",)`` (the child was killed).
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            os.close(read_end)
            if extra_memory is not None:
                limit = _address_space() + extra_memory
                resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
            from smartmixed_np.errors import UserError

            try:
                outcome: tuple = ("returned", repr(function())[:200])
            except BaseException as error:  # the test decides what was acceptable
                outcome = ("raised", type(error).__name__, str(error), isinstance(error, UserError))
            os.write(write_end, json.dumps(outcome).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], timeout)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            return ("timeout",)
        chunks = []
        while True:
            chunk = os.read(read_end, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        data = b"".join(chunks)
        return tuple(json.loads(data)) if data else ("raised", "died", "the child died without a result", False)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)


# ------------------------------------------------------------- checking what a loader did
def bounded(function, error):
    """``function()`` with tracemalloc on; returns ``(value or the raised ``error``, peak bytes)``."""
    tracemalloc.start()
    try:
        try:
            value = function()
        except error as caught:
            value = caught
        return value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def assert_one_line_naming(error, *paths):
    """The error's message is one line, without surrounding blanks, and names one of ``paths``."""
    message = str(error)
    assert "\n" not in message and message.strip() == message, message
    assert any(str(path) in message for path in paths), message
