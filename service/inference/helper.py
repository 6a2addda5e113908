"""The inference helper: the one process that runs models for the API, which never imports torch.

`python -m service.inference.helper --max-models N` reads one JSON request per line on stdin and
writes one JSON reply per line on stdout (the contract is in service/inference/client.py, which starts it):

    {"op": "predict", "checkpoint": "/abs/epoch-001-ab12cd34.pt", "sha256": "<hex>", "pixels": [[784 ints]]}
      -> {"ok": true, "predictions": [{"digit": 7, "probabilities": [10 floats]}]}
    {"op": "permutation", "seed": 42} -> {"ok": true, "permutation": [784 ints]}
    {"op": "export", "checkpoint": "/abs/epoch-001-ab12cd34.pt", "sha256": "<hex>", "format": "onnx",
     "job_id": "<uuid>", "target": "/abs/models/epoch-001-<hex>.onnx"}
      -> {"ok": true, "sha256": "<hex>", "size_bytes": 41062}
    anything that fails -> {"ok": false, "error": "...", "kind": "corrupt|missing|invalid|diverged|internal"}

A failed request never ends the loop and never puts a traceback on stdout (tracebacks go to stderr,
the server's log). It exits at EOF, so it never outlives the API process that holds its stdin.
Images get exactly the training preprocessing: pixels / 255, Normalize(0.1307, 0.3081), then the
job's permutation of the flattened pixels. Models stay loaded in an LRU of --max-models entries.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch
from pydantic import BaseModel, TypeAdapter, ValidationError
from torch import nn

from service.inference.client import (
    IMAGE_SIDE,
    ErrorKind,
    ErrorReply,
    ExportOp,
    ExportReply,
    HelperRequest,
    PermutationOp,
    PermutationReply,
    Prediction,
    PredictOp,
    PredictReply,
)
from service.inference.exports import SIDECAR, stored_export
from service.jobs.schemas import INPUT_SIZE
from service.platform.errors import CheckpointCorrupt
from service.storage.store import LocalStore, StoredFile
from service.training import checkpoints, export
from service.training.nets import build_model
from service.training.tensors import normalise, permutation

log = logging.getLogger("service.inference.helper")
requests: TypeAdapter[PredictOp | PermutationOp | ExportOp] = TypeAdapter(HelperRequest)


class Refused(Exception):
    """A request this helper answers with an error reply of `kind`."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind, self.message = kind, message


@dataclass(frozen=True)
class Loaded:
    model: nn.Module  # in eval mode
    permutation: torch.Tensor | None


class Models:
    """Loaded models by (checkpoint path, sha256), the least recently used dropped past `max_models`."""

    def __init__(self, max_models: int) -> None:
        self.max_models = max_models
        self.cache: OrderedDict[tuple[str, str], Loaded] = OrderedDict()

    def get(self, path: str, sha256: str) -> Loaded:
        key = (path, sha256)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        loaded = load(Path(path), sha256)
        self.cache[key] = loaded
        while len(self.cache) > self.max_models:
            self.cache.popitem(last=False)
        return loaded

    def predict(self, op: PredictOp) -> list[Prediction]:
        loaded = self.get(op.checkpoint, op.sha256)
        images = torch.tensor(op.pixels, dtype=torch.uint8).view(len(op.pixels), IMAGE_SIDE, IMAGE_SIDE)
        x = normalise(images)  # (N, 1, 28, 28), the float ops training used
        if loaded.permutation is not None:  # as MnistTensors.permuted does to the training data
            x = x.view(len(x), -1)[:, loaded.permutation].view_as(x)
        with torch.inference_mode():
            log_probabilities = loaded.model(x)
        if not bool(torch.isfinite(log_probabilities).all()):
            raise Refused("diverged", "the model's output is not finite: its training diverged (NaN weights)")
        probabilities = log_probabilities.exp()
        digits = log_probabilities.argmax(dim=1)
        return [
            Prediction(digit=int(digit), probabilities=row)
            for digit, row in zip(digits.tolist(), probabilities.tolist(), strict=True)
        ]


@contextlib.contextmanager
def refusals(path: Path) -> Iterator[None]:
    """Failures to open a checkpoint as Refused replies that name the file, never its folder."""
    try:
        yield
    except Refused:
        raise
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise Refused("missing", f"{path.name} is not there") from None
    except CheckpointCorrupt as exc:
        raise Refused("corrupt", exc.detail) from None
    except Exception as exc:  # anything else that comes out of a file whose sha256 matched: not a checkpoint of ours
        log.warning("%s cannot be loaded", path, exc_info=True)
        raise Refused(
            "corrupt", f"{path.name} is not a checkpoint this service can load ({type(exc).__name__})"
        ) from None


def check_permutation(path: Path, perm: torch.Tensor | None) -> None:
    if perm is not None and not (
        perm.dtype == torch.int64
        and perm.shape == (INPUT_SIZE,)
        and torch.equal(perm.sort().values, torch.arange(INPUT_SIZE))
    ):
        raise Refused("corrupt", f"{path.name} holds a permutation that is not one of {INPUT_SIZE} pixels")


def load(path: Path, sha256: str) -> Loaded:
    """The job's model and permutation from its checkpoint, through the service's one loader (sha256
    checked first, then torch.load(weights_only=True))."""
    with refusals(path):
        state = checkpoints.load(LocalStore(path.parent), StoredFile(path.name, sha256))
        model = build_model(state.spec)
        model.load_state_dict(state.state_dict)
        perm = state.permutation if state.permutation is not None else permutation(state.spec.permutation_seed)
    check_permutation(path, perm)
    model.eval()
    return Loaded(model, perm)


def export_model(op: ExportOp) -> ExportReply:
    """Write the checkpoint's model as op.format to op.target, then its sha256 beside it (the
    sidecar marks a finished file); an intact export already there is kept as it is."""
    target, source = Path(op.target), Path(op.checkpoint)
    folder = LocalStore(target.parent)
    found = stored_export(folder, target.name)
    if found is None:
        with refusals(source):
            state = checkpoints.load(LocalStore(source.parent), StoredFile(source.name, op.sha256))
            check_permutation(source, export.pixel_order(state))
        data = export.export(state, op.format, op.job_id)  # a failure here is ours, not the file's: "internal"
        written = folder.put(target.name, data)
        folder.put(target.name + SIDECAR, written.sha256.encode())
        found = written, data
    file, data = found
    return ExportReply(ok=True, sha256=file.sha256, size_bytes=len(data))


def answer(models: Models, line: bytes) -> BaseModel:
    """The reply to one request line; every failure becomes an ErrorReply."""
    try:
        op = requests.validate_json(line)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "request"
        return ErrorReply(error=f"not a request this helper takes: {where}: {first['msg']}", kind="invalid")
    try:
        if isinstance(op, PermutationOp):
            return PermutationReply(ok=True, permutation=permutation(op.seed).tolist())
        if isinstance(op, ExportOp):
            return export_model(op)
        return PredictReply(ok=True, predictions=models.predict(op))
    except Refused as exc:
        return ErrorReply(error=exc.message, kind=exc.kind)
    except Exception as exc:
        log.exception("request %s failed", op.op)
        return ErrorReply(error=f"{type(exc).__name__} in the prediction helper", kind="internal")


def serve(models: Models, lines: TextIO, replies: TextIO) -> None:
    for line in lines.buffer:
        if line.strip():
            replies.write(answer(models, line).model_dump_json() + "\n")
            replies.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.inference.helper", description=__doc__)
    parser.add_argument("--max-models", type=int, default=8, help="models kept loaded (least recently used go)")
    args = parser.parse_args(argv)
    if args.max_models < 1:
        parser.error("--max-models must be at least 1")
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s inference helper: %(message)s")
    # Ctrl-C in a terminal reaches the whole process group: the API shuts down and closes our
    # stdin, and that EOF is how this process ends, after the request in flight.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)  # tiny models, one request at a time: threads cost more than they give
    replies, sys.stdout = sys.stdout, sys.stderr  # a stray print must never corrupt the protocol
    serve(Models(args.max_models), sys.stdin, replies)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    # Nothing is left to clean up, and torch's interpreter teardown takes seconds: the server's
    # shutdown (and a test's) need not wait for it.
    os._exit(code)
