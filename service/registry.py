"""The registry of worker processes: each registers, is seen while it lives, and says when it stops."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.models import Worker, utcnow


def register(session: Session, worker_id: str, *, host: str, pid: int, device: str) -> None:
    now = utcnow()
    session.add(Worker(id=worker_id, host=host, pid=pid, device=device, started_at=now, last_seen_at=now))
    session.flush()


def seen(session: Session, worker_id: str, *, current_job_id: str | None, stopped: bool = False) -> None:
    values: dict[str, Any] = {"last_seen_at": utcnow(), "current_job_id": current_job_id}
    if stopped:
        values["stopped_at"] = utcnow()
    session.execute(update(Worker).where(Worker.id == worker_id).values(**values))


def list_workers(session: Session, *, include_stopped: bool = False) -> list[Worker]:
    query = select(Worker).order_by(Worker.started_at.desc())
    if not include_stopped:
        query = query.where(Worker.stopped_at.is_(None))
    return list(session.scalars(query))
