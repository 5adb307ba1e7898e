"""Tests for smartmixed_np/data/download.py against a real HTTP server on 127.0.0.1.

The server serves IDX files generated here, under URL prefixes that choose how it
misbehaves:

    /good/<file>       the file
    /corrupt/<file>    the file with one byte changed (wrong MD5)
    /truncated/<file>  Content-Length of the whole file, half the bytes, then close
    /trickle/<file>    the headers at once, then the body one byte every ``interval`` s
    /slowhead/<file>   even the status line one byte every ``interval`` s
    /nolength/<file>   the file without a Content-Length header
    anything else      404

A few tests need faults that a server cannot cause (a read-only file system, a full
disk): where the machine allows it they use a real read-only bind mount, in a private
mount namespace (``unshare -m``) so that nothing outside the test sees it; otherwise the
operating system's error is injected where the file is written.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
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
    parse_mirrors,
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

    def __init__(self, files: dict[str, bytes], interval: float = 0.5):
        self.files = files
        self.requests: list[str] = []
        self.interval = interval
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the name http.server requires)
                server.requests.append(self.path)
                mode, _, name = self.path.strip("/").partition("/")
                body = server.files.get(name)
                if body is None or mode not in ("good", "corrupt", "truncated", "trickle", "slowhead", "nolength"):
                    self.send_error(404, "File not found")
                    return
                if mode == "nolength":  # HTTP/1.0 style: the body ends when the connection does
                    self.close_connection = True
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if mode == "slowhead":
                    self.trickle(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                    return
                if mode == "corrupt":
                    body = body[:-1] + bytes([body[-1] ^ 0xFF])
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "trickle":
                    self.trickle(body)
                    return
                if mode == "truncated":
                    # Promise the whole file, send half, hang up.
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def trickle(self, data: bytes) -> None:
                """Send ``data`` one byte every ``interval`` s, until the client hangs up."""
                self.close_connection = True
                try:
                    for index in range(len(data)):
                        self.wfile.write(data[index : index + 1])
                        self.wfile.flush()
                        if server.stopping.wait(server.interval):
                            return
                except OSError:  # the client gave up: what the tests want
                    return

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
        self.stopping.set()
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
    monkeypatch.delenv("SMARTMIXED_MIRROR", raising=False)


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


# deadline and rate ---------------------------------------------------------------------


def test_a_trickling_body_is_abandoned_at_the_deadline(served, tmp_path):
    """One byte every 0.5 s never trips the 5 s read timeout; the 1.5 s deadline ends it."""
    server, spec = served
    name = IDX_FILES[0]
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        fetch(server.url("trickle") + name, tmp_path / name, spec.md5[name], timeout=5, deadline=1.5, min_rate=0)
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert "1.5 s deadline" in message and "/trickle/" in message and "\n" not in message
    assert 1.4 < elapsed < 4, elapsed
    assert listing(tmp_path) == ["source"]


def test_a_trickling_status_line_is_abandoned_at_the_deadline(served, tmp_path):
    """The deadline holds before the headers are complete too (the socket is shut down)."""
    server, spec = served
    server.interval = 0.2
    name = IDX_FILES[1]
    start = time.monotonic()
    with pytest.raises(DataError, match="1 s deadline"):
        fetch(server.url("slowhead") + name, tmp_path / name, spec.md5[name], timeout=5, deadline=1.0, min_rate=0)
    assert time.monotonic() - start < 3
    assert listing(tmp_path) == ["source"]


def test_a_transfer_below_the_minimum_rate_is_abandoned(served, tmp_path, monkeypatch):
    server, spec = served
    server.interval = 0.1
    monkeypatch.setattr(download, "_RATE_GRACE_S", 0.5)
    name = IDX_FILES[0]
    start = time.monotonic()
    # The deadline is only a backstop here: were the rate not checked, the test would
    # fail at it instead of hanging.
    with pytest.raises(DataError, match=r"too slow, abandoned: [0-9]+ bytes in [0-9]+ s \(less than 1000 bytes/s\)"):
        fetch(server.url("trickle") + name, tmp_path / name, spec.md5[name], timeout=5, deadline=4, min_rate=1000)
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("mode", ["good", "nolength"])
def test_a_file_larger_than_any_dataset_file_is_refused(served, tmp_path, monkeypatch, mode):
    """Refused by its Content-Length when announced, else counted as it arrives."""
    server, spec = served
    name = IDX_FILES[0]
    monkeypatch.setattr(download, "_MAX_DOWNLOAD_BYTES", 1000)
    expected = "announces [0-9]+ bytes, more than 1000" if mode == "good" else "more than 1000 bytes received"
    with pytest.raises(DataError, match=expected):
        fetch(server.url(mode) + name, tmp_path / name, spec.md5[name], timeout=5)
    assert listing(tmp_path) == ["source"]


def test_a_stalled_mirror_is_not_tried_again_for_the_other_files(served, tmp_path):
    server, spec = served
    mirrors = [server.url("trickle"), server.url("good")]
    folder = ensure_dataset(spec, cache_dir=tmp_path / "cache", mirrors=mirrors, timeout=5, deadline=0.6, min_rate=0)
    assert listing(folder) == sorted(IDX_FILES)
    assert sum(path.startswith("/trickle/") for path in server.requests) == 1
    assert sum(path.startswith("/good/") for path in server.requests) == 4


def test_a_stalled_only_mirror_fails_the_dataset_at_the_deadline(served, tmp_path):
    server, spec = served
    with pytest.raises(DataError) as info:
        ensure_dataset(spec, cache_dir=tmp_path / "cache", mirrors=[server.url("trickle")], deadline=0.5, min_rate=0)
    message = str(info.value)
    assert "0.5 s deadline" in message and "\n" not in message
    # The first file fails, and that ends the dataset: nothing else is asked for.
    assert server.requests == ["/trickle/" + IDX_FILES[0]]


# mirrors: malformed URLs, the environment variable -----------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "nonsense/",
        "htp://example.org/mnist/",
        "http://[::1/mnist/",
        "http://example.org:port/mnist/",
        "http://example.org:99999/mnist/",
        "http:///mnist/",
        "http://example.org/\x00/",
    ],
)
def test_a_malformed_mirror_url_is_one_line(served, tmp_path, url):
    server, spec = served
    with pytest.raises(DataError) as info:
        ensure_dataset(spec, cache_dir=tmp_path / "cache", mirrors=[url], timeout=5)
    message = str(info.value)
    assert message.startswith("mirror: ") and repr(url) in message and "\n" not in message
    assert server.requests == []


@pytest.mark.parametrize("url", ["nonsense", "http://[::1/x", "http://127.0.0.1:port/x", "http://127.0.0.1/\x7f"])
def test_fetch_of_a_malformed_url_is_a_data_error(tmp_path, url):
    """Without the mirror check in front, fetch itself turns urllib's ValueError into one line."""
    with pytest.raises(DataError) as info:
        fetch(url, tmp_path / "x.gz", "0" * 32, timeout=5)
    assert type(info.value) is not ValueError and "\n" not in str(info.value)
    assert listing(tmp_path) == []


def test_parse_mirrors():
    assert parse_mirrors("https://a.example/x/") == ("https://a.example/x/",)
    assert parse_mirrors(" https://a.example/x/,file:///srv/mnist/  ftp://b.example/\n") == (
        "https://a.example/x/",
        "file:///srv/mnist/",
        "ftp://b.example/",
    )
    assert parse_mirrors(["https://a.example/, https://b.example/"]) == ("https://a.example/", "https://b.example/")
    assert parse_mirrors([]) == ()
    with pytest.raises(DataError, match="SMARTMIXED_MIRROR: no URL given"):
        parse_mirrors(" , ", "SMARTMIXED_MIRROR")
    with pytest.raises(DataError, match="SMARTMIXED_MIRROR: 'www.example.org/mnist/' is not a download URL"):
        parse_mirrors("https://ok.example/ www.example.org/mnist/", "SMARTMIXED_MIRROR")


def test_mirrors_from_the_environment_variable(served, tmp_path, monkeypatch, closed_port_url):
    server, spec = served
    monkeypatch.setenv("SMARTMIXED_MIRROR", f"{closed_port_url}, {server.url('good')}")
    folder = ensure_dataset(spec, cache_dir=tmp_path / "cache", timeout=5)
    assert listing(folder) == sorted(IDX_FILES)
    assert sum(path.startswith("/good/") for path in server.requests) == 4
    # The mirrors argument wins over the environment variable.
    (folder / IDX_FILES[0]).unlink()
    with pytest.raises(DataError, match="/corrupt/"):
        ensure_dataset(spec, cache_dir=tmp_path / "cache", mirrors=[server.url("corrupt")], timeout=5)


def test_a_malformed_environment_mirror_is_named(served, tmp_path, monkeypatch):
    server, spec = served
    monkeypatch.setenv("SMARTMIXED_MIRROR", "ftp//nowhere")
    with pytest.raises(DataError, match="^SMARTMIXED_MIRROR: 'ftp//nowhere' is not a download URL"):
        ensure_dataset(spec, cache_dir=tmp_path / "cache", timeout=5)


def test_dataset_placeholder_in_a_mirror(served, tmp_path):
    """``{dataset}`` in a base URL stands for the dataset's name (here a server prefix)."""
    server, spec = served
    spec = RemoteDataset(name="good", md5=spec.md5, mirrors=())
    base = server.url("good").replace("/good/", "/{dataset}/")
    folder = ensure_dataset(spec, cache_dir=tmp_path / "cache", mirrors=base, timeout=5)
    assert listing(folder) == sorted(IDX_FILES)
    assert server.requests == ["/good/" + name for name in IDX_FILES]


# a cache that cannot be written ------------------------------------------------------------


def test_a_folder_where_a_downloaded_file_belongs(served, tmp_path):
    server, spec = served
    target = tmp_path / "cache" / "toy" / IDX_FILES[2]
    target.mkdir(parents=True)
    with pytest.raises(DataError) as info:
        ensure_dataset(spec, cache_dir=tmp_path / "cache", mirrors=[server.url("good")], timeout=5)
    message = str(info.value)
    assert message.startswith(f"{target}: is a folder") and "SMARTMIXED_CACHE" in message and "\n" not in message
    assert server.requests == ["/good/" + name for name in IDX_FILES[:2]]  # refused before downloading it
    with pytest.raises(DataError, match="is a folder"):
        fetch(server.url("good") + IDX_FILES[2], target, spec.md5[IDX_FILES[2]], timeout=5)


@pytest.mark.parametrize("kind", ["named pipe", "character device"])
def test_a_cache_file_that_is_not_a_regular_file(served, tmp_path, kind):
    """A FIFO would hang the checksum, /dev/zero would never end it: both are refused at once."""
    server, spec = served
    target = tmp_path / "cache" / "toy" / IDX_FILES[0]
    target.parent.mkdir(parents=True)
    if kind == "named pipe":
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/zero")
    with pytest.raises(DataError, match=f"^{target}: is a {kind}, where the downloaded file"):
        ensure_dataset(spec, cache_dir=tmp_path / "cache", mirrors=[server.url("good")], timeout=5)
    assert server.requests == []


def test_a_cache_folder_that_is_a_file(served, tmp_path):
    server, spec = served
    (tmp_path / "cache").write_text("not a folder")
    with pytest.raises(DataError, match="cannot create the download cache folder") as info:
        ensure_dataset(spec, cache_dir=tmp_path / "cache", mirrors=[server.url("good")], timeout=5)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "failure, reason",
    [("create", errno.EROFS), ("write", errno.ENOSPC)],
    ids=["read-only", "disk-full"],
)
def test_an_unwritable_cache_stops_at_once(served, tmp_path, monkeypatch, failure, reason):
    """The local side failing is reported in one line, and no other mirror is tried for it.

    The operating system's error is injected (tests run as root, for whom permissions
    do not stop a write; the real read-only mount is the test below).
    """
    server, spec = served
    real_writer = download.atomic_writer
    attempts = []

    class FailingFile:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            raise OSError(reason, os.strerror(reason))

    @contextlib.contextmanager
    def failing_writer(path, mode="wb"):
        attempts.append(path)
        if failure == "create":
            raise OSError(reason, os.strerror(reason), str(path))
        with real_writer(path, mode) as file:
            yield FailingFile(file)

    monkeypatch.setattr(download, "atomic_writer", failing_writer)
    with pytest.raises(DataError) as info:
        ensure_dataset(spec, cache_dir=tmp_path / "cache", mirrors=[server.url("good"), server.url("good")], timeout=5)
    message = str(info.value)
    expected = "the file system is read-only" if reason == errno.EROFS else "no space left on the device"
    assert message.startswith(str(tmp_path / "cache" / "toy" / IDX_FILES[0])) and expected in message
    assert "SMARTMIXED_CACHE" in message and "\n" not in message
    assert len(attempts) == 1 and len(server.requests) == (0 if failure == "create" else 1)
    assert listing(tmp_path / "cache" / "toy") == []


_READ_ONLY_CHILD = """
import sys
from smartmixed_np.data.download import RemoteDataset, ensure_dataset
from smartmixed_np.errors import DataError
spec = RemoteDataset(name="toy", md5={name: "0" * 32 for name in sys.argv[2:]}, mirrors=())
try:
    ensure_dataset(spec, cache_dir=sys.argv[1], mirrors=["http://127.0.0.1:9/"], timeout=5)
except DataError as error:
    print(error)
"""


def test_a_read_only_mount_as_cache(tmp_path):
    """A real read-only file system: a bind mount in a private mount namespace."""
    if not shutil.which("unshare") or not shutil.which("mount"):
        pytest.skip("needs unshare and mount")
    cache = tmp_path / "cache"
    (cache / "toy").mkdir(parents=True)
    probe = subprocess.run(["unshare", "-m", "mount", "--bind", "-o", "ro", str(cache), str(cache)], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount here: {probe.stderr.decode(errors='replace').strip()}")
    script = f'mount --bind -o ro "$1" "$1" && shift && exec "$@"'
    child = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", str(cache), sys.executable, "-c", _READ_ONLY_CHILD, str(cache), IDX_FILES[0]],
        capture_output=True, text=True, timeout=120,
    )
    assert child.returncode == 0, child.stderr
    message = child.stdout.strip()
    assert message.startswith(f"{cache / 'toy' / IDX_FILES[0]}: cannot write the downloaded file into the cache")
    assert "read-only" in message and "SMARTMIXED_CACHE" in message and "\n" not in message
    assert listing(cache / "toy") == []
