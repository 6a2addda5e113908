"""IDX files -> normalised tensors with torchvision's own loader, and the fixed pixel permutation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import overload

import torch

from service.datasets.catalog import dataset_info, prepare
from service.platform.config import Settings

# Normalisation of the tutorial's transforms.Normalize((0.1307,), (0.3081,)).
MEAN, STD = 0.1307, 0.3081
N_PIXELS = 28 * 28


@dataclass
class MnistTensors:
    """The whole data set, normalised, as (N, 1, 28, 28) float32 images and int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    permutation_seed: int | None = None  # the pixel order applied (permuted_by); None: natural pixels
    permutation: torch.Tensor | None = None  # that order, as permutation(permutation_seed) computed it

    def to(self, device: torch.device) -> MnistTensors:
        train_x, train_y, test_x, test_y = (
            t.to(device) for t in (self.train_x, self.train_y, self.test_x, self.test_y)
        )
        return MnistTensors(train_x, train_y, test_x, test_y, self.permutation_seed, self.permutation)

    def permuted_by(self, seed: int | None) -> MnistTensors:
        """Every image's flattened pixels reordered by the permutation of `seed` (itself for None),
        once per data set and seed; the copy carries the order, so the jobs that train on it take
        it from there for their checkpoints instead of computing it again."""
        if seed is None:
            return self
        if self.permutation_seed is not None:
            raise ValueError("this data set is already permuted")
        order = permutation(seed)

        def apply(x: torch.Tensor) -> torch.Tensor:
            return x.view(len(x), -1)[:, order.to(x.device)].view_as(x).contiguous()

        return MnistTensors(apply(self.train_x), self.train_y, apply(self.test_x), self.test_y, seed, order)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28), with the exact float ops of ToTensor + Normalize."""
    x = images.unsqueeze(1).to(torch.float32).div(255)
    mean = torch.as_tensor((MEAN,), dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor((STD,), dtype=torch.float32).view(-1, 1, 1)
    return x.sub_(mean).div_(std)


def load_tensors(settings: Settings, name: str) -> MnistTensors:
    """Verify the files, read them with torchvision's own loader, and normalise (on the CPU)."""
    # Imported here: torchvision pulls in torch._dynamo (~2.5 s), which the inference helper, that
    # only needs normalise and permutation, should not pay at every start.
    from torchvision import datasets

    prepare(settings, name)
    loader: type[datasets.MNIST] = getattr(datasets, dataset_info(name).folder)  # MNIST, FashionMNIST
    train = loader(str(settings.data_dir), train=True, download=False)
    test = loader(str(settings.data_dir), train=False, download=False)
    return MnistTensors(normalise(train.data), train.targets.long(), normalise(test.data), test.targets.long())


@overload
def permutation(seed: int) -> torch.Tensor: ...
@overload
def permutation(seed: None) -> None: ...
@overload
def permutation(seed: int | None) -> torch.Tensor | None: ...


def permutation(seed: int | None) -> torch.Tensor | None:
    """The fixed pixel shuffle for a permutation seed: the same on every machine (CPU generator)."""
    if seed is None:
        return None
    return torch.randperm(N_PIXELS, generator=torch.Generator().manual_seed(seed))
