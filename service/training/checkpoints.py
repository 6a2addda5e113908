"""Checkpoint files: written atomically, named by job, epoch and lease; read with weights_only."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from service.storage import job_dir, sha256_file, write_bytes_atomic


def relative_path(job_id: str, token: str, epoch: int | None) -> str:
    """Path under the artifacts dir. The lease token in the name keeps a fenced-out worker that is
    still writing from ever replacing the file a later attempt recorded."""
    name = f"epoch-{epoch:03d}" if epoch is not None else "resume"
    return str(job_dir(Path("."), job_id) / f"{name}-{token[:8]}.pt")


def save(artifacts_dir: Path, relative: str, checkpoint: dict[str, Any]) -> tuple[int, str]:
    """Write the checkpoint; returns (size in bytes, sha256)."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    data = buffer.getvalue()
    return len(data), write_bytes_atomic(artifacts_dir / relative, data)


def load(path: Path, expected_sha256: str | None = None) -> dict[str, Any]:
    """Open a checkpoint without unpickling arbitrary objects, after checking its sha256."""
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise ValueError(f"checkpoint {path} has sha256 {actual}, expected {expected_sha256}")
    return torch.load(path, map_location="cpu", weights_only=True)
