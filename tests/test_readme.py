"""The README's API tour runs as written, and its commands match .ci/run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_api_tour_runs():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "the README has no Python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    # CI installs the README's extras, plus the optional ones whose tests it runs (dask).
    assert 'pip install -e ".[dev,fast]"' in readme and re.search(r'pip install --quiet -e "\.\[dev(,\w+)*,fast(,\w+)*\]"', ci)
    assert "\npytest\n" in readme and "python -m pytest" in ci
