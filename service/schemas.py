"""The HTTP/JSON contract: job specs in, job views out, and the typed values that cross the
boundaries between api, queue, runner and trainers. No torch here: parameter counts are arithmetic.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter

from service.states import JobStatus, Outcome

SEED_MAX = 2**63 - 1  # fits SQLite's and JSON's signed 64-bit integers, and torch.manual_seed
DATASETS = ("mnist", "fashion-mnist")
INPUT_SIZE = 28 * 28
N_CLASSES = 10


LABEL_KEY_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
MAX_LABELS = 16
Labels = Annotated[
    dict[
        Annotated[str, StringConstraints(pattern=LABEL_KEY_PATTERN)],
        Annotated[str, StringConstraints(min_length=1, max_length=200)],
    ],
    Field(max_length=MAX_LABELS),
]


class _SpecBase(BaseModel):
    # Strict: integers are JSON integers (not true/false, "10", "1_0" or 10.0); lr and momentum take
    # any JSON number but not a boolean or a string; NaN and Infinity are refused everywhere.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    # Fields that make a job itself rather than fix its shape and schedule: jobs equal in every
    # other field can train together as one stacked model.
    PER_JOB_FIELDS: ClassVar[frozenset[str]] = frozenset({"seed", "permutation_seed"})

    permutation_seed: int | None = Field(
        None, ge=0, le=SEED_MAX, description="Shuffle the 784 pixels with randperm seeded by this; null = natural order"
    )
    epochs: int = Field(1, ge=1, le=100)
    batch_size: int = Field(64, ge=1, le=60_000)
    test_batch_size: int = Field(1000, ge=1, le=10_000)
    lr: float = Field(0.01, gt=0, le=10)
    momentum: float = Field(0.5, ge=0, lt=1)
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="torch.manual_seed; chosen and stored when omitted")
    dataset: Literal["mnist", "fashion-mnist"] = "mnist"
    # A submission option, not part of what is trained: shown as the job's max_attempts, never in its spec.
    max_attempts: int | None = Field(
        None, ge=1, le=20, exclude=True, description="Attempts before the job fails; server default if null"
    )
    # More submission options, shown beside the spec in the job's JSON, never in it (they change
    # nothing that is trained, so they change neither pack_key nor the spec's hash).
    name: str | None = Field(None, min_length=1, max_length=200, exclude=True, description="A name to find it by")
    labels: Labels | None = Field(None, exclude=True, description="A small string map; filter with ?label=key:value")
    reuse: bool = Field(
        False,
        exclude=True,
        description="Take the result of a finished job with this exact spec (seed included) instead of training",
    )

    @property
    def pack_key(self) -> str:
        """Equal for jobs with the same shapes and schedule, which may train as one stacked model."""
        shape = self.model_dump(mode="json", exclude=set(self.PER_JOB_FIELDS))
        return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()

    @property
    def trained_seed(self) -> int:
        """The seed a trainer uses; the queue stores one before any job is claimed."""
        if self.seed is None:
            raise ValueError("a job spec reaches training only after its seed was chosen")
        return self.seed


class FCSpec(_SpecBase):
    architecture: Literal["fc"]
    n_hidden: int = Field(8, ge=1, le=4096)

    @property
    def param_count(self) -> int:
        h = self.n_hidden
        return (INPUT_SIZE + 1) * h + (h + 1) * h + (h + 1) * N_CLASSES


class CNNSpec(_SpecBase):
    architecture: Literal["cnn"]
    n_features: int = Field(6, ge=1, le=256)

    @property
    def param_count(self) -> int:
        n = self.n_features
        return (25 + 1) * n + (25 * n + 1) * n + (16 * n + 1) * 50 + (50 + 1) * N_CLASSES


AnySpec = FCSpec | CNNSpec
JobSpec = Annotated[FCSpec | CNNSpec, Field(discriminator="architecture")]
job_spec_adapter: TypeAdapter[AnySpec] = TypeAdapter(JobSpec)


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


class EpochRecord(EpochMetrics):
    """What a trainer reports after each epoch (the view shows the fraction, not the count). Never
    NaN/inf: a trainer fails the job instead (engine.Live.fail); this is the last guard."""

    model_config = ConfigDict(allow_inf_nan=False)

    train_loss: float
    test_loss: float
    correct: int


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


class TrainResult(ResultFields):
    """A job's outcome as its trainer reports it (finite numbers only, as EpochRecord)."""

    model_config = ConfigDict(allow_inf_nan=False)

    test_loss: float


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


def request_fingerprint(spec: AnySpec) -> str:
    """sha256 of what the client asked for (defaults filled, seed as given), for idempotency."""
    # The options added later count only when given, so a request sent before they existed keeps its hash.
    later = {"name": spec.name, "labels": spec.labels, "reuse": spec.reuse or None}
    options = {"max_attempts": spec.max_attempts, **{key: value for key, value in later.items() if value is not None}}
    asked: dict[str, Any] = {**spec.model_dump(mode="json"), **options}
    return hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()


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
