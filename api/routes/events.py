"""/v1/jobs/{id}/events and /v1/events: job changes as they happen, as server-sent events.

A job's stream starts with `event: job` (the job as GET /v1/jobs/{id} answers it), then sends its
events (status, progress, step, epoch: service/platform/events.py) and ends after its final status. The
stream of all jobs never ends, unless its caller's token is revoked or expires: every stream of
such a token ends within about a second, with a last comment saying why. Both resume after an
event id: the Last-Event-ID header (which EventSource sends when it reconnects) or
`?last_event_id=`; a keep-alive comment goes out every MNIST_JOBS_EVENTS_PING_SECONDS. The events
come from one reader per process (api/events.py).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse

from api.deps import DB, V1_ROUTER_DEPENDENCIES, AppSettings, CallerCheck, Reader
from api.events import SEP, Broadcaster, all_stream, job_stream, keep_alive
from api.strict_query import INT64_MAX
from service.jobs import lifecycle
from service.platform.config import Settings
from service.platform.events import PAYLOADS, EventKind

router = APIRouter(tags=["events"], dependencies=V1_ROUTER_DEPENDENCIES)
SHUTDOWN_GRACE_SECONDS = 2.0  # for a stream to end itself once the server is stopping

LastEventIdQuery = Annotated[
    int | None,
    Query(
        ge=0,
        le=INT64_MAX,
        description="Resume after this event id (a reconnecting EventSource sends Last-Event-ID instead)",
    ),
]
LastEventIdHeader = Annotated[
    int | None,
    Header(
        alias="Last-Event-ID", ge=0, le=INT64_MAX, description="Resume after this event id; wins over ?last_event_id="
    ),
]


def inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its $defs written in place (a $ref to #/$defs would not resolve
    inside the OpenAPI document)."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    result: dict[str, Any] = resolve(schema)
    return result


def stream_response(description: str, *, with_job: bool) -> dict[int | str, dict[str, Any]]:
    """The 200 of an event stream in the OpenAPI document: the schema of each event (as OpenAPI 3.1
    reads `schema` for text/event-stream), its data the JSON of the kind's payload."""
    kinds = (["job"] if with_job else []) + [kind.value for kind in EventKind]
    payloads = [inlined(PAYLOADS[kind].model_json_schema(mode="serialization")) for kind in EventKind]
    if with_job:
        payloads.insert(0, {"$ref": "#/components/schemas/JobRead"})
    event = {
        "type": "object",
        "required": ["event", "data", "id"],
        "properties": {
            "event": {"type": "string", "enum": kinds},
            "id": {"type": "string", "pattern": "^[0-9]+$", "description": "send back as Last-Event-ID to resume"},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": {"oneOf": payloads}},
        },
    }
    return {200: {"description": description, "content": {"text/event-stream": {"schema": event}}}}


def get_hub(request: Request) -> Broadcaster:
    hub: Broadcaster = request.app.state.events
    return hub


def response(stream: Callable[[anyio.Event], AsyncIterator[bytes]], settings: Settings) -> EventSourceResponse:
    """The stream as text/event-stream, with keep-alive comments. On the server's shutdown it ends
    itself with a comment (a response cut off instead would be logged as an error by uvicorn)."""
    shutdown = anyio.Event()
    return EventSourceResponse(
        stream(shutdown),
        ping=settings.events_ping_seconds,
        ping_message_factory=keep_alive,
        sep=SEP,
        shutdown_event=shutdown,
        shutdown_grace_period=SHUTDOWN_GRACE_SECONDS,
    )


@router.get(
    "/v1/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    responses=stream_response(
        "`job` (the job now; its id is the newest event's), then the job's events; ends after its final status",
        with_job=True,
    ),
)
def stream_job_events(
    job_id: uuid.UUID,
    request: Request,
    db: DB,
    caller: Reader,
    settings: AppSettings,
    check: CallerCheck,
    last_event_id: LastEventIdQuery = None,
    last_event_id_header: LastEventIdHeader = None,
) -> EventSourceResponse:
    """The job's changes as they happen, to its end. With an event id to resume after, the job's
    events since then instead of the snapshot (the snapshot again when they were pruned meanwhile:
    MNIST_JOBS_EVENTS_KEEP_SECONDS)."""
    with db.read() as session:
        lifecycle.get(session, str(job_id))  # a 404 problem, before the stream starts
    after = last_event_id if last_event_id_header is None else last_event_id_header
    return response(partial(job_stream, get_hub(request), db, check, caller, str(job_id), after), settings)


@router.get(
    "/v1/events",
    response_class=EventSourceResponse,
    responses=stream_response("Every job's events as they happen; the stream does not end", with_job=False),
)
def stream_events(
    request: Request,
    db: DB,
    settings: AppSettings,
    check: CallerCheck,
    last_event_id: LastEventIdQuery = None,
    last_event_id_header: LastEventIdHeader = None,
) -> EventSourceResponse:
    """Every job's changes (the dashboard's list). With an event id to resume after, the events
    since then that are still kept first (MNIST_JOBS_EVENTS_KEEP_SECONDS)."""
    after = last_event_id if last_event_id_header is None else last_event_id_header
    return response(partial(all_stream, get_hub(request), db, check, after), settings)
