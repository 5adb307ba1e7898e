"""Downloading the MNIST-family datasets into a local cache, verified by MD5.

Each dataset is four gzip-compressed IDX files with the standard names
(:data:`IDX_FILES`), available from one or more mirrors. :func:`ensure_dataset`
makes sure all four are in the cache folder with the right MD5, downloading what is
missing or corrupt, mirror after mirror.

A download is atomic: :func:`fetch` streams into a temporary file next to the
destination and renames it into place only once the byte count and the MD5 are
right. A transfer cut off halfway, a wrong checksum or a Ctrl-C therefore leave no
file at the destination and no temporary file either.

A download is also bounded in time. ``timeout`` limits each wait (the connection, each
read); ``deadline`` limits the whole transfer of one file, which a server sending a
byte every few seconds would otherwise stretch without end, since no single read
ever waits long; and after the first few seconds a transfer slower than
``min_rate`` bytes per second on average is abandoned too. A mirror that could not be
reached, or missed the deadline or the rate, is not tried again for the dataset's
other files.

Which mirrors are tried, first match wins: the ``mirrors`` argument (``mirror=`` of
:func:`~smartmixed_np.data.load_dataset`, ``--mirror`` of the command line), then the
environment variable ``SMARTMIXED_MIRROR``, then the dataset's own mirrors listed in
:data:`REGISTRY`. A user's mirror is a base URL (``http``, ``https``, ``ftp`` or
``file``), or several separated by commas or whitespace; a file's URL is the base URL
followed by the file name, and ``{dataset}`` in a base URL stands for the dataset's name
(``https://example.org/data/{dataset}/``), so one setting can serve every dataset.

Every failure is a :class:`~smartmixed_np.errors.DataError` with a one-line message:
a malformed mirror URL, a dead mirror, and a cache that cannot be written (a
read-only file system, a full disk, a folder or a named pipe where a downloaded file
belongs). Machines without internet access cannot download; every failure message
says how to point the program at a local copy instead (``--data-dir DIR`` or the
``SMARTMIXED_DATA`` environment variable).

Where the mirrors and checksums come from:

* MNIST: the checksums of the original files (also listed by torchvision's
  ``torchvision/datasets/mnist.py``); mirrors: the PyTorch CI S3 bucket (torchvision),
  the CVDF Google Cloud Storage mirror (TensorFlow 1.x
  ``tensorflow/contrib/learn/python/learn/datasets/mnist.py``), and Yann LeCun's
  original site, which nowadays often refuses automated downloads.
* Fashion-MNIST: the checksums in the table of the README of
  ``zalandoresearch/fashion-mnist`` (the same as torchvision's); mirrors: the
  dataset's S3 website and the ``data/fashion/`` folder of that GitHub repository.
* KMNIST: the checksums from torchvision's ``mnist.py``; mirror: the CODH site given
  in the README of ``rois-codh/kmnist``.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import re
import socket
import stat
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, Union

from ..errors import DataError
from ..fileio import atomic_writer

__all__ = [
    "CACHE_ENV",
    "DATA_ENV",
    "DEFAULT_DEADLINE_S",
    "DEFAULT_MIN_RATE",
    "IDX_FILES",
    "MIRROR_ENV",
    "REGISTRY",
    "RemoteDataset",
    "default_cache_dir",
    "ensure_dataset",
    "fetch",
    "file_md5",
    "local_copy_hint",
    "parse_mirrors",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Environment variable naming a folder with one subfolder of data per dataset.
DATA_ENV = "SMARTMIXED_DATA"
#: Environment variable overriding the download cache folder.
CACHE_ENV = "SMARTMIXED_CACHE"
#: Environment variable naming the user's own mirror(s), tried instead of the dataset's.
MIRROR_ENV = "SMARTMIXED_MIRROR"

#: The four files of every MNIST-family dataset, in the order
#: (train images, train labels, test images, test labels).
IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

#: Seconds one file's transfer may take, all included. The largest file (MNIST's
#: training images, 9.9 MB) needs about 33 kB/s to arrive in time.
DEFAULT_DEADLINE_S = 300.0
#: Bytes per second below which a transfer is abandoned once it has run for
#: ``_RATE_GRACE_S``: far below any working connection, far above a trickle.
DEFAULT_MIN_RATE = 1024.0
# The start of a transfer (connection, TLS handshake, TCP slow start) is slow for
# innocent reasons; the average rate is judged only after this many seconds.
_RATE_GRACE_S = 10.0

# No file of the MNIST family comes near this (the largest, Fashion-MNIST's training
# images, is 26 MB); a server sending more is refused before it fills the disk.
_MAX_DOWNLOAD_BYTES = 1 << 28

_CHUNK = 1 << 16
_URL_SCHEMES = ("http", "https", "ftp", "file")


class _MirrorUnusable(DataError):
    """The mirror could not be reached or was too slow: skip it for the other files."""


class _CacheError(DataError):
    """The local side failed (cache not writable): no other mirror can help."""


@dataclass(frozen=True, eq=False)  # eq=False: compared and hashed by identity (md5 is a dict)
class RemoteDataset:
    """Where a dataset's files can be downloaded from and how to check them.

    Attributes:
        name: the dataset's name, also the name of its subfolder in the cache.
        md5: file name -> expected MD5 hex digest, one entry per file to download.
        mirrors: base URLs, tried in order; a file's URL is ``mirror + file name``.
    """

    name: str
    md5: dict[str, str]
    mirrors: tuple[str, ...]

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(self.md5)


#: The datasets :func:`ensure_dataset` knows how to download.
REGISTRY: dict[str, RemoteDataset] = {
    "mnist": RemoteDataset(
        name="mnist",
        md5=dict(zip(IDX_FILES, (
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3",
            "ec29112dd5afa0611ce80d1b7f02629c",
        ))),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
    ),
    "fashion-mnist": RemoteDataset(
        name="fashion-mnist",
        md5=dict(zip(IDX_FILES, (
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "25c81989df183df01b3e8a0aad5dffbe",
            "bef4ecab320f06d8554ea6380940ec79",
            "bb300cfdad3c16e7a12a480ee83cd310",
        ))),
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
    ),
    "kmnist": RemoteDataset(
        name="kmnist",
        md5=dict(zip(IDX_FILES, (
            "bdb82020997e1d708af4cf47b453dcf7",
            "e144d726b3acfaa3e44228e80efcd344",
            "5c965bf0a639b31b8f53240b1b52f4d7",
            "7320c461ea6c1c855c0b718fb2a4b134",
        ))),
        mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
    ),
}


def default_cache_dir() -> Path:
    """The folder that holds one subfolder of downloaded files per dataset.

    ``$SMARTMIXED_CACHE`` if set, else ``$XDG_CACHE_HOME/smartmixed_np``, else
    ``~/.cache/smartmixed_np``. The folder is not created here.
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "smartmixed_np"
    return Path.home() / ".cache" / "smartmixed_np"


def local_copy_hint(name: str) -> str:
    """One sentence telling the user how to use files they already have for ``name``."""
    return (
        f"to use a local copy, put the four files ({', '.join(IDX_FILES)}) in a folder and pass "
        f"--data-dir DIR, or set {DATA_ENV} to that folder or to a folder holding one subfolder "
        f"per dataset (e.g. ${DATA_ENV}/{name}/)"
    )


def parse_mirrors(value: str | Sequence[str], origin: str = "mirror") -> tuple[str, ...]:
    """The base URLs of a user's mirror setting, each checked.

    Args:
        value: one base URL or several separated by commas or whitespace (the form of
            ``SMARTMIXED_MIRROR`` and of ``mirror=``), or a sequence of such strings.
        origin: where the value came from (``"SMARTMIXED_MIRROR"``, ``"mirror"``), for
            the error message.

    Returns:
        the base URLs in the order given (empty only for an empty sequence).

    Raises:
        DataError: a string holding no URL, or a URL that urllib cannot download from
            (no ``http``/``https``/``ftp``/``file`` scheme, no host, a bad port, control
            characters); one line naming ``origin`` and the URL.
    """
    pieces = [value] if isinstance(value, str) else list(value)
    urls = []
    for piece in pieces:
        if not isinstance(piece, str):
            raise DataError(f"{origin}: expected a URL, got {type(piece).__name__} {piece!r}")
        urls += [url for url in re.split(r"[,\s]+", piece) if url]
    if isinstance(value, str) and not urls:
        raise DataError(f"{origin}: no URL given (expected base URLs such as https://example.org/mnist/)")
    for url in urls:
        _check_url(url, origin)
    return tuple(urls)


def _check_url(url: str, origin: str) -> None:
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in url):
        raise DataError(f"{origin}: {url!r} is not a valid URL (it holds control characters)")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number in 0..65535
    except ValueError as error:
        raise DataError(f"{origin}: {url!r} is not a valid URL ({_one_line(error)})") from None
    if parts.scheme.lower() not in _URL_SCHEMES:
        raise DataError(
            f"{origin}: {url!r} is not a download URL: expected a base URL starting with "
            f"http://, https://, ftp:// or file:// (e.g. https://example.org/mnist/)"
        )
    if parts.scheme.lower() != "file" and not parts.hostname:
        raise DataError(f"{origin}: {url!r} is not a valid URL (it names no host)")


def file_md5(path: PathLike) -> str:
    """The MD5 hex digest of a file, read in chunks (the file may be large)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(
    url: str,
    dest: PathLike,
    md5: str,
    timeout: float = 30.0,
    progress: bool = False,
    *,
    deadline: float | None = DEFAULT_DEADLINE_S,
    min_rate: float = DEFAULT_MIN_RATE,
) -> Path:
    """Download ``url`` to ``dest`` and check its MD5, atomically and within a deadline.

    The body is streamed into a temporary file in ``dest``'s folder, counted against
    the ``Content-Length`` header (a server that closes early is caught even where
    urllib does not complain) and hashed on the way. Only if both checks pass is the
    temporary file renamed to ``dest``; on any failure it is removed, and a file
    already at ``dest`` is left as it was.

    Args:
        url: any URL urllib opens (``http``, ``https``, ``ftp``, ``file``).
        dest: where the file goes; its folder must exist. A regular file there is
            replaced; a folder or any other kind of file is refused.
        md5: expected MD5 hex digest of the file.
        timeout: seconds to wait for the connection and for each read.
        progress: report progress on stderr.
        deadline: seconds the whole transfer may take, connection included (``None``:
            no limit). Enforced in every phase: at the deadline the connection is shut
            down, whatever it is waiting for.
        min_rate: bytes per second; a transfer whose average rate stays below it after
            its first ``_RATE_GRACE_S`` (10) seconds is abandoned. ``0`` turns it off.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        DataError: one line naming the URL or the file and what went wrong (malformed
            URL, HTTP error, refused connection, timeout, deadline, too slow, short
            transfer, more than 256 MiB, MD5 mismatch, a cache that cannot be written).
    """
    dest = Path(dest)
    if not (timeout > 0 and (deadline is None or deadline > 0) and min_rate >= 0):
        raise ValueError(f"need timeout > 0, deadline > 0 or None, min_rate >= 0; got {timeout}, {deadline}, {min_rate}")
    _existing_cache_file(dest)
    try:
        with atomic_writer(dest, "wb") as out:
            size, digest = _stream(url, out, timeout, deadline, min_rate, progress)
            if digest != md5.lower():
                raise DataError(
                    f"{url}: checksum mismatch: MD5 of the {size} bytes received is {digest}, expected {md5}"
                )
    except DataError:
        raise
    except _WriteFailed as failure:
        raise _CacheError(_cache_problem(dest, failure.error)) from None
    except OSError as error:  # the temporary file, its sync or its rename: the local side
        raise _CacheError(_cache_problem(dest, error)) from None
    return dest


def _stream(url: str, out, timeout: float, deadline_s: float | None, min_rate: float, progress: bool) -> tuple[int, str]:
    """Copy the body of ``url`` into ``out``; return ``(bytes received, MD5 hex)``."""
    digest = hashlib.md5(usedforsecurity=False)
    received = 0
    expected = None
    start = time.monotonic()
    with _Deadline(deadline_s) as deadline:
        try:
            with _open(url, timeout, deadline) as response:
                length_header = response.headers.get("Content-Length")
                expected = int(length_header) if length_header and length_header.isdigit() else None
                if expected is not None and expected > _MAX_DOWNLOAD_BYTES:
                    raise DataError(f"{url}: refused: the server announces {expected} bytes, more than {_MAX_DOWNLOAD_BYTES}")
                reporter = _Progress(url, expected) if progress else None
                # read1: at most one read of the socket per call, so that the deadline
                # and the rate are checked between the bytes of a trickle too (read(n)
                # would wait for all n bytes).
                read = getattr(response, "read1", response.read)
                while True:
                    chunk = read(_CHUNK)
                    if deadline.expired:
                        raise _MirrorUnusable(deadline.message(url, received))
                    if not chunk:
                        break
                    _write(out, chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    if received > _MAX_DOWNLOAD_BYTES:
                        raise DataError(f"{url}: abandoned: more than {_MAX_DOWNLOAD_BYTES} bytes received")
                    if reporter:
                        reporter.update(received)
                    elapsed = time.monotonic() - start
                    if min_rate and elapsed > _RATE_GRACE_S and received < min_rate * elapsed:
                        raise _MirrorUnusable(
                            f"{url}: too slow, abandoned: {received} bytes in {elapsed:.0f} s "
                            f"(less than {min_rate:g} bytes/s)"
                        )
                if reporter:
                    reporter.done(received)
        except DataError:
            raise
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
            raise _transfer_failure(url, error, deadline, received, timeout) from None
    if expected is not None and received != expected:
        raise DataError(f"{url}: transfer cut short: received {received} of {expected} bytes")
    return received, digest.hexdigest()


class _WriteFailed(Exception):
    """Carries an OSError of the local file out of the network error handling."""

    def __init__(self, error: OSError):
        super().__init__(error)
        self.error = error


def _write(out, chunk: bytes) -> None:
    try:
        out.write(chunk)
    except OSError as error:  # a full disk, not the network: no other mirror can help
        raise _WriteFailed(error) from None


def _transfer_failure(url: str, error: Exception, deadline: _Deadline, received: int, timeout: float) -> DataError:
    """The one-line DataError for an exception raised while opening or reading ``url``."""
    if deadline.expired:  # the shutdown at the deadline surfaces as EOF, reset or SSL errors
        return _MirrorUnusable(deadline.message(url, received))
    if isinstance(error, urllib.error.HTTPError):
        error.close()  # it holds the error response open
        return DataError(f"{url}: HTTP error {error.code} {_one_line(error.reason)}")
    if isinstance(error, urllib.error.URLError):
        reason = error.reason
        if isinstance(reason, FileNotFoundError):  # a file:// mirror without this file: like a 404
            return DataError(f"{url}: no such file")
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return _MirrorUnusable(f"{url}: timed out after {timeout:g} s")
        if isinstance(reason, str) and reason.startswith("unknown url type"):
            return _MirrorUnusable(f"{url}: not a download URL ({_one_line(reason)})")
        return _MirrorUnusable(f"{url}: cannot connect: {_one_line(reason)}")
    if isinstance(error, (TimeoutError, socket.timeout)):
        return _MirrorUnusable(f"{url}: timed out after {timeout:g} s")
    if isinstance(error, (ValueError, http.client.InvalidURL)):  # a bad port or host name (UnicodeError), ...
        return _MirrorUnusable(f"{url}: not a valid URL ({_one_line(error)})")
    return DataError(f"{url}: transfer failed: {type(error).__name__}: {_one_line(error)}")


class _Deadline:
    """A wall-clock limit on one transfer, enforced whatever the transfer waits for.

    The socket timeout bounds each wait, not their sum: a server that sends a byte
    every few seconds never trips it. At ``seconds`` after the start, a timer thread
    shuts down every socket the transfer opened, which wakes a read blocked in any
    phase (connection, TLS handshake, headers, body) with end-of-file or an error; the
    reader then sees :attr:`expired` and reports the deadline. The sockets are held as
    duplicates (``socket.dup``), so that the shutdown reaches a socket that TLS has
    taken over, and so that a file descriptor closed and reused elsewhere is never hit.
    ``seconds=None``: no limit.
    """

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.expired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer = None if seconds is None else threading.Timer(seconds, self._expire)

    def __enter__(self) -> "_Deadline":
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def watch(self, create_connection: Callable[..., socket.socket]) -> Callable[..., socket.socket]:
        """Wrap ``socket.create_connection`` so that the sockets it makes are watched."""

        def create(*args, **kwargs) -> socket.socket:
            sock = create_connection(*args, **kwargs)
            with self._lock:
                self._sockets.append(sock.dup())
                if self.expired:  # the deadline passed while connecting
                    self._shutdown(self._sockets[-1])
            return sock

        return create

    def message(self, url: str, received: int) -> str:
        return f"{url}: abandoned at the {self.seconds:g} s deadline ({received} bytes received)"

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                self._shutdown(sock)

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already closed by the other side
            pass


class _DeadlineMixin:
    """Makes a urllib HTTP(S) handler register each socket it opens with a :class:`_Deadline`."""

    deadline: _Deadline

    def do_open(self, http_class, req, **connection_args):
        def connection(host, **kwargs):
            conn = http_class(host, **kwargs)
            # http.client opens its socket through this attribute; wrapping it sees the
            # plain socket before TLS takes it over, so the handshake is watched too.
            # (Were it ever gone, the deadline would still be checked between reads.)
            if callable(getattr(conn, "_create_connection", None)):
                conn._create_connection = self.deadline.watch(conn._create_connection)
            return conn

        return super().do_open(connection, req, **connection_args)


class _DeadlineHTTPHandler(_DeadlineMixin, urllib.request.HTTPHandler):
    pass


_HANDLER_CLASSES: tuple[type, ...] = (_DeadlineHTTPHandler,)
if hasattr(urllib.request, "HTTPSHandler"):  # absent when Python was built without ssl

    class _DeadlineHTTPSHandler(_DeadlineMixin, urllib.request.HTTPSHandler):
        pass

    _HANDLER_CLASSES += (_DeadlineHTTPSHandler,)


def _open(url: str, timeout: float, deadline: _Deadline):
    """``urlopen(url)`` through handlers whose sockets ``deadline`` can shut down."""
    handlers = []
    for handler_class in _HANDLER_CLASSES:
        handler = handler_class()
        handler.deadline = deadline
        handlers.append(handler)
    # build_opener leaves out the default handlers that these subclass.
    return urllib.request.build_opener(*handlers).open(url, timeout=timeout)


def ensure_dataset(
    name: str | RemoteDataset,
    cache_dir: PathLike | None = None,
    mirrors: str | Sequence[str] | None = None,
    progress: bool = False,
    timeout: float = 30.0,
    *,
    deadline: float | None = DEFAULT_DEADLINE_S,
    min_rate: float = DEFAULT_MIN_RATE,
) -> Path:
    """Make sure a dataset's files are in the cache, downloading what is missing.

    A file already in the cache is checked once against its MD5; a corrupt one is
    deleted and downloaded again. A missing file is fetched from each mirror in turn
    until one succeeds: an HTTP error, a short transfer or a wrong checksum just moves
    on to the next mirror; a mirror that cannot be reached, times out, misses the
    deadline or is too slow is also skipped for the files after it.

    Args:
        name: a key of :data:`REGISTRY` (``"mnist"``, ``"fashion-mnist"``,
            ``"kmnist"``), or a :class:`RemoteDataset` describing other files.
        cache_dir: parent cache folder; the files go to ``cache_dir/<name>/``.
            Default: :func:`default_cache_dir`.
        mirrors: base URLs to try instead of the dataset's own, in order (a user's
            mirror, or a test server): a sequence, or a string in the form of
            :func:`parse_mirrors`. Default: ``$SMARTMIXED_MIRROR`` if set, else the
            dataset's own mirrors.
        progress: report download progress on stderr.
        timeout: seconds to wait for a connection or a read, per attempt.
        deadline: seconds one file's transfer may take from one mirror (see :func:`fetch`).
        min_rate: bytes per second below which a transfer is abandoned (see :func:`fetch`).

    Returns:
        the dataset's folder, ``cache_dir/<name>``, holding every file verified.

    Raises:
        DataError: an unknown name, a malformed mirror URL, a cache that cannot be
            written or holds something other than a regular file where a file belongs,
            or a file that no mirror delivered intact; the message lists every URL tried
            and why it failed, and says how to use a local copy instead.
    """
    spec = _lookup(name)
    base_urls = _base_urls(spec, mirrors)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = folder / spec.name
    _make_cache_folder(folder, spec.name)

    unusable: set[str] = set()  # mirrors that failed in a way that would repeat
    for file_name, md5 in spec.md5.items():
        dest = folder / file_name
        note = ""
        if _existing_cache_file(dest):
            try:
                cached_md5 = file_md5(dest)
            except OSError as error:
                raise DataError(f"{dest}: cannot read the cached file: {error.strerror or error}") from None
            if cached_md5 == md5:
                continue
            try:
                dest.unlink()
            except OSError as error:
                raise DataError(
                    f"{dest}: the cached file has a wrong checksum and cannot be removed "
                    f"({error.strerror or error}); remove it, or set {CACHE_ENV} to a writable folder"
                ) from None
            note = " (the cached copy had a wrong checksum and was removed)"
        _download_from_mirrors(
            spec.name, file_name, md5, dest, base_urls, note, unusable,
            dict(timeout=timeout, progress=progress, deadline=deadline, min_rate=min_rate),
        )
    return folder


def _base_urls(spec: RemoteDataset, mirrors: str | Sequence[str] | None) -> tuple[str, ...]:
    if mirrors is not None:
        return parse_mirrors(mirrors, "mirror")
    from_env = os.environ.get(MIRROR_ENV, "")
    if from_env.strip():
        return parse_mirrors(from_env, MIRROR_ENV)
    return spec.mirrors


def _make_cache_folder(folder: Path, name: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DataError(
            f"{folder}: cannot create the download cache folder: a file of that name is in the way; "
            f"remove it, or set {CACHE_ENV} to another folder"
        ) from None
    except OSError as error:
        raise DataError(
            f"{folder}: cannot create the download cache folder ({error.strerror or error}); "
            f"set {CACHE_ENV} to a writable folder, or {local_copy_hint(name)}"
        ) from None


def _existing_cache_file(dest: Path) -> bool:
    """Whether a regular file is at ``dest`` (symbolic links followed); refuse anything else there."""
    try:
        mode = os.stat(dest).st_mode
    except FileNotFoundError:  # nothing there, or a dangling link that the download replaces
        return False
    except OSError as error:
        raise _CacheError(f"{dest}: cannot use this path in the download cache ({error.strerror or error})") from None
    if stat.S_ISREG(mode):
        return True
    kind = "a folder" if stat.S_ISDIR(mode) else _file_kind(mode)
    raise _CacheError(
        f"{dest}: is {kind}, where the downloaded file {dest.name} belongs; remove it, "
        f"or set {CACHE_ENV} to another folder"
    )


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def _cache_problem(dest: Path, error: OSError) -> str:
    reason = {errno.EROFS: "the file system is read-only", errno.ENOSPC: "no space left on the device"}.get(
        error.errno, error.strerror or _one_line(error)
    )
    return (
        f"{dest}: cannot write the downloaded file into the cache ({reason}); set {CACHE_ENV} to a "
        f"writable folder, or use a local copy (--data-dir DIR or {DATA_ENV})"
    )


def _download_from_mirrors(
    name: str, file_name: str, md5: str, dest: Path, base_urls: Sequence[str], note: str,
    unusable: set[str], fetch_options: dict,
) -> None:
    failures = []
    for base in base_urls:
        url = base.replace("{dataset}", name).rstrip("/") + "/" + file_name
        if base in unusable:
            failures.append(f"{url}: skipped (this mirror failed for an earlier file)")
            continue
        try:
            fetch(url, dest, md5, **fetch_options)
            return
        except _CacheError:
            raise
        except _MirrorUnusable as error:
            unusable.add(base)
            failures.append(str(error))
        except DataError as error:
            failures.append(str(error))
    tried = "; ".join(failures) if failures else "no mirrors given"
    raise DataError(f"{dest}: could not download {name} file {file_name}{note}: tried {tried}; {local_copy_hint(name)}")


def _lookup(name: str | RemoteDataset) -> RemoteDataset:
    if isinstance(name, RemoteDataset):
        return name
    if name not in REGISTRY:
        raise DataError(f"no download source for dataset {name!r}; downloadable: {', '.join(REGISTRY)}")
    return REGISTRY[name]


class _Progress:
    """Prints "downloading URL: 42%" on stderr, updated in place, at most every 5%."""

    def __init__(self, url: str, total: int | None):
        self.url, self.total, self.shown = url, total, -1

    def update(self, received: int) -> None:
        if self.total:
            percent = 100 * received // self.total
            if percent >= self.shown + 5:
                self.shown = percent
                print(f"\rdownloading {self.url}: {percent}%", end="", file=sys.stderr, flush=True)

    def done(self, received: int) -> None:
        print(f"\rdownloading {self.url}: {received} bytes, done", file=sys.stderr, flush=True)


def _one_line(value: object) -> str:
    return " ".join(str(value).split()) or type(value).__name__
