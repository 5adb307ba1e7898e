"""Class predictions for a user's own data: IDX files, ``.npy`` arrays, PNG and JPEG images.

:func:`predict` takes a trained network (a run folder or an :class:`MLP`) and a list of
files or folders (a folder stands for the files directly inside it, in name order)
and returns, per example, the file, its index in the file, the predicted class and
the softmax probability of every class. :func:`predictions_csv` writes them as CSV.

What each file is, is decided by its first bytes, not its name:

* **IDX** (raw or gzip-compressed, :func:`smartmixed_np.data.idx.read_idx`) and
  **.npy** (``np.load(..., allow_pickle=False)``, its header checked against the
  file's size first): arrays of shape ``(N, D)``, ``(N, H, W)`` or one image
  ``(H, W)``, with ``H * W = D`` the network's input width (784 = 28 x 28 for
  MNIST). Integers are pixel values in 0..255 and are divided by 255, as the
  dataset was; floating-point values must already lie in [0, 1].
* **PNG** and **JPEG** images of any size, through Pillow: turned upright by
  their EXIF orientation, flattened onto white where they are transparent (as a
  viewer shows them), converted to 8-bit grayscale, resized to ``H x W`` (box
  filter when shrinking, bilinear when enlarging; a non-square image is stretched:
  crop it square first for best results) and divided by 255. The network then
  sees what it saw in training: 256 grey levels in [0, 1].

``invert=True`` (``--invert``) replaces every value ``x`` by ``1 - x``: MNIST digits
are white on black, a digit written on paper is dark on light.

A file that cannot be read (missing, a folder's non-data file, corrupt, the wrong
shape) is skipped with a one-line reason (``on_skip`` is told at once, and
:attr:`Predictions.skipped` keeps the list); the other files go on.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..backend import to_host
from ..data.idx import IDX_DTYPES, read_idx
from ..errors import UserError
from ..fileio import NpyHeaderError, open_regular_file, read_npy_header, write_text
from ..nn.mlp import MLP

__all__ = ["InputError", "Predictions", "predict", "read_inputs", "expand_inputs", "predictions_csv", "write_predictions"]

#: The magic numbers that decide a file's format.
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
_NPY = b"\x93NUMPY"
_GZIP = b"\x1f\x8b"
_WHAT = "an IDX, .npy, PNG or JPEG file"
#: Rows per forward pass (bounds the memory of a large IDX or .npy file's pass).
_BATCH = 4096


class InputError(UserError, ValueError):
    """One input file cannot be used; the message is the reason (the caller names the file)."""


@dataclass
class Predictions:
    """What :func:`predict` returns; ``M`` examples from the files that could be read.

    Attributes:
        files: (M,) the file each example came from, as given (or as found in a folder).
        indices: (M,) int64, the example's index within its file (0 for an image).
        classes: (M,) int64, the predicted class (the argmax of the logits).
        probabilities: (M, C) float64, the softmax of the logits.
        skipped: ``(file, reason)`` for each file that could not be read.
    """

    files: list[str] = field(default_factory=list)
    indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    skipped: list[tuple[str, str]] = field(default_factory=list)


# --------------------------------------------------------------------------- readers
def _reason(error: BaseException, path: Path | None = None) -> str:
    """``error`` on one line, without the file's name when the message starts with it."""
    text = " ".join(str(error).split()) or type(error).__name__
    if path is not None and text.startswith(f"{path}: "):
        text = text[len(f"{path}: "):]
    return text


def _image_shape(input_dim: int) -> tuple[int, int] | None:
    """``(side, side)`` when ``input_dim`` is a square number of pixels, else None (not an image network)."""
    side = math.isqrt(input_dim)
    return (side, side) if side * side == input_dim else None


def _as_pixels(array: np.ndarray, input_dim: int) -> np.ndarray:
    """A read array as the network's input: (N, D) float32 in [0, 1].

    Args:
        array: ``(N, D)``, ``(D,)``, ``(N, H, W)`` or ``(H, W)``; integers in 0..255
            (divided by 255) or floats in [0, 1].
        input_dim: ``D``.
    """
    shape = _image_shape(input_dim)
    expected = f"(N, {input_dim})" + (f", (N, {shape[0]}, {shape[1]}) or ({shape[0]}, {shape[1]})" if shape else "")
    if array.dtype.kind not in "uif" or array.dtype.names is not None:
        raise InputError(f"holds {array.dtype} values, not pixel numbers")
    if array.ndim >= 1 and array.shape[-1] == input_dim and array.ndim <= 2:
        flat = array.reshape(-1, input_dim)
    elif shape is not None and array.ndim == 2 and array.shape == shape:
        flat = array.reshape(1, input_dim)
    elif shape is not None and array.ndim == 3 and array.shape[1:] == shape:
        flat = array.reshape(array.shape[0], input_dim)
    else:
        raise InputError(f"an array of shape {tuple(array.shape)}; the network takes {expected}")
    if flat.shape[0] == 0:
        raise InputError("holds no examples")
    if array.dtype.kind in "ui":
        if flat.min() < 0 or flat.max() > 255:
            raise InputError(f"integer values from {flat.min()} to {flat.max()}; pixel values lie in 0..255")
        return flat.astype(np.float32) / np.float32(255)
    flat = flat.astype(np.float32)
    if not np.isfinite(flat).all():
        raise InputError("holds NaN or infinite values")
    low, high = float(flat.min()), float(flat.max())
    if low < 0 or high > 1:
        raise InputError(f"values from {low:g} to {high:g}; floating-point pixels must lie in [0, 1] (pixel / 255, as the dataset was)")
    return flat


def _read_npy(file: Any, size: int) -> np.ndarray:
    """An ``.npy`` array, after checking that its header's claim fits in the file (no pickle)."""
    try:
        shape, _, dtype = read_npy_header(file)
    except NpyHeaderError as err:
        raise InputError(str(err)) from None
    if dtype.hasobject:
        raise InputError("holds Python objects (pickle); refusing to load it")
    claimed = math.prod(shape) * dtype.itemsize
    if file.tell() + claimed > size:
        raise InputError(f"truncated (.npy header claims {claimed} bytes of data, the file holds {size - file.tell()})")
    file.seek(0)
    try:
        return np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"not a readable .npy file ({_reason(err)[:120]})") from None


def _read_image(file: Any, shape: tuple[int, int]) -> np.ndarray:
    """A PNG or JPEG as ``shape`` uint8 grayscale (see the module docstring for the steps)."""
    from PIL import Image, ImageOps

    with Image.open(file) as opened:
        image = ImageOps.exif_transpose(opened) or opened
        if image.mode in ("RGBA", "LA", "PA", "P", "RGBa", "La") and (image.mode != "P" or "transparency" in image.info):
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        if image.mode.startswith("I;16") or image.mode == "I":  # 16-bit grayscale: 65535 is white
            levels = np.asarray(image, dtype=np.float64)
            image = Image.fromarray(np.clip(np.rint(levels / 257), 0, 255).astype(np.uint8), "L")
        gray = image.convert("L")
        if gray.size != (shape[1], shape[0]):
            shrinking = gray.size[0] >= shape[1] and gray.size[1] >= shape[0]
            gray = gray.resize((shape[1], shape[0]), Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR)
        return np.asarray(gray, dtype=np.uint8).copy()


def read_inputs(path: str | os.PathLike, input_dim: int, *, invert: bool = False) -> np.ndarray:
    """The examples in one file as the network's input, (N, input_dim) float32 in [0, 1].

    Args:
        path: an IDX, ``.npy``, PNG or JPEG file (told apart by content).
        input_dim: the network's input width ``D``; images need ``D`` a square (H = W).
        invert: replace each value ``x`` by ``1 - x`` (dark digits on a light background).

    Raises:
        InputError: the reason, in one line, without the file's name.
    """
    path = Path(path)
    try:
        pixels = _read_pixels(path, input_dim)
    except InputError as err:
        raise InputError(_reason(err, path)) from None
    return np.float32(1) - pixels if invert else pixels


def _read_pixels(path: Path, input_dim: int) -> np.ndarray:
    """:func:`read_inputs` without ``invert``; its reasons may start with the file's name."""
    with open_regular_file(path, _WHAT, InputError) as (file, size):
        head = file.read(16)
        file.seek(0)
        if not head:
            raise InputError("an empty file")
        if head.startswith(_PNG) or head.startswith(_JPEG):
            shape = _image_shape(input_dim)
            if shape is None:
                raise InputError(f"an image, but the network's input ({input_dim} values) is not a square image")
            try:
                array = _read_image(file, shape)
            except MemoryError:
                raise
            except Exception as err:  # noqa: BLE001 - Pillow's decoders raise OSError, SyntaxError, ValueError, ...
                raise InputError(f"not a readable {'PNG' if head.startswith(_PNG) else 'JPEG'} image ({_reason(err, path)[:120]})") from None
        elif head.startswith(_NPY):
            array = _read_npy(file, size)
        elif head.startswith(_GZIP) or (len(head) >= 4 and head[:2] == b"\0\0" and head[2] in IDX_DTYPES):
            array = None  # read_idx opens the file itself
        else:
            raise InputError(f"not {_WHAT} (by its first bytes)")
    if array is None:
        try:
            array = read_idx(path)
        except UserError as err:
            raise InputError(_reason(err, path)) from None
    return _as_pixels(array, input_dim)


def expand_inputs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Each path, with a folder replaced by the files directly inside it (names sorted, hidden ones left out)."""
    expanded: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            expanded.extend(sorted(p for p in path.iterdir() if not p.name.startswith(".") and not p.is_dir()))
        else:
            expanded.append(path)
    return expanded


# --------------------------------------------------------------------------- predicting
def _softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, shifted by the row maximum (no overflow)."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def predict(
    source: MLP | str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    *,
    invert: bool = False,
    on_skip: Callable[[str, str], None] | None = None,
    device: Any = "cpu",
) -> Predictions:
    """Predicted classes and probabilities for every example in ``inputs``.

    Args:
        source: a trained :class:`MLP`, or a finished run folder (its kept model,
            read by :func:`smartmixed_np.experiments.export.load_kept_model`).
        inputs: files and folders (see :func:`expand_inputs` and :func:`read_inputs`).
        invert: see :func:`read_inputs`.
        on_skip: called ``on_skip(file, reason)`` for each file skipped, when it is.
        device: where a run folder's model is loaded (``source`` an MLP keeps its own).

    Returns:
        :class:`Predictions` (the examples in input order, then the skipped files).

    Raises:
        UserError: the run folder or its model cannot be loaded (files are skipped, never raised).
    """
    if isinstance(source, MLP):
        model = source
    else:
        from .export import load_kept_model

        model, _ = load_kept_model(source, device=device)
    result = Predictions(probabilities=np.zeros((0, model.sizes[-1])))
    files, indices, classes, probabilities = [], [], [], []

    def skip(path: Path, reason: str) -> None:
        result.skipped.append((str(path), reason))
        if on_skip is not None:
            on_skip(str(path), reason)

    paths: list[Path] = []
    for item in inputs:
        found = expand_inputs([item])
        if not found:
            skip(Path(item), "a folder with no files in it")
        paths.extend(found)
    for path in paths:
        try:
            x = read_inputs(path, model.sizes[0], invert=invert)
        except InputError as err:
            skip(path, str(err))
            continue
        for start in range(0, len(x), _BATCH):
            logits = to_host(model.forward(model.backend.asarray(x[start:start + _BATCH], dtype=model.dtype)))
            model.clear_tape()
            classes.append(logits.argmax(axis=1).astype(np.int64))
            probabilities.append(_softmax(logits))
        files.extend([str(path)] * len(x))
        indices.append(np.arange(len(x), dtype=np.int64))
    if files:
        result.files = files
        result.indices = np.concatenate(indices)
        result.classes = np.concatenate(classes)
        result.probabilities = np.concatenate(probabilities)
    return result


def predictions_csv(predictions: Predictions) -> str:
    """CSV text: ``file,index,predicted,p0,...,p{C-1}`` (probabilities to 6 decimals), ``\\n`` line ends."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    num_classes = predictions.probabilities.shape[1]
    writer.writerow(["file", "index", "predicted", *(f"p{c}" for c in range(num_classes))])
    for row, (name, index, predicted) in enumerate(zip(predictions.files, predictions.indices, predictions.classes)):
        writer.writerow([name, int(index), int(predicted), *(f"{p:.6f}" for p in predictions.probabilities[row])])
    return buffer.getvalue()


def write_predictions(predictions: Predictions, out: str | os.PathLike) -> Path:
    """Write :func:`predictions_csv` to ``out`` atomically."""
    return write_text(out, predictions_csv(predictions))
