"""The HTTP/JSON contract of comparisons: the experiment as one request (a grid of architectures x
permutations, each trained with every seed) and its answer (cells with statistics, and effects)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mnist_jobs_client.schemas import CellRead
from mnist_jobs_client.specs import SEED_MAX, Labels
from mnist_jobs_client.states import JobStatus

DEFAULT_PERMUTATION_SEED = 42  # the S of the default grid [null, S]: fixed, so a re-run can reuse results
MAX_COMPARISON_JOBS = 200
Architecture = Literal["fc", "cnn"]
ARCHITECTURES: tuple[Architecture, ...] = ("fc", "cnn")
DEFAULT_SEEDS = 5


class GridFields(BaseModel):
    """Job fields applied to every cell; null = the job's default. Checked as each cell's job spec
    is built, so the limits are the job spec's (a 422 names e.g. `spec.epochs`). `n_hidden` applies
    to the FC cells only, `n_features` to the CNN cells only."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    epochs: int | None = None
    batch_size: int | None = None
    test_batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None
    dataset: Literal["mnist", "fashion-mnist"] | None = None
    n_hidden: int | None = None
    n_features: int | None = None
    max_attempts: int | None = None


class ComparisonCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    architectures: list[Architecture] = Field(
        default_factory=lambda: list(ARCHITECTURES), min_length=1, max_length=2, description="each at its default size"
    )
    permutation_seeds: list[int | None] | None = Field(
        None,
        min_length=1,
        max_length=4,
        description=f"null = natural pixels; default [null, {DEFAULT_PERMUTATION_SEED}], one shuffle shared by every "
        "permuted job, so both nets see the same one",
    )
    seeds: int | list[int] = Field(
        DEFAULT_SEEDS, description="how many seeds (1..n), or the seeds themselves; every cell trains with each"
    )
    spec: GridFields = Field(default_factory=GridFields, description="other job fields, for every cell")
    name: str | None = Field(None, min_length=1, max_length=200)
    labels: Labels | None = Field(None, description="put on every job of the comparison")
    reuse: bool = Field(True, description="take finished jobs' results for equal specs instead of training again")

    @field_validator("architectures")
    @classmethod
    def _each_architecture_once(cls, value: list[Architecture]) -> list[Architecture]:
        if len(set(value)) != len(value):
            raise ValueError("each architecture may be listed once")
        return value

    @field_validator("permutation_seeds")
    @classmethod
    def _each_shuffle_once(cls, value: list[int | None] | None) -> list[int | None] | None:
        if value is not None:
            if len(set(value)) != len(value):
                raise ValueError("each permutation seed may be listed once")
            if any(s is not None and not 0 <= s <= SEED_MAX for s in value):
                raise ValueError(f"each permutation seed must be null or between 0 and {SEED_MAX}")
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: int | list[int]) -> int | list[int]:
        if isinstance(value, int):
            if not 1 <= value <= MAX_COMPARISON_JOBS:
                raise ValueError(f"a count of seeds must be between 1 and {MAX_COMPARISON_JOBS}")
        elif not value or len(set(value)) != len(value):
            raise ValueError("a list of seeds must hold at least one seed, each once")
        elif any(not 0 <= s <= SEED_MAX for s in value):
            raise ValueError(f"each seed must be between 0 and {SEED_MAX}")
        return value

    @property
    def job_count(self) -> int:
        return len(self.architectures) * len(self.grid_permutations) * len(self.seed_list)

    @property
    def seed_list(self) -> list[int]:
        return list(range(1, self.seeds + 1)) if isinstance(self.seeds, int) else self.seeds

    @property
    def grid_permutations(self) -> list[int | None]:
        return self.permutation_seeds if self.permutation_seeds is not None else [None, DEFAULT_PERMUTATION_SEED]


class EffectRead(BaseModel):
    name: str = Field(description="e.g. cnn_minus_fc_natural, fc_drop_permuted_42")
    description: str
    estimate: float | None = Field(description="difference of mean test accuracies (fraction)")
    ci95: tuple[float, float] | None
    p_value: float | None = Field(description="two-sided; null when it cannot be computed (fewer than 2 values)")
    excludes_zero: bool | None = Field(description="whether the 95 % interval excludes 0")
    test: Literal["welch", "paired"] = Field(
        description="welch: Welch's t on independent runs; paired: paired t over seeds (the same seed gives the "
        "same initial weights and sample order on natural and permuted pixels)"
    )
    n: int = Field(description="runs (welch) or seed pairs (paired) the effect is computed from")


class ComparisonProgress(BaseModel):
    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    fraction: float = Field(description="0..1: ended jobs count whole, running ones by their own progress")


class ComparisonRead(BaseModel):
    id: str
    name: str | None
    created_at: datetime
    status: JobStatus = Field(description="failed as soon as one job failed (the other cells go on)")
    progress: ComparisonProgress
    seeds: list[int]
    shared_permutation_seed: int | None = Field(description="the S the default grid chose; null if given a grid")
    spec: GridFields
    reuse: bool
    job_ids: list[str]
    cells: list[CellRead]
    effects: list[EffectRead]
    error: str | None = Field(description="which cell failed and why, when one did")
    submitted_by: str | None


class ComparisonPage(BaseModel):
    items: list[ComparisonRead]
    next_cursor: str | None
