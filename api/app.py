"""create_app(): the FastAPI application. It never trains; workers do, in their own processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from api import dashboard, docs, errors, metrics, openapi, upkeep
from api.events import Broadcaster
from api.guards import BodyGuard, RequestId, TrustedHosts
from api.limits import CallerLimits
from api.routes import comparisons, datasets, downloads, events, jobs, pictures, predict, workers
from service import __version__
from service.inference.client import InferenceClient
from service.pictures.pool import RenderPool
from service.pictures.render import PictureCache
from service.platform import auth
from service.platform.config import Settings
from service.platform.db import Database, require_head, sqlite_file
from service.platform.pools import BoundedCalls
from service.storage.store import open_store


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pooled = settings.database_transaction_pooler
        require_head(settings.database_url, transaction_pooler=pooled)  # migrations: `db upgrade` or `serve`
        app.state.db = Database(settings.database_url, transaction_pooler=pooled)
        found = sqlite_file(settings.database_url)
        app.state.db_file = None if found is None else found.resolve()
        app.state.db_identity = file_identity(app.state.db_file)
        # Predictions run in a helper process, started by the first one; closing it here means no
        # helper outlives the app.
        app.state.inference = InferenceClient.from_settings(settings)
        # Expensive work in bounded pools, off the request threads: one queue for the helper's calls
        # (it answers one at a time), and the render processes.
        app.state.helper_calls = BoundedCalls("inference helper", workers=1, max_waiting=settings.predict_queue_max)
        app.state.renders = RenderPool(
            PictureCache(settings.artifacts_dir / "pictures"),
            processes=settings.render_processes,
            max_in_flight=settings.render_queue_max,
            per_minute=settings.renders_per_minute,
        )
        # Live events: one reader of the events table for all streams, started by the first one.
        app.state.events = Broadcaster(
            app.state.db, poll_seconds=settings.events_poll_seconds, queue_max=settings.events_queue_max
        )
        tidying = asyncio.create_task(
            upkeep.tidy_every(app.state.db, settings.reap_seconds, settings.events_keep_seconds)
        )
        try:
            yield
        finally:
            tidying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tidying
            await app.state.events.close()  # ends the streams still open
            app.state.renders.close()
            app.state.inference.close()
            app.state.db.dispose()

    app = FastAPI(
        title="mnist-jobs",
        version=__version__,
        lifespan=lifespan,
        description="Train small PyTorch models (FC vs CNN on MNIST) as queued jobs.",
        docs_url=None,  # docs.install serves them from installed files, not from a CDN
        redoc_url=None,
        # One schema per model (no -Input/-Output twins, whose generated names collide) and operation
        # ids that read as verbs: what client generators turn into types and method names.
        separate_input_output_schemas=False,
        generate_unique_id_function=openapi.operation_id,
    )
    app.state.settings = settings
    app.state.store = open_store(settings)
    app.state.tokens = auth.TokenStore(settings) if auth.configured(settings) else None  # None: open mode
    errors.install(app)
    # Outermost last: the request id (so every answer, the guards' own included, carries it), the
    # Host check, then CORS (so its preflights and headers cover every answer), then the body's
    # size and media type, all before a route (or the auth dependency) runs.
    app.add_middleware(BodyGuard, max_body_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "HEAD", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=[
                "Location",
                "Retry-After",
                "ETag",
                "Repr-Digest",
                "X-Request-ID",
                "Content-Range",
                "Accept-Ranges",
            ],
        )
    app.add_middleware(TrustedHosts, allowed_hosts=settings.allowed_hosts)
    # A fair share per caller (rate, requests in flight, open streams), before any other work.
    app.add_middleware(CallerLimits, settings=settings)
    # Inside the request id, outside the guards: their 400/413/415 answers are counted too.
    app.add_middleware(metrics.HttpMetrics, metrics=metrics.install(app))  # and GET /metrics
    app.add_middleware(RequestId)  # outermost: even the guards' 400/413/415 answers carry the id
    app.include_router(jobs.router)
    app.include_router(predict.router)
    app.include_router(downloads.router)
    app.include_router(workers.router)
    app.include_router(datasets.router)
    app.include_router(comparisons.router)
    app.include_router(pictures.router)
    app.include_router(events.router)

    @app.get("/healthz/live", tags=["health"])
    def check_live() -> dict[str, str]:
        """200 while the process answers; it checks nothing else (for a restart policy)."""
        return {"status": "ok"}

    not_ready_answer: dict[int | str, dict[str, Any]] = {
        503: {"description": "Not ready", "content": {errors.PROBLEM_JSON: {}}}
    }

    @app.get(
        "/healthz",
        tags=["health"],
        response_model=dict[str, str],
        responses=not_ready_answer,
        operation_id="check_health",
    )
    @app.get("/healthz/ready", tags=["health"], response_model=dict[str, str], responses=not_ready_answer)
    def check_ready(request: Request) -> dict[str, str] | JSONResponse:
        """200 when the database answers and, for SQLite, is still the file the server opened at
        start (a deleted or replaced file would take every later write with it), and the tokens
        file, if any, parses; else 503."""
        reason = not_ready(request.app)
        if reason is not None:
            return errors.problem(503, "Not ready", reason)
        return {"status": "ok"}

    dashboard.install(app)  # the HTML pages at / and their /static files; no data without /v1
    openapi.install(app)  # last: it documents every route above, errors as problem+json
    docs.install(app)
    return app


def file_identity(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def not_ready(app: FastAPI) -> str | None:
    """Why the server cannot take work now, in words that name no path or secret; None when it can."""
    tokens: auth.TokenStore | None = app.state.tokens
    if tokens is not None:
        tokens.tokens()  # read it again if it changed, as a request would
        if tokens.error is not None:
            return f"the tokens file (MNIST_JOBS_API_TOKENS_FILE) {tokens.error}; fix it (see the server's log)"
    try:
        app.state.db.ping()
    except SQLAlchemyError as exc:
        return f"the database does not answer ({type(exc).__name__})"
    expected = app.state.db_identity
    if expected is None:
        return None
    try:
        current = file_identity(app.state.db_file)
    except FileNotFoundError:
        return "the database file is gone (deleted since the server started); restore it and restart the server"
    except OSError as exc:
        return f"the database file cannot be checked ({type(exc).__name__})"
    if current != expected:
        return "the database file was replaced since the server started; restart the server to use the new one"
    return None
