"""Several FC jobs of one shape trained together as one stacked model (batched matmuls).

Each job keeps everything that makes it itself: its seed (its model is built right after its own
`torch.manual_seed`), its private generator and so its own sample order, its permutation, its
momentum buffers. The loss is the SUM of the jobs' mean losses, so each job's gradient is exactly
the gradient of its own loss (a mean would divide every job's learning rate by the pack size), and
SGD being elementwise, one step over the stacked parameters is each job's own step.

Permutations cost nothing per step: permuting a job's input pixels by p is the same as permuting
the columns of its first weight matrix by p's inverse, so every job trains on the natural images
with its first layer stored column-permuted, and checkpoints turn it back. (The sums then run in
another order, so packed weights match a job trained alone to float rounding, not bit for bit.)

Checkpoints are per job and in the single-job format (FC2Layer state_dict keys, SGD state), so a
packed job resumes alone, loads into the tutorial's class, and downloads like any other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from service.training.data import MnistTensors, permutation
from service.training.engine import FORMAT_VERSION, Live, to_cpu, draw_epoch_order, draw_loader_seeds
from service.training.nets import build_model

PARAM_NAMES = ("network.0.weight", "network.0.bias", "network.2.weight", "network.2.bias",
               "network.4.weight", "network.4.bias")
LOSS_REFRESH_SECONDS = 0.25


def packable(spec: dict[str, Any]) -> bool:
    """Only FC packs: on the CPU the CNN's time goes to per-element work (pooling, convolution)
    that stacking does not shrink (see bench/RESULTS.md)."""
    return spec["architecture"] == "fc"


@dataclass
class PackedStop:
    index: int
    reason: str
    checkpoint: dict[str, Any]


class PackedFCTrainer:
    def __init__(self, specs: list[dict[str, Any]], data: MnistTensors, device: torch.device,
                 lives: list[Live]) -> None:
        self.specs, self.device, self.lives = specs, device, lives
        self.data = data  # natural pixel order; each job's permutation is applied per batch
        stacked: list[list[torch.Tensor]] = [[] for _ in PARAM_NAMES]
        self.generators = []
        for spec in specs:
            torch.manual_seed(spec["seed"])
            model = build_model(spec)
            generator = torch.Generator()
            generator.set_state(torch.get_rng_state())
            self.generators.append(generator)
            for slot, tensor in zip(stacked, model.state_dict().values()):
                slot.append(tensor)
        self.permutations = [permutation(spec["permutation_seed"]) for spec in specs]
        for j, perm in enumerate(self.permutations):
            if perm is not None:
                stacked[0][j] = stacked[0][j][:, torch.argsort(perm)]
        self.params = [torch.stack(slot).to(device).requires_grad_() for slot in stacked]
        first = specs[0]
        self.optimizer = torch.optim.SGD(self.params, lr=first["lr"], momentum=first["momentum"])
        self.active = list(range(len(specs)))
        self.metrics: list[list[dict[str, Any]]] = [[] for _ in specs]
        self.train_seconds = 0.0
        self.test_seconds = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (J, B, 784) -> log-probabilities (J, B, 10), FC2Layer for every job at once."""
        w1, b1, w2, b2, w3, b3 = self.params
        h = F.relu(torch.baddbmm(b1.unsqueeze(1), x, w1.transpose(1, 2)))
        h = F.relu(torch.baddbmm(b2.unsqueeze(1), h, w2.transpose(1, 2)))
        return F.log_softmax(torch.baddbmm(b3.unsqueeze(1), h, w3.transpose(1, 2)), dim=-1)

    def _job_tensor(self, j: int, param_index: int, tensor: torch.Tensor) -> torch.Tensor:
        """Job j's slice of a stacked parameter (or its momentum), first layer back in pixel order."""
        perm = self.permutations[j]
        if param_index == 0 and perm is not None:
            return tensor[j][:, perm.to(tensor.device)]
        return tensor[j]

    def checkpoint(self, j: int, epochs_done: int, partial: dict[str, Any] | None = None) -> dict[str, Any]:
        state = self.optimizer.state_dict()
        optimizer = {
            "state": {i: {name: self._job_tensor(j, i, value) for name, value in s.items()}
                      for i, s in state["state"].items()},
            "param_groups": state["param_groups"],
        }
        return {
            "format_version": FORMAT_VERSION,
            "spec": dict(self.specs[j]),
            "state_dict": to_cpu({name: self._job_tensor(j, i, p) for i, (name, p) in enumerate(zip(PARAM_NAMES, self.params))}),
            "optimizer": to_cpu(optimizer),
            "epoch": epochs_done,
            "metrics": list(self.metrics[j]),
            "permutation": self.permutations[j],
            "rng_state": self.generators[j].get_state(),
            "partial": partial,
        }

    @torch.inference_mode()
    def evaluate(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per job: mean test loss and correct count."""
        x, y = self.data.test_x.view(len(self.data.test_x), -1), self.data.test_y
        jobs = len(self.specs)
        loss_sum = torch.zeros(jobs, dtype=torch.float64, device=self.device)
        correct = torch.zeros(jobs, dtype=torch.int64, device=self.device)
        for start in range(0, len(x), batch_size):
            images = x[start : start + batch_size].expand(jobs, -1, -1)
            target = y[start : start + batch_size]
            out = self.forward(images)
            loss_sum += F.nll_loss(out.transpose(1, 2), target.expand(jobs, -1), reduction="none").sum(1)
            correct += (out.argmax(-1) == target).sum(1)
        return loss_sum / len(x), correct

    def run(self, on_epoch: Callable[[int, dict[str, Any], dict[str, Any]], None],
            on_stop: Callable[[PackedStop], None]) -> dict[int, dict[str, Any]]:
        """Train all jobs to the last epoch. A job whose Live gets a stop_reason leaves the pack
        (on_stop gets its resumable checkpoint); the others go on. Returns results by job index."""
        self._on_stop = on_stop
        spec = self.specs[0]
        batch_size, jobs = spec["batch_size"], len(self.specs)
        x, y = self.data.train_x.view(len(self.data.train_x), -1), self.data.train_y
        n = len(x)
        steps = -(-n // batch_size)
        for live in self.lives:
            live.steps, live.epochs = steps, spec["epochs"]
        for epoch in range(1, spec["epochs"] + 1):
            started = time.perf_counter()
            orders = torch.stack([draw_epoch_order(g, n) for g in self.generators])
            orders_on_device = orders.to(self.device)
            loss_sum = torch.zeros(jobs, dtype=torch.float64, device=self.device)
            refresh_at = time.monotonic()
            for step in range(steps):
                self._drop_stopped(epoch - 1, step, orders, loss_sum)
                if not self.active:
                    return {}
                idx = orders_on_device[:, step * batch_size : (step + 1) * batch_size].reshape(-1)
                out = self.forward(x.index_select(0, idx).view(jobs, -1, x.shape[1]))
                target = y.index_select(0, idx).view(jobs, -1)
                losses = F.nll_loss(out.reshape(-1, out.shape[-1]), target.reshape(-1), reduction="none").view(jobs, -1).mean(1)
                self.optimizer.zero_grad()
                losses.sum().backward()
                self.optimizer.step()
                loss_sum += losses.detach()
                for live in self.lives:
                    live.epoch, live.step = epoch, step + 1
                if time.monotonic() >= refresh_at:
                    for live, value in zip(self.lives, losses.tolist()):
                        live.loss = value
                    refresh_at = time.monotonic() + LOSS_REFRESH_SECONDS
            self.train_seconds += time.perf_counter() - started

            started = time.perf_counter()
            test_loss, correct = self.evaluate(spec["test_batch_size"])
            for generator in self.generators:
                draw_loader_seeds(generator)  # the tutorial's shuffling test loader
            self.test_seconds += time.perf_counter() - started
            total = len(self.data.test_x)
            for j in list(self.active):
                row = {"epoch": epoch, "train_loss": loss_sum[j].item() / steps, "test_loss": test_loss[j].item(),
                       "test_accuracy": int(correct[j]) / total, "correct": int(correct[j])}
                self.metrics[j].append(row)
                on_epoch(j, row, self.checkpoint(j, epoch))
        return {j: {"test_accuracy": self.metrics[j][-1]["test_accuracy"], "test_loss": self.metrics[j][-1]["test_loss"],
                    "correct": self.metrics[j][-1]["correct"], "total": len(self.data.test_x),
                    "train_seconds": self.train_seconds, "test_seconds": self.test_seconds}
                for j in self.active}

    def _drop_stopped(self, epochs_done: int, step: int, orders: torch.Tensor, loss_sum: torch.Tensor) -> None:
        for j in list(self.active):
            reason = self.lives[j].stop_reason
            if reason is not None:
                self.active.remove(j)
                partial = {"step": step, "order": orders[j].clone(), "loss_sum": loss_sum[j].item()}
                self._on_stop(PackedStop(j, reason, self.checkpoint(j, epochs_done, partial)))
