"""The worker's side of the queue: claim, heartbeat, fenced endings, hand back (service/queue/reaper.py
requeues the jobs whose lease expired).

Every function takes a session inside a transaction its caller opened (one per worker step). A
claim is one UPDATE ... WHERE id IN (oldest queued) RETURNING; on SQLite the write transaction is
BEGIN IMMEDIATE, on PostgreSQL the subquery locks with SKIP LOCKED, so two workers never take the
same job. After a claim every write of the worker is fenced: an UPDATE guarded by id AND
lease_token AND status = 'running'. When it touches no row the worker has lost the job, and the
rows it would have added (an epoch, step losses, the end of its attempt) are not written either,
nor the events (service.platform.events) that each change appends in the same transaction. Leases and
run_after are measured on the database's clock (service.platform.db.db_now).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Update, and_, case, delete, func, insert, literal, select, update
from sqlalchemy.orm import Session

from service.jobs.schemas import AnySpec, EpochRecord, Progress, StepMetrics, TrainResult, job_spec_adapter
from service.platform import events
from service.platform.db import db_now, unindexed
from service.platform.errors import LeaseLost
from service.platform.models import Attempt, Epoch, Job, StepChunk, StepPoint, utcnow
from service.platform.states import JobStatus, Outcome
from service.storage.store import StoredFile


@dataclass(frozen=True)
class Lease:
    """What every fenced write is guarded by: the job and the token of the claim that holds it."""

    job_id: str
    token: str


@dataclass(frozen=True)
class Claim(Lease):
    """A claimed job as the worker sees it: typed spec, attempt number, and where to resume from."""

    spec: AnySpec
    attempt: int
    resume: StoredFile | None  # the latest checkpoint (an epoch's, or a mid-epoch hand-back's)
    # time.monotonic() just before the claim read the database's clock: the lease holds at least
    # until lease_from + lease_seconds on this process's clock (Live.lease_until starts there).
    lease_from: float


def claim(
    session: Session, worker_id: str, lease_seconds: float, *, limit: int = 1, pack_key: str | None = None
) -> list[Claim]:
    """Take up to `limit` of the oldest runnable queued jobs, oldest first. With `pack_key`: only
    fresh jobs (nothing to resume) of that key, the ones that can join a pack."""
    lease_from = time.monotonic()
    now = db_now(session)
    oldest = (
        select(Job.id)
        .where(Job.status == JobStatus.queued, unindexed(Job.run_after) <= now)
        .order_by(Job.created_at, Job.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if pack_key is not None:
        oldest = oldest.where(Job.pack_key == pack_key, Job.resume_path.is_(None))
    token = str(uuid.uuid4())
    rows = session.execute(
        update(Job)
        .where(Job.id.in_(oldest.scalar_subquery()))
        .values(
            status=JobStatus.running,
            attempts=Job.attempts + 1,
            lease_token=token,
            worker_id=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            started_at=now,
            updated_at=now,
            progress=None,
        )
        .returning(Job.id, Job.spec, Job.attempts, Job.resume_path, Job.resume_sha256, Job.created_at)
        .execution_options(synchronize_session=False)
    ).all()
    rows = sorted(rows, key=lambda row: (row.created_at, row.id))
    if rows:
        session.execute(
            insert(Attempt),
            [
                {
                    "job_id": row.id,
                    "lease_token": token,
                    "attempt": row.attempts,
                    "worker_id": worker_id,
                    "started_at": now,
                }
                for row in rows
            ],
        )
        events.status(session, *(row.id for row in rows))
    return [
        Claim(
            job_id=row.id,
            token=token,
            spec=job_spec_adapter.validate_python(row.spec),
            attempt=row.attempts,
            resume=StoredFile.existing(row.resume_path, row.resume_sha256),
            lease_from=lease_from,
        )
        for row in rows
    ]


def seconds_until_runnable(session: Session) -> float | None:
    """How long until a queued job may be claimed: 0 when one may now, None when none is queued. A
    cheap read (the claim index) that lets idle workers skip a claim's write transaction, and
    tells them when a retry's backoff ends (no notification marks that moment)."""
    soonest = session.scalar(select(func.min(Job.run_after)).where(Job.status == JobStatus.queued))
    if soonest is None:
        return None
    return max((soonest - db_now(session)).total_seconds(), 0.0)


def held_by(lease: Lease) -> ColumnElement[bool]:
    """The fence: the job is still running under this lease. Every worker write, and the reaper's
    requeue, is guarded by it."""
    return and_(Job.id == lease.job_id, Job.lease_token == lease.token, Job.status == JobStatus.running)


def fenced(lease: Lease) -> Update:
    """An UPDATE of the job guarded by the fence; callers add what they write with .values()."""
    return update(Job).where(held_by(lease)).values(updated_at=utcnow()).execution_options(synchronize_session=False)


def _lost(lease: Lease) -> LeaseLost:
    return LeaseLost(f"job {lease.job_id}: lease {lease.token} is no longer held")


def _write(session: Session, lease: Lease, statement: Update) -> None:
    """Run a fenced UPDATE; raises LeaseLost when it touched no row (another worker owns the job)."""
    if session.execute(statement).rowcount != 1:  # type: ignore[attr-defined]  # CursorResult has it
        raise _lost(lease)


def _attempt(lease: Lease) -> ColumnElement[bool]:
    """The attempt row of the lease's claim."""
    return and_(Attempt.job_id == lease.job_id, Attempt.lease_token == lease.token)


def attempt_outcome(session: Session, lease: Lease) -> Outcome | None:
    """How the lease's attempt ended (None while it runs)."""
    return session.scalar(select(Attempt.outcome).where(_attempt(lease)))


def close_attempt(session: Session, lease: Lease, outcome: Outcome, at: datetime) -> None:
    """Write how the lease's attempt ended, and when."""
    session.execute(update(Attempt).where(_attempt(lease)).values(ended_at=at, outcome=outcome))


def _end(session: Session, lease: Lease, outcome: Outcome, steps: Sequence[StepMetrics], statement: Update) -> None:
    """A fenced ending: the job's guarded UPDATE (`statement`, which says what it writes), the step
    losses not yet written, its attempt row closed with `outcome`, and the job's final status event
    (after its last `step` event)."""
    _write(session, lease, statement.values(lease_expires_at=None))
    _replace_steps(session, lease.job_id, steps)
    close_attempt(session, lease, outcome, utcnow())
    events.status(session, lease.job_id)


def heartbeat(session: Session, lease: Lease, lease_seconds: float, progress: Progress | None) -> bool:
    """Renew the lease and store progress; returns whether a cancel was requested."""
    now = db_now(session)
    renew = fenced(lease).values(lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now)
    if progress is not None:
        renew = renew.values(progress=progress.model_dump(mode="json"))
    cancel_requested = session.scalar(renew.returning(Job.cancel_requested))
    if cancel_requested is None:
        raise _lost(lease)
    events.progress(session, lease.job_id, progress)
    return bool(cancel_requested)


def cancels_requested(session: Session, leases: Sequence[Lease]) -> set[str]:
    """The jobs of `leases` still running under them that a cancel was asked of. A read: on SQLite
    (WAL) it never waits for the write lock, however many writers queue for it."""
    tokens = {lease.job_id: lease.token for lease in leases}
    if not tokens:
        return set()
    rows = session.execute(
        select(Job.id, Job.lease_token).where(
            Job.id.in_(tokens), Job.status == JobStatus.running, Job.cancel_requested.is_(True)
        )
    )
    return {row.id for row in rows if row.lease_token == tokens[row.id]}


def note_resume(session: Session, lease: Lease, epoch: int, step: int) -> None:
    """Record on the attempt where its training resumed from."""
    _write(session, lease, fenced(lease))
    session.execute(update(Attempt).where(_attempt(lease)).values(resumed_from_epoch=epoch, resumed_from_step=step))


def record_epoch(
    session: Session, lease: Lease, metrics: EpochRecord, checkpoint: StoredFile, keep: int | None = None
) -> list[str]:
    """Store an epoch's metrics and its checkpoint, which becomes the point to resume from; with
    `keep`, prune the older checkpoints in the same guarded write (see prune_checkpoints) and return
    the paths of their files, for the caller to remove once this commits."""
    _write(session, lease, fenced(lease).values(resume_path=checkpoint.path, resume_sha256=checkpoint.sha256))
    recorded = select(Epoch.checkpoint_path).where(Epoch.job_id == lease.job_id, Epoch.epoch == metrics.epoch)
    if session.scalar(recorded) == checkpoint.path:  # this very write, again: its commit's answer was lost
        return []
    # A retried attempt that re-ran this epoch replaces the row the lost attempt wrote.
    session.execute(delete(Epoch).where(Epoch.job_id == lease.job_id, Epoch.epoch == metrics.epoch))
    session.execute(
        insert(Epoch).values(
            job_id=lease.job_id,
            **metrics.model_dump(),
            checkpoint_path=checkpoint.path,
            checkpoint_size_bytes=checkpoint.size_bytes,
            checkpoint_sha256=checkpoint.sha256,
            created_at=utcnow(),
        )
    )
    events.epoch(session, lease.job_id, metrics)
    return [] if keep is None else _prune(session, lease.job_id, keep)


def kept_checkpoints(session: Session, job_id: str) -> list[StoredFile]:
    """The job's epoch checkpoints that still have a file (keep_checkpoints prunes some), newest first."""
    rows = session.scalars(select(Epoch).where(Epoch.job_id == job_id).order_by(Epoch.epoch.desc()))
    return [file for row in rows if (file := row.checkpoint_file()) is not None]


def record_steps(session: Session, lease: Lease, steps: Sequence[StepMetrics]) -> None:
    """Store step losses (the heartbeat's batch, or what is left when a job stops or ends)."""
    _write(session, lease, fenced(lease))
    _replace_steps(session, lease.job_id, steps)


def _replace_steps(session: Session, job_id: str, steps: Sequence[StepMetrics]) -> None:
    """record_steps' work, inside a write its caller already guarded: the batch becomes one chunk.
    The batches of one attempt come in step order; a retried attempt that trains steps again
    replaces every point from its first one on (the lost attempt's, possibly past where this one
    is now): the chunks from there go, and the one that straddles it keeps its earlier points."""
    if not steps:
        return
    points = sorted((StepPoint(s.step, s.epoch, s.samples, s.loss) for s in steps), key=lambda point: point.step)
    first = points[0].step
    this_job = StepChunk.job_id == job_id
    straddling = session.scalars(
        select(StepChunk).where(this_job, StepChunk.first_step < first, StepChunk.last_step >= first)
    ).one_or_none()
    session.execute(delete(StepChunk).where(this_job, StepChunk.first_step >= first))
    if straddling is not None:
        straddling.replace_points([point for point in straddling.unpacked() if point.step < first])
    session.add(StepChunk.of(job_id, points))
    session.flush()
    events.steps(session, job_id, steps)


def prune_checkpoints(session: Session, lease: Lease, keep: int) -> list[str]:
    """Keep the checkpoints of the job's last `keep` epochs that still have one, and of its best
    (highest test accuracy, the latest on ties); the others' checkpoint columns become null (their
    metrics stay). Returns the pruned files' paths, for the caller to remove once this commits.
    The job's resume file is never among them: it is the latest epoch's, which is kept."""
    _write(session, lease, fenced(lease))
    return _prune(session, lease.job_id, keep)


def _prune(session: Session, job_id: str, keep: int) -> list[str]:
    """prune_checkpoints' work, inside a write its caller already guarded."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, not {keep}")
    rows = session.execute(
        select(Epoch.epoch, Epoch.test_accuracy, Epoch.checkpoint_path)
        .where(Epoch.job_id == job_id, Epoch.checkpoint_path.is_not(None))
        .order_by(Epoch.epoch)
    ).all()
    if len(rows) <= keep:
        return []
    best = max(rows, key=lambda row: (row.test_accuracy, row.epoch))
    kept = {row.epoch for row in rows[-keep:]} | {best.epoch}
    resume_path = session.scalar(select(Job.resume_path).where(Job.id == job_id))
    pruned = [row for row in rows if row.epoch not in kept and row.checkpoint_path != resume_path]
    if not pruned:
        return []
    session.execute(
        update(Epoch)
        .where(Epoch.job_id == job_id, Epoch.epoch.in_([row.epoch for row in pruned]))
        .values(checkpoint_path=None, checkpoint_size_bytes=None, checkpoint_sha256=None)
        .execution_options(synchronize_session=False)
    )
    return [row.checkpoint_path for row in pruned]


def finish(
    session: Session,
    lease: Lease,
    result: TrainResult,
    progress: Progress | None,
    steps: Sequence[StepMetrics] = (),
) -> None:
    """The job succeeded: its result (test_accuracy also in its own column, which lists sort by)
    and the step losses not yet written, in one guarded write."""
    succeeded = fenced(lease).values(
        status=JobStatus.succeeded,
        result=result.model_dump(mode="json"),
        test_accuracy=result.test_accuracy,
        finished_at=utcnow(),
        progress=None if progress is None else progress.model_dump(mode="json"),
    )
    _end(session, lease, Outcome.succeeded, steps, succeeded)


def fail(session: Session, lease: Lease, error: str, steps: Sequence[StepMetrics] = ()) -> None:
    failed = fenced(lease).values(status=JobStatus.failed, error=error, finished_at=utcnow())
    _end(session, lease, Outcome.failed, steps, failed)


def mark_cancelled(session: Session, lease: Lease, steps: Sequence[StepMetrics] = ()) -> None:
    cancelled = fenced(lease).values(status=JobStatus.cancelled, finished_at=utcnow())
    _end(session, lease, Outcome.cancelled, steps, cancelled)


def _status(status: JobStatus) -> ColumnElement[JobStatus]:
    """A status as an SQL literal of the column's type (a CASE's branches need one)."""
    return literal(status, Job.status.type)


def hand_back(session: Session, lease: Lease, resume: StoredFile | None, steps: Sequence[StepMetrics] = ()) -> Outcome:
    """Graceful stop: the step losses not yet written, and the job back to the queue, where this
    attempt does not count. A cancel that arrived during the shutdown wins: the job ends cancelled
    instead. Returns which it was."""
    cancelled = Job.cancel_requested.is_(True)
    now = db_now(session)
    back = fenced(lease).values(
        status=case((cancelled, _status(JobStatus.cancelled)), else_=_status(JobStatus.queued)),
        attempts=case((cancelled, Job.attempts), else_=Job.attempts - 1),
        finished_at=case((cancelled, now), else_=None),
        worker_id=case((cancelled, Job.worker_id), else_=None),
        lease_token=None,
        lease_expires_at=None,
        run_after=now,
        updated_at=now,
        progress=None,
    )
    if resume is not None:
        back = back.values(resume_path=resume.path, resume_sha256=resume.sha256)
    status = session.scalar(back.returning(Job.status))
    if status is None:
        raise _lost(lease)
    _replace_steps(session, lease.job_id, steps)
    outcome = Outcome.cancelled if status is JobStatus.cancelled else Outcome.handed_back
    close_attempt(session, lease, outcome, now)
    events.status(session, lease.job_id)
    return outcome
