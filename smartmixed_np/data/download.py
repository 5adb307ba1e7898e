"""Downloading the MNIST-family datasets into a local cache, verified by MD5.

Each dataset is four gzip-compressed IDX files with the standard names
(:data:`IDX_FILES`), available from one or more mirrors. :func:`ensure_dataset`
makes sure all four are in the cache folder with the right MD5, downloading what is
missing or corrupt, mirror after mirror.

A download is atomic: :func:`fetch` streams into a temporary file next to the
destination and renames it into place only once the byte count and the MD5 are
right. A transfer cut off halfway, a wrong checksum or a Ctrl-C therefore leave no
file at the destination and no temporary file either.

Machines without internet access cannot download; every failure message says how to
point the program at a local copy instead (``--data-dir DIR`` or the
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

import hashlib
import http.client
import os
import socket
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

from ..errors import DataError
from ..fileio import atomic_writer

__all__ = [
    "CACHE_ENV",
    "DATA_ENV",
    "IDX_FILES",
    "REGISTRY",
    "RemoteDataset",
    "default_cache_dir",
    "ensure_dataset",
    "fetch",
    "file_md5",
    "local_copy_hint",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Environment variable naming a folder with one subfolder of data per dataset.
DATA_ENV = "SMARTMIXED_DATA"
#: Environment variable overriding the download cache folder.
CACHE_ENV = "SMARTMIXED_CACHE"

#: The four files of every MNIST-family dataset, in the order
#: (train images, train labels, test images, test labels).
IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

_CHUNK = 1 << 16


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
        f"--data-dir DIR, or set {DATA_ENV} to a folder holding one subfolder per dataset "
        f"(e.g. ${DATA_ENV}/{name}/)"
    )


def file_md5(path: PathLike) -> str:
    """The MD5 hex digest of a file, read in chunks (the file may be large)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, dest: PathLike, md5: str, timeout: float = 30.0, progress: bool = False) -> Path:
    """Download ``url`` to ``dest`` and check its MD5, atomically.

    The body is streamed into a temporary file in ``dest``'s folder, counted against
    the ``Content-Length`` header (a server that closes early is caught even where
    urllib does not complain) and hashed on the way. Only if both checks pass is the
    temporary file renamed to ``dest``; on any failure it is removed, and a file
    already at ``dest`` is left as it was.

    Args:
        url: any URL urllib opens (``http``, ``https``, ``file``).
        dest: where the file goes; its folder must exist.
        md5: expected MD5 hex digest of the file.
        timeout: seconds to wait for the connection and for each read.
        progress: report progress on stderr.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        DataError: one line naming the URL and what went wrong (HTTP error, refused
            connection, timeout, short transfer, MD5 mismatch, local write error).
    """
    dest = Path(dest)
    with atomic_writer(dest, "wb") as out:
        size, digest = _stream(url, out, timeout, progress)
        if digest != md5.lower():
            raise DataError(f"{url}: checksum mismatch: MD5 of the {size} bytes received is {digest}, expected {md5}")
    return dest


def _stream(url: str, out, timeout: float, progress: bool) -> tuple[int, str]:
    """Copy the body of ``url`` into ``out``; return ``(bytes received, MD5 hex)``."""
    digest = hashlib.md5(usedforsecurity=False)
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length_header = response.headers.get("Content-Length")
            expected = int(length_header) if length_header and length_header.isdigit() else None
            reporter = _Progress(url, expected) if progress else None
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                if reporter:
                    reporter.update(received)
            if reporter:
                reporter.done(received)
    except urllib.error.HTTPError as error:
        raise DataError(f"{url}: HTTP error {error.code} {_one_line(error.reason)}") from None
    except urllib.error.URLError as error:
        raise DataError(f"{url}: cannot connect: {_one_line(error.reason)}") from None
    except (TimeoutError, socket.timeout):
        raise DataError(f"{url}: timed out after {timeout:g} s") from None
    except (http.client.HTTPException, OSError) as error:
        raise DataError(f"{url}: transfer failed: {type(error).__name__}: {_one_line(error)}") from None
    if expected is not None and received != expected:
        raise DataError(f"{url}: transfer cut short: received {received} of {expected} bytes")
    return received, digest.hexdigest()


def ensure_dataset(
    name: str | RemoteDataset,
    cache_dir: PathLike | None = None,
    mirrors: Sequence[str] | None = None,
    progress: bool = False,
    timeout: float = 30.0,
) -> Path:
    """Make sure a dataset's files are in the cache, downloading what is missing.

    A file already in the cache is checked once against its MD5; a corrupt one is
    deleted and downloaded again. A missing file is fetched from each mirror in turn
    until one succeeds: a dead mirror, an HTTP error, a short transfer or a wrong
    checksum just moves on to the next mirror.

    Args:
        name: a key of :data:`REGISTRY` (``"mnist"``, ``"fashion-mnist"``,
            ``"kmnist"``), or a :class:`RemoteDataset` describing other files.
        cache_dir: parent cache folder; the files go to ``cache_dir/<name>/``.
            Default: :func:`default_cache_dir`.
        mirrors: base URLs to try instead of the dataset's own, in order (for a
            private mirror, or a test server).
        progress: report download progress on stderr.
        timeout: seconds to wait for a connection or a read, per attempt.

    Returns:
        the dataset's folder, ``cache_dir/<name>``, holding every file verified.

    Raises:
        DataError: an unknown name, or a file that no mirror delivered intact; the
            message lists every URL tried and why it failed, and says how to use a
            local copy instead (``--data-dir`` or ``SMARTMIXED_DATA``).
    """
    spec = _lookup(name)
    base_urls = tuple(mirrors) if mirrors is not None else spec.mirrors
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = folder / spec.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(
            f"{folder}: cannot create the download cache folder ({error.strerror or error}); "
            f"set {CACHE_ENV} to a writable folder, or {local_copy_hint(spec.name)}"
        ) from None

    for file_name, md5 in spec.md5.items():
        dest = folder / file_name
        note = ""
        if dest.is_file():
            try:
                cached_md5 = file_md5(dest)
            except OSError as error:
                raise DataError(f"{dest}: cannot read the cached file: {error.strerror or error}") from None
            if cached_md5 == md5:
                continue
            dest.unlink()
            note = " (the cached copy had a wrong checksum and was removed)"
        _download_from_mirrors(spec.name, file_name, md5, dest, base_urls, timeout, progress, note)
    return folder


def _download_from_mirrors(
    name: str, file_name: str, md5: str, dest: Path, base_urls: Sequence[str], timeout: float, progress: bool, note: str
) -> None:
    failures = []
    for base in base_urls:
        url = base.rstrip("/") + "/" + file_name
        try:
            fetch(url, dest, md5, timeout=timeout, progress=progress)
            return
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
