"""Run claimed jobs, alone or as a pack: resume, train with a heartbeat, record epochs, end each once."""

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
from service.training.packed import PackedFCTrainer, PackedStop
from workers.heartbeat import Heartbeat, Held, progress_of

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
        self.held: list[Held] = []  # the running jobs, so a signal handler can stop them
        self.stop_reason: str | None = None  # once set (shutdown), every job held from then on stops too

    def stop_all(self, reason: str) -> None:
        self.stop_reason = reason
        for held in self.held:
            if held.live.stop_reason is None:  # a cancel or a lost lease already decided how it ends
                held.live.stop_reason = reason

    def run(self, jobs: list[Job]) -> dict[str, str]:
        """Train `jobs` (one, or a pack of the same shape) to their ends; returns how each ended."""
        self.held = [Held(job.id, job.lease_token, Live()) for job in jobs]
        if self.stop_reason is not None:
            # A signal that came while these jobs were being claimed found nothing held to stop:
            # they stop at their first step and are handed back, instead of training to the end
            # (or past the grace period, when the lease would then cost them an attempt).
            self.stop_all(self.stop_reason)
        beat = Heartbeat(self.db, self.held, period=heartbeat_period(self.settings),
                         lease_seconds=self.settings.lease_seconds, worker_id=self.worker_id,
                         reap=self.reap, reap_seconds=self.settings.reap_seconds)
        beat.start()
        outcomes: dict[str, str] = {}
        try:
            try:
                if len(jobs) == 1:
                    results = {0: self._train_one(jobs[0], self.held[0])}
                else:
                    results = self._train_pack(jobs, outcomes)
            finally:
                beat.stop()  # before the last writes, so no heartbeat lands after a job has ended
            for j, result in results.items():
                result = {**result, "device": str(self.device), "torch_version": torch.__version__}
                outcomes[jobs[j].id] = self._guarded(jobs[j], "succeeded", queue.finish, result,
                                                     progress_of(self.held[j].live))
        except Interrupted as stop:
            outcomes[jobs[0].id] = self._interrupted(jobs[0], self.held[0].token, stop.reason, stop.checkpoint)
        except LeaseLost:
            outcomes[jobs[0].id] = "lease lost"
        except Exception as exc:
            message = str(exc.detail) if isinstance(exc, DataUnavailable) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, DataUnavailable):
                log.exception("jobs %s failed", [job.id for job in jobs])
            for job in jobs:
                if job.id not in outcomes:
                    outcomes[job.id] = self._guarded(job, "failed", queue.fail, message)
        finally:
            self.held = []
        return outcomes

    def _train_one(self, job: Job, held: Held) -> dict:
        spec, resume = job.spec, None
        if job.resume_path:
            resume = checkpoints.load(self.settings.artifacts_dir / job.resume_path, job.resume_sha256)
            step = resume["partial"]["step"] if resume.get("partial") else 0
            with self.db.write() as session:
                queue.note_resume(session, job.id, held.token, resume["epoch"], step)
        data = self.cache.get(job.dataset, spec["permutation_seed"])
        trainer = Trainer(spec, data, self.device, permutation=permutation(spec["permutation_seed"]),
                          resume=resume, live=held.live)
        return trainer.run(lambda row, checkpoint: self._record_epoch(job, held.token, row, checkpoint))

    def _train_pack(self, jobs: list[Job], outcomes: dict[str, str]) -> dict[int, dict]:
        data = self.cache.get(jobs[0].dataset, None)
        trainer = PackedFCTrainer([job.spec for job in jobs], data, self.device, [h.live for h in self.held])

        def on_epoch(j: int, row: dict, checkpoint: dict) -> None:
            try:  # one job losing its lease must not disturb the others
                self._record_epoch(jobs[j], self.held[j].token, row, checkpoint)
            except LeaseLost:
                self.held[j].live.stop_reason = "lease lost"

        def on_stop(stop: PackedStop) -> None:
            job = jobs[stop.index]
            outcomes[job.id] = self._interrupted(job, self.held[stop.index].token, stop.reason, stop.checkpoint)

        results = trainer.run(on_epoch, on_stop)
        return {j: r for j, r in results.items() if self.held[j].live.stop_reason is None}

    def reap(self) -> list[str]:
        """Requeue (or end) jobs whose lease expired; the heartbeat calls it too, so busy workers reap."""
        with self.db.write() as session:
            return queue.reap(session, base_seconds=self.settings.retry_base_seconds,
                              max_seconds=self.settings.retry_max_seconds)

    def _record_epoch(self, job: Job, token: str, row: dict, checkpoint: dict) -> None:
        relative = checkpoints.relative_path(job.id, token, row["epoch"])
        size, sha256 = checkpoints.save(self.settings.artifacts_dir, relative, checkpoint)
        try:
            with self.db.write() as session:
                queue.record_epoch(session, job.id, token, row, path=relative, size_bytes=size, sha256=sha256)
        except LeaseLost:
            # Fenced out (e.g. paused past its lease): the file (named by our token, so never the new
            # owner's) is referenced by no row; remove it so a lost worker leaves nothing behind.
            (self.settings.artifacts_dir / relative).unlink(missing_ok=True)
            raise

    def _interrupted(self, job: Job, token: str, reason: str, checkpoint: dict) -> str:
        if reason == "cancelled":
            return self._guarded(job, "cancelled", queue.mark_cancelled)
        if reason == "shutdown":
            relative = checkpoints.relative_path(job.id, token, None)
            _, sha256 = checkpoints.save(self.settings.artifacts_dir, relative, checkpoint)
            outcome = self._guarded(job, "handed back", queue.hand_back, resume_path=relative, resume_sha256=sha256)
            if outcome == "lease lost":  # as in _record_epoch: publish nothing, leave nothing
                (self.settings.artifacts_dir / relative).unlink(missing_ok=True)
            return outcome
        return "lease lost"

    def _guarded(self, job: Job, outcome: str, write, *args, **kwargs) -> str:
        """One final fenced write; a lost lease means another worker owns the job: say so, write nothing."""
        try:
            with self.db.write() as session:
                write(session, job.id, job.lease_token, *args, **kwargs)
            return outcome
        except LeaseLost:
            log.warning("job %s: lease lost before it could be marked %s", job.id, outcome)
            return "lease lost"
