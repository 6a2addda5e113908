"""Run claimed jobs, alone or as a pack: claim → prepare (resume point, data) → train with a
heartbeat → one fenced ending per job.

The trainers report through one interface (Callbacks: on_epoch / on_stop, by job index); the
Recorder turns each into one JobWriter call (workers/writer.py), so a worker that lost a job's
lease writes nothing more for it. The step losses the heartbeat has not written yet go with each
job's ending, in the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from service.jobs.schemas import EpochRecord, FCSpec, TrainResult
from service.platform.config import Settings, heartbeat_period
from service.platform.db import Database, lost_connection
from service.platform.errors import CheckpointCorrupt, DataUnavailable, StoreUnavailable
from service.platform.states import Outcome
from service.queue import leases
from service.queue.leases import Claim
from service.storage.store import ArtifactStore, StoredFile, name_folders, open_store
from service.training import checkpoints
from service.training.checkpoints import TrainingState
from service.training.control import Live
from service.training.engine import Trainer
from service.training.packed import PackedFCTrainer
from service.training.steps import StepLosses
from workers.data_cache import DataCache
from workers.heartbeat import Heartbeat, Held
from workers.writer import JobWriter

log = logging.getLogger(__name__)


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        worker_id: str,
        device: torch.device,
        cache: DataCache,
        reap: Callable[[], object] | None = None,
        store: ArtifactStore | None = None,
    ) -> None:
        self.settings, self.db, self.worker_id, self.device, self.cache = settings, db, worker_id, device, cache
        self.store = store or open_store(settings)
        self.writer = JobWriter(db, self.store, settings.keep_checkpoints)
        self.reap = reap  # the worker's reaping, which the heartbeat does while a job runs
        self.held: list[Held] = []  # the running jobs, so a signal handler can stop them
        self.stop_reason: Outcome | None = None  # once set (shutdown), every job held from then on stops too

    def stop_all(self, reason: Outcome) -> None:
        self.stop_reason = reason
        for held in self.held:
            held.live.request_stop(reason)

    def run(self, claims: list[Claim]) -> dict[str, Outcome]:
        """Train `claims` (one, or a pack of the same shape) to their ends; returns how each ended."""
        every, lease = self.settings.step_metrics_every, self.settings.lease_seconds
        self.held = [Held(c, Live(step_losses=StepLosses(every), lease_until=c.lease_from + lease)) for c in claims]
        if self.stop_reason is not None:
            # A signal that came while these jobs were being claimed found nothing held to stop:
            # they stop at their first step and are handed back, instead of training to the end
            # (or past the grace period, when the lease would then cost them an attempt).
            self.stop_all(self.stop_reason)
        recorder = Recorder(self.writer, self.held)
        failure = None  # why the jobs failed, when training raised
        try:
            for index, result in self.train(recorder).items():
                held = self.held[index]
                ending = self.writer.finish(held.claim, result, held.live.progress(), held.live.step_losses.take())
                recorder.outcomes[held.claim.job_id] = ending
        except Exception as exc:
            if (unreachable := out_of_reach(exc)) is not None:
                # Not the jobs' fault: each call was tried again for db_reconnect_seconds (the
                # database) or artifacts_retry_seconds (the object store). The worker's loop waits;
                # the jobs resume from their last durable checkpoints once their leases run out.
                log.warning("jobs %s: %s unreachable; left to their leases", [c.job_id for c in claims], unreachable)
                raise
            failure = failure_message(exc, claims, self.device, self.settings)
            for held in self.held:
                if held.claim.job_id not in recorder.outcomes:
                    ending = self.writer.fail(held.claim, failure, held.live.step_losses.take())
                    recorder.outcomes[held.claim.job_id] = ending
        finally:
            ended, self.held = self.held, []
        for held in ended:
            outcome = recorder.outcomes.get(held.claim.job_id)
            reason = (failure or held.live.failure or "training failed") if outcome is Outcome.failed else None
            log_transition(held.claim, self.worker_id, outcome or "ended", reason, pack=len(claims))
        if self.device.type == "cuda":  # give back what the ended jobs (or an allocation that failed) held
            torch.cuda.empty_cache()
        return recorder.outcomes

    def train(self, recorder: Recorder) -> dict[int, TrainResult]:
        """Prepare the trainer and run it, both under a heartbeat (preparing may load a data set or
        read checkpoints for longer than a lease); the results of the jobs that finished."""
        beat = Heartbeat(
            self.db,
            self.held,
            period=heartbeat_period(self.settings),
            lease_seconds=self.settings.lease_seconds,
            worker_id=self.worker_id,
            reap=self.reap,
            reap_seconds=self.settings.reap_seconds,
        )
        beat.start()
        try:
            return self.trainer().run(recorder)
        finally:
            beat.stop()  # before the last writes, so no heartbeat lands after a job has ended

    def trainer(self) -> Trainer | PackedFCTrainer:
        """A pack's trainer (fresh FC jobs of one shape), or one job's, from its resume point."""
        claims = [held.claim for held in self.held]
        if len(claims) > 1:
            specs = [claim.spec for claim in claims if isinstance(claim.spec, FCSpec)]
            assert len(specs) == len(claims), "only FC jobs are packed"
            data = self.cache.get(specs[0].dataset, None)  # each job's permutation is applied per batch
            return PackedFCTrainer(specs, data, self.device, [held.live for held in self.held])
        claim, live = claims[0], self.held[0].live
        resume = None
        if claim.resume is not None:
            resume = resume_point(self.db, self.store, claim)
            epoch, step = (resume.epoch, resume.partial.step if resume.partial else 0) if resume else (0, 0)
            self.writer.note_resume(claim, epoch, step)
        data = self.cache.get(claim.spec.dataset, claim.spec.permutation_seed)
        return Trainer(claim.spec, data, self.device, resume=resume, live=live)


def resume_point(db: Database, store: ArtifactStore, claim: Claim) -> TrainingState | None:
    """The training state to resume `claim` from: its resume file if that still matches its sha256,
    else the latest kept epoch checkpoint that does (the epochs after it are trained again, and
    their rows replaced), else None (from scratch). A corrupt or missing file never fails the job;
    the fall-back is logged, and the attempt records the epoch it resumed from."""
    resume = claim.resume
    assert resume is not None
    if (state := try_checkpoint(store, claim, resume)) is not None:
        return state
    with db.read() as session:  # read only when the resume file fails to verify
        kept = leases.kept_checkpoints(session, claim.job_id)
    for file in kept:
        if file.path != resume.path and (state := try_checkpoint(store, claim, file)) is not None:
            log.warning("job %s: resuming from the checkpoint of epoch %d instead", claim.job_id, state.epoch)
            return state
    log.warning("job %s: no checkpoint verifies; training again from the start", claim.job_id)
    return None


def try_checkpoint(store: ArtifactStore, claim: Claim, file: StoredFile) -> TrainingState | None:
    try:
        return checkpoints.load(store, file)
    except (CheckpointCorrupt, OSError) as exc:
        cause = "corrupt" if isinstance(exc, CheckpointCorrupt) else f"unreadable ({type(exc).__name__})"
        log.warning("job %s: checkpoint %s is %s; not resuming from it", claim.job_id, file.path, cause)
        return None


def out_of_reach(exc: Exception) -> str | None:
    """What `exc` says could not be reached, when it is an error the worker waits out rather than
    one that fails its jobs: the database (lost_connection) or the artifact store."""
    if isinstance(exc, StoreUnavailable):
        return "the artifact store"
    return "the database" if lost_connection(exc) else None


def failure_message(exc: Exception, claims: list[Claim], device: torch.device, settings: Settings) -> str:
    """The error a job that raised `exc` ends with; the worker goes on with the next job. Names the
    server's folders by their settings, never their paths."""
    if isinstance(exc, DataUnavailable):
        return exc.detail
    if is_out_of_memory(exc):
        log.warning("jobs %s: out of memory on %s: %s", [c.job_id for c in claims], device, exc)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        packed = f" (trained as a pack of {len(claims)} jobs)" if len(claims) > 1 else ""
        return (
            f"out of memory on {device}{packed}: {first_line[:300]}; "
            "lower batch_size, test_batch_size or the model size (n_hidden / n_features)"
        )
    log.exception("jobs %s failed", [claim.job_id for claim in claims])
    named = name_folders(
        f"{type(exc).__name__}: {exc}", [(settings.artifacts_dir, "<artifacts dir>"), (settings.data_dir, "<data dir>")]
    )
    return named


def log_transition(claim: Claim, worker_id: str, transition: str, reason: str | None = None, **fields: object) -> None:
    """One line per job transition (claimed, or how it ended): job id, attempt, worker, and why it
    failed; the same as structured fields for JSON lines (service/platform/logs.py)."""
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
    """The trainers' Callbacks: each epoch and each stop becomes one JobWriter call."""

    def __init__(self, writer: JobWriter, held: list[Held]) -> None:
        self.writer, self.held = writer, held
        self.outcomes: dict[str, Outcome] = {}  # how each job ended, by id

    def on_epoch(self, index: int, metrics: EpochRecord, checkpoint: TrainingState) -> None:
        held = self.held[index]
        if not self.writer.record_epoch(held.claim, metrics, checkpoint):
            held.live.request_stop(Outcome.lease_lost)  # one job losing its lease leaves the others be

    def on_stop(self, index: int, reason: Outcome, checkpoint: TrainingState) -> None:
        held = self.held[index]
        claim, live = held.claim, held.live
        ending = Outcome.lease_lost  # another worker owns the job: its step losses are not ours to write
        if reason is not Outcome.lease_lost:
            steps = live.step_losses.take()  # the trainer settled them before calling on_stop
            if reason is Outcome.cancelled:
                ending = self.writer.cancel(claim, steps)
            elif reason is Outcome.failed:  # the trainer's own stop (a loss that is not finite)
                ending = self.writer.fail(claim, live.failure or "training failed", steps)
            elif reason is Outcome.handed_back:
                ending = self.writer.hand_back(claim, checkpoint, steps)
        self.outcomes[claim.job_id] = ending
