"""The registry of worker processes: each registers, is seen while it lives, and says when it stops.

A worker that dies without saying so (SIGKILL, a lost host) is marked gone by the others once it
has been silent longer than a lease: its `stopped_at` becomes the last time it was seen. A worker
that was only paused and comes back clears the mark with its next sign of life.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.models import Worker, utcnow


def register(session: Session, worker_id: str, *, host: str, pid: int, device: str) -> None:
    now = utcnow()
    session.add(Worker(id=worker_id, host=host, pid=pid, device=device, started_at=now, last_seen_at=now))
    session.flush()


def seen(session: Session, worker_id: str, *, current_job_id: str | None, stopped: bool = False) -> None:
    now = utcnow()
    values: dict[str, Any] = {"last_seen_at": now, "current_job_id": current_job_id, "stopped_at": None}
    if stopped:
        values["stopped_at"] = now
    session.execute(update(Worker).where(Worker.id == worker_id).values(**values))


def mark_gone(session: Session, *, silent_seconds: float) -> list[str]:
    """Mark workers silent for longer than `silent_seconds` as stopped when last seen; their ids."""
    silent = (Worker.stopped_at.is_(None), Worker.last_seen_at < utcnow() - timedelta(seconds=silent_seconds))
    gone = list(session.scalars(select(Worker.id).where(*silent)))
    if gone:
        session.execute(
            update(Worker)
            .where(Worker.id.in_(gone), *silent)
            .values(stopped_at=Worker.last_seen_at, current_job_id=None)
        )
    return gone


def list_workers(session: Session, *, include_stopped: bool = False) -> list[Worker]:
    query = select(Worker).order_by(Worker.started_at.desc())
    if not include_stopped:
        query = query.where(Worker.stopped_at.is_(None))
    return list(session.scalars(query))
