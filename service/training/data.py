"""Find, verify and load the MNIST IDX files (torchvision's layout), and turn them into tensors.

Files live in DATA_DIR/<Folder>/raw/ as raw IDX or `.gz`; a `.gz` is decompressed next to itself
(atomically). Every raw file is checked against a pinned sha256 before torchvision reads it.
"""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision import datasets

from service.config import Settings
from service.errors import DataUnavailable
from service.storage import atomic_path, sha256_file

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# Normalisation of the tutorial's transforms.Normalize((0.1307,), (0.3081,)).
MEAN, STD = 0.1307, 0.3081


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    folder: str  # torchvision's folder under DATA_DIR
    loader: type[datasets.MNIST]
    sha256: dict[str, str]  # of the decompressed files


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        folder="MNIST",
        loader=datasets.MNIST,
        sha256={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataUnavailable(f"unknown data set {name!r}; known: {', '.join(DATASETS)}", field="dataset") from None


def raw_dir(settings: Settings, name: str) -> Path:
    return settings.data_dir / dataset_info(name).folder / "raw"


def pinned_sha256(settings: Settings, name: str) -> dict[str, str]:
    return {**dataset_info(name).sha256, **settings.data_checksums.get(name, {})}


def ensure_files(settings: Settings, name: str) -> Path:
    """Make the four raw files present and verified in the data dir, or say exactly what is wrong."""
    folder = raw_dir(settings, name)
    pins = pinned_sha256(settings, name)
    for file in FILES:
        path = folder / file
        gz = path.with_name(file + ".gz")
        if not path.exists() and gz.exists():
            with atomic_path(path) as tmp, gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        if not path.exists():
            raise DataUnavailable(
                f"data set {name!r}: {path} is missing (expected it raw or as {gz.name}). "
                f"Put the four MNIST IDX files in {folder} or point MNIST_JOBS_DATA_DIR at a folder that has "
                f"{dataset_info(name).folder}/raw/."
            )
        digest = sha256_file(path)
        if digest != pins[file]:
            raise DataUnavailable(
                f"data set {name!r}: {path} is corrupt (sha256 {digest}, expected {pins[file]}). "
                "Delete it and put a good copy in its place."
            )
    return folder


@dataclass
class MnistTensors:
    """The whole data set, normalised, as (N, 1, 28, 28) float32 images and int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def to(self, device: torch.device) -> MnistTensors:
        return MnistTensors(*(t.to(device) for t in (self.train_x, self.train_y, self.test_x, self.test_y)))

    def permuted(self, permutation: torch.Tensor) -> MnistTensors:
        """Every image's flattened pixels reordered by `permutation`, done once per data set."""

        def apply(x: torch.Tensor) -> torch.Tensor:
            return x.view(len(x), -1)[:, permutation.to(x.device)].view_as(x).contiguous()

        return MnistTensors(apply(self.train_x), self.train_y, apply(self.test_x), self.test_y)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28), with the exact float ops of ToTensor + Normalize."""
    x = images.unsqueeze(1).to(torch.float32).div(255)
    mean = torch.as_tensor((MEAN,), dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor((STD,), dtype=torch.float32).view(-1, 1, 1)
    return x.sub_(mean).div_(std)


def load_tensors(settings: Settings, name: str) -> MnistTensors:
    """Verify the files, read them with torchvision's own loader, and normalise (on the CPU)."""
    ensure_files(settings, name)
    loader = dataset_info(name).loader
    train = loader(str(settings.data_dir), train=True, download=False)
    test = loader(str(settings.data_dir), train=False, download=False)
    return MnistTensors(normalise(train.data), train.targets.long(), normalise(test.data), test.targets.long())


def permutation(seed: int | None) -> torch.Tensor | None:
    """The fixed pixel shuffle for a permutation seed: the same on every machine (CPU generator)."""
    if seed is None:
        return None
    return torch.randperm(28 * 28, generator=torch.Generator().manual_seed(seed))
