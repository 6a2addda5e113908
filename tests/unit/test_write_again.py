"""A worker's fenced write whose connection was cut is written again once the database answers
(Database.write_again_if_cut), so a server restart costs no attempt; and a write that had in fact
committed (its answer lost) finds itself the second time instead of reporting a lost lease."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from service.jobs import lifecycle
from service.jobs.schemas import EpochRecord, job_spec_adapter
from service.platform import events
from service.platform.db import Database
from service.platform.events import EventKind
from service.platform.models import Epoch
from service.platform.states import Outcome
from service.queue import leases
from service.queue.leases import Claim
from service.storage.store import StoredFile, open_store
from tests.support.queue import result
from workers.writer import JobWriter

SPEC = job_spec_adapter.validate_python({"architecture": "fc", "seed": 1})
EPOCH = EpochRecord(epoch=1, train_loss=1.0, test_loss=1.0, test_accuracy=0.5, correct=100)


def claimed(db: Database) -> Claim:
    with db.write() as session:
        lifecycle.enqueue(session, SPEC, default_max_attempts=3)
    with db.write() as session:
        (claim,) = leases.claim(session, "worker-1", 60)
    return claim


def epochs_and_events(db: Database, job_id: str) -> tuple[list[tuple[int, str | None]], int]:
    with db.read() as session:
        rows = session.execute(select(Epoch.epoch, Epoch.checkpoint_path).where(Epoch.job_id == job_id)).all()
        published = [e for e in events.after(session, 0, limit=1000, job_id=job_id) if e.kind is EventKind.epoch]
    return [(row.epoch, row.checkpoint_path) for row in rows], len(published)


@pytest.mark.databases
def test_an_ending_written_again_after_it_committed_finds_its_own_and_is_no_lost_lease(settings, db):
    claim = claimed(db)
    writer = JobWriter(db, open_store(settings), keep_checkpoints=None)
    assert writer.finish(claim, result(0.5), None, []) is Outcome.succeeded
    assert writer.finish(claim, result(0.5), None, []) is Outcome.succeeded, "the second time finds the first"
    assert writer.cancel(claim, []) is Outcome.lease_lost, "not another ending"


@pytest.mark.databases
def test_an_epoch_written_again_after_it_committed_changes_nothing_and_publishes_once(db):
    claim = claimed(db)
    file = StoredFile(f"jobs/{claim.job_id}/epoch-001-{claim.token[:8]}.pt", "a" * 64, 1)
    for _ in range(2):
        with db.write() as session:
            assert leases.record_epoch(session, claim, EPOCH, file, keep=1) == []
    assert epochs_and_events(db, claim.job_id) == ([(1, file.path)], 1)


@pytest.fixture
def patient_db(settings) -> Iterator[Database]:
    database = Database(settings.database_url, reconnect_seconds=30)
    yield database
    database.dispose()


def cut_once(postgres_server, write):
    """`write`, behind a first try whose session the server ends in the middle of the transaction."""
    tries = []

    def body(session: Session):
        tries.append(1)
        if len(tries) == 1:
            backend = session.scalar(select(func.pg_backend_pid()))
            postgres_server.execute(f"SELECT pg_terminate_backend({backend})")
        return write(session)

    return body, tries


@pytest.mark.databases("postgresql")
def test_a_fenced_write_whose_session_was_ended_is_written_again_once(db, patient_db, postgres_server):
    claim = claimed(db)
    file = StoredFile(f"jobs/{claim.job_id}/epoch-001-{claim.token[:8]}.pt", "a" * 64, 1)
    body, tries = cut_once(postgres_server, partial(leases.record_epoch, lease=claim, metrics=EPOCH, checkpoint=file))
    assert patient_db.write_again_if_cut(body) == []
    assert len(tries) == 2, "the first try was cut off"
    assert epochs_and_events(db, claim.job_id) == ([(1, file.path)], 1)


@pytest.mark.databases("postgresql")
def test_without_reconnect_seconds_a_cut_write_raises(db, postgres_server):
    claim = claimed(db)
    body, tries = cut_once(postgres_server, partial(leases.note_resume, lease=claim, epoch=1, step=5))
    with pytest.raises(OperationalError):
        db.write_again_if_cut(body)
    assert len(tries) == 1
