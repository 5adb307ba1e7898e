"""The compiled (Numba) loops give bitwise the numbers of their NumPy references."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from smartmixed_np import compiled
from smartmixed_np.optim import Adam, adam_update_reference

numba = pytest.importorskip("numba", reason="the compiled loops need the 'fast' extra (numba)")


def test_status_names_numba():
    assert compiled.status() == f"numba {numba.__version__}"


def test_switched_off_by_the_environment():
    code = "from smartmixed_np import compiled; import numpy as np; print(compiled.status(), compiled.applies(np.zeros(3)))"
    env = dict(os.environ, **{compiled.JIT_ENV: "0"})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"off ({compiled.JIT_ENV}=0) False"


def test_applies_only_to_contiguous_host_floats_of_one_dtype():
    a = np.zeros((4, 3), np.float32)
    assert compiled.applies(a, a.copy())
    assert not compiled.applies(a, a.astype(np.float64))  # mixed dtypes
    assert not compiled.applies(a.T)  # not C-contiguous
    assert not compiled.applies(np.zeros(3, np.int64))
    assert not compiled.applies([1.0, 2.0])
    assert not compiled.applies(a, [1.0])


@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 40),
    dtype=st.sampled_from([np.float32, np.float64]),
    beta1=st.sampled_from([0.0, 0.5, 0.9]),
    beta2=st.sampled_from([0.0, 0.99, 0.999]),
    weight_decay=st.sampled_from([0.0, 1e-2]),
    steps=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_adam_update_is_bitwise_the_reference(rows, cols, dtype, beta1, beta2, weight_decay, steps, seed):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal((rows, cols)).astype(dtype)
    m, v = np.zeros_like(p), np.zeros_like(p)
    p2, m2, v2 = p.copy(), m.copy(), v.copy()
    for t in range(1, steps + 1):
        g = (rng.standard_normal(p.shape) * 10.0 ** rng.integers(-6, 2)).astype(dtype)
        g_before = g.copy()
        settings = dict(
            beta1=beta1, beta2=beta2, eps=1e-8, step_size=1e-3 / (1 - beta1**t),
            inv_sqrt_bc2=1 / math.sqrt(1 - beta2**t), weight_decay=weight_decay,
        )
        adam_update_reference(p, g, m, v, scratch=np.empty_like(p), **settings)
        compiled.adam_update(p2, g, m2, v2, **settings)
        np.testing.assert_array_equal(g, g_before)  # the gradient is read only
    for ours, reference in ((p2, p), (m2, m), (v2, v)):
        assert ours.dtype == reference.dtype
        np.testing.assert_array_equal(ours, reference)


def test_adam_update_rejects_mismatched_shapes():
    a = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="one shape"):
        compiled.adam_update(a, np.zeros(4, np.float32), a.copy(), a.copy(), beta1=0.9, beta2=0.999, eps=1e-8,
                             step_size=1e-3, inv_sqrt_bc2=1.0, weight_decay=0.0)


def test_adam_takes_the_compiled_path_and_matches_the_reference_path(monkeypatch):
    """Adam.step on host arrays runs the compiled loop; switched off, the same numbers."""
    rng = np.random.default_rng(0)
    shapes = {"w": (64, 32), "b": (64,)}
    grads = [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(5)]

    def run(use_compiled):
        calls = []
        real = compiled.adam_update
        monkeypatch.setattr(compiled, "adam_update", lambda *a, **k: (calls.append(1), real(*a, **k)))
        if not use_compiled:
            monkeypatch.setattr(compiled, "applies", lambda *arrays: False)
        params = {k: np.ones(s, np.float32) for k, s in shapes.items()}
        opt = Adam(params, lr=1e-2, weight_decay=1e-3)
        for g in grads:
            opt.step(g)
        monkeypatch.undo()
        return params, opt, len(calls)

    fast, fast_opt, fast_calls = run(True)
    slow, slow_opt, slow_calls = run(False)
    assert fast_calls == 5 * len(shapes) and slow_calls == 0
    for name in shapes:
        np.testing.assert_array_equal(fast[name], slow[name])
        np.testing.assert_array_equal(fast_opt.m[name], slow_opt.m[name])
        np.testing.assert_array_equal(fast_opt.v[name], slow_opt.v[name])
