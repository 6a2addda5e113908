"""Worker processes started by `serve` and `worker --all-gpus`: how many, on which device, kept alive.

One worker per GPU: a worker keeps its data set on its device and trains one job (or one pack of
FC jobs) at a time, so a second worker on the same GPU only adds a CUDA context and contention.
On a CPU-only host, one worker per core (each runs torch single-threaded). The API process never
imports torch: the GPU count is asked of a short-lived child process.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

from service.platform.config import Settings
from service.queue.wakeup import Fanout, listen_conninfo

WORKER_RESTART_DELAY_SECONDS = 2.0
log = logging.getLogger("mnist_jobs.supervisor")


def plan_workers(requested: int | None, device: str, gpus: int, cpus: int) -> list[str]:
    """The device of each worker to start, given `device` (auto | cpu | cuda | cuda:N | another
    torch device), the visible GPUs and CPU cores, and a count asked for (`--workers N` or
    MNIST_JOBS_WORKERS; None: the default below). Raises ValueError for a CUDA device not there.

    - auto: one per GPU (cuda:0 ... cuda:G-1) when there is one, else one per core on the CPU;
    - cuda: one per GPU; cpu: one per core; cuda:N (or another device): one, on it;
    - a requested count replaces the default; over several GPUs the workers go round-robin.
    """
    if requested is not None and requested < 0:
        raise ValueError(f"a worker count must be 0 or more, not {requested}")
    if requested == 0:
        return []
    if device.startswith("cuda"):
        if gpus == 0:
            raise ValueError(f"device {device!r} asked for, but no CUDA device is visible")
        index = device.removeprefix("cuda").removeprefix(":")
        if index and (not index.isdigit() or int(index) >= gpus):
            raise ValueError(f"device {device!r} asked for, but the visible GPUs are cuda:0 to cuda:{gpus - 1}")
    if device in ("auto", "cuda") and gpus > 0:
        return [f"cuda:{i % gpus}" for i in range(gpus if requested is None else requested)]
    if device in ("auto", "cpu"):
        return ["cpu"] * (cpus if requested is None else requested)
    return [device] * (1 if requested is None else requested)


def cuda_device_count() -> int:
    """Asked of a short-lived child: `serve` runs the API in this process, which never imports torch."""
    found = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(found.stdout.strip())


def worker_devices(requested: int | None, device: str) -> list[str]:
    """plan_workers on this host; the GPUs are counted only when the answer depends on them."""
    needs_gpus = device != "cpu" and requested != 0
    return plan_workers(requested, device, cuda_device_count() if needs_gpus else 0, os.cpu_count() or 1)


def worker_command(device: str, log_format: str, wakeup_fd: int | None) -> list[str]:
    command = [sys.executable, "-m", "cli", "worker", "--device", device, "--log-format", log_format]
    return command if wakeup_fd is None else [*command, "--wakeup-fd", str(wakeup_fd)]


class WorkerPool:
    """N worker subprocesses, restarted if one dies, stopped with one SIGTERM each. They share the
    pool's one database listener (a Fanout: one LISTEN connection per host, not per worker).
    `command(device, wakeup_fd)`: what starts one (tests and bench/many_workers.py give their own)."""

    def __init__(
        self, devices: list[str], settings: Settings, command: Callable[[str, int | None], list[str]] | None = None
    ) -> None:
        self.devices, self.grace = devices, settings.shutdown_grace_seconds
        self.command = command or (lambda device, fd: worker_command(device, settings.log_format, fd))
        self.procs: list[subprocess.Popen[bytes]] = []
        self._stopping = threading.Event()
        self.fanout = Fanout(listen_conninfo(settings) if devices else None)

    def _start(self, device: str) -> subprocess.Popen[bytes]:
        fd = self.fanout.pipe()
        try:
            # Own session: a Ctrl-C in the terminal reaches the supervisor only, which then signals each worker once.
            return subprocess.Popen(
                self.command(device, fd), start_new_session=True, pass_fds=() if fd is None else (fd,)
            )
        finally:
            if fd is not None:
                os.close(fd)  # the child has its copy; a write to a dead child's pipe then fails

    def start(self) -> None:
        self.procs = [self._start(device) for device in self.devices]
        if self.devices:
            log.info("started %d worker(s): %s", len(self.devices), ", ".join(self.devices))
        threading.Thread(target=self._watch, name="worker-watch", daemon=True).start()

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None and not self._stopping.is_set():
                    log.warning("worker pid %d exited with %d; restarting", proc.pid, proc.returncode)
                    time.sleep(WORKER_RESTART_DELAY_SECONDS)
                    self.procs[i] = self._start(self.devices[i])

    def signal_all(self, signum: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    def stop(self) -> None:
        self._stopping.set()
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.grace + 5
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.fanout.close()


def supervise(devices: list[str], settings: Settings) -> None:
    """`worker --all-gpus`: run `devices`' workers until SIGTERM/SIGINT, then stop them gracefully.
    A second signal is passed on, and a worker that gets two exits at once (workers/main.py)."""
    pool = WorkerPool(devices, settings)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            pool.signal_all(signum)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    pool.start()
    while not stop.wait(1.0):
        pass
    log.info("stopping %d worker(s)", len(devices))
    pool.stop()


def worker_health(settings: Settings) -> str | None:
    """Why this host's workers are unhealthy, or None: at least one registered from this host (a
    container's hostname is its own) and not stopped, and each seen within a lease (the silence
    after which the others mark a worker gone). The container's health check (docker-compose.yml)."""
    from service.platform import metrics
    from service.platform.db import Database, Pool
    from service.platform.models import utcnow

    host = socket.gethostname()
    db = Database(settings.database_url, pool=Pool(1, 0), transaction_pooler=settings.database_transaction_pooler)
    try:
        with db.read() as session:
            workers = metrics.live_workers(session, host=host)
    finally:
        db.dispose()
    if not workers:
        return f"no live worker registered from {host}"
    silent = [w for w in workers if (utcnow() - w.last_seen_at).total_seconds() > settings.lease_seconds]
    if silent:
        return f"{len(silent)} of {len(workers)} workers on {host} silent for over {settings.lease_seconds:.0f} s"
    return None
