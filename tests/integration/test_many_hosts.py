"""Workers on other hosts, on PostgreSQL: an idle worker picks up a new job on its notification, long
before its next poll or reap would have found it; the API serves a checkpoint that a worker wrote
to a shared artifacts folder mounted at another path on its host; and a restart of the server, or
a session it ends mid-write, costs a job no attempt."""

from __future__ import annotations

import hashlib
import io
import socket
import time

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import select, text

import service
from api.app import create_app
from service.jobs import lifecycle
from service.jobs.schemas import job_spec_adapter
from service.platform.models import Job
from service.platform.states import JobStatus
from tests.support.processes import wait_until

pytestmark = pytest.mark.databases("postgresql")

NEVER = 600  # seconds: poll_seconds and reap_seconds, far past the test's bounds


def finished(db, job_id: str) -> str | None:
    """The job's status once it has ended, else None."""
    with db.read() as session:
        value = session.scalar(select(Job.status).where(Job.id == job_id))
    return value if value is not None and JobStatus(value).is_final else None


def running(db, job_id: str) -> bool:
    with db.read() as session:
        return session.scalar(select(Job.status).where(Job.id == job_id)) == JobStatus.running.value


def run_one(db, worker, workers, spec: dict[str, object], timeout: float) -> str:
    """Submit `spec` and wait until it ends: its id (the test fails, with the worker's log, unless
    it succeeded within `timeout`)."""
    with db.write() as session:
        job, _ = lifecycle.enqueue(session, job_spec_adapter.validate_python(spec), default_max_attempts=3)
    job_id = job.id

    assert wait_until(lambda: finished(db, job_id), timeout=timeout) == JobStatus.succeeded.value, workers.log(worker)
    return job_id


def test_an_idle_worker_wakes_on_a_new_job_instead_of_polling(db, workers):
    worker = workers.start(poll_seconds=NEVER, reap_seconds=NEVER)

    def listening() -> bool:
        with db.read() as session:
            return bool(session.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %'")))

    wait_until(listening, timeout=60)
    time.sleep(1.0)  # let it take the wake-up its connection gives, find nothing, and go idle
    run_one(db, worker, workers, {"architecture": "fc", "epochs": 1, "seed": 3}, timeout=60)


def test_the_api_serves_a_checkpoint_a_worker_on_another_host_wrote_to_the_shared_folder(
    db, settings, workers, tmp_path
):
    """One shared folder (an NFS export, say), mounted at /host-a/mnt by the worker's host and at
    /host-b/mnt by the API's: the database records keys relative to the root, never a path."""
    shared = tmp_path / "shared"
    shared.mkdir()
    mounts = {}
    for host in ("host-a", "host-b"):
        (tmp_path / host).mkdir()
        mounts[host] = tmp_path / host / "mnt"
        mounts[host].symlink_to(shared, target_is_directory=True)
    worker = workers.start(artifacts_dir=str(mounts["host-a"]))
    job_id = run_one(db, worker, workers, {"architecture": "cnn", "epochs": 1, "seed": 4}, timeout=120)

    with TestClient(create_app(settings.model_copy(update={"artifacts_dir": mounts["host-b"]}))) as api:
        view = api.get(f"/v1/jobs/{job_id}").json()
        download = api.get(f"/v1/jobs/{job_id}/checkpoint")
        [registered] = api.get("/v1/workers", params={"include_stopped": True}).json()
    assert download.status_code == 200
    digest = hashlib.sha256(download.content).hexdigest()
    assert download.headers["etag"] == f'"{digest}"', "the bytes the worker recorded"
    [written] = (shared / "jobs" / job_id).glob("epoch-001-*.pt")
    assert written.read_bytes() == download.content
    state = torch.load(io.BytesIO(download.content), weights_only=True)
    assert state["spec"]["architecture"] == "cnn" and state["epoch"] == 1
    assert view["history"][0]["worker_id"] == registered["id"]
    assert registered["host"] == socket.gethostname() and registered["device"] == "cpu"
    assert registered["version"] == service.__version__ and registered["torch_version"] == torch.__version__


def test_workers_busy_and_idle_ride_out_a_database_restart(db, workers, postgres_server):
    """PostgreSQL restarted (every session ended, 2 s down) while one worker trains and one idles:
    both keep running, the job succeeds, and the idle one is woken by a job submitted afterwards."""
    if postgres_server.ctl is None:
        pytest.skip("the server was given by URL (MNIST_JOBS_TEST_POSTGRES_URL): not ours to restart")
    busy = workers.start()
    with db.write() as session:
        job, _ = lifecycle.enqueue(
            session,
            job_spec_adapter.validate_python({"architecture": "cnn", "epochs": 4, "batch_size": 8, "seed": 5}),
            # One attempt: a write in flight when the connection broke is written again once the
            # server is back, so the restart costs none (before that, 1 run in 4 under load needed two).
            default_max_attempts=1,
        )

    def progressed() -> bool:
        with db.read() as session:
            return session.scalar(select(Job.progress).where(Job.id == job.id)) is not None

    wait_until(progressed, timeout=60)
    idle = workers.start()
    postgres_server.restart(down_seconds=2)

    assert wait_until(lambda: finished(db, job.id), timeout=120) == JobStatus.succeeded.value, workers.log(busy)
    run_one(db, idle, workers, {"architecture": "fc", "epochs": 1, "seed": 6}, timeout=60)  # asserts it succeeded
    for proc in (busy, idle):
        assert proc.poll() is None, workers.log(proc)
        assert "Traceback" not in workers.log(proc)


def test_an_epoch_write_cut_off_in_flight_is_written_again_and_costs_no_attempt(db, workers, postgres_server):
    """The worker's epoch write waits on the job's row, which the test holds locked; the server ends
    that session (as a restart or a network cut would). Once the lock is let go, the worker writes
    the epoch again in a new transaction and the job ends in its one attempt."""
    worker = workers.start()
    with db.write() as session:
        spec = job_spec_adapter.validate_python({"architecture": "fc", "epochs": 4, "seed": 8})
        job, _ = lifecycle.enqueue(session, spec, default_max_attempts=1)
    wait_until(lambda: running(db, job.id), timeout=60)

    def waiting_epoch_write() -> int | None:
        with db.read() as session:
            return session.scalar(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE 'UPDATE jobs SET%resume_path%'"
                )
            )

    with db.engine.connect() as blocker, blocker.begin():
        blocker.execute(select(Job.id).where(Job.id == job.id).with_for_update())
        backend = wait_until(waiting_epoch_write, timeout=30)
        postgres_server.execute(f"SELECT pg_terminate_backend({backend})")

    assert wait_until(lambda: finished(db, job.id), timeout=60) == JobStatus.succeeded.value, workers.log(worker)
    assert "write cut off" in workers.log(worker)
    with db.read() as session:
        view = lifecycle.view(lifecycle.get(session, job.id))
    assert [attempt.ended for attempt in view.history] == ["succeeded"]
    assert [epoch.epoch for epoch in view.metrics] == [1, 2, 3, 4]
