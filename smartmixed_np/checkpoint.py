"""Saving and loading arrays safely: models and training checkpoints.

Format: a NumPy ``.npz`` archive of plain numeric arrays, plus one ``uint8`` array
``__meta__`` holding UTF-8 JSON (options, random-generator states, history). It
is always loaded with ``allow_pickle=False``: a file that contains pickled
objects is refused, so opening a checkpoint can never run code. Each array is
checked against its CRC while loading, so a corrupt file is an error, not
silently wrong numbers. Files are written atomically (see :mod:`smartmixed_np.fileio`):
a process killed while writing leaves the previous file intact.

A saved model is two files: ``model.npz`` (the parameters) and ``model.json``
(the architecture, each neuron's activation, the options), readable by a person.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError
from .fileio import atomic_writer, write_json

__all__ = ["save_arrays", "load_arrays", "save_model", "load_model", "MODEL_ARRAYS", "MODEL_JSON"]

META_KEY = "__meta__"
MODEL_ARRAYS = "model.npz"
MODEL_JSON = "model.json"


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
        ``(arrays, meta)``.

    Raises:
        CheckpointError: missing, truncated, corrupt, not an npz archive, holding
            pickled objects, or without valid metadata; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    with open(path, "rb") as file:
        if file.read(4) != b"PK\x03\x04":  # an .npz is a zip archive
            raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt: not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except ValueError as err:
        if "pickle" in str(err):
            raise CheckpointError(f"{path}: contains pickled Python objects; refusing to load it") from None
        raise CheckpointError(f"{path}: corrupt checkpoint ({err})") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, zipfile.LargeZipFile) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt: {err})") from None
    if META_KEY not in arrays:
        raise CheckpointError(f"{path}: not a smartmixed_np checkpoint (no metadata)")
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: corrupt metadata ({err})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: corrupt metadata (not a JSON object)")
    for name, array in arrays.items():
        if array.dtype.kind not in "fiub":
            raise CheckpointError(f"{path}: array {name!r} has unsupported dtype {array.dtype}")
    return arrays, meta


def save_model(folder: str | Path, model: Any, extra: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Save ``model`` as ``folder/model.npz`` and ``folder/model.json``.

    ``model.json`` holds :meth:`MLP.config` plus each neuron's activation name (in
    the original neuron order) and anything in ``extra``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    description = {
        "format": "smartmixed_np.model/1",
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

    Raises:
        CheckpointError: missing files, a corrupt or unsafe archive, or arrays whose
            names or shapes do not match the architecture in ``model.json``.
    """
    from .mlp import MLP

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    arrays_path = folder / MODEL_ARRAYS if path.is_dir() else path
    json_path = folder / MODEL_JSON
    if not json_path.is_file():
        raise CheckpointError(f"{json_path}: no such file (a saved model needs model.json beside model.npz)")
    try:
        description = json.loads(json_path.read_text(encoding="utf-8"))
        config = description["config"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{json_path}: corrupt model description ({err!r})") from None
    arrays, _ = load_arrays(arrays_path)
    try:
        model = MLP.from_config(config, device=device)
        model.load_state_dict(arrays)
    except ValueError as err:
        raise CheckpointError(f"{arrays_path}: {err}") from None
    return model
