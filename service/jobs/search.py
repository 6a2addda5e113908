"""Finding jobs: the filters of GET /v1/jobs, two sort orders, and keyset pages (a cursor is the
sort key of the last job shown, so a page never repeats or skips a job while others are added)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sqlalchemy import Select, exists, select, tuple_
from sqlalchemy.orm import Session

from service.jobs.lifecycle import PAGE_WITH_CHILDREN
from service.platform.models import Job, JobLabel
from service.platform.states import JobStatus

Sort = Literal["created_at", "test_accuracy"]
NATURAL: Literal["none"] = "none"  # ?permutation_seed=none: the jobs on natural (unshuffled) pixels


@dataclass(frozen=True)
class JobFilter:
    status: JobStatus | None = None
    architecture: str | None = None
    dataset: str | None = None
    name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)  # every one must match
    comparison_id: str | None = None
    permutation_seed: int | Literal["none"] | None = None
    seed: int | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    id_prefix: str | None = None  # lowercase hex (and hyphens): checked by the route, so no LIKE wildcard


@dataclass(frozen=True)
class After:
    """The sort key of the last job of the previous page."""

    created_at: datetime
    id: str
    test_accuracy: float | None = None  # with sort=test_accuracy


def _filtered(query: Select[tuple[Job]], where: JobFilter) -> Select[tuple[Job]]:
    columns = {
        Job.status: where.status,
        Job.architecture: where.architecture,
        Job.dataset: where.dataset,
        Job.name: where.name,
        Job.comparison_id: where.comparison_id,
        Job.seed: where.seed,
    }
    for column, value in columns.items():
        if value is not None:
            query = query.where(column == value)
    if where.permutation_seed == NATURAL:
        query = query.where(Job.permutation_seed.is_(None))
    elif where.permutation_seed is not None:
        query = query.where(Job.permutation_seed == where.permutation_seed)
    if where.id_prefix is not None:
        query = query.where(Job.id.startswith(where.id_prefix, autoescape=True))
    if where.created_after is not None:
        query = query.where(Job.created_at > where.created_after)
    if where.created_before is not None:
        query = query.where(Job.created_at < where.created_before)
    for key, value in where.labels.items():
        query = query.where(exists().where(JobLabel.job_id == Job.id, JobLabel.key == key, JobLabel.value == value))
    return query


def list_jobs(
    session: Session, where: JobFilter, *, sort: Sort = "created_at", limit: int = 50, after: After | None = None
) -> list[Job]:
    """Newest first; or with sort="test_accuracy" the most accurate first, among the jobs that have
    a test accuracy (finished ones), newest first on ties."""
    query = _filtered(select(Job), where).limit(limit).options(*PAGE_WITH_CHILDREN)
    # The keyset as one row-value comparison: both databases seek the sort's index to it, where
    # the equivalent `a < x OR (a = x AND b < y)` walks the index from its end.
    if sort == "created_at":
        query = query.order_by(Job.created_at.desc(), Job.id.desc())
        if after is not None:
            query = query.where(tuple_(Job.created_at, Job.id) < (after.created_at, after.id))
        return list(session.scalars(query))
    query = query.where(Job.test_accuracy.is_not(None))
    query = query.order_by(Job.test_accuracy.desc(), Job.created_at.desc(), Job.id.desc())
    if after is not None:
        if after.test_accuracy is None:
            raise ValueError("a test_accuracy page needs the last job's accuracy")
        key = tuple_(Job.test_accuracy, Job.created_at, Job.id)
        query = query.where(key < (after.test_accuracy, after.created_at, after.id))
    return list(session.scalars(query))
