"""The smartmixed command: help, listings, user errors, resume, evaluate, demo, hostile options.

Every test runs in its own temporary folder (``_in_tmp_path``): nothing is written
into the checkout, not even the default ``runs/`` folder of a run that fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import smartmixed_np.core.activations as activations
import smartmixed_np.experiments.plugins as plugins
from smartmixed_np import cli
from smartmixed_np.cli import main, plain_formula
from smartmixed_np.experiments.train import TrainConfig
from smartmixed_np.experiments.train import train as real_train

BUILT_IN = dict(activations._REGISTRY)

PLUGIN = '''
from smartmixed_np.core.activations import register_activation
from smartmixed_np.backend import array_module


def softsign(x):
    return x / (1 + array_module(x).abs(x))


def softsign_derivative(x):
    return 1 / (1 + array_module(x).abs(x)) ** 2


register_activation("cli_softsign", softsign, softsign_derivative, formula=r"$x/(1+|x|)$")
'''


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # subprocesses inherit it too


@pytest.fixture
def fresh_registry(monkeypatch):
    """The built-in activations only, and no module imported by --import yet (restored after)."""
    monkeypatch.setattr(activations, "_REGISTRY", dict(BUILT_IN))
    monkeypatch.setattr(plugins, "_LOADED", {})


def run(*argv, **options):
    return subprocess.run([sys.executable, "-m", "smartmixed_np", *argv], capture_output=True, text=True, timeout=300, **options)


def tiny_config(out, **options) -> TrainConfig:
    settings_ = dict(dataset="spirals", hidden=(8,), epochs=2, transition_epoch=1, lr=1e-3, out=str(out), quiet=True, progress=False)
    settings_.update(options)
    return TrainConfig(**settings_)


@pytest.fixture
def interrupted_run(tmp_path):
    """A SmartMixed run on spirals (2 epochs), stopped by Ctrl-C at its third step."""

    def stop(epoch, step, global_step, model):
        if global_step == 3:
            raise KeyboardInterrupt

    result = real_train(tiny_config(tmp_path / "interrupted"), on_step=stop)
    assert result.interrupted
    return tmp_path / "interrupted"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("finished") / "relu"
    real_train(tiny_config(folder, model="relu", epochs=1))
    return folder


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


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
    for option in ["--transition-epoch", "--phase2-init", "--arch", "--hidden", "--resume", "--data-dir", "--train-limit",
                   "--device", "--import", "--pool", "--mirror"]:
        assert option in train_help


def test_archs_lists_the_published_architectures(capsys):
    assert main(["archs"]) == 0
    out = capsys.readouterr().out
    assert " 2       3  512-256-128" in out and "768-512-512-256-256-128-128-64-64-32-32-16-16" in out
    assert "18" in out and "overwrites" in out


def test_activations_prints_a_labelled_plain_text_table(capsys):
    assert main(["activations"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "default", "pool", "origin", "f(x)"]
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert set(rows) == set(BUILT_IN)
    assert rows["relu"].split()[1:3] == ["yes", "built-in"] and rows["gelu"].split()[1] == "no"
    assert "max(0, x)" in rows["relu"] and "lambda*x if x>0 else lambda*alpha*(e^x-1)" in rows["selu"]
    assert "1/(1+e^(-x))" in rows["sigmoid"] and "sqrt(2/pi)" in rows["gelu"]
    text = "\n".join(lines)
    assert "$" not in text and "\\" not in text and "{" not in text
    assert "lambda = 1.0507" in lines[-1]


@pytest.mark.parametrize(
    "latex, plain",
    [
        (r"$\frac{x}{2}(1+\tanh(\sqrt{2/\pi}x))$", "(x/2)(1+tanh(sqrt(2/pi)x))"),
        (r"$\lambda\alpha(e^{x}-1)$", "lambda*alpha*(e^(x)-1)"),
        (r"$x\,\sigma(x)$", "x sigmoid(x)"),
        ("$a$\n$b$", "a b"),
        ("", ""),
    ],
)
def test_plain_formula(latex, plain):
    assert plain_formula(latex) == plain


def test_user_activation_from_the_command_line(tmp_path, fresh_registry, monkeypatch, capsys):
    (tmp_path / "plug.py").write_text(PLUGIN)
    assert main(["sweep", "--archs", "1", "--models", "cli_softsign", "--out", "s", "--dry-run"]) == 2
    assert "argument --models: unknown activation 'cli_softsign'" in one_error_line(capsys)

    assert main(["activations", "--import", "plug.py"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("cli_softsign"))
    assert row.split() == ["cli_softsign", "no", "--import", "x/(1+|x|)"]

    common = ["--import", "plug.py", "--dataset", "spirals", "--hidden", "8", "--lr", "1e-3", "--quiet"]
    assert main(["train", *common, "--model", "cli_softsign", "--epochs", "1", "--out", "fixed"]) == 0
    config = json.loads((tmp_path / "fixed" / "config.json").read_text())
    assert config["imports"] == [str(tmp_path / "plug.py")]  # absolute: found from any folder

    # A new process knows nothing of cli_softsign. The run records the module, but a file
    # never makes code run: evaluate names it and asks for --import (see plugins.py) ...
    monkeypatch.setattr(activations, "_REGISTRY", dict(BUILT_IN))
    monkeypatch.setattr(plugins, "_LOADED", {})
    capsys.readouterr()
    assert main(["evaluate", "fixed"]) == 2
    message = one_error_line(capsys)
    assert "never done implicitly" in message and f"--import {tmp_path / 'plug.py'}" in message
    assert "cli_softsign" not in activations._REGISTRY  # nothing was imported
    # ... and with it, evaluates (a relative path names the same module).
    assert main(["evaluate", "--import", "plug.py", "fixed"]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["test_examples"] > 0
    # A hostile model.json naming a module cannot run it either.
    (tmp_path / "evil.py").write_text("open('EVIL_RAN', 'w').close()\n")
    model_json = tmp_path / "fixed" / "model.json"
    model_json.write_text(json.dumps({**json.loads(model_json.read_text()), "imports": [str(tmp_path / "evil.py")]}))
    assert main(["evaluate", "--import", "plug.py", "fixed"]) == 2
    assert "evil.py" in one_error_line(capsys) and not (tmp_path / "EVIL_RAN").exists()

    pool = ["--pool", "relu,cli_softsign", "--epochs", "2", "--transition-epoch", "1", "--out", "mixed"]
    assert main(["train", *common, *pool]) == 0
    chosen = {line.split(",")[2] for line in (tmp_path / "mixed" / "choices.csv").read_text().splitlines()[1:]}
    assert chosen <= {"relu", "cli_softsign"} and chosen
    assert json.loads((tmp_path / "mixed" / "config.json").read_text())["pool"] == ["relu", "cli_softsign"]

    assert main(["train", "--dataset", "spirals", "--pool", "relu,nope", "--out", "never"]) == 2
    assert "argument --pool: unknown activation 'nope'" in one_error_line(capsys)
    assert main(["train", "--import", "no_such_module_xyz", "--out", "never"]) == 2
    assert "--import no_such_module_xyz: module not found" in one_error_line(capsys)
    assert not (tmp_path / "never").exists()


@pytest.fixture
def recorded_train(monkeypatch):
    """Replace train() by a stub that validates its config and records the call."""
    import smartmixed_np.experiments.train as train_module

    calls = []

    def stub(config=None, *, resume=None, overrides=None, on_step=None):
        if config is not None:
            config.validate()
        calls.append(SimpleNamespace(config=config, resume=resume, overrides=overrides))
        return SimpleNamespace(interrupted=False, metrics={})

    monkeypatch.setattr(train_module, "train", stub)
    return calls


def test_options_reach_the_training_config(recorded_train):
    argv = ["train", "--dataset", "spirals", "--mirror", "http://127.0.0.1:9/mnist/", "--pool", "RELU, elu",
            "--import", "json", "--import", "smartmixed_np.nn.layers", "--hidden", "65536,1", "--seed", str(2**32 - 1)]
    assert main(argv) == 0
    config = recorded_train[-1].config
    assert config.mirror == "http://127.0.0.1:9/mnist/" and config.pool == ("relu", "elu")
    assert config.imports == ("json", "smartmixed_np.nn.layers") and config.hidden == (65536, 1) and config.seed == 2**32 - 1
    assert main(["train", "--dataset", "spirals"]) == 0
    assert recorded_train[-1].config.pool is None and recorded_train[-1].config.imports == ()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lr", "0.5"], "--lr cannot change when resuming (the run was trained with lr 0.001); start a new run with --out"),
        (["--batch", "64"], "--batch-size cannot change when resuming (the run was trained with batch_size 128)"),
        (["--soft"], "--soft cannot change when resuming (the run was trained with hard selection)"),
        (["--hidden", "16"], "--hidden cannot change when resuming (the run was trained with hidden 8)"),
        (["--arch", "2"], "--arch cannot change when resuming (the run was trained with hidden 8)"),
        (["--model", "relu"], "--model cannot change when resuming (the run was trained with model smartmixed)"),
        (["--dataset", "mnist"], "--dataset cannot change when resuming (the run was trained with dataset spirals)"),
        (["--pool", "relu,elu"], "--pool cannot change when resuming (the run was trained with the default pool)"),
        (["--out", "elsewhere"], "--out cannot be given with --resume"),
    ],
)
def test_resume_refuses_an_option_that_changes_the_run(interrupted_run, recorded_train, capsys, extra, message):
    assert main(["train", "--resume", str(interrupted_run), *extra]) == 2
    assert message in one_error_line(capsys)
    assert not recorded_train


def test_resume_of_a_folder_that_is_no_run_says_so_whatever_the_options(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for folder, message in (("nowhere", "no such run folder"), ("empty", "checkpoint.npz")):
        assert main(["train", "--resume", folder, "--lr", "0.5", "--soft"]) == 2
        line = one_error_line(capsys)
        assert message in line and "cannot change" not in line


def test_resume_passes_the_options_that_may_differ(interrupted_run, recorded_train):
    # --epoch abbreviates --epochs; --lr and --transition-epoch repeat the run's own values.
    argv = ["train", "--resume", str(interrupted_run), "--epoch", "5", "--quiet", "--device", "cpu", "--data-dir", "d",
            "--mirror", "https://example.org/m", "--lr", "0.001", "--transition-epoch", "1"]
    assert main(argv) == 0
    assert recorded_train[-1].resume == str(interrupted_run)
    assert recorded_train[-1].overrides == {"quiet": True, "progress": False, "epochs": 5, "device": "cpu", "data_dir": "d",
                                            "mirror": "https://example.org/m"}
    # Options at their defaults but not typed are not overrides (the default --epochs is 400),
    # and a run started with --quiet stays quiet: --quiet not typed overrides nothing.
    assert main(["train", "--resume", str(interrupted_run)]) == 0
    assert recorded_train[-1].overrides == {}


def test_resume_with_more_epochs_trains_them(interrupted_run, capsys):
    assert main(["train", "--resume", str(interrupted_run), "--epochs", "3", "--quiet"]) == 0
    metrics = json.loads((interrupted_run / "metrics.json").read_text())
    assert metrics["epochs_run"] == 3


def test_evaluate_of_an_unfinished_run_says_how_to_resume(interrupted_run, capsys):
    assert main(["evaluate", str(interrupted_run)]) == 2
    line = one_error_line(capsys)
    assert "unfinished" in line and f"smartmixed train --resume {interrupted_run}" in line


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"\xff\xfe{", "not UTF-8"),
        (b"[" * 100_000, "nested more than 64 deep"),
        (b"garbage", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"dataset": 7}', "corrupt run configuration"),
        (b'{"dataset": "spirals", "imports": "plug.py"}', "corrupt run configuration"),
    ],
)
def test_evaluate_refuses_a_hostile_config_json_in_one_line(finished_run, tmp_path, capsys, content, reason):
    folder = tmp_path / "copy"
    folder.mkdir()
    for item in finished_run.iterdir():
        if item.is_file():
            (folder / item.name).write_bytes(item.read_bytes())
    (folder / "config.json").write_bytes(content)
    assert main(["evaluate", str(folder)]) == 2
    line = one_error_line(capsys)
    assert "config.json" in line and reason in line


def test_evaluate_passes_the_mirror_and_prints_strict_json(finished_run, monkeypatch, capsys):
    import smartmixed_np.data as data
    import smartmixed_np.experiments.train as train_module

    seen = {}
    real_load = data.load_dataset

    def load(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(data, "load_dataset", load)
    monkeypatch.setattr(train_module, "evaluate", lambda model, x, y: {"loss": float("nan"), "accuracy": 0.5,
                                                                       "predictions": np.zeros(len(y), dtype=np.int64)})
    assert main(["evaluate", str(finished_run), "--mirror", "http://127.0.0.1:9/m/"]) == 0
    assert seen["mirror"] == "http://127.0.0.1:9/m/"
    out = capsys.readouterr().out
    scores = json.loads(out, parse_constant=lambda name: pytest.fail(f"non-standard JSON {name}"))
    assert scores["test_loss"] is None and "test_loss" in scores["note"] and scores["test_accuracy"] == 0.5


@pytest.mark.parametrize(
    "argv", [["evaluate", "run"], ["demo"], ["bench", "--json", "b.json"], ["train"], ["sweep", "--archs", "1", "--out", "s"]]
)
def test_every_device_option_is_checked_while_parsing(argv, capsys):
    assert main([*argv, "--device", "tpu"]) == 2
    assert "argument --device: expected cpu or gpu, got 'tpu'" in one_error_line(capsys)


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
        (["evaluate", "/no/such/run"], "no such run folder"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "required"),
        # hostile values that gave tracebacks or allocated tens of GiB
        (["train", "--dataset", "spirals", "--hidden", "2147483648"], "hidden sizes must lie in [1, 65536] per layer"),
        (["train", "--dataset", "spirals", "--out", "a" * 300 + "/run"], "longer than 255 bytes"),
        (["evaluate", "/no/such/run", "--device", "tpu"], "--device: expected cpu or gpu"),
        ([b"train", b"--out", b"bad\xffname"], "not valid UTF-8"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, message):
    if "smartmixed_np[gpu]" in message:
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
    assert not os.path.exists("runs") or not os.listdir("runs")  # a run that cannot start leaves no folder


# ---------------------------------------------------------------------- hostile options
@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--epochs", "\u0663", "expected a positive integer (at most 100000)"),  # Arabic-Indic 3: int() takes it
        ("--epochs", "9" * 5000, "expected a positive integer (at most 100000)"),
        ("--batch-size", "1_000", "expected a positive integer"),
        ("--batch-size", str(2**20 + 1), "at most 1048576"),
        ("--seed", str(2**32), "below 2**32"),
        ("--split-seed", "-1", "below 2**32"),
        ("--hidden", "65537", "must lie in [1, 65536] per layer"),
        ("--hidden", "99999999999999999999", "must lie in [1, 65536] per layer"),
        ("--hidden", ",".join(["8"] * 65), "at most 64 layers"),
        ("--lr", "nan", "expected a positive number from 1e-12 to 1000"),
        ("--lr", "1e309", "expected a positive number"),
        ("--tau", "1e-320", "from 1e-6 to 1e6"),
        ("--clip", "-1", "or none"),
        ("--clamp", "inf", "or none"),
        ("--momentum", "-0.1", "from 0 to 1"),
        ("--weight-decay", "nan", "from 0 to 100"),
        ("--train-limit", "9", "from 10"),
        ("--mirror", "http://[::1", "expected an http://, https:// or file:// URL"),
        ("--mirror", "http://h:99999/", "URL"),
        ("--out", "run\nname", "control characters"),
        ("--out", "runs/" + "a" * 256, "argument --out: a component of the path is longer than 255 bytes"),
        ("--data-dir", "a/" * 2100, "argument --data-dir: the path is longer than 4095 bytes"),
        ("--data-dir", "\udcff", "not valid UTF-8"),
        ("--import", "not a module", "expected a module name"),
        ("--model", "a\x1b[31m", "expected 'smartmixed' or an activation name"),
        ("--model", "relu,elu", "expected 'smartmixed' or an activation name"),
        ("--lr=--", None, "expected a value, got '--'"),
    ],
)
def test_numbers_are_ascii_and_bounded_and_paths_checked(option, value, message, recorded_train, capsys):
    argv = ["train", "--dataset", "spirals", *([option] if value is None else [option, value])]
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert message in line and line.isprintable()
    assert not recorded_train


#: Values that broke option parsers before: signs, zero, the int32/uint32 edges,
#: 20- and 5,000-digit numbers, NaN and infinities, subnormals, non-ASCII digits,
#: separators, control characters, lone surrogates (invalid UTF-8 in argv),
#: over-long path components and paths, special files, malformed URLs and lists.
HOSTILE = [
    "", " ", "-1", "0", "-0", "+3", "1", "3.5", "1e3", "1e-320", "1e309", "-1e309", "nan", "NaN", "inf", "-inf",
    "2147483648", "4294967296", "99999999999999999999", "9" * 5000, "1" + "0" * 400, "0." + "0" * 400 + "1",
    "\u0663", "\uff11\uff12", "1_000", "0x10", " 7 ", "\x00", "a\nb", "\r", "\x1b[31m", "\udcff", "\udcc3\udca9x",
    "\u00e9", "\U0001f600", "1,2", ",", ",,", "1,,2", "-", "--", "none", "off", "/", ".", "..", "a" * 256,
    "\u00e9" * 128, ("a" * 200 + "/") * 30, "~", "/dev/null", "/proc/self/mem", "http://", "http://[::1", "http://h:99999/",
    "file:", "https://127.0.0.1:9/x", "relu", "smartmixed", "relu,relu", "relu," * 100, "cpu", "GPU", "tpu", "2", "18", "19",
    "0,1,2", "512-256", "65536", "65537", "65536,65536", "1," * 70, "float64",
]

_TRAIN = ["train", "--dataset", "spirals", "--hidden", "8", "--epochs", "2", "--transition-epoch", "1", "--out", "out"]
_SWEEP = ["sweep", "--archs", "1", "--models", "relu", "--seeds", "0", "--dataset", "spirals", "--epochs", "2",
          "--transition-epoch", "1", "--out", "sweep"]
TARGETS = (
    [(_TRAIN, option) for option in (
        "--epochs", "--transition-epoch", "--batch-size", "--lr", "--tau", "--tau-final", "--clamp", "--clip", "--momentum",
        "--weight-decay", "--seed", "--split-seed", "--train-limit", "--hidden", "--arch", "--model", "--pool", "--out",
        "--data-dir", "--mirror", "--import", "--device", "--dtype", "--noise", "--resume", "--dataset")]
    + [(_SWEEP, option) for option in ("--archs", "--models", "--seeds", "--workers", "--blas-threads", "--out", "--pool")]
    + [(["evaluate", "RUN"], option) for option in (None, "--device", "--data-dir", "--mirror", "--import")]
    + [(["demo"], option) for option in ("--epochs", "--out", "--device")]
    + [(["bench", "--json", "b.json"], option) for option in ("--json", "--figure", "--data-dir", "--device", "--plan")]
    + [(["report", "sweep"], option) for option in (None, "--out")]
    + [(["activations"], "--import")]
)


def _argv(base, option, value, joined, run_dir):
    """``base`` with ``option`` set to ``value`` (the base's own setting of it removed)."""
    argv = [run_dir if item == "RUN" else item for item in base]
    if option is None:  # the positional argument
        return [argv[0], value, *argv[2:]]
    drop = {option} | ({"--hidden"} if option == "--arch" else set())
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item in drop:
            skip = True
        else:
            kept.append(item)
    return [*kept, f"{option}={value}"] if joined else [*kept, option, value]


@pytest.fixture
def stubbed_commands(monkeypatch, recorded_train):
    """Every command stops once its options are parsed and validated; nothing is written or trained."""
    import smartmixed_np.experiments.bench as bench
    import smartmixed_np.report as report
    import smartmixed_np.experiments.sweep as sweep

    def sweep_stub(out, archs, models, seeds, config, **options):
        sweep.plan_sweep(out, archs, models, seeds, config)  # validates every run's configuration
        return SimpleNamespace(interrupted=False, ok=True)

    monkeypatch.setattr(sweep, "run_sweep", sweep_stub)
    monkeypatch.setattr(report, "write_report", lambda sweep_dir, out=None: {"report_md": "report.md"})
    monkeypatch.setattr(bench, "run_benchmarks", lambda **options: None)
    monkeypatch.setattr(cli, "run_demo", lambda *args: None)


def _attack(argv, capsys):
    """Run the command in-process: exit 0 or 2, and on 2 exactly one line on stderr."""
    try:
        status = main(argv)
    except SystemExit as stop:  # a value such as --help given as a separate word
        status = stop.code
    err = capsys.readouterr().err
    assert status in (0, 2), (argv, status, err)
    if status == 2:
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)
    return status


@pytest.mark.parametrize("base, option", TARGETS, ids=[f"{base[0]} {option or 'positional'}" for base, option in TARGETS])
def test_every_hostile_value_is_one_line_or_accepted(base, option, stubbed_commands, finished_run, fresh_registry, capsys):
    run_dir = str(finished_run)
    statuses = {_attack(_argv(base, option, value, value.startswith("-"), run_dir), capsys) for value in HOSTILE}
    assert 2 in statuses  # the option is really parsed and checked


_surrogate_text = st.binary(max_size=12).map(lambda raw: raw.decode("utf-8", "surrogateescape"))
hostile_values = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(max_size=24),
    _surrogate_text,
    st.integers(-(2**80), 2**80).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.lists(st.integers(-5, 2**40), min_size=0, max_size=5).map(lambda items: ",".join(map(str, items))),
)


@settings(max_examples=10 * settings().max_examples, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(TARGETS), value=hostile_values, joined=st.booleans())
def test_random_hostile_values_are_one_line_or_accepted(target, value, joined, stubbed_commands, finished_run, fresh_registry, capsys):
    base, option = target
    if option == "--import" and not value.endswith(".py"):
        value = "no_such_module_" + value  # never import a real module with side effects
    _attack(_argv(base, option, value, joined, str(finished_run)), capsys)


def test_demo_then_evaluate_then_corrupt(tmp_path):
    out = tmp_path / "demo"
    result = run("demo", "--quick", "--quiet", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "smartmixed" in result.stdout and "relu" in result.stdout
    assert "noisy hard selection" in result.stdout and "Reproduction on MNIST" in result.stdout
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
