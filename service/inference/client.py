"""Predictions for the API without torch in its process: a client for the inference helper.

The helper (service/inference/helper.py) is one child process per client, started on first use,
speaking line-delimited JSON over its stdin/stdout; the models below are both sides' contract.
Calls take turns (a lock). A call waits at most `timeout_seconds` for its turn (then 503, the helper
left alone), and at most `timeout_seconds` for its answer, the helper's start included: past that
the helper is killed, and the next call starts a fresh one. A helper found dead (EOF, broken pipe)
is restarted once and the request retried. Errors arrive as the service's own exceptions, with no
server path in them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

import service

# one definition each, the client's; the helper and the routes import them from here
from mnist_jobs_client.predictions import Prediction as Prediction
from mnist_jobs_client.predictions import PredictResponse as PredictResponse
from service.jobs.schemas import INPUT_SIZE, SEED_MAX
from service.platform.config import Settings
from service.platform.errors import (
    CheckpointCorrupt,
    Conflict,
    InvalidInput,
    NotFound,
    PredictionUnavailable,
    ServiceError,
)
from service.storage.store import name_folders

log = logging.getLogger(__name__)

IMAGE_SIDE = 28  # pixels; an image is IMAGE_SIDE x IMAGE_SIDE = INPUT_SIZE values, row by row
PERMUTATIONS_KEPT = 64  # permutations cached by a client (784 ints each)
MAX_REPLY_BYTES = 8 << 20  # a reply line longer than this means the helper is out of step

Pixel = Annotated[int, Field(strict=True, ge=0, le=255)]  # strict: true and 1.0 are not pixels
Pixels = Annotated[list[Pixel], Field(min_length=INPUT_SIZE, max_length=INPUT_SIZE)]


class PredictRequest(BaseModel):
    """POST /v1/jobs/{id}/predict as JSON: one 28x28 grayscale image, row by row (0 = black)."""

    model_config = ConfigDict(extra="forbid")
    pixels: Pixels = Field(description=f"{INPUT_SIZE} integers 0..255, row by row, as in MNIST's files")


# The helper's protocol: one request per line in, one reply per line out.
class PredictOp(BaseModel):
    op: Literal["predict"]
    checkpoint: str  # absolute path
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    pixels: list[Pixels] = Field(min_length=1)


class PermutationOp(BaseModel):
    op: Literal["permutation"]
    seed: int = Field(strict=True, ge=0, le=SEED_MAX)


ModelFormat = Literal["onnx", "safetensors"]  # the portable formats a checkpoint's model exports to


class ExportOp(BaseModel):
    op: Literal["export"]
    checkpoint: str  # absolute path
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    format: ModelFormat
    job_id: str  # written into the safetensors metadata
    target: str  # absolute path the export is written to (with its sha256 beside it)


HelperRequest = Annotated[PredictOp | PermutationOp | ExportOp, Field(discriminator="op")]
ErrorKind = Literal["corrupt", "missing", "invalid", "diverged", "internal"]


class PredictReply(BaseModel):
    ok: Literal[True]
    predictions: list[Prediction]


class PermutationReply(BaseModel):
    ok: Literal[True]
    permutation: list[int] = Field(min_length=INPUT_SIZE, max_length=INPUT_SIZE)


class ExportReply(BaseModel):
    ok: Literal[True]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)


class ErrorReply(BaseModel):
    ok: Literal[False] = False
    error: str
    kind: ErrorKind


Reply = TypeVar("Reply", bound=BaseModel)


class _HelperDied(Exception):
    """EOF or a broken pipe: the helper is gone (restart once and retry)."""


class InferenceClient:
    """One helper process, one request at a time (a lock: FastAPI runs sync routes in threads)."""

    def __init__(self, max_models: int, timeout_seconds: float, export_timeout_seconds: float | None = None) -> None:
        self.max_models = max_models
        self.timeout_seconds = timeout_seconds
        self.export_timeout_seconds = export_timeout_seconds or timeout_seconds
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = bytearray()
        self._permutations: OrderedDict[int, list[int]] = OrderedDict()
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings) -> InferenceClient:
        return cls(settings.predict_models_max, settings.predict_timeout_seconds, settings.export_timeout_seconds)

    @property
    def pid(self) -> int | None:
        """The helper's process id while one runs (for logs and tests)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def predict(self, checkpoint: Path, sha256: str, pixels: list[list[int]]) -> list[Prediction]:
        """One prediction per image of `pixels` (each 784 ints 0..255) from the checkpoint file."""
        request = {"op": "predict", "checkpoint": str(checkpoint.absolute()), "sha256": sha256, "pixels": pixels}
        reply = self._call(request, PredictReply, checkpoint)
        if len(reply.predictions) != len(pixels):
            raise PredictionUnavailable("the prediction helper answered for another number of images")
        return reply.predictions

    def permutation(self, seed: int) -> list[int]:
        """The pixel permutation of `seed` (service.training.tensors.permutation), as a list."""
        with self._lock:
            cached = self._permutations.get(seed)
            if cached is not None:
                self._permutations.move_to_end(seed)
                return list(cached)
        reply = self._call({"op": "permutation", "seed": seed}, PermutationReply, None)
        with self._lock:
            self._permutations[seed] = reply.permutation
            while len(self._permutations) > PERMUTATIONS_KEPT:
                self._permutations.popitem(last=False)
        return list(reply.permutation)

    def export(self, checkpoint: Path, sha256: str, fmt: ModelFormat, job_id: str, target: Path) -> ExportReply:
        """Have the helper write the checkpoint's model as `fmt` to `target` (once: a valid export
        already there is kept), with the export's sha256 beside it."""
        request = {"op": "export", "checkpoint": str(checkpoint.absolute()), "sha256": sha256, "format": fmt}
        request |= {"job_id": job_id, "target": str(target.absolute())}
        return self._call(request, ExportReply, checkpoint, self.export_timeout_seconds)

    def close(self) -> None:
        """Stop the helper (EOF first, so it exits on its own; killed if it does not). Idempotent."""
        with self._lock:
            self._closed = True
            self._stop(graceful=True)

    def _call(
        self, request: dict[str, Any], expected: type[Reply], checkpoint: Path | None, timeout: float | None = None
    ) -> Reply:
        timeout_seconds = timeout or self.timeout_seconds
        setting = "EXPORT" if request["op"] == "export" else "PREDICT"
        line = json.dumps(request, separators=(",", ":")).encode() + b"\n"
        # Waiting for the calls ahead is bounded apart from the exchange's own deadline: a call that
        # waited long must not then find a healthy helper "hung" and kill it.
        if not self._lock.acquire(timeout=timeout_seconds):
            raise PredictionUnavailable(
                f"the prediction helper was busy for {timeout_seconds:g} s with earlier calls; retry later"
            )
        try:
            if self._closed:
                raise PredictionUnavailable("the server is shutting down")
            deadline = time.monotonic() + timeout_seconds
            for attempt in (1, 2):
                try:
                    raw = self._exchange(line, deadline)
                    break
                except _HelperDied as died:
                    self._stop(graceful=False)
                    if attempt == 2:
                        raise PredictionUnavailable(f"the prediction helper stopped twice in a row ({died})") from None
                    log.warning("the inference helper had stopped (%s); starting a new one", died)
                except TimeoutError:
                    self._stop(graceful=False)  # a hung helper: the next call starts a fresh one
                    raise PredictionUnavailable(
                        f"the {request['op']} took over {timeout_seconds:g} s (MNIST_JOBS_{setting}_TIMEOUT_SECONDS); "
                        "the helper was stopped and the next call starts a new one"
                    ) from None
            return self._reply(raw, expected, checkpoint)
        finally:
            self._lock.release()

    def _reply(self, raw: bytes, expected: type[Reply], checkpoint: Path | None) -> Reply:
        """The reply `raw` as `expected`, or the service's exception for a helper's error."""
        try:
            decoded = json.loads(raw)
            if isinstance(decoded, dict) and decoded.get("ok") is False:
                error = _error(ErrorReply.model_validate(decoded), checkpoint)
            else:
                return expected.model_validate(decoded)
        except (ValueError, ValidationError):  # ValidationError is a ValueError; both named for the reader
            self._stop(graceful=False)  # out of step with us: start clean
            raise PredictionUnavailable("the prediction helper sent a reply this server does not understand") from None
        raise error

    def _started(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._stop(graceful=False)
        # The package's own folder on the path: the helper imports it wherever the server's cwd is.
        env = dict(os.environ, OMP_NUM_THREADS="1")
        root = str(Path(service.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        command = [sys.executable, "-m", "service.inference.helper", "--max-models", str(self.max_models)]
        try:  # stderr is the server's own: the helper's logs land in the server's log
            self._proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0)
        except OSError as exc:
            raise PredictionUnavailable(f"the prediction helper could not start ({type(exc).__name__})") from None
        assert self._proc.stdin is not None
        os.set_blocking(self._proc.stdin.fileno(), False)  # writes wait in the selector, up to the deadline
        log.info("started the inference helper (pid %d)", self._proc.pid)
        return self._proc

    def _exchange(self, line: bytes, deadline: float) -> bytes:
        """Send one request line and read one reply line, all before `deadline` (TimeoutError)."""
        proc = self._started()
        assert proc.stdin is not None
        assert proc.stdout is not None
        stdin, stdout = proc.stdin.fileno(), proc.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(stdin, selectors.EVENT_WRITE)
            view = memoryview(line)
            while view:
                _wait(selector, deadline)
                try:
                    view = view[os.write(stdin, view) :]
                except BlockingIOError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    raise _HelperDied(_exit_status(proc)) from None
            selector.unregister(stdin)
            selector.register(stdout, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                _wait(selector, deadline)
                chunk = os.read(stdout, 1 << 16)
                if not chunk:
                    raise _HelperDied(_exit_status(proc))
                self._buffer += chunk
                if len(self._buffer) > MAX_REPLY_BYTES:
                    raise _HelperDied("a reply line without an end")
        end = self._buffer.index(b"\n")
        raw = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return raw

    def _stop(self, *, graceful: bool) -> None:
        proc, self._proc = self._proc, None
        self._buffer.clear()
        if proc is None:
            return
        if graceful and proc.stdin is not None:
            proc.stdin.close()  # EOF: the helper's loop ends
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def _exit_status(proc: subprocess.Popen[bytes]) -> str:
    try:
        return f"exit code {proc.wait(timeout=1)}"
    except subprocess.TimeoutExpired:
        return "its output closed"


def _wait(selector: selectors.BaseSelector, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0 or not selector.select(left):
        raise TimeoutError


def _error(reply: ErrorReply, checkpoint: Path | None) -> ServiceError:
    """The service's exception for a helper's error, naming the checkpoint's file but not its folder."""
    folders: list[tuple[Path | None, str]] = [] if checkpoint is None else [(checkpoint.parent, "<checkpoint folder>")]
    text = name_folders(reply.error, folders)
    if reply.kind == "missing":
        return NotFound(f"the checkpoint file is gone from the artifacts dir: {text}", field="epoch")
    if reply.kind == "corrupt":
        return CheckpointCorrupt(f"the checkpoint cannot be used: {text}", field="epoch")
    if reply.kind == "diverged":
        return Conflict(text, field="epoch")
    if reply.kind == "invalid":
        return InvalidInput(text, field="pixels" if checkpoint is not None else "seed")
    return PredictionUnavailable(f"the prediction failed: {text}")
