"""A job's model from its safetensors file: the net rebuilt from plain PyTorch (nets.py), its
weights, and its pixel permutation, from the file's metadata alone. Needs the `torch` extra."""

from __future__ import annotations

import json
import struct

import torch
from safetensors.torch import load
from torch import nn

from mnist_jobs_client.errors import ApiError
from mnist_jobs_client.nets import CNN, FC2Layer
from mnist_jobs_client.specs import INPUT_SIZE, N_CLASSES

FORMAT = "mnist-jobs-model/1"


def metadata(data: bytes) -> dict[str, str]:
    """The file's string metadata: the JSON header after its 8-byte little-endian length."""
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    found: dict[str, str] = header.get("__metadata__") or {}
    return found


def from_safetensors(data: bytes) -> tuple[nn.Module, torch.Tensor | None]:
    """The net in eval mode on the CPU, and the permutation (None for natural pixels)."""
    meta = metadata(data)
    if meta.get("format") != FORMAT:
        raise ApiError(f"not an mnist-jobs model file (format {meta.get('format')!r}, expected {FORMAT!r})")
    spec = json.loads(meta["spec"])
    with torch.random.fork_rng(devices=[]):  # building a net draws weights: leave the caller's generator alone
        model: nn.Module
        if meta["architecture"] == "fc":
            model = FC2Layer(INPUT_SIZE, spec["n_hidden"], N_CLASSES)
        else:
            model = CNN(INPUT_SIZE, spec["n_features"], N_CLASSES)
    model.load_state_dict(load(data), strict=True)
    model.eval()
    order = json.loads(meta.get("permutation", "null"))
    if order is None and json.loads(meta.get("permutation_seed", "null")) is not None:
        seed = json.loads(meta["permutation_seed"])
        return model, torch.randperm(INPUT_SIZE, generator=torch.Generator().manual_seed(seed))
    return model, None if order is None else torch.tensor(order, dtype=torch.long)
