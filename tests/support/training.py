"""Helpers for training tests: typed specs, a trainer on the fixture data, callbacks that record."""

from __future__ import annotations

import io
from typing import Any

import torch

from service.jobs.schemas import AnySpec, EpochRecord, job_spec_adapter
from service.platform.config import Settings
from service.platform.db import Database
from service.platform.states import Outcome
from service.training.checkpoints import TrainingState
from service.training.control import Live
from service.training.engine import Trainer
from service.training.tensors import MnistTensors, load_tensors

CPU = torch.device("cpu")


def make_spec(
    architecture: str, permutation_seed: int | None = None, epochs: int = 1, seed: int = 7, **fields: Any
) -> AnySpec:
    return job_spec_adapter.validate_python(
        {"architecture": architecture, "permutation_seed": permutation_seed, "epochs": epochs, "seed": seed, **fields}
    )


def job_data(settings: Settings, spec: AnySpec) -> MnistTensors:
    """The data a single job trains on: permuted once if its spec says so (as the worker's cache does)."""
    return load_tensors(settings, spec.dataset).permuted_by(spec.permutation_seed)


def trainer_for(
    settings: Settings, spec: AnySpec, resume: TrainingState | None = None, live: Live | None = None
) -> Trainer:
    return Trainer(spec, job_data(settings, spec), CPU, resume=resume, live=live)


class Recorded:
    """Callbacks that keep what the trainer reports, by job index."""

    def __init__(self) -> None:
        self.epochs: dict[int, list[tuple[EpochRecord, TrainingState]]] = {}
        self.stops: dict[int, tuple[Outcome, TrainingState]] = {}

    def on_epoch(self, index: int, metrics: EpochRecord, checkpoint: TrainingState) -> None:
        self.epochs.setdefault(index, []).append((metrics, checkpoint))

    def on_stop(self, index: int, reason: Outcome, checkpoint: TrainingState) -> None:
        self.stops[index] = (reason, checkpoint)

    def last(self, index: int = 0) -> TrainingState:
        return self.epochs[index][-1][1]


def saved(state: TrainingState) -> dict[str, Any]:
    """A checkpoint as it comes back from disk: only through torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state.encode(), buffer)
    buffer.seek(0)
    loaded: dict[str, Any] = torch.load(buffer, weights_only=True)
    return loaded


def reloaded(state: TrainingState) -> TrainingState:
    return TrainingState.decode(saved(state))


class StopAt(Live):
    """A Live whose stop flag rises once the loop has reached (epoch, step), as a signal would."""

    def __init__(self, epoch: int, step: int, reason: Outcome = Outcome.handed_back) -> None:
        super().__init__()
        self.at, self.reason = (epoch, step), reason

    @property
    def stop_reason(self) -> Outcome | None:
        return self.reason if (self.epoch, self.step) >= self.at else None

    @stop_reason.setter
    def stop_reason(self, _value: Outcome | None) -> None:
        pass


def run_queued(settings: Settings, db: Database) -> dict[str, Outcome]:
    """Claim what is queued and train it to its end with the worker's own runner, in this process:
    job id -> how it ended (for API tests that need a real trained job without a worker process)."""
    from service.queue import leases
    from workers.data_cache import DataCache
    from workers.runner import JobRunner

    with db.write() as session:
        claims = leases.claim(session, "worker-1", settings.lease_seconds)
    return JobRunner(settings, db, "worker-1", CPU, DataCache(settings, CPU)).run(claims)
