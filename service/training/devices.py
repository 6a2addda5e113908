"""Where training runs: the device a worker asks for, and torch's process-wide settings."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available")
    return device


def configure_torch(threads: int) -> None:
    torch.set_num_threads(threads)
    # Full float32 on GPUs: TF32 would change the numbers the tutorial's loop computes.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
