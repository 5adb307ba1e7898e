"""CuPy's kernel factories on the host: the CUDA engine's own kernel source, compiled as C++.

:mod:`smartmixed_np.fast.cuda` builds its kernels through ``xp.ElementwiseKernel`` and
``xp.ReductionKernel``. :class:`HostKernelModule` is an array module (NumPy for everything
else) whose two factories take the *same* arguments (parameter lists, the operation or the
map/reduce/post-map expressions, the preamble, the name) and compile them with the host's C++
compiler into a loop over NumPy arrays, with the semantics of CuPy's that the engine relies on:

* a non-``raw`` parameter is one element: the array arguments of all non-raw parameters,
  outputs included, are broadcast to one shape and the operation runs once per element ``i``
  of it, reading each input as a constant and each output as a reference to its element;
* a ``raw`` parameter is the whole array, indexed by its flat position in C order (CuPy's
  ``CArray::operator[]`` for one index), and a kernel without non-raw arrays runs ``size`` times;
* a scalar argument (a Python or NumPy number) is a constant of the parameter's type, and the
  type placeholder ``T`` is the dtype of the arrays passed for it (all the same, or TypeError);
* a reduction broadcasts its inputs, maps each element, folds the mapped values along ``axis``
  from ``identity`` by ``reduce_expr`` (``a`` the running value, ``b`` the next) in order, and
  writes ``post_map_expr`` of the result into a new output array.

The CUDA-only names of the preamble (``__device__``, ``__forceinline__``, ``__longlong_as_double``)
get host definitions, the math functions are ``<cmath>``'s overloads (``exp`` of a float is
``expf``, as in device code), and ``-ffp-contract=off`` stands in for ``--fmad=false``: every
``a * b + c`` rounds twice. What this cannot show is the device's own math library and
compiler (a few ulps, which the engine's tolerances allow) and anything about speed: it runs the
C the GPU would run, on the CPU, so that the kernels' arithmetic and indexing meet the reference
in tests on every machine with a C++ compiler.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import types
from typing import Any, Sequence

import numpy as np

#: The C++ compiler: ``$CXX`` (a name on the PATH or a path), else ``c++`` or ``g++`` on the PATH;
#: None when there is none (the tests that compile then skip).
COMPILER = shutil.which(os.environ.get("CXX") or "c++") or shutil.which("g++")

_C_TYPES = {"bool": "bool", "int8": "int8_t", "int16": "int16_t", "int32": "int32_t", "int64": "int64_t",
            "uint8": "uint8_t", "float32": "float", "float64": "double"}
_HOST_PRELUDE = r"""
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#define __device__
#define __forceinline__ inline
static inline double __longlong_as_double(long long bits) { double d; std::memcpy(&d, &bits, sizeof d); return d; }
using std::exp; using std::expm1; using std::tanh; using std::fabs; using std::sqrt; using std::log;
"""
_BUILT: dict[str, Any] = {}

#: The device operations made since the last ``LAUNCHES.clear()``, by name: each kernel of the two
#: factories (by its name), each ufunc call on a :class:`HostDeviceArray` (``"add"``; a reduction
#: ``"add.reduce"``), each function of :class:`HostDeviceModule` that computes something (not one
#: that only makes a view or an uninitialised array: ``empty``, ``reshape``, an ``asarray`` that
#: copies nothing), each copy on the device (``astype`` to another dtype, ``copy``, ``fill``, an
#: assignment into an array, ``argmax``, a fancy index) and each copy between host and device
#: (``"to_device"``, ``"to_host"``). On CuPy each is one kernel launch, cuBLAS call or copy, which
#: costs the host microseconds to issue: a small step's time on a GPU is mostly their number. An
#: operation is counted once, at the outermost call (what NumPy does inside it is that one operation).
LAUNCHES: collections.Counter = collections.Counter()
_DEPTH = [0]


def _count(name: str) -> None:
    if _DEPTH[0] == 0:
        LAUNCHES[name] += 1


@contextlib.contextmanager
def _inside():
    """What runs inside is part of the operation being counted, not an operation of its own."""
    _DEPTH[0] += 1
    try:
        yield
    finally:
        _DEPTH[0] -= 1
_WORKDIR: list[str] = []


class Param:
    """One entry of a kernel's parameter list: ``[raw] type name``."""

    def __init__(self, text: str) -> None:
        words = text.split()
        self.raw = words[0] == "raw"
        if self.raw:
            words = words[1:]
        if len(words) != 2:
            raise ValueError(f"cannot read the kernel parameter {text!r}")
        self.type, self.name = words
        if self.type != "T" and self.type not in _C_TYPES:
            raise ValueError(f"kernel parameter {text!r}: unknown type {self.type!r}")

    def dtype(self, t: np.dtype) -> np.dtype:
        return t if self.type == "T" else np.dtype(self.type if self.type != "bool" else np.bool_)

    def c_type(self, t: np.dtype) -> str:
        return _C_TYPES[self.dtype(t).name]


def parse_params(text: str) -> list[Param]:
    """A kernel's parameter list (``"raw T x, int32 K"``), one :class:`Param` an entry."""
    return [Param(part) for part in text.split(",") if part.strip()]


def _compile(source: str) -> Any:
    """The shared library of ``source`` (compiled once per process), loaded by ctypes."""
    key = hashlib.sha256(source.encode()).hexdigest()[:20]
    library = _BUILT.get(key)
    if library is not None:
        return library
    if COMPILER is None:
        raise RuntimeError("no C++ compiler (set CXX, or install g++)")
    if not _WORKDIR:
        _WORKDIR.append(tempfile.mkdtemp(prefix="smartmixed_host_kernels_"))
        atexit.register(shutil.rmtree, _WORKDIR[0], True)
    cpp = os.path.join(_WORKDIR[0], f"{key}.cpp")
    so = os.path.join(_WORKDIR[0], f"{key}.so")
    with open(cpp, "w") as f:
        f.write(source)
    run = subprocess.run([COMPILER, "-std=c++17", "-O1", "-ffp-contract=off", "-fno-fast-math", "-Wall",
                          "-Wno-unused-variable", "-Wno-unused-function", "-shared", "-fPIC", "-o", so, cpp],
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"the kernel does not compile: {' '.join(run.stderr.split())[:600]}")
    library = _BUILT[key] = ctypes.CDLL(so)
    library.smartmixed_run.restype = None
    return library


def _resolve_t(params: Sequence[Param], args: Sequence[Any]) -> np.dtype:
    """The dtype ``T`` stands for: that of every array passed for a ``T`` parameter."""
    seen = {np.dtype(a.dtype) for p, a in zip(params, args) if p.type == "T" and isinstance(a, np.ndarray)}
    if len(seen) > 1:
        raise TypeError(f"arrays of several dtypes for T: {sorted(d.name for d in seen)}")
    if not seen:
        raise TypeError("no array argument fixes the type T")
    return seen.pop()


def _scalar(param: Param, value: Any, t: np.dtype) -> np.ndarray:
    """A scalar argument (a Python or NumPy number) as one element of its parameter's type."""
    return np.array([value], dtype=param.dtype(t))


class _Kernel:
    """What both factories share: the parameters, the preamble, the arguments' marshalling."""

    def __init__(self, in_params: str, out_params: str, name: str, preamble: str) -> None:
        self.inputs, self.outputs = parse_params(in_params), parse_params(out_params)
        self.name, self.preamble = name, preamble

    def _check_array(self, param: Param, array: Any, t: np.dtype) -> None:
        if not isinstance(array, np.ndarray):
            raise TypeError(f"{self.name}: parameter {param.name} needs an array, got {type(array).__name__}")
        if array.dtype != param.dtype(t):
            raise TypeError(f"{self.name}: parameter {param.name} is {param.dtype(t).name}, got {array.dtype.name}")

    @staticmethod
    def _declarations(params: Sequence[Param], t: np.dtype, element: str, outputs: set[str],
                      array_inputs: set[str]) -> tuple[str, str]:
        """C++ for the argument pointers (before the loop) and the per-element names (inside it):
        a raw parameter is a pointer, an array one element (a reference for an output), a scalar a constant."""
        before, inside = [], []
        for j, p in enumerate(params):
            c = p.c_type(t)
            if p.raw:
                before.append(f"{c}* const {p.name} = static_cast<{c}*>(args[{j}]);")
            elif p.name in outputs or p.name in array_inputs:
                before.append(f"{c}* const _data_{p.name} = static_cast<{c}*>(args[{j}]);")
                ref = f"{c}& {p.name}" if p.name in outputs else f"const {c} {p.name}"
                inside.append(f"{ref} = _data_{p.name}[{element}];")
            else:
                before.append(f"const {c} {p.name} = *static_cast<const {c}*>(args[{j}]);")
        return "\n  ".join(before), "\n    ".join(inside)


class ElementwiseKernel(_Kernel):
    """``cupy.ElementwiseKernel(in_params, out_params, operation, name, preamble=..., options=...)``, on the host."""

    def __init__(self, in_params: str, out_params: str, operation: str, name: str = "kernel", preamble: str = "",
                 options: Sequence[str] = (), **_: Any) -> None:
        super().__init__(in_params, out_params, name, preamble)
        self.operation = operation

    def __call__(self, *args: Any, size: int | None = None) -> Any:
        _count(self.name)
        with _inside():
            return self._run(args, size)

    def _run(self, args: Sequence[Any], size: int | None) -> Any:
        params = self.inputs + self.outputs
        if len(args) != len(params):
            raise TypeError(f"{self.name}: {len(args)} arguments for {len(params)} parameters (outputs are not made here)")
        t = _resolve_t(params, args)
        out_names = {p.name for p in self.outputs}
        elementwise = [(p, a) for p, a in zip(params, args) if not p.raw and isinstance(a, np.ndarray)]
        for p, a in zip(params, args):
            if p.raw or p.name in out_names or isinstance(a, np.ndarray):
                self._check_array(p, a, t)
        if elementwise:
            shape = np.broadcast_shapes(*(a.shape for _, a in elementwise))
            for p, a in elementwise:
                if p.name in out_names and a.shape != shape:
                    raise ValueError(f"{self.name}: output {p.name} is {a.shape}, the broadcast shape {shape}")
            n = int(np.prod(shape))
        elif size is None:
            raise ValueError(f"{self.name}: no non-raw array: the size must be given")
        else:
            shape, n = None, int(size)
        buffers, write_back = [], []
        for p, a in zip(params, args):
            if p.raw or (p.name in out_names):
                buf = a if a.flags.c_contiguous else np.ascontiguousarray(a)
                if buf is not a:
                    write_back.append((a, buf))
            elif isinstance(a, np.ndarray):
                buf = np.ascontiguousarray(np.broadcast_to(a, shape))
            else:
                buf = _scalar(p, a, t)
            buffers.append(buf)
        array_inputs = {p.name for p, _ in elementwise if p.name not in out_names}
        before, inside = self._declarations(params, t, "i", out_names, array_inputs)
        source = f"""{_HOST_PRELUDE}
{self.preamble}
extern "C" void smartmixed_run(void** args, ptrdiff_t _size) {{
  typedef {_C_TYPES[t.name]} T;
  {before}
  for (ptrdiff_t i = 0; i < _size; ++i) {{
    {inside}
    {self.operation};
  }}
}}
"""
        pointers = (ctypes.c_void_p * len(buffers))(*(b.ctypes.data for b in buffers))
        _compile(source).smartmixed_run(pointers, ctypes.c_ssize_t(n))
        for a, buf in write_back:
            a[...] = buf
        return args[-1]


class ReductionKernel(_Kernel):
    """``cupy.ReductionKernel(in_params, out_params, map_expr, reduce_expr, post_map_expr, identity, name, ...)``, on the host."""

    def __init__(self, in_params: str, out_params: str, map_expr: str, reduce_expr: str, post_map_expr: str,
                 identity: str, name: str = "reduce_kernel", preamble: str = "", options: Sequence[str] = (),
                 **_: Any) -> None:
        super().__init__(in_params, out_params, name, preamble)
        if len(self.outputs) != 1:
            raise ValueError(f"{name}: one output, got {len(self.outputs)}")
        self.map_expr, self.reduce_expr, self.post_map_expr, self.identity = map_expr, reduce_expr, post_map_expr, identity

    def __call__(self, *args: Any, axis: Any = None) -> Any:
        _count(self.name)
        with _inside():
            return self._run(args, axis)

    def _run(self, args: Sequence[Any], axis: Any) -> Any:
        if len(args) != len(self.inputs):
            raise TypeError(f"{self.name}: {len(args)} arguments for {len(self.inputs)} inputs")
        t = _resolve_t(self.inputs, args)
        arrays = [(p, a) for p, a in zip(self.inputs, args) if isinstance(a, np.ndarray)]
        for p, a in arrays:
            if p.raw:
                raise ValueError(f"{self.name}: raw inputs are not emulated here")
            self._check_array(p, a, t)
        shape = np.broadcast_shapes(*(a.shape for _, a in arrays))
        axes = tuple(range(len(shape))) if axis is None else tuple(np.atleast_1d(axis) % len(shape))
        kept = [d for d in range(len(shape)) if d not in axes]
        out_shape = tuple(shape[d] for d in kept)
        n_red = int(np.prod([shape[d] for d in axes]))
        buffers = []
        for p, a in zip(self.inputs, args):
            if isinstance(a, np.ndarray):  # the reduced axes last: element (j, r) at j * n_red + r
                buffers.append(np.ascontiguousarray(np.broadcast_to(a, shape).transpose(kept + list(axes))))
            else:
                buffers.append(_scalar(p, a, t))
        out_param = self.outputs[0]
        out = np.empty(out_shape, dtype=out_param.dtype(t))
        buffers.append(out)
        before, inside = self._declarations(self.inputs, t, "_j * _n_red + _r", set(), {p.name for p, _ in arrays})
        c_out = out_param.c_type(t)
        source = f"""{_HOST_PRELUDE}
{self.preamble}
extern "C" void smartmixed_run(void** args, ptrdiff_t _n_out, ptrdiff_t _n_red) {{
  typedef {_C_TYPES[t.name]} T;
  typedef {c_out} _type_reduce;
  {before}
  {c_out}* const _data_out = static_cast<{c_out}*>(args[{len(self.inputs)}]);
  for (ptrdiff_t _j = 0; _j < _n_out; ++_j) {{
    _type_reduce _acc = (_type_reduce)({self.identity});
    for (ptrdiff_t _r = 0; _r < _n_red; ++_r) {{
      {inside}
      const _type_reduce a = _acc;
      const _type_reduce b = (_type_reduce)({self.map_expr});
      _acc = ({self.reduce_expr});
    }}
    const _type_reduce a = _acc;
    {c_out}& {out_param.name} = _data_out[_j];
    {self.post_map_expr};
  }}
}}
"""
        pointers = (ctypes.c_void_p * len(buffers))(*(b.ctypes.data for b in buffers))
        _compile(source).smartmixed_run(pointers, ctypes.c_ssize_t(out.size), ctypes.c_ssize_t(n_red))
        return out.view(type(arrays[0][1]))  # a new array of the inputs' kind (HostDeviceArray's too)


class HostKernelModule(types.SimpleNamespace):
    """An array module: NumPy, with :class:`ElementwiseKernel` and :class:`ReductionKernel` compiled on the host."""

    def __init__(self) -> None:
        super().__init__(ElementwiseKernel=ElementwiseKernel, ReductionKernel=ReductionKernel)

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


#: How many times a :class:`HostDeviceArray`'s values were read on the host (``float(a)``,
#: ``int``, ``bool``, ``a.item()``, ``a.tolist()``, the backend's ``to_host``): each would make
#: the host wait for the device on a GPU. Tests reset it and read it.
HOST_READS = [0]


class HostDeviceArray(np.ndarray):
    """The arrays of :func:`host_device_backend`: NumPy's, of their own type, so that
    :func:`smartmixed_np.backend.backend_of` finds that backend (as it finds CuPy's for a
    ``cupy.ndarray``) and the engines choose as they would on a GPU. Reading values on the
    host counts in :data:`HOST_READS`."""

    # A result of one element stays a (0-d) device array, as CuPy's does, never a host scalar.
    def __array_wrap__(self, array: np.ndarray, context: Any = None, return_scalar: bool = False) -> Any:
        return array.view(HostDeviceArray)

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, out: Any = None, **kwargs: Any) -> Any:
        """The ufunc on the arrays' NumPy views, counted in :data:`LAUNCHES`; results as device arrays."""
        _count(ufunc.__name__ if method == "__call__" else f"{ufunc.__name__}.{method}")
        if out is not None:
            kwargs["out"] = tuple(map(_plain, out))
        with _inside():
            result = getattr(ufunc, method)(*map(_plain, inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return tuple(map(_on_device, result)) if isinstance(result, tuple) else _on_device(result)

    def __getitem__(self, key: Any) -> Any:
        with _inside():
            result = super().__getitem__(key)
        if isinstance(result, np.ndarray) and not np.may_share_memory(result, self):
            _count("take")  # advanced indexing copies (a basic index is a view, as on CuPy)
        return _on_device(result)

    def __setitem__(self, key: Any, value: Any) -> None:
        _count("setitem")
        with _inside():
            super().__setitem__(key, _plain(value))

    def astype(self, dtype: Any, *args: Any, **kwargs: Any) -> Any:
        with _inside():
            result = super().astype(dtype, *args, **kwargs)
        if result is not self:
            _count("astype")
        return result

    def copy(self, *args: Any, **kwargs: Any) -> Any:
        _count("copy")
        with _inside():
            return super().copy(*args, **kwargs)

    def fill(self, value: Any) -> None:
        _count("fill")
        with _inside():
            super().fill(value)

    def argmax(self, *args: Any, **kwargs: Any) -> Any:
        _count("argmax")
        with _inside():
            return _on_device(super().argmax(*args, **kwargs))

    @property
    def base(self) -> "HostDeviceArray | None":
        """The device array that owns this one's memory, or None when it owns it itself: CuPy's
        ``base``, which names the owner, never a view between (CuPy's ``_view`` sets
        ``v.base = self.base if self.base is not None else self``), so that
        :func:`smartmixed_np.fast.flat.flat_of` finds a flat buffer here as on a GPU. NumPy
        collapses a chain of views only for exact ``ndarray``\\ s; here the chain is walked. A
        device array made from a host array (a view of it, as every result here is) owns its memory."""
        owner = np.ndarray.base.__get__(self)
        if not isinstance(owner, HostDeviceArray):
            return None
        while isinstance(np.ndarray.base.__get__(owner), HostDeviceArray):
            owner = np.ndarray.base.__get__(owner)
        return owner

    def _read(self, convert: Any) -> Any:
        HOST_READS[0] += 1
        return convert(self.view(np.ndarray))

    def __float__(self) -> float:
        return self._read(float)

    def __int__(self) -> int:
        return self._read(int)

    def __bool__(self) -> bool:
        return self._read(bool)

    def item(self, *args: Any) -> Any:
        return self._read(lambda a: a.item(*args))

    def tolist(self) -> Any:
        return self._read(lambda a: a.tolist())


def _to_host(array: Any) -> np.ndarray:
    HOST_READS[0] += 1
    _count("to_host")
    return np.array(array)


def _to_device(array: np.ndarray) -> "HostDeviceArray":
    _count("to_device")
    return np.array(array).view(HostDeviceArray)


def _plain(value: Any) -> Any:
    """A device array's NumPy view (anything else as it is)."""
    return value.view(np.ndarray) if isinstance(value, HostDeviceArray) else value


#: Functions of the module that make no device work: an uninitialised array.
_NO_WORK = frozenset({"empty", "empty_like"})


def _computes(name: str, result: Any, args: Sequence[Any], kwargs: dict) -> bool:
    """Whether a module function's call was device work: it wrote ``out``, or made an array that
    is not a view of one of its arguments (nor an uninitialised one), or several."""
    if name in _NO_WORK:
        return False
    if kwargs.get("out") is not None or isinstance(result, (tuple, np.generic)):
        return True  # a number is a reduction's (a 0-d array on the device)
    if not isinstance(result, np.ndarray):
        return False
    sources = [a for a in (*args, *kwargs.values()) if isinstance(a, np.ndarray)]
    return not any(np.may_share_memory(result, a) for a in sources)


def _on_device(value: Any) -> Any:
    """A NumPy result as the device's: an array as a HostDeviceArray, a scalar as a 0-d one."""
    if type(value) is np.ndarray:
        return value.view(HostDeviceArray)
    if isinstance(value, np.generic):
        return np.asarray(value).view(HostDeviceArray)
    return value


class HostDeviceModule(HostKernelModule):
    """:class:`HostKernelModule` whose functions hand back :class:`HostDeviceArray` where NumPy's hand
    back a plain array (NumPy's ufuncs and methods keep the type by themselves)."""

    def __getattr__(self, name: str) -> Any:
        value = getattr(np, name)
        if not callable(value) or isinstance(value, (type, np.ufunc)):  # constants, dtypes, ufuncs as they are
            return value

        def function(*args: Any, **kwargs: Any) -> Any:
            with _inside():
                result = value(*args, **kwargs)
            if _computes(name, result, args, kwargs):
                _count(name)
            return _on_device(result)

        return function


def host_device_backend(name: str = "host-kernels") -> Any:
    """A registered backend that stands for a GPU (``device="gpu"``) on the host: arrays of
    :class:`HostDeviceArray`, kernels compiled by :class:`HostKernelModule`'s factories."""
    from smartmixed_np.backend import Backend, get_backend, register_backend

    try:
        return get_backend(name)
    except ValueError:
        pass
    return register_backend(Backend(
        name=name, device="gpu", xp=HostDeviceModule(), array_type=HostDeviceArray,
        _to_device=_to_device, _to_host=_to_host))
