"""The job queue on the database: enqueue, claim, fenced worker writes, reaper, cancel, delete.

Every function takes a session inside a transaction its caller opened (one per request or per
worker step). A claim is one UPDATE ... WHERE id IN (oldest queued) RETURNING; on SQLite the write
transaction is BEGIN IMMEDIATE, on PostgreSQL the subquery locks with SKIP LOCKED, so two workers
never take the same job. After a claim every write of the worker is fenced: an UPDATE guarded by
id AND lease_token AND status = 'running'. When it touches no row the worker has lost the job.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.errors import Conflict, LeaseLost, NotFound
from service.models import Checkpoint, Job, JobStatus, Worker, utcnow
from service.schemas import CNNSpec, FCSpec
from service.training.nets import param_count

SEED_CHOICE_MAX = 2**31 - 1  # seeds chosen for the user stay short enough to read and retype


def request_sha256(spec: FCSpec | CNNSpec) -> str:
    """Fingerprint of what the client asked for (defaults filled, seed as given), for idempotency."""
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def pack_key(spec: dict[str, Any]) -> str:
    """Jobs with equal keys have the same shapes and schedule, so they can train as one stacked model."""
    keys = ("architecture", "n_hidden", "n_features", "batch_size", "test_batch_size", "epochs", "dataset", "lr", "momentum")
    return hashlib.sha256(json.dumps([spec.get(k) for k in keys]).encode()).hexdigest()


def enqueue(session: Session, spec: FCSpec | CNNSpec, *, default_max_attempts: int,
            idempotency_key: str | None = None) -> tuple[Job, bool]:
    """Add a job; returns (job, created). A repeated idempotency key returns the first job."""
    fingerprint = request_sha256(spec)
    if idempotency_key is not None:
        existing = session.scalars(select(Job).where(Job.idempotency_key == idempotency_key)).one_or_none()
        if existing is not None:
            if existing.request_sha256 != fingerprint:
                raise Conflict("this Idempotency-Key was already used with a different request body",
                               field="Idempotency-Key")
            return existing, False
    stored = spec.model_dump(mode="json", exclude={"max_attempts"})
    if stored["seed"] is None:
        stored["seed"] = secrets.randbelow(SEED_CHOICE_MAX + 1)
    now = utcnow()
    job = Job(
        id=str(uuid.uuid4()), status=JobStatus.queued.value, architecture=spec.architecture,
        dataset=spec.dataset, spec=stored, param_count=param_count(stored), pack_key=pack_key(stored),
        created_at=now, updated_at=now, run_after=now, attempts=0,
        max_attempts=spec.max_attempts or default_max_attempts, cancel_requested=False,
        metrics=[], history=[], idempotency_key=idempotency_key, request_sha256=fingerprint,
    )
    if idempotency_key is None:
        session.add(job)
        session.flush()
        return job, True
    # A concurrent request with the same key may have inserted its row after our SELECT (possible
    # on PostgreSQL; SQLite's BEGIN IMMEDIATE serialises the two). The unique index then rejects
    # ours: undo just the INSERT (savepoint) and answer with the winner's job, as for a repeat.
    try:
        with session.begin_nested():
            session.add(job)
    except IntegrityError:
        existing = session.scalars(select(Job).where(Job.idempotency_key == idempotency_key)).one_or_none()
        if existing is None:
            raise
        if existing.request_sha256 != fingerprint:
            raise Conflict("this Idempotency-Key was already used with a different request body",
                           field="Idempotency-Key") from None
        return existing, False
    return job, True


def get(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job with id {job_id}", field="id")
    return job


def list_jobs(session: Session, *, status: str | None = None, architecture: str | None = None,
              limit: int = 50, cursor: tuple[datetime, str] | None = None) -> list[Job]:
    """Newest first; `cursor` is the (created_at, id) of the last job of the previous page."""
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if status is not None:
        query = query.where(Job.status == status)
    if architecture is not None:
        query = query.where(Job.architecture == architecture)
    if cursor is not None:
        created, last_id = cursor
        query = query.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < last_id)))
    return list(session.scalars(query))


def claim(session: Session, worker_id: str, lease_seconds: float, *, limit: int = 1,
          pack_key: str | None = None) -> list[Job]:
    """Take up to `limit` of the oldest runnable queued jobs. With `pack_key`: only fresh jobs
    (nothing to resume) of that key, the ones that can join a pack."""
    now = utcnow()
    oldest = (
        select(Job.id)
        .where(Job.status == JobStatus.queued.value, Job.run_after <= now)
        .order_by(Job.created_at, Job.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if pack_key is not None:
        oldest = oldest.where(Job.pack_key == pack_key, Job.resume_path.is_(None))
    claimed = session.scalars(
        update(Job)
        .where(Job.id.in_(oldest.scalar_subquery()))
        .values(status=JobStatus.running.value, attempts=Job.attempts + 1, lease_token=str(uuid.uuid4()),
                worker_id=worker_id, lease_expires_at=now + timedelta(seconds=lease_seconds),
                started_at=now, updated_at=now, progress=None)
        .returning(Job)
        .execution_options(synchronize_session=False, populate_existing=True)
    ).all()
    for job in claimed:
        job.history = [*job.history, {"attempt": job.attempts, "worker_id": worker_id, "started_at": now.isoformat()}]
    session.flush()
    return sorted(claimed, key=lambda job: (job.created_at, job.id))


def has_runnable(session: Session) -> bool:
    """A cheap read that lets idle workers skip the write transaction of a claim."""
    query = select(Job.id).where(Job.status == JobStatus.queued.value, Job.run_after <= utcnow()).limit(1)
    return session.scalar(query) is not None


def _fenced(session: Session, job_id: str, token: str, **values: Any) -> None:
    """The guarded write every worker update goes through; raises LeaseLost when it touches no row."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_token == token, Job.status == JobStatus.running.value)
        .values(updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        raise LeaseLost(f"job {job_id}: lease {token} is no longer held")


def _owned(session: Session, job_id: str, token: str) -> Job:
    """Read a job the worker holds, for writes that build on its current values."""
    job = session.scalars(
        select(Job).where(Job.id == job_id, Job.lease_token == token, Job.status == JobStatus.running.value)
        .with_for_update().execution_options(populate_existing=True)
    ).one_or_none()
    if job is None:
        raise LeaseLost(f"job {job_id}: lease {token} is no longer held")
    return job


def _end_attempt(history: list[dict[str, Any]], how: str, **extra: Any) -> list[dict[str, Any]]:
    return [*history[:-1], {**history[-1], "ended": how, **extra}] if history else history


def heartbeat(session: Session, job_id: str, token: str, lease_seconds: float,
              progress: dict[str, Any] | None) -> bool:
    """Renew the lease and store progress; returns whether a cancel was requested."""
    values: dict[str, Any] = {"lease_expires_at": utcnow() + timedelta(seconds=lease_seconds)}
    if progress is not None:
        values["progress"] = progress
    _fenced(session, job_id, token, **values)
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def note_resume(session: Session, job_id: str, token: str, epoch: int, step: int) -> None:
    job = _owned(session, job_id, token)
    last = {**job.history[-1], "resumed_from_epoch": epoch, "resumed_from_step": step}
    _fenced(session, job_id, token, history=[*job.history[:-1], last])


def record_epoch(session: Session, job_id: str, token: str, row: dict[str, Any], *, path: str,
                 size_bytes: int, sha256: str) -> None:
    """Store an epoch's metrics and its checkpoint, which becomes the point to resume from."""
    job = _owned(session, job_id, token)
    metrics = [m for m in job.metrics if m["epoch"] != row["epoch"]] + [row]
    _fenced(session, job_id, token, metrics=metrics, resume_path=path, resume_sha256=sha256)
    existing = session.get(Checkpoint, (job_id, row["epoch"]))
    if existing is not None:  # a retried attempt that re-ran this epoch
        session.delete(existing)
        session.flush()
    session.add(Checkpoint(job_id=job_id, epoch=row["epoch"], path=path, size_bytes=size_bytes, sha256=sha256,
                           created_at=utcnow()))
    session.flush()


def finish(session: Session, job_id: str, token: str, result: dict[str, Any], progress: dict[str, Any] | None) -> None:
    job = _owned(session, job_id, token)
    _fenced(session, job_id, token, status=JobStatus.succeeded.value, result=result, finished_at=utcnow(),
            lease_expires_at=None, progress=progress, history=_end_attempt(job.history, "succeeded"))


def fail(session: Session, job_id: str, token: str, error: str) -> None:
    job = _owned(session, job_id, token)
    _fenced(session, job_id, token, status=JobStatus.failed.value, error=error, finished_at=utcnow(),
            lease_expires_at=None, history=_end_attempt(job.history, "failed"))


def mark_cancelled(session: Session, job_id: str, token: str) -> None:
    job = _owned(session, job_id, token)
    _fenced(session, job_id, token, status=JobStatus.cancelled.value, finished_at=utcnow(), lease_expires_at=None,
            history=_end_attempt(job.history, "cancelled"))


def hand_back(session: Session, job_id: str, token: str, *, resume_path: str | None = None,
              resume_sha256: str | None = None) -> None:
    """Graceful stop: the job goes back to the queue and this attempt does not count."""
    job = _owned(session, job_id, token)
    values: dict[str, Any] = {}
    if resume_path is not None:
        values = {"resume_path": resume_path, "resume_sha256": resume_sha256}
    if job.cancel_requested:  # a cancel that arrived during the shutdown wins: never queue it again
        _fenced(session, job_id, token, status=JobStatus.cancelled.value, finished_at=utcnow(), lease_token=None,
                lease_expires_at=None, progress=None, history=_end_attempt(job.history, "cancelled"), **values)
        return
    _fenced(session, job_id, token, status=JobStatus.queued.value, attempts=job.attempts - 1, lease_token=None,
            lease_expires_at=None, worker_id=None, run_after=utcnow(), progress=None,
            history=_end_attempt(job.history, "handed back"), **values)


def retry_delay(attempts: int, base_seconds: float, max_seconds: float) -> float:
    """Exponential backoff with jitter in [1, 1.5): delays grow strictly from one attempt to the next."""
    return min(max_seconds, base_seconds * 2 ** (attempts - 1) * (1 + random.random() / 2))


def reap(session: Session, *, base_seconds: float, max_seconds: float) -> list[str]:
    """Requeue running jobs whose lease expired (their attempt counts); fail them past max_attempts."""
    now = utcnow()
    expired = session.scalars(
        select(Job).where(Job.status == JobStatus.running.value, Job.lease_expires_at < now).with_for_update()
    ).all()
    reaped: list[str] = []
    for job in expired:
        history = _end_attempt(job.history, "lease expired")
        if job.cancel_requested:
            values = {"status": JobStatus.cancelled.value, "finished_at": now}
        elif job.attempts >= job.max_attempts:
            values = {"status": JobStatus.failed.value, "finished_at": now,
                      "error": f"worker lost {job.attempts} times (max_attempts {job.max_attempts})"}
        else:
            delay = retry_delay(job.attempts, base_seconds, max_seconds)
            values = {"status": JobStatus.queued.value, "run_after": now + timedelta(seconds=delay), "progress": None}
        # Guarded again by the expiry: a row whose lease was renewed since the SELECT (possible on
        # PostgreSQL under READ COMMITTED) is skipped, never requeued under its live worker, and
        # one such row does not roll back the others' requeues.
        result = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.lease_token == job.lease_token, Job.status == JobStatus.running.value,
                   Job.lease_expires_at < now)
            .values(updated_at=now, lease_token=None, lease_expires_at=None, history=history, **values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            reaped.append(job.id)
    return reaped


def cancel(session: Session, job_id: str) -> Job:
    """Queued: cancelled at once. Running: flagged; its worker stops at the next step boundary."""
    job = get(session, job_id)
    if JobStatus(job.status).is_final:
        raise Conflict(f"job {job_id} is already {job.status}", field="status")
    if job.status == JobStatus.queued.value:
        job.status, job.finished_at = JobStatus.cancelled.value, utcnow()
    job.cancel_requested = True
    job.updated_at = utcnow()
    session.flush()
    return job


def delete(session: Session, job_id: str) -> None:
    job = get(session, job_id)
    if not JobStatus(job.status).is_final:
        raise Conflict(f"job {job_id} is {job.status}; cancel it first", field="status")
    session.delete(job)
    session.flush()


def checkpoint(session: Session, job_id: str, epoch: int | None) -> Checkpoint:
    job = get(session, job_id)
    if not job.checkpoints:
        raise Conflict(f"job {job_id} ({job.status}) has no checkpoint yet", field="status")
    if epoch is None:
        return job.checkpoints[-1]
    for row in job.checkpoints:
        if row.epoch == epoch:
            return row
    saved = ", ".join(str(row.epoch) for row in job.checkpoints)
    raise NotFound(f"job {job_id} has no checkpoint for epoch {epoch} (saved: {saved})", field="epoch")


# Worker registry


def register_worker(session: Session, worker_id: str, *, host: str, pid: int, device: str) -> None:
    now = utcnow()
    session.add(Worker(id=worker_id, host=host, pid=pid, device=device, started_at=now, last_seen_at=now))
    session.flush()


def worker_seen(session: Session, worker_id: str, *, current_job_id: str | None, stopped: bool = False) -> None:
    values: dict[str, Any] = {"last_seen_at": utcnow(), "current_job_id": current_job_id}
    if stopped:
        values["stopped_at"] = utcnow()
    session.execute(update(Worker).where(Worker.id == worker_id).values(**values))


def list_workers(session: Session, *, include_stopped: bool = False) -> list[Worker]:
    query = select(Worker).order_by(Worker.started_at.desc())
    if not include_stopped:
        query = query.where(Worker.stopped_at.is_(None))
    return list(session.scalars(query))
