"""The worker registry: a worker that dies silently is marked gone; one that comes back is not."""

from __future__ import annotations

from datetime import timedelta
from importlib import metadata

import pytest
from sqlalchemy import update

import service
from service.platform.models import Worker, utcnow
from service.queue import registry

pytestmark = pytest.mark.databases  # each test once on SQLite, once on PostgreSQL


def listed(db, include_stopped: bool = False) -> dict[str, Worker]:
    with db.read() as session:
        return {w.id: w for w in registry.list_workers(session, include_stopped=include_stopped)}


def test_a_silent_worker_is_marked_gone_when_last_seen_and_comes_back_when_seen(db):
    with db.write() as session:
        registry.register(session, "alive", host="h", pid=1, device="cpu", torch_version="2.14.1")
        registry.register(session, "killed", host="h", pid=2, device="cpu", torch_version="2.14.1")
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


def test_a_worker_records_the_versions_it_runs_and_the_api_lists_them(db, settings):
    from fastapi.testclient import TestClient

    from api.app import create_app

    with db.write() as session:
        registry.register(session, "w", host="gpu-box-2", pid=7, device="cuda:1", torch_version="2.14.1+cu130")
    with TestClient(create_app(settings)) as client:
        [worker] = client.get("/v1/workers").json()
    assert worker["host"] == "gpu-box-2" and worker["device"] == "cuda:1"
    assert worker["version"] == service.__version__ == metadata.version("mnist-jobs")
    assert worker["torch_version"] == "2.14.1+cu130"
