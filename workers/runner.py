"""Run claimed jobs, alone or as a pack: resume, train with a heartbeat, record epochs, end each once.

The trainers report through one interface (Callbacks: on_epoch / on_stop, by job index); every
write that follows is one fenced call in service.queue, so a worker that lost a job's lease writes
nothing more for it, and leaves no file behind. The step losses the heartbeat has not written yet
go with each job's last write (its finish, or the write that stops it), in the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from service import queue, reaper
from service.config import Settings, heartbeat_period
from service.db import Database, lost_connection
from service.errors import CheckpointCorrupt, DataUnavailable, LeaseLost
from service.models import Epoch
from service.queue import Claim
from service.schemas import EpochRecord, FCSpec, StepMetrics
from service.states import Outcome
from service.storage import StoredFile, name_folders, open_store
from service.training import checkpoints
from service.training.checkpoints import TrainingState
from service.training.engine import Live, Trainer
from service.training.packed import PackedFCTrainer
from service.training.steps import StepLosses
from workers.data_cache import DataCache
from workers.heartbeat import Heartbeat, Held

log = logging.getLogger(__name__)


@dataclass
class Run:
    """The jobs of one `JobRunner.run` and what has happened to each so far."""

    held: list[Held]
    outcomes: dict[str, Outcome]


class JobRunner:
    def __init__(
        self, settings: Settings, db: Database, worker_id: str, device: torch.device, cache: DataCache
    ) -> None:
        self.settings, self.db, self.worker_id, self.device, self.cache = settings, db, worker_id, device, cache
        self.store = open_store(settings)
        self.held: list[Held] = []  # the running jobs, so a signal handler can stop them
        self.stop_reason: Outcome | None = None  # once set (shutdown), every job held from then on stops too

    def stop_all(self, reason: Outcome) -> None:
        self.stop_reason = reason
        for held in self.held:
            if held.live.stop_reason is None:  # a cancel or a lost lease already decided how it ends
                held.live.stop_reason = reason

    def run(self, claims: list[Claim]) -> dict[str, Outcome]:
        """Train `claims` (one, or a pack of the same shape) to their ends; returns how each ended."""
        every = self.settings.step_metrics_every
        lease = self.settings.lease_seconds
        lives = [Live(step_losses=StepLosses(every), lease_until=claim.lease_from + lease) for claim in claims]
        run = Run([Held(claim, live) for claim, live in zip(claims, lives, strict=True)], {})
        self.held = run.held
        if self.stop_reason is not None:
            # A signal that came while these jobs were being claimed found nothing held to stop:
            # they stop at their first step and are handed back, instead of training to the end
            # (or past the grace period, when the lease would then cost them an attempt).
            self.stop_all(self.stop_reason)
        beat = Heartbeat(
            self.db,
            run.held,
            period=heartbeat_period(self.settings),
            lease_seconds=self.settings.lease_seconds,
            worker_id=self.worker_id,
            reap=self.reap,
            reap_seconds=self.settings.reap_seconds,
        )
        beat.start()
        failure = None  # why the jobs failed, when training raised
        try:
            try:
                results = self._trainer(run).run(Recorder(self, run))
            finally:
                beat.stop()  # before the last writes, so no heartbeat lands after a job has ended
            for index, result in results.items():
                held = run.held[index]
                steps = held.live.step_losses.take()
                finish = partial(queue.finish, result=result, progress=held.live.progress(), steps=steps)
                run.outcomes[held.claim.job_id] = self.guarded(held.claim, Outcome.succeeded, finish)
        except Exception as exc:
            if lost_connection(exc):
                # Not the jobs' fault: each write was tried again for db_reconnect_seconds. The
                # worker's loop waits for the database; the jobs resume from their last checkpoints
                # once their leases run out.
                log.warning("jobs %s: database unreachable; left to their leases", [c.job_id for c in claims])
                raise
            message = failure = self.failure(exc, claims)
            for held in run.held:
                if held.claim.job_id not in run.outcomes:
                    fail = partial(queue.fail, error=message)
                    steps = held.live.step_losses.take()
                    run.outcomes[held.claim.job_id] = self.guarded(held.claim, Outcome.failed, fail, steps)
        finally:
            self.held = []
        for held in run.held:
            outcome = run.outcomes.get(held.claim.job_id)
            reason = (failure or held.live.failure or "training failed") if outcome is Outcome.failed else None
            log_transition(held.claim, self.worker_id, outcome.value if outcome else "ended", reason, pack=len(claims))
        if self.device.type == "cuda":  # give back what the ended jobs (or an allocation that failed) held
            torch.cuda.empty_cache()
        return run.outcomes

    def failure(self, exc: Exception, claims: list[Claim]) -> str:
        """The error a job that raised `exc` ends with; the worker goes on with the next job."""
        if isinstance(exc, DataUnavailable):
            return exc.detail
        if is_out_of_memory(exc):
            log.warning("jobs %s: out of memory on %s: %s", [c.job_id for c in claims], self.device, exc)
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            packed = f" (trained as a pack of {len(claims)} jobs)" if len(claims) > 1 else ""
            return (
                f"out of memory on {self.device}{packed}: {first_line[:300]}; "
                "lower batch_size, test_batch_size or the model size (n_hidden / n_features)"
            )
        log.exception("jobs %s failed", [claim.job_id for claim in claims])
        return self.without_paths(f"{type(exc).__name__}: {exc}")

    def without_paths(self, text: str) -> str:
        """An error for the job's JSON: the server's folders named by their settings, not their paths."""
        return name_folders(
            text, [(self.settings.artifacts_dir, "<artifacts dir>"), (self.settings.data_dir, "<data dir>")]
        )

    def _trainer(self, run: Run) -> Trainer | PackedFCTrainer:
        claims = [held.claim for held in run.held]
        if len(claims) > 1:
            specs = [claim.spec for claim in claims]
            assert all(isinstance(spec, FCSpec) for spec in specs), "only FC jobs are packed"
            data = self.cache.get(specs[0].dataset, None)  # each job's permutation is applied per batch
            return PackedFCTrainer(
                [s for s in specs if isinstance(s, FCSpec)], data, self.device, [held.live for held in run.held]
            )
        claim, held = claims[0], run.held[0]
        resume = None
        if claim.resume is not None:
            resume = self.resume_point(claim)
            epoch, step = (resume.epoch, resume.partial.step if resume.partial else 0) if resume else (0, 0)
            self.db.write_again_if_cut(partial(queue.note_resume, lease=claim, epoch=epoch, step=step))
        data = self.cache.get(claim.spec.dataset, claim.spec.permutation_seed)
        return Trainer(claim.spec, data, self.device, resume=resume, live=held.live)

    def resume_point(self, claim: Claim) -> TrainingState | None:
        """The training state to resume `claim` from: its resume file if that still matches its
        sha256, else the latest epoch checkpoint that does (the epochs after it are trained again,
        and their rows replaced), else None (from scratch). A corrupt or missing file never fails
        the job; the fall-back is logged, and the attempt records the epoch it resumed from."""
        assert claim.resume is not None
        tried: set[str] = set()
        for file in self._resume_candidates(claim.job_id, claim.resume):
            if file.path in tried:
                continue
            tried.add(file.path)
            try:
                state = checkpoints.load(self.store, file)
            except (CheckpointCorrupt, OSError) as exc:
                cause = "corrupt" if isinstance(exc, CheckpointCorrupt) else f"unreadable ({type(exc).__name__})"
                log.warning("job %s: checkpoint %s is %s; not resuming from it", claim.job_id, file.path, cause)
                continue
            if file.path != claim.resume.path:
                log.warning("job %s: resuming from the checkpoint of epoch %d instead", claim.job_id, state.epoch)
            return state
        log.warning("job %s: no checkpoint verifies; training again from the start", claim.job_id)
        return None

    def _resume_candidates(self, job_id: str, resume: StoredFile) -> Iterator[StoredFile]:
        """The resume file, then (read only when it fails to verify) the job's kept epoch
        checkpoints, newest first; pruned epochs (keep_checkpoints) have no file to fall back to."""
        yield resume
        with self.db.read() as session:
            rows = list(session.scalars(select(Epoch).where(Epoch.job_id == job_id).order_by(Epoch.epoch.desc())))
        yield from (file for row in rows if (file := row.checkpoint_file()) is not None)

    def reap(self) -> list[str]:
        """Requeue (or end) jobs whose lease expired; the heartbeat calls it too, so busy workers reap."""
        with self.db.write() as session:
            return reaper.reap(
                session,
                base_seconds=self.settings.retry_base_seconds,
                max_seconds=self.settings.retry_max_seconds,
                events_keep_seconds=self.settings.events_keep_seconds,
                restart_grace_seconds=self.settings.lease_seconds,
            )

    def save(self, claim: Claim, epoch: int | None, state: TrainingState) -> StoredFile:
        return checkpoints.save(self.store, checkpoints.checkpoint_key(claim.job_id, claim.token, epoch), state)

    def remove_files(self, claim: Claim, paths: list[str]) -> None:
        """Remove checkpoints no row points at: pruned ones (keep_checkpoints), or one a fenced-out
        worker wrote (named by its token, so never the new owner's), so a lost worker leaves nothing
        behind. One that cannot be removed is logged, not fatal; the job's delete removes it."""
        for path in paths:
            try:
                self.store.delete(path)
            except OSError as exc:
                log.warning("job %s: pruned checkpoint %s not removed (%s)", claim.job_id, path, exc)

    def guarded(
        self, claim: Claim, outcome: Outcome, write: Callable[..., object], steps: Sequence[StepMetrics] = ()
    ) -> Outcome:
        """One final fenced write, after the job's step losses not yet written (same transaction); a
        lost lease means another worker owns the job: say so, write nothing."""

        def end(session: Session) -> None:
            if steps:
                queue.record_steps(session, claim, steps)
            write(session, claim)

        try:
            self.db.write_again_if_cut(end)
            return outcome
        except LeaseLost:
            if self.ended_by_itself(claim) is outcome:
                return outcome
            log.warning("job %s: lease lost before it could be marked %s", claim.job_id, outcome.value)
            return Outcome.lease_lost

    def ended_by_itself(self, claim: Claim) -> Outcome | None:
        """How the claim's attempt ended, when a fenced ending found its lease gone: an ending written
        again because its commit's answer was lost (Database.write_again_if_cut) finds its own."""
        with self.db.read() as session:
            return queue.attempt_outcome(session, claim)


def log_transition(claim: Claim, worker_id: str, transition: str, reason: str | None = None, **fields: object) -> None:
    """One line per job transition (claimed, or how it ended): job id, attempt, worker, and why it
    failed; the same as structured fields for JSON lines (service/logs.py)."""
    extra = {"job_id": claim.job_id, "attempt": claim.attempt, "worker_id": worker_id, "transition": transition}
    because = ""
    if reason is not None:
        extra["reason"], because = reason, f": {reason}"
    level = logging.WARNING if transition in (Outcome.failed, Outcome.lease_lost) else logging.INFO
    log.log(
        level,
        "job %s attempt %d on worker %s: %s%s",
        claim.job_id,
        claim.attempt,
        worker_id,
        transition,
        because,
        extra=extra | fields,
    )


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's CUDA OutOfMemoryError, or the RuntimeError a failed CPU (or older CUDA) allocation raises."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


class Recorder:
    """The trainers' Callbacks: each epoch and each stop becomes files and fenced writes."""

    def __init__(self, runner: JobRunner, run: Run) -> None:
        self.runner, self.run = runner, run

    def on_epoch(self, index: int, metrics: EpochRecord, checkpoint: TrainingState) -> None:
        held = self.run.held[index]
        file = self.runner.save(held.claim, metrics.epoch, checkpoint)
        record = partial(
            queue.record_epoch,
            lease=held.claim,
            metrics=metrics,
            checkpoint=file,
            keep=self.runner.settings.keep_checkpoints,
        )
        try:
            pruned = self.runner.db.write_again_if_cut(record)
        except LeaseLost:  # one job losing its lease must not disturb the others in a pack
            log.warning("job %s: lease lost; epoch %d not recorded, training stops", held.claim.job_id, metrics.epoch)
            self.runner.remove_files(held.claim, [file.path])
            held.live.stop_reason = Outcome.lease_lost
            return
        self.runner.remove_files(held.claim, pruned)

    def on_stop(self, index: int, reason: Outcome, checkpoint: TrainingState) -> None:
        held = self.run.held[index]
        self.run.outcomes[held.claim.job_id] = self._stopped(held, reason, checkpoint)

    def _stopped(self, held: Held, reason: Outcome, checkpoint: TrainingState) -> Outcome:
        claim = held.claim
        if reason is Outcome.lease_lost:  # another worker owns the job: its step losses are not ours to write
            return Outcome.lease_lost
        steps = held.live.step_losses.take()  # the trainer settled them before calling on_stop
        if reason is Outcome.cancelled:
            return self.runner.guarded(claim, Outcome.cancelled, queue.mark_cancelled, steps)
        if reason is Outcome.failed:  # the trainer's own stop (a loss that is not finite): no checkpoint
            error = held.live.failure or "training failed"
            return self.runner.guarded(claim, Outcome.failed, partial(queue.fail, error=error), steps)
        if reason is Outcome.handed_back:
            file: StoredFile | None
            try:
                file = self.runner.save(claim, None, checkpoint)
            except OSError as exc:  # e.g. a full disk: hand back anyway, to resume from the last epoch
                log.warning("job %s: mid-epoch checkpoint not written (%s); handing back without it", claim.job_id, exc)
                file = None

            def hand_back(session: Session) -> Outcome:
                queue.record_steps(session, claim, steps)
                return queue.hand_back(session, claim, file)

            try:
                return self.runner.db.write_again_if_cut(hand_back)
            except LeaseLost:  # as in on_epoch: publish nothing, leave nothing
                ended = self.runner.ended_by_itself(claim)
                if ended in (Outcome.handed_back, Outcome.cancelled):
                    return ended
                if file is not None:
                    self.runner.remove_files(claim, [file.path])
        return Outcome.lease_lost
