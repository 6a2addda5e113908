"""The pictures people look at, as PNG: sample digits (and their permuted versions), a job's curves
and confusion matrix, a comparison's summary. Drawn on request in the app's render processes
(service.pictures.pool: bounded, one render per picture however many ask, a per-caller rate of new ones;
matplotlib's Agg backend, no torch) and cached on disk by content, so a repeat costs a read. The
routes are async: a render in progress holds no request thread. A permutation is drawn by the
inference helper process (service.inference.client), torch's own randperm, through its bounded queue."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic_core import to_jsonable_python
from sqlalchemy.orm import Session

from api.deps import DB, V1_ROUTER_DEPENDENCIES, AppSettings, Reader, helper_call, read_in_thread
from service.comparisons import grid
from service.comparisons.schemas import ComparisonRead
from service.datasets.samples import test_pins
from service.jobs import lifecycle
from service.jobs.schemas import DATASETS, SEED_MAX, EpochMetrics, JobRead, StepMetrics
from service.pictures import render
from service.pictures.pool import RenderPool, RenderTask
from service.platform.errors import Conflict

router = APIRouter(tags=["pictures"], dependencies=V1_ROUTER_DEPENDENCIES)
PNG_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "A PNG picture"},
    304: {"description": "ETag matched"},
}
MAX_SAMPLES = 100
MAX_CURVE_STEPS = 100_000  # rows of per-step losses drawn (a 100-epoch batch-1 job has more: the first ones)


Prepare = Callable[[], Awaitable[RenderTask]]


def ready(task: RenderTask) -> Prepare:
    async def prepared() -> RenderTask:
        return task

    return prepared


async def png(request: Request, caller: Reader, key: Mapping[str, object], prepare: Prepare) -> Response:
    """The picture for `key` (everything it draws), from the cache or rendered now; 304 for a
    matching If-None-Match (the ETag is the key's hash, known before any rendering)."""
    text = json.dumps(to_jsonable_python(key), sort_keys=True)
    etag = f'"{hashlib.sha256(text.encode()).hexdigest()[:32]}"'
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    renders: RenderPool = request.app.state.renders
    who = caller.id or (request.client.host if request.client else "unknown")
    data = await renders.picture(text, who, prepare)
    return Response(data, media_type="image/png", headers=headers)


@router.get("/v1/datasets/{name}/samples.png", response_class=Response, responses=PNG_RESPONSE)
async def draw_samples(
    request: Request,
    settings: AppSettings,
    caller: Reader,
    name: Annotated[str, Path(pattern="^(" + "|".join(DATASETS) + ")$")],
    count: Annotated[int, Query(ge=1, le=MAX_SAMPLES)] = 20,
    permutation_seed: Annotated[int | None, Query(ge=0, le=SEED_MAX)] = None,
) -> Response:
    """The tutorial's figures: the first `count` test digits; with `permutation_seed`, each beside
    its permuted version (the permutation every job with that seed trains on)."""

    async def prepare() -> RenderTask:  # only on a cache miss: the inference helper is not asked on a hit
        order = None
        if permutation_seed is not None:
            order = await helper_call(request, request.app.state.inference.permutation, permutation_seed)
        return RenderTask(render.dataset_samples_png, (settings, name, count, order, permutation_seed))

    pins = await anyio.to_thread.run_sync(test_pins, settings, name)  # the content drawn, without reading it
    key = {"picture": "samples", "dataset": name, "pins": pins, "count": count, "permutation_seed": permutation_seed}
    return await png(request, caller, key, prepare)


def curves_data(session: Session, job_id: str) -> tuple[JobRead, list[StepMetrics]]:
    job = lifecycle.view(lifecycle.get(session, job_id))
    return job, lifecycle.steps(session, job_id, from_step=0, limit=MAX_CURVE_STEPS)


@router.get("/v1/jobs/{job_id}/curves.png", response_class=Response, responses=PNG_RESPONSE)
async def draw_curves(request: Request, db: DB, caller: Reader, job_id: uuid.UUID) -> Response:
    """Training loss over the samples seen (every MNIST_JOBS_STEP_METRICS_EVERY steps) and test
    accuracy after each epoch; drawn as far as the job has got."""
    job, steps = await read_in_thread(db, curves_data, str(job_id))
    epochs: list[EpochMetrics] = job.metrics
    title = f"{job.architecture.upper()} job {job.id[:8]} ({_pixels(job.spec.permutation_seed)}, seed {job.spec.seed})"
    key = {"picture": "curves", "title": title, "steps": steps, "epochs": epochs}
    return await png(request, caller, key, ready(RenderTask(render.curves_png, (steps, epochs, title))))


def job_view(session: Session, job_id: str) -> JobRead:
    return lifecycle.view(lifecycle.get(session, job_id))


@router.get("/v1/jobs/{job_id}/confusion.png", response_class=Response, responses=PNG_RESPONSE)
async def draw_confusion(request: Request, db: DB, caller: Reader, job_id: uuid.UUID) -> Response:
    """The 10x10 confusion matrix of the job's last test pass (also in its JSON, result.confusion)."""
    job = await read_in_thread(db, job_view, str(job_id))
    if job.result is None or job.result.confusion is None:
        raise Conflict(f"job {job.id} ({job.status}) has no confusion matrix: it has not succeeded", field="status")
    matrix = job.result.confusion
    # The accuracy is drawn under the title (confusion_png's subtitle), not in it.
    title = f"{job.architecture.upper()} job {job.id[:8]} ({_pixels(job.spec.permutation_seed)})"
    key = {"picture": "confusion", "title": title, "matrix": matrix}
    return await png(request, caller, key, ready(RenderTask(render.confusion_png, (matrix, title))))


def summary_data(session: Session, comparison_id: str) -> ComparisonRead:
    comparison = grid.get(session, comparison_id)
    return grid.view(comparison, grid.member_jobs(session, comparison.id))


@router.get("/v1/comparisons/{comparison_id}/summary.png", response_class=Response, responses=PNG_RESPONSE)
async def draw_summary(request: Request, db: DB, caller: Reader, comparison_id: uuid.UUID) -> Response:
    """Test accuracy per cell: every seed's value, the mean and its 95 % interval."""
    shown = await read_in_thread(db, summary_data, str(comparison_id))
    name = shown.name or f"Comparison {shown.id[:8]}"
    title = f"{name}: test accuracy over seeds {shown.seeds} ({shown.status})"
    key = {"picture": "summary", "title": title, "cells": shown.cells}
    return await png(request, caller, key, ready(RenderTask(render.summary_png, (shown.cells, title))))


def _pixels(permutation_seed: int | None) -> str:
    return "natural pixels" if permutation_seed is None else f"pixels permuted by seed {permutation_seed}"
