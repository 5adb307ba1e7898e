"""A run under faults: killed at every write, interrupted twice inside a step, SIGTERM,
a full disk, a failed start; resumed, it ends with the bits of an uninterrupted run.

Every comparison of bits here is between runs in the same process or in processes
started the same way, so with the same BLAS and thread count (see runfolder.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from smartmixed_np.nn import optim
from smartmixed_np.experiments.checkpoint import load_arrays
from smartmixed_np.cli import main
from smartmixed_np.errors import DataError
from smartmixed_np.fileio import WriteError
from smartmixed_np.experiments.runfolder import run_state
from smartmixed_np.experiments.train import CHECKPOINT, ConfigError, TrainConfig, train

from test_fileio import small_tmpfs

TINY = dict(dataset="spirals", train_limit=200, hidden=(8,), epochs=3, transition_epoch=1, lr=1e-2, batch_size=64,
            seed=0, quiet=True, progress=False)


def tiny(out: Path, **options) -> TrainConfig:
    return TrainConfig(**{**TINY, **options, "out": str(out)})


def _result(folder: Path) -> dict:
    """What must be identical between two runs: metrics (less timings), weights, history (less timings)."""
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics.pop("train_time_s")
    arrays, _ = load_arrays(folder / "model.npz")
    history = (folder / "history.csv").read_text().splitlines()
    columns = history[0].split(",")
    keep = [i for i, c in enumerate(columns) if c != "time_s"]
    rows = [[row.split(",")[i] for i in keep] for row in history]
    return {"metrics": metrics, "arrays": {k: v.tobytes() for k, v in arrays.items()}, "history": rows}


FIGURES = ("curves.png", "confusion.png", "activation_shares.png", "share_evolution.png", "choice_map.png")


def _placeholder_figures(run_dir, metrics=None):
    """Stands in for plots.write_run_figures: the same files, written the same way, in
    a millisecond (what is tested here is the order and atomicity of the writes, not
    the drawings, which tests/test_plots.py checks)."""
    from smartmixed_np.fileio import write_bytes

    folder = Path(run_dir) / "figures"
    folder.mkdir(exist_ok=True)
    return [write_bytes(folder / name, b"\x89PNG placeholder") for name in FIGURES]


@pytest.fixture
def quick_figures(monkeypatch):
    from smartmixed_np.experiments import plots

    monkeypatch.setattr(plots, "write_run_figures", _placeholder_figures)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference") / "run"
    with pytest.MonkeyPatch.context() as patch:
        from smartmixed_np.experiments import plots

        patch.setattr(plots, "write_run_figures", _placeholder_figures)
        train(tiny(folder))
    return _result(folder)


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not an Exception, not a KeyboardInterrupt)."""


def _writes_of_a_run(tmp_path) -> list[str]:
    names = []
    real = os.replace

    def record(src, dst):
        names.append(Path(dst).name)
        return real(src, dst)

    os.replace = record
    try:
        train(tiny(tmp_path / "count"))
    finally:
        os.replace = real
    return names


def test_killed_at_every_write_the_folder_is_consistent_and_resumes_to_the_same_bits(tmp_path, monkeypatch, quick_figures, reference):
    writes = _writes_of_a_run(tmp_path)
    assert writes[-1] == "metrics.json" and writes.index("model.npz") < writes.index("model.json") < writes.index("history.csv")
    real = os.replace
    for index, name in enumerate(writes):
        for when in ("before", "after"):
            folder = tmp_path / f"kill{index}{when}"
            calls = {"n": 0}

            def dying(src, dst):
                calls["n"] += 1
                if calls["n"] == index + 1:
                    if when == "after":
                        real(src, dst)
                    raise _Killed
                return real(src, dst)

            monkeypatch.setattr(os, "replace", dying)
            with pytest.raises(_Killed):
                train(tiny(folder))
            monkeypatch.setattr(os, "replace", real)
            state = run_state(folder)
            last = index == len(writes) - 1 and when == "after"
            assert state == ("finished" if last else ("resumable" if (folder / CHECKPOINT).exists() else "new")), (name, when)
            if state == "resumable":
                train(resume=folder, overrides={"quiet": True, "progress": False})
            elif state == "new":
                train(tiny(folder))
            assert run_state(folder) == "finished"
            assert _result(folder) == reference, f"killed {when} writing {name} (write {index + 1})"


_KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    target, out = sys.argv[1], sys.argv[2]
    real = os.replace
    def dying(src, dst):
        if Path(dst).name == target:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst)
    os.replace = dying
    from smartmixed_np.cli import main
    sys.exit(main(["train", "--dataset", "spirals", "--train-limit", "200", "--hidden", "8", "--epochs", "3",
                   "--transition-epoch", "1", "--lr", "1e-2", "--batch-size", "64", "--quiet", "--out", out]))
""")


@pytest.mark.parametrize("target", ["model.json"])
def test_a_real_sigkill_at_the_end_leaves_a_resumable_folder(tmp_path, target, quick_figures, reference):
    folder = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", _KILLER, target, str(folder)], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "MPLBACKEND": "Agg"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert run_state(folder) == "resumable"
    assert any(p.name.startswith(f".{target}.") and p.name.endswith(".part") for p in folder.iterdir())
    train(resume=folder, overrides={"quiet": True, "progress": False})
    assert not any(p.name.endswith(".part") for p in folder.iterdir())  # cleaned on resume
    assert _result(folder) == reference


def test_two_interrupts_inside_a_step_keep_the_last_checkpoint(tmp_path, monkeypatch, capsys, quick_figures, reference):
    """Ctrl-C twice in the middle of an update: the half-applied step is not saved."""
    real_step = optim.Adam.step
    calls = {"n": 0}

    def interrupted_step(self, grads, scale=None):
        calls["n"] += 1
        if calls["n"] == 6:  # epoch 2 (4 steps an epoch): one parameter updated, then Ctrl-C, Ctrl-C
            self.params[next(iter(self.params))][...] += 1.0
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, grads, scale=scale)

    monkeypatch.setattr(optim.Adam, "step", interrupted_step)
    folder = tmp_path / "run"
    result = train(tiny(folder))
    assert result.interrupted and result.stop_signal == "SIGINT"
    assert "stopped at once" in capsys.readouterr().err
    _, meta = load_arrays(folder / CHECKPOINT)
    assert (meta["epoch"], meta["step_in_epoch"]) == (1, 0)  # the checkpoint after epoch 1
    monkeypatch.setattr(optim.Adam, "step", real_step)
    train(resume=folder, overrides={"quiet": True, "progress": False})
    assert _result(folder) == reference


def test_one_interrupt_inside_a_step_saves_at_its_end(tmp_path, monkeypatch, quick_figures, reference):
    real_step = optim.Adam.step
    calls = {"n": 0}

    def interrupted_step(self, grads, scale=None):
        calls["n"] += 1
        if calls["n"] == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, grads, scale=scale)

    monkeypatch.setattr(optim.Adam, "step", interrupted_step)
    folder = tmp_path / "run"
    result = train(tiny(folder))
    assert result.interrupted and result.stop_signal == "SIGTERM"
    _, meta = load_arrays(folder / CHECKPOINT)
    assert (meta["epoch"], meta["step_in_epoch"]) == (1, 2)  # the end of the step it arrived in
    monkeypatch.setattr(optim.Adam, "step", real_step)
    train(resume=folder, overrides={"quiet": True, "progress": False})
    assert _result(folder) == reference


def test_sigterm_to_a_real_process_saves_exits_143_and_resumes_to_the_same_bits(tmp_path):
    common = ["--dataset", "synth-digits", "--train-limit", "4000", "--hidden", "64,32", "--epochs", "4",
              "--transition-epoch", "2", "--lr", "1e-3", "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    reference = subprocess.run([sys.executable, "-m", "smartmixed_np", "train", *common, "--out", str(tmp_path / "ref")],
                               capture_output=True, text=True, timeout=120, env=env)
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "smartmixed_np", "train", *common, "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline, line = time.monotonic() + 60, ""
    while "epoch   1/4" not in line and time.monotonic() < deadline:
        line = process.stdout.readline()
        assert line or process.poll() is None, process.stderr.read()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr and "SIGTERM" in stderr and "checkpoint saved" in stderr
    done = subprocess.run([sys.executable, "-m", "smartmixed_np", "train", "--resume", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr and "epoch" in done.stderr
    assert _result(out) == _result(tmp_path / "ref")


def test_a_finished_run_continues_for_more_epochs_like_a_longer_run(tmp_path, quick_figures):
    longer = tmp_path / "longer"
    train(tiny(longer, epochs=5))
    folder = tmp_path / "run"
    train(tiny(folder))
    train(resume=folder, overrides={"epochs": 5, "quiet": True, "progress": False})
    assert _result(folder) == _result(longer)
    with pytest.raises(ConfigError, match="already trained 5 epochs"):
        train(resume=folder, overrides={"epochs": 4})
    with pytest.raises(ConfigError, match="cannot change lr"):
        train(resume=folder, overrides={"lr": 0.1})


def test_resume_with_another_thread_count_says_so(tmp_path, capsys, quick_figures):
    from threadpoolctl import threadpool_info, threadpool_limits

    threads = max((p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"), default=1)
    if threads < 2:
        pytest.skip("one BLAS thread here: no other count to resume with")

    def stop(epoch, step, global_step, model):
        if global_step == 2:
            raise KeyboardInterrupt

    folder = tmp_path / "run"
    with threadpool_limits(limits=1, user_api="blas"):
        assert train(tiny(folder), on_step=stop).interrupted
    capsys.readouterr()
    train(resume=folder, overrides={"quiet": True, "progress": False})
    err = capsys.readouterr().err
    assert f"BLAS threads 1 then, {threads} now" in err and "not be bit-identical" in err
    config = json.loads((folder / "config.json").read_text())
    assert config["environment"]["blas"]["threads"] == 1 and config["resumes"][0]["environment"]["blas"]["threads"] == threads


def test_a_failed_start_leaves_no_folder(tmp_path):
    folder = tmp_path / "run"
    with pytest.raises(DataError):
        train(TrainConfig(dataset="mnist", data_dir=str(tmp_path / "no" / "such"), out=str(folder), quiet=True))
    assert not folder.exists()
    assert main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "nothing"), "--out", str(folder)]) == 2
    assert not folder.exists()


def test_folders_that_are_not_for_a_run_are_refused(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("")
    with pytest.raises(ConfigError, match="holds other files"):
        train(tiny(tmp_path / "busy"))
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match="not a folder"):
        train(tiny(tmp_path / "a_file"))
    with pytest.raises(WriteError, match="cannot create the run folder"):
        train(tiny(tmp_path / "a_file" / "run"))
    with pytest.raises(ConfigError, match="longer than 255 bytes"):
        train(tiny(tmp_path / ("x" * 256)))


def test_a_network_too_big_for_the_machine_is_refused_before_allocating():
    config = TrainConfig(hidden=(1 << 20, 1 << 20))
    with pytest.raises(ConfigError, match=r"needs about [\d.]+ GiB of memory"):
        config.validate()


def test_a_full_disk_stops_the_run_in_one_line_and_it_resumes_once_there_is_room(tmp_path, capsys, reference):
    with small_tmpfs(tmp_path / "disk", "40k") as disk:
        folder = disk / "run"
        status = main(["train", "--dataset", "spirals", "--train-limit", "200", "--hidden", "8", "--epochs", "3",
                       "--transition-epoch", "1", "--lr", "1e-2", "--batch-size", "64", "--quiet", "--out", str(folder)])
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(err) == 1 and "No space left on device" in err[0], err
        assert run_state(folder) in ("resumable", "new")
        if run_state(folder) == "resumable":
            load_arrays(folder / CHECKPOINT)  # the earlier files are intact
        if subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], capture_output=True).returncode != 0:
            pytest.skip("cannot grow the tmpfs here")
        if run_state(folder) == "resumable":
            train(resume=folder, overrides={"quiet": True, "progress": False})
        else:
            train(tiny(folder))
        assert _result(folder) == reference


def test_a_folder_another_process_trains_in_is_refused(tmp_path, quick_figures):
    folder = tmp_path / "run"

    def stop(epoch, step, global_step, model):
        if global_step == 2:
            raise KeyboardInterrupt

    assert train(tiny(folder), on_step=stop).interrupted
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, sys, time
        with open({str(folder / '.lock')!r}, "a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            print("held", flush=True)
            time.sleep(30)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match="in use by another process"):
            train(resume=folder, overrides={"quiet": True, "progress": False})
    finally:
        holder.kill()
        holder.wait()
    assert train(resume=folder, overrides={"quiet": True, "progress": False}).metrics


def test_the_signal_handler_only_sets_the_flag():
    """A signal can land inside an import or a write: the handler does neither."""
    import builtins

    from smartmixed_np.experiments.train import _interrupt_at_step_boundaries

    with _interrupt_at_step_boundaries() as flag:
        real_import = builtins.__import__

        def no_import(*args, **kwargs):
            raise AssertionError("the signal handler imported something")

        builtins.__import__ = no_import
        try:
            os.kill(os.getpid(), signal.SIGINT)
            delivered = flag["set"]  # the handler has run by the next bytecode
        finally:
            builtins.__import__ = real_import
        assert delivered and flag["signal"] == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_outside_a_training_loop_exits_143(monkeypatch, capsys):
    from smartmixed_np import cli

    monkeypatch.setitem(cli._COMMANDS, "archs", lambda args: os.kill(os.getpid(), signal.SIGTERM) or 0)
    assert cli.main(["archs"]) == 143
    assert "terminated (SIGTERM)" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))
