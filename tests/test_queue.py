"""The queue on a real migrated SQLite file: fencing, reaper edges, backoff, hand-back, idempotency.

The clock is controlled by writing `lease_expires_at` / `run_after` straight into the row (the
reaper and claim compare them with the database's idea of now), so nothing here sleeps.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from service import queue
from service.errors import Conflict, LeaseLost
from service.models import Checkpoint, Job, JobStatus, utcnow
from service.schemas import job_spec_adapter

WORKER_A, WORKER_B = "worker-a", "worker-b"
BACKOFF = {"base_seconds": 10.0, "max_seconds": 10_000.0}


def spec(**fields):
    return job_spec_adapter.validate_python({"architecture": "cnn", "seed": 1, **fields})


def submit(db, **fields) -> str:
    with db.write() as session:
        job, created = queue.enqueue(session, spec(**fields), default_max_attempts=3)
        assert created
        return job.id


def claim_one(db, worker: str = WORKER_A, lease_seconds: float = 60) -> Job:
    with db.write() as session:
        jobs = queue.claim(session, worker, lease_seconds)
    assert len(jobs) == 1
    return jobs[0]


def set_row(db, job_id: str, **values) -> None:
    with db.write() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def row(db, job_id: str) -> dict:
    """Every column of the job, plus its checkpoint rows: a snapshot to compare."""
    with db.read() as session:
        job = session.get(Job, job_id)
        columns = {c.key: getattr(job, c.key) for c in Job.__table__.columns}
        columns["checkpoint_rows"] = [(c.epoch, c.path, c.sha256) for c in job.checkpoints]
        return columns


def reap(db) -> list[str]:
    with db.write() as session:
        return queue.reap(session, **BACKOFF)


def expire(db, job_id: str, by: timedelta = timedelta(milliseconds=1)) -> None:
    set_row(db, job_id, lease_expires_at=utcnow() - by)


def epoch_row(epoch: int) -> dict:
    return {"epoch": epoch, "train_loss": 1.0, "test_loss": 1.0, "test_accuracy": 0.5, "correct": 100}


# Fencing


def test_a_stale_lease_token_writes_nothing(db):
    job_id = submit(db)
    stale = claim_one(db, WORKER_A).lease_token
    with db.write() as session:
        queue.record_epoch(session, job_id, stale, epoch_row(1), path="a/epoch-001.pt", size_bytes=1, sha256="a" * 64)
    expire(db, job_id)
    assert reap(db) == [job_id]
    set_row(db, job_id, run_after=utcnow())
    fresh = claim_one(db, WORKER_B).lease_token
    assert fresh != stale
    before = row(db, job_id)
    assert before["worker_id"] == WORKER_B and before["attempts"] == 2

    writes = [
        lambda s: queue.heartbeat(s, job_id, stale, 60, {"fraction": 0.9, "epoch": 1, "step": 1, "steps": 1}),
        lambda s: queue.note_resume(s, job_id, stale, 5, 5),
        lambda s: queue.record_epoch(s, job_id, stale, epoch_row(2), path="stale.pt", size_bytes=1, sha256="b" * 64),
        lambda s: queue.finish(s, job_id, stale, {"test_accuracy": 1.0}, None),
        lambda s: queue.fail(s, job_id, stale, "stale worker failed"),
        lambda s: queue.mark_cancelled(s, job_id, stale),
        lambda s: queue.hand_back(s, job_id, stale, resume_path="stale-resume.pt", resume_sha256="c" * 64),
    ]
    for write in writes:
        with pytest.raises(LeaseLost):
            with db.write() as session:
                write(session)
    assert row(db, job_id) == before, "a fenced-out worker's writes touch no row"

    # The current owner still writes; once the job has ended, even its token is stale.
    with db.write() as session:
        queue.finish(session, job_id, fresh, {"test_accuracy": 1.0}, None)
    with pytest.raises(LeaseLost):
        with db.write() as session:
            queue.heartbeat(session, job_id, fresh, 60, None)
    assert row(db, job_id)["status"] == "succeeded"


# Reaper


def test_reaper_leaves_a_lease_until_it_has_expired(db):
    job_id = submit(db)
    claim_one(db)
    set_row(db, job_id, lease_expires_at=utcnow() + timedelta(milliseconds=500))  # just before expiry
    before = row(db, job_id)
    assert reap(db) == []
    assert row(db, job_id) == before

    expire(db, job_id)  # just after
    reaped_at = utcnow()
    assert reap(db) == [job_id]
    after = row(db, job_id)
    assert after["status"] == "queued" and after["lease_token"] is None and after["lease_expires_at"] is None
    assert after["attempts"] == 1, "an expired lease spends its attempt"
    assert after["run_after"] >= reaped_at + timedelta(seconds=BACKOFF["base_seconds"])
    assert after["history"][-1]["ended"] == "lease expired"
    with db.write() as session:
        assert queue.claim(session, WORKER_B, 60) == [], "not claimable before its backoff ends"


def test_reaper_never_touches_a_lease_renewed_after_it_lapsed(db):
    job_id = submit(db)
    token = claim_one(db).lease_token
    expire(db, job_id, timedelta(seconds=5))
    with db.write() as session:  # the worker was only late: its heartbeat lands before any reaper
        queue.heartbeat(session, job_id, token, 60, None)
    before = row(db, job_id)
    assert reap(db) == []
    assert row(db, job_id) == before and before["status"] == "running"


def test_reaper_fails_a_job_lost_max_attempts_times(db):
    job_id = submit(db, max_attempts=2)
    for attempt in (1, 2):
        set_row(db, job_id, run_after=utcnow())
        assert claim_one(db).attempts == attempt
        expire(db, job_id)
        assert reap(db) == [job_id]
    job = row(db, job_id)
    assert job["status"] == "failed" and job["finished_at"] is not None and job["lease_token"] is None
    assert job["error"] == "worker lost 2 times (max_attempts 2)"
    assert [h["ended"] for h in job["history"]] == ["lease expired", "lease expired"]
    set_row(db, job_id, run_after=utcnow())
    with db.write() as session:
        assert queue.claim(session, WORKER_B, 60) == []


def test_reaper_cancels_a_lost_job_whose_cancel_was_requested(db):
    job_id = submit(db)
    claim_one(db)
    with db.write() as session:
        assert queue.cancel(session, job_id).status == "running"
    expire(db, job_id)
    assert reap(db) == [job_id]
    job = row(db, job_id)
    assert job["status"] == "cancelled" and job["finished_at"] is not None and job["attempts"] == 1


def test_reaper_leaves_finished_and_queued_rows_alone(db):
    ids = {status: submit(db) for status in ("succeeded", "failed", "cancelled")}
    for status, job_id in ids.items():
        token = claim_one(db).lease_token
        with db.write() as session:
            if status == "succeeded":
                queue.finish(session, job_id, token, {"test_accuracy": 1.0}, None)
            elif status == "failed":
                queue.fail(session, job_id, token, "boom")
            else:
                queue.mark_cancelled(session, job_id, token)
        # Even with a stale expiry and token left on the row, a final job is not the reaper's.
        set_row(db, job_id, lease_expires_at=utcnow() - timedelta(hours=1), lease_token="left-over")
    queued = submit(db)
    set_row(db, queued, lease_expires_at=utcnow() - timedelta(hours=1))
    before = {job_id: row(db, job_id) for job_id in [*ids.values(), queued]}
    assert reap(db) == []
    assert {job_id: row(db, job_id) for job_id in before} == before
    assert [before[ids[s]]["status"] for s in ids] == list(ids)


def test_retry_exhaustion_ends_failed_with_growing_backoff(db):
    job_id = submit(db, max_attempts=4)
    delays = []
    for attempt in range(1, 5):
        set_row(db, job_id, run_after=utcnow())  # the clock jumps past the backoff
        assert claim_one(db).attempts == attempt
        expire(db, job_id)
        reaped_at = utcnow()
        assert reap(db) == [job_id]
        job = row(db, job_id)
        if attempt < 4:
            assert job["status"] == "queued"
            delays.append((job["run_after"] - reaped_at).total_seconds())
    assert job["status"] == "failed" and job["error"] == "worker lost 4 times (max_attempts 4)"
    assert len(delays) == 3 and delays == sorted(delays) and len(set(delays)) == 3, delays
    base = BACKOFF["base_seconds"]
    for attempt, delay in enumerate(delays, start=1):  # base * 2**(attempt-1), jitter in [1, 1.5)
        assert base * 2 ** (attempt - 1) * 0.99 <= delay < base * 2 ** (attempt - 1) * 1.5 + 1, delays


def test_backoff_is_capped(db):
    job_id = submit(db, max_attempts=20)
    for _ in range(8):
        set_row(db, job_id, run_after=utcnow())
        claim_one(db)
        expire(db, job_id)
        reaped_at = utcnow()
        with db.write() as session:
            assert queue.reap(session, base_seconds=10, max_seconds=30) == [job_id]
    assert (row(db, job_id)["run_after"] - reaped_at).total_seconds() <= 30 + 1


# Hand-back and cancel


def test_hand_back_restores_attempts_and_keeps_the_resume_point(db):
    job_id = submit(db)
    token = claim_one(db).lease_token
    assert row(db, job_id)["attempts"] == 1
    with db.write() as session:
        queue.hand_back(session, job_id, token, resume_path="jobs/x/resume.pt", resume_sha256="d" * 64)
    job = row(db, job_id)
    assert job["status"] == "queued" and job["attempts"] == 0
    assert job["lease_token"] is None and job["worker_id"] is None and job["lease_expires_at"] is None
    assert job["resume_path"] == "jobs/x/resume.pt" and job["resume_sha256"] == "d" * 64
    assert job["history"][-1]["ended"] == "handed back"
    again = claim_one(db, WORKER_B)  # claimable at once, with no backoff
    assert again.attempts == 1 and again.resume_path == "jobs/x/resume.pt"
    assert [h["worker_id"] for h in again.history] == [WORKER_A, WORKER_B]


def test_hand_back_of_a_job_cancelled_meanwhile_ends_it(db):
    job_id = submit(db)
    token = claim_one(db).lease_token
    with db.write() as session:
        queue.cancel(session, job_id)
        queue.hand_back(session, job_id, token, resume_path="r.pt", resume_sha256="e" * 64)
    job = row(db, job_id)
    assert job["status"] == "cancelled" and job["finished_at"] is not None
    assert job["history"][-1]["ended"] == "cancelled"


def test_claim_takes_each_job_once_and_oldest_first(db):
    ids = [submit(db) for _ in range(3)]
    claimed = []
    for worker in (WORKER_A, WORKER_B, WORKER_A):
        claimed.append(claim_one(db, worker).id)
    assert claimed == ids
    with db.write() as session:
        assert queue.claim(session, WORKER_B, 60) == []


# Idempotency


def test_idempotency_key_same_body_same_job_other_body_conflict(db):
    with db.write() as session:
        first, created = queue.enqueue(session, spec(epochs=2), default_max_attempts=3, idempotency_key="k-1")
        assert created
    with db.write() as session:
        again, created = queue.enqueue(session, spec(epochs=2), default_max_attempts=3, idempotency_key="k-1")
        assert not created and again.id == first.id
    with pytest.raises(Conflict) as error:
        with db.write() as session:
            queue.enqueue(session, spec(epochs=3), default_max_attempts=3, idempotency_key="k-1")
    assert error.value.field == "Idempotency-Key"
    with db.write() as session:
        _, created = queue.enqueue(session, spec(epochs=2), default_max_attempts=3, idempotency_key="k-2")
        assert created
        _, created = queue.enqueue(session, spec(epochs=2), default_max_attempts=3)
        assert created
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 3
        assert session.scalar(select(func.count()).select_from(Checkpoint)) == 0
        assert session.scalar(select(func.count()).where(Job.status == JobStatus.queued.value)) == 3
