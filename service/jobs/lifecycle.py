"""The client's side of the queue: enqueue (idempotent), get, list, cancel, delete, checkpoints,
and the public view of a job built from its row, its epochs and its attempts."""

from __future__ import annotations

import hashlib
import itertools
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload, selectinload

from service.jobs.cost import estimate
from service.jobs.reuse import ReusePolicy, adopt, find_original, spec_sha256
from service.jobs.schemas import (
    AnySpec,
    AttemptRead,
    CheckpointRead,
    EpochMetrics,
    JobRead,
    JobResult,
    Progress,
    StepMetrics,
    job_spec_adapter,
    request_fingerprint,
)
from service.platform import events
from service.platform.auth import Caller, shown_submitter
from service.platform.db import db_now
from service.platform.errors import Conflict, NotFound, TooMany
from service.platform.models import Job, JobLabel, StepChunk, utcnow
from service.platform.states import JobStatus
from service.storage.store import ArtifactStore, StoredFile, read_verified

SEED_CHOICE_MAX = 2**31 - 1  # seeds chosen for the user stay short enough to read and retype
QUEUE_FULL_RETRY_SECONDS = 30  # the Retry-After of a token whose queue is full


def _same_request(existing: Job, fingerprint: str) -> Job:
    if existing.request_sha256 != fingerprint:
        raise Conflict("this Idempotency-Key was already used with a different request body", field="Idempotency-Key")
    return existing


def _by_key(session: Session, idempotency_key: str) -> Job | None:
    return session.scalars(select(Job).where(Job.idempotency_key == idempotency_key)).one_or_none()


def scoped_key(idempotency_key: str, submitted_by: str | None) -> str:
    """Idempotency keys are per caller: a token's key is stored as "<token id>:<sha256 of the key>"
    (it fits the column whatever the key's length), so the same key sent by another token never
    finds this job. The open mode (no token) stores the key as given, as before tokens existed."""
    if submitted_by is None:
        return idempotency_key
    return f"{submitted_by}:{hashlib.sha256(idempotency_key.encode()).hexdigest()}"


def active_count(session: Session, submitted_by: str) -> int:
    """The queued and running jobs one token submitted (its queue, for MAX_QUEUED_PER_TOKEN)."""
    active = (JobStatus.queued, JobStatus.running)
    query = select(func.count()).select_from(Job).where(Job.submitted_by == submitted_by, Job.status.in_(active))
    return session.scalar(query) or 0


def ensure_queue_room(session: Session, caller: Caller, limit: int, adding: int = 1) -> None:
    """A token may have `limit` jobs queued or running (the open mode has no token and no limit)."""
    if caller.id is not None and active_count(session, caller.id) + adding > limit:
        raise TooMany(
            f"this token may have {limit} jobs queued or running; {adding} more would pass that: "
            "retry when some have ended",
            retry_after_seconds=QUEUE_FULL_RETRY_SECONDS,
        )


@dataclass(frozen=True)
class CellLink:
    """Where a job sits in a comparison: its cell, and its place in the queue (see comparisons)."""

    comparison_id: str
    cell_position: int
    created_at: datetime


def enqueue(
    session: Session,
    spec: AnySpec,
    *,
    default_max_attempts: int,
    idempotency_key: str | None = None,
    submitted_by: str | None = None,
    reuse: ReusePolicy | None = None,
    cell: CellLink | None = None,
) -> tuple[Job, bool]:
    """Add a job; returns (job, created). A repeated idempotency key (of the same caller) returns
    the first job. `submitted_by` is the token id of the caller (None in the open mode). With
    `spec.reuse` and a `reuse` policy, a finished job of the same spec lends its result: the job
    is created already succeeded (service.jobs.reuse)."""
    fingerprint = request_fingerprint(spec)
    if idempotency_key is not None:
        idempotency_key = scoped_key(idempotency_key, submitted_by)
    if idempotency_key is not None and (existing := _by_key(session, idempotency_key)) is not None:
        return _same_request(existing, fingerprint), False
    if spec.seed is None:
        spec = spec.model_copy(update={"seed": secrets.randbelow(SEED_CHOICE_MAX + 1)})
    now = db_now(session) if cell is None else cell.created_at  # run_after: the claim's clock
    stored_spec = spec.model_dump(mode="json")
    job = Job(
        id=str(uuid.uuid4()),
        status=JobStatus.queued,
        architecture=spec.architecture,
        dataset=spec.dataset,
        spec=stored_spec,
        param_count=spec.param_count,
        pack_key=spec.pack_key,
        created_at=now,
        updated_at=now,
        run_after=now,
        attempts=0,
        max_attempts=spec.max_attempts or default_max_attempts,
        cancel_requested=False,
        idempotency_key=idempotency_key,
        request_sha256=fingerprint,
        submitted_by=submitted_by,
        name=spec.name,
        seed=spec.seed,
        permutation_seed=spec.permutation_seed,
        spec_sha256=spec_sha256(stored_spec),
        comparison_id=None if cell is None else cell.comparison_id,
        cell_position=None if cell is None else cell.cell_position,
        epochs=[],
        attempt_rows=[],
        labels=[JobLabel(key=key, value=value) for key, value in sorted((spec.labels or {}).items())],
    )
    if idempotency_key is None:
        session.add(job)
        session.flush()
        _reuse(session, job, spec, reuse)
        events.status(session, job.id)  # queued, or succeeded by reuse
        return job, True
    # A concurrent request with the same key may have inserted its row after our SELECT (possible
    # on PostgreSQL; SQLite's BEGIN IMMEDIATE serialises the two). The unique index then rejects
    # ours: undo just the INSERT (savepoint) and answer with the winner's job, as for a repeat.
    try:
        with session.begin_nested():
            session.add(job)
    except IntegrityError:
        existing = _by_key(session, idempotency_key)
        if existing is None:
            raise
        return _same_request(existing, fingerprint), False
    _reuse(session, job, spec, reuse)
    events.status(session, job.id)
    return job, True


def _reuse(session: Session, job: Job, spec: AnySpec, policy: ReusePolicy | None) -> None:
    if spec.reuse and policy is not None and job.spec_sha256 is not None:
        original = find_original(session, job.spec_sha256, policy)
        if original is not None:
            adopt(session, job, original, policy)


# Epochs and attempts of one job come in the same query (a join); labels in a second one (joined
# too, they would multiply the rows once more); those of a page of jobs in one query per child
# table for the whole page (a join there would repeat each job's epochs for every attempt).
ONE_WITH_CHILDREN = (joinedload(Job.epochs), joinedload(Job.attempt_rows), selectinload(Job.labels))
PAGE_WITH_CHILDREN = (selectinload(Job.epochs), selectinload(Job.attempt_rows), selectinload(Job.labels))


def get(session: Session, job_id: str) -> Job:
    job = session.scalars(select(Job).where(Job.id == job_id).options(*ONE_WITH_CHILDREN)).unique().one_or_none()
    if job is None:
        raise NotFound(f"no job with id {job_id}", field="id")
    return job


def steps(session: Session, job_id: str, *, from_step: int, limit: int) -> list[StepMetrics]:
    """The job's recorded training losses from `from_step` on, oldest first (404 for no such job).
    Each chunk holds at least one point from `from_step` on, so `limit` chunks hold enough."""
    if session.get(Job, job_id) is None:
        raise NotFound(f"no job with id {job_id}", field="id")
    chunks = session.scalars(
        select(StepChunk)
        .where(StepChunk.job_id == job_id, StepChunk.last_step >= from_step)
        .order_by(StepChunk.first_step)
        .limit(limit)
    )
    points = (point for chunk in chunks for point in chunk.unpacked() if point.step >= from_step)
    return [StepMetrics(**point._asdict()) for point in itertools.islice(points, limit)]


def cancel(session: Session, job_id: str, caller: Caller | None = None) -> Job:
    """Queued: cancelled at once. Running: flagged; its worker stops at the next step boundary.
    With `caller`: only a job it may change (Forbidden otherwise), checked on the row read here."""
    job = get(session, job_id)
    if caller is not None:
        caller.require_owner(job.submitted_by)
    if job.status.is_final:
        raise Conflict(f"job {job_id} is already {job.status}", field="status")
    if job.status == JobStatus.queued:
        job.status, job.finished_at = JobStatus.cancelled, utcnow()
    job.cancel_requested = True
    job.updated_at = utcnow()
    session.flush()
    events.status(session, job_id)  # cancelled; or still running, with cancel_requested
    return job


def delete(session: Session, job_id: str, store: ArtifactStore) -> None:
    """Remove an ended job's files first, then its row (in the caller's transaction). Files that
    cannot be removed raise FilesNotRemoved before the row is touched, so the row stays and
    still points at them: nothing is left on disk that no row knows of."""
    job = get(session, job_id)
    if not job.status.is_final:
        raise Conflict(f"job {job_id} is {job.status}; cancel it first", field="status")
    store.delete_job(job_id)
    session.delete(job)
    session.flush()


def checkpoint(session: Session, job_id: str, epoch: int | None) -> tuple[int, StoredFile]:
    """The epoch and checkpoint file to download: `epoch`'s, or the latest epoch's that is kept."""
    job = get(session, job_id)
    saved = [(row.epoch, file) for row in job.epochs if (file := row.checkpoint_file()) is not None]
    if not saved:
        raise Conflict(f"job {job_id} ({job.status}) has no checkpoint yet", field="status")
    if epoch is None:
        return saved[-1]
    for found in saved:
        if found[0] == epoch:
            return found
    listed = ", ".join(str(number) for number, _ in saved)
    if any(row.epoch == epoch for row in job.epochs):
        raise NotFound(
            f"job {job_id}: the checkpoint for epoch {epoch} was pruned (keep_checkpoints keeps the last "
            f"epochs' and the best one; saved: {listed})",
            field="epoch",
        )
    raise NotFound(f"job {job_id} has no checkpoint for epoch {epoch} (saved: {listed})", field="epoch")


def checkpoint_url(job_id: str, epoch: int) -> str:
    return f"/v1/jobs/{job_id}/checkpoint?epoch={epoch}"


def view(job: Job, viewer: Caller | None = None) -> JobRead:
    """The public view of a job (checkpoints listed from their rows, so they are always current), as
    `viewer` may see it: `submitted_by` only for its submitter and admins (null for no viewer)."""
    result = None
    if job.result is not None:
        checkpoints = [
            CheckpointRead(
                epoch=e.epoch,
                size_bytes=e.checkpoint_size_bytes,
                sha256=e.checkpoint_sha256,
                url=checkpoint_url(job.id, e.epoch),
            )
            for e in job.epochs
            if e.checkpoint_size_bytes is not None and e.checkpoint_sha256 is not None  # else pruned
        ]
        result = JobResult(**job.result, checkpoints=checkpoints)
    spec = job_spec_adapter.validate_python(job.spec)
    return JobRead(
        id=job.id,
        name=job.name,
        labels={label.key: label.value for label in job.labels},
        status=job.status,
        architecture=job.architecture,
        dataset=job.dataset,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        cancel_requested=job.cancel_requested,
        progress=None if job.progress is None else Progress.model_validate(job.progress),
        spec=spec,
        param_count=job.param_count,
        cost=estimate(spec),
        metrics=[
            EpochMetrics(epoch=e.epoch, train_loss=e.train_loss, test_loss=e.test_loss, test_accuracy=e.test_accuracy)
            for e in job.epochs
        ],
        result=result,
        error=job.error,
        history=[
            AttemptRead(
                attempt=a.attempt,
                worker_id=a.worker_id,
                started_at=a.started_at,
                resumed_from_epoch=a.resumed_from_epoch,
                resumed_from_step=a.resumed_from_step,
                ended=None if a.outcome is None else a.outcome,
            )
            for a in job.attempt_rows
        ],
        submitted_by=shown_submitter(viewer, job.submitted_by),
        comparison_id=job.comparison_id,
        reused_from=job.reused_from,
    )


@contextmanager
def _checkpoint_there(epoch: int) -> Iterator[None]:
    """A checkpoint file gone from the store is the download's 404, naming the epoch."""
    try:
        yield
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise NotFound(f"checkpoint file for epoch {epoch} is gone from the artifact store", field="epoch") from None


def checkpoint_bytes(store: ArtifactStore, epoch: int, file: StoredFile) -> bytes:
    """A checkpoint's bytes for a download, verified against its recorded sha256."""
    with _checkpoint_there(epoch):
        return read_verified(store, file, f"checkpoint for epoch {epoch}", field="epoch")


def checkpoint_path(store: ArtifactStore, epoch: int, file: StoredFile) -> Path:
    """A local file with the checkpoint's bytes, for the inference helper (which verifies them)."""
    with _checkpoint_there(epoch):
        return store.local_copy(file)


def download_url(store: ArtifactStore, epoch: int, file: StoredFile, filename: str) -> str | None:
    """Where the caller may fetch the file itself (a presigned URL, checked first), or None: streamed."""
    with _checkpoint_there(epoch):
        return store.download_url(file, filename)
