"""Result reuse: a job's weights are a function of its spec (seed included) on one device type and
torch version, so a new job with a finished job's exact spec may take that job's result instead of
training again. The reuser gets its own names for the original's checkpoint files (hard links:
no copy), so deleting the original never takes files from under a job that reused it."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from mnist_jobs_client.specs import canonical_sha256
from service.platform.config import Settings
from service.platform.models import Epoch, Job, StepChunk, utcnow
from service.platform.states import JobStatus
from service.storage.store import ArtifactStore, job_key


def spec_sha256(spec: dict[str, Any]) -> str:
    """The hash of a stored spec (seed included); migration 0005 keeps a frozen copy of it."""
    return canonical_sha256(spec)


def base_version(version: str) -> str:
    """ "2.14.1+cpu" -> "2.14.1": the local part names the build, not the numbers it computes."""
    return version.split("+", 1)[0]


@dataclass(frozen=True)
class ReusePolicy:
    """Which finished jobs may stand in for a new one: same torch version as installed here, and
    the device type the workers are set to use (any type when they choose it themselves, "auto")."""

    store: ArtifactStore
    torch_version: str
    device_type: str | None

    @classmethod
    def from_settings(cls, settings: Settings, store: ArtifactStore) -> ReusePolicy:
        """`store`: the caller's own (an object store's client is not made per request)."""
        device = settings.device.split(":", 1)[0]
        installed = base_version(metadata.version("torch"))
        return cls(store, installed, None if device == "auto" else device)

    def accepts(self, result: dict[str, Any]) -> bool:
        device_type = str(result.get("device", "")).split(":", 1)[0]
        version_matches = base_version(str(result.get("torch_version", ""))) == self.torch_version
        return version_matches and (self.device_type is None or device_type == self.device_type)


def find_original(session: Session, sha256: str, policy: ReusePolicy) -> Job | None:
    """The newest succeeded job with this spec hash whose result the policy accepts."""
    candidates = session.scalars(
        select(Job)
        .where(Job.spec_sha256 == sha256, Job.status == JobStatus.succeeded, Job.result.is_not(None))
        .order_by(Job.finished_at.desc())
        .limit(20)
    )
    return next((job for job in candidates if job.result is not None and policy.accepts(job.result)), None)


def adopt(session: Session, job: Job, original: Job, policy: ReusePolicy) -> None:
    """Make the new (flushed, queued) `job` a finished copy of `original`: its result, epochs with
    their kept checkpoints (linked under the new job's folder), and its per-step losses."""
    now = utcnow()
    job.status, job.started_at, job.finished_at, job.updated_at = JobStatus.succeeded, now, now, now
    job.result, job.test_accuracy, job.reused_from = original.result, original.test_accuracy, original.id
    for row in original.epochs:
        source = row.checkpoint_file()
        linked = None
        if source is not None:
            linked = policy.store.link(source, job_key(job.id, PurePosixPath(source.path).name))
        job.epochs.append(
            Epoch(
                epoch=row.epoch,
                train_loss=row.train_loss,
                test_loss=row.test_loss,
                test_accuracy=row.test_accuracy,
                correct=row.correct,
                checkpoint_path=None if linked is None else linked.path,
                checkpoint_size_bytes=row.checkpoint_size_bytes if linked else None,
                checkpoint_sha256=None if linked is None else linked.sha256,
                created_at=now,
            )
        )
    session.flush()
    curve = select(StepChunk.first_step, StepChunk.last_step, StepChunk.samples, StepChunk.points)
    chunks = session.execute(curve.where(StepChunk.job_id == original.id)).all()
    if chunks:
        session.execute(insert(StepChunk), [{"job_id": job.id, **row._asdict()} for row in chunks])
