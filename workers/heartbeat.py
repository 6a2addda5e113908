"""The heartbeat thread: renews running jobs' leases, publishes progress and step losses, carries cancel back."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from service.jobs.schemas import StepMetrics
from service.platform.db import Database, lost_connection
from service.platform.errors import LeaseLost
from service.platform.states import Outcome
from service.queue import leases, registry
from service.queue.leases import Claim
from service.training.control import Live

log = logging.getLogger(__name__)


@dataclass
class Held:
    """A job this worker holds: its claim (lease included) and the Live its training loop updates."""

    claim: Claim
    live: Live


class Heartbeat(threading.Thread):
    """Every `period` s, one transaction of fenced writes (lease + progress + the step losses the
    loop settled since), one per held job.

    A cancel request asks that job's Live to stop as `cancelled`; a lost lease as `lease_lost`
    (and the job gets no more heartbeats). Its own connection: it never waits on the training thread.
    Cancels are read before that write, in a read of their own: the write waits its turn for the
    database's one write lock (behind the API's writes, on SQLite) and renews every held job before
    it commits, and a cancel must not wait for either.
    """

    def __init__(
        self,
        db: Database,
        held: list[Held],
        *,
        period: float,
        lease_seconds: float,
        worker_id: str,
        reap: Callable[[], object] | None = None,
        reap_seconds: float = 5.0,
    ) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.db, self.held = db, list(held)
        self.period, self.lease_seconds, self.worker_id = period, lease_seconds, worker_id
        # A worker busy with a long job still reaps other workers' expired leases every reap_seconds
        # (its claim loop, which also reaps, does not run until the job ends).
        self.reap, self.reap_seconds = reap, reap_seconds
        self._next_reap = time.monotonic() + reap_seconds
        self._stop_event = threading.Event()

    def beat(self) -> None:
        self.watch_cancels()
        started = time.monotonic()  # before the database's clock is read: the renewed lease holds past it
        cancelled, lost = [], []
        taken: list[tuple[Held, list[StepMetrics]]] = []
        try:
            with self.db.write() as session:
                for held in self.held:
                    try:
                        with session.begin_nested():
                            if leases.heartbeat(session, held.claim, self.lease_seconds, held.live.progress()):
                                cancelled.append(held)
                            # Taken only now that this job's row is locked by the write above: a stop
                            # that takes the rest and ends the job commits after these, not before.
                            steps = held.live.step_losses.take()
                            if steps:
                                taken.append((held, steps))
                                leases.record_steps(session, held.claim, steps)
                    except LeaseLost:  # a lost lease writes nothing, step losses included
                        lost.append(held)
                current = self.held[0].claim.job_id if self.held else None
                registry.seen(session, self.worker_id, current_job_id=current)
        except Exception:  # nothing was written: the next beat (or the job's end) writes them
            for held, steps in taken:
                held.live.step_losses.restore(steps)
            raise
        for held in self.held:
            if held not in lost:
                held.live.lease_until = started + self.lease_seconds
        for held in cancelled:
            held.live.request_stop(Outcome.cancelled)
        for held in lost:
            log.warning("job %s: lease lost; stopping its training", held.claim.job_id)
            held.live.request_stop(Outcome.lease_lost)
            self.held.remove(held)

    def watch_cancels(self) -> None:
        with self.db.read() as session:
            asked = leases.cancels_requested(session, [held.claim for held in self.held])
        for held in self.held:
            if held.claim.job_id in asked:
                held.live.request_stop(Outcome.cancelled)

    def run(self) -> None:
        while self.held and not self._stop_event.wait(self.period):
            try:
                self.beat()
                if self.reap is not None and time.monotonic() >= self._next_reap:
                    self._next_reap = time.monotonic() + self.reap_seconds
                    self.reap()
            except Exception as error:  # the lease covers a few misses
                if lost_connection(error):  # a restart or a network cut: expected, and said in one line
                    log.warning("heartbeat: database unreachable (%s); retrying", type(error).__name__)
                else:
                    log.exception("heartbeat failed; retrying")

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
