"""The reaper: running jobs whose lease expired (a worker killed, paused, or cut off) are requeued
with a growing, jittered delay, or end (failed past max_attempts; cancelled when asked). Every
worker reaps every MNIST_JOBS_REAP_SECONDS, busy ones from their heartbeat thread. Expiry is read
on the database's clock, and each requeue is guarded by the lease it ends, so a lease renewed
meanwhile is never reaped.
"""

from __future__ import annotations

import random
from datetime import UTC, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.platform import events
from service.platform.db import db_now
from service.platform.models import Job
from service.platform.states import JobStatus, Outcome
from service.queue.leases import Lease, close_attempt, fenced


def retry_delay(attempts: int, base_seconds: float, max_seconds: float) -> float:
    """Exponential backoff with jitter in [1, 1.5): delays grow strictly from one attempt to the next."""
    return float(min(max_seconds, base_seconds * 2 ** (attempts - 1) * (1 + random.random() / 2)))


def reap(
    session: Session,
    *,
    base_seconds: float,
    max_seconds: float,
    restart_grace_seconds: float = 0.0,
) -> list[str]:
    """Requeue running jobs whose lease expired (their attempt counts); fail them past max_attempts.

    `restart_grace_seconds` (the workers pass their lease): on PostgreSQL nothing is reaped that
    long after the server started. Leases run out while the server is down, but their workers may
    only be waiting to reconnect; a restart must not cost their jobs an attempt. A worker that
    really died meanwhile is reaped one grace later."""
    now = db_now(session)
    if restart_grace_seconds > 0 and session.get_bind().dialect.name == "postgresql":
        started = session.scalar(select(func.timezone("UTC", func.pg_postmaster_start_time())))
        if started is not None and now < started.replace(tzinfo=UTC) + timedelta(seconds=restart_grace_seconds):
            return []
    expired = session.execute(
        select(Job.id, Job.lease_token, Job.attempts, Job.max_attempts, Job.cancel_requested)
        .where(Job.status == JobStatus.running, Job.lease_expires_at < now)
        .with_for_update(skip_locked=True)  # a row its worker is writing now is reaped next time
    ).all()
    reaped: list[str] = []
    for job in expired:
        lease = Lease(job.id, job.lease_token)
        # Guarded again by the expiry: a row whose lease was renewed since the SELECT (possible on
        # PostgreSQL under READ COMMITTED) is skipped, never requeued under its live worker, and
        # one such row does not roll back the others' requeues.
        ended = (
            fenced(lease)
            .where(Job.lease_expires_at < now)
            .values(updated_at=now, lease_token=None, lease_expires_at=None)
        )
        if job.cancel_requested:
            ended = ended.values(status=JobStatus.cancelled, finished_at=now)
        elif job.attempts >= job.max_attempts:
            error = f"worker lost {job.attempts} times (max_attempts {job.max_attempts})"
            ended = ended.values(status=JobStatus.failed, finished_at=now, error=error)
        else:
            delay = timedelta(seconds=retry_delay(job.attempts, base_seconds, max_seconds))
            ended = ended.values(status=JobStatus.queued, run_after=now + delay, progress=None)
        if session.execute(ended).rowcount == 1:  # type: ignore[attr-defined]  # CursorResult has it
            close_attempt(session, lease, Outcome.lease_expired, now)
            events.status(session, job.id)
            reaped.append(job.id)
    return reaped
