"""The heartbeat sees a cancel however busy the database's write lock is: it reads the cancels
before it waits its turn to renew the leases (on SQLite, behind the API's writers)."""

from __future__ import annotations

import math
import threading
import time

import pytest
from sqlalchemy import select, text

from service.jobs import lifecycle
from service.platform.db import Database
from service.platform.models import Job
from service.platform.states import Outcome
from service.training.control import Live
from tests.support.queue import two_claims
from workers.heartbeat import Heartbeat, Held

pytestmark = pytest.mark.databases  # each test once on SQLite, once on PostgreSQL

HANG_SECONDS = 60  # only a hang (or a heartbeat that waits for the lock first) takes this long


def test_a_cancel_is_seen_while_another_process_holds_the_write_lock(settings, db):
    cancelled, other = two_claims(db, 60)
    with db.write() as session:
        lifecycle.cancel(session, cancelled.job_id)
    helds = [Held(claim, Live()) for claim in (cancelled, other)]

    holding, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:  # another process's writer (the API's): its own engine and connection
        writer = Database(settings.database_url)
        try:
            with writer.write() as session:  # SQLite: BEGIN IMMEDIATE; PostgreSQL: the rows' locks
                if session.get_bind().dialect.name == "postgresql":  # kept past the server's idle limit
                    session.execute(text("SET LOCAL idle_in_transaction_session_timeout = 0"))
                session.execute(select(Job.id).with_for_update()).all()
                holding.set()
                release.wait(HANG_SECONDS)
        finally:
            writer.dispose()

    holder = threading.Thread(target=hold_the_lock, daemon=True)
    holder.start()
    assert holding.wait(HANG_SECONDS)
    beat = threading.Thread(target=Heartbeat(db, helds, period=1, lease_seconds=60, worker_id="w").beat, daemon=True)
    beat.start()
    deadline = time.monotonic() + HANG_SECONDS
    while helds[0].live.stop_reason is None and beat.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    seen_while_locked = helds[0].live.stop_reason
    release.set()
    holder.join(HANG_SECONDS)
    beat.join(HANG_SECONDS)

    assert seen_while_locked is Outcome.cancelled, "seen before the write lock was free"
    assert helds[1].live.stop_reason is None, "only the job a cancel was asked of"
    assert not beat.is_alive() and all(held.live.lease_until < math.inf for held in helds), "then renewed"
