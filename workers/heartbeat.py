"""The heartbeat thread: renews a running job's lease, publishes progress, carries cancel back."""

from __future__ import annotations

import logging
import threading

from service import queue
from service.db import Database
from service.errors import LeaseLost
from service.training.engine import Live

log = logging.getLogger(__name__)


def progress_of(live: Live) -> dict | None:
    if not live.epoch:
        return None
    return {"fraction": live.fraction(), "epoch": live.epoch, "step": live.step, "steps": live.steps,
            "loss": live.loss}


class Heartbeat(threading.Thread):
    """Every `period` s: one fenced write (lease + progress). Sets live.stop_reason on cancel or lost lease."""

    def __init__(self, db: Database, job_id: str, token: str, live: Live, *, period: float, lease_seconds: float,
                 worker_id: str) -> None:
        super().__init__(name=f"heartbeat-{job_id[:8]}", daemon=True)
        self.db, self.job_id, self.token, self.live = db, job_id, token, live
        self.period, self.lease_seconds, self.worker_id = period, lease_seconds, worker_id
        self._stop_event = threading.Event()

    def beat(self) -> None:
        with self.db.write() as session:
            cancel = queue.heartbeat(session, self.job_id, self.token, self.lease_seconds, progress_of(self.live))
            queue.worker_seen(session, self.worker_id, current_job_id=self.job_id)
        if cancel and self.live.stop_reason is None:
            self.live.stop_reason = "cancelled"

    def run(self) -> None:
        while not self._stop_event.wait(self.period):
            try:
                self.beat()
            except LeaseLost:
                log.warning("job %s: lease lost; stopping its training", self.job_id)
                self.live.stop_reason = "lease lost"
                return
            except Exception:  # a busy or briefly unreachable database: the lease covers a few misses
                log.exception("job %s: heartbeat failed; retrying", self.job_id)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
