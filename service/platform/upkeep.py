"""What keeps the tables from growing with time, run every MNIST_JOBS_REAP_SECONDS by each worker
(from its claim loop, and from its heartbeat while a job runs) and by each API process, so a
deployment of only an API still prunes: the events past MNIST_JOBS_EVENTS_KEEP_SECONDS go, and
the job count changes are folded into the counts (service.platform.metrics)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.platform import events, metrics


def tidy(session: Session, events_keep_seconds: float) -> None:
    """In the caller's write transaction."""
    events.prune(session, events_keep_seconds)
    metrics.fold_job_counts(session)
