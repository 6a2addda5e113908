"""The one place that maps errors to HTTP: application/problem+json (RFC 9457)."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException
from starlette.routing import Match

from service.platform.db import lost_connection
from service.platform.errors import (
    CheckpointCorrupt,
    Conflict,
    DataUnavailable,
    FilesNotRemoved,
    Forbidden,
    InvalidInput,
    LeaseLost,
    NotFound,
    Overloaded,
    PredictionUnavailable,
    ServiceError,
    StoreUnavailable,
    TooLarge,
    TooMany,
    Unauthorized,
    UnsupportedMedia,
)

log = logging.getLogger("mnist_jobs.api")

PROBLEM_JSON = "application/problem+json"
STATUS: dict[type[ServiceError], int] = {
    NotFound: 404,
    Conflict: 409,
    LeaseLost: 409,
    CheckpointCorrupt: 409,  # the job's state: its checkpoint cannot be used (a download says so too)
    InvalidInput: 422,
    DataUnavailable: 503,
    PredictionUnavailable: 503,
    StoreUnavailable: 503,
    Unauthorized: 401,
    Forbidden: 403,
    TooLarge: 413,
    UnsupportedMedia: 415,
    TooMany: 429,
    Overloaded: 503,
    FilesNotRemoved: 500,
}
SPEC_TAGS = {"fc", "cnn"}  # pydantic puts the discriminator's value in the location of spec errors
# What a route's JSON body is called in a 422 for an unknown field; a job spec where not listed.
BODY_NAMES = {"/v1/jobs/{job_id}/predict": "prediction request"}


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


MAX_FIELD_CHARS = 80  # a field name in a 422 (an unknown key may be a megabyte long)
MAX_MESSAGE_CHARS = 240  # one error's message
ARCHITECTURES = 'one of "fc", "cnn"'
# pydantic's bound constraints, as a person would say them
BOUNDS = {
    "greater_than_equal": ("at least", "ge"),
    "less_than_equal": ("at most", "le"),
    "greater_than": ("greater than", "gt"),
    "less_than": ("less than", "lt"),
}


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
    return shorten(name if source == "body" else f"{source}.{name}", MAX_FIELD_CHARS)


def describe(value: Any) -> str:
    """What the caller sent, in words: 'a boolean', 'a string ("1_0")', 'NaN' ..."""
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"a string ({shorten(json.dumps(value), 40)})"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return f"a number with a fraction ({value!r})" if not value.is_integer() else f"a decimal number ({value!r})"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "a value of another type"


def choice(value: Any) -> str:
    """A value sent where one of a few strings was expected: '"transformer"', or its kind."""
    return shorten(json.dumps(value), 40) if isinstance(value, str) else describe(value)


def message(error: dict[str, Any], field: str, body: str = "job spec") -> str:
    """One validation error as a sentence a person can act on (not the validator's wording)."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "union_tag_not_found":
        return f"architecture is required: {ARCHITECTURES}"
    if kind == "union_tag_invalid":
        tag = value.get("architecture") if isinstance(value, dict) else ctx.get("tag")
        return f"architecture must be {ARCHITECTURES}, not {choice(tag)}"
    if kind == "missing":
        return f"{field} is required"
    if kind == "extra_forbidden":
        where = "query parameter of this call" if field.startswith("query.") else f"field of a {body}"
        return f"{field} is not a {where}"
    if kind in {"int_type", "int_parsing", "int_from_float"}:
        return f"{field} must be an integer, not {describe(value)}"
    if kind in {"float_type", "float_parsing"}:
        return f"{field} must be a number, not {describe(value)}"
    if kind == "finite_number":
        return f"{field} must be a finite number, not {describe(value)}"
    if kind in {"string_type", "bool_type", "bool_parsing"}:
        wanted = "a string" if kind == "string_type" else "true or false"
        return f"{field} must be {wanted}, not {describe(value)}"
    if kind in {"literal_error", "enum"}:
        expected = str(ctx.get("expected", "")).replace("'", '"')
        return f"{field} must be {expected}, not {choice(value)}"
    if kind in BOUNDS:
        words, key = BOUNDS[kind]
        bound = ctx.get(key)
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return f"{field} must be {words} {bound}"
    if kind in {"model_attributes_type", "dict_type", "model_type"}:
        return f"{field} must be a JSON object, not {describe(value)}"
    if kind == "json_invalid":
        return f"the body is not valid JSON: {ctx.get('error', error['msg'])}{where_json_broke(error)}"
    return f"{field}: {error['msg']}"


def where_json_broke(error: dict[str, Any]) -> str:
    """' at line 2, column 13 (character 25)' from a json_invalid error (FastAPI puts the decoder's
    position in its location and the document in the error's `body`), or '' when it is not known."""
    loc, doc = error.get("loc", ()), error.get("body")
    position = loc[1] if len(loc) > 1 and isinstance(loc[1], int) and not isinstance(loc[1], bool) else None
    if position is None:
        return ""
    if isinstance(doc, bytes):
        doc = doc.decode("utf-8", "replace")
    if not isinstance(doc, str):
        return f" at character {position}"
    line = doc.count("\n", 0, position) + 1
    column = position - (doc.rfind("\n", 0, position) + 1) + 1
    return f" at line {line}, column {column} (character {position})"


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with the first max_validation_errors errors, each a field and a sentence of bounded length,
    so a body with a million unknown keys answers with a small problem."""
    cap = request.app.state.settings.max_validation_errors
    found = [error | {"body": exc.body} if error.get("type") == "json_invalid" else error for error in exc.errors()]
    body = BODY_NAMES.get(getattr(request.scope.get("route"), "path", ""), "job spec")
    errors = []
    for error in found[:cap]:
        field = field_name(error)
        errors.append(
            {"field": field, "message": shorten(message(error, field, body), MAX_MESSAGE_CHARS), "type": error["type"]}
        )
    detail = "; ".join(e["message"] for e in errors)
    if len(found) > cap:
        detail += f"; and {len(found) - cap} more (only the first {cap} are listed)"
    return problem(422, "Invalid request", detail, field=errors[0]["field"], errors=errors)


async def service_error(_request: Request, exc: ServiceError) -> JSONResponse:
    status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 500)
    extra = {"field": exc.field} if exc.field else {}
    response = problem(status, exc.title, exc.detail, **extra)
    if isinstance(exc, Unauthorized):
        response.headers["WWW-Authenticate"] = "Bearer"
    if exc.retry_after_seconds is not None:
        response.headers["Retry-After"] = str(exc.retry_after_seconds)
    return response


DATABASE_RETRY_AFTER_S = 5


async def database_error(_request: Request, exc: DBAPIError) -> JSONResponse:
    """A database that cannot be reached (a restart, a failover) is a 503 to retry, not a crash;
    any other database error is a 500 that shows nothing of the statement or the server."""
    if not lost_connection(exc):
        log.error("database error", exc_info=exc)
        return problem(500, "Internal error", "the request failed inside the server; it is logged")
    response = problem(503, "Database unavailable", "the database cannot be reached right now; try again shortly")
    response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER_S)
    return response


def unexpected_error(exc: Exception) -> JSONResponse:
    """Any other exception a route raised: logged whole (with the request id), answered as a 500
    problem that shows nothing of the exception, the server's paths or its traceback."""
    log.error("unexpected error in a request (%s)", type(exc).__name__, exc_info=exc)
    return problem(500, "Internal error", "the request failed inside the server; it is logged")


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at this request's path. Starlette's 405 names only the first
    route whose path matched (PUT /v1/jobs/{id} said 'Allow: GET', though DELETE is there too).
    Each method is tried against the app's routes as the router would (included routers too)."""
    scope = {key: value for key, value in request.scope.items() if key not in {"route", "endpoint", "path_params"}}
    routes = request.app.router.routes
    return [m for m in METHODS if any(route.matches({**scope, "method": m})[0] is Match.FULL for route in routes)]


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    headers = dict(exc.headers or {})
    detail = str(exc.detail)
    if exc.status_code == 405:
        allowed = allowed_methods(request) or [m.strip() for m in headers.get("Allow", "").split(",") if m.strip()]
        headers["Allow"] = ", ".join(allowed)
        detail = f"{request.method} is not allowed here; this path takes {', '.join(allowed) or 'no method'}"
    response = problem(exc.status_code, str(exc.detail), detail)
    response.headers.update(headers)
    return response


def install(app: FastAPI) -> None:
    # The decorator form of add_exception_handler: Starlette types a handler's exception as a bare
    # Exception, so a handler for a subclass only type-checks through FastAPI's generic decorator.
    app.exception_handler(RequestValidationError)(validation_error)
    app.exception_handler(ServiceError)(service_error)
    app.exception_handler(HTTPException)(http_error)
    app.exception_handler(DBAPIError)(database_error)
