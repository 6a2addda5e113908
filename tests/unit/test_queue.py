"""The queue on a real migrated SQLite file and PostgreSQL database: fencing, reaper edges, backoff,
hand-back, idempotency, and the epochs and attempts rows each fenced write leaves.

The clock is controlled by writing `lease_expires_at` / `run_after` straight into the row (the
reaper and claim compare them with the database's idea of now), so nothing here sleeps.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from service.jobs import lifecycle
from service.jobs.schemas import EpochRecord, Progress, TrainResult, job_spec_adapter
from service.platform.errors import Conflict, LeaseLost
from service.platform.models import Epoch, Job, utcnow
from service.platform.states import JobStatus, Outcome
from service.queue import leases, reaper
from service.queue.leases import Claim
from service.storage.store import StoredFile

pytestmark = pytest.mark.databases  # each test once on SQLite, once on PostgreSQL

WORKER_A, WORKER_B = "worker-a", "worker-b"
BACKOFF = {"base_seconds": 10.0, "max_seconds": 10_000.0}


def spec(**fields):
    return job_spec_adapter.validate_python({"architecture": "cnn", "seed": 1, **fields})


def submit(db, **fields) -> str:
    with db.write() as session:
        job, created = lifecycle.enqueue(session, spec(**fields), default_max_attempts=3)
        assert created
        return job.id


def claim_one(db, worker: str = WORKER_A, lease_seconds: float = 60) -> Claim:
    with db.write() as session:
        claims = leases.claim(session, worker, lease_seconds)
    assert len(claims) == 1
    return claims[0]


def set_row(db, job_id: str, **values) -> None:
    with db.write() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def row(db, job_id: str) -> dict[str, Any]:
    """Every column of the job, its epoch rows and its attempt rows: a snapshot to compare."""
    with db.read() as session:
        job = lifecycle.get(session, job_id)
        columns = {c.key: getattr(job, c.key) for c in Job.__table__.columns}
        columns["epoch_rows"] = [(e.epoch, e.checkpoint_path, e.checkpoint_sha256) for e in job.epochs]
        columns["history"] = [{c.key: getattr(a, c.key) for c in a.__table__.columns} for a in job.attempt_rows]
        return columns


def reap(db) -> list[str]:
    with db.write() as session:
        return reaper.reap(session, **BACKOFF)


def expire(db, job_id: str, by: timedelta = timedelta(milliseconds=1)) -> None:
    set_row(db, job_id, lease_expires_at=utcnow() - by)


def epoch_row(epoch: int) -> EpochRecord:
    return EpochRecord(epoch=epoch, train_loss=1.0, test_loss=1.0, test_accuracy=0.5, correct=100)


def checkpoint_file(name: str, digit: str = "a") -> StoredFile:
    return StoredFile(f"jobs/x/{name}.pt", digit * 64, 1)


RESULT = TrainResult(
    test_accuracy=1.0,
    test_loss=0.1,
    correct=200,
    total=200,
    train_seconds=1.0,
    test_seconds=0.1,
    device="cpu",
    torch_version="test",
)


# Fencing


def test_a_stale_lease_token_writes_nothing(db):
    job_id = submit(db)
    stale = claim_one(db, WORKER_A)
    with db.write() as session:
        leases.record_epoch(session, stale, epoch_row(1), checkpoint_file("epoch-001"))
    expire(db, job_id)
    assert reap(db) == [job_id]
    set_row(db, job_id, run_after=utcnow())
    fresh = claim_one(db, WORKER_B)
    assert fresh.token != stale.token and fresh.resume == StoredFile("jobs/x/epoch-001.pt", "a" * 64)
    before = row(db, job_id)
    assert before["worker_id"] == WORKER_B and before["attempts"] == 2

    writes = [
        lambda s: leases.heartbeat(s, stale, 60, Progress(fraction=0.9, epoch=1, step=1, steps=1)),
        lambda s: leases.note_resume(s, stale, 5, 5),
        lambda s: leases.record_epoch(s, stale, epoch_row(2), checkpoint_file("stale", "b")),
        lambda s: leases.finish(s, stale, RESULT, None),
        lambda s: leases.fail(s, stale, "stale worker failed"),
        lambda s: leases.mark_cancelled(s, stale),
        lambda s: leases.hand_back(s, stale, checkpoint_file("stale-resume", "c")),
    ]
    for write in writes:
        with pytest.raises(LeaseLost):
            with db.write() as session:
                write(session)
    assert row(db, job_id) == before, "a fenced-out worker's writes touch no row"

    # The current owner still writes; once the job has ended, even its token is stale.
    with db.write() as session:
        leases.finish(session, fresh, RESULT, None)
    with pytest.raises(LeaseLost):
        with db.write() as session:
            leases.heartbeat(session, fresh, 60, None)
    after = row(db, job_id)
    assert after["status"] == "succeeded"
    assert [(a["worker_id"], a["attempt"], a["outcome"]) for a in after["history"]] == [
        (WORKER_A, 1, "lease expired"),
        (WORKER_B, 2, "succeeded"),
    ]
    assert all(a["ended_at"] is not None for a in after["history"])


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
    assert after["history"][-1]["outcome"] == Outcome.lease_expired.value
    with db.write() as session:
        assert leases.claim(session, WORKER_B, 60) == [], "not claimable before its backoff ends"


def test_reaper_never_touches_a_lease_renewed_after_it_lapsed(db):
    job_id = submit(db)
    claim = claim_one(db)
    expire(db, job_id, timedelta(seconds=5))
    with db.write() as session:  # the worker was only late: its heartbeat lands before any reaper
        leases.heartbeat(session, claim, 60, None)
    before = row(db, job_id)
    assert reap(db) == []
    assert row(db, job_id) == before and before["status"] == "running"


def test_reaper_fails_a_job_lost_max_attempts_times(db):
    job_id = submit(db, max_attempts=2)
    for attempt in (1, 2):
        set_row(db, job_id, run_after=utcnow())
        assert claim_one(db).attempt == attempt
        expire(db, job_id)
        assert reap(db) == [job_id]
    job = row(db, job_id)
    assert job["status"] == "failed" and job["finished_at"] is not None and job["lease_token"] is None
    assert job["error"] == "worker lost 2 times (max_attempts 2)"
    assert [h["outcome"] for h in job["history"]] == ["lease expired", "lease expired"]
    set_row(db, job_id, run_after=utcnow())
    with db.write() as session:
        assert leases.claim(session, WORKER_B, 60) == []


def test_reaper_cancels_a_lost_job_whose_cancel_was_requested(db):
    job_id = submit(db)
    claim_one(db)
    with db.write() as session:
        assert lifecycle.cancel(session, job_id).status == "running"
    expire(db, job_id)
    assert reap(db) == [job_id]
    job = row(db, job_id)
    assert job["status"] == "cancelled" and job["finished_at"] is not None and job["attempts"] == 1


def test_reaper_leaves_finished_and_queued_rows_alone(db):
    ids = {status: submit(db) for status in ("succeeded", "failed", "cancelled")}
    for status, job_id in ids.items():
        claim = claim_one(db)
        with db.write() as session:
            if status == "succeeded":
                leases.finish(session, claim, RESULT, None)
            elif status == "failed":
                leases.fail(session, claim, "boom")
            else:
                leases.mark_cancelled(session, claim)
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
        assert claim_one(db).attempt == attempt
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
            assert reaper.reap(session, base_seconds=10, max_seconds=30) == [job_id]
    assert (row(db, job_id)["run_after"] - reaped_at).total_seconds() <= 30 + 1


# Hand-back and cancel


def test_hand_back_restores_attempts_and_keeps_the_resume_point(db):
    job_id = submit(db)
    claim = claim_one(db)
    assert row(db, job_id)["attempts"] == 1
    with db.write() as session:
        assert leases.hand_back(session, claim, checkpoint_file("resume", "d")) is Outcome.handed_back
    job = row(db, job_id)
    assert job["status"] == "queued" and job["attempts"] == 0
    assert job["lease_token"] is None and job["worker_id"] is None and job["lease_expires_at"] is None
    assert job["resume_path"] == "jobs/x/resume.pt" and job["resume_sha256"] == "d" * 64
    assert job["history"][-1]["outcome"] == "handed back"
    again = claim_one(db, WORKER_B)  # claimable at once, with no backoff
    assert again.attempt == 1 and again.resume == StoredFile("jobs/x/resume.pt", "d" * 64)
    with db.write() as session:
        leases.note_resume(session, again, 3, 17)
    history = row(db, job_id)["history"]
    assert [(h["worker_id"], h["outcome"]) for h in history] == [(WORKER_A, "handed back"), (WORKER_B, None)]
    assert (history[-1]["resumed_from_epoch"], history[-1]["resumed_from_step"]) == (3, 17)


def test_hand_back_of_a_job_cancelled_meanwhile_ends_it(db):
    job_id = submit(db)
    claim = claim_one(db)
    with db.write() as session:
        lifecycle.cancel(session, job_id)
        assert leases.hand_back(session, claim, checkpoint_file("r", "e")) is Outcome.cancelled
    job = row(db, job_id)
    assert job["status"] == "cancelled" and job["finished_at"] is not None and job["attempts"] == 1
    assert job["history"][-1]["outcome"] == "cancelled"


def test_a_re_run_epoch_replaces_the_row_a_lost_attempt_wrote(db):
    job_id = submit(db)
    first = claim_one(db)
    with db.write() as session:
        leases.record_epoch(session, first, epoch_row(1), checkpoint_file("first", "a"))
    expire(db, job_id)
    reap(db)
    set_row(db, job_id, run_after=utcnow())
    second = claim_one(db, WORKER_B)
    with db.write() as session:
        leases.record_epoch(session, second, epoch_row(1), checkpoint_file("second", "b"))
        leases.record_epoch(session, second, epoch_row(2), checkpoint_file("second-2", "c"))
    assert row(db, job_id)["epoch_rows"] == [(1, "jobs/x/second.pt", "b" * 64), (2, "jobs/x/second-2.pt", "c" * 64)]


def test_a_pack_claim_gives_each_job_its_typed_spec(db):
    fc = [submit(db, architecture="fc", seed=s, permutation_seed=s or None) for s in range(3)]
    submit(db, architecture="fc", n_hidden=16)
    with db.write() as session:
        first = leases.claim(session, WORKER_A, 60)[0]
        rest = leases.claim(session, WORKER_A, 60, limit=10, pack_key=first.spec.pack_key)
    assert [c.job_id for c in [first, *rest]] == fc
    assert [c.spec.seed for c in [first, *rest]] == [0, 1, 2]
    assert all(
        c.spec == spec(architecture="fc", seed=s, permutation_seed=s or None)
        for c, s in zip([first, *rest], range(3), strict=True)
    )


def test_claim_takes_each_job_once_and_oldest_first(db):
    ids = [submit(db) for _ in range(3)]
    claimed = []
    for worker in (WORKER_A, WORKER_B, WORKER_A):
        claimed.append(claim_one(db, worker).job_id)
    assert claimed == ids
    with db.write() as session:
        assert leases.claim(session, WORKER_B, 60) == []


@pytest.mark.databases("sqlite")
def test_a_claim_that_waited_for_the_write_lock_grants_a_full_lease(db):
    """SQLite: another process holds the write lock; the claim waits for it. Its "now" is read
    once it holds the lock, so the lease it grants starts then, not when it began waiting."""
    submit(db)
    blocker = sqlite3.connect(db.url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    claims: list[Claim] = []
    waiting = threading.Thread(target=lambda: claims.append(claim_one(db, WORKER_A)))
    waiting.start()
    time.sleep(1.5)
    released = utcnow()
    blocker.execute("COMMIT")
    blocker.close()
    waiting.join(30)
    with db.read() as session:
        job = session.get(Job, claims[0].job_id)
        assert job is not None and job.started_at is not None and job.lease_expires_at is not None
        assert job.started_at >= released, "the lease starts once the lock is held"
        assert job.lease_expires_at - job.started_at == timedelta(seconds=60)


# Idempotency


def test_idempotency_key_same_body_same_job_other_body_conflict(db):
    with db.write() as session:
        first, created = lifecycle.enqueue(session, spec(epochs=2), default_max_attempts=3, idempotency_key="k-1")
        assert created
    with db.write() as session:
        again, created = lifecycle.enqueue(session, spec(epochs=2), default_max_attempts=3, idempotency_key="k-1")
        assert not created and again.id == first.id
    with pytest.raises(Conflict) as error:
        with db.write() as session:
            lifecycle.enqueue(session, spec(epochs=3), default_max_attempts=3, idempotency_key="k-1")
    assert error.value.field == "Idempotency-Key"
    with db.write() as session:
        _, created = lifecycle.enqueue(session, spec(epochs=2), default_max_attempts=3, idempotency_key="k-2")
        assert created
        _, created = lifecycle.enqueue(session, spec(epochs=2), default_max_attempts=3)
        assert created
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 3
        assert session.scalar(select(func.count()).select_from(Epoch)) == 0
        assert session.scalar(select(func.count()).where(Job.status == JobStatus.queued.value)) == 3


# Pruning checkpoints (keep_checkpoints)


def record(db, lease, accuracies: list[float], *, keep: int) -> list[list[str]]:
    """Record one epoch per accuracy, pruning after each as the worker does; returns what each pruned."""
    pruned = []
    for epoch, accuracy in enumerate(accuracies, start=1):
        metrics = EpochRecord(epoch=epoch, train_loss=1.0, test_loss=1.0, test_accuracy=accuracy, correct=1)
        with db.write() as session:
            leases.record_epoch(session, lease, metrics, checkpoint_file(f"epoch-{epoch:03d}", str(epoch)))
            pruned.append(leases.prune_checkpoints(session, lease, keep))
    return pruned


def saved_epochs(db, job_id: str) -> list[int]:
    return [epoch for epoch, path, _ in row(db, job_id)["epoch_rows"] if path is not None]


def test_pruning_keeps_the_last_epochs_and_the_best_and_every_epochs_metrics(db):
    job_id = submit(db)
    lease = claim_one(db)
    pruned = record(db, lease, [0.5, 0.9, 0.6, 0.9, 0.7, 0.8, 0.1], keep=2)
    # Epoch 4 ties epoch 2 for the best: the later one is kept, and 2 goes once 4 is recorded.
    assert pruned == [
        [],
        [],
        ["jobs/x/epoch-001.pt"],
        ["jobs/x/epoch-002.pt"],
        ["jobs/x/epoch-003.pt"],
        [],
        ["jobs/x/epoch-005.pt"],
    ]
    assert saved_epochs(db, job_id) == [4, 6, 7]
    after = row(db, job_id)
    assert [epoch for epoch, _, _ in after["epoch_rows"]] == [1, 2, 3, 4, 5, 6, 7], "metrics stay"
    assert after["resume_path"] == "jobs/x/epoch-007.pt", "the resume file is the latest, kept"
    with db.read() as session:
        pruned_rows = session.scalars(select(Epoch).where(Epoch.job_id == job_id, Epoch.epoch == 1)).one()
        assert (pruned_rows.checkpoint_size_bytes, pruned_rows.checkpoint_sha256) == (None, None)
        assert pruned_rows.test_accuracy == 0.5
    with db.write() as session:
        assert leases.prune_checkpoints(session, lease, 2) == [], "pruning again prunes nothing"
        assert leases.prune_checkpoints(session, lease, 1) == ["jobs/x/epoch-006.pt"], "the best and the last"
    assert saved_epochs(db, job_id) == [4, 7]


def test_a_lost_lease_prunes_nothing(db):
    job_id = submit(db)
    stale = claim_one(db, WORKER_A)
    record(db, stale, [0.1, 0.2, 0.3], keep=3)
    expire(db, job_id)
    assert reap(db) == [job_id]
    before = row(db, job_id)
    with pytest.raises(LeaseLost), db.write() as session:
        leases.prune_checkpoints(session, stale, 1)
    assert row(db, job_id) == before
    assert saved_epochs(db, job_id) == [1, 2, 3]
