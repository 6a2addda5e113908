"""Downloads verified as they arrive: a file's bytes must hash to the sha256 the server sent with
them (Repr-Digest, else the ETag), and a file is kept only whole and verified."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx

from mnist_jobs_client.errors import ChecksumMismatch

Write = Callable[[bytes], object]
_SHA256 = re.compile(r'^(?:W/)?"?([0-9a-f]{64})"?$')
_FILENAME = re.compile(r'filename="([^"/\\]+)"')


def expected_sha256(response: httpx.Response, what: str = "checkpoint") -> str:
    """The sha256 the server sent with a file: Repr-Digest (RFC 9530), else the ETag."""
    digest = response.headers.get("Repr-Digest", "")
    if digest.startswith("sha-256=:") and digest.endswith(":"):
        try:
            return base64.b64decode(digest[9:-1], validate=True).hex()
        except binascii.Error:
            pass
    if match := _SHA256.match(response.headers.get("ETag", "")):
        return match.group(1)
    raise ChecksumMismatch(f"the server sent no sha256 (Repr-Digest or ETag) with the {what}: refused unverified")


def verify_into(response: httpx.Response, what: str, write: Write) -> None:
    """Stream the body into `write`, hashing as it comes; ChecksumMismatch if it differs."""
    expected, digest = expected_sha256(response, what), hashlib.sha256()
    for chunk in response.iter_bytes():
        digest.update(chunk)
        write(chunk)
    if digest.hexdigest() != expected:
        raise ChecksumMismatch(
            f"{what} arrived with sha256 {digest.hexdigest()}, the server sent {expected}",
            url=str(response.request.url),
        )


def save(download: Callable[[Write], httpx.Response], target: Path, fallback: str) -> Path:
    """What `download` writes, saved at `target` (a folder: under the server's file name, else
    `fallback`). Written to a temp file beside it and renamed only once `download` returned (it
    verifies): a failed download leaves no file, and never a partial one at `target`."""
    folder = target if target.is_dir() else target.parent
    handle, temp = tempfile.mkstemp(dir=folder, prefix=".download-", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            response = download(out.write)
            out.flush()
            os.fsync(out.fileno())
        if target.is_dir():
            sent = _FILENAME.search(response.headers.get("Content-Disposition", ""))
            target = target / (sent.group(1) if sent else fallback)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target
