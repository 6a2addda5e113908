"""Dependencies: the app's settings and database, and who is calling, shared by every request.

They are async: none blocks (the tokens file is stat-ed, read only when it changed), and a sync
dependency costs a request a turn of the event loop and a thread each, which a busy loop makes
seconds.

Routes take the caller as one annotated parameter (`caller: Submitter`) or, when they only need
the role, list it in `dependencies=[require(Role.read)]`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import anyio.to_thread
from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.limits import KNOWN_CALLER
from api.strict_query import reject_unknown_query
from service.platform.auth import OPEN, Caller, Role, TokenStore, authenticate, still_valid
from service.platform.config import PAGE_SIZE_CEILING, Settings
from service.platform.db import Database
from service.platform.errors import InvalidInput, Unauthorized
from service.platform.pools import BoundedCalls
from service.storage.store import ArtifactStore

T = TypeVar("T")


async def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_store(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.store
    return store


def page_limit(setting: str, default: int) -> Any:
    """`?limit=` of a list, at most the named page-size setting (a 422 naming query.limit past it).
    The document's maximum is the ceiling any setting may take; the setting itself is the limit."""

    name = f"MNIST_JOBS_{setting.upper()}"
    # Query as the default, not in an Annotated hint: the hints are strings here (`from __future__
    # import annotations`), which could not name this call's values.
    bounds = Query(default, ge=1, le=PAGE_SIZE_CEILING, description=f"at most {name}")

    async def checked(request: Request, limit: int = bounds) -> int:
        most: int = getattr(request.app.state.settings, setting)
        if limit > most:
            raise InvalidInput(f"limit must be at most {most} ({name})", field="query.limit")
        return limit

    return Depends(checked)


DB = Annotated[Database, Depends(get_db)]
AppSettings = Annotated[Settings, Depends(get_settings)]
Artifacts = Annotated[ArtifactStore, Depends(get_store)]

# auto_error=False: a missing or malformed header is our 401 problem (with WWW-Authenticate), not
# FastAPI's 403; the scheme still appears in the OpenAPI document (Swagger's "Authorize").
bearer = HTTPBearer(auto_error=False, description="A token from `mnist-jobs tokens create`")


async def get_caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Caller:
    store: TokenStore | None = request.app.state.tokens
    if store is None:  # no tokens configured: the open mode (loopback only unless --insecure)
        return OPEN
    known: Caller | None = request.scope.get("state", {}).get(KNOWN_CALLER)
    if known is not None:  # this request's token, already checked by the fair-share middleware
        return known
    if credentials is None:
        raise Unauthorized("this server needs 'Authorization: Bearer <token>'")
    return authenticate(store.tokens(), credentials.credentials)


CurrentCaller = Annotated[Caller, Depends(get_caller)]


async def get_caller_check(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Callable[[], str | None] | None:
    """For a response that outlives its request (an event stream): a check of the caller's token
    against the tokens as they are now, None while it is still accepted, else why not. None in the
    open mode, where there is nothing to revoke."""
    store: TokenStore | None = request.app.state.tokens
    if store is None or credentials is None:
        return None
    presented = credentials.credentials
    return lambda: still_valid(store, presented)


CallerCheck = Annotated[Callable[[], str | None] | None, Depends(get_caller_check)]


def require(role: Role) -> Any:
    """A dependency that lets through callers with at least `role` (403 otherwise)."""

    async def check(caller: CurrentCaller) -> Caller:
        caller.require(role)
        return caller

    return Depends(check)


Reader = Annotated[Caller, require(Role.read)]
Submitter = Annotated[Caller, require(Role.submit)]
Admin = Annotated[Caller, require(Role.admin)]
JobPageLimit = Annotated[int, page_limit("page_size_max", default=50)]
ComparisonPageLimit = Annotated[int, page_limit("comparison_page_size_max", default=20)]

# What every /v1 router depends on: a caller allowed to read (401 / 403 first), then no query
# parameter the route does not declare (422).
V1_ROUTER_DEPENDENCIES = [require(Role.read), Depends(reject_unknown_query)]


async def read_in_thread(db: Database, query: Callable[..., T], *args: Any) -> T:
    """`query(session, *args)` in one read transaction, on a request thread: for async routes, whose
    own work (a render, a prediction) waits elsewhere."""

    def run() -> T:
        with db.read() as session:
            return query(session, *args)

    return await anyio.to_thread.run_sync(run)


async def helper_call(request: Request, function: Callable[..., T], *args: Any) -> T:
    """A call to the inference helper (predict, export, permutation) through its bounded queue: on
    the queue's own thread, never a request thread; Overloaded (503) when the queue is full."""
    calls: BoundedCalls = request.app.state.helper_calls
    return await calls.run(function, *args)
