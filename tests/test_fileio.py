"""Atomic writes under faults: a full disk, a read-only mount, a path through a file; strict JSON."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from smartmixed_np import fileio
from smartmixed_np.errors import UserError
from smartmixed_np.fileio import WriteError, remove_stale_parts, write_bytes, write_json, write_text


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str = "64k"):
    """Mount a tmpfs of ``size`` on ``folder`` (root only); skip when mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode(errors='replace').strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _parts(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".part")]


def test_full_disk_is_one_line_and_keeps_the_earlier_files(tmp_path):
    with small_tmpfs(tmp_path / "full", "64k") as folder:
        write_text(folder / "first.txt", "kept\n")
        with pytest.raises(WriteError) as caught:
            write_bytes(folder / "big.bin", os.urandom(256 * 1024))
        message = str(caught.value)
        assert "No space left on device" in message and "big.bin" in message and "\n" not in message
        assert isinstance(caught.value, UserError)
        assert (folder / "first.txt").read_text() == "kept\n"
        assert not (folder / "big.bin").exists() and _parts(folder) == []


def test_full_disk_injected(tmp_path, monkeypatch):
    """Where no tmpfs can be mounted: the same promise with ENOSPC raised by fsync."""
    write_text(tmp_path / "first.txt", "kept\n")

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio.os, "fsync", no_space)
    with pytest.raises(WriteError, match="No space left on device"):
        write_json(tmp_path / "second.json", {"a": 1})
    assert (tmp_path / "first.txt").read_text() == "kept\n" and not (tmp_path / "second.json").exists()
    assert _parts(tmp_path) == []


def test_read_only_mount(tmp_path):
    with small_tmpfs(tmp_path / "ro", "64k") as folder:
        write_text(folder / "old.txt", "old\n")
        remounted = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True)
        if remounted.returncode != 0:
            pytest.skip("cannot remount read-only here")
        with pytest.raises(WriteError, match="read-only"):
            write_text(folder / "old.txt", "new\n")
        assert (folder / "old.txt").read_text() == "old\n"


@pytest.mark.parametrize("make_target, reason", [
    (lambda base: base / "a_file" / "x.json", "Not a directory"),
    (lambda base: base / ("n" * 300), "File name too long"),
    (lambda base: base / "missing" / "x.json", "No such file"),
])
def test_bad_destinations_are_one_line(tmp_path, make_target, reason):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(WriteError, match=reason) as caught:
        write_json(make_target(tmp_path), {"a": 1})
    assert "\n" not in str(caught.value)


def test_json_is_strict_with_a_note(tmp_path):
    path = write_json(tmp_path / "m.json", {"test": {"loss": float("nan"), "accuracy": 0.5}, "curve": [1.0, float("-inf")]})
    text = path.read_text()

    def refuse(name):
        raise ValueError(name)

    data = json.loads(text, parse_constant=refuse)  # NaN/Infinity would raise here
    assert data["test"] == {"loss": None, "accuracy": 0.5} and data["curve"] == [1.0, None]
    assert data["non_finite"] == ["test.loss was nan", "curve[1] was -inf"]
    assert "non_finite" not in json.loads(write_json(tmp_path / "ok.json", {"a": 1.0}).read_text())


def test_stale_parts_are_removed_and_nothing_else(tmp_path):
    for name in (".model.npz.ab12_x9q.part", ".metrics.json.k3j4l5m6.part"):
        (tmp_path / name).write_text("half")
    for name in ("model.npz", "notes.part", ".hidden", "x.part.txt"):
        (tmp_path / name).write_text("keep")
    removed = sorted(p.name for p in remove_stale_parts(tmp_path))
    assert removed == [".metrics.json.k3j4l5m6.part", ".model.npz.ab12_x9q.part"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "model.npz", "notes.part", "x.part.txt"]


def test_an_interrupted_write_leaves_the_old_file(tmp_path):
    write_text(tmp_path / "f.txt", "old\n")
    with pytest.raises(KeyboardInterrupt):
        with fileio.atomic_writer(tmp_path / "f.txt", "w") as file:
            file.write("new, half")
            raise KeyboardInterrupt
    assert (tmp_path / "f.txt").read_text() == "old\n" and _parts(tmp_path) == []


def test_a_device_fifo_or_folder_is_never_replaced(tmp_path):
    """As root, os.replace would put a file in place of /dev/null: refused instead."""
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "folder").mkdir()
    for target in (Path("/dev/null"), tmp_path / "pipe", tmp_path / "folder"):
        kind = target.stat().st_mode
        with pytest.raises(WriteError, match="not a regular file"):
            write_json(target, {"a": 1})
        assert target.stat().st_mode == kind
