"""Idle workers wake on a queued job: PostgreSQL's LISTEN/NOTIFY, delivered on commit only, and
back after the listener's connection is cut; SQLite has no notifications (its workers poll)."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import text

from service.jobs import lifecycle
from service.jobs.schemas import job_spec_adapter
from service.queue.wakeup import Wakeup
from tests.support.processes import wait_until

pytestmark = pytest.mark.databases

SPEC = job_spec_adapter.validate_python({"architecture": "fc", "seed": 1})
WAIT = 10.0  # seconds: only a broken notification path waits this long


class Abort(Exception):
    pass


def enqueue(db, *, commit: bool = True) -> None:
    try:
        with db.write() as session:
            lifecycle.enqueue(session, SPEC, default_max_attempts=3)
            if not commit:
                raise Abort
    except Abort:
        pass


@pytest.mark.databases("postgresql")
def test_a_queued_job_wakes_a_listening_worker_once_its_transaction_commits(db):
    wakeup = Wakeup(db.url)
    try:
        wait_until(lambda: wakeup.listening, timeout=WAIT)
        wakeup.wait(0)  # the wake-up every (re)connection gives
        enqueue(db, commit=False)
        assert not wakeup.wait(1.0), "a rolled-back submit notified"
        enqueue(db)
        assert wakeup.wait(WAIT), "a committed submit did not notify"
    finally:
        wakeup.close()
    assert not wakeup.listening


@pytest.mark.databases("postgresql")
def test_the_listener_comes_back_after_its_connection_is_cut(db, caplog):
    caplog.set_level(logging.INFO, logger="mnist_jobs")
    wakeup = Wakeup(db.url)
    try:
        wait_until(lambda: wakeup.listening, timeout=WAIT)
        with db.write() as session:  # what a database restart does to the listener's connection
            cut = session.scalar(
                text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE 'LISTEN %'")
            )
        assert cut == 1
        wait_until(lambda: not wakeup.listening, timeout=WAIT)  # the worker polls meanwhile
        wait_until(lambda: wakeup.listening, timeout=WAIT)
        said = [r.getMessage().split(" (")[0] for r in caplog.records if r.name == "mnist_jobs.wakeup"]
        assert said == ["queue notifications lost", "queue notifications back"], "the log says both"
        wakeup.wait(0)
        enqueue(db)
        assert wakeup.wait(WAIT)
    finally:
        wakeup.close()


@pytest.mark.databases("sqlite")
def test_on_sqlite_nothing_listens_and_workers_poll(db):
    wakeup = Wakeup(db.url)
    enqueue(db)  # notify_queued is a no-op there: the submit still commits
    assert not wakeup.listening and not wakeup.wait(0.05)
    wakeup.wake()  # a stop signal still ends the wait
    assert wakeup.wait(1.0)
    wakeup.close()
