"""Tests for smartmixed_np/data/download.py against a real HTTP server on 127.0.0.1.

The server serves IDX files generated here, under URL prefixes that choose how it
misbehaves:

    /good/<file>       the file
    /corrupt/<file>    the file with one byte changed (wrong MD5)
    /truncated/<file>  Content-Length of the whole file, half the bytes, then close
    anything else      404
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from smartmixed_np.data import download
from smartmixed_np.data.download import (
    IDX_FILES,
    RemoteDataset,
    default_cache_dir,
    ensure_dataset,
    fetch,
    file_md5,
)
from smartmixed_np.data.idx import read_idx, write_idx
from smartmixed_np.errors import DataError


def make_idx_files(folder: Path, n: int = 30) -> dict[str, bytes]:
    """The four files of a tiny MNIST-like dataset: name -> gzip bytes."""
    rng = np.random.default_rng(1)
    arrays = {
        IDX_FILES[0]: rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
        IDX_FILES[1]: rng.integers(0, 10, size=n, dtype=np.uint8),
        IDX_FILES[2]: rng.integers(0, 256, size=(n // 3, 28, 28), dtype=np.uint8),
        IDX_FILES[3]: rng.integers(0, 10, size=n // 3, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    return {name: write_idx(folder / name, array).read_bytes() for name, array in arrays.items()}


class FileServer:
    """A ThreadingHTTPServer in a background thread, serving ``files`` by URL prefix."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the name http.server requires)
                server.requests.append(self.path)
                mode, _, name = self.path.strip("/").partition("/")
                body = server.files.get(name)
                if body is None or mode not in ("good", "corrupt", "truncated"):
                    self.send_error(404, "File not found")
                    return
                if mode == "corrupt":
                    body = body[:-1] + bytes([body[-1] ^ 0xFF])
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "truncated":
                    # Promise the whole file, send half, hang up.
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):  # keep the test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        # A short poll interval: shutdown() waits for one poll, 0.5 s by default.
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{mode}/"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture()
def served(tmp_path):
    """(server, dataset spec with the served files' MD5s)."""
    files = make_idx_files(tmp_path / "source")
    spec = RemoteDataset(
        name="toy",
        md5={name: hashlib.md5(body).hexdigest() for name, body in files.items()},
        mirrors=(),
    )
    with FileServer(files) as server:
        yield server, spec


@pytest.fixture()
def closed_port_url():
    """A URL on a port that nothing listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(autouse=True)
def no_real_cache(tmp_path, monkeypatch):
    """Never touch the user's real cache or data folders."""
    monkeypatch.setenv("SMARTMIXED_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SMARTMIXED_DATA", raising=False)


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# fetch ---------------------------------------------------------------------------------


def test_fetch_downloads_and_verifies(served, tmp_path):
    server, spec = served
    name = IDX_FILES[1]
    dest = tmp_path / "out" / name
    dest.parent.mkdir()
    assert fetch(server.url("good") + name, dest, spec.md5[name], timeout=5) == dest
    assert file_md5(dest) == spec.md5[name]
    assert listing(dest.parent) == [name]


def test_fetch_checksum_mismatch_leaves_nothing(served, tmp_path):
    server, spec = served
    name = IDX_FILES[0]
    dest = tmp_path / "out" / name
    dest.parent.mkdir()
    with pytest.raises(DataError) as info:
        fetch(server.url("corrupt") + name, dest, spec.md5[name], timeout=5)
    message = str(info.value)
    assert "checksum mismatch" in message and spec.md5[name] in message and "/corrupt/" in message
    assert listing(dest.parent) == []


def test_fetch_truncated_transfer_leaves_nothing(served, tmp_path):
    server, spec = served
    name = IDX_FILES[0]
    dest = tmp_path / "out" / name
    dest.parent.mkdir()
    with pytest.raises(DataError, match="transfer cut short: received [0-9]+ of [0-9]+ bytes"):
        fetch(server.url("truncated") + name, dest, spec.md5[name], timeout=5)
    assert listing(dest.parent) == []


def test_fetch_failure_keeps_an_existing_file(served, tmp_path):
    server, spec = served
    dest = tmp_path / IDX_FILES[1]
    dest.write_bytes(b"earlier content")
    with pytest.raises(DataError, match="HTTP error 404"):
        fetch(server.url("missing") + IDX_FILES[1], dest, spec.md5[IDX_FILES[1]], timeout=5)
    assert dest.read_bytes() == b"earlier content"
    assert listing(tmp_path) == sorted([IDX_FILES[1], "source"])


def test_fetch_refused_connection(closed_port_url, tmp_path):
    with pytest.raises(DataError, match="cannot connect"):
        fetch(closed_port_url + "x.gz", tmp_path / "x.gz", "0" * 32, timeout=5)
    assert listing(tmp_path) == []


# ensure_dataset ------------------------------------------------------------------------


def test_ensure_dataset_downloads_all_files(served, tmp_path):
    server, spec = served
    folder = ensure_dataset(spec, cache_dir=tmp_path / "cache", mirrors=[server.url("good")], timeout=5)
    assert folder == tmp_path / "cache" / "toy"
    assert listing(folder) == sorted(IDX_FILES)
    for name in IDX_FILES:
        assert file_md5(folder / name) == spec.md5[name]
    assert read_idx(folder / IDX_FILES[0]).shape == (30, 28, 28)


def test_ensure_dataset_uses_default_cache_from_environment(served, tmp_path):
    server, spec = served
    folder = ensure_dataset(spec, mirrors=[server.url("good")], timeout=5)
    assert folder == tmp_path / "cache" / "toy"


def test_bad_mirrors_are_skipped(served, tmp_path, closed_port_url):
    server, spec = served
    mirrors = [closed_port_url, server.url("missing"), server.url("corrupt"), server.url("truncated"), server.url("good")]
    folder = ensure_dataset(spec, cache_dir=tmp_path / "cache", mirrors=mirrors, timeout=5)
    assert listing(folder) == sorted(IDX_FILES)
    # Every file went through the three bad HTTP mirrors before the good one.
    assert sum(path.startswith("/good/") for path in server.requests) == 4
    assert sum(path.startswith("/truncated/") for path in server.requests) == 4


def test_all_mirrors_dead_says_how_to_use_a_local_copy(served, tmp_path, closed_port_url):
    server, spec = served
    mirrors = [closed_port_url, server.url("missing"), server.url("corrupt")]
    with pytest.raises(DataError) as info:
        ensure_dataset(spec, cache_dir=tmp_path / "cache", mirrors=mirrors, timeout=5)
    message = str(info.value)
    assert "\n" not in message
    assert IDX_FILES[0] in message
    for url in mirrors:
        assert url in message
    assert "HTTP error 404" in message and "checksum mismatch" in message
    assert "--data-dir" in message and "SMARTMIXED_DATA" in message
    # Nothing half-downloaded anywhere.
    assert listing(tmp_path / "cache" / "toy") == []


def test_cached_files_are_verified_not_downloaded_again(served, tmp_path):
    server, spec = served
    cache = tmp_path / "cache"
    ensure_dataset(spec, cache_dir=cache, mirrors=[server.url("good")], timeout=5)
    before = len(server.requests)
    ensure_dataset(spec, cache_dir=cache, mirrors=[server.url("good")], timeout=5)
    assert len(server.requests) == before


def test_corrupt_cached_file_is_downloaded_again(served, tmp_path):
    server, spec = served
    cache = tmp_path / "cache"
    folder = ensure_dataset(spec, cache_dir=cache, mirrors=[server.url("good")], timeout=5)
    (folder / IDX_FILES[2]).write_bytes(b"half a file")
    before = len(server.requests)
    ensure_dataset(spec, cache_dir=cache, mirrors=[server.url("good")], timeout=5)
    assert server.requests[before:] == ["/good/" + IDX_FILES[2]]
    assert file_md5(folder / IDX_FILES[2]) == spec.md5[IDX_FILES[2]]


def test_corrupt_cached_file_with_no_mirror_is_reported(served, tmp_path, closed_port_url):
    server, spec = served
    folder = ensure_dataset(spec, cache_dir=tmp_path / "cache", mirrors=[server.url("good")], timeout=5)
    (folder / IDX_FILES[3]).write_bytes(b"bad")
    with pytest.raises(DataError, match="wrong checksum and was removed"):
        ensure_dataset(spec, cache_dir=tmp_path / "cache", mirrors=[closed_port_url], timeout=5)


def test_unknown_dataset_name():
    with pytest.raises(DataError, match="downloadable: mnist, fashion-mnist, kmnist"):
        ensure_dataset("cifar10")


# registry and cache folder -------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "kmnist"])
def test_registry_lists_the_four_files_with_md5s(name):
    spec = download.REGISTRY[name]
    assert spec.files == IDX_FILES
    assert all(len(md5) == 32 and int(md5, 16) >= 0 for md5 in spec.md5.values())
    assert spec.mirrors and all(url.endswith("/") for url in spec.mirrors)


def test_registry_has_the_official_mnist_md5s():
    assert download.REGISTRY["mnist"].md5 == {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }


def test_default_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("SMARTMIXED_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("SMARTMIXED_CACHE")
    assert default_cache_dir() == tmp_path / "xdg" / "smartmixed_np"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "smartmixed_np"


def test_progress_is_reported_on_stderr(served, tmp_path, capsys):
    server, spec = served
    ensure_dataset(spec, cache_dir=tmp_path / "cache", mirrors=[server.url("good")], progress=True, timeout=5)
    err = capsys.readouterr().err
    assert "100%" in err and err.count("done") == 4
