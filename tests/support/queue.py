"""Ending jobs as a worker ends them, through the queue's own fenced calls, for API tests that
need finished (or failed) jobs without training them."""

from __future__ import annotations

from importlib import metadata

from service.jobs import lifecycle
from service.jobs.schemas import EpochRecord, TrainResult, job_spec_adapter
from service.platform.config import Settings
from service.platform.db import Database
from service.queue import leases
from service.queue.leases import Claim
from service.storage.store import open_store


def result(accuracy: float) -> TrainResult:
    correct = round(accuracy * 10_000)
    return TrainResult(
        test_accuracy=correct / 10_000,
        test_loss=0.5,
        correct=correct,
        total=10_000,
        train_seconds=1.0,
        test_seconds=0.1,
        device="cpu",
        torch_version=metadata.version("torch"),
    )


def two_claims(db: Database, lease_seconds: float) -> tuple[Claim, Claim]:
    """Two FC jobs of one shape, submitted and claimed together by worker "w"."""
    spec = job_spec_adapter.validate_python({"architecture": "fc", "seed": 1})
    with db.write() as session:
        for _ in range(2):
            lifecycle.enqueue(session, spec, default_max_attempts=3)
    with db.write() as session:
        first, second = leases.claim(session, "w", lease_seconds, limit=2)
    return first, second


def end_jobs(db: Database, outcomes: dict[str, float | str]) -> list[str]:
    """Claim every queued job (in queue order) and end those named: a float succeeds with that
    accuracy, a string fails with that error; the others go back to the queue. Returns the order."""
    with db.write() as session:
        claims = leases.claim(session, "worker-1", 60, limit=1000)
        for claim in claims:
            outcome = outcomes.get(claim.job_id)
            if isinstance(outcome, float):
                leases.finish(session, claim, result(outcome), None)
            elif isinstance(outcome, str):
                leases.fail(session, claim, outcome)
            else:
                leases.hand_back(session, claim, None)
    return [claim.job_id for claim in claims]


def finish_with_checkpoint(settings: Settings, db: Database, job_id: str, payload: bytes) -> str:
    """End the (only) queued job as a worker would: one epoch with `payload` as its checkpoint file,
    then finish. Returns the file's path relative to the artifacts dir."""
    with db.write() as session:
        (claim,) = leases.claim(session, "worker-1", 60)
        assert claim.job_id == job_id
        file = open_store(settings).put(f"jobs/{job_id}/epoch-001-{claim.token[:8]}.pt", payload)
        record = EpochRecord(epoch=1, train_loss=0.5, test_loss=0.4, test_accuracy=0.9, correct=9000)
        leases.record_epoch(session, claim, record, file)
        leases.finish(session, claim, result(0.9), None)
    return file.path
