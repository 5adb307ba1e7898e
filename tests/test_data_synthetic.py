"""Tests for smartmixed_np/data/synthetic.py: determinism, shapes, ranges, balance."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartmixed_np.data.synthetic import GLYPHS, make_spirals, make_synth_digits


def test_spirals_shapes_dtypes_and_range():
    x, y = make_spirals(n_per_class=200, num_classes=4, noise=0.05, seed=3)
    assert x.shape == (800, 2) and x.dtype == np.float32
    assert y.shape == (800,) and y.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(y), [200] * 4)
    assert np.abs(x).max() < 1.3  # radius <= 1, plus a little noise
    assert np.abs(x).max() > 0.8


def test_spirals_are_interleaved_so_every_prefix_is_balanced():
    _, y = make_spirals(n_per_class=10, num_classes=3)
    np.testing.assert_array_equal(y[:6], [0, 1, 2, 0, 1, 2])


def test_spiral_arms_are_separate_without_noise():
    # With no noise, each point's nearest neighbour (other than itself) is on its own arm.
    x, y = make_spirals(n_per_class=300, num_classes=3, noise=0.0, seed=0)
    distance = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1)
    np.fill_diagonal(distance, np.inf)
    assert (y[distance.argmin(axis=1)] == y).mean() > 0.98


@settings(deadline=None, max_examples=10)
@given(seed=st.integers(0, 2**32 - 1))
def test_spirals_are_deterministic(seed):
    first, second = make_spirals(50, seed=seed), make_spirals(50, seed=seed)
    assert first[0].tobytes() == second[0].tobytes()
    np.testing.assert_array_equal(first[1], second[1])
    assert make_spirals(50, seed=seed + 1)[0].tobytes() != first[0].tobytes()


def test_spirals_reject_bad_arguments():
    with pytest.raises(ValueError):
        make_spirals(n_per_class=0)
    with pytest.raises(ValueError):
        make_spirals(num_classes=1)


def test_synth_digits_shapes_dtypes_range_and_balance():
    x, y = make_synth_digits(1003, seed=5)
    assert x.shape == (1003, 784) and x.dtype == np.float32
    assert y.shape == (1003,) and y.dtype == np.int64
    assert x.min() >= 0.0 and x.max() <= 1.0
    counts = np.bincount(y, minlength=10)
    assert len(counts) == 10 and counts.max() - counts.min() <= 1
    assert not np.array_equal(y[:20], np.sort(y[:20]))  # classes in random order


def test_synth_digits_are_deterministic():
    x1, y1 = make_synth_digits(300, seed=11)
    x2, y2 = make_synth_digits(300, seed=11)
    assert x1.tobytes() == x2.tobytes()
    np.testing.assert_array_equal(y1, y2)
    x3, _ = make_synth_digits(300, seed=12)
    assert x3.tobytes() != x1.tobytes()


def test_synth_digits_do_not_depend_on_rendering_chunks(monkeypatch):
    from smartmixed_np.data import synthetic

    x_default, _ = make_synth_digits(300, seed=2)
    monkeypatch.setattr(synthetic, "_CHUNK", 7)
    x_small_chunks, _ = make_synth_digits(300, seed=2)
    assert x_default.tobytes() == x_small_chunks.tobytes()


def test_synth_digits_look_like_centred_glyphs():
    x, y = make_synth_digits(2000, seed=0)
    images = x.reshape(-1, 28, 28)
    # Ink is where the glyph is: the centre is brighter than the border on average.
    assert images[:, 8:20, 8:20].mean() > 2 * images[:, :3, :].mean()
    # Class means differ: each glyph class has its own shape.
    means = np.stack([x[y == label].mean(axis=0) for label in range(10)])
    distance = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert distance[~np.eye(10, dtype=bool)].min() > 1.0


def test_synth_digits_sizes():
    x, y = make_synth_digits(0)
    assert x.shape == (0, 784) and y.shape == (0,)
    x, _ = make_synth_digits(20, size=16)
    assert x.shape == (20, 256)
    assert len(GLYPHS) == 10


def test_synth_digits_default_size_is_fast():
    # About 1 s on one core; the bound is loose so that a busy machine does not fail it,
    # while a per-sample or per-pixel Python loop (orders of magnitude slower) would.
    start = time.perf_counter()
    make_synth_digits(18000, seed=0)  # the default train + val + test of load_dataset
    assert time.perf_counter() - start < 6.0
