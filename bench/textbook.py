"""The tutorial's own loop: torchvision MNIST, ToTensor + Normalize per image, DataLoader, SGD.

This is the baseline the service is measured against and must match bit for bit on the CPU. Only
two things differ from the notebook, both as DESIGN.md fixes them: `torch.manual_seed(seed)` right
before the model is built, and the permutation drawn from its own seeded generator.
"""

from __future__ import annotations

import time
from collections.abc import Sized
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from service.training.nets import CNN, FC2Layer
from service.training.tensors import permutation as make_permutation

INPUT_SIZE, OUTPUT_SIZE = 28 * 28, 10


@dataclass
class TextbookResult:
    model: torch.nn.Module
    test_loss: float
    correct: int
    total: int
    seconds: float


def loaders(
    root: str, batch_size: int = 64, test_batch_size: int = 1000
) -> tuple[DataLoader[tuple[torch.Tensor, int]], DataLoader[tuple[torch.Tensor, int]]]:
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train = datasets.MNIST(root, train=True, download=False, transform=transform)
    test = datasets.MNIST(root, train=False, download=False, transform=transform)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True),
        DataLoader(test, batch_size=test_batch_size, shuffle=True),
    )


def train(model, optimizer, train_loader, perm, device):
    model.train()
    for data, target in train_loader:
        data, target = data.to(device), target.to(device)
        data = data.view(-1, 28 * 28)
        data = data[:, perm]
        data = data.view(-1, 1, 28, 28)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()


def test(model, test_loader, perm, device) -> tuple[float, int]:
    model.eval()
    test_loss = 0.0
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            data = data.view(-1, 28 * 28)
            data = data[:, perm]
            data = data.view(-1, 1, 28, 28)
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction="sum").item()
            pred = output.data.max(1, keepdim=True)[1]
            correct += pred.eq(target.data.view_as(pred)).cpu().sum().item()
    return test_loss / len(test_loader.dataset), correct


def run(
    root: str,
    architecture: str,
    seed: int,
    permutation_seed: int | None = None,
    epochs: int = 1,
    size: int | None = None,
    lr: float = 0.01,
    momentum: float = 0.5,
    device: str = "cpu",
) -> TextbookResult:
    started = time.perf_counter()
    train_loader, test_loader = loaders(root)
    perm = make_permutation(permutation_seed)
    if perm is None:
        perm = torch.arange(0, 784).long()
    torch.manual_seed(seed)
    model: torch.nn.Module
    if architecture == "fc":
        model = FC2Layer(INPUT_SIZE, size or 8, OUTPUT_SIZE)
    else:
        model = CNN(INPUT_SIZE, size or 6, OUTPUT_SIZE)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    for _ in range(epochs):
        train(model, optimizer, train_loader, perm, device)
        test_loss, correct = test(model, test_loader, perm, device)
    assert isinstance(test_loader.dataset, Sized)  # torchvision's MNIST has a length; Dataset in general need not
    return TextbookResult(model, test_loss, correct, len(test_loader.dataset), time.perf_counter() - started)
