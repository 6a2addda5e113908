"""Per-step training losses, every N steps, without a device sync of their own.

The loop keeps each recorded step's loss as a detached tensor (no sync); where it already syncs
(control.LOSS_REFRESH_SECONDS and each epoch's end, the stops included) `sync_figures` turns the
pending tensors into floats in the same transfer as the loop's own figures. Settled records wait
for the heartbeat thread, which takes them all at once (`take`) and writes them in its own
transaction; the runner takes what is left when the job ends. A loss that is not finite is never
recorded: the job fails through the divergence path instead.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from service.jobs.schemas import StepMetrics


@dataclass(frozen=True)
class PendingStep:
    step: int  # counted over all epochs, from 1
    epoch: int
    samples: int
    loss: torch.Tensor  # detached, still on the device


def samples_seen(epoch: int, step_in_epoch: int, batch_size: int, n: int) -> int:
    """Training samples a job has seen after `step_in_epoch` (from 1) of `epoch`: every earlier
    epoch whole, and this epoch's batches (the last, short one by its real size)."""
    return (epoch - 1) * n + min(step_in_epoch * batch_size, n)


class StepLosses:
    """One job's step records: written by its training loop, drained by the heartbeat thread.

    `every` None records nothing (a trainer run outside a worker)."""

    def __init__(self, every: int | None = None) -> None:
        if every is not None and every < 1:
            raise ValueError(f"every must be at least 1, not {every}")
        self.every = every
        self.pending: list[PendingStep] = []  # the training thread's alone
        self._settled: list[StepMetrics] = []  # shared with the heartbeat thread, under _lock
        self._lock = threading.Lock()

    def due(self, step: int) -> bool:
        return self.every is not None and step % self.every == 0

    def note(self, step: int, epoch: int, samples: int, loss: torch.Tensor) -> None:
        """Keep a due step's (see `due`) loss tensor until the loop next syncs."""
        self.pending.append(PendingStep(step, epoch, samples, loss))

    def settle(self, losses: Sequence[float]) -> None:
        """The pending steps' losses as floats, in order: the finite ones become records."""
        assert len(losses) == len(self.pending), "one float per pending step"
        records = [
            StepMetrics(step=p.step, epoch=p.epoch, samples=p.samples, loss=loss)
            for p, loss in zip(self.pending, losses, strict=True)
            if math.isfinite(loss)
        ]
        self.pending = []
        if records:
            with self._lock:
                self._settled.extend(records)

    def take(self) -> list[StepMetrics]:
        """Every settled record, oldest first; they are the caller's to write from now on."""
        with self._lock:
            taken, self._settled = self._settled, []
        return taken

    def restore(self, records: list[StepMetrics]) -> None:
        """Put back records `take` returned whose write did not commit (they precede any newer ones)."""
        with self._lock:
            self._settled[:0] = records


def sync_figures(figures: torch.Tensor, logs: Sequence[StepLosses]) -> list[float]:
    """`figures` (1-D) as floats, and every pending loss of `logs` settled, in one device transfer."""
    pending = [p.loss for log in logs for p in log.pending]
    if not pending:
        values: list[float] = figures.tolist()
        return values
    flat = figures.double()
    values = torch.cat([flat, torch.stack(pending).double()]).tolist()
    rest = len(flat)
    for log in logs:
        count = len(log.pending)
        log.settle(values[rest : rest + count])
        rest += count
    return values[: len(flat)]
