"""Faults with real processes on a real SQLite file and a PostgreSQL database: kill, pause, stop and
hammer workers.

Workers run as `mnist-jobs worker` subprocesses with a 2 s lease and 0.1 s heartbeats, so a lost
worker is noticed in about two seconds; every wait polls (wait_until), nothing sleeps a fixed time.
Jobs are CNNs with batch 8 on the small fixture data (75 steps an epoch, ~0.2 s), long enough to be
caught mid-run.

What "clean" means for signals (by design, see workers/main.py): the first SIGTERM stops claiming,
checkpoints the running job at its next step and hands it back (attempt not spent), then exits 0.
A second signal exits at once (status 128+15); the job is then still `running` under a lease that
nobody renews, and the reaper requeues it after the lease: it is never lost, only delayed.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bench.faults import pause_outside_a_write
from service.jobs import lifecycle
from service.jobs.schemas import job_spec_adapter
from service.platform.models import Worker, utcnow
from service.queue import registry
from service.training.devices import configure_torch
from tests.support.files import immutable
from tests.support.processes import REPO, wait_until
from tests.support.settings import settings_env
from tests.support.training import Recorded, trainer_for

pytestmark = pytest.mark.databases  # each test once on SQLite, once on PostgreSQL

LEASE_SECONDS = 2.0
FAULT_SETTINGS = {
    "lease_seconds": LEASE_SECONDS,
    "heartbeat_seconds": 0.1,
    "reap_seconds": 0.2,
    "retry_base_seconds": 0.1,
    "poll_seconds": 0.05,
    "pack_size": 1,
}
FINAL = {"succeeded", "failed", "cancelled"}
EARLY_JOB_EPOCHS = 10  # see early_in_an_epoch


@pytest.fixture
def settings(settings):
    """Short leases and quick reaps, so a lost worker is noticed in about two seconds; no packing."""
    return settings.model_copy(update=FAULT_SETTINGS)


def submit(db, **fields) -> str:
    spec = job_spec_adapter.validate_python({"architecture": "cnn", "batch_size": 8, "seed": 7, **fields})
    with db.write() as session:
        return lifecycle.enqueue(session, spec, default_max_attempts=3)[0].id


def view(db, job_id: str) -> dict[str, Any]:
    """The job as the API shows it (same schema), read straight from the database."""
    with db.read() as session:
        return lifecycle.view(lifecycle.get(session, job_id)).model_dump(mode="json")


def worker_row(db, pid: int) -> Worker | None:
    with db.read() as session:
        return next((w for w in registry.list_workers(session, include_stopped=True) if w.pid == pid), None)


def worker_of(db, pid: int) -> Worker:
    """The worker row of a process that has registered."""
    row = worker_row(db, pid)
    assert row is not None, f"pid {pid} has no worker row"
    return row


def registered(db, *procs: subprocess.Popen[bytes]) -> None:
    wait_until(lambda: all(worker_row(db, p.pid) for p in procs), timeout=60)


def holder(db, job: dict[str, Any], procs: list[subprocess.Popen[bytes]]) -> tuple[subprocess.Popen[bytes], str]:
    """The worker process holding a running job, and its worker id."""
    with db.read() as session:
        worker_id = lifecycle.get(session, job["id"]).worker_id
    for proc in procs:
        row = worker_row(db, proc.pid)
        if row is not None and row.id == worker_id:
            return proc, worker_id
    raise AssertionError(f"no live worker holds job {job['id']}")


def running_with(db, job_id: str, *, epochs_done: int = 0, step: int = 0) -> dict[str, Any]:
    """Wait until the job runs with at least `epochs_done` recorded epochs (and a step > `step`)."""

    def ready():
        job = view(db, job_id)
        assert job["status"] not in FINAL, f"job ended early: {job['status']} {job['error']}"
        progress = job["progress"] or {}
        return (
            job["status"] == "running" and len(job["metrics"]) >= epochs_done and progress.get("step", 0) > step and job
        )

    return wait_until(ready, timeout=60)


def early_in_an_epoch(db, job_id: str) -> dict[str, Any]:
    """Wait until a job of 300-step epochs is in its first half of an epoch after the first. Progress
    comes with heartbeats (0.1 s in tests), which an epoch of tiny steps can outrun: the window is
    wide and the job long (EARLY_JOB_EPOCHS) so one is seen; its second half leaves the signal time to
    land before the epoch ends."""

    def early():
        job = running_with(db, job_id, epochs_done=1, step=10)
        return job["progress"]["step"] < 150 and job

    return wait_until(early, timeout=60, interval=0.01)


def held_by_one_of_two(db, workers, epochs_done: int, **overrides: object):
    """Two workers (started with the setting `overrides`), a 30-epoch job running on one of them
    with `epochs_done` epochs recorded. Returns the job's id, the job, both processes, the one
    holding the job and its worker id."""
    procs = [workers.start(**overrides), workers.start(**overrides)]
    registered(db, *procs)
    job_id = submit(db, epochs=30)
    job = running_with(db, job_id, epochs_done=epochs_done)
    victim, victim_id = holder(db, job, procs)
    return job_id, job, procs, victim, victim_id


def final(db, job_id: str, timeout: float = 60) -> dict[str, Any]:
    return wait_until(lambda: (job := view(db, job_id))["status"] in FINAL and job, timeout=timeout)


def job_files(settings, job_id: str) -> dict[str, str]:
    folder = settings.artifacts_dir / "jobs" / job_id
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.pt"))}


def uninterrupted_metrics(settings, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The same job trained in one go, in this process: what a resumed job must reproduce exactly."""
    configure_torch(1)
    recorded = Recorded()
    trainer_for(settings, job_spec_adapter.validate_python(spec)).run(recorded)
    return [metrics.model_dump(exclude={"correct"}) for metrics, _ in recorded.epochs[0]]


def released_together(
    script: str, names: list[str], settings, tmp_path: Path, *args: str
) -> dict[str, subprocess.Popen[bytes]]:
    """Start `script` once per name (argv: barrier, output file, name, *args). Each process marks itself
    ready, waits for the barrier, works, and writes JSON to tmp_path/<name>.json. Returns once all are
    ready and released at the same moment."""
    barrier = tmp_path / "go"
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", script, str(barrier), str(tmp_path / f"{name}.json"), name, *args],
            env=settings_env(settings),
            cwd=REPO,
        )
        for name in names
    }
    wait_until(lambda: all(Path(f"{barrier}.{name}").exists() for name in names), timeout=90)
    barrier.touch()
    return procs


def finished(procs: dict[str, subprocess.Popen[bytes]], tmp_path: Path) -> dict[str, Any]:
    """Each released process's JSON report, once all have exited 0."""
    assert {name: proc.wait(timeout=60) for name, proc in procs.items()} == {name: 0 for name in procs}
    return {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in procs}


# Claims


CLAIMER = """
import json, os, sys, time
from service.queue import leases
from service.platform.config import Settings
from service.platform.db import Database
barrier, out, name = sys.argv[1:4]
db = Database(Settings().database_url)
open(f"{barrier}.{name}", "w").close()
while not os.path.exists(barrier):
    time.sleep(0.001)
claimed = []
while True:
    with db.write() as session:
        claims = leases.claim(session, name, 60)
    if not claims:
        break
    claimed += [claim.job_id for claim in claims]
json.dump(claimed, open(out, "w"))
"""


def test_processes_released_together_claim_every_job_exactly_once(settings, db, tmp_path):
    ids = {submit(db) for _ in range(60)}
    procs = released_together(CLAIMER, [f"claimer-{i}" for i in range(4)], settings, tmp_path)
    claims = finished(procs, tmp_path)
    everything = [job_id for claimed in claims.values() for job_id in claimed]
    assert len(everything) == len(set(everything)) == len(ids), "no job claimed twice"
    assert set(everything) == ids, "every job claimed"
    for name, claimed in claims.items():
        for job_id in claimed:
            job = view(db, job_id)
            assert job["status"] == "running" and job["attempts"] == 1
            assert [h["worker_id"] for h in job["history"]] == [name]


# Crashes and pauses


def test_sigkilled_worker_job_is_resumed_by_another_after_its_lease(settings, db, workers):
    job_id, job, _, victim, victim_id = held_by_one_of_two(db, workers, epochs_done=2)
    victim.kill()
    killed_at = utcnow()
    victim.wait()
    done_before_kill = len(view(db, job_id)["metrics"])

    job = final(db, job_id)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2
    first, second = job["history"]
    assert first["worker_id"] == victim_id and first["ended"] == "lease expired"
    assert second["worker_id"] != victim_id and second["ended"] == "succeeded"
    assert second["resumed_from_epoch"] >= done_before_kill >= 2, "resumed from its checkpoint, not from scratch"
    # Requeued only once its lease ran out (renewed at most one heartbeat before the kill).
    restarted = datetime.fromisoformat(second["started_at"].replace("Z", "+00:00"))
    assert restarted >= killed_at + timedelta(seconds=LEASE_SECONDS - 0.3)
    assert [m["epoch"] for m in job["metrics"]] == list(range(1, 31))
    best = max(job["metrics"], key=lambda m: (m["test_accuracy"], m["epoch"]))["epoch"]
    kept = sorted({28, 29, 30, best})  # keep_checkpoints (3 by default) and the best, across both attempts
    assert [c["epoch"] for c in job["result"]["checkpoints"]] == kept
    assert job["metrics"] == uninterrupted_metrics(settings, job["spec"]), "resume is exact"


def test_paused_worker_past_its_lease_writes_nothing_after_it_resumes(settings, db, workers):
    # Every checkpoint kept (none pruned), so both attempts' files are there to check.
    job_id, job, _, victim, victim_id = held_by_one_of_two(db, workers, epochs_done=2, keep_checkpoints=30)
    pause_outside_a_write(settings.database_url, victim)  # SQLite: never inside a write
    try:
        job = final(db, job_id)
        assert job["status"] == "succeeded", job["error"]
        files = job_files(settings, job_id)
        victim_seen = worker_of(db, victim.pid).last_seen_at
    finally:
        victim.send_signal(signal.SIGCONT)

    # The paused worker wakes mid-training: its next heartbeat or epoch record finds the lease gone.
    wait_until(lambda: f"job {job_id}: lease lost" in workers.log(victim), timeout=30)
    wait_until(
        lambda: (w := worker_of(db, victim.pid)).last_seen_at > victim_seen and w.current_job_id is None, timeout=30
    )
    assert victim.poll() is None, "a fenced-out worker goes on to other jobs"
    assert view(db, job_id) == job, "no row touched after SIGCONT"
    assert job_files(settings, job_id) == files, "no checkpoint file written, replaced or left behind"

    first, second = job["history"]
    assert first["worker_id"] == victim_id and first["ended"] == "lease expired"
    assert second["worker_id"] != victim_id and second["ended"] == "succeeded"
    tokens = {name.rsplit("-", 1)[1] for name in files}  # epoch-NNN-<lease token[:8]>.pt
    assert len(tokens) == 2, "each attempt wrote under its own lease's names"
    assert job["metrics"] == uninterrupted_metrics(settings, job["spec"])


# Signals


def test_sigterm_mid_job_hands_it_back_unspent_and_it_resumes_mid_epoch(settings, db, workers):
    job_id = submit(db, epochs=EARLY_JOB_EPOCHS, batch_size=2)  # 300 steps an epoch
    first_worker = workers.start()

    early_in_an_epoch(db, job_id)
    first_worker.send_signal(signal.SIGTERM)
    # 0, not 128+15: it handed the job back itself, before its grace timer would have cut it off.
    assert first_worker.wait(timeout=120) == 0

    job = view(db, job_id)
    assert job["status"] == "queued" and job["attempts"] == 0, "the attempt is not spent"
    assert job["history"][0]["ended"] == "handed back" and job["progress"] is None
    assert worker_of(db, first_worker.pid).stopped_at is not None
    assert "stopped (jobs claimed: 1)" in workers.log(first_worker), "its last line says it stopped"

    workers.start()
    job = final(db, job_id)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 1
    first, second = job["history"]
    assert first["ended"] == "handed back" and second["ended"] == "succeeded"
    assert second["resumed_from_epoch"] >= 1 and second["resumed_from_step"] > 0, "mid-epoch state, not the epoch"
    assert job["metrics"] == uninterrupted_metrics(settings, job["spec"]), "mid-epoch resume is exact"


def test_a_hand_back_whose_checkpoint_cannot_be_written_still_requeues_the_job_at_once(settings, db, workers):
    job_id = submit(db, epochs=EARLY_JOB_EPOCHS, batch_size=2)
    first_worker = workers.start()

    early_in_an_epoch(db, job_id)
    folder = settings.artifacts_dir / "jobs" / job_id
    with immutable(folder):  # nothing can be written there now, as on a full or read-only disk
        first_worker.send_signal(signal.SIGTERM)
        assert first_worker.wait(timeout=120) == 0, "the worker is not brought down by it"
        handed_back = view(db, job_id)
        assert handed_back["status"] == "queued" and handed_back["attempts"] == 0
        assert handed_back["history"][0]["ended"] == "handed back"
        assert "mid-epoch checkpoint not written" in workers.log(first_worker)
        with db.read() as session:
            resume = lifecycle.get(session, job_id).resume_path
        assert resume is not None and "/epoch-" in resume, "it resumes from its last epoch's checkpoint"

    workers.start()
    job = final(db, job_id)
    assert job["status"] == "succeeded", job["error"]
    assert job["history"][1]["resumed_from_step"] == 0 and job["history"][1]["resumed_from_epoch"] >= 1
    assert job["metrics"] == uninterrupted_metrics(settings, job["spec"]), "and the result is the same"


def test_five_sigterms_still_exit_and_sigterm_when_idle_is_clean(db, workers):
    job_id, job, procs, victim, _ = held_by_one_of_two(db, workers, epochs_done=1)
    survivor = next(p for p in procs if p is not victim)

    for _ in range(5):
        victim.send_signal(signal.SIGTERM)
    # Pending signals may coalesce into one (a clean hand-back, 0); a second one handled exits at
    # once with 128+15 and leaves the job to its lease. Either way the process is gone.
    code = victim.wait(timeout=120)
    assert code in (0, 128 + signal.SIGTERM)

    # Handed back (attempt not spent) or left under its lease (reaped): either way, recovered.
    job = final(db, job_id)
    assert job["status"] == "succeeded", job["error"]
    assert job["history"][0]["ended"] in {"handed back", "lease expired"}
    assert job["attempts"] == (1 if job["history"][0]["ended"] == "handed back" else 2)
    assert job["history"][-1]["worker_id"] == worker_of(db, survivor.pid).id

    wait_until(lambda: worker_of(db, survivor.pid).current_job_id is None, timeout=60)
    survivor.send_signal(signal.SIGTERM)
    assert survivor.wait(timeout=120) == 0, "an idle worker stops cleanly"
    assert worker_of(db, survivor.pid).stopped_at is not None


def test_cancel_reaches_a_running_job_and_it_is_not_retried(settings, db, workers):
    worker = workers.start()
    job_id = submit(db, epochs=50)
    running_with(db, job_id, epochs_done=1)
    with db.write() as session:
        lifecycle.cancel(session, job_id)
    asked = time.monotonic()
    job = final(db, job_id)
    assert job["status"] == "cancelled" and job["attempts"] == 1
    assert len(job["metrics"]) < 50, "it stopped mid-run, not at the end"
    assert job["history"][-1]["ended"] == "cancelled"

    # Past a lease and several reaps the job is still cancelled, with one attempt.
    wait_until(lambda: time.monotonic() - asked > LEASE_SECONDS + 1, interval=0.2)
    assert view(db, job_id) == job
    assert worker.poll() is None and worker_of(db, worker.pid).current_job_id is None


# The API under concurrency


def test_concurrent_submits_with_one_idempotency_key_make_one_job(live_server):
    server = live_server(workers=0)
    body = {"architecture": "fc", "epochs": 2, "seed": 3}
    start = threading.Barrier(3)
    answers = []

    def post():
        start.wait()
        answers.append(server.client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "same-key"}))

    threads = [threading.Thread(target=post) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.status_code for a in answers) == [200, 200, 201]
    assert len({a.json()["id"] for a in answers}) == 1
    assert len(server.client.get("/v1/jobs").json()["items"]) == 1
    other = server.client.post("/v1/jobs", json={**body, "epochs": 3}, headers={"Idempotency-Key": "same-key"})
    assert other.status_code == 409


HAMMER = """
import json, os, sys, time
from sqlalchemy.exc import OperationalError
from service.jobs import lifecycle
from service.queue import leases, reaper, registry
from service.platform.config import Settings
from service.platform.db import Database
from service.platform.errors import LeaseLost
from service.jobs.schemas import Progress, TrainResult, job_spec_adapter
barrier, out, name, at_least = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
db = Database(Settings().database_url)
spec = job_spec_adapter.validate_python({"architecture": "fc", "seed": 1})
RESULT = TrainResult(test_accuracy=1.0, test_loss=0.1, correct=200, total=200, train_seconds=0.1,
                     test_seconds=0.1, device="cpu", torch_version="x")
open(f"{barrier}.{name}", "w").close()
while not os.path.exists(barrier):
    time.sleep(0.001)
counts, errors = {"tx": 0, "claimed": 0}, []
def tx(fn):
    try:
        with db.write() as session:
            value = fn(session)
        counts["tx"] += 1
        return value
    except OperationalError as exc:
        errors.append(str(exc))
    except LeaseLost:
        counts["tx"] += 1
i = 0
while i < at_least or not os.path.exists(f"{barrier}.stop"):  # until told, after at_least rounds
    i += 1
    tx(lambda s: lifecycle.enqueue(s, spec, default_max_attempts=3))
    claims = tx(lambda s: leases.claim(s, name, 0.5)) or []
    for claim in claims:
        counts["claimed"] += 1
        for step in range(3):
            tx(lambda s: leases.heartbeat(s, claim, 0.5, Progress(fraction=0.1, epoch=1, step=step, steps=3)))
        if i % 3 == 0:
            tx(lambda s: leases.hand_back(s, claim, None))
        elif i % 3 == 1:
            tx(lambda s: leases.finish(s, claim, RESULT, None))
    tx(lambda s: reaper.reap(s, base_seconds=0.01, max_seconds=0.1))
    tx(lambda s: registry.register(s, f"{name}-{i}", host="h", pid=os.getpid(), device="cpu", torch_version="2.14.1"))
json.dump({"counts": counts, "errors": errors, "rounds": i}, open(out, "w"))
"""
API_ROUNDS = 12  # rounds of five API calls made while every writer is still writing


def test_eight_writer_processes_and_the_api_never_see_database_is_locked(settings, tmp_path, live_server):
    server = live_server(workers=0)
    procs = released_together(HAMMER, [f"writer-{i}" for i in range(8)], settings, tmp_path, "5")
    codes: list[tuple[str, int]] = []
    # A fixed number of API calls, all made while the writers write (they stop only when told), so
    # what is asserted does not depend on how fast this machine is.
    for _ in range(API_ROUNDS):
        job = server.client.post("/v1/jobs", json={"architecture": "cnn"})
        codes.append(("post", job.status_code))
        codes.append(("list", server.client.get("/v1/jobs", params={"limit": 20}).status_code))
        codes.append(("read", server.client.get(f"/v1/jobs/{job.json()['id']}").status_code))
        codes.append(("workers", server.client.get("/v1/workers").status_code))
        codes.append(("cancel", server.client.post(f"/v1/jobs/{job.json()['id']}/cancel").status_code))
    assert all(proc.poll() is None for proc in procs.values()), "a writer stopped before it was told to"
    (tmp_path / "go.stop").touch()
    reports = finished(procs, tmp_path)
    assert {name: r["errors"] for name, r in reports.items()} == {name: [] for name in procs}
    # Every writer got through its rounds (SQLite's lock is not fair between processes, so how many
    # more each did depends on luck and load): each round is at least three transactions.
    assert all(r["rounds"] >= 5 and r["counts"]["tx"] >= 3 * r["rounds"] for r in reports.values()), reports
    assert sum(r["counts"]["claimed"] for r in reports.values()) > 0, reports
    # A writer may have claimed and finished the job first: then cancel rightly answers 409.
    bad = [(what, code) for what, code in codes if code >= 300 and (what, code) != ("cancel", 409)]
    assert len(codes) == 5 * API_ROUNDS and bad == [], bad
    assert "database is locked" not in (tmp_path / "serve-0.log").read_text(errors="replace")
