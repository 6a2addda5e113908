"""The HTTP/JSON contract: job specs in, job views out."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

SEED_MAX = 2**63 - 1  # fits SQLite's and JSON's signed 64-bit integers, and torch.manual_seed
DATASETS = ("mnist", "fashion-mnist")


class _SpecBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    permutation_seed: int | None = Field(
        None, ge=0, le=SEED_MAX, description="Shuffle the 784 pixels with randperm seeded by this; null = natural order"
    )
    epochs: int = Field(1, ge=1, le=100)
    batch_size: int = Field(64, ge=1, le=60_000)
    test_batch_size: int = Field(1000, ge=1, le=10_000)
    lr: float = Field(0.01, gt=0, le=10)
    momentum: float = Field(0.5, ge=0, lt=1)
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="torch.manual_seed; chosen and stored when omitted")
    dataset: Literal[DATASETS] = "mnist"  # type: ignore[valid-type]
    max_attempts: int | None = Field(None, ge=1, le=20, description="Attempts before the job fails; server default if null")


class FCSpec(_SpecBase):
    architecture: Literal["fc"]
    n_hidden: int = Field(8, ge=1, le=4096)


class CNNSpec(_SpecBase):
    architecture: Literal["cnn"]
    n_features: int = Field(6, ge=1, le=256)


JobSpec = Annotated[Union[FCSpec, CNNSpec], Field(discriminator="architecture")]
job_spec_adapter: TypeAdapter[FCSpec | CNNSpec] = TypeAdapter(JobSpec)


class Progress(BaseModel):
    fraction: float
    epoch: int
    step: int
    steps: int
    loss: float | None = None


class EpochMetrics(BaseModel):
    epoch: int
    train_loss: float
    test_loss: float
    test_accuracy: float


class CheckpointRead(BaseModel):
    epoch: int
    size_bytes: int
    sha256: str
    url: str


class JobResult(BaseModel):
    test_accuracy: float = Field(description="fraction 0..1")
    test_loss: float
    correct: int
    total: int
    train_seconds: float
    test_seconds: float
    device: str
    torch_version: str
    checkpoints: list[CheckpointRead]


class Attempt(BaseModel):
    attempt: int
    worker_id: str
    started_at: datetime
    resumed_from_epoch: int | None = None
    resumed_from_step: int | None = None
    ended: str | None = None  # how the attempt ended: succeeded, failed, cancelled, lease expired, handed back


class JobRead(BaseModel):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    architecture: str
    dataset: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    max_attempts: int
    cancel_requested: bool
    progress: Progress | None
    spec: dict[str, Any]
    param_count: int
    metrics: list[EpochMetrics]
    result: JobResult | None
    error: str | None
    history: list[Attempt]


class JobPage(BaseModel):
    items: list[JobRead]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next (older) page; null at the end")


class WorkerRead(BaseModel):
    id: str
    host: str
    pid: int
    device: str
    started_at: datetime
    last_seen_at: datetime
    stopped_at: datetime | None
    current_job_id: str | None


def checkpoint_url(job_id: str, epoch: int) -> str:
    return f"/v1/jobs/{job_id}/checkpoint?epoch={epoch}"


def job_read(job) -> JobRead:
    """The public view of a models.Job (checkpoints listed from their rows, so they are always current)."""
    result = None
    if job.result is not None:
        checkpoints = [
            CheckpointRead(epoch=c.epoch, size_bytes=c.size_bytes, sha256=c.sha256, url=checkpoint_url(job.id, c.epoch))
            for c in job.checkpoints
        ]
        result = JobResult(**job.result, checkpoints=checkpoints)
    return JobRead(
        id=job.id, status=job.status, architecture=job.architecture, dataset=job.dataset,
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        attempts=job.attempts, max_attempts=job.max_attempts, cancel_requested=job.cancel_requested,
        progress=job.progress, spec=job.spec, param_count=job.param_count,
        metrics=[EpochMetrics(**{k: m[k] for k in EpochMetrics.model_fields}) for m in job.metrics],
        result=result, error=job.error, history=job.history,
    )


class DatasetRead(BaseModel):
    name: str
    state: Literal["ready", "missing", "corrupt"]
    source: str | None = Field(description="Where the files came from, as recorded when they were verified")
    folder: str
    size_bytes: int = Field(description="Total of the raw files present")
    file_sizes_bytes: dict[str, int] = Field(description="Size of each raw file present, by name")
    train_samples: int | None
    test_samples: int | None
    detail: str | None = Field(description="What is missing or wrong, and how to fix it; null when ready")
