"""The pictures people look at, as PNG: sample digits (and their permuted versions), a job's curves
and confusion matrix, a comparison's summary. Rendered on request in this process (matplotlib's
Agg backend, service.pictures; no torch) and cached on disk by content, so a repeat costs a read.
A permutation is drawn by the inference helper process (service.inference), torch's own randperm."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic_core import to_jsonable_python

from api.deps import DB, V1_ROUTER_DEPENDENCIES, AppSettings
from api.routes.predict import get_inference
from service import comparisons, jobs, pictures
from service.datasets.samples import read_test_samples, test_pins
from service.errors import Conflict
from service.schemas import DATASETS, SEED_MAX, EpochMetrics, StepMetrics

router = APIRouter(tags=["pictures"], dependencies=V1_ROUTER_DEPENDENCIES)
PNG_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "A PNG picture"},
    304: {"description": "ETag matched"},
}
MAX_SAMPLES = 100
MAX_CURVE_STEPS = 100_000  # rows of per-step losses drawn (a 100-epoch batch-1 job has more: the first ones)


def png(request: Request, settings: AppSettings, key: Mapping[str, object], render: Callable[[], bytes]) -> Response:
    """The picture for `key` (everything it draws), from the cache or rendered now; 304 for a
    matching If-None-Match (the ETag is the key's hash, known before any rendering)."""
    text = json.dumps(to_jsonable_python(key), sort_keys=True)
    etag = f'"{hashlib.sha256(text.encode()).hexdigest()[:32]}"'
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    data = pictures.PictureCache(settings.artifacts_dir / "pictures").get(text, render)
    return Response(data, media_type="image/png", headers=headers)


@router.get("/v1/datasets/{name}/samples.png", response_class=Response, responses=PNG_RESPONSE)
def draw_samples(
    request: Request,
    settings: AppSettings,
    name: Annotated[str, Path(pattern="^(" + "|".join(DATASETS) + ")$")],
    count: Annotated[int, Query(ge=1, le=MAX_SAMPLES)] = 20,
    permutation_seed: Annotated[int | None, Query(ge=0, le=SEED_MAX)] = None,
) -> Response:
    """The tutorial's figures: the first `count` test digits; with `permutation_seed`, each beside
    its permuted version (the permutation every job with that seed trains on)."""

    def render() -> bytes:  # only on a cache miss: the data files and the inference helper are not touched on a hit
        images, labels = read_test_samples(settings, name, count)
        order = None if permutation_seed is None else get_inference(request).permutation(permutation_seed)
        return pictures.samples_png(images, labels, order, permutation_seed)

    pins = test_pins(settings, name)  # the content drawn, without reading it
    key = {"picture": "samples", "dataset": name, "pins": pins, "count": count, "permutation_seed": permutation_seed}
    return png(request, settings, key, render)


@router.get("/v1/jobs/{job_id}/curves.png", response_class=Response, responses=PNG_RESPONSE)
def draw_curves(request: Request, settings: AppSettings, db: DB, job_id: uuid.UUID) -> Response:
    """Training loss over the samples seen (every MNIST_JOBS_STEP_METRICS_EVERY steps) and test
    accuracy after each epoch; drawn as far as the job has got."""
    with db.read() as session:
        job = jobs.view(jobs.get(session, str(job_id)))
        rows = jobs.steps(session, str(job_id), from_step=0, limit=MAX_CURVE_STEPS)
    steps = [StepMetrics(step=r.step, epoch=r.epoch, samples=r.samples, loss=r.loss) for r in rows]
    epochs: list[EpochMetrics] = job.metrics
    title = f"{job.architecture.upper()} job {job.id[:8]} ({_pixels(job.spec.permutation_seed)}, seed {job.spec.seed})"
    key = {"picture": "curves", "title": title, "steps": steps, "epochs": epochs}
    return png(request, settings, key, lambda: pictures.curves_png(steps, epochs, title))


@router.get("/v1/jobs/{job_id}/confusion.png", response_class=Response, responses=PNG_RESPONSE)
def draw_confusion(request: Request, settings: AppSettings, db: DB, job_id: uuid.UUID) -> Response:
    """The 10x10 confusion matrix of the job's last test pass (also in its JSON, result.confusion)."""
    with db.read() as session:
        job = jobs.view(jobs.get(session, str(job_id)))
    if job.result is None or job.result.confusion is None:
        raise Conflict(
            f"job {job.id} ({job.status.value}) has no confusion matrix: it has not succeeded", field="status"
        )
    matrix = job.result.confusion
    # The accuracy is drawn under the title (confusion_png's subtitle), not in it.
    title = f"{job.architecture.upper()} job {job.id[:8]} ({_pixels(job.spec.permutation_seed)})"
    key = {"picture": "confusion", "title": title, "matrix": matrix}
    return png(request, settings, key, lambda: pictures.confusion_png(matrix, title))


@router.get("/v1/comparisons/{comparison_id}/summary.png", response_class=Response, responses=PNG_RESPONSE)
def draw_summary(request: Request, settings: AppSettings, db: DB, comparison_id: uuid.UUID) -> Response:
    """Test accuracy per cell: every seed's value, the mean and its 95 % interval."""
    with db.read() as session:
        comparison = comparisons.get(session, str(comparison_id))
        read = comparisons.view(comparison, comparisons.member_jobs(session, comparison.id))
    title = f"{read.name or 'Comparison ' + read.id[:8]}: test accuracy over seeds {read.seeds} ({read.status.value})"
    key = {"picture": "summary", "title": title, "cells": read.cells}
    return png(request, settings, key, lambda: pictures.summary_png(read.cells, title))


def _pixels(permutation_seed: int | None) -> str:
    return "natural pixels" if permutation_seed is None else f"pixels permuted by seed {permutation_seed}"
