"""What only PostgreSQL can show: two transactions racing to submit the same Idempotency-Key (SQLite's
BEGIN IMMEDIATE serialises them), and leases measured on the server's clock, not the host's."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.engine import make_url

from service.jobs import lifecycle
from service.jobs.schemas import job_spec_adapter
from service.platform.db import Database, db_now
from service.platform.models import Job, utcnow
from service.platform.states import JobStatus
from service.queue import leases, reaper
from tests.support.processes import wait_until

pytestmark = pytest.mark.databases("postgresql")

SPEC = job_spec_adapter.validate_python({"architecture": "cnn", "seed": 1})
KEY = "race-1"


def test_two_transactions_racing_one_idempotency_key_get_the_same_job_and_one_row(db, monkeypatch):
    """A inserts the key and holds its transaction open; B's SELECT finds nothing (A has not
    committed), B's INSERT waits on the unique index; A commits; B's INSERT fails, its savepoint
    is rolled back and B answers with A's job."""
    searched: dict[str, list[Any]] = {}
    by_key = lifecycle._by_key

    def recording(session, key):
        found = by_key(session, key)
        searched.setdefault(threading.current_thread().name, []).append(found)
        return found

    monkeypatch.setattr(lifecycle, "_by_key", recording)
    first, second = Database(db.url), Database(db.url)
    results: dict[str, tuple[str, bool]] = {}
    a_inserted, a_may_commit = threading.Event(), threading.Event()
    b_pid: list[int] = []

    def a() -> None:
        with first.write() as session:
            job, created = lifecycle.enqueue(session, SPEC, default_max_attempts=3, idempotency_key=KEY)
            results["a"] = (job.id, created)
            a_inserted.set()
            assert a_may_commit.wait(60)

    def b() -> None:
        assert a_inserted.wait(60)
        with second.write() as session:
            b_pid.append(session.scalar(text("SELECT pg_backend_pid()")))
            job, created = lifecycle.enqueue(session, SPEC, default_max_attempts=3, idempotency_key=KEY)
            results["b"] = (job.id, created)

    threads = [threading.Thread(target=a, name="a"), threading.Thread(target=b, name="b")]
    for thread in threads:
        thread.start()

    def b_waits_on_a_lock() -> bool:
        with db.read() as session:
            query = text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid")
            return bool(b_pid) and session.scalar(query, {"pid": b_pid[0]}) == "Lock"

    wait_until(b_waits_on_a_lock, timeout=30)  # B did its SELECT and blocks in its INSERT
    assert searched["b"][0] is None, "B's SELECT ran before A committed, and found nothing"
    a_may_commit.set()
    for thread in threads:
        thread.join(60)
    first.dispose()
    second.dispose()

    assert results["a"][1] is True and results["b"] == (results["a"][0], False)
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1


def test_leases_run_on_the_servers_clock_not_on_a_skewed_hosts(db, monkeypatch):
    """A host whose clock is an hour ahead neither reaps a live lease nor hands out a lease
    that expires an hour late; its run_after waits on the server's time."""
    with db.write() as session:
        job_id = lifecycle.enqueue(session, SPEC, default_max_attempts=3)[0].id
        server_now = db_now(session)
    assert abs(server_now - utcnow()) < timedelta(seconds=5), "one machine: the clocks agree here"

    skewed = utcnow() + timedelta(hours=1)
    for module in ("service.queue.leases", "service.jobs.lifecycle", "service.platform.models"):
        monkeypatch.setattr(f"{module}.utcnow", lambda: skewed, raising=False)
    with db.write() as session:
        claim = leases.claim(session, "worker-a", lease_seconds=60)[0]
    with db.read() as session:
        expires = session.scalar(select(Job.lease_expires_at).where(Job.id == job_id))
    assert expires is not None and expires < utcnow() + timedelta(minutes=5), "a 60 s lease on the server's clock"

    with db.write() as session:  # the skewed host's reaper: the lease has 60 s left on the server
        assert reaper.reap(session, base_seconds=1, max_seconds=1) == []
    with db.write() as session:
        assert leases.heartbeat(session, claim, 60, None) is False
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    with db.write() as session:
        assert reaper.reap(session, base_seconds=30, max_seconds=30) == [job_id]
    with db.read() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == JobStatus.queued.value
        assert job.run_after < utcnow() + timedelta(minutes=5), "the backoff counts from the server's now"


def test_a_database_that_cannot_be_reached_is_a_503_to_retry_and_the_api_recovers(client, settings, postgres_server):
    """What a restart or failover looks like to the API: new connections refused. It answers 503
    (problem+json, Retry-After) instead of crashing, and 200 once the database is back."""
    name = make_url(settings.database_url).database
    assert client.get("/v1/jobs").status_code == 200
    postgres_server.execute(
        f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false',
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
    )
    try:
        down = client.get("/v1/jobs")
    finally:
        postgres_server.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    assert down.status_code == 503 and down.headers["content-type"] == "application/problem+json"
    assert down.headers["retry-after"] == "5" and down.json()["title"] == "Database unavailable"
    assert "127.0.0.1" not in down.text and name not in down.text, "nothing of the server shows"
    assert client.get("/v1/jobs").status_code == 200


def test_for_one_lease_after_the_server_restarts_no_lease_is_reaped(db, postgres_server):
    """A lease that ran out while PostgreSQL was down may belong to a worker that is only waiting
    to reconnect: the reapers leave it for one grace (the workers pass their lease) after the start."""
    if postgres_server.ctl is None:
        pytest.skip("the server was given by URL (MNIST_JOBS_TEST_POSTGRES_URL): not ours to restart")
    with db.write() as session:
        job, _ = lifecycle.enqueue(session, SPEC, default_max_attempts=3)
    with db.write() as session:
        leases.claim(session, "waiting-worker", 0.5)
    postgres_server.restart(down_seconds=1)  # the lease runs out while the server is down

    with db.write() as session:
        assert reaper.reap(session, base_seconds=1, max_seconds=1, restart_grace_seconds=60) == []
    with db.write() as session:
        assert reaper.reap(session, base_seconds=1, max_seconds=1, restart_grace_seconds=0) == [job.id]
