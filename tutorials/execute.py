"""Run tutorial notebooks from their sources (``NN_name.py``) in full mode; save the paired ``.ipynb``.

    python tutorials/execute.py          # every notebook
    python tutorials/execute.py 03 05    # only those whose names start so

Each script is read with jupytext and run top to bottom in a fresh ``python3`` kernel,
in this folder, with ``SMARTMIXED_QUICK`` and ``MPLBACKEND`` unset (full sizes; the
inline backend captures the figures) and ``TMPDIR`` in a scratch folder that is removed
afterwards. The result, with its outputs, replaces ``NN_name.ipynb``. Quick mode is what
the tests run (``tests/test_notebooks.py``); it is never saved.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
SOURCES = sorted(p for p in HERE.glob("[0-9][0-9]_*.py"))


def execute(source: Path, timeout: int = 900) -> nbformat.NotebookNode:
    """The notebook of ``source``, executed in full mode, with stable cell ids."""
    nb = jupytext.read(source)
    for index, cell in enumerate(nb.cells):
        cell.id = f"{source.stem[:2]}-{index:02d}"  # not jupytext's random ids: a rerun keeps them
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "SMARTMIXED_QUICK")}
    with tempfile.TemporaryDirectory() as scratch:  # the run folders the notebooks write go here
        env["TMPDIR"] = scratch
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                                resources={"metadata": {"path": str(HERE)}})
        client.execute(env=env)  # raises CellExecutionError at the first failing cell
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("only", nargs="*", help="execute only notebooks whose names start with these (e.g. 03)")
    args = parser.parse_args(argv)
    sources = [p for p in SOURCES if not args.only or p.stem.startswith(tuple(args.only))]
    if not sources:
        parser.error(f"no notebook matches {args.only}; known: {', '.join(p.stem for p in SOURCES)}")
    for source in sources:
        started = time.perf_counter()
        nb = execute(source)
        nbformat.validate(nb)
        jupytext.write(nb, source.with_suffix(".ipynb"))  # keeps the pairing, drops the .py-only metadata
        print(f"{source.stem}.ipynb: executed in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
