"""Checkpoints: one typed TrainingState, written atomically, read back with weights_only=True.

The file is a plain dict of tensors, numbers and strings (format 1), so `torch.load(path,
weights_only=True)` opens it anywhere and nothing is ever unpickled. Its sha256 is recorded in the
database; load() checks it before the file is opened.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import torch

from service.jobs.schemas import AnySpec, EpochRecord, job_spec_adapter
from service.platform.errors import CheckpointCorrupt
from service.storage.store import ArtifactStore, StoredFile, job_key, read_verified

FORMAT_VERSION = 1


@dataclass(frozen=True)
class PartialEpoch:
    """Where an epoch was interrupted: the next step, the epoch's sample order, the loss so far."""

    step: int
    order: torch.Tensor
    loss_sum: float


@dataclass(frozen=True)
class TrainingState:
    """Everything needed to load a job's model elsewhere or to resume its training bit-exactly."""

    spec: AnySpec
    state_dict: dict[str, torch.Tensor]  # the tutorial's class's keys
    optimizer: dict[str, Any]  # torch.optim.SGD.state_dict(): momentum buffers and hyperparameters
    epoch: int  # epochs finished
    metrics: list[EpochRecord]
    permutation: torch.Tensor | None
    rng_state: torch.Tensor  # the job's private generator, which draws each epoch's sample order
    partial: PartialEpoch | None = None

    @classmethod
    def capture(
        cls,
        spec: AnySpec,
        state_dict: dict[str, torch.Tensor],
        optimizer: dict[str, Any],
        epoch: int,
        metrics: list[EpochRecord],
        permutation: torch.Tensor | None,
        generator: torch.Generator,
        partial: PartialEpoch | None = None,
    ) -> TrainingState:
        """A snapshot on the CPU, detached from the live training tensors."""
        return cls(
            spec,
            _to_cpu(state_dict),
            _to_cpu(optimizer),
            epoch,
            list(metrics),
            permutation,
            generator.get_state(),
            partial,
        )

    def encode(self) -> dict[str, Any]:
        partial = (
            None
            if self.partial is None
            else {"step": self.partial.step, "order": self.partial.order, "loss_sum": self.partial.loss_sum}
        )
        return {
            "format_version": FORMAT_VERSION,
            "spec": self.spec.model_dump(mode="json"),
            "state_dict": self.state_dict,
            "optimizer": self.optimizer,
            "epoch": self.epoch,
            "metrics": [m.model_dump() for m in self.metrics],
            "permutation": self.permutation,
            "rng_state": self.rng_state,
            "partial": partial,
        }

    @classmethod
    def decode(cls, raw: dict[str, Any]) -> TrainingState:
        if raw.get("format_version") != FORMAT_VERSION:
            raise CheckpointCorrupt(f"checkpoint format {raw.get('format_version')!r} is not {FORMAT_VERSION}")
        partial = raw["partial"]
        return cls(
            spec=job_spec_adapter.validate_python(raw["spec"]),
            state_dict=raw["state_dict"],
            optimizer=raw["optimizer"],
            epoch=raw["epoch"],
            metrics=[EpochRecord.model_validate(m) for m in raw["metrics"]],
            permutation=raw["permutation"],
            rng_state=raw["rng_state"],
            partial=None if partial is None else PartialEpoch(partial["step"], partial["order"], partial["loss_sum"]),
        )


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def checkpoint_key(job_id: str, token: str, epoch: int | None) -> str:
    """The checkpoint's key in the artifact store. The lease token in the name keeps a fenced-out
    worker that is still writing from ever replacing the file a later attempt recorded."""
    name = f"epoch-{epoch:03d}" if epoch is not None else "resume"
    return job_key(job_id, f"{name}-{token[:8]}.pt")


def save(store: ArtifactStore, key: str, state: TrainingState) -> StoredFile:
    buffer = io.BytesIO()
    torch.save(state.encode(), buffer)
    return store.put(key, buffer.getvalue())


def load(store: ArtifactStore, file: StoredFile) -> TrainingState:
    """Open a checkpoint without unpickling arbitrary objects, after checking its sha256."""
    data = read_verified(store, file, f"checkpoint {file.path}")
    return TrainingState.decode(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
