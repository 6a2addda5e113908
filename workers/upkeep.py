"""What a worker does for the whole queue besides training: reap expired leases, tidy the tables
(service.platform.upkeep), keep its registry row fresh, mark silent workers gone, and keep off a
full disk."""

from __future__ import annotations

import logging
import time

from service.platform.config import Settings
from service.platform.db import Database
from service.platform.upkeep import tidy
from service.queue import reaper, registry
from service.storage.store import ArtifactStore

log = logging.getLogger("mnist_jobs.worker")


class Upkeep:
    def __init__(self, settings: Settings, db: Database, worker_id: str, store: ArtifactStore) -> None:
        self.settings, self.db, self.worker_id, self.store = settings, db, worker_id, store
        self._next_disk_warning = 0.0

    def reap_expired(self) -> None:
        """Requeue (or end) the jobs whose lease expired, and tidy: from the claim loop, and from
        the heartbeat while a job runs, so busy workers reap too."""
        with self.db.write() as session:
            reaped = reaper.reap(
                session,
                base_seconds=self.settings.retry_base_seconds,
                max_seconds=self.settings.retry_max_seconds,
                restart_grace_seconds=self.settings.lease_seconds,
            )
            tidy(session, self.settings.events_keep_seconds)
        for job_id in reaped:
            extra = {"job_id": job_id, "worker_id": self.worker_id}
            log.warning("job %s: lease expired; requeued or ended", job_id, extra=extra)

    def between_jobs(self) -> None:
        """Reap; and, since an idle worker writes nothing else (it claims only when a read finds
        work), refresh its registry row, so GET /v1/workers shows it alive and idle; and mark the
        workers silent for longer than a lease (a SIGKILL, a lost host) as gone."""
        self.reap_expired()
        silent = self.settings.lease_seconds
        with self.db.write() as session:
            registry.seen(session, self.worker_id, current_job_id=None)
            for worker_id in registry.mark_gone(session, silent_seconds=silent):
                log.warning("worker %s: silent for over %.0f s; marked gone", worker_id, silent)

    def room_on_disk(self) -> bool:
        """Whether the artifacts dir has MNIST_JOBS_MIN_FREE_BYTES free: a job started without room
        for its checkpoints would only fail. Says so in the log, once a minute at most."""
        free = self.store.free_bytes()
        if free >= self.settings.min_free_bytes:
            return True
        if time.monotonic() >= self._next_disk_warning:
            self._next_disk_warning = time.monotonic() + 60
            log.warning(
                "artifacts dir has %d MB free, under MNIST_JOBS_MIN_FREE_BYTES (%d MB): claiming no job",
                free // 2**20,
                self.settings.min_free_bytes // 2**20,
            )
        return False
