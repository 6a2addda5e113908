"""/v1/jobs: submit, read, list, cancel and delete (downloads: api/routes/downloads.py)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Response

from api import cursors
from api.cursors import MAX_CURSOR_CHARS
from api.deps import DB, V1_ROUTER_DEPENDENCIES, Admin, AppSettings, Artifacts, JobPageLimit, Reader, Submitter
from api.strict_query import INT64_MAX
from service.jobs import lifecycle, search
from service.jobs.cost import check_budget
from service.jobs.reuse import ReusePolicy
from service.jobs.schemas import (
    LABEL_KEY_PATTERN,
    MAX_LABELS,
    SEED_MAX,
    JobPage,
    JobRead,
    JobSpec,
    StepPage,
)
from service.jobs.search import NATURAL, JobFilter, Sort
from service.platform.errors import InvalidInput
from service.platform.states import JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=V1_ROUTER_DEPENDENCIES)
MAX_STEPS_PAGE = 10_000


@router.post(
    "",
    status_code=201,
    response_model=JobRead,
    responses={200: {"description": "An earlier job with the same Idempotency-Key and body", "model": JobRead}},
)
def submit_job(
    spec: JobSpec,
    response: Response,
    db: DB,
    settings: AppSettings,
    store: Artifacts,
    caller: Submitter,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> JobRead:
    check_budget(spec, settings.max_job_flops, settings.max_job_memory_bytes)
    with db.write() as session:
        lifecycle.ensure_queue_room(session, caller, settings.max_queued_per_token)
        job, created = lifecycle.enqueue(
            session,
            spec,
            default_max_attempts=settings.max_attempts,
            idempotency_key=idempotency_key,
            submitted_by=caller.id,
            reuse=ReusePolicy.from_settings(settings, store),
        )
        view = lifecycle.view(job, caller)
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/jobs/{view.id}"
    return view


def parse_labels(labels: list[str]) -> dict[str, str]:
    """?label=key:value (repeatable; all must match) as a map."""
    parsed: dict[str, str] = {}
    for text in labels:
        key, colon, value = text.partition(":")
        if not colon or not re.fullmatch(LABEL_KEY_PATTERN, key) or not value:
            raise InvalidInput(f"label must be key:value with a label key, not {text[:80]!r}", field="query.label")
        parsed[key] = value
    return parsed


def parse_permutation_seed(text: str | None) -> int | Literal["none"] | None:
    if text is None:
        return None
    if text == NATURAL:
        return NATURAL
    # ASCII digits only: str.isdigit and int() also take other scripts' digits and superscripts ("²").
    if not (text.isascii() and text.isdigit()) or int(text) > SEED_MAX:
        raise InvalidInput(
            f"permutation_seed must be an integer 0..{SEED_MAX} or 'none', not {text[:80]!r}",
            field="query.permutation_seed",
        )
    return int(text)


def aware(value: datetime | None, field: str) -> datetime | None:
    """The instant in UTC; one whose offset carries it past year 1 or 9999 in UTC is refused here,
    before the database layer's conversion would overflow."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise InvalidInput(f"{field} needs a time zone, e.g. 2026-01-31T12:00:00Z", field=f"query.{field}")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InvalidInput(
            f"{field} must lie between 0001-01-01 and 9999-12-31 in UTC, not {value.isoformat()}",
            field=f"query.{field}",
        ) from None


@router.get("", response_model=JobPage)
def list_jobs(
    db: DB,
    caller: Reader,
    limit: JobPageLimit,
    status: JobStatus | None = None,
    architecture: Literal["fc", "cnn"] | None = None,
    dataset: Literal["mnist", "fashion-mnist"] | None = None,
    name: Annotated[str | None, Query(max_length=200)] = None,
    label: Annotated[list[str], Query(max_length=MAX_LABELS, description="key:value; repeat to require several")] = [],  # noqa: B006
    comparison: uuid.UUID | None = None,
    permutation_seed: Annotated[
        str | None, Query(max_length=20, description="an integer, or none: natural pixels")
    ] = None,
    seed: Annotated[int | None, Query(ge=0, le=SEED_MAX)] = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    id_prefix: Annotated[
        str | None,
        Query(
            min_length=4,
            max_length=36,
            pattern="^[0-9a-fA-F-]+$",
            description="the jobs whose id starts with this (4 or more characters, as `jobs list` shows them)",
        ),
    ] = None,
    sort: Annotated[
        Sort, Query(description="created_at: newest first; test_accuracy: best first (finished jobs)")
    ] = "created_at",
    cursor: Annotated[str | None, Query(max_length=MAX_CURSOR_CHARS)] = None,
) -> JobPage:
    where = JobFilter(
        status=status,
        architecture=architecture,
        dataset=dataset,
        name=name,
        labels=parse_labels(label),
        comparison_id=None if comparison is None else str(comparison),
        permutation_seed=parse_permutation_seed(permutation_seed),
        seed=seed,
        created_after=aware(created_after, "created_after"),
        created_before=aware(created_before, "created_before"),
        id_prefix=None if id_prefix is None else id_prefix.lower(),
    )
    by_accuracy = sort == "test_accuracy"
    after = cursors.decode(cursor, with_accuracy=by_accuracy) if cursor else None
    with db.read() as session:
        page = search.list_jobs(session, where, sort=sort, limit=limit + 1, after=after)
        items = [lifecycle.view(job, caller) for job in page[:limit]]
    next_cursor = None
    if len(page) > limit:
        last = page[limit - 1]
        next_cursor = cursors.encode(last.created_at, last.id, last.test_accuracy if by_accuracy else None)
    return JobPage(items=items, next_cursor=next_cursor)


@router.get("/{job_id}/metrics", response_model=StepPage)
def list_job_metrics(
    job_id: uuid.UUID,
    db: DB,
    from_step: Annotated[int, Query(ge=0, le=INT64_MAX, description="the first step to return")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_STEPS_PAGE)] = 1000,
) -> StepPage:
    """The training loss every MNIST_JOBS_STEP_METRICS_EVERY steps, oldest first."""
    with db.read() as session:
        rows = lifecycle.steps(session, str(job_id), from_step=from_step, limit=limit + 1)
    return StepPage(items=rows[:limit], next_from_step=rows[limit].step if len(rows) > limit else None)


@router.get("/{job_id}", response_model=JobRead)
def get_job(job_id: uuid.UUID, db: DB, caller: Reader) -> JobRead:
    with db.read() as session:
        return lifecycle.view(lifecycle.get(session, str(job_id)), caller)


@router.post(
    "/{job_id}/cancel",
    response_model=JobRead,
    responses={202: {"description": "Running: the worker stops at its next step", "model": JobRead}},
)
def cancel_job(job_id: uuid.UUID, response: Response, db: DB, caller: Submitter) -> JobRead:
    with db.write() as session:
        # One read of the job for the owner check and the cancel: the write lock, which a pack's
        # cancels take one after another, is held no longer than it must be.
        view = lifecycle.view(lifecycle.cancel(session, str(job_id), caller), caller)
    response.status_code = 202 if view.status is JobStatus.running else 200
    return view


@router.delete("/{job_id}", status_code=204)
def delete_job(job_id: uuid.UUID, db: DB, store: Artifacts, _caller: Admin) -> Response:
    with db.write() as session:  # files first: if they stay, so does the row (a 500 naming the cause)
        lifecycle.delete(session, str(job_id), store)
    return Response(status_code=204)
