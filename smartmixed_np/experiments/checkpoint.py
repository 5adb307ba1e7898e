"""Saving and loading arrays safely: models and training checkpoints.

Format: a NumPy ``.npz`` archive of plain numeric arrays, plus one ``uint8`` array
``__meta__`` holding UTF-8 JSON (options, random-generator states, history).
Files are written atomically (see :mod:`smartmixed_np.fileio`): a process killed
while writing leaves the previous file intact.

A saved model is two files: ``model.npz`` (the parameters) and ``model.json``
(the architecture, each neuron's activation, the options), readable by a person.

Loading trusts the file no further than it can check it, and every failure is a
one-line :class:`~smartmixed_np.errors.CheckpointError` that names the file:

* only a regular file is opened (a FIFO would block, ``/dev/zero`` never ends);
* the archive is read member by member with :mod:`zipfile` (not ``np.load``): each
  member must be a ``.npy`` array, stored or deflated, neither encrypted nor
  overlapping another; the size it claims is bounded by the bytes it occupies in
  the file (deflate inflates at most :data:`DEFLATE_MAX_RATIO` times) and the total
  by the machine's memory;
* each ``.npy`` header is parsed and the size its shape and dtype claim is checked
  against the member's size *before* anything is allocated; object dtypes (which
  would need pickle) are refused, so opening a checkpoint never runs code; the
  array is then read in bounded pieces and checked against its CRC;
* JSON (``__meta__``, ``model.json``) must be UTF-8, of bounded size and nesting;
* :func:`load_model` checks every field of ``model.json`` for its type and range and
  the architecture against the arrays' shapes before it builds a network, so a
  hostile size never reaches an allocation or the random generator.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from . import plugins
from ..errors import CheckpointError
from ..fileio import NpyHeaderError, atomic_writer, decode_json, open_regular_file, read_npy_header, write_json
from . import runfolder
from .runfolder import MODEL_ARRAYS, MODEL_JSON

__all__ = ["save_arrays", "load_arrays", "save_model", "load_model", "MODEL_ARRAYS", "MODEL_JSON"]

META_KEY = "__meta__"
MODEL_FORMAT = "smartmixed_np.model/1"

#: DEFLATE's best case is a 258-byte match coded in 2 bits: no member can inflate more.
DEFLATE_MAX_RATIO = 1032
#: More members than this is not a checkpoint (a training checkpoint holds a few dozen).
MAX_MEMBERS = 10_000
#: Largest ``model.json`` (and its nesting depth) that is read.
#: Limits on a network described by ``model.json``, checked before any is built.
MAX_LAYERS = 1024
MAX_WIDTH = 2**31 - 1
MAX_POOL = 1024
_READ_PIECE = 1 << 20  # arrays are read from the archive in pieces of this size


def save_arrays(path: str | Path, arrays: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> Path:
    """Write ``arrays`` (host, numeric) and JSON-able ``meta`` to ``path`` atomically.

    Raises:
        TypeError: an array is not numeric (object arrays would need pickle).
    """
    payload = {}
    for name, array in arrays.items():
        array = np.asarray(array)
        if array.dtype.kind not in "fiub":
            raise TypeError(f"array {name!r} has dtype {array.dtype}; only numeric arrays can be saved")
        payload[name] = array
    if META_KEY in payload:
        raise ValueError(f"{META_KEY!r} is reserved")
    payload[META_KEY] = np.frombuffer(json.dumps(meta or {}).encode("utf-8"), dtype=np.uint8)
    with atomic_writer(path, "wb") as file:
        np.savez(file, **payload)
    return Path(path)


def load_arrays(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a file written by :func:`save_arrays`.

    Returns:
        ``(arrays, meta)``: the arrays by name, with the dtype and byte order they
        were saved with (writable), and the metadata (a dict).

    Raises:
        CheckpointError: missing, not a regular file, truncated, corrupt, not an npz
            archive, holding pickled objects or anything but numeric arrays, sizes
            that do not add up, or without valid metadata; the message names the file.
    """
    path = Path(path)
    with _open_regular_file(path, "a checkpoint") as (file, size):
        try:
            if file.read(4) != b"PK\x03\x04":  # an .npz is a zip archive
                raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt: not an .npz archive)")
            file.seek(0)
            with zipfile.ZipFile(file) as archive:
                members = _check_members(path, archive, size)
                arrays = {name: _read_member(path, archive, info, name) for name, info in members.items()}
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, struct.error, NotImplementedError,
                UnicodeDecodeError, OverflowError) as err:
            # What zipfile raises for a damaged archive: its central directory, local
            # headers, compressed data or CRC do not hold together.
            raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt: {_one_line(err)})") from None
    meta_array = arrays.pop(META_KEY, None)
    if meta_array is None:
        raise CheckpointError(f"{path}: not a smartmixed_np checkpoint (no metadata)")
    if meta_array.dtype != np.uint8 or meta_array.ndim != 1:
        raise CheckpointError(f"{path}: corrupt metadata (a {meta_array.dtype} array of shape {meta_array.shape}, not bytes)")
    meta = _parse_json(path, meta_array.tobytes(), "corrupt metadata", constants=True)  # json.dumps wrote it
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: corrupt metadata (not a JSON object)")
    return arrays, meta


def save_model(folder: str | Path, model: Any, extra: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Save ``model`` as ``folder/model.npz`` and ``folder/model.json``.

    ``model.json`` holds :meth:`MLP.config` plus each neuron's activation name (in
    the original neuron order) and anything in ``extra`` (a run adds ``imports``,
    the modules that register its user activations).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    description = {
        "format": MODEL_FORMAT,
        "architecture": "-".join(str(s) for s in model.sizes),
        "config": model.config(),
        "choices": model.choice_names(),
        **(extra or {}),
    }
    arrays_path = save_arrays(folder / MODEL_ARRAYS, model.state_dict(), {"config": model.config()})
    json_path = write_json(folder / MODEL_JSON, description)
    return arrays_path, json_path


def load_model(path: str | Path, device: Any = "cpu") -> Any:
    """Load a model saved by :func:`save_model` (a run folder, or its ``model.npz``).

    The order makes a hostile file harmless: ``model.json`` is read and every field
    checked; the arrays are read (see :func:`load_arrays`); the architecture is
    checked against their names, shapes and dtypes; the modules named in
    ``"imports"`` (they register user activations) must have been imported by the
    user already (``--import``; a file never makes code run: see
    :mod:`smartmixed_np.experiments.plugins`); only then is the network built.

    Raises:
        CheckpointError: missing files, a corrupt or unsafe archive, a malformed
            ``model.json``, arrays whose names or shapes do not match its
            architecture, or a module in ``"imports"`` that is not imported yet.
    """
    from ..backend import get_backend
    from ..nn.mlp import MLP

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    arrays_path = folder / MODEL_ARRAYS if path.is_dir() else path
    json_path = folder / MODEL_JSON
    backend = get_backend(device)  # a wrong device is the caller's error, not the file's
    if not os.path.lexists(json_path):
        raise CheckpointError(f"{json_path}: no such file (a saved model needs {MODEL_JSON} beside {MODEL_ARRAYS})")
    try:  # the run folder's own reader: regular files only, bounded, strict JSON
        description = runfolder.read_model_description(folder)
    except runfolder.RunFolderError as err:
        problem = "corrupt model description" if err.kind == "corrupt" else "cannot read a model description"
        reason = err.reason[len("not valid JSON ("):-1] if err.reason.startswith("not valid JSON (") else err.reason
        raise CheckpointError(f"{json_path}: {problem} ({reason})") from None
    config, imports = _check_description(json_path, description)
    arrays, _ = load_arrays(arrays_path)
    _check_arrays(arrays_path, config, arrays)
    try:
        plugins.require_loaded(imports, str(json_path))
    except plugins.PluginError as err:
        raise CheckpointError(str(err)) from None
    try:
        model = MLP.from_config(config, device=backend)
        model.load_state_dict(arrays)
    except (ValueError, TypeError, KeyError, IndexError) as err:
        # What is left after the checks above: names MLP resolves itself, such as an
        # activation that is not registered.
        hint = "" if imports or "unknown activation" not in str(err) else (
            f' (a user activation needs its module in "imports" of {MODEL_JSON})')
        raise CheckpointError(f"{json_path}: {_one_line(err)}{hint}") from None
    return model


# ---------------------------------------------------------------- files and JSON
def _open_regular_file(path: Path, what: str) -> Any:
    """Open ``path`` if it is a regular file: :func:`smartmixed_np.fileio.open_regular_file`."""
    return open_regular_file(path, what, CheckpointError)


def _parse_json(path: Path, content: bytes, problem: str, constants: bool = False) -> Any:
    """:func:`smartmixed_np.fileio.decode_json`, with a CheckpointError naming ``path`` and ``problem``."""
    try:
        return decode_json(content, constants=constants)
    except ValueError as err:
        raise CheckpointError(f"{path}: {problem} ({err})") from None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # not on this platform
        return None


# ---------------------------------------------------------------- the archive
def _check_members(path: Path, archive: zipfile.ZipFile, size: int) -> dict[str, zipfile.ZipInfo]:
    """The archive's members by array name, after checking what each claims against the file.

    Every bound here holds before a byte is inflated: a stored member's data are its
    bytes in the file; a deflated one inflates at most DEFLATE_MAX_RATIO times;
    members may not share bytes; the total must fit in the machine's memory.
    """
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise CheckpointError(f"{path}: not a checkpoint ({len(infos)} members, more than {MAX_MEMBERS})")
    members: dict[str, zipfile.ZipInfo] = {}
    total_stored = total_claimed = 0
    for info in infos:
        filename = info.filename
        if not filename.endswith(".npy") or filename.endswith("/"):
            raise CheckpointError(f"{path}: unexpected member {filename!r} (a checkpoint holds only .npy arrays)")
        name = filename[: -len(".npy")]
        if name in members:
            raise CheckpointError(f"{path}: corrupt checkpoint (member {filename!r} appears twice)")
        if info.flag_bits & 0x41:  # bit 0: encrypted; bit 6: strong encryption
            raise CheckpointError(f"{path}: member {filename!r} is encrypted; a checkpoint never is")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CheckpointError(
                f"{path}: member {filename!r} uses zip compression method {info.compress_type}; "
                f"only stored (0) and deflate (8) are supported"
            )
        if info.flag_bits & 0x20:  # "compressed patched data", which zipfile cannot read
            raise CheckpointError(f"{path}: member {filename!r} uses patched data (zip flag 0x20), not supported")
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise CheckpointError(
                f"{path}: corrupt checkpoint (stored member {filename!r} claims {info.file_size} bytes "
                f"but occupies {info.compress_size})"
            )
        if info.file_size > DEFLATE_MAX_RATIO * info.compress_size + 1024:
            raise CheckpointError(
                f"{path}: corrupt checkpoint (member {filename!r} claims {info.file_size} bytes from "
                f"{info.compress_size} compressed bytes, more than deflate can produce)"
            )
        if info.header_offset + info.compress_size > size:
            raise CheckpointError(f"{path}: corrupt checkpoint (member {filename!r} extends past the end of the file)")
        total_stored += info.compress_size
        total_claimed += info.file_size
        members[name] = info
    if total_stored > size:
        raise CheckpointError(
            f"{path}: corrupt checkpoint (its members claim {total_stored} bytes of a {size}-byte file: they overlap)"
        )
    memory = _physical_memory()
    if memory is not None and total_claimed > memory:
        raise CheckpointError(
            f"{path}: its arrays need {total_claimed / 2**30:.1f} GiB, more than this machine's memory "
            f"({memory / 2**30:.1f} GiB)"
        )
    return members


def _read_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> np.ndarray:
    """One ``.npy`` member as an array, its header checked against the member's size before allocating."""
    with archive.open(info) as member:
        try:
            shape, fortran_order, dtype = read_npy_header(member)
        except NpyHeaderError as err:
            raise CheckpointError(f"{path}: array {name!r} has {err}") from None
        if dtype.hasobject:
            raise CheckpointError(f"{path}: contains pickled Python objects; refusing to load it")
        if dtype.kind not in "fiub" or dtype.names is not None or dtype.subdtype is not None:
            raise CheckpointError(f"{path}: array {name!r} has unsupported dtype {dtype}")
        if not all(isinstance(n, int) and n >= 0 for n in shape):
            raise CheckpointError(f"{path}: array {name!r} has a corrupt .npy header (shape {shape})")
        count = math.prod(shape)
        header_size = member.tell()
        claimed = count * dtype.itemsize
        if header_size + claimed != info.file_size:
            raise CheckpointError(
                f"{path}: corrupt checkpoint (array {name!r}: its header claims shape {shape} of {dtype}, "
                f"{claimed} bytes, but the member holds {info.file_size - header_size})"
            )
        # The size is now known to be what the member holds, and the member's size is
        # bounded by the file: allocating is safe.
        try:
            array = np.empty(count, dtype=dtype)
        except MemoryError:  # less memory free than the machine has (limits, other processes)
            raise CheckpointError(
                f"{path}: not enough memory to load array {name!r} ({claimed / 2**30:.2f} GiB)") from None
        target = array.view(np.uint8)
        filled = 0
        while filled < claimed:
            piece = member.read(min(_READ_PIECE, claimed - filled))
            if not piece:
                raise CheckpointError(f"{path}: truncated checkpoint (array {name!r} ends early)")
            target[filled : filled + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
            filled += len(piece)
        if member.read(1):  # also makes zipfile compare the CRC for an empty array
            raise CheckpointError(f"{path}: corrupt checkpoint (array {name!r} has bytes after its data)")
    return array.reshape(shape, order="F" if fortran_order else "C")


# ---------------------------------------------------------------- model.json
def _check_description(json_path: Path, description: Any) -> tuple[dict[str, Any], list[str]]:
    """``(config, imports)`` from ``model.json``, each field checked for type and range.

    The checks are made here, not left to :class:`~smartmixed_np.nn.mlp.MLP`, so that a
    hostile value never reaches the constructor (an allocation, the random
    generator) and every problem is reported with the field's name.
    """
    def bad(field: str, expected: str, value: Any) -> CheckpointError:
        shown = " ".join(repr(value).split())
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return CheckpointError(f"{json_path}: corrupt model description ({field} must be {expected}, found {shown})")

    if not isinstance(description, dict):
        raise bad("the file", "a JSON object", description)
    if "format" in description and description["format"] != MODEL_FORMAT:
        raise bad("format", repr(MODEL_FORMAT), description["format"])
    imports = description.get("imports", [])
    if not isinstance(imports, list) or not all(isinstance(spec, str) and spec and "\0" not in spec for spec in imports):
        raise bad("imports", "a list of module names or .py paths", imports)
    if "config" not in description:
        raise CheckpointError(f"{json_path}: corrupt model description (no \"config\")")
    config = description["config"]
    if not isinstance(config, dict):
        raise bad("config", "an object", config)

    def field(name: str, check, expected: str, where: dict = config, prefix: str = "config.") -> Any:
        if name not in where:
            raise CheckpointError(f"{json_path}: corrupt model description (no {prefix}{name})")
        value = where[name]
        if not check(value):
            raise bad(prefix + name, expected, value)
        return value

    sizes = field("sizes", lambda v: isinstance(v, list) and 2 <= len(v) <= MAX_LAYERS + 1 and all(_is_int(s, 1, MAX_WIDTH) for s in v),
                  f"a list of 2 to {MAX_LAYERS + 1} positive integers")
    kind = field("kind", lambda v: v in ("smartmixed", "fixed"), '"smartmixed" or "fixed"')
    field("pool", _is_pool, f"a list of 1 to {MAX_POOL} activation names")
    field("dtype", lambda v: v in ("float32", "float64"), '"float32" or "float64"')
    field("seed", lambda v: _is_int(v, 0, 2**128 - 1), "an integer in [0, 2**128)")
    field("tau", lambda v: _is_number(v) and v > 0, "a positive finite number")
    field("hard", lambda v: isinstance(v, bool), "true or false")
    field("clamp", lambda v: v is None or (_is_number(v) and v > 0), "a positive finite number or null")
    field("noise_mode", lambda v: v in ("shared", "per_sample", "none"), '"shared", "per_sample" or "none"')
    if kind == "fixed":
        hidden = sizes[1:-1]
        layers = field("layers", lambda v: isinstance(v, list) and len(v) == len(hidden),
                       f"a list of {len(hidden)} layer descriptions (one per hidden layer)")
        for i, (width, layer) in enumerate(zip(hidden, layers)):
            where = f"config.layers[{i}]."
            if not isinstance(layer, dict):
                raise bad(f"config.layers[{i}]", "an object", layer)
            pool = field("pool", _is_pool, f"a list of 1 to {MAX_POOL} activation names", layer, where)
            field("choices", lambda v: isinstance(v, list) and len(v) == width and all(_is_int(c, 0, len(pool) - 1) for c in v),
                  f"a list of {width} indices into its pool", layer, where)
            field("order", lambda v: isinstance(v, list) and len(v) == width and all(_is_int(o, 0, width - 1) for o in v)
                  and len(set(v)) == width, f"a permutation of 0..{width - 1}", layer, where)
            field("clamp", lambda v: v is None or (_is_number(v) and v > 0), "a positive finite number or null", layer, where)
            field("contiguous", lambda v: isinstance(v, bool), "true or false", layer, where)
    return config, imports


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_pool(value: Any) -> bool:
    return (isinstance(value, list) and 1 <= len(value) <= MAX_POOL
            and all(isinstance(name, str) and 0 < len(name) <= 200 for name in value))


def _check_arrays(arrays_path: Path, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Check the arrays' names, shapes and dtypes against the architecture in ``config``.

    ``layers.i.weight`` is ``(sizes[i+1], sizes[i])``, ``layers.i.bias`` is
    ``(sizes[i+1],)``, and a phase-1 network has ``activations.i.logits`` of shape
    ``(sizes[i+1], len(pool))`` for every hidden layer.
    """
    sizes = config["sizes"]
    needed: dict[str, tuple[int, ...]] = {}
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        needed[f"layers.{i}.weight"] = (d_out, d_in)
        needed[f"layers.{i}.bias"] = (d_out,)
    if config["kind"] == "smartmixed":
        for i, width in enumerate(sizes[1:-1]):
            needed[f"activations.{i}.logits"] = (width, len(config["pool"]))
    missing = sorted(set(needed) - set(arrays))
    unexpected = sorted(set(arrays) - set(needed))
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"] if missing else []) + (
            [f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}"] if unexpected else [])
        raise CheckpointError(f"{arrays_path}: the arrays do not match the network in {MODEL_JSON}: {'; '.join(parts)}")
    for name, shape in needed.items():
        array = arrays[name]
        if array.shape != shape:
            raise CheckpointError(f"{arrays_path}: array {name!r} has shape {array.shape}, the network needs {shape}")
        if array.dtype.kind != "f":
            raise CheckpointError(f"{arrays_path}: array {name!r} has dtype {array.dtype}, parameters are floating point")
