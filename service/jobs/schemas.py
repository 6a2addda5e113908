"""The HTTP/JSON contract: job specs in, job views out, and the typed values that cross the
boundaries between api, queue, runner and trainers. No torch here: parameter counts are arithmetic.

The wire models are the client distribution's (mnist_jobs_client), one definition each, imported
here so the server's modules keep one place to import them from; what only the server uses (what a
trainer reports, the idempotency fingerprint) is defined below.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict

from mnist_jobs_client.schemas import (
    LEGACY_NULL,
    AttemptRead,
    CellRead,
    CheckpointRead,
    DatasetRead,
    EpochMetrics,
    JobCost,
    JobPage,
    JobRead,
    JobResult,
    Progress,
    ResultFields,
    StepMetrics,
    StepPage,
    WorkerRead,
)
from mnist_jobs_client.specs import (
    DATASETS,
    INPUT_SIZE,
    LABEL_KEY_PATTERN,
    MAX_LABELS,
    N_CLASSES,
    SEED_MAX,
    AnySpec,
    CNNSpec,
    FCSpec,
    JobSpec,
    Labels,
    canonical_sha256,
    job_spec_adapter,
)

__all__ = [
    "DATASETS",
    "INPUT_SIZE",
    "LABEL_KEY_PATTERN",
    "LEGACY_NULL",
    "MAX_LABELS",
    "N_CLASSES",
    "SEED_MAX",
    "AnySpec",
    "AttemptRead",
    "CNNSpec",
    "CellRead",
    "CheckpointRead",
    "DatasetRead",
    "EpochMetrics",
    "EpochRecord",
    "FCSpec",
    "JobCost",
    "JobPage",
    "JobRead",
    "JobResult",
    "JobSpec",
    "Labels",
    "Progress",
    "ResultFields",
    "StepMetrics",
    "StepPage",
    "TrainResult",
    "WorkerRead",
    "job_spec_adapter",
    "request_fingerprint",
]


class EpochRecord(EpochMetrics):
    """What a trainer reports after each epoch (the view shows the fraction, not the count). Never
    NaN/inf: a trainer fails the job instead (control.Live.request_stop); this is the last guard."""

    model_config = ConfigDict(allow_inf_nan=False)

    train_loss: float
    test_loss: float
    correct: int


class TrainResult(ResultFields):
    """A job's outcome as its trainer reports it (finite numbers only, as EpochRecord)."""

    model_config = ConfigDict(allow_inf_nan=False)

    test_loss: float


def request_fingerprint(spec: AnySpec) -> str:
    """sha256 of what the client asked for (defaults filled, seed as given), for idempotency."""
    # The options added later count only when given, so a request sent before they existed keeps its hash.
    later = {"name": spec.name, "labels": spec.labels, "reuse": spec.reuse or None}
    options = {"max_attempts": spec.max_attempts, **{key: value for key, value in later.items() if value is not None}}
    asked: dict[str, Any] = {**spec.model_dump(mode="json"), **options}
    return canonical_sha256(asked)
