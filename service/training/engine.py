"""Train and evaluate one job on device-resident tensors, replaying the tutorial's loop exactly.

`seed = S` means what the tutorial means after `torch.manual_seed(S)`: the model is built right
after seeding, and every random draw its DataLoaders make from the global generator is made here,
in the same order, from a private copy of that generator:

- the training loader, at each epoch's first batch: the iterator's base seed, then the
  RandomSampler's seed, which seeds the CPU generator that draws `randperm(N)`;
- the test loader (the tutorial shuffles it too), at each evaluation: the same two draws.

The sample order, batches (last short batch kept), SGD and NLL loss are the tutorial's, so on the
CPU the final weights are bit-identical to its loop. The loop reads nothing but tensors: no
per-image transforms, no I/O; the caller learns of progress through a `Live` it polls.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from service.training.data import MnistTensors
from service.training.nets import build_model

FORMAT_VERSION = 1
LOSS_REFRESH_SECONDS = 0.25  # how often the loop turns its loss into a float (a device sync on GPUs)


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


def _draw_seed(generator: torch.Generator) -> int:
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())


def draw_loader_seeds(generator: torch.Generator) -> int:
    """The two draws a shuffling DataLoader makes when iterated: base seed, then the sampler's seed."""
    _draw_seed(generator)  # _BaseDataLoaderIter._base_seed (used only by loader worker processes)
    return _draw_seed(generator)  # RandomSampler: seeds the generator that draws randperm


def draw_epoch_order(generator: torch.Generator, n: int) -> torch.Tensor:
    sampler_seed = draw_loader_seeds(generator)
    return torch.randperm(n, generator=torch.Generator().manual_seed(sampler_seed))


@dataclass
class Live:
    """Shared between the training loop and whoever watches it (a heartbeat thread)."""

    epoch: int = 0
    step: int = 0
    steps: int = 0
    epochs: int = 1
    loss: float | None = None
    stop_reason: str | None = None  # set by the watcher: the loop stops at the next step boundary

    def fraction(self) -> float:
        done = (self.epoch - 1) * self.steps + self.step if self.epoch else 0
        return min(1.0, done / max(1, self.epochs * self.steps))


class Interrupted(Exception):
    """Training stopped at a step boundary; `checkpoint` resumes it exactly."""

    def __init__(self, reason: str, checkpoint: dict[str, Any]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.checkpoint = checkpoint


def to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_cpu(v) for v in obj]
    return obj


@torch.inference_mode()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, int]:
    """Mean NLL loss and the number of correct predictions over (x, y)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for start in range(0, len(x), batch_size):
        output = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += F.nll_loss(output, target, reduction="sum")
        correct += (output.argmax(dim=1) == target).sum()
    model.train(was_training)
    return loss_sum.item() / len(x), int(correct.item())


@dataclass
class Trainer:
    """One job's model, optimizer and private generator; `run` trains the remaining epochs."""

    spec: dict[str, Any]
    data: MnistTensors  # already permuted (if the spec says so) and on `device`
    device: torch.device
    permutation: torch.Tensor | None = None
    resume: dict[str, Any] | None = None
    live: Live = field(default_factory=Live)

    def __post_init__(self) -> None:
        if self.resume is None:
            torch.manual_seed(self.spec["seed"])
            model = build_model(self.spec)
            self.generator = torch.Generator()
            self.generator.set_state(torch.get_rng_state())
        else:
            model = build_model(self.spec)
            model.load_state_dict(self.resume["state_dict"])
            self.generator = torch.Generator()
            self.generator.set_state(self.resume["rng_state"])
        self.model = model.to(self.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.spec["lr"], momentum=self.spec["momentum"])
        if self.resume is not None:
            self.optimizer.load_state_dict(self.resume["optimizer"])
        self.epochs_done: int = self.resume["epoch"] if self.resume else 0
        self.metrics: list[dict[str, Any]] = list(self.resume["metrics"]) if self.resume else []
        self.partial: dict[str, Any] | None = self.resume.get("partial") if self.resume else None
        self.train_seconds = 0.0
        self.test_seconds = 0.0

    def checkpoint(self, partial: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything needed to load the model elsewhere or to resume training bit-exactly."""
        return {
            "format_version": FORMAT_VERSION,
            "spec": dict(self.spec),
            "state_dict": to_cpu(self.model.state_dict()),
            "optimizer": to_cpu(self.optimizer.state_dict()),
            "epoch": self.epochs_done,
            "metrics": list(self.metrics),
            "permutation": self.permutation,
            "rng_state": self.generator.get_state(),
            "partial": partial,
        }

    def run(self, on_epoch: Callable[[dict[str, Any], dict[str, Any]], None]) -> dict[str, Any]:
        """Train to the spec's last epoch; call `on_epoch(metrics, checkpoint)` after each one."""
        batch_size = self.spec["batch_size"]
        n = len(self.data.train_x)
        steps = -(-n // batch_size)
        live = self.live
        live.steps, live.epochs = steps, self.spec["epochs"]
        while self.epochs_done < self.spec["epochs"]:
            epoch = self.epochs_done + 1
            started = time.perf_counter()
            if self.partial is not None:
                order, first_step = self.partial["order"], self.partial["step"]
                loss_sum = torch.tensor(self.partial["loss_sum"], dtype=torch.float64, device=self.device)
                self.partial = None
            else:
                order, first_step = draw_epoch_order(self.generator, n), 0
                loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
            order_on_device = order.to(self.device)
            live.epoch, live.step = epoch, first_step
            self._train_steps(order, order_on_device, first_step, steps, loss_sum)
            self.train_seconds += time.perf_counter() - started

            started = time.perf_counter()
            test_loss, correct = evaluate(self.model, self.data.test_x, self.data.test_y, self.spec["test_batch_size"])
            draw_loader_seeds(self.generator)  # the tutorial's shuffling test loader
            self.test_seconds += time.perf_counter() - started
            row = {
                "epoch": epoch,
                "train_loss": loss_sum.item() / steps,
                "test_loss": test_loss,
                "test_accuracy": correct / len(self.data.test_x),
                "correct": correct,
            }
            self.metrics.append(row)
            self.epochs_done = epoch
            on_epoch(row, self.checkpoint())
        last = self.metrics[-1]
        return {
            "test_accuracy": last["test_accuracy"],
            "test_loss": last["test_loss"],
            "correct": last["correct"],
            "total": len(self.data.test_x),
            "train_seconds": self.train_seconds,
            "test_seconds": self.test_seconds,
        }

    def _train_steps(self, order, order_on_device, first_step: int, steps: int, loss_sum: torch.Tensor) -> None:
        model, optimizer, live = self.model, self.optimizer, self.live
        x, y = self.data.train_x, self.data.train_y
        batch_size = self.spec["batch_size"]
        model.train()
        refresh_at = time.monotonic()
        for step in range(first_step, steps):
            if live.stop_reason is not None:
                partial = {"step": step, "order": order, "loss_sum": loss_sum.item()}
                raise Interrupted(live.stop_reason, self.checkpoint(partial))
            idx = order_on_device[step * batch_size : (step + 1) * batch_size]
            data, target = x[idx], y[idx]
            optimizer.zero_grad()
            loss = F.nll_loss(model(data), target)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            live.step = step + 1
            if time.monotonic() >= refresh_at:
                live.loss = loss.item()
                refresh_at = time.monotonic() + LOSS_REFRESH_SECONDS
