"""The hidden-layer architectures evaluated in the SmartMixed paper, by ID.

IDs 1-17 follow the published list. IDs 10-17 extend ID 9 one layer at a time.
The published code also defines 768-512-512-256 under ID 11, but a later entry
with the same ID overwrites it there, so that network was never run; it is
offered here under its own ID, 18.
"""

from __future__ import annotations

import re

__all__ = ["ARCHITECTURES", "ARCH_NOTES", "get_architecture", "parse_hidden"]

_NINE = (768, 512, 512, 256, 256)

ARCHITECTURES: dict[int, tuple[int, ...]] = {
    1: (512,),
    2: (512, 256, 128),
    3: (512, 256, 128, 64),
    4: (256, 128),
    5: (512, 256, 256, 128),
    6: (768,),
    7: (768, 512),
    8: (768, 512, 512),
    9: _NINE,
    10: _NINE + (128,),
    11: _NINE + (128, 128),
    12: _NINE + (128, 128, 64),
    13: _NINE + (128, 128, 64, 64),
    14: _NINE + (128, 128, 64, 64, 32),
    15: _NINE + (128, 128, 64, 64, 32, 32),
    16: _NINE + (128, 128, 64, 64, 32, 32, 16),
    17: _NINE + (128, 128, 64, 64, 32, 32, 16, 16),
    18: (768, 512, 512, 256),
}

ARCH_NOTES = {18: "defined as ID 11 in the published code, where a later ID 11 overwrites it (never run there)"}


def get_architecture(arch_id: int) -> tuple[int, ...]:
    """Hidden widths of architecture ``arch_id``.

    Raises:
        ValueError: no such ID.
    """
    try:
        return ARCHITECTURES[int(arch_id)]
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"unknown architecture ID {arch_id!r}; known IDs are 1-{max(ARCHITECTURES)} (see `smartmixed archs`)") from None


def parse_hidden(text: str) -> tuple[int, ...]:
    """``"512,256,128"`` (or ``512-256-128``) -> (512, 256, 128).

    Raises:
        ValueError: empty, non-integer or non-positive widths.
    """
    parts = [p.strip() for p in re.split(r"[,-]", str(text))]
    if not all(p.isdigit() for p in parts) or any(int(p) < 1 for p in parts):
        raise ValueError(f"hidden sizes must be comma-separated positive integers, got {text!r}")
    return tuple(int(p) for p in parts)
