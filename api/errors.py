"""The one place that maps errors to HTTP: application/problem+json (RFC 9457)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service.errors import (
    Conflict,
    DataUnavailable,
    Forbidden,
    InvalidInput,
    LeaseLost,
    NotFound,
    ServiceError,
    TooLarge,
    TooMany,
    Unauthorized,
    UnsupportedMedia,
)

PROBLEM_JSON = "application/problem+json"
STATUS: dict[type[ServiceError], int] = {
    NotFound: 404,
    Conflict: 409,
    LeaseLost: 409,
    InvalidInput: 422,
    DataUnavailable: 503,
    Unauthorized: 401,
    Forbidden: 403,
    TooLarge: 413,
    UnsupportedMedia: 415,
    TooMany: 429,
}
SPEC_TAGS = {"fc", "cnn"}  # pydantic puts the discriminator's value in the location of spec errors


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


def field_name(error: dict[str, Any]) -> str:
    """'epochs', 'query.limit', 'architecture' ... from a pydantic error location."""
    if error["type"] in {"union_tag_invalid", "union_tag_not_found"}:
        return "architecture"
    source, *path = error["loc"]
    if source == "body" and path and path[0] in SPEC_TAGS:
        path = path[1:]
    if source == "body" and error["type"] == "json_invalid":
        return "body"
    name = ".".join(str(part) for part in path) or source
    return name if source == "body" else f"{source}.{name}"


async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"field": field_name(e), "message": e["msg"], "type": e["type"]} for e in exc.errors()]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return problem(422, "Invalid request", detail, field=errors[0]["field"], errors=errors)


async def service_error(_request: Request, exc: ServiceError) -> JSONResponse:
    status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 500)
    extra = {"field": exc.field} if exc.field else {}
    response = problem(status, exc.title, exc.detail, **extra)
    if isinstance(exc, Unauthorized):
        response.headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, TooMany):
        response.headers["Retry-After"] = str(exc.retry_after_seconds)
    return response


async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
    response = problem(exc.status_code, str(exc.detail), str(exc.detail))
    response.headers.update(exc.headers or {})
    return response


def install(app: FastAPI) -> None:
    # The decorator form of add_exception_handler: Starlette types a handler's exception as a bare
    # Exception, so a handler for a subclass only type-checks through FastAPI's generic decorator.
    app.exception_handler(RequestValidationError)(validation_error)
    app.exception_handler(ServiceError)(service_error)
    app.exception_handler(HTTPException)(http_error)
