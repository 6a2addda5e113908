"""The worker registry: a worker that dies silently is marked gone; one that comes back is not."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from service import registry
from service.models import Worker, utcnow

pytestmark = pytest.mark.databases  # each test once on SQLite, once on PostgreSQL


def listed(db, include_stopped: bool = False) -> dict[str, Worker]:
    with db.read() as session:
        return {w.id: w for w in registry.list_workers(session, include_stopped=include_stopped)}


def test_a_silent_worker_is_marked_gone_when_last_seen_and_comes_back_when_seen(db):
    with db.write() as session:
        registry.register(session, "alive", host="h", pid=1, device="cpu")
        registry.register(session, "killed", host="h", pid=2, device="cpu")
        registry.seen(session, "killed", current_job_id="some-job")
        last_seen = utcnow() - timedelta(seconds=120)
        session.execute(update(Worker).where(Worker.id == "killed").values(last_seen_at=last_seen))
    with db.write() as session:
        assert registry.mark_gone(session, silent_seconds=60) == ["killed"]
        assert registry.mark_gone(session, silent_seconds=60) == [], "marked once"
    assert set(listed(db)) == {"alive"}
    gone = listed(db, include_stopped=True)["killed"]
    assert gone.stopped_at == gone.last_seen_at == last_seen and gone.current_job_id is None

    with db.write() as session:  # it was only paused: its next sign of life clears the mark
        registry.seen(session, "killed", current_job_id=None)
    assert set(listed(db)) == {"alive", "killed"}
