"""The queries behind GET /metrics (api/metrics.py turns them into Prometheus families).

Each is one statement, read at scrape time from the database both processes share, so the figures
are the fleet's, not one process's; each reads what is live or recent (queued and running jobs,
live workers, the jobs that ended since the last scrape, through an index), never the finished
history. No prometheus import here: the service knows nothing of HTTP.

Jobs by status are kept as they change: the database's own triggers on `jobs` (migration 0008)
append a +1/-1 row to job_count_changes in the transaction of every insert, status change and
delete, so no code path can miss one and a rolled-back change leaves none; fold_job_counts moves
them into job_counts, run by every process's upkeep (service.platform.upkeep), so the changes
stay a few seconds' worth.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, literal_column, or_, select, union_all, update
from sqlalchemy.orm import Session
from sqlalchemy.sql import Subquery

from service.platform.models import Job, JobCount, JobCountChange, StepChunk, Worker
from service.platform.states import JobStatus


@dataclass(frozen=True)
class QueueSummary:
    runnable: int  # queued jobs a worker may claim now (run_after passed)
    oldest_created_at: datetime | None  # of every queued job, backing off ones included


@dataclass(frozen=True)
class LiveWorker:
    id: str
    host: str
    device: str
    last_seen_at: datetime


@dataclass(frozen=True)
class EndedJob:
    id: str
    status: JobStatus
    architecture: str
    seconds: float  # finished_at - started_at: the last attempt's run, as the job's JSON shows it
    finished_at: datetime


@dataclass(frozen=True)
class JobSamples:
    status: JobStatus
    samples: int  # training samples the job had seen at its last recorded step (0: none yet)


FOLD_LOCK = 0x6D6E6A6F  # PostgreSQL advisory lock key of the fold ("mnjo"): one folder at a time


def _counted() -> Subquery:
    """(status, n) rows whose sums per status are the jobs of each: job_counts and the changes."""
    return union_all(
        select(JobCount.status, JobCount.jobs.label("n")),
        select(JobCountChange.status, JobCountChange.delta.label("n")),
    ).subquery()


def jobs_by_status(session: Session) -> dict[JobStatus, int]:
    """Every status with its number of jobs (0 for none): job_counts plus the changes not folded
    yet, added up in one statement (one snapshot), so exact whenever it is read."""
    counted = _counted()
    found = {status: 0 for status in JobStatus}
    for status, n in session.execute(select(counted.c.status, func.sum(counted.c.n)).group_by(counted.c.status)):
        found[JobStatus(status)] = int(n)
    return found


def fold_job_counts(session: Session) -> int:
    """Move the changes into job_counts, in the caller's write transaction; returns how many moved.
    The DELETE ... RETURNING sums exactly the rows it removed, whatever commits meanwhile. On
    PostgreSQL a second process folding at the same moment skips instead of waiting."""
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres and not session.scalar(select(func.pg_try_advisory_xact_lock(literal_column(str(FOLD_LOCK))))):
        return 0
    moved = session.execute(delete(JobCountChange).returning(JobCountChange.status, JobCountChange.delta)).all()
    sums: Counter[JobStatus] = Counter()
    for status, delta in moved:
        sums[status] += delta
    for status, delta in sorted(sums.items()):
        if delta == 0:
            continue
        added = session.execute(update(JobCount).where(JobCount.status == status).values(jobs=JobCount.jobs + delta))
        if added.rowcount == 0:  # type: ignore[attr-defined]  # a status no job had before
            session.add(JobCount(status=JobStatus(status), jobs=delta))
            session.flush()
    return len(moved)


def queue_summary(session: Session, now: datetime) -> QueueSummary:
    """In one statement (one snapshot): the queued jobs counted, less those backing off (a range of
    ix_jobs_run_after: only the ones whose run_after is still ahead), and the oldest one's creation
    (the first entry of ix_jobs_status), so it costs the same with ten queued jobs as with a million."""
    queued = Job.status == JobStatus.queued
    counted = _counted()
    total = select(func.coalesce(func.sum(counted.c.n), 0)).where(counted.c.status == JobStatus.queued)
    backing_off = select(func.count()).select_from(Job).where(queued, Job.run_after > now)
    oldest = select(func.min(Job.created_at)).where(queued)
    row = session.execute(
        select(total.scalar_subquery(), backing_off.scalar_subquery(), oldest.scalar_subquery())
    ).one()
    return QueueSummary(runnable=max(int(row[0]) - int(row[1]), 0), oldest_created_at=row[2])


def live_workers(session: Session, host: str | None = None) -> list[LiveWorker]:
    """Workers not stopped (nor marked gone), optionally of one host, oldest first."""
    query = select(Worker.id, Worker.host, Worker.device, Worker.last_seen_at).where(Worker.stopped_at.is_(None))
    if host is not None:
        query = query.where(Worker.host == host)
    return [LiveWorker(*row) for row in session.execute(query.order_by(Worker.started_at, Worker.id))]


def ended_since(session: Session, since: datetime) -> list[EndedJob]:
    """Jobs that ended (finished_at) after `since` having trained (not a job cancelled while queued,
    whose started_at is unset, nor one created succeeded by reuse), oldest ending first. Only an
    ending sets finished_at (a hand-back clears it), so the range on its index is the whole test:
    a term on status would lead SQLite's planner to walk every finished job by ix_jobs_status."""
    rows = session.execute(
        select(Job.id, Job.status, Job.architecture, Job.started_at, Job.finished_at)
        .where(Job.finished_at > since, Job.started_at.is_not(None), Job.reused_from.is_(None))
        .order_by(Job.finished_at, Job.id)
    )
    return [
        EndedJob(
            row.id,
            row.status,
            row.architecture,
            seconds=(row.finished_at - row.started_at).total_seconds(),
            finished_at=row.finished_at,
        )
        for row in rows
    ]


def samples_seen(session: Session, job_ids: Collection[str]) -> dict[str, JobSamples]:
    """Each running job's, and each of `job_ids`', training samples seen so far: the `samples` of
    its highest recorded step (one index seek per job; the rows lag the trainer by at most
    MNIST_JOBS_STEP_METRICS_EVERY steps, written with the heartbeat)."""
    last_step = (
        select(StepChunk.samples)
        .where(StepChunk.job_id == Job.id)
        .order_by(StepChunk.first_step.desc())
        .limit(1)
        .scalar_subquery()
    )
    wanted = Job.status == JobStatus.running
    if job_ids:
        wanted = or_(wanted, Job.id.in_(list(job_ids)))
    rows = session.execute(select(Job.id, Job.status, func.coalesce(last_step, 0)).where(wanted))
    return {job_id: JobSamples(status, samples) for job_id, status, samples in rows}
