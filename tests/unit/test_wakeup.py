"""Idle workers wake on a queued job: PostgreSQL's LISTEN/NOTIFY, delivered on commit only, and
back after the listener's connection is cut; passed on by a supervisor's Fanout to its workers over
pipes, one LISTEN for all; none through a transaction pooler without a listen URL, and none on
SQLite (its workers poll)."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import text

from service.jobs import lifecycle
from service.jobs.schemas import job_spec_adapter
from service.platform.config import Settings
from service.queue.wakeup import Fanout, Wakeup, listen_conninfo
from tests.support.processes import wait_until

pytestmark = pytest.mark.databases

SPEC = job_spec_adapter.validate_python({"architecture": "fc", "seed": 1})
WAIT = 10.0  # seconds: only a broken notification path waits this long


class Abort(Exception):
    pass


def conninfo(db) -> str:
    found = listen_conninfo(Settings(database_url=db.url))
    assert found is not None and found.startswith("postgresql://"), "libpq's form, without +psycopg"
    return found


def listeners(db) -> int:
    with db.read() as session:
        return session.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %'"))


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
    wakeup = Wakeup(conninfo(db))
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
    wakeup = Wakeup(conninfo(db))
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
    assert listen_conninfo(Settings(database_url=db.url)) is None
    wakeup = Wakeup.for_worker(Settings(database_url=db.url), None)
    enqueue(db)  # notify_queued is a no-op there: the submit still commits
    assert not wakeup.listening and not wakeup.wait(0.05)
    wakeup.wake()  # a stop signal still ends the wait
    assert wakeup.wait(1.0)
    wakeup.close()


@pytest.mark.databases("postgresql")
def test_a_fanout_passes_one_listen_on_to_every_worker_pipe_and_its_end_means_poll(db):
    fanout = Fanout(conninfo(db))
    workers = [Wakeup(fanout.pipe()) for _ in range(3)]
    try:
        wait_until(lambda: all(w.listening for w in workers), timeout=WAIT)
        assert listeners(db) == 1, "one LISTEN connection for all three"
        late = Wakeup(fanout.pipe())  # a worker restarted later learns the state at once
        wait_until(lambda: late.listening, timeout=WAIT)
        for wakeup in [*workers, late]:
            wakeup.wait(0)
        enqueue(db, commit=False)
        assert not any(w.wait(0.5) for w in workers), "a rolled-back submit notified"
        enqueue(db)
        assert all(w.wait(WAIT) for w in [*workers, late]), "a committed submit reached every worker"
        with db.write() as session:  # the supervisor's listener cut: every worker polls until it is back
            session.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN %'"))
        wait_until(lambda: not any(w.listening for w in workers), timeout=WAIT)
        wait_until(lambda: all(w.listening for w in workers), timeout=WAIT)
    finally:
        fanout.close()
    wait_until(lambda: not any(w.listening for w in [*workers, late]), timeout=WAIT)  # the pipes' end


def test_through_a_transaction_pooler_workers_listen_only_on_the_listen_url():
    pooled = "postgresql+psycopg://app@pgbouncer:6432/jobs"
    assert listen_conninfo(Settings(database_url=pooled, database_transaction_pooler=True)) is None
    direct = Settings(
        database_url=pooled, database_transaction_pooler=True, database_listen_url="postgresql+psycopg://app@db/jobs"
    )
    assert listen_conninfo(direct) == "postgresql://app@db/jobs"
    assert listen_conninfo(Settings(database_url=pooled)) == "postgresql://app@pgbouncer:6432/jobs"
    assert listen_conninfo(Settings(database_listen_url="")) is None, "empty is unset: SQLite's default"
