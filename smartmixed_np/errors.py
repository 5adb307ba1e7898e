"""Exceptions that mean "the user gave something wrong", as opposed to a bug.

The command-line tool prints these as one line on stderr and exits with status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["UserError", "DataError", "CheckpointError"]


class UserError(Exception):
    """Base class for errors caused by user input (options, files, names)."""


class DataError(UserError, ValueError):
    """A data file or dataset request is wrong: corrupt, truncated, missing, unknown."""


class CheckpointError(UserError, ValueError):
    """A checkpoint or saved model cannot be loaded: corrupt, incomplete, or unsafe."""
