"""What a training loop shares with whoever watches it, and the one stop protocol.

`Live` is written by the loop (epoch, step, loss, step losses) and read by the worker's heartbeat
thread; every reason to stop — a cancel, a lost lease, a shutdown's hand-back, the trainer's own
failure — goes through `Live.request_stop`, which alone decides which reason stands. The loop
stops at its next step boundary and reports through `Callbacks.on_stop` with that reason.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol

from service.jobs.schemas import EpochRecord, Progress
from service.platform.states import Outcome
from service.training.checkpoints import TrainingState
from service.training.steps import StepLosses

LOSS_REFRESH_SECONDS = 0.25  # how often the loop turns its loss into a float (a device sync on GPUs)
LEASE_WAIT_SECONDS = 0.05  # how often a loop whose lease is in doubt looks for the heartbeat's verdict


def overrides(new: Outcome, current: Outcome | None) -> bool:
    """Whether a stop for `new` replaces the reason already standing. The first reason stands,
    except that a lost lease replaces any (another worker owns the job: nothing more is ours to
    write), and a failure replaces a hand-back (resuming a diverged job would only diverge again)."""
    if current is None or new is Outcome.lease_lost:
        return current is not Outcome.lease_lost
    return new is Outcome.failed and current is Outcome.handed_back


@dataclass
class Live:
    """Shared between the training loop and whoever watches it (a heartbeat thread)."""

    epoch: int = 0
    step: int = 0
    steps: int = 0
    epochs: int = 1
    loss: float | None = None  # finite or None, never NaN/inf
    stop_reason: Outcome | None = None  # set only through request_stop; the loop stops at the next step
    lease_until: float = math.inf  # time.monotonic() until which the job's lease is known to hold
    failure: str | None = None  # why, when the reason that stands is `failed`
    step_losses: StepLosses = field(default_factory=StepLosses)  # every N steps' loss, for the heartbeat

    def request_stop(self, reason: Outcome, failure: str | None = None) -> bool:
        """Ask the loop to stop for `reason` (`failure` says why, for `failed`); returns whether
        this reason now stands (see `overrides`)."""
        if not overrides(reason, self.stop_reason):
            return False
        self.stop_reason = reason
        if reason is Outcome.failed:
            self.failure = failure
        return True

    def hold_lease(self) -> None:
        """Return once the lease is known to hold, or the loop must stop. The heartbeat moves
        `lease_until` on with every renewal, so in step with it this never waits; after a pause
        longer than the lease (SIGSTOP, a frozen VM, a suspended laptop) it waits for the heartbeat's
        verdict: renewed, or lost (a stop), so a worker whose job was reaped meanwhile trains not
        one more step of it."""
        while self.stop_reason is None and time.monotonic() >= self.lease_until:
            time.sleep(LEASE_WAIT_SECONDS)

    def show_loss(self, value: float) -> None:
        self.loss = value if math.isfinite(value) else None

    def progress(self) -> Progress | None:
        if not self.epoch:
            return None
        done = (self.epoch - 1) * self.steps + self.step
        fraction = min(1.0, done / max(1, self.epochs * self.steps))
        return Progress(fraction=fraction, epoch=self.epoch, step=self.step, steps=self.steps, loss=self.loss)


class Callbacks(Protocol):
    """What both trainers report, per job index (0 for a single job)."""

    def on_epoch(self, index: int, metrics: EpochRecord, checkpoint: TrainingState) -> None:
        """An epoch ended; `checkpoint` is the state after it."""

    def on_stop(self, index: int, reason: Outcome, checkpoint: TrainingState) -> None:
        """The job stopped at a step boundary because its Live asked; `checkpoint` resumes it exactly."""
