"""The tutorial notebooks: each executes cleanly in quick mode, and the committed ones read well.

Sources: each notebook's source is a jupytext percent script ``tutorials/NN_name.py``,
paired with ``tutorials/NN_name.ipynb`` (``formats: ipynb,py:percent``), which holds the
same cells with the outputs of a full run. Both hold exactly the same cells, so they
cannot drift apart. After editing a script, rebuild with ``python tutorials/execute.py NN``
(see ``tutorials/README.md``).

Execution: every script in ``tutorials/`` is read with jupytext and runs top to bottom
in a fresh ``python3`` kernel on this interpreter, with ``SMARTMIXED_QUICK=1`` (small sizes, seconds each),
in a temporary copy of the folder and with ``TMPDIR`` pointing into pytest's temporary
directory, so that the run folders the notebooks write vanish with it. A cell that
raises fails the test (nbclient's ``CellExecutionError`` names the cell), and so does
an error that only shows in a cell's output (a figure that fails to render, say).

Committed notebooks: every code cell carries the output of one top-to-bottom run in
full mode.

No saved output names a path of the machine that produced it (its checkout, home,
temporary or data folders): neither the committed notebooks, nor the notebooks as
executed here (which guards the code that prints), nor the committed benchmark
results in ``benchmarks/results/``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
TUTORIALS = REPO / "tutorials"
BENCHMARK_RESULTS = sorted((REPO / "benchmarks" / "results").glob("*.json"))
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
SOURCES = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))  # not execute.py
PAIRING = "ipynb,py:percent"
EXPECTED = [
    "01_activations",
    "02_backprop_by_hand",
    "03_gumbel_straight_through",
    "04_smartmixed_end_to_end",
    "05_phase2_fast",
    "06_gpu_cupy",
    "07_reproduce_mnist",
    "08_straight_through_quality",
]
CELL_TIMEOUT = 300  # seconds per cell; quick mode needs a few
REBUILD = "rebuild with `python tutorials/execute.py NN` (tutorials/README.md)"


@dataclass(frozen=True)
class KernelSetup:
    jupyter_path: str  # a folder whose kernels/python3 runs this interpreter
    env: dict  # the kernel's environment, before per-test additions


@pytest.fixture(scope="session")
def kernel_setup(tmp_path_factory) -> KernelSetup:
    """A ``python3`` kernelspec for *this* interpreter, in a private folder.

    The folder goes first on ``JUPYTER_PATH``, so a ``python3`` spec installed elsewhere
    (for another Python, without this package) is never picked up.
    """
    from ipykernel.kernelspec import install
    from jupyter_client.kernelspec import KernelSpecManager

    prefix = tmp_path_factory.mktemp("jupyter-prefix")
    install(kernel_name="python3", prefix=str(prefix))
    jupyter_path = str(prefix / "share" / "jupyter")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", jupyter_path)
        spec = KernelSpecManager().get_kernel_spec("python3")
    assert Path(spec.argv[0]).resolve() == Path(sys.executable).resolve(), spec.argv

    env = dict(os.environ)
    env["JUPYTER_PATH"] = jupyter_path
    env["SMARTMIXED_QUICK"] = "1"
    # With MPLBACKEND set (CI sets Agg) ipykernel would not install its inline backend,
    # and plt.show() would warn instead of producing figures.
    env.pop("MPLBACKEND", None)
    return KernelSetup(jupyter_path, env)


def _execute(path: Path, setup: KernelSetup, tmp_path: Path, monkeypatch, **env_changes) -> nbformat.NotebookNode:
    """Run a copy of the source of notebook ``path`` (its ``.py``) in quick mode; return it with its outputs."""
    monkeypatch.setenv("JUPYTER_PATH", setup.jupyter_path)  # for the kernelspec lookup in this process
    work = tmp_path / "tutorials"
    shutil.copytree(TUTORIALS, work, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**setup.env, "TMPDIR": str(scratch)}
    for name, value in env_changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    nb = jupytext.read(work / f"{path.stem}.py")  # the source, not the saved notebook
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", record_timing=False,
        resources={"metadata": {"path": str(work)}},
    )
    client.execute(env=env)  # raises CellExecutionError at the first failing cell
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            assert output.output_type != "error", f"{path.name} cell {index}: {output.ename}: {output.evalue}"
    return nb


def _machine_paths() -> list[str]:
    """Fragments of absolute paths that must not appear in a saved output.

    The usual roots of user, scratch and CI folders, and this machine's own: the
    checkout, the home and temporary folders, and the data folder the tests read.
    """
    fragments = {"/work/", "/root/", "/home/", "/Users/", "/tmp/", "/var/folders/", "/private/var/", "\\Users\\"}
    for folder in (REPO, Path.home(), Path(tempfile.gettempdir()), os.environ.get("SMARTMIXED_DATA")):
        if folder and len(Path(folder).resolve().parts) > 1:  # never "/" itself
            fragments.add(str(Path(folder).resolve()))
            fragments.add(str(folder))
    return sorted(fragments)


def _output_texts(nb: nbformat.NotebookNode):
    """(cell index, text) of every textual output: streams, rich text data, errors."""
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if "text" in output:
                yield index, output["text"]
            for mime, value in output.get("data", {}).items():
                if mime.startswith("text/") or mime.endswith("json"):
                    yield index, value if isinstance(value, str) else json.dumps(value)
            if output.get("output_type") == "error":
                yield index, "\n".join([output.get("ename", ""), output.get("evalue", ""), *output.get("traceback", [])])


def _paths_named(texts, ignore_lines_starting: tuple[str, ...] = ()) -> list[str]:
    """'where: excerpt' for each text in ``texts`` ((where, text) pairs) that names a machine path."""
    found = []
    fragments = _machine_paths()
    for where, text in texts:
        for line in str(text).splitlines():
            if line.startswith(ignore_lines_starting):
                continue
            hits = [f for f in fragments if f in line]
            if hits:
                found.append(f"{where}: {hits[0]!r} in {line.strip()[:160]!r}")
    return found


def _text(nb: nbformat.NotebookNode) -> str:
    """All stream output of a notebook, concatenated."""
    return "".join(
        output.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream"
    )


def _images(nb: nbformat.NotebookNode) -> int:
    """Number of PNG figures among a notebook's outputs."""
    return sum(
        "image/png" in output.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


def test_the_eight_tutorials_are_present():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED
    assert [p.stem for p in SOURCES] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_in_quick_mode(path, kernel_setup, tmp_path, monkeypatch):
    nb = _execute(path, kernel_setup, tmp_path, monkeypatch)
    assert "mode: quick" in _text(nb)
    # The inline backend captured the figures: as many as the committed full run shows.
    assert _images(nb) == _images(nbformat.read(path, as_version=4))
    # What the cells print names no folder of this machine (run folders, data, checkout).
    # Only notebook 7's "MNIST is not available" line may: it reports where the
    # learner's own machine was searched.
    texts = ((f"{path.name} cell {i}", text) for i, text in _output_texts(nb))
    assert not _paths_named(texts, ("MNIST is not available here",))


def test_mnist_notebook_falls_back_to_synth_digits_without_mnist(kernel_setup, tmp_path, monkeypatch):
    """With no data folder (and no downloads in quick mode) it says so and still runs."""
    nb = _execute(TUTORIALS / "07_reproduce_mnist.py", kernel_setup, tmp_path, monkeypatch, SMARTMIXED_DATA=None)
    text = _text(nb)
    assert "MNIST is not available here" in text
    assert "falling back to synth-digits" in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_carries_the_outputs_of_a_full_run(path):
    nb = nbformat.read(path, as_version=4)
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code_cells, f"{path.name} has no code"
    counts = [cell.execution_count for cell in code_cells]
    assert counts == list(range(1, len(code_cells) + 1)), f"{path.name}: not executed top to bottom ({counts}); {REBUILD}"
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            assert output.output_type != "error", f"{path.name} cell {index} shows an error; {REBUILD}"
    first_output = "".join(o.get("text", "") for o in code_cells[0].outputs)
    assert "mode: full" in first_output, f"{path.name}: outputs are not from a full run; {REBUILD}"


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source) for cell in nb.cells]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_script_and_its_notebook_hold_the_same_cells(path):
    source = path.with_suffix(".py")
    script = jupytext.read(source)
    committed = nbformat.read(path, as_version=4)
    assert _cells(script) == _cells(committed), (
        f"{source.name} and {path.name} differ; {REBUILD}, or `jupytext --sync tutorials/{source.name}`"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_script_is_paired_with_its_notebook_in_percent_format(path):
    source = path.with_suffix(".py")
    script = jupytext.read(source)
    assert script.metadata.get("jupytext", {}).get("formats") == PAIRING, f"{source.name}: not paired ({PAIRING})"
    assert script.metadata["jupytext"]["text_representation"]["format_name"] == "percent", source.name
    committed = nbformat.read(path, as_version=4)
    assert committed.metadata.get("jupytext", {}).get("formats") == PAIRING, f"{path.name}: not paired ({PAIRING})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_outputs_name_no_path_of_the_machine_that_ran_them(path):
    nb = nbformat.read(path, as_version=4)
    found = _paths_named((f"{path.name} cell {i}", text) for i, text in _output_texts(nb))
    assert not found, f"{found[:3]}; fix what prints it, then {REBUILD}"


def _strings(value, where: str):
    """(where, string) for every key and string value of parsed JSON."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield where, key
            yield from _strings(item, f"{where}/{key}")
    elif isinstance(value, list):
        for k, item in enumerate(value):
            yield from _strings(item, f"{where}[{k}]")
    elif isinstance(value, str):
        yield where, value


@pytest.mark.parametrize("path", BENCHMARK_RESULTS, ids=lambda p: p.name)
def test_committed_benchmark_results_name_no_path_of_the_machine(path):
    results = json.loads(path.read_text(encoding="utf-8"))  # and they are valid JSON
    found = _paths_named(_strings(results, path.name))
    assert not found, found[:3]


def test_the_path_check_recognises_paths_of_this_machine():
    """The checker itself: paths of this checkout and of scratch folders are caught, prose is not."""
    texts = [("a", f"run folder {REPO / 'runs' / 'x'}"), ("b", "saved to /tmp/pytest-of-me/t0/run"),
             ("c", "done: test accuracy 0.95; run folder synth-digits-smartmixed"), ("d", "loss 1/2 of 3/4")]
    assert [hit.split(":")[0] for hit in _paths_named(texts)] == ["a", "b"]
    assert BENCHMARK_RESULTS, "benchmarks/results/ holds no JSON to check"
