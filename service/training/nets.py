"""The seed's two networks: one definition, the client's plain-PyTorch one (mnist_jobs_client.nets,
the tutorial's class layout, so state_dict keys match its code), built here from a job's spec."""

from __future__ import annotations

from torch import nn

from mnist_jobs_client.nets import CNN, FC2Layer
from service.jobs.schemas import INPUT_SIZE, N_CLASSES, AnySpec, FCSpec

__all__ = ["CNN", "FC2Layer", "build_model"]


def build_model(spec: AnySpec) -> nn.Module:
    """The network a spec describes, built on the CPU from the global generator (as the tutorial does)."""
    if isinstance(spec, FCSpec):
        return FC2Layer(INPUT_SIZE, spec.n_hidden, N_CLASSES)
    return CNN(INPUT_SIZE, spec.n_features, N_CLASSES)
