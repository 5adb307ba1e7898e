"""tests/host_kernels.py, the host compilation of CuPy-style kernels, against NumPy.

The CUDA engine's tests trust it to run the kernels' C with CuPy's semantics; these check those
semantics on small kernels written here, whose results NumPy computes independently: broadcasting
of the non-raw parameters, outputs in any layout, raw arrays by flat C-order position, scalars
of the parameter's type, ``size`` for a kernel of raw arrays only, reductions along an axis, and
the errors for what CuPy would refuse.
"""

from __future__ import annotations

import numpy as np
import pytest

import host_kernels
from host_kernels import ElementwiseKernel, HostDeviceArray, ReductionKernel

pytestmark = pytest.mark.skipif(host_kernels.COMPILER is None, reason="no C++ compiler (set CXX)")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_elementwise_broadcasts_reads_scalars_and_writes_any_layout(dtype):
    kernel = ElementwiseKernel("T x, T y, int8 code, T scale", "T out", "out = (code == 1 ? x : y) * scale", "pick")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 1)).astype(dtype)
    y = rng.standard_normal((1, 7)).astype(dtype)
    code = rng.integers(0, 2, 7).astype(np.int8)
    out = np.empty((7, 5), dtype=dtype).T  # a feature-major output
    kernel(x, y, code, 1.5, out)
    np.testing.assert_array_equal(out, np.where(code == 1, x, y) * dtype(1.5))


def test_outputs_are_read_and_written_in_place():
    kernel = ElementwiseKernel("T g", "T m", "m = m * (T)0.5 + g", "accumulate")
    m = np.arange(6.0).reshape(2, 3)
    g = np.ones(3)
    kernel(g, m)
    np.testing.assert_array_equal(m, np.arange(6.0).reshape(2, 3) * 0.5 + 1)


def test_raw_arrays_are_indexed_by_flat_c_order_and_size_sets_the_loop():
    kernel = ElementwiseKernel("raw T table, int32 K", "raw T rowsum",
                               "T s = 0; for (int k = 0; k < K; ++k) s += table[i * K + k]; rowsum[i] = s;", "rows")
    table = np.arange(12.0).reshape(3, 4).T.copy().T  # (3, 4) of non-C-contiguous memory
    assert not table.flags.c_contiguous
    rowsum = np.zeros(3)
    kernel(table, np.int32(4), rowsum, size=3)
    np.testing.assert_array_equal(rowsum, table.sum(axis=1))
    with pytest.raises(ValueError, match="size must be given"):
        kernel(table, np.int32(4), rowsum)


def test_reduction_maps_then_folds_along_the_axis_in_order():
    kernel = ReductionKernel("T x, T w", "T y", "x * w", "a + b", "y = a * (T)2", "0", "weighted")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 6, 3))
    w = rng.standard_normal((4, 1, 1))
    got = kernel(x, w, axis=1)
    assert got.shape == (4, 3)
    np.testing.assert_allclose(got, 2 * (x * w).sum(axis=1), rtol=1e-14)
    device = x.view(HostDeviceArray)
    assert type(kernel(device, w.view(HostDeviceArray), axis=1)) is HostDeviceArray


def test_what_cupy_refuses_is_refused():
    kernel = ElementwiseKernel("T x, T y", "T out", "out = x + y", "add")
    with pytest.raises(TypeError, match="several dtypes"):
        kernel(np.ones(3, np.float32), np.ones(3), np.empty(3))
    with pytest.raises(TypeError, match="parameter code is int8"):
        ElementwiseKernel("T x, int8 code", "T out", "out = x", "typed")(np.ones(2), np.ones(2, np.int64), np.empty(2))
    with pytest.raises(ValueError, match="broadcast shape"):
        kernel(np.ones((2, 3)), np.ones(3), np.empty(3))
    with pytest.raises(TypeError, match="2 arguments for 3 parameters"):
        kernel(np.ones(3), np.empty(3))


def test_a_kernel_that_does_not_compile_says_why():
    kernel = ElementwiseKernel("T x", "T out", "out = undefined_function(x)", "broken")
    with pytest.raises(RuntimeError, match="does not compile.*undefined_function"):
        kernel(np.ones(2), np.empty(2))


def test_views_name_their_owner_as_cupy_does():
    """``base`` is the array that owns the memory (CuPy's), never a view in between, so that a
    network's flat parameter buffer is found here as on a GPU."""
    backend = host_kernels.host_device_backend()
    flat = backend.xp.zeros(12, dtype=np.float32)
    assert isinstance(flat, HostDeviceArray) and flat.base is None
    view = flat[4:10].reshape(2, 3)
    assert view.base is flat and view.T.base is flat and view[1].base is flat
    assert backend.asarray(np.ones(3)).base is None and (flat + 1).base is None

    from smartmixed_np.fast.flat import flat_of, pack

    packed, views = pack({"a": flat[:5].reshape(5, 1), "b": flat[5:]})
    assert flat_of(views) is packed and flat_of({"b": views["b"], "a": views["a"]}) is None


def test_launches_count_each_device_operation_once():
    """What a GPU would launch, counted once at the outermost call; views, uninitialised arrays and
    casts that copy nothing count nothing."""
    backend = host_kernels.host_device_backend()
    xp, launches = backend.xp, host_kernels.LAUNCHES
    a = backend.asarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    square = ElementwiseKernel("T x", "T y", "y = x * x", "square")
    total = ReductionKernel("T x", "T y", "x", "a + b", "y = a", "0", "total")
    out = xp.empty_like(a)
    launches.clear()
    a.T, a[1:], a.reshape(4, 3), xp.reshape(a, (12,)), xp.ascontiguousarray(a), a.astype(np.float32, copy=False)
    xp.empty((2, 2)), xp.empty_like(a), a[0, 1]
    assert sum(launches.values()) == 0
    b = a + 1
    xp.exp(b, out=b)
    b -= a
    xp.sum(a, axis=0)
    xp.clip(a, 0, 1)  # a NumPy function whose work is a ufunc: one operation
    a.max()
    a[np.array([0, 2])]
    a.astype(np.float64)
    b[...] = a
    square(a, out)
    total(a, axis=1)
    backend.asarray(np.ones(3))
    assert dict(launches) == {"add": 1, "exp": 1, "subtract": 1, "sum": 1, "clip": 1, "maximum.reduce": 1, "take": 1,
                              "astype": 1, "setitem": 1, "square": 1, "total": 1, "to_device": 1}
