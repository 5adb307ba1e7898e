"""The run folder: what makes it finished, and what a run records about its machine."""

from __future__ import annotations

import json

import pytest

from smartmixed_np.experiments import runfolder
from smartmixed_np.experiments.runfolder import determinism_mismatch, environment, finished_problem, run_state


def _finished(folder):
    folder.mkdir()
    (folder / "model.npz").write_bytes(b"PK\x03\x04rest")
    (folder / "model.json").write_text(json.dumps({"config": {}}))
    (folder / "history.csv").write_text("epoch\n1\n")
    (folder / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.9}}))
    return folder


def test_a_complete_folder_is_finished(tmp_path):
    folder = _finished(tmp_path / "run")
    assert finished_problem(folder) is None and run_state(folder) == "finished"


@pytest.mark.parametrize("name, content, problem", [
    ("metrics.json", None, "metrics.json is missing"),
    ("model.npz", None, "model.npz is missing"),
    ("model.json", None, "model.json is missing"),
    ("history.csv", None, "history.csv is missing"),
    ("metrics.json", b"\x00garbage{", "metrics.json is not valid JSON"),
    ("metrics.json", b"[1, 2]", "metrics.json is not a JSON object"),
    ("metrics.json", b'{"loss": NaN}', "metrics.json is not valid JSON"),
    ("metrics.json", b"\xff\xfe{}", "metrics.json is not valid JSON"),
    ("metrics.json", b"[" * 100_000 + b"]" * 100_000, "metrics.json is not"),
    ("model.json", b"{", "model.json is not valid JSON"),
    ("model.npz", b"not a zip", "model.npz is not an .npz archive"),
])
def test_an_incomplete_or_garbage_folder_is_not_finished(tmp_path, name, content, problem):
    folder = _finished(tmp_path / "run")
    if content is None:
        (folder / name).unlink()
    else:
        (folder / name).write_bytes(content)
    assert problem in finished_problem(folder)
    assert run_state(folder) == "new"
    (folder / runfolder.CHECKPOINT).write_bytes(b"PK\x03\x04")
    assert run_state(folder) == "resumable"


def test_environment_records_what_decides_the_bits():
    env = environment()
    assert env["blas"]["threads"] >= 1 and env["blas"]["library"]
    assert isinstance(env["cpu"]["vector_extensions"], list)
    assert env["versions"]["numpy"]
    json.dumps(env, allow_nan=False)


def test_a_different_thread_count_is_named():
    from threadpoolctl import threadpool_limits

    now = environment()
    with threadpool_limits(limits=1, user_api="blas"):
        one = environment()
    assert one["blas"]["threads"] == 1
    if now["blas"]["threads"] == 1:
        pytest.skip("this machine runs one BLAS thread; no other count to compare")
    assert "BLAS threads 1 then" in determinism_mismatch(one, now)
    assert determinism_mismatch(now, now) is None and determinism_mismatch(None, now) is None


def test_compiled_loops_on_then_off_are_named():
    now = environment()
    then = {**now, "compiled_loops": "numba 0.0.1"}
    off = {**now, "compiled_loops": "off (SMARTMIXED_JIT=0)"}
    assert determinism_mismatch(then, off) == "compiled loops numba 0.0.1 then, off (SMARTMIXED_JIT=0) now"
    assert determinism_mismatch({k: v for k, v in now.items() if k != "compiled_loops"}, off) is None  # not recorded


# ------------------------------------------------------------------ the format's readers and writers
@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    from smartmixed_np.experiments.train import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    config = TrainConfig(dataset="spirals", train_limit=128, hidden=(8,), epochs=2, transition_epoch=1, batch_size=64,
                         quiet=True, progress=False, out=str(out))
    return train(config)


def test_the_readers_read_back_what_a_run_writes(real_run):
    from smartmixed_np.experiments.checkpoint import load_model

    folder = real_run.run_dir
    config = runfolder.read_config(folder)
    assert config["format"] == runfolder.RUN_FOLDER_FORMAT == "smartmixed_np.run/1"
    assert config["dataset"] == "spirals" and config["hidden"] == [8]
    assert runfolder.read_metrics(folder) == json.loads((folder / runfolder.METRICS).read_text())
    assert runfolder.read_model_description(folder) == json.loads((folder / runfolder.MODEL_JSON).read_text())
    history = runfolder.read_history(folder)
    assert len(history) == len(real_run.history) == 2
    columns = list(history[0])
    for read, kept in zip(history, real_run.history):
        # Every row has every column (a cell a row lacks is empty); numbers round-trip exactly.
        assert list(read) == columns and set(kept) <= set(columns)
        assert read == {k: (None if kept.get(k) is None else float(kept[k])) for k in columns}
    choices = runfolder.read_choices(folder)
    assert choices == load_model(folder).choice_names() and [len(layer) for layer in choices] == [8]
    # The CSV writers give back the files byte for byte.
    assert runfolder.choices_csv(choices) == (folder / runfolder.CHOICES).read_text()
    assert runfolder.history_csv(real_run.history) == (folder / runfolder.HISTORY).read_text()


def test_train_keeps_history_from_csv(real_run):
    from smartmixed_np.experiments.train import history_from_csv

    assert history_from_csv(real_run.run_dir / runfolder.HISTORY) == runfolder.read_history(real_run.run_dir)


def test_the_csv_writers_write_what_they_always_wrote():
    # Columns in order of first appearance (not sorted); a missing or None cell is empty.
    history = [{"val_loss": 0.5, "epoch": 1}, {"epoch": 2, "val_loss": None, "share.L0.relu": 0.25}]
    assert runfolder.history_csv(history) == "val_loss,epoch,share.L0.relu\n0.5,1,\n,2,0.25\n"
    assert runfolder.choices_csv([["relu", "tanh"], ["elu"]]) == (
        "layer,neuron,activation\n0,0,relu\n0,1,tanh\n1,0,elu\n")


def test_choices_are_read_in_neuron_order_as_the_report_reads_them(tmp_path):
    from smartmixed_np.report.choices import _choices_by_layer

    tmp_path.joinpath("choices.csv").write_text(
        "layer,neuron,activation\n1,1,gelu\n0,2,elu\n1,0,relu\n0,0,tanh\n0,1,relu\n")
    expected = [["tanh", "relu", "elu"], ["relu", "gelu"]]
    assert runfolder.read_choices(tmp_path) == expected
    assert _choices_by_layer(tmp_path) == expected


def test_a_folder_without_the_format_field_still_loads(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"dataset": "spirals", "hidden": [8]}))
    assert runfolder.read_config(tmp_path) == {"dataset": "spirals", "hidden": [8]}


def test_absent_files_are_empty_when_not_required(tmp_path):
    assert runfolder.read_json(tmp_path, "metrics.json", required=False) == {}
    assert runfolder.read_history(tmp_path, required=False) == []
    assert runfolder.read_choices(tmp_path, required=False) == []
    for read in (runfolder.read_config, runfolder.read_metrics, runfolder.read_history, runfolder.read_choices):
        with pytest.raises(runfolder.RunFolderError, match="no such file") as caught:
            read(tmp_path)
        assert caught.value.kind == "missing"


def _one_line_error(call, name):
    with pytest.raises(runfolder.RunFolderError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and name in message and caught.value.kind == "corrupt"
    assert isinstance(caught.value, ValueError)
    return message


@pytest.mark.parametrize("content, reason", [
    (b"\xff\xfe{}", "not UTF-8"),
    (b"garbage", "not valid JSON"),
    (b'{"loss": NaN}', "non-standard constant NaN"),
    (b'{"loss": -Infinity}', "non-standard constant -Infinity"),
    (b"[" * 100_000 + b"]" * 100_000, "nested more than 64 deep"),
    (b"[1, 2]", "not a JSON object"),
    (b'"text"', "not a JSON object"),
])
def test_a_hostile_json_file_is_one_line_naming_it(tmp_path, content, reason):
    (tmp_path / "metrics.json").write_bytes(content)
    assert reason in _one_line_error(lambda: runfolder.read_metrics(tmp_path, required=False), "metrics.json")


def test_a_json_file_past_the_bound_is_refused_before_parsing(tmp_path, monkeypatch):
    monkeypatch.setattr(runfolder, "MAX_FILE_BYTES", 16)
    (tmp_path / "config.json").write_text(json.dumps({"dataset": "x" * 32}))
    assert "larger than" in _one_line_error(lambda: runfolder.read_config(tmp_path), "config.json")


@pytest.mark.parametrize("read, name, content, reason", [
    (runfolder.read_history, "history.csv", b"epoch,loss\n1,abc\n", "line 2"),
    (runfolder.read_history, "history.csv", b"epoch\n\xff\n", "not UTF-8"),
    (runfolder.read_choices, "choices.csv", b"layer,neuron,activation\n0,x,relu\n", "line 2"),
    (runfolder.read_choices, "choices.csv", b"layer,activation\n0,relu\n", "line 2"),
    (runfolder.read_choices, "choices.csv", b"layer,neuron,activation\n0,0\n", "line 2"),
    (runfolder.read_choices, "choices.csv", b"layer,neuron,activation\n0,0," + b"x" * 200_000 + b"\n", "not valid CSV"),
])
def test_a_hostile_csv_file_is_one_line_naming_it(tmp_path, read, name, content, reason):
    (tmp_path / name).write_bytes(content)
    assert reason in _one_line_error(lambda: read(tmp_path), name)


@pytest.mark.parametrize("name", ["config.json", "metrics.json", "model.json", "history.csv", "choices.csv"])
def test_a_fifo_or_folder_in_place_of_a_run_file_is_refused_at_once(tmp_path, name):
    """Every reader opens regular files only: a FIFO would block a plain open() forever."""
    import os
    import signal

    readers = {"config.json": runfolder.read_config, "metrics.json": runfolder.read_metrics,
               "model.json": runfolder.read_model_description, "history.csv": runfolder.read_history,
               "choices.csv": runfolder.read_choices}
    def blocked(signum, frame):
        raise TimeoutError(f"reading a FIFO {name} blocked")

    os.mkfifo(tmp_path / name)
    previous = signal.signal(signal.SIGALRM, blocked)  # a blocking open would hang: fail instead
    signal.alarm(10)
    try:
        with pytest.raises(runfolder.RunFolderError, match="is a FIFO") as caught:
            readers[name](tmp_path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert caught.value.kind == "unreadable" and "\n" not in str(caught.value)
    os.unlink(tmp_path / name)
    os.mkdir(tmp_path / name)
    with pytest.raises(runfolder.RunFolderError, match="is a folder"):
        readers[name](tmp_path)
