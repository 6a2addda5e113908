"""The events outbox: each change to a job that a client may watch live, appended in the change's
own transaction (the caller's session), so an event exists if and only if its change committed.

Kinds, and the payload each carries (the `data:` of a server-sent event; typed models below):

- `status`   {job_id, status, attempt, worker_id, error, cancel_requested}: the job was enqueued
  (queued, or succeeded when reuse answered it), claimed (running), ended (succeeded, failed,
  cancelled), handed back or reaped (queued again, or ended), or a cancel was requested while it
  runs (status still running, cancel_requested true). `attempt` is the job's attempt count.
- `progress` {job_id, epoch, step, steps, fraction, loss}: every heartbeat of a running job.
- `step`     {job_id, steps: [{step, epoch, samples, loss}, ...]}: one event per batch of step
  losses written (a heartbeat's, or what is left at the job's end), not one per row.
- `epoch`    {job_id, epoch, train_loss, test_loss, test_accuracy}: an epoch recorded.

A job's events come in the order its changes committed; a job ends with its final `status` event
(after its last `step` batch). Rows older than MNIST_JOBS_EVENTS_KEEP_SECONDS are pruned (prune).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar

from pydantic import BaseModel
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from service.jobs.schemas import EpochMetrics, Progress, StepMetrics
from service.platform.models import Event, Job, utcnow
from service.platform.states import JobStatus
from service.queue.wakeup import notify_queued


class EventKind(enum.StrEnum):
    status = "status"
    progress = "progress"
    step = "step"
    epoch = "epoch"


class StatusEvent(BaseModel):
    kind: ClassVar[EventKind] = EventKind.status
    job_id: str
    status: JobStatus
    attempt: int
    worker_id: str | None
    error: str | None
    cancel_requested: bool


class ProgressEvent(BaseModel):
    kind: ClassVar[EventKind] = EventKind.progress
    job_id: str
    epoch: int
    step: int
    steps: int
    fraction: float
    loss: float | None


class StepsEvent(BaseModel):
    kind: ClassVar[EventKind] = EventKind.step
    job_id: str
    steps: list[StepMetrics]


class EpochEvent(BaseModel):
    kind: ClassVar[EventKind] = EventKind.epoch
    job_id: str
    epoch: int
    train_loss: float | None
    test_loss: float | None
    test_accuracy: float


Payload = StatusEvent | ProgressEvent | StepsEvent | EpochEvent
PAYLOADS: dict[EventKind, type[Payload]] = {
    model.kind: model for model in (StatusEvent, ProgressEvent, StepsEvent, EpochEvent)
}


@dataclass(frozen=True)
class StoredEvent:
    """An event as read back: its id (the stream's `id:`), job and typed payload."""

    id: int
    job_id: str
    payload: Payload

    @property
    def kind(self) -> EventKind:
        return self.payload.kind

    @property
    def ends_job(self) -> bool:
        """The job's last event: a stream of that job ends after it."""
        return isinstance(self.payload, StatusEvent) and self.payload.status.is_final


# Writing: called by service.queue.leases and service.jobs.lifecycle inside the write they describe.


def _append(session: Session, payloads: Sequence[Payload]) -> None:
    if payloads:
        now = utcnow()
        rows = [
            {"job_id": p.job_id, "kind": p.kind.value, "data": p.model_dump(mode="json"), "created_at": now}
            for p in payloads
        ]
        session.execute(insert(Event), rows)


def status(session: Session, *job_ids: str) -> None:
    """A `status` event for each job, as its row reads now (after the caller's update)."""
    if not job_ids:
        return
    columns = (Job.id, Job.status, Job.attempts, Job.worker_id, Job.error, Job.cancel_requested)
    rows = {row.id: row for row in session.execute(select(*columns).where(Job.id.in_(job_ids)))}
    _append(
        session,
        [
            StatusEvent(
                job_id=job_id,
                status=row.status,
                attempt=row.attempts,
                worker_id=row.worker_id,
                error=row.error,
                cancel_requested=row.cancel_requested,
            )
            for job_id in job_ids
            if (row := rows.get(job_id)) is not None
        ],
    )
    if any(row.status == JobStatus.queued for row in rows.values()):
        notify_queued(session)  # idle workers wake on the commit (PostgreSQL; SQLite's poll)


def progress(session: Session, job_id: str, value: Progress | None) -> None:
    if value is not None:
        _append(session, [ProgressEvent(job_id=job_id, **value.model_dump())])


def steps(session: Session, job_id: str, rows: Sequence[StepMetrics]) -> None:
    if rows:
        _append(session, [StepsEvent(job_id=job_id, steps=list(rows))])


def epoch(session: Session, job_id: str, metrics: EpochMetrics) -> None:
    _append(
        session,
        [
            EpochEvent(
                job_id=job_id,
                epoch=metrics.epoch,
                train_loss=metrics.train_loss,
                test_loss=metrics.test_loss,
                test_accuracy=metrics.test_accuracy,
            )
        ],
    )


def prune(session: Session, keep_seconds: float) -> int:
    """Delete the events older than `keep_seconds`; returns how many went."""
    cutoff = utcnow() - timedelta(seconds=keep_seconds)
    result = session.execute(delete(Event).where(Event.created_at < cutoff))
    return int(result.rowcount)  # type: ignore[attr-defined]  # CursorResult has it


# Reading: the API's streams.


def latest_id(session: Session) -> int:
    """The newest event's id (0 for none): a stream that starts now wants the ones after it."""
    return session.scalar(select(func.max(Event.id))) or 0


def resumable(session: Session, last_id: int) -> bool:
    """Whether every event after `last_id` is still stored: none of them pruned yet, and `last_id`
    one this table has given out (not one of a database since replaced)."""
    oldest, newest = session.execute(select(func.min(Event.id), func.max(Event.id))).one()
    return oldest is not None and oldest <= last_id + 1 and last_id <= newest


def after(session: Session, last_id: int, *, limit: int, job_id: str | None = None) -> list[StoredEvent]:
    """Up to `limit` events with ids above `last_id`, oldest first; with `job_id`, that job's only."""
    query = select(Event.id, Event.job_id, Event.kind, Event.data).where(Event.id > last_id)
    if job_id is not None:
        query = query.where(Event.job_id == job_id)
    return [
        StoredEvent(row.id, row.job_id, PAYLOADS[EventKind(row.kind)].model_validate(row.data))
        for row in session.execute(query.order_by(Event.id).limit(limit))
    ]
