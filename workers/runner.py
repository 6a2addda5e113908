"""Run one claimed job: resume, train with a heartbeat, record epochs, end it in exactly one way."""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch

from service import queue
from service.config import Settings, heartbeat_period
from service.db import Database
from service.errors import DataUnavailable, LeaseLost
from service.models import Job
from service.training import checkpoints
from service.training.data import MnistTensors, load_tensors, permutation
from service.training.engine import Interrupted, Live, Trainer
from workers.heartbeat import Heartbeat, progress_of

log = logging.getLogger(__name__)
PERMUTED_CACHE_SIZE = 2  # permuted copies kept per worker (the base data set is always kept)


class DataCache:
    """Data sets stay on the worker's device between jobs; permuted copies are made once per seed."""

    def __init__(self, settings: Settings, device: torch.device) -> None:
        self.settings, self.device = settings, device
        self._base: dict[str, MnistTensors] = {}
        self._permuted: OrderedDict[tuple[str, int], MnistTensors] = OrderedDict()

    def get(self, dataset: str, permutation_seed: int | None) -> MnistTensors:
        if dataset not in self._base:
            self._base[dataset] = load_tensors(self.settings, dataset).to(self.device)
        if permutation_seed is None:
            return self._base[dataset]
        key = (dataset, permutation_seed)
        if key not in self._permuted:
            self._permuted[key] = self._base[dataset].permuted(permutation(permutation_seed))
            while len(self._permuted) > PERMUTED_CACHE_SIZE:
                self._permuted.popitem(last=False)
        self._permuted.move_to_end(key)
        return self._permuted[key]


class JobRunner:
    def __init__(self, settings: Settings, db: Database, worker_id: str, device: torch.device, cache: DataCache):
        self.settings, self.db, self.worker_id, self.device, self.cache = settings, db, worker_id, device, cache
        self.live: Live | None = None  # the running job's, so a signal handler can stop it

    def run(self, job: Job) -> str:
        """Train `job` to its end; returns how it ended (succeeded, failed, cancelled, handed back, lease lost)."""
        token = job.lease_token
        self.live = live = Live()
        beat = Heartbeat(self.db, job.id, token, live, period=heartbeat_period(self.settings),
                         lease_seconds=self.settings.lease_seconds, worker_id=self.worker_id)
        beat.start()
        try:
            try:
                result = self._train(job, token, live)
            finally:
                beat.stop()  # before the last write, so no heartbeat lands after the job has ended
            with self.db.write() as session:
                queue.finish(session, job.id, token, result, progress_of(live))
            return "succeeded"
        except Interrupted as stop:
            return self._interrupted(job, token, stop)
        except LeaseLost:
            log.warning("job %s: lease lost; publishing nothing more", job.id)
            return "lease lost"
        except DataUnavailable as exc:
            return self._fail(job, token, str(exc))
        except Exception as exc:
            log.exception("job %s failed", job.id)
            return self._fail(job, token, f"{type(exc).__name__}: {exc}")
        finally:
            self.live = None

    def _train(self, job: Job, token: str, live: Live) -> dict:
        spec = job.spec
        resume = None
        if job.resume_path:
            resume = checkpoints.load(self.settings.artifacts_dir / job.resume_path, job.resume_sha256)
            step = resume["partial"]["step"] if resume.get("partial") else 0
            with self.db.write() as session:
                queue.note_resume(session, job.id, token, resume["epoch"], step)
        data = self.cache.get(job.dataset, spec["permutation_seed"])
        trainer = Trainer(spec, data, self.device, permutation=permutation(spec["permutation_seed"]),
                          resume=resume, live=live)

        def on_epoch(row: dict, checkpoint: dict) -> None:
            relative = checkpoints.relative_path(job.id, token, row["epoch"])
            size, sha256 = checkpoints.save(self.settings.artifacts_dir, relative, checkpoint)
            with self.db.write() as session:
                queue.record_epoch(session, job.id, token, row, path=relative, size_bytes=size, sha256=sha256)

        result = trainer.run(on_epoch)
        return {**result, "device": str(self.device), "torch_version": torch.__version__}

    def _interrupted(self, job: Job, token: str, stop: Interrupted) -> str:
        try:
            if stop.reason == "cancelled":
                with self.db.write() as session:
                    queue.mark_cancelled(session, job.id, token)
                return "cancelled"
            if stop.reason == "shutdown":
                relative = checkpoints.relative_path(job.id, token, None)
                _, sha256 = checkpoints.save(self.settings.artifacts_dir, relative, stop.checkpoint)
                with self.db.write() as session:
                    queue.hand_back(session, job.id, token, resume_path=relative, resume_sha256=sha256)
                return "handed back"
        except LeaseLost:
            pass
        return "lease lost"

    def _fail(self, job: Job, token: str, message: str) -> str:
        try:
            with self.db.write() as session:
                queue.fail(session, job.id, token, message)
            return "failed"
        except LeaseLost:
            return "lease lost"
