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
    """CI installs each install the README offers (NumPy only, and with the fast extra) and runs its test command."""
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev,fast]"' in readme and 'pip install -e ".[dev]"' in readme
    installs = re.findall(r'^install (\S+) "([\w,]+)"$', ci, flags=re.M)
    suites = re.findall(r'^suite (\S+) "([\w,]+)"', ci, flags=re.M)
    assert installs and sorted(installs) == sorted(suites), f"each install gets its suite: {installs} {suites}"
    extras = [set(e.split(",")) for _, e in suites]
    assert {"dev"} in extras, f"CI does not run the NumPy-only install: {suites}"
    assert any({"dev", "fast"} <= e for e in extras), f"CI does not run the full install: {suites}"
    assert 'pip install --quiet -e ".[${extras}]"' in ci
    assert "\npytest\n" in readme and "python -m pytest" in ci
