"""Artifacts: one small interface (ArtifactStore) with two stores behind it, a folder (LocalStore,
the default) and an S3-compatible object store (service/storage/s3.py); atomic writes and sha256.

An artifact is addressed by its key, a relative path such as `jobs/<job id>/epoch-001-<token>.pt`,
which the database records with its sha256; no row holds an absolute path. So the artifacts root
may be a shared filesystem mounted at a different path on each host (NFS, CephFS, a bind mount):
a checkpoint a worker on one host wrote is served by the API on another. In the object store keys
become object names, `link` a server-side copy, and `local_copy` a download into a local cache
checked against the recorded sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from service.platform.config import Settings
from service.platform.errors import CheckpointCorrupt, FilesNotRemoved

CHUNK = 1 << 20


@dataclass(frozen=True)
class StoredFile:
    """An artifact as the database records it: its path relative to the artifacts dir and its digest."""

    path: str
    sha256: str
    size_bytes: int | None = None  # known when the file was just written; not recorded for resume points

    @classmethod
    def existing(cls, path: str | None, sha256: str | None) -> StoredFile | None:
        """The file a row points at, or None when it points at none."""
        return None if path is None or sha256 is None else cls(path, sha256)


PRIVATE_DIR_MODE = 0o700  # folders the service creates for its database and artifacts
PRIVATE_FILE_MODE = 0o600  # the database and checkpoints (mkstemp already creates files 0600)


def private_dirs(path: Path) -> None:
    """Create `path` and any missing parents readable by this user only; existing folders keep
    the mode their owner gave them."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
        folder.chmod(PRIVATE_DIR_MODE)  # mkdir's mode is masked by the umask


def private_file(path: Path) -> None:
    """Create `path` empty and 0600 if it does not exist (SQLite then gives its -wal and -shm
    files the same mode)."""
    private_dirs(path.parent)
    with contextlib.suppress(FileExistsError):  # there already, or another process just made it
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE_MODE))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it is fsynced and renamed onto `path`.

    A reader never sees a half-written file, and a crash leaves at most a stray temp file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> str:
    """Write `data` atomically and return its sha256."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def prune_oldest(folder: Path, max_files: int, suffix: str = "") -> None:
    """Remove the least recently modified files ending in `suffix` under `folder` beyond `max_files`
    (a bounded cache; readers touch what they use)."""
    entries = []
    for path in folder.rglob(f"*{suffix}"):
        try:
            if path.is_file() and not path.name.startswith("."):  # not a temp file being written
                entries.append((path.stat().st_mtime_ns, path))
        except FileNotFoundError:  # pruned by another thread meanwhile
            continue
    for _, old in sorted(entries)[: max(0, len(entries) - max_files)]:
        old.unlink(missing_ok=True)


class ArtifactStore(Protocol):
    """Where artifacts live. Keys are relative paths; nothing outside service/storage/store.py knows more."""

    def put(self, key: str, data: bytes) -> StoredFile:
        """Store `data` atomically under `key` (replacing what was there) and describe it."""
        ...

    def get(self, key: str) -> bytes:
        """The bytes under `key`, unchecked (callers check them against the recorded sha256);
        FileNotFoundError when there are none."""
        ...

    def local_copy(self, file: StoredFile) -> Path:
        """A local file holding `file`'s bytes, for a reader that needs a path (the inference
        helper, which checks them against file.sha256 itself)."""
        ...

    def link(self, source: StoredFile, key: str) -> StoredFile:
        """The artifact `source` also under `key`, without sending its bytes again."""
        ...

    def delete(self, key: str) -> None:
        """Remove `key`; one already gone is fine."""
        ...

    def delete_job(self, job_id: str) -> None:
        """Remove every artifact of a job; raises FilesNotRemoved when any stays."""
        ...

    def free_bytes(self) -> int:
        """Room left for new artifacts."""
        ...

    def download_url(self, file: StoredFile, filename: str) -> str | None:
        """A short-lived URL the caller may fetch `file` from directly (the API then redirects to
        it), or None: the API streams the bytes itself."""
        ...


def job_prefix(job_id: str) -> str:
    """What the keys of all of a job's artifacts start with (then "/")."""
    return f"jobs/{job_id}"


def job_key(job_id: str, name: str) -> str:
    """The key of one of a job's artifacts."""
    return f"{job_prefix(job_id)}/{name}"


def open_store(settings: Settings) -> ArtifactStore:
    """The store the settings name: the object store of MNIST_JOBS_ARTIFACTS_URL when it is set
    (with a local cache in MNIST_JOBS_ARTIFACTS_DIR), else the folder MNIST_JOBS_ARTIFACTS_DIR."""
    if settings.artifacts_url is None:
        return LocalStore(settings.artifacts_dir)
    from service.storage.s3 import S3Store  # boto3 is imported only where an object store is used

    return S3Store(
        settings.artifacts_url,
        settings.artifacts_dir / "s3-cache",
        settings.artifacts_retry_seconds,
        settings.artifacts_presign_seconds,
    )


class LocalStore:
    """ArtifactStore on a folder of this host's filesystem (or a shared one mounted here): files
    0600 in 0700 folders, written atomically (a temp file, fsynced, renamed)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        if Path(key).is_absolute() or ".." in Path(key).parts:  # keys come from our rows: a bug, not input
            raise ValueError(f"artifact key {key!r} leaves the artifacts dir")
        return self.root / key

    def put(self, key: str, data: bytes) -> StoredFile:
        path = self._path(key)
        private_dirs(path.parent)
        return StoredFile(key, write_bytes_atomic(path, data), len(data))

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def local_copy(self, file: StoredFile) -> Path:
        return self._path(file.path)

    def link(self, source: StoredFile, key: str) -> StoredFile:
        """A hard link (no copy, and the bytes outlive either name's removal), or a copy where the
        filesystem has no hard links."""
        target = self._path(key)
        private_dirs(target.parent)
        try:
            os.link(self._path(source.path), target)
        except FileExistsError:
            pass  # an earlier try of the same link
        except OSError:
            with atomic_path(target) as tmp:
                shutil.copyfile(self._path(source.path), tmp)
        return StoredFile(key, source.sha256, source.size_bytes)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_job(self, job_id: str) -> None:
        """Remove the job's folder and everything in it; a folder already gone is fine. Raises
        FilesNotRemoved, naming the cause but not the server's path, when anything stays behind."""
        folder = self._path(job_prefix(job_id))
        failures: list[str] = []

        def note(_function: object, path: str, exc_info: tuple[type[BaseException], BaseException, object]) -> None:
            exc = exc_info[1]
            if not isinstance(exc, FileNotFoundError):  # removed meanwhile (another delete): fine
                failures.append(f"{Path(path).name}: {exc.strerror if isinstance(exc, OSError) else exc}")

        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            try:
                folder.unlink()
            except OSError as exc:
                failures.append(f"{folder.name}: {exc.strerror}")
        elif folder.exists():
            shutil.rmtree(folder, onerror=note)  # onexc from Python 3.12
        if failures or os.path.lexists(folder):
            cause = failures[0] if failures else "the folder is still there"
            raise FilesNotRemoved(
                f"the files of job {job_id} could not be removed from the artifacts dir ({cause}); "
                "the job is kept: fix the artifacts dir's permissions and delete it again",
                field="id",
            )

    def free_bytes(self) -> int:
        private_dirs(self.root)
        return shutil.disk_usage(self.root).free

    def download_url(self, file: StoredFile, filename: str) -> str | None:
        return None  # a folder has no URL of its own: the API streams its files


def read_verified(store: ArtifactStore, file: StoredFile, what: str, field: str | None = None) -> bytes:
    """The file's bytes, after checking them against the sha256 recorded for it: CheckpointCorrupt
    (naming `what`, and `field` for an answer) when they differ, so a file that changed is never
    served nor opened. A file that is gone raises the store's OSError."""
    data = store.get(file.path)
    actual = hashlib.sha256(data).hexdigest()
    if actual != file.sha256:
        raise CheckpointCorrupt(f"{what} is corrupt (sha256 {file.sha256} recorded, {actual} stored)", field=field)
    return data


def name_folders(text: str, folders: list[tuple[Path | None, str]]) -> str:
    """`text` (often an OSError's message) with each folder's path replaced by its name, so an
    answer never shows where the server keeps its files."""
    for folder, name in folders:
        if folder is not None:
            for form in dict.fromkeys((str(folder.resolve()), str(folder.absolute()), str(folder))):
                if form not in ("", "."):
                    text = text.replace(form, name)
    return text
