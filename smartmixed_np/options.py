"""Argparse types for bounded command-line values, shared by every command that parses options.

ASCII decimal text only (no ``1_000``, no ``nan``, no unicode digits), within stated bounds,
with a one-line message that shows the user's value, shortened: the parsers of
:mod:`smartmixed_np.cli` and of the experiment side's own subcommands (``gradcheck``,
``study-estimators``) take their numbers from here.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Callable

__all__ = ["INT_TEXT", "FLOAT_TEXT", "show", "integer", "real"]

INT_TEXT = re.compile(r"\+?[0-9]{1,30}")
FLOAT_TEXT = re.compile(r"[+-]?(?:[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30})(?:[eE][+-]?[0-9]{1,3})?")


def show(text: str, limit: int = 40) -> str:
    """``repr`` of a user's value, shortened; control and undecodable characters escaped."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def integer(lowest: int, highest: int, description: str | None = None) -> Callable[[str], int]:
    """An argparse type: an ASCII decimal integer in ``[lowest, highest]``."""
    description = description or f"an integer from {lowest} to {highest}"

    def parse(text: str) -> int:
        stripped = text.strip()
        if not INT_TEXT.fullmatch(stripped) or not lowest <= int(stripped) <= highest:
            raise argparse.ArgumentTypeError(f"expected {description}, got {show(text)}")
        return int(stripped)

    return parse


def real(lowest: float, highest: float, description: str | None = None, *, none: bool = False) -> Callable[[str], float | None]:
    """An argparse type: an ASCII decimal number in ``[lowest, highest]`` (finite).

    With ``none``, the words ``none``/``off`` and ``0`` mean "disabled" (None).
    """
    description = description or f"a number from {lowest:g} to {highest:g}" + (", or none" if none else "")

    def parse(text: str) -> float | None:
        stripped = text.strip()
        if none and stripped.lower() in ("none", "off"):
            return None
        if FLOAT_TEXT.fullmatch(stripped):
            value = float(stripped)
            if none and value == 0:
                return None
            if math.isfinite(value) and lowest <= value <= highest:
                return value
        raise argparse.ArgumentTypeError(f"expected {description}, got {show(text)}")

    return parse
