"""Several FC jobs of one shape trained together as one stacked model, each bit for bit as alone.

Each job keeps everything that makes it itself: its seed (its FC2Layer is built right after its own
`torch.manual_seed`), its private generator and so its own sample order, its permutation, its
momentum buffers. The network is nets.FC2Layer's: its parameters are stacked with
`torch.func.stack_module_state`, and the forward walks the template's `network` layers, applying
each Linear to all jobs at once. On the CPU every job's weights are then bit-identical to the job
trained alone (tests/unit/test_packed.py), because each stacked op computes, slice by slice, what
the single job's op computes:

- forward: `baddbmm(b, x, W^T)` equals the `addmm(b, x, W^T)` that nn.Linear runs, per slice;
  except when batch * in * out < 400, where ATen's bmm takes a naive kernel that rounds the bias
  add differently: such tiny products (a short last batch) run as one addmm per job;
- backward: nn.Linear's CPU backward computes grad_W = g^T @ x (a transposed view of g), while
  autograd of baddbmm computes (x^T @ g)^T, which rounds differently; StackedLinear does the former;
- permutations: each job gathers its own permuted pixels, x[idx_j][:, perm_j] (the single job's
  data is permuted the same way); permuting W's columns instead would change the order of the sums;
- the loss: each job's mean over its own batch, summed for one backward (its gradient is each
  job's own); the reported loss is one F.nll_loss per job, which sums in the single job's order.
  ReLU, log_softmax and SGD are elementwise or per row.

A job whose loss stops being finite (checked as the single-job loop checks it: control.Live.request_stop)
leaves the pack through the same path as a stopped one, with on_stop(j, Outcome.failed, ...); each
job's slices are computed apart from the others', so the rest of the pack goes on unchanged.
Each job's step losses (the same floats it records alone) and confusion matrix are its own too.

Checkpoints are per job and in the single-job format (FC2Layer state_dict keys, SGD state), so a
packed job resumes alone, loads into the tutorial's class, and downloads like any other.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from service.jobs.schemas import EpochRecord, FCSpec, TrainResult
from service.platform.states import Outcome
from service.training.checkpoints import PartialEpoch, TrainingState
from service.training.control import LOSS_REFRESH_SECONDS, Callbacks, Live
from service.training.engine import (
    draw_epoch_order,
    draw_loader_seeds,
    seeded_start,
    test_diverged,
    train_diverged,
    train_result,
)
from service.training.evaluation import CLASSES, confusion_counts
from service.training.steps import samples_seen, sync_figures
from service.training.tensors import N_PIXELS, MnistTensors, permutation

# ATen's bmm (aten/src/ATen/native/LinearAlgebra.cpp) uses a naive loop when contraction * rows *
# cols < 400; with a bias, that loop rounds differently from addmm.
BMM_NAIVE_LIMIT = 400


class StackedLinear(torch.autograd.Function):
    """y[j] = x[j] @ W[j].T + b[j] for x (J, B, in), W (J, out, in), b (J, out), with nn.Linear's
    CPU forward and backward reproduced per slice."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        if x.shape[1] * x.shape[2] * weight.shape[1] < BMM_NAIVE_LIMIT:
            return torch.stack([torch.addmm(bias[j], x[j], weight[j].t()) for j in range(len(x))])
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()  # the single job's upstream gradients are contiguous too
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(grad.transpose(1, 2), x)  # g^T @ x, as addmm's backward does for W.t()
        grad_b = grad.sum(1)  # addmm's bias gradient: the sum over the batch rows
        return grad_x, grad_w, grad_b


class StackedFC:
    """The J jobs' FC2Layer weights stacked along a first axis, with each job's own pixel order:
    a forward for all jobs at once, and a test pass that sums as evaluation.evaluate sums."""

    def __init__(self, models: list[nn.Module], permutations: list[torch.Tensor | None], device: torch.device):
        network = models[0].network  # the layers to walk (an FC2Layer's); its own weights are not used
        assert isinstance(network, nn.Module)
        self.layers = list(network.named_children())
        stacked, _ = torch.func.stack_module_state(models)
        self.names = list(stacked)
        self.params = [stacked[name].detach().to(device).requires_grad_() for name in self.names]
        identity = torch.arange(N_PIXELS)
        self.gather = (
            None
            if all(p is None for p in permutations)
            else torch.stack([identity if p is None else p for p in permutations]).to(device)
        )
        self.device = device

    def state_dict(self, j: int) -> dict[str, torch.Tensor]:
        """Job j's weights, under FC2Layer's state_dict keys."""
        return {name: p[j] for name, p in zip(self.names, self.params, strict=True)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (J, B, 784) -> log-probabilities (J, B, 10): FC2Layer's layers, each for every job."""
        params = dict(zip(self.names, self.params, strict=True))
        for name, layer in self.layers:
            if isinstance(layer, nn.Linear):
                x = StackedLinear.apply(x, params[f"network.{name}.weight"], params[f"network.{name}.bias"])
            elif isinstance(layer, nn.ReLU):
                x = F.relu(x)
            elif isinstance(layer, nn.LogSoftmax):
                x = F.log_softmax(x, dim=-1)
            else:
                raise TypeError(f"no stacked form for {type(layer).__name__}")
        return x

    def inputs(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Job j's images x[rows[j]] with its pixels permuted: (J, B, 784). (index_select + gather
        is about 4x faster than advanced indexing with both index tensors.)"""
        jobs, batch = rows.shape
        images = x.index_select(0, rows.reshape(-1)).view(jobs, batch, N_PIXELS)
        if self.gather is None:
            return images
        return torch.gather(images, 2, self.gather.unsqueeze(1).expand(jobs, batch, N_PIXELS))

    def evaluate(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int, go_on: Callable[[], bool] = lambda: True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per job: mean test loss (float64), correct count and confusion matrix (J, 10, 10), summed
        as evaluation.evaluate sums them. `go_on` is asked before each test batch (outside inference
        mode: it may take a job's checkpoint); once it says no, the sums are incomplete."""
        jobs = len(self.params[0])
        loss_sum = torch.zeros(jobs, dtype=torch.float64, device=self.device)
        correct = torch.zeros(jobs, dtype=torch.int64, device=self.device)
        confusion = torch.zeros(jobs, CLASSES * CLASSES, dtype=torch.int64, device=self.device)
        total = len(x)
        for start in range(0, total, batch_size):
            if not go_on():
                break
            with torch.inference_mode():
                rows = torch.arange(start, min(start + batch_size, total), device=self.device).expand(jobs, -1)
                out = self.forward(self.inputs(x, rows))
                target = y[start : start + batch_size]
                loss_sum += torch.stack([F.nll_loss(out[j], target, reduction="sum") for j in range(jobs)])
                predicted = out.argmax(-1)
                correct += (predicted == target).sum(1)
                confusion += confusion_counts(target, predicted)
        return loss_sum / total, correct, confusion.view(jobs, CLASSES, CLASSES)


class PackedFCTrainer:
    """J FC jobs with equal pack keys; `run` trains them all and reports per job index."""

    def __init__(self, specs: list[FCSpec], data: MnistTensors, device: torch.device, lives: list[Live]) -> None:
        """`data` is in natural pixel order and on `device`; each job's permutation is applied per batch."""
        assert len({spec.pack_key for spec in specs}) == 1, "a pack holds jobs of one shape and schedule"
        self.specs, self.device, self.lives = specs, device, lives
        self.x_train = data.train_x.view(len(data.train_x), N_PIXELS)
        self.x_test = data.test_x.view(len(data.test_x), N_PIXELS)
        self.y_train, self.y_test = data.train_y, data.test_y
        models, self.generators = zip(*(seeded_start(spec) for spec in specs), strict=True)
        self.permutations = [permutation(spec.permutation_seed) for spec in specs]
        self.model = StackedFC(list(models), self.permutations, device)
        self.optimizer = torch.optim.SGD(self.model.params, lr=specs[0].lr, momentum=specs[0].momentum)
        self.active = list(range(len(specs)))
        self.metrics: list[list[EpochRecord]] = [[] for _ in specs]
        self.train_seconds = 0.0
        self.test_seconds = 0.0

    def checkpoint(self, j: int, epochs_done: int, partial: PartialEpoch | None = None) -> TrainingState:
        state = self.optimizer.state_dict()
        optimizer = {
            "state": {i: {key: value[j] for key, value in slots.items()} for i, slots in state["state"].items()},
            "param_groups": state["param_groups"],
        }
        return TrainingState.capture(
            self.specs[j],
            self.model.state_dict(j),
            optimizer,
            epochs_done,
            self.metrics[j],
            self.permutations[j],
            self.generators[j],
            partial,
        )

    def run(self, callbacks: Callbacks) -> dict[int, TrainResult]:
        """Train all jobs to the last epoch. A job whose Live gets a stop_reason leaves the pack
        (on_stop gets its resumable checkpoint); the others go on. Returns results by job index."""
        spec = self.specs[0]
        n, total = len(self.x_train), len(self.x_test)
        steps = -(-n // spec.batch_size)
        for live in self.lives:
            live.steps, live.epochs = steps, spec.epochs
        for epoch in range(1, spec.epochs + 1):
            started = time.perf_counter()
            orders = torch.stack([draw_epoch_order(g, n) for g in self.generators])
            loss_sum = self._train_epoch(epoch, orders, steps, callbacks)
            self.train_seconds += time.perf_counter() - started
            train_loss_sums = sync_figures(loss_sum, [self.lives[j].step_losses for j in self.active])
            for j in self._diverged(train_loss_sums):
                self.lives[j].request_stop(
                    Outcome.failed, train_diverged(train_loss_sums[j], spec, epoch, steps, steps)
                )
                self._leave(j, epoch - 1, steps, orders, loss_sum, callbacks)
            for j in self.active:  # as after every step: no evaluation on a lease in doubt
                self.lives[j].hold_lease()
            self._drop_stopped(epoch - 1, steps, orders, loss_sum, callbacks)
            if not self.active:
                return {}

            # A pack's evaluation and epoch records take seconds on a busy CPU: a stop asked meanwhile
            # is answered between test batches and between records, not at the next epoch's first step.
            started = time.perf_counter()
            go_on = functools.partial(self._any_left, epoch - 1, steps, orders, loss_sum, callbacks)
            test_loss, correct, confusion = self.model.evaluate(self.x_test, self.y_test, spec.test_batch_size, go_on)
            self.test_seconds += time.perf_counter() - started
            test_losses = test_loss.tolist()
            for j in self._diverged(test_losses):
                self.lives[j].request_stop(Outcome.failed, test_diverged(test_losses[j], spec, epoch))
                self._leave(j, epoch - 1, steps, orders, loss_sum, callbacks)
            if not self.active:
                return {}
            for j in list(self.active):
                if self.lives[j].stop_reason is not None:
                    self._leave(j, epoch - 1, steps, orders, loss_sum, callbacks)
                    continue
                # After the job's evaluation, as the tutorial's shuffling test loader draws them; a job
                # that leaves before this resumes at the evaluation, which draws them then.
                draw_loader_seeds(self.generators[j])
                metrics = EpochRecord(
                    epoch=epoch,
                    train_loss=train_loss_sums[j] / steps,
                    test_loss=test_losses[j],
                    test_accuracy=int(correct[j]) / total,
                    correct=int(correct[j]),
                )
                self.metrics[j].append(metrics)
                callbacks.on_epoch(j, metrics, self.checkpoint(j, epoch))
        confusions = confusion.tolist()  # the last epoch's, for every job in one transfer
        return {
            j: train_result(self.metrics[j], total, self.train_seconds, self.test_seconds, self.device, confusions[j])
            for j in self.active
        }

    def _diverged(self, values: list[float]) -> list[int]:
        """The jobs still in the pack whose figure in `values` (one per job) is not finite."""
        return [j for j in self.active if not math.isfinite(values[j])]

    def _train_epoch(self, epoch: int, orders: torch.Tensor, steps: int, callbacks: Callbacks) -> torch.Tensor:
        """One epoch's steps for the whole pack; returns each job's summed training loss (float64)."""
        batch_size, jobs, n = self.specs[0].batch_size, len(self.specs), len(self.x_train)
        orders_on_device = orders.to(self.device)
        for live in self.lives:  # as the single-job loop does: progress names the epoch from its start
            live.epoch, live.step = epoch, 0
        loss_sum = torch.zeros(jobs, dtype=torch.float64, device=self.device)
        refresh_at = time.monotonic()
        for step in range(steps):
            for j in self.active:
                self.lives[j].hold_lease()
            self._drop_stopped(epoch - 1, step, orders, loss_sum, callbacks)
            if not self.active:
                break
            rows = orders_on_device[:, step * batch_size : (step + 1) * batch_size]
            out = self.model.forward(self.model.inputs(self.x_train, rows))
            target = self.y_train[rows]
            # Each job's mean over its batch: the gradient is exactly F.nll_loss's (1/B at the targets),
            # but the batched mean sums in another order, so the reported values come from one
            # F.nll_loss per job, outside autograd.
            batched = F.nll_loss(out.flatten(0, 1), target.flatten(), reduction="none").view(jobs, -1).mean(1)
            self.optimizer.zero_grad()
            batched.sum().backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
            self.optimizer.step()
            with torch.no_grad():
                losses = torch.stack([F.nll_loss(out[j], target[j]) for j in range(jobs)])
            loss_sum += losses
            for live in self.lives:
                live.epoch, live.step = epoch, step + 1
            done = (epoch - 1) * steps + step + 1
            for j in self.active:  # a due step's loss is kept as a tensor: floats only where the loop syncs anyway
                if self.lives[j].step_losses.due(done):
                    self.lives[j].step_losses.note(done, epoch, samples_seen(epoch, step + 1, batch_size, n), losses[j])
            if time.monotonic() >= refresh_at:  # one device sync for every job's two figures and step losses
                figures = sync_figures(
                    torch.cat([loss_sum, losses.double()]), [self.lives[j].step_losses for j in self.active]
                )
                sums, lasts = figures[:jobs], figures[jobs:]
                for j in self.active:
                    self.lives[j].show_loss(lasts[j])
                for j in self._diverged(sums):
                    self.lives[j].request_stop(
                        Outcome.failed, train_diverged(sums[j], self.specs[j], epoch, step + 1, steps)
                    )
                refresh_at = time.monotonic() + LOSS_REFRESH_SECONDS
        return loss_sum

    def _drop_stopped(
        self, epochs_done: int, step: int, orders: torch.Tensor, loss_sum: torch.Tensor, callbacks: Callbacks
    ) -> None:
        for j in list(self.active):
            if self.lives[j].stop_reason is not None:
                self._leave(j, epochs_done, step, orders, loss_sum, callbacks)

    def _any_left(
        self, epochs_done: int, step: int, orders: torch.Tensor, loss_sum: torch.Tensor, callbacks: Callbacks
    ) -> bool:
        self._drop_stopped(epochs_done, step, orders, loss_sum, callbacks)
        return bool(self.active)

    def _leave(
        self, j: int, epochs_done: int, step: int, orders: torch.Tensor, loss_sum: torch.Tensor, callbacks: Callbacks
    ) -> None:
        """Job j leaves the pack at `step` for its Live's stop reason (the one stop path)."""
        reason = self.lives[j].stop_reason
        assert reason is not None
        self.active.remove(j)
        (job_loss_sum,) = sync_figures(loss_sum[j].view(1), [self.lives[j].step_losses])
        partial = PartialEpoch(step, orders[j].clone(), job_loss_sum)
        callbacks.on_stop(j, reason, self.checkpoint(j, epochs_done, partial))
