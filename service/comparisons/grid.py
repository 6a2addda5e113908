"""Comparisons: the experiment as one request. `create` expands the grid into one job per cell and
seed in one transaction; the comparison's status, progress and statistics are always read from its
jobs (service.comparisons.stats), never stored, so they cannot disagree with them.

Queue order: the jobs are given created_at times a microsecond apart, the most expensive first
(CNN before FC), so workers start the longest jobs first and the FC jobs, queued together at the
end, pack into one stacked model (natural and permuted FC jobs of one shape share a pack_key).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from pydantic import ValidationError
from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session, selectinload

from service.comparisons.schemas import (
    MAX_COMPARISON_JOBS,
    ComparisonCreate,
    ComparisonProgress,
    ComparisonRead,
    EffectRead,
    GridFields,
)
from service.comparisons.stats import Effect, paired, summarize, welch
from service.jobs import lifecycle
from service.jobs.cost import estimate
from service.jobs.reuse import ReusePolicy
from service.jobs.schemas import AnySpec, CellRead, Progress, job_spec_adapter
from service.platform.auth import Caller, shown_submitter
from service.platform.db import db_now
from service.platform.errors import Conflict, InvalidInput, NotFound
from service.platform.models import Comparison, ComparisonCell, Job
from service.platform.states import JobStatus


def cell_spec(request: ComparisonCreate, architecture: str, permutation_seed: int | None) -> AnySpec:
    """One cell's job spec (no seed yet): the grid's fields that apply to this architecture."""
    fields = request.spec.model_dump(exclude_none=True)
    fields.pop("n_features" if architecture == "fc" else "n_hidden", None)
    try:
        return job_spec_adapter.validate_python(
            {"architecture": architecture, "permutation_seed": permutation_seed, **fields}
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"][1:]) or "spec"
        raise InvalidInput(f"{where}: {error['msg']}", field=f"spec.{where}") from None


def create(
    session: Session,
    request: ComparisonCreate,
    *,
    default_max_attempts: int,
    submitted_by: str | None,
    reuse: ReusePolicy | None,
    admit: Callable[[AnySpec], None],
) -> Comparison:
    """Store the comparison, its cells and all its jobs; `admit` checks each cell's spec (budget)."""
    if request.job_count > MAX_COMPARISON_JOBS:
        raise InvalidInput(
            f"the grid has {request.job_count} jobs (cells x seeds); one comparison may have {MAX_COMPARISON_JOBS}",
            field="seeds",
        )
    now = db_now(session)  # its jobs' run_after: on the clock the claims read, as a lone submit's
    comparison = Comparison(
        id=str(uuid.uuid4()),
        name=request.name,
        created_at=now,
        submitted_by=submitted_by,
        spec=request.spec.model_dump(mode="json", exclude_none=True),
        seeds=request.seed_list,
        shared_permutation_seed=None if request.permutation_seeds is not None else request.grid_permutations[-1],
        reuse=request.reuse,
        cells=[],
    )
    grid = [(a, p) for a in request.architectures for p in request.grid_permutations]
    specs = [cell_spec(request, architecture, permutation_seed) for architecture, permutation_seed in grid]
    for position, spec in enumerate(specs):
        admit(spec)
        comparison.cells.append(
            ComparisonCell(
                position=position,
                architecture=spec.architecture,
                permutation_seed=spec.permutation_seed,
                param_count=spec.param_count,
                spec=spec.model_dump(mode="json", exclude={"seed"}),
            )
        )
    session.add(comparison)
    session.flush()
    runs = [(position, seed) for position in range(len(specs)) for seed in request.seed_list]
    runs.sort(key=lambda run: -estimate(specs[run[0]]).flops)  # stable: cell, then seed order on ties
    options = {"name": request.name, "labels": request.labels, "reuse": request.reuse}
    max_attempts = request.spec.max_attempts
    for order, (position, seed) in enumerate(runs):
        spec = specs[position].model_copy(update={"seed": seed, "max_attempts": max_attempts, **options})
        cell = lifecycle.CellLink(comparison.id, position, now + timedelta(microseconds=order))
        lifecycle.enqueue(
            session, spec, default_max_attempts=default_max_attempts, submitted_by=submitted_by, reuse=reuse, cell=cell
        )
    return comparison


def get(session: Session, comparison_id: str) -> Comparison:
    query = select(Comparison).where(Comparison.id == comparison_id).options(selectinload(Comparison.cells))
    comparison = session.scalars(query).one_or_none()
    if comparison is None:
        raise NotFound(f"no comparison with id {comparison_id}", field="id")
    return comparison


def member_jobs(session: Session, comparison_id: str) -> list[Job]:
    """The comparison's jobs, by cell, then in the order of the comparison's seeds (created_at is
    the queue order, not the seed order: sorted by the caller where it matters)."""
    query = select(Job).where(Job.comparison_id == comparison_id).order_by(Job.cell_position, Job.created_at)
    return list(session.scalars(query))


def list_comparisons(session: Session, *, limit: int, after: tuple[datetime, str] | None) -> list[Comparison]:
    query = (
        select(Comparison)
        .order_by(Comparison.created_at.desc(), Comparison.id.desc())
        .limit(limit)
        .options(selectinload(Comparison.cells))
    )
    if after is not None:
        query = query.where(tuple_(Comparison.created_at, Comparison.id) < after)  # a seek (service.jobs.search)
    return list(session.scalars(query))


def cancel(session: Session, comparison_id: str) -> Comparison:
    """Cancel every job of the comparison that has not ended (the ended ones keep their results)."""
    comparison = get(session, comparison_id)
    for job in member_jobs(session, comparison_id):
        if not job.status.is_final:
            lifecycle.cancel(session, job.id)
    return comparison


def jobs_to_delete(session: Session, comparison_id: str) -> list[str]:
    """The ids of the comparison's jobs, to delete one transaction each (files first, as
    lifecycle.delete does, so a failure leaves every remaining row with its files); Conflict while any
    job is queued or running."""
    get(session, comparison_id)
    members = member_jobs(session, comparison_id)
    active = [job.id for job in members if not job.status.is_final]
    if active:
        raise Conflict(
            f"comparison {comparison_id} has {len(active)} job(s) queued or running; cancel it first", field="status"
        )
    return [job.id for job in members]


def remove(session: Session, comparison_id: str) -> None:
    """Delete the comparison and its cells, once jobs_to_delete's jobs are gone."""
    comparison = get(session, comparison_id)
    if member_jobs(session, comparison_id):
        raise Conflict(f"comparison {comparison_id} still has jobs; delete them first", field="status")
    session.delete(comparison)
    session.flush()


def view(comparison: Comparison, members: list[Job], viewer: Caller | None = None) -> ComparisonRead:
    """The comparison as `viewer` may see it: `submitted_by` as in lifecycle.view."""
    seed_order = {seed: index for index, seed in enumerate(comparison.seeds)}
    by_cell: dict[int, list[Job]] = {cell.position: [] for cell in comparison.cells}
    for job in sorted(members, key=lambda job: seed_order.get(job.seed or 0, len(seed_order))):
        if job.cell_position in by_cell:
            by_cell[job.cell_position].append(job)
    cells = [_cell(cell, by_cell[cell.position]) for cell in comparison.cells]
    counts = {status: sum(job.status is status for job in members) for status in JobStatus}
    ended = sum(job.status.is_final for job in members)
    under_way = sum(
        Progress.model_validate(job.progress).fraction
        for job in members
        if job.progress is not None and not job.status.is_final
    )
    failed = [f"cell {cell.position} ({_label(cell)}): {cell.failed[0]}" for cell in cells if cell.failed]
    return ComparisonRead(
        id=comparison.id,
        name=comparison.name,
        created_at=comparison.created_at,
        status=_status(counts, len(members)),
        progress=ComparisonProgress(
            total=len(members),
            queued=counts[JobStatus.queued],
            running=counts[JobStatus.running],
            succeeded=counts[JobStatus.succeeded],
            failed=counts[JobStatus.failed],
            cancelled=counts[JobStatus.cancelled],
            fraction=(ended + under_way) / max(1, len(members)),
        ),
        seeds=comparison.seeds,
        shared_permutation_seed=comparison.shared_permutation_seed,
        spec=GridFields.model_validate(comparison.spec),
        reuse=comparison.reuse,
        job_ids=[job.id for cell in cells for job in by_cell[cell.position]],
        cells=cells,
        effects=effects(cells),
        error="; ".join(failed) or None,
        submitted_by=shown_submitter(viewer, comparison.submitted_by),
    )


def _status(counts: dict[JobStatus, int], total: int) -> JobStatus:
    if counts[JobStatus.failed]:
        return JobStatus.failed
    if counts[JobStatus.succeeded] == total:
        return JobStatus.succeeded
    if counts[JobStatus.queued] + counts[JobStatus.running] == 0:
        return JobStatus.cancelled
    if counts[JobStatus.queued] == total:
        return JobStatus.queued
    return JobStatus.running


def _label(cell: CellRead) -> str:
    pixels = "natural" if cell.permutation_seed is None else f"permuted {cell.permutation_seed}"
    return f"{cell.architecture}, {pixels}"


def _cell(cell: ComparisonCell, members: list[Job]) -> CellRead:
    won = [job for job in members if job.status == JobStatus.succeeded and job.test_accuracy is not None]
    values = [job.test_accuracy for job in won if job.test_accuracy is not None]
    summary = summarize(values)
    return CellRead(
        position=cell.position,
        architecture="fc" if cell.architecture == "fc" else "cnn",
        permutation_seed=cell.permutation_seed,
        param_count=cell.param_count,
        n=summary.n,
        mean=summary.mean,
        std=summary.std,
        ci95=summary.ci95,
        values=values,
        seeds=[job.seed or 0 for job in won],
        job_ids=[job.id for job in members],
        failed=[f"{job.id}: {job.error or 'failed'}" for job in members if job.status == JobStatus.failed],
    )


def _effect(name: str, description: str, effect: Effect) -> EffectRead:
    excludes_zero = None if effect.ci95 is None else (effect.ci95[0] > 0 or effect.ci95[1] < 0)
    return EffectRead(
        name=name,
        description=description,
        estimate=effect.estimate,
        ci95=effect.ci95,
        p_value=effect.p_value,
        excludes_zero=excludes_zero,
        test=effect.test,
        n=effect.n,
    )


def effects(cells: list[CellRead]) -> list[EffectRead]:
    """CNN minus FC on each kind of pixels, and each architecture's drop under each permutation."""
    found = {(cell.architecture, cell.permutation_seed): cell for cell in cells}
    shuffles = sorted({cell.permutation_seed for cell in cells if cell.permutation_seed is not None})
    out: list[EffectRead] = []
    for permutation_seed in [None, *shuffles]:
        fc, cnn = found.get(("fc", permutation_seed)), found.get(("cnn", permutation_seed))
        if fc and cnn:
            pixels = "natural" if permutation_seed is None else f"permuted_{permutation_seed}"
            text = "natural pixels" if permutation_seed is None else f"pixels permuted by seed {permutation_seed}"
            out.append(
                _effect(f"cnn_minus_fc_{pixels}", f"CNN minus FC test accuracy on {text}", welch(cnn.values, fc.values))
            )
    for architecture in ("fc", "cnn"):
        natural = found.get((architecture, None))
        for permutation_seed in shuffles:
            permuted = found.get((architecture, permutation_seed))
            if natural and permuted:
                both = sorted(set(natural.seeds) & set(permuted.seeds))
                a = [natural.values[natural.seeds.index(seed)] for seed in both]
                b = [permuted.values[permuted.seeds.index(seed)] for seed in both]
                out.append(
                    _effect(
                        f"{architecture}_drop_permuted_{permutation_seed}",
                        f"{architecture.upper()} test accuracy on natural minus permuted (seed {permutation_seed}) "
                        "pixels, paired by seed",
                        paired(a, b),
                    )
                )
    return out
