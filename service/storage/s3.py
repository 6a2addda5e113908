"""ArtifactStore on an S3-compatible object store (AWS S3, MinIO, Ceph RGW, ...), through boto3.

Chosen by MNIST_JOBS_ARTIFACTS_URL=s3://bucket/prefix. The endpoint, region and credentials come
from boto3's own chain (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID / AWS_PROFILE, an
instance role, ...), so nothing secret passes through the service's settings or its database:
rows hold the artifact's key (`jobs/<id>/epoch-001-<token>.pt`), never a URL.

Integrity: every object is written with S3's own SHA-256 checksum (botocore computes it, the
server refuses a body that does not match it and keeps it with the object) and the hex sha256 in
its metadata; every read is checked by the caller against the sha256 its row records
(read_verified), as on disk. A presigned download (the API redirects
instead of streaming) is given out only after the object's stored checksum matched the row's.

An unreachable store (a restart, a network cut) does not fail the call at once: each call is tried
again, with a growing pause, for up to MNIST_JOBS_ARTIFACTS_RETRY_SECONDS, then raises
StoreUnavailable. A missing object is FileNotFoundError, as a missing file is.

`local_copy` keeps verified copies of objects in `<artifacts dir>/s3-cache`, for the readers that
need a path (the inference helper); the oldest beyond CACHE_MAX_FILES are removed.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError

from service.platform.errors import CheckpointCorrupt, FilesNotRemoved, StoreUnavailable
from service.storage.store import StoredFile, job_prefix, private_dirs, prune_oldest, write_bytes_atomic

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

CACHE_MAX_FILES = 256  # verified local copies kept for path readers (a checkpoint is ~30 KB)
RETRY_PAUSE_MAX_SECONDS = 2.0
MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
T = TypeVar("T")

log = logging.getLogger("mnist_jobs.storage")


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket/prefix`; ValueError for anything else."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"an artifacts URL is s3://bucket/prefix, not {url!r}")
    return parts.netloc, parts.path.strip("/")


def _transient(exc: Exception) -> bool:
    """A failure that a later try may not meet: no connection, a timeout, a 5xx or throttling."""
    if isinstance(exc, (ConnectionError, HTTPClientError)):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or exc.response.get("Error", {}).get("Code") in ("SlowDown", "RequestTimeout")
    return False


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in MISSING_CODES


class S3Store:
    """ArtifactStore on `s3://bucket/prefix`; `cache_dir` holds local copies for path readers."""

    def __init__(self, url: str, cache_dir: Path, retry_seconds: float, presign_seconds: int = 0) -> None:
        self.bucket, self.prefix = parse_url(url)
        self.cache_dir = cache_dir
        self.retry_seconds = retry_seconds
        self.presign_seconds = presign_seconds
        # Our own retry loop waits out an outage; botocore's adds only quick tries within one call.
        config = Config(connect_timeout=5, read_timeout=30, retries={"mode": "standard", "max_attempts": 2})
        self.client: S3Client = boto3.session.Session().client("s3", config=config)

    def _name(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):  # keys come from our rows: a bug, not input
            raise ValueError(f"artifact key {key!r} leaves the artifacts prefix")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, call: Callable[..., T], **arguments: Any) -> T:
        """`call(Bucket=..., **arguments)`, tried again while the store is unreachable, for up to retry_seconds."""
        deadline, pause = time.monotonic() + self.retry_seconds, 0.25
        while True:
            try:
                return call(Bucket=self.bucket, **arguments)
            except (BotoCoreError, ClientError) as exc:
                if isinstance(exc, ClientError) and _missing(exc):
                    raise FileNotFoundError(f"no artifact {what}") from None
                if not _transient(exc):
                    raise
                if time.monotonic() + pause > deadline:
                    raise StoreUnavailable(
                        f"the artifact store did not answer for {self.retry_seconds:.0f} s "
                        f"({type(exc).__name__}); try again later",
                        retry_after_seconds=5,
                    ) from exc
                log.warning("artifact store unreachable (%s: %s); trying again", what, type(exc).__name__)
                time.sleep(pause)
                pause = min(RETRY_PAUSE_MAX_SECONDS, pause * 2)

    def put(self, key: str, data: bytes) -> StoredFile:
        digest = hashlib.sha256(data)
        metadata = {"sha256": digest.hexdigest()}
        # botocore computes the SHA-256 checksum of the body and sends it; the server checks it.
        answer = self._call(
            key, self.client.put_object, Key=self._name(key), Body=data, ChecksumAlgorithm="SHA256", Metadata=metadata
        )
        stored = answer.get("ChecksumSHA256")
        if stored is not None and stored != base64.b64encode(digest.digest()).decode():
            raise CheckpointCorrupt(f"the artifact store kept other bytes for {key} than were sent")
        return StoredFile(key, digest.hexdigest(), len(data))

    def get(self, key: str) -> bytes:
        def fetch(**arguments: Any) -> bytes:  # the body inside the retried call: a cut mid-body is tried again
            return self.client.get_object(**arguments)["Body"].read()

        return self._call(key, fetch, Key=self._name(key))

    def local_copy(self, file: StoredFile) -> Path:
        """A verified copy in the cache, fetched when it is not there or no longer matches."""
        path = self.cache_dir / file.path
        try:
            if hashlib.sha256(path.read_bytes()).hexdigest() == file.sha256:
                return path
        except OSError:
            pass
        data = self.get(file.path)
        if hashlib.sha256(data).hexdigest() != file.sha256:
            raise CheckpointCorrupt(f"{file.path} in the artifact store does not match its recorded sha256")
        private_dirs(path.parent)
        write_bytes_atomic(path, data)
        prune_oldest(self.cache_dir, CACHE_MAX_FILES)
        return path

    def link(self, source: StoredFile, key: str) -> StoredFile:
        """A server-side copy: the bytes never pass through this host, and the copy outlives the original."""
        copy = {"Bucket": self.bucket, "Key": self._name(source.path)}
        self._call(key, self.client.copy_object, Key=self._name(key), CopySource=copy, ChecksumAlgorithm="SHA256")
        return StoredFile(key, source.sha256, source.size_bytes)

    def delete(self, key: str) -> None:
        self._call(key, self.client.delete_object, Key=self._name(key))

    def keys(self, prefix: str) -> list[str]:
        """Every key under `prefix` (then "/"), relative to the store's prefix."""
        name, found, token = self._name(prefix) + "/", [], ""
        while True:
            more = {"ContinuationToken": token} if token else {}
            page = self._call(prefix, self.client.list_objects_v2, Prefix=name, **more)
            found += [item["Key"] for item in page.get("Contents", [])]
            token = page.get("NextContinuationToken", "")
            if not token:
                break
        strip = len(self.prefix) + 1 if self.prefix else 0
        return [key[strip:] for key in found]

    def delete_job(self, job_id: str) -> None:
        """Every object under the job's prefix, then its cached copies; FilesNotRemoved if any stays."""
        prefix = job_prefix(job_id)
        keys = self.keys(prefix)
        for start in range(0, len(keys), 1000):  # DeleteObjects takes up to 1000
            batch = {"Objects": [{"Key": self._name(key)} for key in keys[start : start + 1000]], "Quiet": True}
            answer = self._call(prefix, self.client.delete_objects, Delete=batch)
            if answer.get("Errors"):
                error = answer["Errors"][0]
                raise FilesNotRemoved(
                    f"the files of job {job_id} could not be removed from the artifact store "
                    f"({error.get('Code')}: {error.get('Message')}); the job is kept: delete it again",
                    field="id",
                )
        shutil.rmtree(self.cache_dir / prefix, ignore_errors=True)

    def free_bytes(self) -> int:
        """The object store has no size a client can read: the room left for the local cache."""
        private_dirs(self.cache_dir)
        return shutil.disk_usage(self.cache_dir).free

    def download_url(self, file: StoredFile, filename: str) -> str | None:
        """A presigned GET of the object, valid presign_seconds, once its stored checksum matched
        the recorded sha256; None when downloads are streamed (presign_seconds 0)."""
        if not self.presign_seconds:
            return None
        name = self._name(file.path)
        head = self._call(file.path, self.client.head_object, Key=name, ChecksumMode="ENABLED")
        stored = head.get("ChecksumSHA256")  # S3's own, when the server keeps it; else our metadata
        recorded = base64.b64encode(bytes.fromhex(file.sha256)).decode()
        if (stored != recorded) if stored else head.get("Metadata", {}).get("sha256") != file.sha256:
            raise CheckpointCorrupt(f"{file.path} in the artifact store does not match its recorded sha256")
        disposition = f'attachment; filename="{filename}"'
        params = {"Bucket": self.bucket, "Key": name, "ResponseContentDisposition": disposition}
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=self.presign_seconds)
