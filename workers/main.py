"""The worker process: register, claim jobs one at a time, run them, reap lost ones, stop gracefully.

SIGTERM/SIGINT once: stop claiming; a running job checkpoints at its next step and goes back to the
queue without spending an attempt; exit within the grace period. A second signal exits at once (the
job's lease then covers it). Started by `mnist-jobs worker` (cli/), which parses the arguments.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from types import FrameType

import torch
from sqlalchemy.exc import DBAPIError

from service.jobs.schemas import FCSpec
from service.platform import logs
from service.platform.config import Settings
from service.platform.db import WORKER_POOL, Database, require_head
from service.platform.states import Outcome
from service.queue import leases, registry
from service.queue.leases import Claim
from service.queue.wakeup import Wakeup
from service.storage.store import open_store
from service.training.devices import configure_torch, resolve_device
from workers.data_cache import DataCache
from workers.runner import JobRunner, log_transition, out_of_reach
from workers.upkeep import Upkeep

log = logging.getLogger("mnist_jobs.worker")


class Worker:
    def __init__(self, settings: Settings, device: str | None = None, wakeup_pipe: int | None = None) -> None:
        self.settings = settings
        self.id = str(uuid.uuid4())
        self.device = resolve_device(device or settings.device)
        self.db = Database(
            settings.database_url,
            reconnect_seconds=settings.db_reconnect_seconds,
            pool=WORKER_POOL,
            transaction_pooler=settings.database_transaction_pooler,
        )
        self.upkeep = Upkeep(settings, self.db, self.id, open_store(settings))
        cache = DataCache(settings, self.device)
        reap, store = self.upkeep.reap_expired, self.upkeep.store  # one store for the claim loop and the jobs
        self.runner = JobRunner(settings, self.db, self.id, self.device, cache, reap=reap, store=store)
        self.stopping = threading.Event()
        self.wakeup = Wakeup.for_worker(settings, wakeup_pipe)
        self.next_reap = 0.0  # time.monotonic() of the next reap
        self.next_runnable: float | None = None  # seconds until a queued job may be claimed, as last read
        self._signals = 0

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second signal: exiting now")
            os._exit(128 + signum)
        log.info(
            "signal %s: finishing up (grace %.0f s)", signal.Signals(signum).name, self.settings.shutdown_grace_seconds
        )
        self.stopping.set()
        self.wakeup.wake()
        self.runner.stop_all(Outcome.handed_back)
        timer = threading.Timer(self.settings.shutdown_grace_seconds, os._exit, args=(128 + signum,))
        timer.daemon = True
        timer.start()

    def run(self, max_jobs: int | None = None) -> None:
        configure_torch(self.settings.torch_threads)
        with self.db.write() as session:
            registry.register(
                session,
                self.id,
                host=socket.gethostname(),
                pid=os.getpid(),
                device=str(self.device),
                torch_version=torch.__version__,
            )
        log.info(
            "worker %s on %s, pid %d",
            self.id,
            self.device,
            os.getpid(),
            extra={"worker_id": self.id, "device": str(self.device)},
        )
        done = 0
        try:
            while not self.stopping.is_set() and (max_jobs is None or done < max_jobs):
                try:
                    done += self.cycle()
                except Exception as error:
                    unreachable = out_of_reach(error)
                    if unreachable is None:
                        raise
                    # Past db_reconnect_seconds or artifacts_retry_seconds (a cut-off call is tried
                    # again until then): a job it held is retried from its last durable checkpoint
                    # once its lease runs out.
                    log.warning("%s unreachable (%s); trying again", unreachable, type(error).__name__)
                    self.stopping.wait(self.settings.poll_seconds)
        finally:
            with contextlib.suppress(DBAPIError), self.db.write() as session:
                registry.seen(session, self.id, current_job_id=None, stopped=True)
            self.wakeup.close()
            self.db.dispose()
            log.info("worker %s stopped (jobs claimed: %d)", self.id, done)

    def cycle(self) -> int:
        """Reap when due, claim, and train what was claimed (or wait for work); the jobs it ran."""
        if time.monotonic() >= self.next_reap:
            self.upkeep.between_jobs()
            self.next_reap = time.monotonic() + self.settings.reap_seconds
        claims = self.claim()
        if not claims:
            self.idle(until_reap=self.next_reap - time.monotonic())
            return 0
        for claim in claims:  # queued -> running; the runner logs how each ends
            log_transition(claim, self.id, "claimed", pack=len(claims))
        self.runner.run(claims)
        with self.db.write() as session:  # the registry must not show an ended job as current
            registry.seen(session, self.id, current_job_id=None)
        return len(claims)

    def claim(self) -> list[Claim]:
        """The oldest runnable job, plus (if it can pack) more queued jobs of its exact shape."""
        with self.db.read() as session:  # a read: idle workers take no write lock
            self.next_runnable = leases.seconds_until_runnable(session)
        if self.next_runnable != 0:
            return []
        if not self.upkeep.room_on_disk():
            return []
        lease = self.settings.lease_seconds
        with self.db.write() as session:
            claims = leases.claim(session, self.id, lease)
            # Only FC packs: on the CPU the CNN's time goes to per-element work (pooling,
            # convolution) that stacking does not shrink (see bench/RESULTS.md).
            first = claims[0] if claims else None
            if first and self.settings.pack_size > 1 and isinstance(first.spec, FCSpec) and first.resume is None:
                claims += leases.claim(
                    session, self.id, lease, limit=self.settings.pack_size - 1, pack_key=first.spec.pack_key
                )
            registry.seen(session, self.id, current_job_id=first.job_id if first else None)
        return claims

    def idle(self, until_reap: float) -> None:
        """Wait for work. While notifications reach this worker (PostgreSQL's LISTEN), until one
        comes, the next reap, or the soonest retry's backoff ends; without them, poll_seconds."""
        wait = until_reap if self.wakeup.listening else self.settings.poll_seconds
        if self.next_runnable:
            wait = min(wait, self.next_runnable)
        self.wakeup.wait(wait)


def run_worker(
    settings: Settings, device: str | None = None, max_jobs: int | None = None, wakeup_pipe: int | None = None
) -> None:
    """The whole worker process: check the schema, install signal handlers, run until told to stop.
    `wakeup_pipe`: the read end of its supervisor's queue notifications (service/queue/wakeup.py)."""
    logs.setup(logs.worker_config(settings.log_format))
    require_head(settings.database_url, settings.db_reconnect_seconds, settings.database_transaction_pooler)
    worker = Worker(settings, device, wakeup_pipe)
    signal.signal(signal.SIGTERM, worker.on_signal)
    signal.signal(signal.SIGINT, worker.on_signal)
    worker.run(max_jobs=max_jobs)
