"""Test passes: the mean NLL loss, the correct count and the confusion matrix, on the device.

Everything is summed on the device and transferred once at the end of the pass; the loss and the
count are computed as the tutorial's test loop computes them, so the accuracy stays comparable.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

CLASSES = 10


class Evaluation(NamedTuple):
    loss: float  # mean NLL
    correct: int
    confusion: list[list[int]]  # counts: row = true digit, column = predicted digit


def confusion_counts(target: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """Counts of (true, predicted) pairs at true * CLASSES + predicted, on the tensors' device (no
    sync): (CLASSES**2,) for one model's predictions (B,), or (J, CLASSES**2) for J models' (J, B)
    predictions of one target batch (B,)."""
    pairs = target * CLASSES + predicted
    if predicted.dim() == 1:
        return torch.bincount(pairs, minlength=CLASSES * CLASSES)
    jobs = len(predicted)
    offsets = torch.arange(jobs, device=pairs.device).unsqueeze(1) * (CLASSES * CLASSES)
    return torch.bincount((pairs + offsets).flatten(), minlength=jobs * CLASSES * CLASSES).view(jobs, -1)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Evaluation:
    """Mean NLL loss, the number of correct predictions and the confusion matrix over (x, y)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    confusion = torch.zeros(CLASSES * CLASSES, dtype=torch.int64, device=x.device)
    for start in range(0, len(x), batch_size):
        output = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += F.nll_loss(output, target, reduction="sum")
        predicted = output.argmax(dim=1)
        correct += (predicted == target).sum()
        confusion += confusion_counts(target, predicted)
    model.train(was_training)
    return Evaluation(loss_sum.item() / len(x), int(correct.item()), confusion.view(CLASSES, CLASSES).tolist())
