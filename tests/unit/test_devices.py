"""How many workers `serve` (and `worker --all-gpus`) starts, on which device; the worker health check."""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import pytest
from sqlalchemy import update

from cli.main import main
from cli.supervisor import plan_workers, worker_health
from service.platform.models import Worker, utcnow
from service.queue import registry


@pytest.mark.parametrize(
    "requested, device, gpus, cpus, expected",
    [
        # A GPU host: one worker per GPU, however many cores (not 16 processes on one GPU).
        (None, "auto", 1, 16, ["cuda:0"]),
        (None, "auto", 4, 16, ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]),
        (None, "cuda", 2, 16, ["cuda:0", "cuda:1"]),
        # A CPU-only host: one per core.
        (None, "auto", 0, 4, ["cpu"] * 4),
        (None, "cpu", 2, 3, ["cpu"] * 3),
        # A count asked for wins; over several GPUs round-robin.
        (3, "auto", 2, 16, ["cuda:0", "cuda:1", "cuda:0"]),
        (1, "auto", 4, 16, ["cuda:0"]),
        (2, "auto", 0, 16, ["cpu", "cpu"]),
        (0, "auto", 4, 16, []),
        (0, "cuda:3", 0, 16, []),  # API only: nothing to check
        # One named device: one worker there unless told otherwise.
        (None, "cuda:1", 2, 16, ["cuda:1"]),
        (2, "cuda:1", 2, 16, ["cuda:1", "cuda:1"]),
        (None, "mps", 0, 8, ["mps"]),
    ],
)
def test_worker_devices(requested, device, gpus, cpus, expected):
    assert plan_workers(requested, device, gpus, cpus) == expected


@pytest.mark.parametrize(
    "requested, device, gpus, message",
    [
        (None, "cuda", 0, "no CUDA device is visible"),
        (None, "cuda:0", 0, "no CUDA device is visible"),
        (None, "cuda:2", 2, "cuda:0 to cuda:1"),
        (None, "cuda:x", 2, "cuda:0 to cuda:1"),
        (-1, "auto", 0, "0 or more"),
    ],
)
def test_a_device_that_is_not_there_is_refused_before_any_worker_starts(requested, device, gpus, message):
    with pytest.raises(ValueError, match=message):
        plan_workers(requested, device, gpus, 4)


def register(db, worker_id: str, host: str) -> None:
    with db.write() as session:
        registry.register(session, worker_id, host=host, pid=os.getpid(), device="cpu", torch_version="2.14.1")


def test_the_health_check_wants_this_hosts_workers_registered_and_beating(db, settings):
    here = socket.gethostname()
    assert "no live worker registered" in (worker_health(settings) or "")
    register(db, "elsewhere", "another-host")
    assert "no live worker registered" in (worker_health(settings) or ""), "another host's worker is not ours"
    register(db, "w-1", here)
    register(db, "w-2", here)
    assert worker_health(settings) is None
    with db.write() as session:  # w-2 hangs: seen longer ago than a lease
        long_ago = utcnow() - timedelta(seconds=settings.lease_seconds + 1)
        session.execute(update(Worker).where(Worker.id == "w-2").values(last_seen_at=long_ago))
    assert worker_health(settings) == f"1 of 2 workers on {here} silent for over {settings.lease_seconds:.0f} s"
    with db.write() as session:  # marked gone by the others, and w-1 stops
        registry.mark_gone(session, silent_seconds=settings.lease_seconds)
        registry.seen(session, "w-1", current_job_id=None, stopped=True)
    assert "no live worker registered" in (worker_health(settings) or "")


def test_worker_check_is_the_exit_code_a_health_check_reads(db, settings, monkeypatch, capsys):
    monkeypatch.setenv("MNIST_JOBS_DATABASE_URL", settings.database_url)
    with pytest.raises(SystemExit) as unhealthy:
        main(["worker", "--check"])
    assert unhealthy.value.code == 1 and "no live worker registered" in capsys.readouterr().err
    register(db, "w-1", socket.gethostname())
    with pytest.raises(SystemExit) as healthy:
        main(["worker", "--check"])
    assert healthy.value.code == 0 and capsys.readouterr().out.strip() == "ok"
