"""The worker process: register, claim jobs one at a time, run them, reap lost ones, stop gracefully.

SIGTERM/SIGINT once: stop claiming; a running job checkpoints at its next step and goes back to the
queue without spending an attempt; exit within the grace period. A second signal exits at once (the
job's lease then covers it).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
import time
import uuid

from service import queue
from service.config import Settings
from service.db import Database, upgrade
from service.models import Job
from service.training.packed import packable
from service.training.engine import configure_torch, resolve_device
from workers.runner import DataCache, JobRunner

log = logging.getLogger("mnist_jobs.worker")


class Worker:
    def __init__(self, settings: Settings, device: str | None = None) -> None:
        self.settings = settings
        self.id = str(uuid.uuid4())
        self.device = resolve_device(device or settings.device)
        self.db = Database(settings.database_url)
        self.runner = JobRunner(settings, self.db, self.id, self.device, DataCache(settings, self.device))
        self.stopping = threading.Event()
        self._signals = 0

    def on_signal(self, signum: int, _frame) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second signal: exiting now")
            os._exit(128 + signum)
        log.info("signal %s: finishing up (grace %.0f s)", signal.Signals(signum).name,
                 self.settings.shutdown_grace_seconds)
        self.stopping.set()
        self.runner.stop_all("shutdown")
        timer = threading.Timer(self.settings.shutdown_grace_seconds, os._exit, args=(128 + signum,))
        timer.daemon = True
        timer.start()

    def run(self, max_jobs: int | None = None) -> None:
        configure_torch(self.settings.torch_threads)
        upgrade(self.settings.database_url)
        with self.db.write() as session:
            queue.register_worker(session, self.id, host=socket.gethostname(), pid=os.getpid(), device=str(self.device))
        log.info("worker %s on %s, pid %d", self.id, self.device, os.getpid())
        done = 0
        next_reap = 0.0
        try:
            while not self.stopping.is_set() and (max_jobs is None or done < max_jobs):
                if time.monotonic() >= next_reap:
                    self.reap()
                    next_reap = time.monotonic() + self.settings.reap_seconds
                jobs = self.claim()
                if not jobs:
                    self.stopping.wait(self.settings.poll_seconds)
                    continue
                for job_id, how in self.runner.run(jobs).items():
                    log.info("job %s: %s", job_id, how)
                with self.db.write() as session:  # the registry must not show an ended job as current
                    queue.worker_seen(session, self.id, current_job_id=None)
                done += len(jobs)
        finally:
            with self.db.write() as session:
                queue.worker_seen(session, self.id, current_job_id=None, stopped=True)
            self.db.dispose()

    def claim(self) -> list[Job]:
        """The oldest runnable job, plus (if it can pack) more queued jobs of its exact shape."""
        with self.db.read() as session:
            if not queue.has_runnable(session):  # a read: idle workers take no write lock
                return []
        with self.db.write() as session:
            jobs = queue.claim(session, self.id, self.settings.lease_seconds)
            if jobs and self.settings.pack_size > 1 and packable(jobs[0].spec) and not jobs[0].resume_path:
                jobs += queue.claim(session, self.id, self.settings.lease_seconds, limit=self.settings.pack_size - 1,
                                    pack_key=jobs[0].pack_key)
            queue.worker_seen(session, self.id, current_job_id=jobs[0].id if jobs else None)
        return jobs

    def reap(self) -> None:
        for job_id in self.runner.reap():
            log.warning("job %s: lease expired; requeued or ended", job_id)
        # An idle worker writes nothing else (it claims only when a read finds work): refresh its
        # registry row here, every reap_seconds, so GET /v1/workers shows it alive and idle.
        with self.db.write() as session:
            queue.worker_seen(session, self.id, current_job_id=None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mnist-jobs worker", description="Run one worker process.")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: settings, 'auto')")
    parser.add_argument("--max-jobs", type=int, help="exit after this many jobs (default: run until signalled)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker[%(process)d] %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    worker = Worker(Settings(), args.device)
    signal.signal(signal.SIGTERM, worker.on_signal)
    signal.signal(signal.SIGINT, worker.on_signal)
    worker.run(max_jobs=args.max_jobs)
