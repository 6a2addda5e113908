"""The OpenAPI document as the API really answers: every error is application/problem+json.

`install(app)` replaces `app.openapi` with a function that post-processes FastAPI's generated
document once (then cached): it adds the shared `Problem` schema and one response per error status
under components/responses, gives each operation the error statuses it can answer with, and
replaces FastAPI's `application/json` HTTPValidationError 422 (never sent) with the problem. Routes
declare only their successes; which errors an operation may send is decided here:

- every operation: 400 (a Host header not allowed; a Content-Length that is not a number or that
  the body does not keep to), from api/guards.py, which runs before any route;
- an operation with a body: 413 (over MNIST_JOBS_MAX_BODY_BYTES) and 415 (not application/json, nor
  image/png where the operation takes it);
- an operation behind the bearer scheme (every /v1 call): 401, and 422 (an unknown query parameter);
- an operation with parameters or a body: 422;
- an operation with a path parameter: 404 (no such job);
- an error status a route declares itself (`responses={503: ...}`): the shared problem answer;
- what only the route's service code knows (a role above `read`, a state conflict, the queue limit,
  a data set or a prediction that cannot be had): ROUTE_ERRORS, keyed by method and path. A new
  route that raises such an error adds its line there; tests/unit/test_openapi.py checks that the
  document lists every status the API is seen to send.

It also makes the document one that client generators read as the API means it: one schema per
model (create_app sets separate_input_output_schemas=False), operation ids that are the route
functions' names (`operation_id`: submit_job, get_job, ...), integer bounds written as the exact
integers pydantic gives (`exact_schemas`), binary answers typed `format: binary`, and an example for
every JSON body (BODY_EXAMPLES), which Swagger UI shows instead of building its own.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi._compat import get_definitions, get_flat_models_from_fields, get_model_name_map
from fastapi.openapi.utils import get_fields_from_routes
from fastapi.routing import APIRoute

from api.errors import PROBLEM_JSON

Document = dict[str, Any]

PROBLEM_SCHEMA: Document = {
    "title": "Problem",
    "type": "object",
    "description": "An error, as RFC 9457 application/problem+json",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "always about:blank: the status and title say what happened"},
        "title": {"type": "string", "description": "the kind of error, the same for every error of a status"},
        "status": {"type": "integer", "description": "the HTTP status, repeated"},
        "detail": {"type": "string", "description": "what was wrong with this request, in a sentence"},
        "field": {"type": "string", "description": "the input at fault: a body field, query.NAME, path.NAME, a header"},
        "errors": {
            "type": "array",
            "description": "422: each validation error (at most MNIST_JOBS_MAX_VALIDATION_ERRORS)",
            "items": {
                "type": "object",
                "required": ["field", "message", "type"],
                "properties": {
                    "field": {"type": "string"},
                    "message": {"type": "string", "description": "a sentence a person can act on"},
                    "type": {"type": "string", "description": "the validator's code for the error"},
                },
            },
        },
    },
}

RETRY_AFTER: Document = {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
# status: (name in components/responses, description, headers)
ERRORS: dict[int, tuple[str, str, Document]] = {
    400: (
        "BadRequest",
        "A Host header this server does not answer to (MNIST_JOBS_ALLOWED_HOSTS), or a Content-Length that is "
        "not one number or that the body does not keep to",
        {},
    ),
    401: (
        "Unauthorized",
        "Tokens are configured and the call carries none, or one the server does not know",
        {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    ),
    403: ("Forbidden", "The token's role may not make this call, or the job is another token's", {}),
    404: ("NotFound", "No such job, epoch or checkpoint", {}),
    409: (
        "Conflict",
        "The call does not fit the job's state (no checkpoint yet, a corrupt one, a diverged model), or reuses an "
        "Idempotency-Key with another body",
        {},
    ),
    413: ("TooLarge", "The body is over MNIST_JOBS_MAX_BODY_BYTES", {}),
    415: ("UnsupportedMediaType", "The body is not application/json (nor image/png, where the operation takes it)", {}),
    422: (
        "InvalidRequest",
        "A parameter, header or body field is invalid or unknown, the body is not valid JSON (the detail says "
        "where it broke), or the job is over the cost budget",
        {},
    ),
    429: (
        "TooManyRequests",
        "This caller is over its share: more than MNIST_JOBS_RATE_LIMIT_BURST requests at once or "
        "MNIST_JOBS_RATE_LIMIT_PER_SECOND a second, MNIST_JOBS_MAX_REQUESTS_PER_CALLER in flight, "
        "MNIST_JOBS_MAX_STREAMS_PER_CALLER event streams open, MNIST_JOBS_RENDERS_PER_MINUTE new pictures in a "
        "minute, or (a submit) MNIST_JOBS_MAX_QUEUED_PER_TOKEN jobs queued or running",
        {
            "Retry-After": RETRY_AFTER,
            "RateLimit-Policy": {
                "description": '"burst";q=<requests at once>;w=<seconds to refill them> (draft-ietf-httpapi-'
                "ratelimit-headers); on every /v1 answer",
                "schema": {"type": "string"},
            },
            "RateLimit": {
                "description": '"burst";r=<requests left>;t=<seconds until all are back>; on every /v1 answer',
                "schema": {"type": "string"},
            },
        },
    ),
    500: ("FilesNotRemoved", "The job's files could not all be removed; the job is kept", {}),
    503: (
        "Unavailable",
        "A data set or the database cannot be used now, the inference helper did not answer within "
        "MNIST_JOBS_PREDICT_TIMEOUT_SECONDS (MNIST_JOBS_EXPORT_TIMEOUT_SECONDS for a model export; the next call "
        "starts a new one), or a bounded queue is full: MNIST_JOBS_PREDICT_QUEUE_MAX calls waiting on the "
        "inference helper, MNIST_JOBS_RENDER_QUEUE_MAX pictures being drawn (with Retry-After), or the object store "
        "holding the artifacts did not answer within MNIST_JOBS_ARTIFACTS_RETRY_SECONDS (with Retry-After)",
        {"Retry-After": RETRY_AFTER},
    ),
}

# Errors only the route's service code can raise: (METHOD, path) -> statuses.
ROUTE_ERRORS: dict[tuple[str, str], tuple[int, ...]] = {
    ("POST", "/v1/jobs"): (403, 409, 429),  # a read token; Idempotency-Key reused; the token's queue is full
    ("POST", "/v1/jobs/{job_id}/cancel"): (403, 409),  # a read token or another's job; the job has ended
    ("DELETE", "/v1/jobs/{job_id}"): (403, 409, 500),  # not an admin; still queued or running; files stay
    ("GET", "/v1/jobs/{job_id}/checkpoint"): (409,),  # no checkpoint yet, or its file does not match its sha256
    ("GET", "/v1/jobs/{job_id}/model"): (409, 503),  # no checkpoint yet, or a corrupt one; the export helper down
    ("POST", "/v1/jobs/{job_id}/predict"): (409, 503),  # no checkpoint yet, a corrupt one, diverged; helper down
    ("POST", "/v1/comparisons"): (403, 429),  # a read token; the token's queue cannot take the grid's jobs
    ("POST", "/v1/comparisons/{comparison_id}/cancel"): (403,),  # a read token or another's comparison
    ("DELETE", "/v1/comparisons/{comparison_id}"): (403, 409, 500),  # not an admin; jobs not ended; files stay
    ("GET", "/v1/datasets/{name}/samples.png"): (503,),  # data set corrupt; inference helper down; renders full
    ("GET", "/v1/jobs/{job_id}/curves.png"): (503,),  # the render queue is full
    ("GET", "/v1/jobs/{job_id}/confusion.png"): (409, 503),  # the job has not succeeded; the render queue is full
    ("GET", "/v1/comparisons/{comparison_id}/summary.png"): (503,),  # the render queue is full
}

# An example of every JSON request body, (METHOD, path) -> name -> (summary, value). Swagger UI
# offers the first as the body to send; tests/unit/test_openapi.py sends every one.
BODY_EXAMPLES: dict[tuple[str, str], dict[str, tuple[str, Any]]] = {
    ("POST", "/v1/jobs"): {
        "fc": ("The tutorial's fully-connected net (6,442 parameters), 1 epoch", {"architecture": "fc"}),
        "cnn": ("The tutorial's CNN (6,422 parameters), 2 epochs", {"architecture": "cnn", "epochs": 2}),
        "permuted": (
            "FC on pixels shuffled by a fixed permutation, with a fixed seed and a name",
            {"architecture": "fc", "permutation_seed": 42, "seed": 1, "name": "fc-permuted", "labels": {"run": "a"}},
        ),
    },
    ("POST", "/v1/comparisons"): {
        "experiment": ("FC and CNN, natural and permuted pixels, 1 seed each", {"seeds": 1}),
        "fc-only": (
            "FC alone, natural pixels, seeds 1 and 2, 2 epochs",
            {"architectures": ["fc"], "permutation_seeds": [None], "seeds": [1, 2], "spec": {"epochs": 2}},
        ),
    },
    ("POST", "/v1/jobs/{job_id}/predict"): {
        "blank": ("An all-black image (pixels may also be sent as an image/png body)", {"pixels": [0] * 784}),
    },
}
BOUND_KEYS = ("maximum", "minimum", "exclusiveMaximum", "exclusiveMinimum", "multipleOf")
EXACT_FLOAT_LIMIT = 2**53  # a float holds every integer below this exactly
NOT_BINARY = ("application/json", PROBLEM_JSON, "text/event-stream")
BINARY: Document = {"type": "string", "format": "binary"}

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
DEFAULT_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def error_statuses(method: str, path: str, operation: Document) -> set[int]:
    """The error statuses `operation` (METHOD path) can answer with; see the module's docstring."""
    statuses = {400}
    params = operation.get("parameters", [])
    has_body = "requestBody" in operation
    if has_body:
        statuses |= {413, 415, 422}
    if operation.get("security"):
        statuses |= {401, 422}
    if params:
        statuses.add(422)
    if any(param.get("in") == "path" for param in params):
        statuses.add(404)
    if path.startswith("/v1/"):
        statuses.add(429)  # every caller's fair share (api/limits.py)
    statuses.update(ROUTE_ERRORS.get((method.upper(), path), ()))
    return statuses


def problem_response(status: int) -> Document:
    _name, description, headers = ERRORS[status]
    response: Document = {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    if headers:
        response["headers"] = headers
    return response


def uses_ref(node: Any, ref: str) -> bool:
    if isinstance(node, dict):
        return node.get("$ref") == ref or any(uses_ref(value, ref) for value in node.values())
    if isinstance(node, list):
        return any(uses_ref(value, ref) for value in node)
    return False


def with_problems(generated: Document) -> Document:
    """`generated` (FastAPI's document, left untouched) with every operation's errors as problems."""
    document = copy.deepcopy(generated)
    components = document.setdefault("components", {})
    components.setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    used: set[int] = set()
    for path, item in document.get("paths", {}).items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            declared = {int(code) for code in responses if code.isdigit() and int(code) >= 400}
            for status in sorted(error_statuses(method, path, operation) | declared):
                if status in ERRORS:
                    responses[str(status)] = {"$ref": f"#/components/responses/{ERRORS[status][0]}"}
                    used.add(status)
                else:  # an error status a route declares that has no shared answer here: its text, as a problem
                    description = responses[str(status)].get("description", "Error")
                    responses[str(status)] = {
                        "description": description,
                        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
                    }
    components["responses"] = {ERRORS[status][0]: problem_response(status) for status in sorted(used)}
    schemas = components["schemas"]
    for name in DEFAULT_VALIDATION_SCHEMAS:  # FastAPI's 422 body, which this API never sends
        schemas.pop(name, None)
    leftover = [name for name in DEFAULT_VALIDATION_SCHEMAS if uses_ref(document, f"#/components/schemas/{name}")]
    assert not leftover, f"still referenced after the rewrite: {leftover}"
    return document


def operation_id(route: APIRoute) -> str:
    """The route function's name (a verb phrase: submit_job, get_job): what generated clients call
    their methods. FastAPI's default reads as a path (read_v1_jobs__job_id__get)."""
    return route.name


def exact_schemas(app: FastAPI) -> Document:
    """The component schemas as pydantic writes them, computed as FastAPI computes them. FastAPI
    passes its document through its own OpenAPI model, whose bounds are floats: 2**63 - 1 comes out
    as 9.223372036854776e+18, which is 2**63, one past the bound, so a client that sends the
    documented maximum is refused."""
    fields = get_fields_from_routes(list(app.routes) + list(app.webhooks.routes))
    names = get_model_name_map(get_flat_models_from_fields(fields, known_models=set()))
    _, definitions = get_definitions(
        fields=fields, model_name_map=names, separate_input_output_schemas=app.separate_input_output_schemas
    )
    return definitions


def integral_bounds(node: Any) -> None:
    """Writes every whole-number bound in `node` as an integer (FastAPI writes 100 as 100.0)."""
    if isinstance(node, list):
        for value in node:
            integral_bounds(value)
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in BOUND_KEYS and isinstance(value, float) and value.is_integer():
            if abs(value) >= EXACT_FLOAT_LIMIT:
                raise ValueError(f"a bound of {value} may have lost digits; give its schema from pydantic")
            node[key] = int(value)
        else:
            integral_bounds(value)


def operations_of(document: Document) -> list[tuple[str, str, Document]]:
    return [
        (method, path, item[method]) for path, item in document.get("paths", {}).items() for method in METHODS
        if method in item
    ]  # fmt: skip


def portable(document: Document, exact: Document) -> Document:
    """`document` with what generators need (see the module's docstring); changed in place."""
    schemas = document.get("components", {}).get("schemas", {})
    schemas.update({name: copy.deepcopy(schema) for name, schema in exact.items() if name in schemas})
    integral_bounds(document)
    ids: dict[str, int] = {}
    for method, path, operation in operations_of(document):
        ids[operation["operationId"]] = ids.get(operation["operationId"], 0) + 1
        for response in operation.get("responses", {}).values():
            for media_type, content in response.get("content", {}).items():
                if media_type not in NOT_BINARY and not content.get("schema"):
                    content["schema"] = {"type": "string"} if media_type.startswith("text/") else dict(BINARY)
        body = operation.get("requestBody", {}).get("content", {}).get("application/json")
        examples = BODY_EXAMPLES.get((method.upper(), path))
        if body is not None and examples:
            body["examples"] = {name: {"summary": text, "value": value} for name, (text, value) in examples.items()}
    repeated = sorted(name for name, count in ids.items() if count > 1)
    assert not repeated, f"operation ids used more than once: {repeated}"
    return document


def install(app: FastAPI) -> None:
    """Make `app.openapi()` (and so /openapi.json and the docs) return the rewritten document,
    computed on the first call and kept. Idempotent."""
    if getattr(app.state, "openapi_problems", False):
        return
    app.state.openapi_problems = True
    generate: Callable[[], Document] = app.openapi
    rewritten: list[Document] = []

    def openapi() -> Document:
        if not rewritten:
            rewritten.append(portable(with_problems(generate()), exact_schemas(app)))
            app.openapi_schema = rewritten[0]
        return rewritten[0]

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise it
