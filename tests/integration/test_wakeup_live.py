"""A real idle worker on PostgreSQL picks up a new job on its notification, long before its next
poll or reap would have found it (both set to 10 minutes here)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select, text

from service import jobs
from service.models import Job
from service.schemas import job_spec_adapter
from service.states import JobStatus
from tests.support.processes import wait_until

pytestmark = pytest.mark.databases("postgresql")

NEVER = 600  # seconds: poll_seconds and reap_seconds, far past the test's bounds


def test_an_idle_worker_wakes_on_a_new_job_instead_of_polling(db, workers):
    worker = workers.start(poll_seconds=NEVER, reap_seconds=NEVER)

    def listening() -> bool:
        with db.read() as session:
            return bool(session.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %'")))

    wait_until(listening, timeout=60)
    time.sleep(1.0)  # let it take the wake-up its connection gives, find nothing, and go idle
    with db.write() as session:
        job, _ = jobs.enqueue(
            session,
            job_spec_adapter.validate_python({"architecture": "fc", "epochs": 1, "seed": 3}),
            default_max_attempts=3,
        )

    def status() -> str | None:
        with db.read() as session:
            value = session.scalar(select(Job.status).where(Job.id == job.id))
        return value if value == JobStatus.succeeded.value else None

    assert wait_until(status, timeout=60) == JobStatus.succeeded.value, workers.log(worker)
