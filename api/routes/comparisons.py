"""/v1/comparisons: the experiment as one request — submit a grid, read its statistics, cancel, delete."""

from __future__ import annotations

import uuid
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Query, Response

from api import cursors
from api.cursors import MAX_CURSOR_CHARS
from api.deps import DB, V1_ROUTER_DEPENDENCIES, Admin, AppSettings, Artifacts, ComparisonPageLimit, Reader, Submitter
from service.comparisons import grid
from service.comparisons.schemas import ComparisonCreate, ComparisonPage, ComparisonRead
from service.jobs import lifecycle
from service.jobs.cost import check_budget
from service.jobs.reuse import ReusePolicy
from service.platform.errors import NotFound

router = APIRouter(prefix="/v1/comparisons", tags=["comparisons"], dependencies=V1_ROUTER_DEPENDENCIES)


@router.post("", status_code=201, response_model=ComparisonRead)
def create_comparison(
    request: ComparisonCreate,
    response: Response,
    db: DB,
    settings: AppSettings,
    store: Artifacts,
    caller: Submitter,
) -> ComparisonRead:
    """One job per cell and seed, in one transaction; `{"seeds": 5}` alone is the tutorial's
    experiment (FC and CNN, natural and permuted pixels, 5 seeds, 1 epoch)."""
    with db.write() as session:
        lifecycle.ensure_queue_room(session, caller, settings.max_queued_per_token, adding=request.job_count)
        comparison = grid.create(
            session,
            request,
            default_max_attempts=settings.max_attempts,
            submitted_by=caller.id,
            reuse=ReusePolicy.from_settings(settings, store),
            admit=partial(
                check_budget, max_flops=settings.max_job_flops, max_memory_bytes=settings.max_job_memory_bytes
            ),
        )
        view = grid.view(comparison, grid.member_jobs(session, comparison.id), caller)
    response.headers["Location"] = f"/v1/comparisons/{view.id}"
    return view


@router.get("", response_model=ComparisonPage)
def list_comparisons(
    db: DB,
    caller: Reader,
    limit: ComparisonPageLimit,
    cursor: Annotated[str | None, Query(max_length=MAX_CURSOR_CHARS)] = None,
) -> ComparisonPage:
    """Newest first."""
    after = cursors.decode(cursor) if cursor else None
    with db.read() as session:
        page = grid.list_comparisons(
            session, limit=limit + 1, after=None if after is None else (after.created_at, after.id)
        )
        items = [grid.view(c, grid.member_jobs(session, c.id), caller) for c in page[:limit]]
    next_cursor = cursors.encode(items[-1].created_at, items[-1].id) if len(page) > limit else None
    return ComparisonPage(items=items, next_cursor=next_cursor)


@router.get("/{comparison_id}", response_model=ComparisonRead)
def get_comparison(comparison_id: uuid.UUID, db: DB, caller: Reader) -> ComparisonRead:
    with db.read() as session:
        comparison = grid.get(session, str(comparison_id))
        return grid.view(comparison, grid.member_jobs(session, comparison.id), caller)


@router.post("/{comparison_id}/cancel", response_model=ComparisonRead)
def cancel_comparison(comparison_id: uuid.UUID, db: DB, caller: Submitter) -> ComparisonRead:
    """Cancels every job that has not ended; running ones stop at their next step."""
    with db.write() as session:
        caller.require_owner(grid.get(session, str(comparison_id)).submitted_by)
        comparison = grid.cancel(session, str(comparison_id))
        return grid.view(comparison, grid.member_jobs(session, comparison.id), caller)


@router.delete("/{comparison_id}", status_code=204)
def delete_comparison(comparison_id: uuid.UUID, db: DB, store: Artifacts, _caller: Admin) -> Response:
    """Deletes the comparison and all its jobs with their files (409 while any job has not ended).
    One transaction per job, files first: a failure leaves the rest, each with its files."""
    with db.read() as session:
        job_ids = grid.jobs_to_delete(session, str(comparison_id))
    for job_id in job_ids:
        try:
            with db.write() as session:
                lifecycle.delete(session, job_id, store)
        except NotFound:
            pass  # deleted meanwhile, by itself or by another request for this comparison
    with db.write() as session:
        grid.remove(session, str(comparison_id))
    return Response(status_code=204)
