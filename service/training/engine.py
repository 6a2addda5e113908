"""Train and evaluate one job on device-resident tensors, replaying the tutorial's loop exactly.

`seed = S` means what the tutorial means after `torch.manual_seed(S)`: the model is built right
after seeding, and every random draw its DataLoaders make from the global generator is made here,
in the same order, from a private copy of that generator:

- the training loader, at each epoch's first batch: the iterator's base seed, then the
  RandomSampler's seed, which seeds the CPU generator that draws `randperm(N)`;
- the test loader (the tutorial shuffles it too), at each evaluation: the same two draws.

The sample order, batches (last short batch kept), SGD and NLL loss are the tutorial's, so on the
CPU the final weights are bit-identical to its loop. The loop reads nothing but tensors: no
per-image transforms, no I/O. The caller learns of progress through a `Live` it polls, stops the
loop through `Live.request_stop` (control.py, the one stop protocol), and receives every epoch and
every stop through `Callbacks`: the same interface the packed trainer has (a single job is index 0).

A loss that is not finite fails the job through the same stop path: the trainer itself sets its
Live's stop reason to `failed` with the reason in `Live.failure` (Live.request_stop), and the loop stops at
the next step boundary with on_stop(index, Outcome.failed, checkpoint). The training loss is
checked where the loop already syncs with the device (every LOSS_REFRESH_SECONDS and at each
epoch's end), on the running sum, which stays NaN/inf once one step's loss was: the step named is
where it was noticed, not necessarily the first bad one. The test loss is checked after each
evaluation. So no NaN or inf ever becomes a metric, a progress figure or a result.

Every Live.step_losses.every steps (the worker's MNIST_JOBS_STEP_METRICS_EVERY) the step's loss is
kept as a tensor and becomes a float only at those same syncs (steps.py): recording it adds none,
and changes nothing the loop computes. Each evaluation also counts the confusion matrix; the last
epoch's goes into the TrainResult (not into EpochRecord, which checkpoints and the epochs table hold).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from service.jobs.schemas import AnySpec, EpochRecord, TrainResult
from service.platform.states import Outcome
from service.training.checkpoints import PartialEpoch, TrainingState
from service.training.control import LOSS_REFRESH_SECONDS, Callbacks, Live
from service.training.evaluation import evaluate
from service.training.nets import build_model
from service.training.steps import samples_seen, sync_figures
from service.training.tensors import MnistTensors


def _draw_seed(generator: torch.Generator) -> int:
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())


def draw_loader_seeds(generator: torch.Generator) -> int:
    """The two draws a shuffling DataLoader makes when iterated: base seed, then the sampler's seed."""
    _draw_seed(generator)  # _BaseDataLoaderIter._base_seed (used only by loader worker processes)
    return _draw_seed(generator)  # RandomSampler: seeds the generator that draws randperm


def draw_epoch_order(generator: torch.Generator, n: int) -> torch.Tensor:
    sampler_seed = draw_loader_seeds(generator)
    return torch.randperm(n, generator=torch.Generator().manual_seed(sampler_seed))


def seeded_start(spec: AnySpec) -> tuple[torch.nn.Module, torch.Generator]:
    """The model built right after torch.manual_seed(seed), and a private copy of the generator as
    it stands then (it draws every later sample order), as the tutorial's script has them."""
    torch.manual_seed(spec.trained_seed)
    model = build_model(spec)
    generator = torch.Generator()
    generator.set_state(torch.get_rng_state())
    return model, generator


def divergence(what: str, value: float, spec: AnySpec, where: str) -> str:
    """A failed job's error for a loss that is not finite, with the usual fix."""
    kind = "nan" if math.isnan(value) else "inf"
    also = " or momentum" if spec.momentum >= 0.9 else ""
    return f"the {what} loss became {kind} {where} (lr {spec.lr:g} is probably too high; try a lower lr{also})"


def train_diverged(value: float, spec: AnySpec, epoch: int, step: int, steps: int) -> str:
    return divergence("training", value, spec, f"at epoch {epoch}, step {step} of {steps}")


def test_diverged(value: float, spec: AnySpec, epoch: int) -> str:
    return divergence("test", value, spec, f"after epoch {epoch}")


def train_result(
    metrics: list[EpochRecord],
    total: int,
    train_seconds: float,
    test_seconds: float,
    device: torch.device,
    confusion: list[list[int]] | None,
) -> TrainResult:
    last = metrics[-1]
    return TrainResult(
        test_accuracy=last.test_accuracy,
        test_loss=last.test_loss,
        correct=last.correct,
        total=total,
        train_seconds=train_seconds,
        test_seconds=test_seconds,
        device=str(device),
        torch_version=torch.__version__,
        confusion=confusion,
    )


class Trainer:
    """One job's model, optimizer and private generator; `run` trains the remaining epochs."""

    def __init__(
        self,
        spec: AnySpec,
        data: MnistTensors,
        device: torch.device,
        *,
        resume: TrainingState | None = None,
        live: Live | None = None,
    ) -> None:
        """`data` is already permuted as the spec says (MnistTensors.permuted_by) and on `device`."""
        if data.permutation_seed != spec.permutation_seed:
            raise ValueError(f"data permuted by {data.permutation_seed}, the spec asks for {spec.permutation_seed}")
        self.spec, self.data, self.device = spec, data, device
        self.live = live or Live()
        self.permutation = data.permutation
        if resume is None:
            model, self.generator = seeded_start(spec)
        else:
            model = build_model(spec)
            model.load_state_dict(resume.state_dict)
            self.generator = torch.Generator()
            self.generator.set_state(resume.rng_state)
        self.model = model.to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=spec.lr, momentum=spec.momentum)
        if resume is not None:
            self.optimizer.load_state_dict(resume.optimizer)
        self.epochs_done = resume.epoch if resume else 0
        self.metrics: list[EpochRecord] = list(resume.metrics) if resume else []
        self.partial = resume.partial if resume else None
        self.train_seconds = 0.0
        self.test_seconds = 0.0
        self.confusion: list[list[int]] | None = None  # the last evaluation's

    def checkpoint(self, partial: PartialEpoch | None = None) -> TrainingState:
        return TrainingState.capture(
            self.spec,
            self.model.state_dict(),
            self.optimizer.state_dict(),
            self.epochs_done,
            self.metrics,
            self.permutation,
            self.generator,
            partial,
        )

    def run(self, callbacks: Callbacks) -> dict[int, TrainResult]:
        """Train to the spec's last epoch: {0: result}; or {} when the job stopped (on_stop was called)."""
        n = len(self.data.train_x)
        steps = -(-n // self.spec.batch_size)
        self.live.steps, self.live.epochs = steps, self.spec.epochs
        while self.epochs_done < self.spec.epochs:
            epoch = self.epochs_done + 1
            started = time.perf_counter()
            if self.partial is not None:
                order, first_step = self.partial.order, self.partial.step
                loss_sum = torch.tensor(self.partial.loss_sum, dtype=torch.float64, device=self.device)
                self.partial = None
            else:
                order, first_step = draw_epoch_order(self.generator, n), 0
                loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
            self.live.epoch, self.live.step = epoch, first_step
            stopped_at = self._train_steps(order.to(self.device), first_step, steps, loss_sum)
            self.train_seconds += time.perf_counter() - started
            (train_loss_sum,) = sync_figures(loss_sum.view(1), [self.live.step_losses])
            if stopped_at is None and not math.isfinite(train_loss_sum):
                self.live.request_stop(Outcome.failed, train_diverged(train_loss_sum, self.spec, epoch, steps, steps))
                stopped_at = steps
            if stopped_at is None:
                started = time.perf_counter()
                test_loss, correct, self.confusion = evaluate(
                    self.model, self.data.test_x, self.data.test_y, self.spec.test_batch_size
                )
                draw_loader_seeds(self.generator)  # the tutorial's shuffling test loader
                self.test_seconds += time.perf_counter() - started
                if not math.isfinite(test_loss):
                    self.live.request_stop(Outcome.failed, test_diverged(test_loss, self.spec, epoch))
                    stopped_at = steps
            if stopped_at is not None:  # asked to stop, or failed: the one stop path
                assert self.live.stop_reason is not None
                partial = PartialEpoch(stopped_at, order, train_loss_sum)
                callbacks.on_stop(0, self.live.stop_reason, self.checkpoint(partial))
                return {}

            metrics = EpochRecord(
                epoch=epoch,
                train_loss=train_loss_sum / steps,
                test_loss=test_loss,
                test_accuracy=correct / len(self.data.test_x),
                correct=correct,
            )
            self.metrics.append(metrics)
            self.epochs_done = epoch
            callbacks.on_epoch(0, metrics, self.checkpoint())
        total = len(self.data.test_x)
        return {
            0: train_result(self.metrics, total, self.train_seconds, self.test_seconds, self.device, self.confusion)
        }

    def _train_steps(self, order: torch.Tensor, first_step: int, steps: int, loss_sum: torch.Tensor) -> int | None:
        """Run the epoch's steps from `first_step`; returns the step it stopped before, if asked to stop."""
        model, optimizer, live = self.model, self.optimizer, self.live
        x, y = self.data.train_x, self.data.train_y
        batch_size, n, epoch = self.spec.batch_size, len(x), live.epoch
        model.train()
        refresh_at = time.monotonic()
        for step in range(first_step, steps):
            live.hold_lease()
            if live.stop_reason is not None:
                return step
            idx = order[step * batch_size : (step + 1) * batch_size]
            optimizer.zero_grad()
            loss = F.nll_loss(model(x[idx]), y[idx])
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
            optimizer.step()
            loss_sum += loss.detach()
            live.step = step + 1
            done = (epoch - 1) * steps + step + 1
            if live.step_losses.due(done):  # kept as a tensor: floats only where the loop syncs anyway
                live.step_losses.note(done, epoch, samples_seen(epoch, step + 1, batch_size, n), loss.detach())
            if time.monotonic() >= refresh_at:  # one device sync for both figures and the pending step losses
                stacked = torch.stack([loss_sum, loss.detach().double()])
                total, last = sync_figures(stacked, [live.step_losses])
                live.show_loss(last)
                if not math.isfinite(total):
                    live.request_stop(Outcome.failed, train_diverged(total, self.spec, epoch, step + 1, steps))
                refresh_at = time.monotonic() + LOSS_REFRESH_SECONDS
        live.hold_lease()  # and before the evaluation that ends the epoch
        return None if live.stop_reason is None else steps
