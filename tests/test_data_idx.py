"""Tests for smartmixed_np/data/idx.py: round trips and every way a file can be broken."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from smartmixed_np.data.idx import read_idx, read_idx_pair, write_idx
from smartmixed_np.errors import DataError

import hostile_files as hostile

IDX_NUMPY_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


def idx_bytes(code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    """A raw IDX file built by hand, independently of write_idx."""
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


def write_bytes(path, content: bytes, compress: bool = False):
    path.write_bytes(gzip.compress(content) if compress else content)
    return path


# Shapes of rank 1..4 with small dimensions, including empty ones.
idx_arrays = st.sampled_from(IDX_NUMPY_DTYPES).flatmap(
    lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5))
)


@settings(deadline=None, max_examples=60)
@given(array=idx_arrays, compress=st.booleans())
def test_round_trip_preserves_shape_dtype_and_bits(tmp_path_factory, array, compress):
    path = tmp_path_factory.mktemp("idx") / "data.idx"
    write_idx(path, array, gzip=compress)
    back = read_idx(path)
    assert back.shape == array.shape
    assert back.dtype == array.dtype
    assert back.tobytes() == array.tobytes()  # bit for bit, NaNs and -0.0 included
    assert back.flags.writeable


def test_reads_a_hand_built_mnist_like_file_in_both_encodings(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    content = idx_bytes(0x08, (2, 3, 4), images.tobytes())
    for compress in (False, True):
        # A misleading name on purpose: compression is told from the content.
        path = write_bytes(tmp_path / f"images-{compress}.bin", content, compress)
        np.testing.assert_array_equal(read_idx(path), images)


def test_reads_big_endian_values(tmp_path):
    values = np.array([1, -2, 70000], dtype=">i4")
    path = write_bytes(tmp_path / "ints", idx_bytes(0x0C, (3,), values.tobytes()))
    back = read_idx(path)
    assert back.dtype == np.dtype("int32") and back.dtype.isnative
    np.testing.assert_array_equal(back, [1, -2, 70000])


def test_gzip_output_is_deterministic(tmp_path):
    array = np.arange(100, dtype=np.uint8)
    first = write_idx(tmp_path / "a.gz", array).read_bytes()
    second = write_idx(tmp_path / "b.gz", array).read_bytes()
    assert first == second


def test_write_replaces_atomically_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "labels.gz"
    write_idx(path, np.zeros(5, dtype=np.uint8))
    write_idx(path, np.ones(7, dtype=np.uint8))
    np.testing.assert_array_equal(read_idx(path), np.ones(7))
    assert os.listdir(tmp_path) == ["labels.gz"]


@pytest.mark.parametrize(
    "array, problem",
    [
        (np.zeros(3, dtype=np.int64), "cannot write dtype int64"),
        (np.zeros(3, dtype=bool), "cannot write dtype bool"),
        (np.zeros((1,) * 5, dtype=np.uint8), "cannot write rank 5"),
        (np.uint8(3), "cannot write rank 0"),
    ],
)
def test_write_rejects_what_idx_cannot_hold(tmp_path, array, problem):
    with pytest.raises(DataError, match=problem):
        write_idx(tmp_path / "x.idx", array)
    assert os.listdir(tmp_path) == []


def assert_one_line_error(path, *fragments):
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


MNIST_HEADER_DIMS = (60000, 28, 28)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_payload(tmp_path, compress):
    path = write_bytes(tmp_path / "train-images", idx_bytes(0x08, MNIST_HEADER_DIMS, b"\0" * 123), compress)
    assert_one_line_error(path, "truncated IDX file", "60000x28x28", f"{60000 * 28 * 28} bytes", "found 123")


@pytest.mark.parametrize("compress", [False, True])
def test_trailing_bytes(tmp_path, compress):
    path = write_bytes(tmp_path / "labels", idx_bytes(0x08, (4,), b"\1\2\3\4" + b"junk"), compress)
    assert_one_line_error(path, "trailing bytes", "found 8")


def test_truncated_payload_of_wide_type_counts_bytes(tmp_path):
    path = write_bytes(tmp_path / "floats", idx_bytes(0x0E, (3,), b"\0" * 16))
    assert_one_line_error(path, "truncated IDX file", "double", "24 bytes", "found 16")


@pytest.mark.parametrize(
    "content, fragments",
    [
        (b"\x01\x02\x08\x01" + b"\0" * 8, ["not an IDX file", "bad magic number 01 02 08 01"]),
        (b"PK\x03\x04 a zip file", ["not an IDX file", "bad magic"]),
        (b"\0\0\x0a\x01\0\0\0\x01x", ["unknown IDX data type code 0x0A"]),
        (b"\0\0\x08\x00", ["bad IDX rank 0"]),
        (b"\0\0\x08\x05" + b"\0" * 20, ["bad IDX rank 5"]),
        (b"\0\0", ["truncated IDX file", "too short"]),
        (b"", ["truncated IDX file"]),
        (b"\0\0\x08\x03\0\0\0\x01", ["truncated IDX file", "rank-3 header needs 16 bytes, found 8"]),
    ],
)
def test_bad_headers(tmp_path, content, fragments):
    path = write_bytes(tmp_path / "broken.idx", content)
    assert_one_line_error(path, *fragments)


def test_bad_header_inside_gzip(tmp_path):
    path = write_bytes(tmp_path / "broken.gz", b"\x12\x34\x08\x01\0\0\0\0", compress=True)
    assert_one_line_error(path, "bad magic number 12 34 08 01")


def test_corrupt_gzip_stream(tmp_path):
    good = gzip.compress(idx_bytes(0x08, (1000,), bytes(range(250)) * 4))
    # Flip bytes in the middle of the deflate data: either the stream or its CRC breaks.
    broken = bytearray(good)
    broken[len(good) // 2 : len(good) // 2 + 8] = b"\xff" * 8
    path = write_bytes(tmp_path / "corrupt.gz", bytes(broken))
    assert_one_line_error(path, "not a valid gzip stream")


def test_gzip_magic_with_garbage_after_it(tmp_path):
    path = write_bytes(tmp_path / "fake.gz", b"\x1f\x8b" + b"this is not deflate data")
    message = assert_one_line_error(path)
    assert "gzip" in message


def test_garbage_after_gzip_stream(tmp_path):
    good = gzip.compress(idx_bytes(0x08, (3,), b"abc"))
    path = write_bytes(tmp_path / "appended.gz", good + b"garbage!!")
    assert_one_line_error(path, "not a valid gzip stream", "9 bytes of garbage after its end")


def test_gzip_with_several_members_or_zero_padding_is_fine(tmp_path):
    content = idx_bytes(0x08, (6,), b"abcdef")
    two_members = gzip.compress(content[:7]) + gzip.compress(content[7:])
    np.testing.assert_array_equal(read_idx(write_bytes(tmp_path / "two.gz", two_members)), list(b"abcdef"))
    padded = gzip.compress(content) + b"\0" * 16
    np.testing.assert_array_equal(read_idx(write_bytes(tmp_path / "padded.gz", padded)), list(b"abcdef"))


def test_truncated_gzip_stream(tmp_path):
    good = gzip.compress(idx_bytes(0x08, (1000,), bytes(range(250)) * 4))
    path = write_bytes(tmp_path / "cut.gz", good[: len(good) // 2])
    assert_one_line_error(path, "truncated gzip stream")


def test_missing_file_and_folder(tmp_path):
    assert_one_line_error(tmp_path / "nothing-here.gz", "no such file")
    with pytest.raises(DataError, match="is a folder"):
        read_idx(tmp_path)


def test_pair_reads_matching_files(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 4, 4), dtype=np.uint8)
    labels = np.arange(5, dtype=np.uint8)
    x, y = read_idx_pair(write_idx(tmp_path / "i.gz", images), write_idx(tmp_path / "l.gz", labels))
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)


def test_pair_count_mismatch_names_both_files(tmp_path):
    images_path = write_idx(tmp_path / "train-images.gz", np.zeros((5, 4, 4), dtype=np.uint8))
    labels_path = write_idx(tmp_path / "train-labels.gz", np.zeros(4, dtype=np.uint8))
    with pytest.raises(DataError) as info:
        read_idx_pair(images_path, labels_path)
    message = str(info.value)
    assert "count mismatch" in message and "5 images" in message and "4 labels" in message
    assert str(images_path) in message and str(labels_path) in message


def test_pair_rejects_labels_of_rank_two(tmp_path):
    images_path = write_idx(tmp_path / "i.gz", np.zeros((4, 2, 2), dtype=np.uint8))
    labels_path = write_idx(tmp_path / "l.gz", np.zeros((4, 1), dtype=np.uint8))
    with pytest.raises(DataError, match="rank 1"):
        read_idx_pair(images_path, labels_path)


# ---------------------------------------------------------------- hostile files
# The attacks of the reliability issue, each as a test, then fuzzers over mutations
# of real files. Tests that would hang or exhaust the memory on a broken reader run
# in a forked child with a time limit and an address-space limit.

needs_isolation = pytest.mark.skipif(not hostile.can_isolate(), reason="needs fork and /proc/self/statm")
# The fuzzers run this many examples: 10x the profile's (200 by default, 2,000 thorough).
FUZZ_EXAMPLES = 10 * settings().max_examples
MEMORY_BOUND = 32 << 20  # the most a fuzzed read of a small file may allocate (tracemalloc peak)


def assert_refused_in_child(function, path, timeout=20.0, extra_memory=512 << 20):
    outcome = hostile.run_in_child(function, timeout=timeout, extra_memory=extra_memory)
    assert outcome != ("timeout",), f"reading {path} hung"
    assert outcome[0] == "raised" and outcome[1] == "DataError", outcome
    message = outcome[2]
    assert "\n" not in message and str(path) in message, message
    return message


@needs_isolation
@pytest.mark.parametrize("target", ["fifo", "/dev/zero", "folder", "missing"])
@pytest.mark.parametrize("through_link", [False, True])
def test_refuses_what_is_not_a_regular_file_without_blocking(tmp_path, target, through_link):
    if target == "fifo":
        real = tmp_path / "pipe"
        os.mkfifo(real)  # no writer: a plain open() blocks forever
    elif target == "folder":
        real = tmp_path / "folder"
        real.mkdir()
    elif target == "missing":
        real = tmp_path / "nothing"
    else:
        real = Path(target)
        if not hostile.dev_zero_available():
            pytest.skip("no /dev/zero character device")
    path = real
    if through_link:
        path = tmp_path / "train-images-idx3-ubyte.gz"
        path.symlink_to(real)
    elif target == "/dev/zero":
        pytest.skip("covered through a link")
    expected = {"fifo": "FIFO", "/dev/zero": "character device", "folder": "folder", "missing": "no such file"}[target]
    message = assert_refused_in_child(lambda: read_idx(path), path, timeout=10.0)
    assert expected in message
    # read_idx_pair goes through the same door.
    labels = write_idx(tmp_path / "labels.gz", np.zeros(3, dtype=np.uint8))
    assert_refused_in_child(lambda: read_idx_pair(path, labels), path, timeout=10.0)


@needs_isolation
@pytest.mark.parametrize("claim", [(10,), (60000, 28, 28)])
def test_a_gzip_bomb_inflates_no_further_than_its_header_claims(tmp_path, claim):
    # 0.5 MiB on disk, 512 MiB of zeros inside; the child may grow by 256 MiB only.
    header = bytes([0, 0, 0x08, len(claim)]) + struct.pack(f">{len(claim)}I", *claim)
    path = tmp_path / "bomb.gz"
    path.write_bytes(hostile.gzip_bomb(header, 512 << 20))
    assert path.stat().st_size < 1 << 20
    message = assert_refused_in_child(lambda: read_idx(path), path, extra_memory=256 << 20)
    assert "trailing bytes after IDX data" in message and "found more than" in message


def test_a_gzip_bomb_costs_only_what_its_header_claims(tmp_path):
    path = tmp_path / "bomb.gz"
    path.write_bytes(hostile.gzip_bomb(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 10), 64 << 20))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="trailing bytes"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND, f"{peak / 2**20:.0f} MiB allocated to read a 10-byte claim"


@needs_isolation
def test_a_header_claiming_more_than_the_memory_is_refused_before_reading(tmp_path):
    # A gzip header (the only kind whose size is not known from the file) claiming
    # 2**32-1 x 2**32-1 doubles: refused with the estimate, nothing allocated.
    path = write_bytes(tmp_path / "huge.gz", idx_bytes(0x0E, (2**32 - 1, 2**32 - 1), b"\0" * 64), compress=True)
    message = assert_refused_in_child(lambda: read_idx(path), path)
    assert "GiB" in message and "more than this machine's memory" in message


def test_a_raw_header_is_checked_against_the_file_size_before_allocating(tmp_path):
    path = write_bytes(tmp_path / "huge.idx", idx_bytes(0x08, (2**31, 2**31), b"\0" * 64))
    tracemalloc.start()
    try:
        assert_one_line_error(path, "truncated IDX file", "found 64 bytes")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND


def _pair(tmp_path, images, labels, compress=True):
    return write_idx(tmp_path / "images.gz", images, gzip=compress), write_idx(tmp_path / "labels.gz", labels, gzip=compress)


@pytest.mark.parametrize(
    "images, labels, culprit, fragment",
    [
        (np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.uint8), "images", "holds no examples"),
        (np.zeros((3, 0, 0), np.uint8), np.zeros(3, np.uint8), "images", "images of size 0x0 hold no values"),
        (np.zeros(3, np.uint8), np.zeros(3, np.uint8), "images", "rank 2 or more"),
        (np.zeros((3, 2, 2), np.uint8), np.array([0.0, np.nan, 1.0]), "labels", "labels must be integers"),
        (np.zeros((3, 2, 2), np.uint8), np.array([0.0, 1.0, 2.0], np.float32), "labels", "labels must be integers"),
        (np.zeros((3, 2, 2), np.uint8), np.array([0, -1, 2], np.int8), "labels", "label -1 at position 1 is negative"),
        (np.array([[0.5, np.nan], [1, 2], [3, np.inf]]), np.zeros(3, np.uint8), "images", "2 images hold NaN or infinite"),
        (np.full((2, 3), -np.inf, np.float32), np.zeros(2, np.uint8), "images", "the first is image 0"),
    ],
)
def test_pair_refuses_what_would_break_training(tmp_path, images, labels, culprit, fragment):
    images_path, labels_path = _pair(tmp_path, images, labels)
    with pytest.raises(DataError) as info:
        read_idx_pair(images_path, labels_path)
    message = str(info.value)
    assert fragment in message and "\n" not in message
    assert message.startswith(str(images_path if culprit == "images" else labels_path))


def test_pair_accepts_finite_float_images_and_every_integer_label_type(tmp_path):
    images = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    for dtype in (np.uint8, np.int8, np.int16, np.int32):
        images_path, labels_path = _pair(tmp_path, images, np.array([0, 2, 1], dtype=dtype))
        x, y = read_idx_pair(images_path, labels_path)
        np.testing.assert_array_equal(x, images)
        assert y.dtype == dtype and y.tolist() == [0, 2, 1]


@needs_isolation
def test_the_message_names_the_link_and_its_target(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "labels.gz"
    link.symlink_to(fifo)
    message = assert_refused_in_child(lambda: read_idx(link), link, timeout=10.0)
    assert message.startswith(f"{link} (a link to {fifo}): is a FIFO")


# ---------------------------------------------------------------- the fuzzers
def _base_files() -> list[tuple[str, np.ndarray]]:
    """Small files of every type code and rank, and (when SMARTMIXED_DATA is set) the head of real MNIST."""
    rng = np.random.default_rng(7)
    bases = [
        ("images", rng.integers(0, 256, size=(4, 3, 3), dtype=np.uint8)),
        ("labels", rng.integers(0, 10, size=4, dtype=np.uint8)),
        ("int8", rng.integers(-128, 128, size=(3, 2), dtype=np.int8)),
        ("int16", rng.integers(-(2**15), 2**15, size=(2, 2, 2, 2), dtype=np.int16)),
        ("int32", rng.integers(0, 10, size=5, dtype=np.int32)),
        ("float32", rng.standard_normal((3, 2)).astype(np.float32)),
        ("float64", rng.standard_normal((2, 3, 1))),
    ]
    return bases + _mnist_heads()


def _mnist_heads(count: int = 6) -> list[tuple[str, np.ndarray]]:
    """The first ``count`` images and labels of the real MNIST training files, or nothing."""
    root = os.environ.get("SMARTMIXED_DATA")
    folder = Path(root) / "mnist" if root else None
    if folder is None or not (folder / "train-images-idx3-ubyte.gz").is_file():
        return []
    with gzip.open(folder / "train-images-idx3-ubyte.gz") as file:
        head = file.read(16 + count * 784)
    with gzip.open(folder / "train-labels-idx1-ubyte.gz") as file:
        labels = file.read(8 + count)
    images = np.frombuffer(head, dtype=np.uint8, offset=16).reshape(count, 28, 28)
    return [("mnist-images", images), ("mnist-labels", np.frombuffer(labels, dtype=np.uint8, offset=8))]


BASES = _base_files()


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(base=st.sampled_from(range(len(BASES))), compress=st.booleans(), mutations=hostile.idx_mutations)
def test_fuzz_read_idx_returns_what_the_file_holds_or_one_line(base, compress, mutations):
    """Property: read_idx agrees with the reference decoder: the same array, or a one-line DataError."""
    name, array = BASES[base]
    with tempfile.TemporaryDirectory() as folder:
        path = write_idx(Path(folder) / f"{name}.idx", array, gzip=compress)
        content = hostile.apply_all(mutations, path.read_bytes())
        path.write_bytes(content)
        expected = hostile.reference_idx(content)
        value, peak = hostile.bounded(lambda: read_idx(path), DataError)
    assert peak < MEMORY_BOUND, f"{peak / 2**20:.0f} MiB allocated for a {len(content)}-byte file"
    if expected is None:
        assert isinstance(value, DataError), f"an invalid file was accepted: {value!r}"
        hostile.assert_one_line_naming(value, path)
    else:
        assert not isinstance(value, DataError), f"a valid file was refused: {value}"
        assert value.dtype == expected.dtype and value.shape == expected.shape
        assert value.tobytes() == expected.tobytes() and value.flags.writeable


@settings(max_examples=3 * settings().max_examples, deadline=None)
@given(which=st.sampled_from(["images", "labels"]), compress=st.booleans(), mutations=hostile.idx_mutations,
       float_images=st.booleans())
def test_fuzz_read_idx_pair_returns_a_valid_pair_or_one_line(which, compress, mutations, float_images):
    """Property: read_idx_pair returns what both files hold when they make a valid pair, else one line."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(4, 3, 3), dtype=np.uint8)
    if float_images:
        images = images.astype(np.float32) / 255
    labels = rng.integers(0, 10, size=4, dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        images_path, labels_path = _pair(Path(folder), images, labels, compress)
        target = images_path if which == "images" else labels_path
        target.write_bytes(hostile.apply_all(mutations, target.read_bytes()))
        decoded = [hostile.reference_idx(p.read_bytes()) for p in (images_path, labels_path)]
        value, peak = hostile.bounded(lambda: read_idx_pair(images_path, labels_path), DataError)
    assert peak < MEMORY_BOUND
    if not hostile.reference_pair(*decoded):
        assert isinstance(value, DataError), f"an invalid pair was accepted: {value!r}"
        hostile.assert_one_line_naming(value, images_path, labels_path)
    else:
        assert not isinstance(value, DataError), f"a valid pair was refused: {value}"
        for got, want in zip(value, decoded):
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


REAL_MNIST = Path(os.environ.get("SMARTMIXED_DATA", "/nonexistent")) / "mnist" / "t10k-labels-idx1-ubyte.gz"


@pytest.mark.skipif(not REAL_MNIST.is_file(), reason="needs SMARTMIXED_DATA (real MNIST)")
@pytest.mark.parametrize("position", [0, 1, 3, 4, 9, 10, 12, 18, 30, 200, -12, -5, -1])
def test_flipping_a_byte_in_the_head_or_tail_of_real_mnist(tmp_path, position):
    # The small real file (t10k labels, 4.5 kB): gzip header, first deflate bytes,
    # CRC and size trailer. The reader must agree with the reference decoder.
    path = tmp_path / REAL_MNIST.name
    shutil.copyfile(REAL_MNIST, path)
    content = bytearray(path.read_bytes())
    content[position] ^= 0x41
    path.write_bytes(bytes(content))
    expected = hostile.reference_idx(bytes(content))
    if expected is None:
        assert_one_line_error(path)
    else:
        np.testing.assert_array_equal(read_idx(path), expected)


@needs_isolation
@settings(max_examples=settings().max_examples, deadline=None)
@given(base=st.sampled_from(range(len(BASES))), kind=st.sampled_from(["fifo", "devzero", "folder", "dangling", "bomb", "bomb"]),
       through_link=st.booleans(), header_mutations=st.lists(hostile.idx_header_mutations, max_size=2).map(tuple),
       zeros_mib=st.integers(8, 96))
def test_fuzz_what_stands_where_a_file_should_is_refused_in_bounded_time_and_memory(
    base, kind, through_link, header_mutations, zeros_mib
):
    """Property: FIFOs, devices, folders, broken links and gzip bombs (a real file's header,
    mutated, then up to 96 MiB of zeros) give a one-line DataError within 10 s, in a
    child that may grow by 64 MiB plus what the header claims (when the content is at
    least that large: the reader keeps no more than the claim); a bomb whose header
    happens to claim exactly what it holds is read."""
    name, array = BASES[base]
    allowance = 64 << 20
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        real = folder / f"{name}.real"
        expected = None
        if kind == "fifo":
            os.mkfifo(real)
        elif kind == "devzero":
            if not hostile.dev_zero_available():
                return
            real, through_link = Path("/dev/zero"), True
        elif kind == "folder":
            real.mkdir()
        elif kind == "bomb":
            raw = hostile.reference_gunzip(write_idx(folder / "base.gz", array).read_bytes())
            content = hostile.apply_all(header_mutations, raw)  # header mutated, body kept, zeros follow
            real.write_bytes(hostile.gzip_bomb(content, zeros_mib << 20))
            claim = hostile.idx_claim(content)
            if claim is not None:
                allowance += min(claim[1], len(content) + (zeros_mib << 20)) * 5 // 4
                if claim[0] + claim[1] == len(content) + (zeros_mib << 20):
                    expected = claim[2]  # the header claims exactly what the file holds: a valid file
        path = real
        if through_link or kind == "dangling":
            path = folder / f"{name}.gz"
            path.symlink_to(real)
        outcome = hostile.run_in_child(lambda: read_idx(path).shape, timeout=10.0, extra_memory=allowance)
    assert outcome != ("timeout",), f"reading {kind} hung"
    if outcome[0] == "returned":
        assert kind == "bomb" and outcome[1] == repr(expected), outcome
    else:
        assert outcome[1] == "DataError", outcome
        assert "\n" not in outcome[2] and str(path) in outcome[2], outcome


@needs_isolation
@pytest.mark.parametrize("compress", [False, True])
def test_not_enough_memory_for_a_valid_file_is_one_line(tmp_path, compress):
    # A valid 512 MiB file (sparse, or a gzip of 0.5 MiB) read by a process that may
    # grow by 64 MiB only: far more than the free heap a long test session may hold.
    dims = (512, 1024, 1024)
    path = tmp_path / "images"
    if compress:
        path.write_bytes(hostile.gzip_bomb(bytes([0, 0, 0x08, 3]) + struct.pack(">3I", *dims), 512 << 20))
    else:
        hostile.sparse_idx(path, dims)
    message = assert_refused_in_child(lambda: read_idx(path), path, extra_memory=64 << 20)
    assert "not enough memory to read 512x1024x1024 ubyte values (0.50 GiB)" in message
