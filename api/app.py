"""create_app(): the FastAPI application. It never trains; workers do, in their own processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy import text

from api import errors
from api.deps import DB
from api.guards import BodyGuard, TrustedHosts
from api.routes import datasets, jobs, workers
from service import auth
from service.config import Settings
from service.db import Database, require_head


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        require_head(settings.database_url)  # migrations run in one place: `mnist-jobs db upgrade` or `serve`
        app.state.db = Database(settings.database_url)
        try:
            yield
        finally:
            app.state.db.dispose()

    app = FastAPI(
        title="mnist-jobs",
        version="0.1.0",
        lifespan=lifespan,
        description="Train small PyTorch models (FC vs CNN on MNIST) as queued jobs.",
    )
    app.state.settings = settings
    app.state.tokens = auth.TokenStore(settings) if auth.configured(settings) else None  # None: open mode
    errors.install(app)
    # Outermost last: the Host check, then CORS (so its preflights and headers cover every answer),
    # then the body's size and media type, all before a route (or the auth dependency) runs.
    app.add_middleware(BodyGuard, max_body_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=["Location", "Retry-After", "ETag", "Repr-Digest"],
        )
    app.add_middleware(TrustedHosts, allowed_hosts=settings.allowed_hosts)
    app.include_router(jobs.router)
    app.include_router(workers.router)
    app.include_router(datasets.router)

    @app.get("/healthz", tags=["health"])
    def healthz(db: DB) -> dict[str, str]:
        with db.read() as session:
            session.execute(text("SELECT 1"))
        return {"status": "ok"}

    return app
