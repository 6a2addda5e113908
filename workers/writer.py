"""The worker's writes for the jobs it holds, and the checkpoint files they point at.

Each write is one fenced service.queue.leases call that takes everything it writes (an ending
takes the step losses not written yet), made through Database.write_again_if_cut: a write whose
commit's answer was lost to a cut connection is made again. An epoch written again finds its own
row; an ending written again finds its lease gone and asks how the attempt ended, so an ending
that had committed is not mistaken for a lost lease. A worker that lost a job's lease writes
nothing more for it and leaves no file behind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from sqlalchemy.orm import Session

from service.jobs.schemas import EpochRecord, Progress, StepMetrics, TrainResult
from service.platform.db import Database
from service.platform.errors import LeaseLost
from service.platform.states import Outcome
from service.queue import leases
from service.queue.leases import Claim
from service.storage.store import ArtifactStore, StoredFile
from service.training import checkpoints
from service.training.checkpoints import TrainingState

log = logging.getLogger(__name__)


class JobWriter:
    def __init__(self, db: Database, store: ArtifactStore, keep_checkpoints: int | None) -> None:
        self.db, self.store, self.keep_checkpoints = db, store, keep_checkpoints

    def note_resume(self, claim: Claim, epoch: int, step: int) -> None:
        self.db.write_again_if_cut(lambda session: leases.note_resume(session, claim, epoch, step))

    def record_epoch(self, claim: Claim, metrics: EpochRecord, state: TrainingState) -> bool:
        """Save the epoch's checkpoint and record it (pruning older ones, keep_checkpoints);
        False when the lease is lost: nothing is recorded and the file is removed again."""
        file = self.save(claim, metrics.epoch, state)
        keep = self.keep_checkpoints
        try:
            pruned = self.db.write_again_if_cut(lambda s: leases.record_epoch(s, claim, metrics, file, keep))
        except LeaseLost:
            log.warning("job %s: lease lost; epoch %d not recorded, training stops", claim.job_id, metrics.epoch)
            self.remove(claim, [file.path])
            return False
        self.remove(claim, pruned)
        return True

    def finish(
        self, claim: Claim, result: TrainResult, progress: Progress | None, steps: Sequence[StepMetrics]
    ) -> Outcome:
        return self._end(claim, Outcome.succeeded, lambda s: leases.finish(s, claim, result, progress, steps))

    def fail(self, claim: Claim, error: str, steps: Sequence[StepMetrics]) -> Outcome:
        return self._end(claim, Outcome.failed, lambda s: leases.fail(s, claim, error, steps))

    def cancel(self, claim: Claim, steps: Sequence[StepMetrics]) -> Outcome:
        return self._end(claim, Outcome.cancelled, lambda s: leases.mark_cancelled(s, claim, steps))

    def hand_back(self, claim: Claim, state: TrainingState, steps: Sequence[StepMetrics]) -> Outcome:
        """Save the mid-epoch state and give the job back to the queue (or end it cancelled, when a
        cancel came meanwhile). A state that cannot be saved (a full disk) is logged, and the job
        handed back without it: it resumes from its last epoch."""
        file: StoredFile | None
        try:
            file = self.save(claim, None, state)
        except OSError as exc:
            log.warning("job %s: mid-epoch checkpoint not written (%s); handing back without it", claim.job_id, exc)
            file = None
        try:
            return self.db.write_again_if_cut(lambda s: leases.hand_back(s, claim, file, steps))
        except LeaseLost:
            ended = self.ended_by_itself(claim)
            if ended in (Outcome.handed_back, Outcome.cancelled):
                return ended
            if file is not None:
                self.remove(claim, [file.path])
            return Outcome.lease_lost

    def _end(self, claim: Claim, outcome: Outcome, write: Callable[[Session], None]) -> Outcome:
        """A final fenced write; a lost lease means another worker owns the job: say so, write nothing."""
        try:
            self.db.write_again_if_cut(write)
            return outcome
        except LeaseLost:
            if self.ended_by_itself(claim) is outcome:
                return outcome
            log.warning("job %s: lease lost before it could be marked %s", claim.job_id, outcome)
            return Outcome.lease_lost

    def ended_by_itself(self, claim: Claim) -> Outcome | None:
        """How the claim's attempt ended, when a fenced ending found its lease gone: an ending written
        again because its commit's answer was lost finds its own."""
        with self.db.read() as session:
            return leases.attempt_outcome(session, claim)

    def save(self, claim: Claim, epoch: int | None, state: TrainingState) -> StoredFile:
        return checkpoints.save(self.store, checkpoints.checkpoint_key(claim.job_id, claim.token, epoch), state)

    def remove(self, claim: Claim, paths: list[str]) -> None:
        """Remove checkpoints no row points at: pruned ones (keep_checkpoints), or one a fenced-out
        worker wrote (named by its token, so never the new owner's). One that cannot be removed is
        logged, not fatal; the job's delete removes it."""
        for path in paths:
            try:
                self.store.delete(path)
            except OSError as exc:
                log.warning("job %s: checkpoint %s not removed (%s)", claim.job_id, path, exc)
