r"""One flat buffer for many named arrays: :func:`pack` makes it, :func:`flat_of` finds it.

An optimizer that updates $k$ parameters with an elementwise rule (Adam) can update them
all in *one* call over a single 1-D buffer when the parameters are views of that buffer,
laid end to end: the same elementwise loop over the concatenation gives each element the
same operations, so the same bits, as $k$ calls over the separate arrays, without $k$
times the per-call overhead. :func:`pack` lays a dict of arrays out that way;
:func:`flat_of` tells whether a dict already is, and hands back the buffer.

Layout: for arrays $a_1, \dots, a_k$ (in the dict's order) of sizes $n_1, \dots, n_k$,
the buffer $f$ has $n = \sum_j n_j$ elements and $a_j$ is ``f[o_j : o_j + n_j]``
reshaped C-contiguously to $a_j$'s shape, with $o_j = \sum_{i<j} n_i$.

No reference stands behind this module: it moves no numbers (:func:`pack` copies them
exactly). Any array module (NumPy or CuPy: it uses the arrays' own, and the standard
``__array_interface__`` / ``__cuda_array_interface__`` for addresses).
"""

from __future__ import annotations

from typing import Any

from ..backend import array_module

__all__ = ["pack", "flat_of"]


def pack(arrays: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Copy ``arrays`` into one new 1-D buffer and return it with a view per name.

    Args:
        arrays: {name: array}, all of one dtype and one array module (device); any shapes.

    Returns:
        ``(flat, views)``: ``flat`` (n,) of the arrays' dtype on their device, n the total
        size; ``views`` {name: view of ``flat``} with each array's shape, C-contiguous, in
        the dict's order and laid end to end (see the module docstring), holding a copy of
        its values. ``flat_of(views) is flat``.

    Raises:
        ValueError: an empty dict, or arrays of different dtypes.
    """
    if not arrays:
        raise ValueError("pack needs at least one array")
    values = list(arrays.values())
    dtype = values[0].dtype
    if any(a.dtype != dtype for a in values):
        raise ValueError(f"pack needs arrays of one dtype, got {sorted({str(a.dtype) for a in values})}")
    xp = array_module(*values)
    flat = xp.empty(sum(int(a.size) for a in values), dtype=dtype)
    views: dict[str, Any] = {}
    offset = 0
    for name, a in arrays.items():
        size = int(a.size)
        view = flat[offset:offset + size].reshape(a.shape)
        view[...] = a
        views[name] = view
        offset += size
    return flat, views


def _address(a: Any) -> int:
    """The address of ``a``'s first element (host or device memory)."""
    interface = getattr(a, "__cuda_array_interface__", None)
    if interface is None:
        interface = a.__array_interface__
    return int(interface["data"][0])


def flat_of(arrays: dict[str, Any]) -> Any:
    """The 1-D buffer that ``arrays`` tile exactly, in the dict's order, else None.

    That is the buffer ``f`` of :func:`pack`'s layout: every array is a C-contiguous view of
    ``f`` (one memory owner, 1-D, of the arrays' dtype and type), the first starts at
    ``f``'s first element, each next one where the one before it ends, and together they
    cover all of ``f``: no gap, no overlap, nothing left over. Anything else (another order,
    a gap, a copy, mixed dtypes, a strided view, a view of a sub-range) gives None.

    Cost: a few attribute reads per array (about a microsecond each): ask once and keep the
    answer while the arrays are the same objects.
    """
    values = list(arrays.values()) if isinstance(arrays, dict) else []
    if not values:
        return None
    first = values[0]
    try:
        base = first.base if first.base is not None else first
        if (base.ndim != 1 or base.dtype != first.dtype or type(base) is not type(first)
                or not base.flags.c_contiguous or base.base is not None):
            return None
        itemsize = base.dtype.itemsize
        expected = _address(base)
        total = 0
        for a in values:
            owner = a.base if a.base is not None else a
            if (owner is not base or type(a) is not type(base) or a.dtype != base.dtype
                    or not a.flags.c_contiguous or _address(a) != expected):
                return None
            size = int(a.size)
            expected += size * itemsize
            total += size
    except AttributeError:  # not an array of a known module
        return None
    return base if total == int(base.size) else None
