"""One flat buffer for the parameters (and one for the gradients), and Adam in one pass over them.

``fast/flat.pack``/``flat_of`` (never fooled by another order, a gap, a copy, a dtype, a stride);
the MLP packs at construction and stays packed through training steps, state loading, freezing
and casting; ``nn.optim.Adam`` makes one compiled call per step over the flat arrays, bitwise the
per-parameter compiled update and the reference's, and falls back whenever anything is not packed;
on the (emulated) GPU, one kernel launch.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from smartmixed_np.backend import to_host
from smartmixed_np.core import optim as reference
from smartmixed_np.fast import compiled, cuda
from smartmixed_np.fast.flat import flat_of, pack
from smartmixed_np.nn import optim as nn_optim
from smartmixed_np.nn.mlp import MLP
from smartmixed_np.nn.optim import Adam, clip_factor
from smartmixed_np.nn.step import train_step

SHAPES = {"a.weight": (5, 3), "a.bias": (5,), "b.weight": (2, 5), "b.bias": (2,), "c.logits": (4, 6)}
needs_numba = pytest.mark.skipif(not compiled.enabled(), reason="the one-pass Adam is the compiled loop's (Numba)")


def _arrays(dtype=np.float32, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(dtype) for name, shape in shapes.items()}


# --------------------------------------------------------------------------- pack / flat_of
def test_pack_copies_each_array_into_consecutive_views_in_the_dicts_order(backend):
    host = _arrays()
    arrays = {name: backend.asarray(a) for name, a in host.items()}
    flat, views = pack(arrays)
    assert flat.ndim == 1 and flat.dtype == np.float32 and flat.size == sum(a.size for a in host.values())
    assert list(views) == list(arrays)
    np.testing.assert_array_equal(to_host(flat), np.concatenate([a.ravel() for a in host.values()]))
    for name, view in views.items():
        assert tuple(view.shape) == host[name].shape and view.dtype == host[name].dtype
        np.testing.assert_array_equal(to_host(view), host[name])
    flat[...] = 0  # the views are views: writing the buffer writes them
    assert all(not to_host(view).any() for view in views.values())
    if backend.name == "numpy":
        assert flat_of(views) is flat and all(v.flags.c_contiguous for v in views.values())
        assert all(not np.shares_memory(views[n], host[n]) for n in host)  # copies, not the originals


def test_pack_refuses_nothing_and_mixed_dtypes():
    with pytest.raises(ValueError, match="at least one"):
        pack({})
    with pytest.raises(ValueError, match="one dtype"):
        pack({"x": np.zeros(3, np.float32), "y": np.zeros(3, np.float64)})


def _flat_and_views(dtype=np.float32):
    return pack(_arrays(dtype))


def _reordered(views, base):
    names = list(views)
    return {name: views[name] for name in names[1:] + names[:1]}


def _gap(views, base):  # the same layout in a buffer one element longer, the extra one between two arrays
    bigger = np.zeros(base.size + 1, dtype=base.dtype)
    out, offset = {}, 0
    for i, (name, v) in enumerate(views.items()):
        offset += i == 2
        out[name] = bigger[offset:offset + v.size].reshape(v.shape)
        offset += v.size
    return out


def _tail_left_over(views, base):  # tiles all of a buffer but its last element
    return _laid_out(views, np.zeros(base.size + 1, dtype=base.dtype), 0)


def _head_left_over(views, base):  # starts one element into its buffer
    return _laid_out(views, np.zeros(base.size + 1, dtype=base.dtype), 1)


def _laid_out(views, buffer, start):
    out, offset = {}, start
    for name, v in views.items():
        out[name] = buffer[offset:offset + v.size].reshape(v.shape)
        offset += v.size
    return out


def _sub_buffer(views, base):  # laid exactly over a 1-D slice of a bigger buffer: the owner is bigger
    bigger = np.zeros(base.size + 4, dtype=base.dtype)
    return _laid_out(views, bigger[2:2 + base.size], 0)


def _a_copy(views, base):
    out = dict(views)
    name = list(out)[1]
    out[name] = out[name].copy()
    return out


def _other_dtype_view(views, base):  # the last array: the same bytes read as another dtype
    out = dict(views)
    name = list(out)[-1]
    raw = base[base.size - views[name].size:]
    out[name] = raw.view(np.int32)
    return out


def _transposed(views, base):  # the same memory, a non-contiguous view
    out = dict(views)
    out["a.weight"] = base[:15].reshape(3, 5).T
    return out


def _strided(views, base):
    out = dict(views)
    out["a.bias"] = base[15:25:2]
    return out


def _twice(views, base):
    out = dict(views)
    out["c.logits"] = out["a.weight"]
    return out


def _one_missing(views, base):
    out = dict(views)
    del out["b.bias"]
    return out


@pytest.mark.parametrize("fool", [_reordered, _gap, _tail_left_over, _head_left_over, _sub_buffer, _a_copy,
                                  _other_dtype_view, _transposed, _strided, _twice, _one_missing])
def test_flat_of_is_never_fooled(fool):
    base, views = _flat_and_views()
    assert flat_of(views) is base
    assert flat_of(fool(views, base)) is None


def test_flat_of_other_things_is_none():
    base, views = _flat_and_views()
    assert flat_of({}) is None and flat_of([base]) is None and flat_of({"x": [1.0, 2.0]}) is None
    assert flat_of({"x": np.zeros((3, 4))}) is None  # an owner, but 2-D
    one = np.zeros(6)
    assert flat_of({"x": one}) is one  # an owner, 1-D: it tiles itself
    mixed = {"x": np.zeros(3, np.float32)}
    mixed.update(pack({"y": np.zeros(2, np.float64)})[1])
    assert flat_of(mixed) is None


@given(sizes=st.lists(st.integers(1, 7), min_size=1, max_size=6), data=st.data())
def test_flat_of_finds_the_buffer_only_in_the_packing_order(sizes, data):
    arrays = {f"p{i}": np.full(size, i, np.float64) for i, size in enumerate(sizes)}
    base, views = pack(arrays)
    order = data.draw(st.permutations(list(views)))
    assert (flat_of({name: views[name] for name in order}) is base) == (list(order) == list(views))


# --------------------------------------------------------------------------- the MLP
def _unpacked(monkeypatch, *args, **kwargs):
    """An MLP built as before packing (its _pack a no-op): separate arrays, the same numbers."""
    with monkeypatch.context() as patch:
        patch.setattr(MLP, "_pack", lambda self: None)
        return MLP(*args, **kwargs)


def _assert_packed(model):
    params, grads = model.parameters(), model.gradients()
    flat_p, flat_g = flat_of(params), flat_of(grads)
    assert flat_p is not None and flat_g is not None
    assert flat_p.size == flat_g.size == model.num_parameters() and list(params) == list(grads)
    return flat_p, flat_g


@pytest.mark.parametrize("activation", ["smartmixed", "relu", ["tanh", "elu"]])
def test_the_mlp_packs_its_parameters_and_gradients_keeping_names_shapes_and_values(monkeypatch, activation):
    model = MLP([6, 5, 4, 3], activation, seed=2)
    _assert_packed(model)
    plain = _unpacked(monkeypatch, [6, 5, 4, 3], activation, seed=2)
    assert flat_of(plain.parameters()) is None
    assert list(model.parameters()) == list(plain.parameters())
    for name, p in plain.parameters().items():
        assert model.parameters()[name].shape == p.shape
        np.testing.assert_array_equal(model.parameters()[name], p)
    if activation == "smartmixed":
        for contiguous in (True, False):
            _assert_packed(model.freeze(contiguous=contiguous))
        _assert_packed(model.freeze(reinit_seed=5))
    _assert_packed(model.to(dtype="float64"))
    assert model.parameters()["layers.0.weight"].dtype == np.float64
    _assert_packed(MLP.from_config(model.config()))


def test_a_train_step_and_state_loading_keep_the_model_and_optimizer_packed():
    model = MLP([6, 5, 4, 3], "smartmixed", seed=1)
    flat_p, flat_g = _assert_packed(model)
    optimizer = Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 6)).astype(np.float32), rng.integers(0, 3, 8)
    before = flat_p.copy()
    for _ in range(2):
        train_step(model, optimizer, x, y, clip=1.0)  # builds model.gradients() itself each step
    model.forward(x, train=False)  # an evaluation pass then its backward: the logits' gradient zeroed in place
    model.backward(np.ones((8, 3), np.float32))
    assert _assert_packed(model) == (flat_p, flat_g) and not np.array_equal(flat_p, before)
    other = MLP([6, 5, 4, 3], "smartmixed", seed=9)
    model.load_state_dict(other.state_dict())
    optimizer.load_state_dict(optimizer.state_dict())
    assert _assert_packed(model) == (flat_p, flat_g)
    np.testing.assert_array_equal(flat_p, flat_of(other.parameters()))
    if compiled.enabled():
        assert optimizer._flat_arrays(model.gradients()) is not None


# --------------------------------------------------------------------------- Adam in one pass
def _counting(monkeypatch, module, name="adam_update"):
    calls = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args[1] if module is cuda else args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def _gradient_steps(dtype, steps=5, seed=3):
    rng = np.random.default_rng(seed)
    return [{n: (rng.standard_normal(s) * (3.0 if t % 2 else 0.1)).astype(dtype) for n, s in SHAPES.items()}
            for t in range(steps)]


def _steps_side_by_side(calls, flat_opt, flat_grads, ref_opt, dtype, steps, clip_at, split_opt=None, device=None):
    """Step the packed optimizer, the per-parameter one (when given) and the reference alike on
    :func:`_gradient_steps` (clipped at the steps ``clip_at(t)`` picks): one call a step over the
    flat buffer for the packed one, one per parameter for the split one, and after every step the
    reference's parameters and moments, bitwise. ``device``: the backend of the packed
    optimizer's arrays, when not the host's (the gradients and the clip factor are moved there)."""
    size = sum(int(np.prod(shape)) for shape in SHAPES.values())
    put = (lambda a: a) if device is None else device.asarray
    for t, grads in enumerate(_gradient_steps(dtype, steps=steps)):
        for name, g in grads.items():
            flat_grads[name][...] = put(g)
        scale = clip_factor(grads, 1.0)[1] if clip_at(t) else None
        assert scale is None or scale.dtype == dtype
        calls.clear()
        flat_opt.step(flat_grads, scale=None if scale is None else put(scale))
        assert len(calls) == 1 and calls[0].ndim == 1 and calls[0].size == size  # one call, the flat buffer
        if split_opt is not None:
            split_opt.step(grads, scale=scale)
            assert len(calls) == 1 + len(SHAPES)
        ref_opt.step(grads, scale=scale)
        for opt in (flat_opt,) if split_opt is None else (flat_opt, split_opt):
            for name in SHAPES:
                np.testing.assert_array_equal(to_host(opt.params[name]), ref_opt.params[name])
                np.testing.assert_array_equal(to_host(opt.m[name]), ref_opt.m[name])
                np.testing.assert_array_equal(to_host(opt.v[name]), ref_opt.v[name])


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_flat_adam_is_the_per_parameter_and_the_reference_update_bitwise(monkeypatch, dtype, weight_decay):
    start = _arrays(dtype)
    _, flat_params = pack(start)
    _, flat_grads = pack({n: np.zeros(s, dtype) for n, s in SHAPES.items()})
    split_params = {n: a.copy() for n, a in start.items()}
    ref_params = {n: a.copy() for n, a in start.items()}
    settings = dict(lr=1e-2, weight_decay=weight_decay)
    flat_opt, split_opt = Adam(flat_params, **settings), Adam(split_params, **settings)
    ref_opt = reference.Adam(ref_params, **settings)
    assert flat_opt._flat is not None and split_opt._flat is None and ref_opt.fast_path is None
    assert flat_of(flat_opt.m) is not None and flat_of(flat_opt.v) is not None
    calls = _counting(monkeypatch, compiled)
    _steps_side_by_side(calls, flat_opt, flat_grads, ref_opt, dtype, 5, lambda t: t % 3, split_opt)  # clip the large steps
    assert flat_opt.step_count == ref_opt.step_count == 5
    state = flat_opt.state_dict()  # by name, as before
    assert state.keys() == ref_opt.state_dict().keys()
    twin = Adam(pack(flat_params)[1], **settings)
    twin.load_state_dict(state)
    assert flat_of(twin.m) is not None
    for name in SHAPES:
        np.testing.assert_array_equal(twin.v[name], ref_opt.v[name])


@needs_numba
def test_flat_adam_falls_back_whenever_anything_is_not_packed(monkeypatch):
    start = _arrays(np.float32)
    _, flat_params = pack(start)
    ref_params = {n: a.copy() for n, a in start.items()}
    flat_opt, ref_opt = Adam(flat_params, lr=1e-2), reference.Adam(ref_params, lr=1e-2)
    _, packed = pack(_gradient_steps(np.float32, steps=1)[0])
    names = list(SHAPES)
    cases = [
        ("packed", packed, 1),
        ("a copy", {n: (g.copy() if n == "b.weight" else g) for n, g in packed.items()}, len(SHAPES)),
        ("another order", {n: packed[n] for n in names[::-1]}, len(SHAPES)),
        ("unpacked", {n: g.copy() for n, g in packed.items()}, len(SHAPES)),
        ("packed again", packed, 1),
    ]
    calls = _counting(monkeypatch, compiled)
    for label, grads, expected in cases:
        calls.clear()
        flat_opt.step(grads, scale=np.float32(0.5))
        ref_opt.step({n: g.copy() for n, g in grads.items()}, scale=np.float32(0.5))
        assert len(calls) == expected, label
        for name in SHAPES:
            np.testing.assert_array_equal(flat_params[name], ref_params[name], err_msg=label)
    flat_opt.m["a.bias"] = flat_opt.m["a.bias"].copy()  # a moment array swapped: no longer the flat one's view
    calls.clear()
    flat_opt.step(packed)
    ref_opt.step(packed)
    assert len(calls) == len(SHAPES)
    np.testing.assert_array_equal(flat_params["a.bias"], ref_params["a.bias"])
    with pytest.raises(ValueError, match="do not match"):
        flat_opt.step({n: packed[n] for n in names[1:]})
    # Two parameters of one shape, gradients that tile in order but under each other's names.
    _, twins = pack({"x": np.zeros(3, np.float32), "y": np.ones(3, np.float32)})
    twins_ref = {n: a.copy() for n, a in twins.items()}
    _, swapped = pack({"y": np.full(3, 2.0, np.float32), "x": np.full(3, -1.0, np.float32)})
    twin_opt, twin_ref = Adam(twins, lr=0.1), reference.Adam(twins_ref, lr=0.1)
    calls.clear()
    twin_opt.step(swapped)
    twin_ref.step(swapped)
    assert len(calls) == 2
    for name in twins:
        np.testing.assert_array_equal(twins[name], twins_ref[name])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_without_the_compiled_loops_a_packed_step_is_one_reference_update_over_the_flat_buffers(monkeypatch, dtype):
    """NumPy alone: the reference's 13 array operations once over the flat arrays (not once per
    parameter), bitwise the per-parameter reference update, the clip scale a 0-d array."""
    monkeypatch.setattr(compiled, "enabled", lambda: False)
    start = _arrays(dtype)
    _, flat_params = pack(start)
    ref_params = {n: a.copy() for n, a in start.items()}
    flat_opt, ref_opt = Adam(flat_params, lr=1e-2, weight_decay=0.01), reference.Adam(ref_params, lr=1e-2, weight_decay=0.01)
    assert flat_opt.fast_path is None and flat_opt._flat is not None and flat_of(flat_opt.m) is not None
    _, flat_grads = pack({n: np.zeros(s, dtype) for n, s in SHAPES.items()})
    calls = []
    real = nn_optim.adam_update_reference
    monkeypatch.setattr(nn_optim, "adam_update_reference", lambda *a, **k: (calls.append(a[0]), real(*a, **k)))
    _steps_side_by_side(calls, flat_opt, flat_grads, ref_opt, dtype, 4, lambda t: t % 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_without_the_compiled_loops_the_flat_update_goes_chunk_by_chunk_with_the_same_bits(monkeypatch, dtype):
    """NumPy alone, flat arrays longer than a chunk: the reference's operations over consecutive
    stretches of CHUNK_BYTES that tile the flat buffer in order (the last one shorter), and the
    parameters and moments bitwise those of the per-parameter reference update."""
    monkeypatch.setattr(compiled, "enabled", lambda: False)
    monkeypatch.setattr(nn_optim, "CHUNK_BYTES", 9 * np.dtype(dtype).itemsize)  # 9 elements a stretch
    start = _arrays(dtype)
    flat_start, flat_params = pack(start)
    ref_params = {n: a.copy() for n, a in start.items()}
    flat_opt, ref_opt = Adam(flat_params, lr=1e-2), reference.Adam(ref_params, lr=1e-2)
    _, flat_grads = pack({n: np.zeros(s, dtype) for n, s in SHAPES.items()})
    stretches = []
    real = nn_optim.adam_update_reference
    monkeypatch.setattr(nn_optim, "adam_update_reference", lambda *a, **k: (stretches.append(a[0]), real(*a, **k)))
    size = flat_start.size
    for t, grads in enumerate(_gradient_steps(dtype, steps=3)):
        for name, g in grads.items():
            flat_grads[name][...] = g
        scale = clip_factor(grads, 1.0)[1]
        stretches.clear()
        flat_opt.step(flat_grads, scale=scale)
        assert size % 9 and [a.size for a in stretches] == [9] * (size // 9) + [size % 9]
        base = flat_start.__array_interface__["data"][0]
        offsets = [(a.__array_interface__["data"][0] - base) // flat_start.itemsize for a in stretches]
        assert offsets == list(range(0, size, 9))  # in order, tiling the flat buffer
        ref_opt.step(grads, scale=scale)
        for name in SHAPES:
            np.testing.assert_array_equal(flat_opt.params[name], ref_opt.params[name])
            np.testing.assert_array_equal(flat_opt.m[name], ref_opt.m[name])
            np.testing.assert_array_equal(flat_opt.v[name], ref_opt.v[name])


@needs_numba
@pytest.mark.parametrize("device", ["strict", "host-kernels"])
def test_on_a_gpu_without_the_kernels_a_packed_step_is_one_reference_update_even_with_numba(monkeypatch, device):
    """Device arrays (the strict backend, which refuses any mixing of host and device arrays, and
    host-kernels, which counts launches; both name a view's owner as CuPy does), the CUDA kernels
    off, the compiled loops on (they take host arrays only): the reference's operations once over
    the flat buffers, 13 launches, not 13 per parameter as the per-parameter fallback made, and
    bitwise the per-parameter reference update."""
    import host_kernels

    from smartmixed_np.backend import get_backend

    if device == "host-kernels" and host_kernels.COMPILER is None:
        pytest.skip("no C++ compiler (set CXX)")
    backend = get_backend(device)
    cuda.enable(False)
    start = _arrays(np.float32)
    _, flat_params = pack({n: backend.asarray(a) for n, a in start.items()})
    ref_opt = reference.Adam({n: a.copy() for n, a in start.items()}, lr=1e-2)
    flat_opt = Adam(flat_params, lr=1e-2)
    assert flat_opt.fast_path is not None and flat_opt.cuda is None
    _, flat_grads = pack({n: backend.xp.zeros(s, np.float32) for n, s in SHAPES.items()})
    assert flat_opt._flat_arrays(flat_grads)[4] == "reference"
    calls = []
    real = nn_optim.adam_update_reference
    monkeypatch.setattr(nn_optim, "adam_update_reference", lambda *a, **k: (calls.append(a[0]), real(*a, **k)))
    _steps_side_by_side(calls, flat_opt, flat_grads, ref_opt, np.float32, 3, lambda t: t % 2, device=backend)
    if device == "host-kernels":
        host_kernels.LAUNCHES.clear()
        flat_opt.step(flat_grads)
        assert sum(host_kernels.LAUNCHES.values()) == 13


def test_on_the_gpu_a_packed_step_is_one_launch_over_the_flat_buffers(monkeypatch):
    """On the emulated fake GPU of tests/test_cuda_engine.py (its kernels run their contract in NumPy)."""
    from test_cuda_engine import _emulating_xp, _fake_backend

    cuda.enable(True)
    cuda.reset()
    try:
        kernels = cuda.kernels_for(_fake_backend(_emulating_xp()))
        assert kernels.usable("adam")
        monkeypatch.setattr(nn_optim, "cuda_adam", lambda params: kernels)
        start = _arrays(np.float64)
        _, flat_params = pack(start)
        split_params, ref_params = ({n: a.copy() for n, a in start.items()} for _ in range(2))
        flat_opt, split_opt = Adam(flat_params, lr=1e-2, weight_decay=0.01), Adam(split_params, lr=1e-2, weight_decay=0.01)
        ref_opt = reference.Adam(ref_params, lr=1e-2, weight_decay=0.01)
        assert flat_opt.cuda is kernels and flat_opt._flat is not None
        _, flat_grads = pack({n: np.zeros(s) for n, s in SHAPES.items()})
        launches = _counting(monkeypatch, cuda)
        _steps_side_by_side(launches, flat_opt, flat_grads, ref_opt, np.float64, 3, bool, split_opt)
    finally:
        cuda.enable(None)
        cuda.reset()


def test_the_clip_keeps_flat_ofs_answer_while_the_arrays_are_the_same(monkeypatch):
    """nn.optim's kept answer of flat_of (the clip asks it every step on a GPU): asked once for the
    same arrays, again when one is another object or the names change, the right answer each time,
    and nothing kept alive once the arrays are gone."""
    import gc

    asked = []
    real = nn_optim.flat_of
    monkeypatch.setattr(nn_optim, "flat_of", lambda arrays: (asked.append(1), real(arrays))[1])
    kept = nn_optim._KeptFlat()
    flat, grads = pack({"a": np.zeros(3), "b": np.ones((2, 2))})
    assert kept(grads) is flat and kept(dict(grads)) is flat and len(asked) == 1
    assert kept({"b": grads["b"], "a": grads["a"]}) is None and len(asked) == 2  # another order
    assert kept(grads) is flat and len(asked) == 3
    swapped = {"a": grads["a"].copy(), "b": grads["b"]}
    assert kept(swapped) is None and len(asked) == 4
    assert kept(swapped) is None and len(asked) == 4  # a None answer is kept too
    del flat, grads, swapped
    gc.collect()
    assert kept._flat is None and kept._refs == ()
