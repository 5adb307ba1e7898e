"""Sweeps: one run folder per combination, restart after interrupt or kill, failures, executors, CLI."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

from smartmixed_np.cli import main
from smartmixed_np.sweep import FAILED, RunSpec, SweepError, plan_sweep, run_sweep, run_state
from smartmixed_np.train import CHECKPOINT, ConfigError, TrainConfig, train

TINY = dict(dataset="synth-digits", train_limit=300, epochs=3, transition_epoch=2, lr=1e-2, batch_size=32)
ARCHS = {1: (16,), 2: (16, 8)}
CLI_TINY = ["--dataset", "synth-digits", "--train-limit", "300", "--epochs", "3", "--transition-epoch", "2",
            "--lr", "1e-2", "--batch-size", "32"]


def history_epochs(run_dir: Path) -> list[int]:
    with open(run_dir / "history.csv", newline="") as file:
        return [int(float(row["epoch"])) for row in csv.DictReader(file)]


def attempts(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "sweep_run.json").read_text())


def blas_threads_of(run_dir: Path) -> set:
    """Every BLAS thread count that trained some part of the run in ``run_dir``.

    From ``config.json`` (the environment of the first start and of each resume)
    and, for a sweep's run, from every attempt in ``sweep_run.json``.
    """
    config = json.loads((run_dir / "config.json").read_text())
    environments = [config.get("environment")] + [r.get("environment") for r in config.get("resumes") or []]
    threads = set()
    for environment in environments:
        try:
            threads.add(environment["blas"]["threads"])
        except (KeyError, TypeError):
            pytest.fail(f"{run_dir / 'config.json'} records no BLAS thread count (environment.blas.threads)")
    if (run_dir / "sweep_run.json").is_file():
        threads |= {a["blas_threads"] for a in attempts(run_dir)}
    return threads


def assert_same_blas_threads(*run_dirs: Path) -> None:
    """Call before comparing runs' numbers bit for bit: they all ran at one BLAS thread count.

    The same seed gives the same bits only with the same BLAS library and thread
    count: another thread count splits the matrix products differently, and they
    round differently (on some CPUs, not on others).
    """
    seen = {str(run_dir): sorted(blas_threads_of(run_dir), key=str) for run_dir in run_dirs}
    counts = {count for found in seen.values() for count in found}
    assert len(counts) == 1 and None not in counts, f"runs compared bit for bit ran at different BLAS thread counts: {seen}"


def assert_complete(out: Path, keys: list[str], epochs: int = 3) -> None:
    """Every run finished exactly once: metrics, one history row per epoch, no leftovers."""
    for key in keys:
        run_dir = out / key
        assert run_state(run_dir) == "finished", key
        assert history_epochs(run_dir) == list(range(1, epochs + 1)), key
        assert [a["status"] for a in attempts(run_dir)].count("done") == 1, key
        assert not (run_dir / FAILED).exists(), key
        assert not list(run_dir.glob(".*.part")), key


# --------------------------------------------------------------------------- hooks run in the workers
# Module-level, so that spawned workers can unpickle them by reference.
_STARTED = {"runs": 0}


def interrupt_third_run(epoch, step, global_step, model):
    """Stop the third run this worker starts in the middle of its epoch 2 (as Ctrl-C would)."""
    if epoch == 1 and step == 1:
        _STARTED["runs"] += 1
    if _STARTED["runs"] == 3 and epoch == 2 and step == 3:
        raise KeyboardInterrupt


def die_on_width_24(epoch, step, global_step, model):
    """The worker process dies (as if killed for memory) while training a 24-wide network."""
    if model.sizes[1] == 24:
        os._exit(3)


def slow_step(epoch, step, global_step, model):
    time.sleep(0.01)


# --------------------------------------------------------------------------- tests
def test_plan_names_one_folder_per_combination(tmp_path):
    specs = plan_sweep(tmp_path, ARCHS, ["relu", "smartmixed"], [0, 1], TrainConfig(**TINY))
    assert [s.key for s in specs[:4]] == ["arch1/relu/seed0", "arch1/smartmixed/seed0", "arch2/relu/seed0", "arch2/smartmixed/seed0"]
    assert len(specs) == 8 and len({s.run_dir for s in specs}) == 8
    spec = specs[3]
    assert isinstance(spec, RunSpec) and spec.hidden == (16, 8)
    assert spec.run_dir == str((tmp_path / "arch2" / "smartmixed" / "seed0").resolve())
    assert spec.config["hidden"] == [16, 8] and spec.config["seed"] == 0 and spec.config["model"] == "smartmixed"
    assert spec.config["epochs"] == 3 and spec.config["quiet"] is True
    # Published IDs map to their widths; invalid options are refused before anything runs.
    assert plan_sweep(tmp_path, [4], ["relu"], [0], TrainConfig(**TINY))[0].hidden == (256, 128)
    with pytest.raises(SweepError, match="unknown architecture ID 99"):
        plan_sweep(tmp_path, [99], ["relu"], [0], TrainConfig(**TINY))
    with pytest.raises(ConfigError, match="arch1/swish/seed0.*unknown activation 'swish'"):
        plan_sweep(tmp_path, ARCHS, ["swish"], [0], TrainConfig(**TINY))
    with pytest.raises(ConfigError, match="transition-epoch"):
        plan_sweep(tmp_path, ARCHS, ["smartmixed"], [0], TrainConfig(**{**TINY, "transition_epoch": 9}))
    with pytest.raises(SweepError, match="non-negative"):
        plan_sweep(tmp_path, ARCHS, ["relu"], [-1], TrainConfig(**TINY))


def test_interrupted_sweep_resumes_and_runs_everything_once(tmp_path):
    out = tmp_path / "sweep"
    seen = []

    def stop_when_interrupted(record):
        seen.append(record)
        if record["status"] == "interrupted":
            raise KeyboardInterrupt  # Ctrl-C in the sweep process, right then

    first = run_sweep(out, ARCHS, ["relu", "smartmixed"], [0], TrainConfig(**TINY), workers=1, blas_threads=1,
                      on_step=interrupt_third_run, on_result=stop_when_interrupted, quiet=True)
    assert first.interrupted and not first.ok
    assert [r["status"] for r in seen] == ["done", "done", "interrupted"]
    assert all(r["blas_threads"] == 1 for r in seen)  # the workers' BLAS limit, as threadpoolctl reads it
    keys = [s.key for s in plan_sweep(out, ARCHS, ["relu", "smartmixed"], [0], TrainConfig(**TINY))]
    done, stopped, untouched = keys[:2], keys[2], keys[3:]
    assert [run_state(out / k) for k in done] == ["finished", "finished"]
    assert run_state(out / stopped) == "resumable" and not (out / stopped / "metrics.json").exists()
    assert all(not (out / k).exists() for k in untouched)
    status = json.loads((out / "sweep_status.json").read_text())
    assert status["runs"][stopped]["status"] == "interrupted" and status["runs"][untouched[0]]["status"] == "pending"
    finished_mtimes = {k: (out / k / "metrics.json").stat().st_mtime_ns for k in done}

    # The same BLAS thread count as the first part (the default would be cores // workers).
    second = run_sweep(out, ARCHS, ["relu", "smartmixed"], [0], TrainConfig(**TINY), workers=2, blas_threads=1, quiet=True)
    assert second.ok and not second.interrupted
    assert {k: second.records[k]["status"] for k in done} == {k: "skipped" for k in done}
    assert second.records[stopped]["status"] == "done" and second.records[stopped]["action"] == "resumed"
    assert all(second.records[k]["action"] == "started" for k in untouched)
    assert_complete(out, keys)
    assert {k: (out / k / "metrics.json").stat().st_mtime_ns for k in done} == finished_mtimes
    assert [a["status"] for a in attempts(out / stopped)] == ["interrupted", "done"]
    assert all(len(attempts(out / k)) == 1 for k in keys if k != stopped)
    log = (out / stopped / "train.log").read_text()
    assert log.count(" started on ") == 1 and log.count(" resumed on ") == 1

    # The resumed run ends exactly where an uninterrupted one does, at the workers' one BLAS thread.
    with threadpool_limits(limits=1, user_api="blas"):
        reference = train(TrainConfig(**TINY, model="relu", hidden=(16, 8), seed=0, quiet=True, progress=False,
                                      out=str(tmp_path / "reference")))
    assert_same_blas_threads(out / stopped, tmp_path / "reference")
    resumed = json.loads((out / stopped / "metrics.json").read_text())
    assert resumed["test"] == reference.metrics["test"] and resumed["val"] == reference.metrics["val"]

    # A third invocation has nothing to do.
    third = run_sweep(out, ARCHS, ["relu", "smartmixed"], [0], TrainConfig(**TINY), quiet=True)
    assert set(third.counts) == {"skipped"}
    # Other training options in the same folder are refused (they would mix results).
    with pytest.raises(SweepError, match="other training options.*epochs: 3 -> 4"):
        run_sweep(out, ARCHS, ["relu"], [0], TrainConfig(**{**TINY, "epochs": 4}), quiet=True)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the worker processes")
def test_sweep_killed_outright_then_restarted(tmp_path):
    out = tmp_path / "sweep"
    argv = [sys.executable, "-m", "smartmixed_np", "sweep", "--archs", "4", "--models", "relu,tanh,smartmixed",
            "--seeds", "0,1", "--workers", "2", *CLI_TINY, "--out", str(out)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list(out.glob("*/*/*/metrics.json"))) < 2:
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    workers = _children(process.pid)
    process.kill()  # SIGKILL: no cleanup in the sweep process at all
    process.wait()
    # The orphaned workers notice at their next step, save their checkpoints and leave.
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "worker processes outlived their sweep"
        time.sleep(0.05)
    finished = {p.parent: p.stat().st_mtime_ns for p in out.glob("*/*/*/metrics.json")}
    assert 2 <= len(finished) < 6

    restarted = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert restarted.returncode == 0, restarted.stderr
    assert f"{len(finished)} finished or kept" in restarted.stdout
    keys = [f"arch4/{m}/seed{s}" for s in (0, 1) for m in ("relu", "tanh", "smartmixed")]
    assert_complete(out, keys)
    assert {p.parent: p.stat().st_mtime_ns for p in out.glob("*/*/*/metrics.json") if p.parent in finished} == finished
    for key in keys:  # every attempt before the last one stopped without finishing
        statuses = [a["status"] for a in attempts(out / key)]
        assert statuses[-1] == "done" and set(statuses[:-1]) <= {"interrupted"}, (key, statuses)


def test_failed_run_is_recorded_and_the_others_finish(tmp_path):
    out = tmp_path / "sweep"
    broken = out / "arch1" / "relu" / "seed1"
    broken.mkdir(parents=True)
    (broken / CHECKPOINT).write_bytes(b"not a checkpoint")  # the run's resume will fail
    result = run_sweep(out, {1: (16,)}, ["relu"], [0, 1, 2], TrainConfig(**TINY), workers=2, quiet=True)
    assert not result.ok and result.failed == ["arch1/relu/seed1"]
    error = result.records["arch1/relu/seed1"]["error"]
    assert error.startswith("CheckpointError:") and "not a readable checkpoint" in error
    assert_complete(out, ["arch1/relu/seed0", "arch1/relu/seed2"])
    failed_text = (broken / FAILED).read_text()
    assert failed_text.splitlines()[0] == error and "Traceback" in failed_text
    status = json.loads((out / "sweep_status.json").read_text())
    assert status["counts"] == {"done": 2, "failed": 1}
    assert status["runs"]["arch1/relu/seed1"]["error"] == error

    # --skip-failed keeps it as it is; a plain restart retries it, and it succeeds once fixed.
    kept = run_sweep(out, {1: (16,)}, ["relu"], [0, 1, 2], TrainConfig(**TINY), retry_failed=False, quiet=True)
    assert kept.records["arch1/relu/seed1"]["status"] == "failed" and len(attempts(broken)) == 1
    (broken / CHECKPOINT).unlink()
    fixed = run_sweep(out, {1: (16,)}, ["relu"], [0, 1, 2], TrainConfig(**TINY), quiet=True)
    assert fixed.ok and fixed.counts == {"skipped": 2, "done": 1}
    assert_complete(out, ["arch1/relu/seed0", "arch1/relu/seed1", "arch1/relu/seed2"])


def test_dead_worker_process_fails_its_run_only(tmp_path):
    out = tmp_path / "sweep"
    result = run_sweep(out, {1: (16,), 2: (24,)}, ["relu"], [0], TrainConfig(**TINY), workers=1,
                       on_step=die_on_width_24, quiet=True)
    assert result.failed == ["arch2/relu/seed0"]
    assert "worker process died" in result.records["arch2/relu/seed0"]["error"]
    assert (out / "arch2" / "relu" / "seed0" / FAILED).is_file()
    assert_complete(out, ["arch1/relu/seed0"])


def test_any_executor_and_per_thread_logs(tmp_path):
    out = tmp_path / "sweep"
    with ThreadPoolExecutor(max_workers=2) as pool:  # runs share one process: logs must not mix
        result = run_sweep(out, ARCHS, ["relu"], [0], TrainConfig(**TINY), executor=pool, on_step=slow_step, quiet=True)
    assert result.ok
    for key in ("arch1/relu/seed0", "arch2/relu/seed0"):
        log = (out / key / "train.log").read_text()
        assert f"run folder {out / key}" in log and log.count("done: test accuracy") == 1
        assert sum(line.startswith("epoch ") for line in log.splitlines()) == 3
    assert_complete(out, ["arch1/relu/seed0", "arch2/relu/seed0"])


def test_dask_distributed_local_cluster(tmp_path):
    distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")
    out = tmp_path / "sweep"
    with distributed.LocalCluster(host="127.0.0.1", n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        result = run_sweep(out, ARCHS, ["relu", "smartmixed"], [0], TrainConfig(**TINY), executor="dask",
                           scheduler=cluster.scheduler_address, quiet=True)
        assert result.ok and result.counts == {"done": 4}
        pids = {record["pid"] for record in result.records.values()}
        assert os.getpid() not in pids  # trained in the cluster's worker processes
        assert {record["blas_threads"] for record in result.records.values()} == {1}  # Dask's nanny sets it
        again = run_sweep(out, ARCHS, ["relu", "smartmixed"], [0], TrainConfig(**TINY), executor="dask",
                          scheduler=cluster.scheduler_address, quiet=True)
        assert again.counts == {"skipped": 4}
    assert_complete(out, [f"arch{a}/{m}/seed0" for a in ARCHS for m in ("relu", "smartmixed")])


def test_dask_executor_needs_a_scheduler(tmp_path):
    with pytest.raises(SweepError, match="scheduler|pip install"):
        run_sweep(tmp_path, ARCHS, ["relu"], [0], TrainConfig(**TINY), executor="dask", quiet=True)
    with pytest.raises(SweepError, match="unknown executor"):
        run_sweep(tmp_path / "b", ARCHS, ["relu"], [0], TrainConfig(**TINY), executor="mpi", quiet=True)


# --------------------------------------------------------------------------- command line
def test_sweep_help_shares_the_training_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["sweep", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ["--archs", "--models", "--seeds", "--out", "--workers", "--blas-threads", "--executor", "--scheduler",
                   "--skip-failed", "--dry-run", "--dataset", "--data-dir", "--train-limit", "--epochs", "--transition-epoch",
                   "--lr", "--batch-size", "--tau", "--phase2-init", "--optimizer", "--clip", "--device", "--dtype"]:
        assert option in text, option
    for single_run_only in ["--resume", "--hidden", "--model"]:  # not offered (the help may mention them)
        assert not re.search(rf"^\s+{single_run_only}\b", text, re.M), single_run_only
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--resume" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "sweep" in top and "report" in top


def test_sweep_dry_run_lists_the_plan(tmp_path, capsys):
    assert main(["sweep", "--archs", "1,4", "--models", "relu,smartmixed", "--seeds", "0", *CLI_TINY,
                 "--out", str(tmp_path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["arch1/relu/seed0", "512", "start"]
    assert lines[3].split() == ["arch4/smartmixed/seed0", "256-128", "start"] and lines[-1] == "4 runs"
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--archs", "42", "--out", "X"], "unknown architecture ID 42"),
        (["--archs", "1,x", "--out", "X"], "architecture ID"),
        (["--archs", "1", "--models", "relu,swish", "--out", "X"], "unknown activation 'swish'"),
        (["--archs", "1", "--seeds", "0,-1", "--out", "X"], "expected comma-separated non-negative integers"),
        (["--archs", "1"], "the following arguments are required: --out"),
        (["--archs", "1", "--out", "X", "--workers", "0"], "--workers: expected a positive integer"),
        (["--archs", "1", "--out", "X", "--executor", "spark"], "invalid choice: 'spark'"),
        (["--archs", "1", "--out", "X", "--hidden", "16"], "unrecognized arguments: --hidden 16"),
        (["--archs", "1", "--out", "X", "--dataset", "synth-digits", "--epochs", "3"], "--transition-epoch (50) must lie in [1, --epochs (3)]"),
        (["--archs", "1", "--out", "X", "--dataset", "mnist", "--data-dir", "/no/such/folder"], "/no/such/folder"),
        (["--archs", "1", "--out", "X", *CLI_TINY, "--executor", "dask"], "dask"),
    ],
)
def test_sweep_user_errors_are_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_sweep_command_exit_status(tmp_path):
    """The real process: a bad option is one line and status 2; a finished sweep is status 0."""
    bad = subprocess.run([sys.executable, "-m", "smartmixed_np", "sweep", "--archs", "42", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    out = tmp_path / "sweep"
    run_sweep(out, {1: (16,)}, ["relu"], [0], TrainConfig(**TINY), quiet=True)
    done = subprocess.run([sys.executable, "-m", "smartmixed_np", "sweep", "--archs", "1", "--models", "relu", "--seeds", "0",
                           *CLI_TINY, "--out", str(out)], capture_output=True, text=True, timeout=60)
    # arch1 here is the published 512-wide network, but the folder's arch1 was 16 wide: refused.
    assert done.returncode == 2 and "architecture 1 had hidden widths [16]" in done.stderr
