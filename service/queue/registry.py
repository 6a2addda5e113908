"""The registry of worker processes: each registers, is seen while it lives, and says when it stops.

A worker that dies without saying so (SIGKILL, a lost host) is marked gone by the others once it
has been silent longer than a lease: its `stopped_at` becomes the last time it was seen. A worker
that was only paused and comes back clears the mark with its next sign of life. Times are the
database's (db_now), as leases are: workers on hosts whose clocks disagree never mark each other gone.

Each worker records the host, device and versions (mnist-jobs, torch) it runs: with workers on
many hosts, a job's numbers depend on the code and the torch build of the worker that trained it.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service import __version__
from service.platform.db import db_now
from service.platform.models import Worker


def register(session: Session, worker_id: str, *, host: str, pid: int, device: str, torch_version: str) -> None:
    """Register this process; `torch_version` is torch.__version__ (with its build, e.g. "+cu130")."""
    now = db_now(session)
    session.add(
        Worker(
            id=worker_id,
            host=host,
            pid=pid,
            device=device,
            version=__version__,
            torch_version=torch_version,
            started_at=now,
            last_seen_at=now,
        )
    )
    session.flush()


def seen(session: Session, worker_id: str, *, current_job_id: str | None, stopped: bool = False) -> None:
    now = db_now(session)
    stopped_at = now if stopped else None
    row = update(Worker).where(Worker.id == worker_id)
    session.execute(row.values(last_seen_at=now, current_job_id=current_job_id, stopped_at=stopped_at))


def mark_gone(session: Session, *, silent_seconds: float) -> list[str]:
    """Mark workers silent for longer than `silent_seconds` as stopped when last seen; their ids."""
    silent = (Worker.stopped_at.is_(None), Worker.last_seen_at < db_now(session) - timedelta(seconds=silent_seconds))
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
