"""/v1/jobs: submit, read, list, cancel, delete, and download checkpoints."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from api.deps import DB, V1_ROUTER_DEPENDENCIES, Admin, AppSettings, Submitter
from service import jobs
from service.auth import Caller
from service.cost import check_budget
from service.errors import Conflict, InvalidInput, NotFound, TooMany
from service.schemas import JobPage, JobRead, JobSpec
from service.states import JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=V1_ROUTER_DEPENDENCIES)
QUEUE_FULL_RETRY_SECONDS = 30


def encode_cursor(created_at: datetime, job_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created_at.isoformat(), job_id]).encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, job id) encode_cursor put in `cursor`, created_at as an aware UTC datetime;
    InvalidInput (422) for any other string: too long, not base64 of a JSON [str, str], a datetime
    without a time zone or out of range in UTC, an id that is not a UUID."""
    try:
        if len(cursor) > 200:  # ours are about 100 characters; this keeps nesting bombs from the JSON decoder
            raise ValueError
        decoded = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not (isinstance(decoded, list) and len(decoded) == 2 and all(isinstance(part, str) for part in decoded)):
            raise ValueError
        created = datetime.fromisoformat(decoded[0])
        if created.tzinfo is None:
            raise ValueError
        return created.astimezone(UTC), str(uuid.UUID(decoded[1]))
    except (ValueError, TypeError, OverflowError, RecursionError, binascii.Error):
        raise InvalidInput("cursor is not one this API gave out", field="cursor") from None


def ensure_queue_room(session: Session, caller: Caller, limit: int) -> None:
    """A token may have `limit` jobs queued or running (the open mode has no token and no limit)."""
    if caller.id is not None and jobs.active_count(session, caller.id) >= limit:
        raise TooMany(
            f"this token already has {limit} jobs queued or running, the most allowed; retry when some have ended",
            retry_after_seconds=QUEUE_FULL_RETRY_SECONDS,
        )


@router.post(
    "",
    status_code=201,
    response_model=JobRead,
    responses={200: {"description": "An earlier job with the same Idempotency-Key and body"}},
)
def submit(
    spec: JobSpec,
    response: Response,
    db: DB,
    settings: AppSettings,
    caller: Submitter,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> JobRead:
    check_budget(spec, settings.max_job_flops, settings.max_job_memory_bytes)
    with db.write() as session:
        ensure_queue_room(session, caller, settings.max_queued_per_token)
        job, created = jobs.enqueue(
            session,
            spec,
            default_max_attempts=settings.max_attempts,
            idempotency_key=idempotency_key,
            submitted_by=caller.id,
        )
        view = jobs.view(job)
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/jobs/{view.id}"
    return view


@router.get("", response_model=JobPage)
def list_jobs(
    db: DB,
    status: JobStatus | None = None,
    architecture: Literal["fc", "cnn"] | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> JobPage:
    after = decode_cursor(cursor) if cursor else None
    with db.read() as session:
        page = jobs.list_jobs(session, status=status, architecture=architecture, limit=limit + 1, cursor=after)
        items = [jobs.view(job) for job in page[:limit]]
    next_cursor = encode_cursor(items[-1].created_at, items[-1].id) if len(page) > limit else None
    return JobPage(items=items, next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobRead)
def read(job_id: uuid.UUID, db: DB) -> JobRead:
    with db.read() as session:
        return jobs.view(jobs.get(session, str(job_id)))


@router.post(
    "/{job_id}/cancel",
    response_model=JobRead,
    responses={202: {"description": "Running: the worker stops at its next step"}},
)
def cancel(job_id: uuid.UUID, response: Response, db: DB, caller: Submitter) -> JobRead:
    with db.write() as session:
        caller.require_owner(jobs.get(session, str(job_id)).submitted_by)
        view = jobs.view(jobs.cancel(session, str(job_id)))
    response.status_code = 202 if view.status is JobStatus.running else 200
    return view


@router.delete("/{job_id}", status_code=204)
def delete(job_id: uuid.UUID, db: DB, settings: AppSettings, _caller: Admin) -> Response:
    with db.write() as session:  # files first: if they stay, so does the row (a 500 naming the cause)
        jobs.delete(session, str(job_id), settings.artifacts_dir)
    return Response(status_code=204)


@router.get(
    "/{job_id}/checkpoint",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, 304: {"description": "ETag matched"}},
)
def download_checkpoint(
    job_id: uuid.UUID, request: Request, db: DB, settings: AppSettings, epoch: Annotated[int | None, Query(ge=1)] = None
) -> Response:
    with db.read() as session:
        saved_epoch, file = jobs.checkpoint(session, str(job_id), epoch)
    path, sha256 = settings.artifacts_dir / file.path, file.sha256
    etag = f'"{sha256}"'
    digest = base64.b64encode(bytes.fromhex(sha256)).decode()
    headers = {"ETag": etag, "Repr-Digest": f"sha-256=:{digest}:", "Cache-Control": "private, immutable"}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    try:
        data = path.read_bytes()  # checkpoints are small: verified whole, then sent from memory, never re-read
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise NotFound(
            f"checkpoint file for epoch {saved_epoch} is gone from the artifacts dir", field="epoch"
        ) from None
    on_disk = hashlib.sha256(data).hexdigest()
    if on_disk != sha256:
        raise Conflict(
            f"checkpoint for epoch {saved_epoch} is corrupt (sha256 {sha256} recorded, {on_disk} on disk)",
            field="epoch",
        )
    headers["Content-Disposition"] = f'attachment; filename="{job_id}-epoch{saved_epoch:03d}.pt"'
    return Response(data, media_type="application/octet-stream", headers=headers)
