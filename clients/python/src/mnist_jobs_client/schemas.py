"""What the API answers: jobs, their progress, metrics, results and checkpoints, workers, data sets
and comparison cells. One definition each, used by the server to answer and by the client to read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mnist_jobs_client.specs import JobSpec
from mnist_jobs_client.states import JobStatus, Outcome


class JobCost(BaseModel):
    """What a job is estimated to cost, from its spec alone (service/cost.py); checked at submit."""

    param_count: int
    steps: int = Field(description="optimizer steps: epochs * ceil(60000 / batch_size)")
    flops: float = Field(description="estimated floating-point operations of training and testing, all epochs")
    peak_memory_bytes: int = Field(description="estimated peak memory: weights, gradients, momentum, activations, data")


class Progress(BaseModel):
    fraction: float
    epoch: int
    step: int
    steps: int
    loss: float | None = None


LEGACY_NULL = "null only for an epoch recorded before a non-finite loss failed its job (older versions)"


class EpochMetrics(BaseModel):
    epoch: int
    train_loss: float | None = Field(description=LEGACY_NULL)
    test_loss: float | None = Field(description=LEGACY_NULL)
    test_accuracy: float


class ResultFields(BaseModel):
    """A job's outcome: what its trainer reports (TrainResult) and what the job's JSON shows (JobResult)."""

    test_accuracy: float = Field(description="fraction 0..1")
    test_loss: float | None = Field(description=LEGACY_NULL.replace("an epoch", "a job"))
    correct: int
    total: int
    train_seconds: float
    test_seconds: float
    device: str
    torch_version: str
    confusion: list[list[int]] | None = Field(
        None, description="10x10 counts of the last test pass: row = true digit, column = predicted digit"
    )


class StepMetrics(BaseModel):
    """The training loss at one step (recorded every MNIST_JOBS_STEP_METRICS_EVERY steps)."""

    step: int = Field(description="counted over all epochs, from 1")
    epoch: int
    samples: int = Field(description="training samples the job had seen after this step")
    loss: float = Field(description="this step's batch loss")


class StepPage(BaseModel):
    items: list[StepMetrics]
    next_from_step: int | None = Field(description="Pass as ?from_step= for the next page; null at the end")


class CheckpointRead(BaseModel):
    epoch: int
    size_bytes: int
    sha256: str
    url: str


class JobResult(ResultFields):
    model_config = ConfigDict(allow_inf_nan=True)  # a view of what is stored: reading never fails

    checkpoints: list[CheckpointRead]


class AttemptRead(BaseModel):
    attempt: int
    worker_id: str
    started_at: datetime
    resumed_from_epoch: int | None = None
    resumed_from_step: int | None = None
    ended: Outcome | None = None  # null while the attempt runs


class JobRead(BaseModel):
    id: str
    name: str | None
    labels: dict[str, str]
    status: JobStatus
    architecture: str
    dataset: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    max_attempts: int
    cancel_requested: bool
    progress: Progress | None
    spec: JobSpec
    param_count: int
    cost: JobCost | None = Field(None, description="The estimate the job was admitted with (from its spec)")
    metrics: list[EpochMetrics]
    result: JobResult | None
    error: str | None
    history: list[AttemptRead]
    submitted_by: str | None = Field(description="id of the token that submitted it; null in the open mode")
    comparison_id: str | None = Field(description="the comparison this job is one seed of a cell of")
    reused_from: str | None = Field(
        description="the finished job of the same spec whose result (and checkpoint files) this job took"
    )


class JobPage(BaseModel):
    items: list[JobRead]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next (older) page; null at the end")


class WorkerRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    host: str
    pid: int
    device: str
    version: str | None = Field(description="the worker's mnist-jobs version (null: registered by an older one)")
    torch_version: str | None
    started_at: datetime
    last_seen_at: datetime
    stopped_at: datetime | None
    current_job_id: str | None


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


class CellRead(BaseModel):
    """One (architecture, permutation) cell of a comparison: its test accuracies over the seeds."""

    position: int
    architecture: Literal["fc", "cnn"]
    permutation_seed: int | None
    param_count: int
    n: int = Field(description="seeds that succeeded (the statistics are over these)")
    mean: float | None = Field(description="mean test accuracy (fraction 0..1); null before any seed succeeded")
    std: float | None = Field(description="sample standard deviation; null with fewer than 2 values")
    ci95: tuple[float, float] | None = Field(description="95 % t interval of the mean; null with fewer than 2 values")
    values: list[float] = Field(description="test accuracy of each succeeded seed, in the order of seeds")
    seeds: list[int] = Field(description="the seeds of `values`, in the same order")
    job_ids: list[str] = Field(description="all of the cell's jobs, in the order of the comparison's seeds")
    failed: list[str] = Field(description="why each failed job of this cell failed, as '<job id>: <error>'")
