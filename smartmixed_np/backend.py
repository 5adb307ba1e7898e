"""Array backends: the one module that knows CuPy exists.

Everything numerical in smartmixed_np is written against an *array module* ``xp``
(``numpy`` on the CPU, ``cupy`` on the GPU) that it obtains from the arrays it is
given, in the manner of ``cupy.get_array_module``::

    xp = array_module(x)
    y = xp.maximum(x, 0)

Host/device conversion happens only at the edges (loading data, saving
checkpoints, plotting), through :meth:`Backend.asarray` (host -> device) and
:func:`to_host` (device -> host).

Randomness. Every random draw comes from a :class:`SeededRNG` owned by the object
that uses it (a layer, a model, a data loader) and seeded by the user. The draws are
made on the host with NumPy's PCG64 and then moved to the device. That costs a small
transfer on the GPU (the Gumbel noise of a layer is (N, K) floats), and buys three
things: the same seed gives the same noise on CPU and GPU, the generator state is a
small JSON-able dict that a checkpoint can store, and a run resumed from a
checkpoint continues the very same random stream.

Backends are looked up by name: ``"cpu"``/``"numpy"`` and ``"gpu"``/``"cupy"``/
``"cuda"``. Tests register a further, strict backend through
:func:`register_backend` to prove that no code path mixes host and device arrays.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "SeededRNG",
    "array_module",
    "available_backends",
    "backend_of",
    "clip_into",
    "expm1_into",
    "NUMPY_EXPM1_IS_FAST",
    "get_backend",
    "numpy_simd",
    "register_backend",
    "to_host",
]


class BackendUnavailableError(RuntimeError):
    """Raised when a backend is asked for whose library is not installed."""


@dataclass(frozen=True)
class Backend:
    """A named array module and the two conversions at its edge.

    Attributes:
        name: canonical name (``"numpy"``, ``"cupy"``, or a registered test backend).
        device: ``"cpu"`` or ``"gpu"``; what a user would call the place arrays live.
        xp: the array module (``numpy``, ``cupy``, or a module-like namespace).
        array_type: the type of this backend's arrays (used by :func:`array_module`).
        _to_device: host ``np.ndarray`` -> this backend's array.
        _to_host: this backend's array -> host ``np.ndarray``.
        _synchronize: waits for queued device work (no-op on the CPU).
    """

    name: str
    device: str
    xp: Any
    array_type: type
    _to_device: Callable[[np.ndarray], Any]
    _to_host: Callable[[Any], np.ndarray]
    _synchronize: Callable[[], None] = lambda: None

    def asarray(self, array: Any, dtype: Any = None) -> Any:
        """Move ``array`` (host or this backend's) onto this backend, optionally cast.

        A host array is copied to the device; an array already on this backend is
        returned as is (or cast, if ``dtype`` differs).
        """
        if isinstance(array, self.array_type) and self.array_type is not np.ndarray:
            return array if dtype is None else array.astype(dtype, copy=False)
        if not isinstance(array, np.ndarray) and not np.isscalar(array):
            other = backend_of(array)
            if other is not None and other.name != "numpy":
                array = other._to_host(array)
        host = np.asarray(array, dtype=dtype)
        return self._to_device(host)

    def owns(self, array: Any) -> bool:
        """True if ``array`` is an array of this backend."""
        return isinstance(array, self.array_type)

    def synchronize(self) -> None:
        """Block until all queued work on this backend has finished (for timing)."""
        self._synchronize()

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, device={self.device!r})"

    # A backend is a process-wide singleton: copies and pickles refer to it by name.
    def __copy__(self) -> "Backend":
        return self

    def __deepcopy__(self, memo: dict) -> "Backend":
        return self

    def __reduce__(self):
        return (get_backend, (self.name,))


_NUMPY = Backend(
    name="numpy",
    device="cpu",
    xp=np,
    array_type=np.ndarray,
    _to_device=lambda a: a,
    _to_host=lambda a: a,
)

# name -> Backend, or name -> factory for a backend that imports lazily.
_REGISTRY: dict[str, Backend] = {"numpy": _NUMPY}
_ALIASES = {"cpu": "numpy", "np": "numpy", "gpu": "cupy", "cuda": "cupy", "cp": "cupy"}


def _load_cupy() -> Backend:
    try:
        cupy = importlib.import_module("cupy")
    except ImportError as err:  # pragma: no cover - depends on the machine
        raise BackendUnavailableError(
            "the GPU backend needs CuPy, which is not installed: "
            "install the extra with `pip install 'smartmixed_np[gpu]'` "
            f"(or the cupy-cudaXXx wheel matching your CUDA) [{err}]"
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # pragma: no cover - depends on the machine
        raise BackendUnavailableError(f"CuPy is installed but no CUDA device is usable: {err}") from None
    if count < 1:  # pragma: no cover
        raise BackendUnavailableError("CuPy is installed but no CUDA device was found")
    return Backend(
        name="cupy",
        device="gpu",
        xp=cupy,
        array_type=cupy.ndarray,
        _to_device=cupy.asarray,
        _to_host=cupy.asnumpy,
        _synchronize=lambda: cupy.cuda.get_current_stream().synchronize(),
    )


def register_backend(backend: Backend) -> Backend:
    """Make ``backend`` available to :func:`get_backend` and :func:`array_module`."""
    _REGISTRY[backend.name] = backend
    return backend


def available_backends() -> list[str]:
    """Names of the backends that are loaded now (CuPy appears once it was asked for)."""
    return list(_REGISTRY)


def get_backend(name: str | Backend | None = "cpu") -> Backend:
    """Return the backend for ``name``.

    Args:
        name: ``"cpu"``/``"numpy"`` (default), ``"gpu"``/``"cupy"``/``"cuda"``, the
            name of a registered backend, or a :class:`Backend` (returned as is).

    Raises:
        ValueError: ``name`` is no known backend.
        BackendUnavailableError: the GPU was asked for but CuPy (or a device) is missing.
    """
    if isinstance(name, Backend):
        return name
    if name is None:
        name = "numpy"
    if not isinstance(name, str):
        raise TypeError(f"backend must be a name such as 'cpu' or 'gpu', got {type(name).__name__}")
    key = _ALIASES.get(name.lower(), name.lower())
    if key in _REGISTRY:
        return _REGISTRY[key]
    if key == "cupy":
        return register_backend(_load_cupy())
    known = sorted(set(_REGISTRY) | set(_ALIASES) | {"cupy"})
    raise ValueError(f"unknown device/backend {name!r}; expected one of {', '.join(known)}")


def backend_of(array: Any) -> Backend | None:
    """The backend whose array type ``array`` is, or None for scalars and lists."""
    if type(array) is np.ndarray:  # the common case, checked first
        return _NUMPY
    for backend in _REGISTRY.values():
        if backend is not _NUMPY and isinstance(array, backend.array_type):
            return backend
    if isinstance(array, np.ndarray):
        return _NUMPY
    return None


def array_module(*arrays: Any) -> Any:
    """The array module (``numpy``, ``cupy``, ...) of the first array among ``arrays``.

    Scalars and ``None`` are skipped; with no array at all, ``numpy`` is returned.
    """
    for array in arrays:
        backend = backend_of(array)
        if backend is not None:
            return backend.xp
    return np


def to_host(array: Any) -> np.ndarray:
    """Copy a device array to a host ``np.ndarray`` (a host array is returned as is)."""
    backend = backend_of(array)
    if backend is None:
        return np.asarray(array)
    return backend._to_host(array)


_BELOW_ONE = np.nextafter(1.0, 0.0)  # the largest double below 1


class SeededRNG:
    """A seeded random stream, drawn on the host and delivered to a backend.

    Args:
        seed: an int, or a ``np.random.SeedSequence`` (e.g. one spawned by a parent).

    The stream is NumPy's PCG64; :attr:`state` is a JSON-able dict that can be
    stored in a checkpoint and assigned back to continue the same stream.
    """

    def __init__(self, seed: int | np.random.SeedSequence) -> None:
        if isinstance(seed, (bool, float)) or not isinstance(seed, (int, np.integer, np.random.SeedSequence)):
            raise TypeError(f"seed must be an int or a SeedSequence, got {type(seed).__name__}")
        self._generator = np.random.Generator(np.random.PCG64(seed))

    @property
    def generator(self) -> np.random.Generator:
        """The host ``np.random.Generator`` itself (for host-side draws)."""
        return self._generator

    @property
    def state(self) -> dict:
        """The generator's state, a JSON-able dict."""
        return self._generator.bit_generator.state

    @state.setter
    def state(self, value: dict) -> None:
        self._generator.bit_generator.state = value

    def gumbel(self, shape: tuple[int, ...], dtype: Any, backend: Backend) -> Any:
        """Standard Gumbel noise ``g = -log(-log(u))``, ``u ~ U(0, 1)``, on ``backend``.

        ``u = 1 - U`` with ``U`` from ``Generator.random``: the stream and the formula of
        ``Generator.gumbel``, in float64, but with NumPy's vectorised ``log`` (under half of
        ``Generator.gumbel``'s time, which calls the C library's ``log`` element by element:
        20 against 48 us for (512, 6)). Each float64 value is within 4 eps of max(1, |g|) of
        ``Generator.gumbel``'s for the same seed, and in float32 the same on every one of the
        2 million draws tested (``tests/test_backend.py`` checks half a million). Where ``Generator.gumbel``
        draws again (``U = 0``, probability $2^{-53}$), ``u`` is the largest double below 1.
        """
        u = self._generator.random(size=shape)
        np.subtract(1.0, u, out=u)
        np.minimum(u, _BELOW_ONE, out=u)
        np.log(u, out=u)
        np.negative(u, out=u)
        np.log(u, out=u)
        np.negative(u, out=u)
        return backend.asarray(u.astype(dtype, copy=False))

    def uniform(self, low: float, high: float, shape: tuple[int, ...], dtype: Any, backend: Backend) -> Any:
        """Uniform draws in ``[low, high)`` of ``shape`` on ``backend``."""
        host = self._generator.uniform(low, high, size=shape).astype(dtype, copy=False)
        return backend.asarray(host)

    def normal(self, shape: tuple[int, ...], dtype: Any, backend: Backend) -> Any:
        """Standard normal draws of ``shape`` on ``backend``."""
        host = self._generator.standard_normal(size=shape).astype(dtype, copy=False)
        return backend.asarray(host)

    def permutation(self, n: int, backend: Backend) -> Any:
        """A random permutation of ``range(n)`` as int64 indices on ``backend``."""
        return backend.asarray(self._generator.permutation(n).astype(np.int64))

    def integers(self, high: int, shape: tuple[int, ...], backend: Backend) -> Any:
        """Integers in ``[0, high)`` of ``shape`` on ``backend``."""
        return backend.asarray(self._generator.integers(0, high, size=shape).astype(np.int64))


def _numpy_clip_ufunc() -> Callable[..., Any]:
    """NumPy's ``clip`` ufunc itself (``np.clip`` wraps it in Python-level argument handling)."""
    for namespace in ("_core", "core"):  # NumPy 2, NumPy 1
        clip = getattr(getattr(getattr(np, namespace, None), "umath", None), "clip", None)
        if isinstance(clip, np.ufunc):
            return clip
    return np.clip  # pragma: no cover - every supported NumPy has the ufunc


_CLIP_UFUNC = _numpy_clip_ufunc()


def clip_into(x: Any, lo: float, hi: float, out: Any) -> Any:
    """``out[...] = clip(x, lo, hi)`` (``-inf``/``inf`` for an open side); returns ``out``.

    The same as ``xp.clip(x, lo, hi, out=out)``. On host arrays it calls NumPy's clip
    ufunc directly: ``np.clip``'s wrapper costs about a microsecond and a half per
    call, more than clipping a block of a few thousand values, and a one-sided
    ``np.maximum(x, 0)`` runs several times slower than the clip ufunc on large arrays.
    """
    if type(x) is np.ndarray:
        return _CLIP_UFUNC(x, lo, hi, out=out)
    return array_module(x).clip(x, lo, hi, out=out)


def numpy_simd() -> list[str] | None:
    """The SIMD targets NumPy dispatches to in this process (its feature table after
    ``NPY_DISABLE_CPU_FEATURES``), e.g. ``["X86_V3", "X86_V4", "AVX512_ICL"]``; None where the
    table cannot be read."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:  # NumPy 1
        try:
            from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__
        except ImportError:  # pragma: no cover - no feature table
            return None
    return [name for name in __cpu_dispatch__ if __cpu_features__.get(name)]


def _numpy_expm1_is_vectorised() -> bool:
    """Whether NumPy dispatches its float32 ``expm1`` to vectorised code on this CPU: it does with
    AVX-512 (its SVML loops; the target is named ``X86_V4`` from NumPy 2.4, ``AVX512_SKX`` before),
    and otherwise calls the C library's scalar function (also where the table cannot be read)."""
    return bool({"X86_V4", "AVX512_SKX"} & set(numpy_simd() or ()))


#: True where NumPy's float32 ``expm1`` is vectorised (AVX-512); where it is not, the elu and
#: selu kernels compute it from NumPy's vectorised ``tanh`` (:func:`expm1_into`; the compiled
#: loops compute their float32 exponentials themselves). Fixed when the module loads.
NUMPY_EXPM1_IS_FAST = _numpy_expm1_is_vectorised()


def expm1_into(x: Any, out: Any) -> Any:
    r"""``out[...] = expm1(x)`` for ``x <= 0`` (the elu and selu kernels' argument); returns ``out``.

    ``xp.expm1``, except on host float32 arrays where NumPy's ``expm1`` is the C library's
    scalar function, as it is unless the CPU has AVX-512 (:data:`NUMPY_EXPM1_IS_FAST`;
    measured on an AMD Zen 4 core limited to AVX2: 12 ns an element, ten times NumPy's
    vectorised ``tanh``). There it is computed as
    $2u/(1 - u)$ with $u = \tanh(x/2)$, the identity $e^x - 1 = 2\tanh(x/2)/(1 - \tanh(x/2))$,
    whose denominator lies in $[1, 2]$ for $x \le 0$ (no cancellation): within 4 ulps of
    ``np.expm1`` (measured: 3, over 4 million arguments from $-10^4$ to the smallest
    subnormal, on AVX2 and on AVX-512; ``tests/test_kernels.py``), zeros keep their sign,
    $-\infty$ gives $-1$. ``out`` may be ``x``.
    """
    if type(x) is np.ndarray and x.dtype == np.float32 and not NUMPY_EXPM1_IS_FAST:
        np.multiply(x, np.float32(0.5), out=out)
        np.tanh(out, out=out)  # u
        scratch = np.subtract(np.float32(1.0), out)  # 1 - u, in [1, 2]
        out *= np.float32(2.0)
        return np.divide(out, scratch, out=out)
    return array_module(x).expm1(x, out=out)
