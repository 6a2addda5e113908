"""Migration 0008 on both databases: job counts kept by the database's triggers, exact after any mix
of changes (and after a rollback, which leaves none); step curves packed one row per batch, moved
both ways by the migration with every value kept."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text, update

from api.app import create_app
from service.jobs import lifecycle
from service.jobs.schemas import StepMetrics, TrainResult, job_spec_adapter
from service.platform import metrics
from service.platform.db import Database, alembic_config, upgrade
from service.platform.models import Event, Job, JobCountChange, StepChunk, utcnow
from service.platform.states import JobStatus
from service.queue import leases, reaper
from service.storage.store import LocalStore

pytestmark = pytest.mark.databases()

RESULT = TrainResult(
    test_accuracy=0.9,
    test_loss=0.3,
    correct=9,
    total=10,
    train_seconds=1.0,
    test_seconds=0.1,
    device="cpu",
    torch_version="t",
)


def submit(db: Database, seed: int) -> str:
    spec = job_spec_adapter.validate_python({"architecture": "fc", "seed": seed})
    with db.write() as session:
        job, _ = lifecycle.enqueue(session, spec, default_max_attempts=1)
        return job.id


def claim(db: Database) -> leases.Claim:
    with db.write() as session:
        return leases.claim(session, "worker", 60)[0]


def grouped(db: Database) -> dict[JobStatus, int]:
    with db.read() as session:
        found = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
    return {status: found.get(status, 0) for status in JobStatus}


def counted(db: Database) -> dict[JobStatus, int]:
    with db.read() as session:
        return metrics.jobs_by_status(session)


def fail_every_queued_job_then_roll_back(db: Database) -> None:
    with db.write() as session:
        session.execute(update(Job).where(Job.status == JobStatus.queued).values(status=JobStatus.failed))
        raise RuntimeError("rolled back: no count change may be left of it")


def points(*steps: int, loss: float = 1.0) -> list[StepMetrics]:
    return [StepMetrics(step=step, epoch=1 + step // 10, samples=64 * step, loss=loss + step / 1000) for step in steps]


def test_job_counts_follow_every_change_and_a_fold_keeps_them(settings, tmp_path):
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    ids = [submit(db, seed) for seed in range(8)]
    succeeded, failed = claim(db), claim(db)
    with db.write() as session:
        leases.finish(session, succeeded, RESULT, None)
        leases.fail(session, failed, "broke")
        lifecycle.cancel(session, ids[7])  # queued: cancelled at once
    running = claim(db)
    with db.write() as session:
        lifecycle.cancel(session, running.job_id)
        leases.hand_back(session, running, None)  # the cancel wins: cancelled
    handed = claim(db)
    with db.write() as session:
        leases.hand_back(session, handed, None)  # back to the queue
    lost = claim(db)
    with db.write() as session:  # its worker died: the reaper fails it (max_attempts 1)
        session.execute(update(Job).where(Job.id == lost.job_id).values(lease_expires_at=utcnow() - timedelta(1)))
    with db.write() as session:
        assert reaper.reap(session, base_seconds=1, max_seconds=2) == [lost.job_id]
        lifecycle.delete(session, ids[0], LocalStore(tmp_path / "artifacts"))
    with pytest.raises(RuntimeError, match="rolled back"):
        fail_every_queued_job_then_roll_back(db)
    expected = grouped(db)
    assert expected[JobStatus.queued] > 0 and expected[JobStatus.cancelled] == 2 and expected[JobStatus.failed] == 2
    assert counted(db) == expected
    with db.write() as session:
        assert metrics.fold_job_counts(session) > 0
        assert session.scalar(select(func.count()).select_from(JobCountChange)) == 0
    assert counted(db) == expected
    submit(db, 99)
    expected[JobStatus.queued] += 1
    assert counted(db) == expected == grouped(db)
    db.dispose()


def test_a_batch_is_one_chunk_and_a_retry_cuts_the_chunk_it_straddles(settings):
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    job_id = submit(db, 1)
    first = claim(db)
    with db.write() as session:
        leases.record_steps(session, first, points(5, 10, 15))
        leases.record_steps(session, first, points(20, 25))
    with db.write() as session:  # a retried attempt trains from step 10 again
        leases.record_steps(session, first, points(10, 15, loss=2.0))
    with db.read() as session:
        chunks = session.execute(
            select(StepChunk.first_step, StepChunk.last_step, StepChunk.samples).order_by(StepChunk.first_step)
        ).all()
        assert [tuple(row) for row in chunks] == [(5, 5, 320), (10, 15, 960)]
        assert lifecycle.steps(session, job_id, from_step=0, limit=100) == points(5) + points(10, 15, loss=2.0)
        assert lifecycle.steps(session, job_id, from_step=6, limit=1) == points(10, loss=2.0)
    db.dispose()


def test_migration_0008_packs_the_steps_and_its_downgrade_unpacks_them(settings):
    url = settings.database_url
    upgrade(url)
    db = Database(url)
    jobs: dict[str, list[StepMetrics]] = {submit(db, seed): [] for seed in range(3)}
    for job_id, curve in zip(jobs, (points(1, 2, 3), points(4), []), strict=True):
        lease = claim(db)
        assert lease.job_id == job_id
        with db.write() as session:
            leases.record_steps(session, lease, curve[:2])
            leases.record_steps(session, lease, curve[2:])
        jobs[job_id] = curve
    db.dispose()

    command.downgrade(alembic_config(url), "0007")
    engine = Database(url).engine
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT job_id, step, epoch, samples, loss FROM steps")).all()
    engine.dispose()
    expected_rows = {(job_id, p.step, p.epoch, p.samples, p.loss) for job_id, curve in jobs.items() for p in curve}
    assert {tuple(row) for row in rows} == expected_rows

    upgrade(url)
    db = Database(url)
    with db.read() as session:
        for job_id, curve in jobs.items():
            assert lifecycle.steps(session, job_id, from_step=0, limit=100) == curve
        assert session.scalar(select(func.count()).select_from(StepChunk)) == 2, "each job's rows: one chunk"
    assert counted(db) == grouped(db), "the counts start from the jobs there are"
    db.dispose()


def test_an_api_running_alone_prunes_old_events_and_folds_the_counts(settings):
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    old, recent = submit(db, 1), submit(db, 2)
    with db.write() as session:
        session.execute(update(Event).where(Event.job_id == old).values(created_at=utcnow() - timedelta(hours=2)))
    with TestClient(create_app(settings.model_copy(update={"events_keep_seconds": 3600}))):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (changes(db) or event_jobs(db) != {recent}):
            time.sleep(0.1)
    assert event_jobs(db) == {recent} and changes(db) == 0, "no worker ran: the API tidied"
    assert counted(db) == grouped(db)
    db.dispose()


def changes(db: Database) -> int:
    with db.read() as session:
        return int(session.scalar(select(func.count()).select_from(JobCountChange)) or 0)


def event_jobs(db: Database) -> set[str]:
    with db.read() as session:
        return set(session.scalars(select(Event.job_id)))
