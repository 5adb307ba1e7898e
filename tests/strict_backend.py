"""A test-only array backend that behaves like CuPy at the host/device boundary.

CI has no GPU, so the core tests run a second time with arrays wrapped in
:class:`StrictArray`. Like a CuPy array, a StrictArray

* refuses implicit conversion to a NumPy array (``np.asarray(x)`` raises TypeError);
* refuses arithmetic and indexing that mix it with plain NumPy arrays (TypeError);
* returns 0-d arrays, not host scalars, from reductions.

It is stricter than CuPy in one respect: NumPy functions and ufuncs called on it
(``np.exp(x)``) raise, where CuPy would dispatch them to the GPU, because the core
must go through the array module (``xp.exp(x)``) and never through ``numpy``.
NumPy scalars (``np.float64(2) * x``) are accepted, as CuPy accepts them.

Its array module :data:`strict_xp` forwards every function to NumPy on unwrapped
data and wraps the results again.
"""

from __future__ import annotations

import operator
import types
import weakref
from typing import Any

import numpy as np

from smartmixed_np.backend import Backend

_SCALAR_UFUNCS = {
    np.add, np.subtract, np.multiply, np.true_divide, np.floor_divide, np.power,
    np.greater, np.greater_equal, np.less, np.less_equal, np.equal, np.not_equal,
    np.maximum, np.minimum,
}


class HostDeviceMixError(TypeError):
    """A host (NumPy) array met a device array."""


def _unwrap(value: Any, where: str) -> Any:
    if isinstance(value, StrictArray):
        return value._data
    if isinstance(value, np.ndarray):
        raise HostDeviceMixError(
            f"{where}: a host numpy.ndarray of shape {value.shape} was mixed with device arrays "
            "(move it with backend.asarray first)"
        )
    if isinstance(value, (tuple, list)):
        return type(value)(_unwrap(v, where) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v, where) for k, v in value.items()}
    return value


def _wrap(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return StrictArray(value)
    if isinstance(value, np.generic) and not isinstance(value, np.dtype):
        return StrictArray(np.asarray(value))  # reductions stay on the device, as in CuPy
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


#: The StrictArray that owns each allocation (by the id of its NumPy array), for ``base``.
_OWNERS: "weakref.WeakValueDictionary[int, StrictArray]" = weakref.WeakValueDictionary()


class StrictArray:
    """A NumPy array that pretends to live on another device."""

    __slots__ = ("_data", "__weakref__")

    def __init__(self, data: np.ndarray) -> None:
        if not isinstance(data, np.ndarray):
            raise TypeError("StrictArray wraps a numpy.ndarray")
        object.__setattr__(self, "_data", data)
        if data.base is None:
            _OWNERS[id(data)] = self

    @property
    def base(self) -> "StrictArray | None":
        """The device array that owns this one's memory, or None when this one does: CuPy's
        ``base``, the owner itself (the same object each time), never a view in between, so that
        :func:`smartmixed_np.fast.flat.flat_of` finds a network's flat buffers here as on a GPU."""
        owner = self._data.base  # NumPy's: the allocation itself, for views of plain arrays
        if not isinstance(owner, np.ndarray):
            return None
        wrapper = _OWNERS.get(id(owner))
        if wrapper is None or wrapper._data is not owner:
            wrapper = StrictArray(owner)
            _OWNERS[id(owner)] = wrapper
        return wrapper

    @property
    def __cuda_array_interface__(self) -> dict:
        """The address and layout, as a CuPy array gives them (NumPy's ``__array_interface__`` stays refused)."""
        return self._data.__array_interface__

    # -- the boundary -----------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed on the strict device backend; "
            "use smartmixed_np.backend.to_host() explicitly"
        )

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        # Only "numpy scalar (op) device array" is let through, as CuPy lets it.
        others = [x for x in inputs if not isinstance(x, StrictArray)]
        if (
            method == "__call__"
            and ufunc in _SCALAR_UFUNCS
            and not kwargs
            and others
            and all(isinstance(x, (np.generic, int, float, bool)) for x in others)
        ):
            return _wrap(ufunc(*_unwrap(list(inputs), ufunc.__name__)))
        raise TypeError(f"numpy.{ufunc.__name__} was called on a device array; use the array module (xp) instead")

    def __array_function__(self, func, types_, args, kwargs):
        raise TypeError(f"numpy.{func.__name__} was called on a device array; use the array module (xp) instead")

    # -- attributes ---------------------------------------------------------------
    @property
    def shape(self):
        return self._data.shape

    @property
    def dtype(self):
        return self._data.dtype

    @property
    def ndim(self):
        return self._data.ndim

    @property
    def size(self):
        return self._data.size

    @property
    def T(self):
        return _wrap(self._data.T)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # e.g. __array_interface__: would let NumPy read the data
            raise AttributeError(name)
        attr = getattr(self._data, name)
        if callable(attr):
            def method(*args, **kwargs):
                return _wrap(attr(*_unwrap(list(args), f"ndarray.{name}"), **_unwrap(kwargs, f"ndarray.{name}")))

            return method
        return _wrap(attr)

    def __setattr__(self, name, value):
        raise AttributeError(f"cannot set attribute {name!r} of a StrictArray")

    def __len__(self):
        return len(self._data)

    def __iter__(self):
        return (_wrap(row) for row in self._data)

    def __getitem__(self, key):
        return _wrap(self._data[_unwrap(key, "indexing")])

    def __setitem__(self, key, value):
        self._data[_unwrap(key, "indexing")] = _unwrap(value, "assignment")

    # CuPy allows these explicit conversions of one element (they synchronise).
    def __float__(self):
        return float(self._data)

    def __int__(self):
        return int(self._data)

    def __index__(self):
        return operator.index(self._data.item()) if self._data.ndim == 0 else operator.index(self._data)

    def __bool__(self):
        return bool(self._data)

    def item(self):
        return self._data.item()

    def __repr__(self):
        return f"StrictArray({self._data!r})"

    def __deepcopy__(self, memo):
        return StrictArray(self._data.copy())

    def __copy__(self):
        return StrictArray(self._data.copy())


def _binary(op):
    def forward(self, other):
        return _wrap(op(self._data, _unwrap(other, op.__name__)))

    def reflected(self, other):
        return _wrap(op(_unwrap(other, op.__name__), self._data))

    return forward, reflected


def _inplace(op):
    def method(self, other):
        op(self._data, _unwrap(other, op.__name__))
        return self

    return method


for _name, _op in [
    ("add", operator.add), ("sub", operator.sub), ("mul", operator.mul), ("truediv", operator.truediv),
    ("floordiv", operator.floordiv), ("pow", operator.pow), ("matmul", operator.matmul), ("mod", operator.mod),
    ("and", operator.and_), ("or", operator.or_), ("xor", operator.xor),
]:
    _f, _r = _binary(_op)
    setattr(StrictArray, f"__{_name}__", _f)
    setattr(StrictArray, f"__r{_name}__", _r)
    setattr(StrictArray, f"__i{_name}__", _inplace(getattr(operator, f"i{_name}")))

for _name, _op in [("lt", operator.lt), ("le", operator.le), ("gt", operator.gt), ("ge", operator.ge), ("eq", operator.eq), ("ne", operator.ne)]:
    setattr(StrictArray, f"__{_name}__", _binary(_op)[0])
StrictArray.__hash__ = None  # arrays are unhashable
StrictArray.__neg__ = lambda self: _wrap(-self._data)
StrictArray.__pos__ = lambda self: _wrap(+self._data)
StrictArray.__abs__ = lambda self: _wrap(abs(self._data))
StrictArray.__invert__ = lambda self: _wrap(~self._data)


class _StrictNamespace(types.SimpleNamespace):
    """``numpy`` seen through the boundary: functions unwrap their inputs and wrap their outputs."""

    def __init__(self, module: Any, label: str) -> None:
        super().__init__()
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "_label", label)

    def __getattr__(self, name: str) -> Any:
        if name == "random":
            raise AttributeError("the strict backend has no xp.random: draw randomness through a SeededRNG")
        attr = getattr(self._module, name)
        if isinstance(attr, types.ModuleType):
            return _StrictNamespace(attr, f"{self._label}.{name}")
        if isinstance(attr, type) or not callable(attr):
            return attr  # dtypes, constants

        def function(*args, **kwargs):
            where = f"{self._label}.{name}"
            return _wrap(attr(*_unwrap(list(args), where), **_unwrap(kwargs, where)))

        function.__name__ = name
        return function


strict_xp = _StrictNamespace(np, "xp")


STRICT_BACKEND = Backend(
    name="strict",
    device="strict-device",
    xp=strict_xp,
    array_type=StrictArray,
    _to_device=lambda host: StrictArray(np.array(host, copy=True)),
    _to_host=lambda array: array._data.copy(),
)
