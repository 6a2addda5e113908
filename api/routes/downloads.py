"""Downloads of a job's files: its checkpoints and its model in portable formats (ONNX, safetensors).

Every file answers GET and HEAD through one function, `file_answer`, with `ETag: "<sha256>"`,
`Repr-Digest` (the whole file's sha-256, RFC 9530), a `Content-Disposition` file name, 304 for a
matching If-None-Match, and one byte range (RFC 9110 §14): `Range: bytes=a-b`, `a-` or `-n` is a 206
with Content-Range, so `curl -C -` resumes; a range that starts past the end is a 416 problem with
`Content-Range: bytes */size`; several ranges, or a Range header this server does not read, get the
whole file (200), which RFC 9110 allows. All three media types are application/octet-stream: ONNX
has no registered media type, and safetensors none either. With an object store and
MNIST_JOBS_ARTIFACTS_PRESIGN_SECONDS set, both answer 307 to a presigned URL instead, once the
object's stored checksum matched the row's.
"""

from __future__ import annotations

import base64
import re
import uuid
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Query, Request, Response

from api.deps import DB, V1_ROUTER_DEPENDENCIES, Artifacts, helper_call, read_in_thread
from api.errors import problem
from api.strict_query import INT64_MAX
from service.inference import exports
from service.inference.client import InferenceClient, ModelFormat
from service.jobs import lifecycle

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=V1_ROUTER_DEPENDENCIES)
OCTET_STREAM = "application/octet-stream"
BINARY = {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}}
# A byte range: first-last, first- or -suffix. Up to 18 digits: any file's offset fits, and a longer
# number is a header this server does not read (the whole file), never a huge int to parse.
RANGE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})")


def _header(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


FILE_HEADERS = {
    "ETag": _header('"<sha256 of the whole file, hex>"'),
    "Repr-Digest": _header("sha-256=:<base64 sha256 of the whole file>:"),
    "Content-Disposition": _header('attachment; filename="<job id>-epoch<NNN>.<pt|onnx|safetensors>"'),
    "Accept-Ranges": _header("bytes"),
}


def file_responses(what: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI answers of a file download (its errors are added by api/openapi.py)."""
    return {
        200: {"description": f"{what} (HEAD: the same headers, no body)", "content": BINARY, "headers": FILE_HEADERS},
        206: {
            "description": "The byte range the Range header asked for",
            "content": BINARY,
            "headers": {**FILE_HEADERS, "Content-Range": _header("bytes <first>-<last>/<size>")},
        },
        304: {"description": "If-None-Match named this file's ETag"},
        307: {
            "description": "With an object store and MNIST_JOBS_ARTIFACTS_PRESIGN_SECONDS set: the file is fetched "
            "from the presigned URL in Location, valid that many seconds (its ETag is the file's)",
            "headers": {"Location": _header("a presigned URL"), "ETag": FILE_HEADERS["ETag"]},
        },
        416: {"description": "The Range starts past the end of the file (Content-Range: bytes */<size>)"},
    }


class Unsatisfiable(Exception):
    """A range that starts at or past the end of the file."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single range, both included; None for the whole file."""
    if header is None:
        return None
    match = RANGE.fullmatch(header.strip())
    if match is None or not (match[1] or match[2]):  # several ranges, another unit, or not a range
        return None
    if not match[1]:  # the last n bytes
        suffix = int(match[2])
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - suffix), size - 1
    first = int(match[1])
    last = int(match[2]) if match[2] else size - 1
    if match[2] and last < first:  # not a valid range: ignored
        return None
    if first >= size:
        raise Unsatisfiable
    return first, min(last, size - 1)


def etag_matches(header: str | None, etag: str) -> bool:
    """Whether If-None-Match (a list of tags, weak ones included, or *) names `etag`."""
    if header is None:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return "*" in tags or etag in tags


def file_answer(request: Request, data: bytes, sha256: str, filename: str, media_type: str) -> Response:
    """The one answer for a downloaded file: 200/206/304/416, to GET or HEAD."""
    etag = f'"{sha256}"'
    digest = base64.b64encode(bytes.fromhex(sha256)).decode()
    headers = {"ETag": etag, "Repr-Digest": f"sha-256=:{digest}:", "Cache-Control": "private, immutable"}
    headers["Accept-Ranges"] = "bytes"
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    range_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() != etag:  # the file changed since the part the caller has
        range_header = None
    size = len(data)
    try:
        span = byte_range(range_header, size)
    except Unsatisfiable:
        answer = problem(
            416,
            "Range not satisfiable",
            f"the range {range_header!r} starts past the end of the {size}-byte file",
            field="header.range",
        )
        answer.headers.update({**headers, "Content-Range": f"bytes */{size}"})
        return answer
    headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    status, body = 200, data
    if span is not None:
        first, last = span
        status, body = 206, data[first : last + 1]
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    if request.method == "HEAD":  # the headers GET would send, the length included, and no body
        headers["Content-Length"] = str(len(body))
        return Response(status_code=status, headers=headers, media_type=media_type)
    return Response(body, status_code=status, headers=headers, media_type=media_type)


def redirect(url: str, sha256: str) -> Response:
    """To a presigned URL of the object store (MNIST_JOBS_ARTIFACTS_PRESIGN_SECONDS), checked first;
    the ETag tells the caller which bytes it will get there."""
    return Response(status_code=307, headers={"Location": url, "ETag": f'"{sha256}"', "Cache-Control": "no-store"})


def download_checkpoint(
    job_id: uuid.UUID,
    request: Request,
    db: DB,
    store: Artifacts,
    epoch: Annotated[int | None, Query(ge=1, le=INT64_MAX)] = None,
) -> Response:
    """The checkpoint file (torch.load(..., weights_only=True) opens it) of `epoch`, else of the
    latest kept epoch. GET or HEAD; one Range honoured."""
    with db.read() as session:
        saved_epoch, file = lifecycle.checkpoint(session, str(job_id), epoch)
    filename = f"{job_id}-epoch{saved_epoch:03d}.pt"
    url = lifecycle.download_url(store, saved_epoch, file, filename)
    if url is not None:
        return redirect(url, file.sha256)
    data = lifecycle.checkpoint_bytes(store, saved_epoch, file)  # small: verified whole, sent from memory
    return file_answer(request, data, file.sha256, filename, OCTET_STREAM)


async def download_model(
    job_id: uuid.UUID,
    request: Request,
    db: DB,
    store: Artifacts,
    format: Annotated[
        ModelFormat,
        Query(description="onnx: raw uint8 pixels in, log-probabilities out; safetensors: the state_dict"),
    ],
    epoch: Annotated[int | None, Query(ge=1, le=INT64_MAX)] = None,
) -> Response:
    """The model of `epoch`'s checkpoint (else the latest kept epoch's) as ONNX or safetensors, made
    on the first request and stored with the job. GET or HEAD; one Range honoured."""
    saved_epoch, checkpoint = await read_in_thread(db, lifecycle.checkpoint, str(job_id), epoch)
    found = await anyio.to_thread.run_sync(exports.stored_model, store, str(job_id), saved_epoch, checkpoint, format)
    if found is None:  # the first request: the helper exports it, through its bounded queue
        inference: InferenceClient = request.app.state.inference
        export = (store, inference, str(job_id), saved_epoch, checkpoint, format)
        found = await helper_call(request, exports.model_bytes, *export)
    file, data = found
    filename = f"{job_id}-epoch{saved_epoch:03d}.{format}"
    url = await anyio.to_thread.run_sync(lifecycle.download_url, store, saved_epoch, file, filename)
    if url is not None:
        return redirect(url, file.sha256)
    return file_answer(request, data, file.sha256, filename, OCTET_STREAM)


# GET is documented; HEAD answers the same headers without a body and stays out of the document, so
# a generated client has one operation (and one operation id) per download.
for _path, _route, _what in (
    ("/{job_id}/checkpoint", download_checkpoint, "The checkpoint file"),
    ("/{job_id}/model", download_model, "The model file"),
):
    router.add_api_route(_path, _route, methods=["GET"], response_class=Response, responses=file_responses(_what))
    router.add_api_route(_path, _route, methods=["HEAD"], response_class=Response, include_in_schema=False)
