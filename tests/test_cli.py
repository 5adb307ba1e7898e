"""The smartmixed command: help, listings, user errors, evaluate, demo."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from smartmixed_np.cli import main


def run(*argv):
    return subprocess.run([sys.executable, "-m", "smartmixed_np", *argv], capture_output=True, text=True, timeout=300)


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for command in ["train", "evaluate", "demo", "archs", "activations", "bench"]:
        assert command in text
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    train_help = capsys.readouterr().out
    for option in ["--transition-epoch", "--phase2-init", "--arch", "--hidden", "--resume", "--data-dir", "--train-limit", "--device"]:
        assert option in train_help


def test_archs_lists_the_published_architectures(capsys):
    assert main(["archs"]) == 0
    out = capsys.readouterr().out
    assert " 2       3  512-256-128" in out and "768-512-512-256-256-128-128-64-64-32-32-16-16" in out
    assert "18" in out and "overwrites" in out


def test_activations_lists_the_registry(capsys):
    assert main(["activations"]) == 0
    out = capsys.readouterr().out
    assert "selu" in out and "default pool" in out and "gelu" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--epochs", "zero"], "--epochs: expected a positive integer"),
        (["train", "--dataset", "cifar"], "invalid choice: 'cifar'"),
        (["train", "--model", "swish", "--dataset", "synth-digits"], "unknown activation 'swish'"),
        (["train", "--dataset", "synth-digits", "--epochs", "3"], "--transition-epoch (50) must lie in [1, --epochs (3)]"),
        (["train", "--arch", "42", "--dataset", "synth-digits"], "unknown architecture ID 42"),
        (["train", "--hidden", "512,abc"], "hidden sizes must be comma-separated positive integers"),
        (["train", "--arch", "2", "--hidden", "64"], "not allowed with argument"),
        (["train", "--dataset", "mnist", "--data-dir", "/no/such/folder", "--epochs", "1", "--transition-epoch", "1"], "/no/such/folder"),
        (["train", "--device", "gpu", "--dataset", "synth-digits"], "smartmixed_np[gpu]"),
        (["train", "--resume", "/no/such/run"], "no such run folder"),
        (["evaluate", "/no/such/run"], "no such file"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "required"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, message):
    if "smartmixed_np[gpu]" in message:
        pytest.importorskip("numpy")
        try:
            import cupy  # noqa: F401

            pytest.skip("CuPy is installed here")
        except ImportError:
            pass
    result = run(*argv)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0] and "Traceback" not in result.stderr


def test_demo_then_evaluate_then_corrupt(tmp_path):
    out = tmp_path / "demo"
    result = run("demo", "--quick", "--quiet", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "smartmixed" in result.stdout and "relu" in result.stdout
    assert (out / "comparison.png").is_file()
    for model in ("smartmixed", "relu"):
        assert (out / model / "metrics.json").is_file()

    evaluated = run("evaluate", str(out / "smartmixed"))
    assert evaluated.returncode == 0, evaluated.stderr
    scores = json.loads(evaluated.stdout)
    metrics = json.loads((out / "smartmixed" / "metrics.json").read_text())
    assert scores["test_accuracy"] == metrics["test"]["accuracy"]

    (out / "relu" / "model.npz").write_bytes(b"garbage")
    broken = run("evaluate", str(out / "relu"))
    assert broken.returncode == 2 and "model.npz" in broken.stderr and "Traceback" not in broken.stderr

    np.savez(out / "relu" / "model.npz", __meta__=np.frombuffer(b"{}", dtype=np.uint8), w=np.array([object()], dtype=object))
    hostile = run("evaluate", str(out / "relu"))
    assert hostile.returncode == 2 and "pickled" in hostile.stderr
