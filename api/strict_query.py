"""Unknown query parameters are a 422, as unknown body fields are.

`reject_unknown_query` is a dependency for a router or the whole app: it compares the request's
query parameter names with those the matched route declares (its own and its dependencies'), and
raises the same RequestValidationError an unknown body field gives (type extra_forbidden, location
("query", name)), so api/errors.py answers it like every other 422.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel

# The most an integer query or path parameter may be: the databases' integer columns are signed 64-bit,
# and a larger value would fail in the driver (a 500) instead of being refused here (a 422).
INT64_MAX = 2**63 - 1
MAX_NAME_CHARS = 80  # of an unknown name echoed in an error (the error handler shortens it too)


def query_names(dependant: Dependant) -> set[str]:
    """The query parameter names (aliases) a dependant and its sub-dependencies declare; a Pydantic
    model taken as query parameters contributes its fields' names."""
    names: set[str] = set()
    for param in dependant.query_params:
        annotation = param.field_info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= {field.alias or name for name, field in annotation.model_fields.items()}
        else:
            names.add(param.alias)
    for sub in dependant.dependencies:
        names |= query_names(sub)
    return names


def declared_query_names(route: APIRoute) -> frozenset[str]:
    """query_names of a route, computed once per route."""
    cached: frozenset[str] | None = getattr(route, "_declared_query_names", None)
    if cached is None:
        cached = frozenset(query_names(route.dependant))
        route._declared_query_names = cached  # type: ignore[attr-defined]  # computed once per route
    return cached


async def reject_unknown_query(request: Request) -> None:
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    declared = declared_query_names(route)
    unknown = [name for name in dict.fromkeys(request.query_params.keys()) if name not in declared]
    if unknown:
        raise RequestValidationError(
            [
                {
                    "type": "extra_forbidden",
                    "loc": ("query", name[:MAX_NAME_CHARS]),
                    "msg": "Extra inputs are not permitted",
                    "input": request.query_params.get(name),
                }
                for name in unknown
            ]
        )
