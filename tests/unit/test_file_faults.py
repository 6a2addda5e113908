"""Files that go wrong under a job: a delete that cannot remove them, a checkpoint whose bytes no
longer match their sha256 (never served, never resumed from). Real app, real runner, real files."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select, update

from service.platform.models import Attempt, Epoch, Job
from service.platform.states import JobStatus, Outcome
from service.queue import leases
from tests.support.files import immutable
from tests.support.training import CPU

pytestmark = pytest.mark.usefixtures("one_thread")
PROBLEM = "application/problem+json"


@contextmanager
def undeletable(folder: Path) -> Iterator[None]:
    """Make `folder`'s contents impossible to remove, by OS means that hold even for root: an
    immutable file (chattr +i) as root, a read-only folder otherwise. Skips where neither works."""
    victim = next(folder.iterdir())
    if os.geteuid() != 0:
        folder.chmod(0o500)
        try:
            yield
        finally:
            folder.chmod(0o700)
        return
    with immutable(victim):
        yield


def run_next(settings, db) -> dict[str, Outcome]:
    """Claim the oldest queued job and run it with the worker's own runner, in this process."""
    from workers.data_cache import DataCache
    from workers.runner import JobRunner

    with db.write() as session:
        claims = leases.claim(session, "worker-1", settings.lease_seconds)
    assert claims, "a job to run"
    return JobRunner(settings, db, "worker-1", CPU, DataCache(settings, CPU)).run(claims)


def test_a_delete_that_cannot_remove_the_files_is_an_error_and_keeps_the_job(client, settings):
    job = client.post("/v1/jobs", json={"architecture": "fc"}).json()
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    files = settings.artifacts_dir / "jobs" / job["id"]
    files.mkdir(parents=True)
    (files / "epoch-001-abcdef12.pt").write_bytes(b"weights")

    with undeletable(files):
        response = client.delete(f"/v1/jobs/{job['id']}")
        assert response.status_code == 500 and response.headers["content-type"] == PROBLEM
        problem = response.json()
        assert problem["title"] == "Job files not removed" and problem["field"] == "id"
        assert "could not be removed from the artifacts dir" in problem["detail"]
        assert str(settings.artifacts_dir) not in response.text, "no server path in the answer"
        assert client.get(f"/v1/jobs/{job['id']}").status_code == 200, "the row is kept"
        assert (files / "epoch-001-abcdef12.pt").exists()

    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204, "once the files can go, the job goes"
    assert not files.exists() and client.get(f"/v1/jobs/{job['id']}").status_code == 404


def test_a_corrupt_checkpoint_is_never_served_and_a_missing_one_is_404(client, settings, db):
    job = client.post("/v1/jobs", json={"architecture": "fc", "epochs": 1, "n_hidden": 16}).json()
    assert run_next(settings, db) == {job["id"]: "succeeded"}
    listed = client.get(f"/v1/jobs/{job['id']}").json()["result"]["checkpoints"][0]
    good = client.get(listed["url"])
    assert good.status_code == 200 and hashlib.sha256(good.content).hexdigest() == listed["sha256"]
    assert good.headers["etag"] == f'"{listed["sha256"]}"'
    assert good.headers["content-disposition"] == f'attachment; filename="{job["id"]}-epoch001.pt"'

    with db.read() as session:
        path = settings.artifacts_dir / session.scalars(select(Epoch.checkpoint_path)).one()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    on_disk = hashlib.sha256(data).hexdigest()

    response = client.get(listed["url"])
    assert response.status_code == 409 and response.headers["content-type"] == PROBLEM
    assert response.json()["detail"] == (
        f"checkpoint for epoch 1 is corrupt (sha256 {listed['sha256']} recorded, {on_disk} stored)"
    )
    assert "etag" not in response.headers, "nothing of the file's is sent"

    path.unlink()
    response = client.get(listed["url"])
    assert response.status_code == 404 and response.headers["content-type"] == PROBLEM


def requeue_from(db, job_id: str, epoch: int) -> None:
    """Put a finished job back in the queue as if its worker had stopped after `epoch` (what a
    hand-back or an expired lease leaves: queued, resuming from that epoch's checkpoint)."""
    with db.write() as session:
        row = session.scalars(select(Epoch).where(Epoch.job_id == job_id, Epoch.epoch == epoch)).one()
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status=JobStatus.queued.value,
                result=None,
                finished_at=None,
                resume_path=row.checkpoint_path,
                resume_sha256=row.checkpoint_sha256,
            )
        )


def corrupt(settings, db, job_id: str, *epochs: int) -> None:
    with db.read() as session:
        rows = session.scalars(select(Epoch).where(Epoch.job_id == job_id, Epoch.epoch.in_(epochs))).all()
        for row in rows:
            path = settings.artifacts_dir / row.checkpoint_path
            path.write_bytes(path.read_bytes()[:-10] + b"0123456789")


def resumed_from(db, job_id: str) -> int | None:
    with db.read() as session:
        return session.scalars(
            select(Attempt.resumed_from_epoch).where(Attempt.job_id == job_id).order_by(Attempt.attempt.desc())
        ).first()


@pytest.mark.parametrize(
    "corrupted, expected_start",
    [((3,), 2), ((3, 2), 1), ((3, 2, 1), 0)],
    ids=["latest-corrupt", "two-corrupt", "all-corrupt-from-scratch"],
)
def test_a_corrupt_resume_file_falls_back_to_the_latest_checkpoint_that_verifies(
    client, settings, db, corrupted, expected_start
):
    job = client.post("/v1/jobs", json={"architecture": "fc", "epochs": 3, "n_hidden": 16, "seed": 5}).json()
    assert run_next(settings, db) == {job["id"]: "succeeded"}
    first = client.get(f"/v1/jobs/{job['id']}").json()

    requeue_from(db, job["id"], 3)
    corrupt(settings, db, job["id"], *corrupted)
    assert run_next(settings, db) == {job["id"]: "succeeded"}, "a corrupt resume file does not fail the job"

    again = client.get(f"/v1/jobs/{job['id']}").json()
    assert resumed_from(db, job["id"]) == expected_start, "the attempt records where it really resumed"
    assert again["history"][-1]["resumed_from_epoch"] == expected_start
    assert again["metrics"] == first["metrics"], "the epochs trained again come out the same (same seed)"
    for checkpoint in again["result"]["checkpoints"]:
        response = client.get(checkpoint["url"])
        assert response.status_code == 200, f"epoch {checkpoint['epoch']} is served again: {response.text}"
