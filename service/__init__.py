"""mnist-jobs: train small PyTorch models (FC vs CNN on MNIST) as queued jobs."""

from importlib import metadata

__version__ = metadata.version("mnist-jobs")
