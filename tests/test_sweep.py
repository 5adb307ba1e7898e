"""Sweeps: one run folder per combination, restart after interrupt or kill, failures, executors, CLI."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

from smartmixed_np.experiments import runfolder
from smartmixed_np.cli import main
from smartmixed_np.experiments.sweep import FAILED, RunSpec, SweepError, plan_sweep, run_sweep, run_state
from smartmixed_np.experiments.train import CHECKPOINT, ConfigError, TrainConfig, train

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


_KILL = {"armed": False}


def kill_group_at_write(epoch, step, global_step, model):
    """Arm a SIGKILL of the whole process group at a chosen write of the run being trained.

    ``SWEEP_KILL_AT="<file name>:<n>"``: the n-th ``os.replace`` onto that file after
    the run's first step kills the group (the sweep process and its workers) at the
    last instant of an atomic write: its ``.part`` temporary is complete, the file
    not yet replaced. Nothing gets to clean up, as after a kill by the OOM killer or
    a cluster scheduler.
    """
    if _KILL["armed"]:
        return
    _KILL["armed"] = True
    name, count = os.environ["SWEEP_KILL_AT"].rsplit(":", 1)
    calls, replace = [0], os.replace

    def replace_or_die(src, dst, *args, **kwargs):
        if Path(dst).name == name:
            calls[0] += 1
            if calls[0] == int(count):
                os.killpg(os.getpgrp(), signal.SIGKILL)
        return replace(src, dst, *args, **kwargs)

    os.replace = replace_or_die  # in the worker process only, which dies with it


# A sweep in its own process group, with the hook above; run as `python -c`.
_KILLED_SWEEP = """
import sys
sys.path.insert(0, {tests!r})
import test_sweep
from smartmixed_np.experiments.sweep import run_sweep
from smartmixed_np.experiments.train import TrainConfig
run_sweep({out!r}, {{2: (16, 8)}}, ["relu"], [0], TrainConfig(**test_sweep.TINY), workers=1, blas_threads=1,
          on_step=test_sweep.kill_group_at_write, quiet=True)
"""


def sweep_killed_at(out: Path, kill_at: str) -> None:
    """Run a one-run sweep (arch2/relu/seed0) in a new process group, SIGKILLed at ``kill_at``."""
    code = _KILLED_SWEEP.format(tests=str(Path(__file__).parent), out=str(out))
    killed = subprocess.run([sys.executable, "-c", code], env={**os.environ, "SWEEP_KILL_AT": kill_at},
                            start_new_session=True, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])


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


def test_group_sigkill_loses_nothing_completed_and_resumes_to_the_same_bits(tmp_path):
    key = "arch2/relu/seed0"
    # Killed between the finished marker and the attempt's outcome (the worst moment
    # for the bookkeeping): the run is finished, and its log and attempt are on disk.
    first = tmp_path / "marker"
    sweep_killed_at(first, "sweep_run.json:1")
    run_dir = first / key
    assert run_state(run_dir) == "finished"
    assert [a["status"] for a in attempts(run_dir)] == ["running"]
    log = (run_dir / "train.log").read_text()
    assert log.count(" started on ") == 1 and log.count("done: test accuracy") == 1
    assert list(run_dir.glob(".sweep_run.json.*.part"))  # the write the kill interrupted
    again = run_sweep(first, {2: (16, 8)}, ["relu"], [0], TrainConfig(**TINY), quiet=True)
    assert again.counts == {"skipped": 1}
    [entry] = attempts(run_dir)
    assert entry["status"] == "done" and "killed" in entry["note"] and entry["wall_s"] > 0
    assert_complete(first, [key])

    # Killed while the checkpoint of epoch 2 was being written: the run resumes from
    # epoch 1's, the stale temporary is removed, and it ends with the bits of the
    # run above, which was never stopped (both at one BLAS thread).
    second = tmp_path / "checkpoint"
    sweep_killed_at(second, "checkpoint.npz:2")
    run_dir = second / key
    assert run_state(run_dir) == "resumable" and list(run_dir.glob(".checkpoint.npz.*.part"))
    assert [a["status"] for a in attempts(run_dir)] == ["running"]
    assert sum(line.startswith("epoch ") for line in (run_dir / "train.log").read_text().splitlines()) == 2
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(max_workers=1) as pool:
        resumed = run_sweep(second, {2: (16, 8)}, ["relu"], [0], TrainConfig(**TINY), executor=pool, quiet=True)
    assert resumed.records[key]["status"] == "done" and resumed.records[key]["action"] == "resumed"
    assert [a["status"] for a in attempts(run_dir)] == ["killed", "done"]
    assert_complete(second, [key])
    assert_same_blas_threads(first / key, second / key)
    finished, stopped = (json.loads((d / key / "metrics.json").read_text()) for d in (first, second))
    assert stopped["test"] == finished["test"] and stopped["val"] == finished["val"]


def fake_finished_run(run_dir: Path) -> None:
    """The files that make a run folder finished and complete for runfolder (no training)."""
    run_dir.mkdir(parents=True)
    for name, content in [("model.npz", b"PK\x03\x04"), ("model.json", b"{}"), ("history.csv", b"epoch\n"),
                          ("metrics.json", b"{}")]:
        (run_dir / name).write_bytes(content)


def test_old_sweep_folder_takes_missing_options_as_their_defaults(tmp_path):
    """A sweep.json written before an option existed (here mirror, pool, imports) is continued."""
    out = tmp_path / "sweep"
    [spec] = plan_sweep(out, {1: (16,)}, ["relu"], [0], TrainConfig(**TINY))
    fake_finished_run(Path(spec.run_dir))
    old_options = {k: v for k, v in spec.config.items()
                   if k not in ("mirror", "pool", "imports", "model", "hidden", "arch", "seed", "out", "quiet", "progress",
                                "data_dir", "device")}
    description = {"format": "smartmixed_np.sweep/1", "training_options": old_options,
                   "architectures": {"1": [16]}, "models": ["relu"], "seeds": [0]}
    (out / "sweep.json").write_text(json.dumps(description))
    assert run_sweep(out, {1: (16,)}, ["relu"], [0], TrainConfig(**TINY), quiet=True).counts == {"skipped": 1}
    assert json.loads((out / "sweep.json").read_text())["training_options"]["imports"] == []  # written in full now
    # A missing option still differs from a value that is not its default.
    (out / "sweep.json").write_text(json.dumps(description))
    with pytest.raises(SweepError, match=r"other training options \(pool: None -> \['relu', 'tanh'\]\)"):
        run_sweep(out, {1: (16,)}, ["relu"], [0], TrainConfig(**TINY, pool=("relu", "tanh")), quiet=True)
    (out / "sweep.json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(SweepError, match="not a readable sweep description"):
        run_sweep(out, {1: (16,)}, ["relu"], [0], TrainConfig(**TINY), quiet=True)


def test_finished_run_with_unfinished_bookkeeping_is_tidied(tmp_path):
    """What a kill after the finished marker leaves is repaired without training again."""
    out = tmp_path / "sweep"
    run_dir = out / "arch1" / "relu" / "seed0"
    fake_finished_run(run_dir)
    (run_dir / "sweep_run.json").write_text(json.dumps([
        {"started": "then", "action": "started", "status": "running", "wall_s": None},
        {"started": "later", "action": "resumed", "status": "running", "wall_s": None, "started_unix": 0.0},
    ]))
    (run_dir / FAILED).write_text("OSError: from an earlier attempt\n")
    for stale in [run_dir / ".checkpoint.npz.k3j_x9a2.part", run_dir / "figures" / ".curves.png.abcdefgh.part",
                  out / ".sweep_status.json.0a1b2c3d.part"]:
        stale.parent.mkdir(exist_ok=True)
        stale.write_bytes(b"half")
    kept = [run_dir / "notes.part", run_dir / ".lock.part", run_dir / "figures" / "curves.png"]  # not temporaries
    for path in kept:
        path.write_bytes(b"mine")
    result = run_sweep(out, {1: (16,)}, ["relu"], [0], TrainConfig(**TINY), quiet=True)
    assert result.ok and result.counts == {"skipped": 1}
    assert [a["status"] for a in attempts(run_dir)] == ["killed", "done"]
    assert not (run_dir / FAILED).exists()
    assert not list(out.rglob(".*.*.part")) and all(path.read_bytes() == b"mine" for path in kept)


def test_only_complete_runs_count_as_finished(tmp_path):
    """A garbage marker is not finished; a start killed before its first checkpoint starts again."""
    out = tmp_path / "sweep"
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = run_sweep(out, {1: (16,)}, ["relu"], [0], TrainConfig(**TINY), executor=pool, quiet=True)
        assert first.ok
        finished = out / "arch1" / "relu" / "seed0"
        original = json.loads((finished / "metrics.json").read_text())
        (finished / "metrics.json").write_bytes(b'{"test": {"accuracy": 1.0')  # truncated by hand
        assert run_state(finished) == "resumable"  # the checkpoint of the last epoch is kept
        aborted = out / "arch1" / "relu" / "seed1"  # killed before its first checkpoint: config.json only
        aborted.mkdir(parents=True)
        (aborted / "config.json").write_text((finished / "config.json").read_text())
        (aborted / ".config.json.x1y2z3w4.part").write_text("{")
        damaged = out / "arch1" / "relu" / "seed2"  # results without a checkpoint: kept, refused
        fake_finished_run(damaged)
        (damaged / "metrics.json").write_bytes(b"\x00garbage")
        assert [run_state(d) for d in (aborted, damaged)] == ["new", "new"]
        second = run_sweep(out, {1: (16,)}, ["relu"], [0, 1, 2], TrainConfig(**TINY), executor=pool, quiet=True)
    records = second.records
    assert records["arch1/relu/seed0"]["status"] == "done" and records["arch1/relu/seed0"]["action"] == "resumed"
    rewritten = json.loads((finished / "metrics.json").read_text())
    assert_same_blas_threads(finished)  # its start and its resume
    assert rewritten["test"] == original["test"] and rewritten["val"] == original["val"]
    assert records["arch1/relu/seed1"]["status"] == "done" and records["arch1/relu/seed1"]["action"] == "started"
    assert_complete(out, ["arch1/relu/seed1"])
    error = records["arch1/relu/seed2"]["error"]
    assert records["arch1/relu/seed2"]["status"] == "failed"
    assert "unfinished run (metrics.json is not valid JSON" in error and "without checkpoint.npz" in error
    assert (damaged / "metrics.json").read_bytes() == b"\x00garbage" and (damaged / "model.npz").is_file()


def test_logs_and_notes_of_any_encoding(tmp_path):
    """An old train.log, sweep_run.json or FAILED that is not UTF-8 breaks nothing and is kept."""
    out = tmp_path / "sweep"
    run_dir = out / "arch1" / "relu" / "seed0"
    run_dir.mkdir(parents=True)
    old_log = b"--- latin-1 from another tool: caf\xe9 \xff\xfe\x80\n"
    (run_dir / "train.log").write_bytes(old_log)
    (run_dir / "sweep_run.json").write_bytes(b"\xff[not json")
    failed = out / "arch1" / "relu" / "seed1"
    failed.mkdir(parents=True)
    (failed / FAILED).write_bytes(b"OSError: caf\xe9 \x80\n\ntraceback")
    with ThreadPoolExecutor(max_workers=1) as pool:
        result = run_sweep(out, {1: (16,)}, ["relu"], [0, 1], TrainConfig(**TINY), executor=pool, retry_failed=False,
                           quiet=True)
    assert result.records["arch1/relu/seed0"]["status"] == "done"
    assert result.records["arch1/relu/seed1"] == {"key": "arch1/relu/seed1", "status": "failed",
                                                  "error": "OSError: caf\ufffd \ufffd", "retried": False}
    log = (run_dir / "train.log").read_bytes()
    assert log.startswith(old_log) and b" started on " in log[len(old_log):] and b"done: test accuracy" in log
    assert [a["status"] for a in attempts(run_dir)] == ["done"]
    assert_complete(out, ["arch1/relu/seed0"])


def test_bit_comparisons_check_the_blas_thread_count(tmp_path):
    """assert_same_blas_threads refuses runs that ran, or resumed, at other thread counts."""

    def folder(name, threads, resumes=(), sweep=()):
        run_dir = tmp_path / name
        run_dir.mkdir()
        config = {"environment": {"blas": {"threads": threads}},
                  "resumes": [{"environment": {"blas": {"threads": t}}} for t in resumes]}
        (run_dir / "config.json").write_text(json.dumps(config))
        if sweep:
            (run_dir / "sweep_run.json").write_text(json.dumps([{"status": "done", "blas_threads": t} for t in sweep]))
        return run_dir

    one, also_one = folder("one", 1, resumes=[1], sweep=[1, 1]), folder("also_one", 1)
    assert_same_blas_threads(one, also_one)
    for other in [folder("two", 2), folder("resumed_at_two", 1, resumes=[2]), folder("sweep_at_two", 1, sweep=[1, 2])]:
        with pytest.raises(AssertionError, match="different BLAS thread counts"):
            assert_same_blas_threads(one, other)
    with pytest.raises(AssertionError, match="different BLAS thread counts"):
        assert_same_blas_threads(folder("unknown", None))
    (tmp_path / "unrecorded").mkdir()
    (tmp_path / "unrecorded" / "config.json").write_text("{}")
    with pytest.raises(pytest.fail.Exception, match="records no BLAS thread count"):
        assert_same_blas_threads(one, tmp_path / "unrecorded")
    # What train records is the count in force, so an in-process run can be matched to a worker's.
    with threadpool_limits(limits=1, user_api="blas"):
        assert runfolder.environment()["blas"]["threads"] == 1


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


@pytest.mark.parametrize("scheduler", ["garbage", "tcp://127.0.0.1", "tcp://127.0.0.1:99999", "foo://127.0.0.1:8786",
                                       "tcp://host name:8786", "tcp://127.0.0.1:8786\nsecond line", "x" * 5000])
def test_dask_scheduler_address_is_checked_before_anything(scheduler, tmp_path, capsys):
    pytest.importorskip("distributed", reason="the dask extra is not installed")
    out = tmp_path / "sweep"
    assert main(["sweep", "--archs", "1", "--models", "relu", "--seeds", "0", *CLI_TINY, "--out", str(out),
                 "--executor", "dask", "--scheduler", scheduler]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a Dask scheduler address" in err[0] and len(err[0]) < 400, err
    assert not out.exists()


def test_dask_scheduler_that_does_not_answer_is_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("distributed", reason="the dask extra is not installed")
    import smartmixed_np.experiments.sweep as sweep_module

    monkeypatch.setattr(sweep_module, "_DASK_CONNECT_TIMEOUT_S", 1)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["sweep", "--archs", "1", "--models", "relu", "--seeds", "0", *CLI_TINY, "--out", str(tmp_path / "sweep"),
                 "--executor", "dask", "--scheduler", f"tcp://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}" in err[0], err
    assert main(["sweep", "--archs", "1", "--out", str(tmp_path / "b"), "--scheduler", "tcp://127.0.0.1:8786"]) == 2
    assert "--scheduler is for --executor dask only" in capsys.readouterr().err


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
