"""Portable models (ONNX, safetensors) as stored artifacts, made once per checkpoint and format.

No torch here: the API asks its inference helper (service/inference/client.py) to make an export, which
the helper (service/inference/helper.py) writes into a scratch folder of this host; the API then
puts it into the artifact store under the job's prefix (a folder or an object store alike), so
deleting a job deletes its exports. Later requests are plain reads of the stored file.

An export is a function of its checkpoint's bytes alone, so its key carries the checkpoint's
sha256: the name says which bytes it came from, and a checkpoint written again for the same epoch
(a later attempt) can never be answered with the old one's export. Beside it, a sidecar holds the
export's own sha256, written after the file: a sidecar means a finished file, and every read is
checked against it as checkpoints are against their recorded sha256. Concurrent first requests
(in one API process or several) may each make it; an export's bytes are deterministic, so they
write the same.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path, PurePosixPath

from service.inference.client import InferenceClient, ModelFormat
from service.jobs import lifecycle
from service.platform.errors import CheckpointCorrupt
from service.storage.store import ArtifactStore, StoredFile, job_key

SIDECAR = ".sha256"  # appended to an export's key: the key of the file holding its sha256 (hex)


def model_key(job_id: str, epoch: int, checkpoint_sha256: str, fmt: ModelFormat) -> str:
    """Where the export of one checkpoint in one format is stored."""
    return job_key(job_id, f"models/epoch-{epoch:03d}-{checkpoint_sha256[:16]}.{fmt}")


def stored_export(store: ArtifactStore, key: str) -> tuple[StoredFile, bytes] | None:
    """The export under `key` and its bytes if it is there whole and matches its sidecar; None when
    it was never made (or is damaged, so that it is made again)."""
    try:
        recorded = store.get(key + SIDECAR).decode("ascii", "replace").strip()
        data = store.get(key)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    if hashlib.sha256(data).hexdigest() != recorded:
        return None
    return StoredFile(key, recorded, len(data)), data


def stored_model(
    store: ArtifactStore, job_id: str, epoch: int, checkpoint: StoredFile, fmt: ModelFormat
) -> tuple[StoredFile, bytes] | None:
    """The checkpoint's model as `fmt` when it was exported before and still verifies, else None."""
    return stored_export(store, model_key(job_id, epoch, checkpoint.sha256, fmt))


def model_bytes(
    store: ArtifactStore,
    inference: InferenceClient,
    job_id: str,
    epoch: int,
    checkpoint: StoredFile,
    fmt: ModelFormat,
) -> tuple[StoredFile, bytes]:
    """The checkpoint's model as `fmt`: the stored export, else one the helper makes now."""
    found = stored_model(store, job_id, epoch, checkpoint, fmt)
    if found is not None:
        return found
    key = model_key(job_id, epoch, checkpoint.sha256, fmt)
    with tempfile.TemporaryDirectory(prefix="mnist-jobs-export-") as scratch:  # the helper's own folder
        target = Path(scratch) / PurePosixPath(key).name
        inference.export(lifecycle.checkpoint_path(store, epoch, checkpoint), checkpoint.sha256, fmt, job_id, target)
        written = store.put(key, target.read_bytes())
    store.put(key + SIDECAR, written.sha256.encode())  # after the file: a sidecar means a finished export
    found = stored_export(store, key)
    if found is None:  # written a moment ago: the artifact store is failing
        raise CheckpointCorrupt(f"the {fmt} export of epoch {epoch} did not read back intact", field="epoch")
    return found
