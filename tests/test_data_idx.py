"""Tests for smartmixed_np/data/idx.py: round trips and every way a file can be broken."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from smartmixed_np.data.idx import read_idx, read_idx_pair, write_idx
from smartmixed_np.errors import DataError

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
