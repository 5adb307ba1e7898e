"""The run folder: what makes it finished, and what a run records about its machine."""

from __future__ import annotations

import json

import pytest

from smartmixed_np import runfolder
from smartmixed_np.runfolder import determinism_mismatch, environment, finished_problem, run_state


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
