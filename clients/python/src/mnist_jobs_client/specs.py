"""The job spec: what a client sends to POST /v1/jobs (one model per architecture, strict, with
the server's own limits), so a bad spec fails on the client before it is sent.

The server validates with these same models; `pack_key` and `trained_seed` are the server's, kept
here so each spec has one definition.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter


def canonical_sha256(value: object) -> str:
    """sha256 of a JSON value written with sorted keys: the one way a spec (or a part of it) is
    hashed, by the pack key, the idempotency fingerprint and the result-reuse hash. Stored hashes
    depend on this exact form (json.dumps' default separators)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


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
        return canonical_sha256(self.model_dump(mode="json", exclude=set(self.PER_JOB_FIELDS)))

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
