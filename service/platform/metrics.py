"""The queries behind GET /metrics (api/metrics.py turns them into Prometheus families).

Each is one statement, read at scrape time from the database both processes share, so the figures
are the fleet's, not one process's. No prometheus import here: the service knows nothing of HTTP.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from service.platform.models import Job, Step, Worker
from service.platform.states import FINAL_STATUSES, JobStatus


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


def jobs_by_status(session: Session) -> dict[JobStatus, int]:
    """Every status with its count (0 for none), from one grouped COUNT."""
    counts = {status: 0 for status in JobStatus}
    for status, count in session.execute(select(Job.status, func.count()).group_by(Job.status)):
        counts[status] = count
    return counts


def queue_summary(session: Session, now: datetime) -> QueueSummary:
    queued = Job.status == JobStatus.queued
    row = session.execute(
        select(func.count().filter(Job.run_after <= now), func.min(Job.created_at)).where(queued)
    ).one()
    return QueueSummary(runnable=row[0] or 0, oldest_created_at=row[1])


def live_workers(session: Session, host: str | None = None) -> list[LiveWorker]:
    """Workers not stopped (nor marked gone), optionally of one host, oldest first."""
    query = select(Worker.id, Worker.host, Worker.device, Worker.last_seen_at).where(Worker.stopped_at.is_(None))
    if host is not None:
        query = query.where(Worker.host == host)
    return [LiveWorker(*row) for row in session.execute(query.order_by(Worker.started_at, Worker.id))]


def ended_since(session: Session, since: datetime) -> list[EndedJob]:
    """Jobs that ended (finished_at) after `since` having trained (not a job cancelled while queued,
    whose started_at is unset, nor one created succeeded by reuse), oldest ending first."""
    rows = session.execute(
        select(Job.id, Job.status, Job.architecture, Job.started_at, Job.finished_at)
        .where(
            Job.finished_at > since,
            Job.started_at.is_not(None),
            Job.reused_from.is_(None),
            Job.status.in_(list(FINAL_STATUSES)),
        )
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
    last_step = select(Step.samples).where(Step.job_id == Job.id).order_by(Step.step.desc()).limit(1).scalar_subquery()
    wanted = Job.status == JobStatus.running
    if job_ids:
        wanted = or_(wanted, Job.id.in_(list(job_ids)))
    rows = session.execute(select(Job.id, Job.status, func.coalesce(last_step, 0)).where(wanted))
    return {job_id: JobSamples(status, samples) for job_id, status, samples in rows}
