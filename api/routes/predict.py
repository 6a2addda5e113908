"""POST /v1/jobs/{job_id}/predict: the digit a job's latest kept checkpoint sees in one 28x28 image.

The image comes as JSON (`{"pixels": [784 ints 0..255]}`) or as a raw PNG body (image/png), made
8-bit grayscale with Pillow. The model runs in the app's inference helper process
(service/inference/client.py), so torch stays out of the API process, through the helper's bounded queue
(MNIST_JOBS_PREDICT_QUEUE_MAX; a full queue is a 503 with Retry-After): the route is async, so a
slow or stalled helper holds no request thread. Any read token may predict.
"""

from __future__ import annotations

import io
import struct
import uuid
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError

from api.deps import DB, V1_ROUTER_DEPENDENCIES, Artifacts, helper_call, read_in_thread
from service.inference.client import IMAGE_SIDE, InferenceClient, PredictRequest, PredictResponse
from service.jobs import lifecycle
from service.jobs.schemas import INPUT_SIZE

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=V1_ROUTER_DEPENDENCIES)
JSON, PNG = "application/json", "image/png"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": (
            f"One {IMAGE_SIDE}x{IMAGE_SIDE} image, white digit on black as in MNIST: JSON pixels, row by row, or "
            "a PNG of exactly that size (any mode; made 8-bit grayscale, alpha ignored)"
        ),
        "content": {
            JSON: {"schema": PredictRequest.model_json_schema()},
            PNG: {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def invalid(field: str, kind: str, message: str) -> RequestValidationError:
    """A 422 through the app's one validation-error answer, naming `field`."""
    return RequestValidationError([{"type": kind, "loc": ("body", field), "msg": message, "input": None}])


def png_pixels(data: bytes) -> list[int]:
    """The 784 grayscale values of a 28x28 PNG. The size is read from the IHDR header before
    anything is decompressed, so a small body that claims a huge image is refused unopened."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 24:
        raise invalid("image", "image_type", "the body is not a PNG image")
    width, height = struct.unpack(">II", data[16:24])
    if (width, height) != (IMAGE_SIDE, IMAGE_SIDE):
        raise invalid("image", "image_size", f"the PNG is {width}x{height} pixels; a prediction takes 28x28")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            grey = image.convert("L")  # decodes (a truncated or corrupt stream raises here)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise invalid("image", "image_corrupt", f"the PNG cannot be decoded ({type(exc).__name__})") from None
    if grey.size != (IMAGE_SIDE, IMAGE_SIDE):  # the header said 28x28; a frame or chunk said otherwise
        raise invalid("image", "image_size", f"the PNG decodes to {grey.size[0]}x{grey.size[1]} pixels, not 28x28")
    return list(grey.tobytes())


def json_pixels(body: bytes) -> list[int]:
    try:
        return PredictRequest.model_validate_json(body).pixels
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors, body=body) from None


async def sent_pixels(request: Request) -> list[int]:
    """The image of the body, by its Content-Type (BodyGuard lets only JSON and PNG through)."""
    body = await request.body()
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    pixels = png_pixels(body) if media_type == PNG else json_pixels(body)
    assert len(pixels) == INPUT_SIZE
    return pixels


@router.post("/{job_id}/predict", response_model=PredictResponse, openapi_extra=REQUEST_BODY)
async def predict(
    request: Request,
    job_id: uuid.UUID,
    pixels: Annotated[list[int], Depends(sent_pixels)],
    db: DB,
    store: Artifacts,
) -> PredictResponse:
    """The digit the job's latest kept checkpoint predicts, and the probability of each digit."""
    epoch, file = await read_in_thread(db, lifecycle.checkpoint, str(job_id), None)
    path = await anyio.to_thread.run_sync(lifecycle.checkpoint_path, store, epoch, file)
    inference: InferenceClient = request.app.state.inference
    [prediction] = await helper_call(request, inference.predict, path, file.sha256, [pixels])
    return PredictResponse(job_id=str(job_id), epoch=epoch, **prediction.model_dump())
