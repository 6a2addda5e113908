"""A checkpoint's model in two portable formats, so it runs without this project's code.

- ONNX (opset ONNX_OPSET): one graph from raw IDX pixels to log-probabilities. Its input `pixels`
  is uint8, `[N, 28, 28]` or `[N, 1, 28, 28]` (N dynamic; the declared shape is cleared so both
  ranks pass onnxruntime's checks, and the graph reshapes to `[-1, 784]` first). Inside: float / 255,
  Normalize(MEAN, STD), the job's pixel permutation as a Gather with a constant index, the CNN's
  reshape back to `[N, 1, 28, 28]`, the net. Output `log_probabilities`: float32 `[N, 10]`.
- safetensors: the net's `state_dict` under the tutorial's keys (service/training/nets.py), float32
  and contiguous, with METADATA_KEYS as string metadata (spec, normalisation, permutation).

Opset 18: the one torch's exporter writes natively (an older one would be a conversion after the
fact), and onnxruntime has run it since 1.14, so a downloaded model opens in runtimes years old.
"""

from __future__ import annotations

import json
import warnings

import torch
from safetensors.torch import save as save_safetensors
from torch import nn

from service.inference.client import ModelFormat
from service.jobs.schemas import INPUT_SIZE, FCSpec
from service.training.checkpoints import TrainingState
from service.training.nets import build_model
from service.training.tensors import MEAN, STD, permutation

ONNX_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "pixels", "log_probabilities"
MODEL_FORMAT = "mnist-jobs-model/1"  # the safetensors metadata's `format`; readers check it
METADATA_KEYS = (
    "format",
    "job_id",
    "epoch",
    "architecture",
    "spec",
    "normalize_mean",
    "normalize_std",
    "permutation_seed",
    "permutation",
    "torch_version",
)
HEADER_LENGTH_BYTES = 8  # a safetensors file starts with its JSON header's length, little-endian
EXAMPLE_BATCH = 2  # the example input's batch; any size > 1 keeps the exporter from fixing N to it


class Pipeline(nn.Module):
    """The job's whole test-time pipeline, from uint8 pixels to log-probabilities."""

    pixel_order: torch.Tensor  # buffers, registered below
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, net: nn.Module, pixel_order: torch.Tensor | None, images: bool) -> None:
        super().__init__()
        self.net = net
        self.images = images  # the CNN takes [N, 1, 28, 28]; the FC net flattens whatever it gets
        self.permute = pixel_order is not None
        self.register_buffer("pixel_order", pixel_order if pixel_order is not None else torch.arange(INPUT_SIZE))
        # The constants as float32 tensors, so the graph does the very float ops of normalise().
        self.register_buffer("mean", torch.tensor(MEAN, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(STD, dtype=torch.float32))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.reshape(-1, INPUT_SIZE).to(torch.float32).div(255).sub(self.mean).div(self.std)
        if self.permute:
            x = torch.index_select(x, 1, self.pixel_order)  # one Gather on axis 1
        if self.images:
            x = x.reshape(-1, 1, 28, 28)
        out: torch.Tensor = self.net(x)
        return out


def pixel_order(state: TrainingState) -> torch.Tensor | None:
    """The job's permutation of the flattened pixels: the checkpoint's own, else its seed's."""
    if state.permutation is not None:
        return state.permutation.to(torch.int64)
    return permutation(state.spec.permutation_seed)


def model_of(state: TrainingState) -> nn.Module:
    """The service's own net class with the checkpoint's weights, in eval mode."""
    model = build_model(state.spec)
    model.load_state_dict(state.state_dict, strict=True)
    return model.eval()


def onnx_bytes(state: TrainingState) -> bytes:
    pipeline = Pipeline(model_of(state), pixel_order(state), images=not isinstance(state.spec, FCSpec)).eval()
    example = torch.zeros(EXAMPLE_BATCH, 28, 28, dtype=torch.uint8)
    with warnings.catch_warnings():  # the exporter's progress notes are not ours to show
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            pipeline,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"pixels": {0: torch.export.Dim("N")}},
            opset_version=ONNX_OPSET,
            dynamo=True,
            verbose=False,
        )
    assert program is not None
    proto = program.model_proto
    # The exporter declares [N, 28, 28]; clearing the shape lets [N, 1, 28, 28] in as well (the
    # graph's first op reshapes either to [-1, 784]).
    (graph_input,) = proto.graph.input
    graph_input.type.tensor_type.ClearField("shape")
    return bytes(proto.SerializeToString())


def safetensors_bytes(state: TrainingState, job_id: str) -> bytes:
    weights = {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in state.state_dict.items()}
    order = pixel_order(state)
    spec = state.spec
    metadata = {
        "format": MODEL_FORMAT,
        "job_id": job_id,
        "epoch": str(state.epoch),
        "architecture": spec.architecture,
        "spec": spec.model_dump_json(),
        "normalize_mean": str(MEAN),
        "normalize_std": str(STD),
        "permutation_seed": json.dumps(spec.permutation_seed),
        "permutation": "null" if order is None else json.dumps(order.tolist()),
        "torch_version": torch.__version__,
    }
    assert tuple(metadata) == METADATA_KEYS
    return canonical_header(save_safetensors(weights, metadata))


def canonical_header(data: bytes) -> bytes:
    """`data` with its JSON header's keys sorted. safetensors writes them in hash-map order, which
    changes from call to call; sorted, the same checkpoint always exports the same bytes (and ETag).
    Offsets count from the header's end, so only the header changes; it stays space-padded to 8."""
    length = int.from_bytes(data[:HEADER_LENGTH_BYTES], "little")
    header = json.loads(data[HEADER_LENGTH_BYTES : HEADER_LENGTH_BYTES + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(HEADER_LENGTH_BYTES, "little") + text + data[HEADER_LENGTH_BYTES + length :]


def export(state: TrainingState, fmt: ModelFormat, job_id: str) -> bytes:
    """The checkpoint's model as `fmt`'s bytes."""
    if fmt == "onnx":
        return onnx_bytes(state)
    return safetensors_bytes(state, job_id)
