"""A loss that stops being finite fails the job at that point; in a pack only that job leaves."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import torch

from service.jobs.schemas import FCSpec
from service.platform.states import Outcome
from service.training.control import Live
from service.training.packed import PackedFCTrainer
from service.training.tensors import load_tensors
from tests.support.training import CPU, Recorded, make_spec, trainer_for

pytestmark = pytest.mark.usefixtures("one_thread")

# On the fixture data, this shape diverges with seed 1 within 2 epochs (its test loss becomes NaN
# after epoch 2 while its training loss is still finite) and trains with seed 2.
SHAPE: dict[str, Any] = {"n_hidden": 64, "lr": 1.0, "momentum": 0.99, "epochs": 2}
ERROR = re.compile(
    r"the (training loss became (nan|inf) at epoch [12], step \d+ of 10|test loss became (nan|inf) after epoch [12]) "
    r"\(lr 1 is probably too high; try a lower lr or momentum\)"
)


def test_a_diverging_job_fails_with_the_epoch_step_and_a_hint(settings):
    live = Live()
    recorded = Recorded()
    results = trainer_for(settings, make_spec("fc", seed=1, **SHAPE), live=live).run(recorded)
    assert results == {}
    reason, _ = recorded.stops[0]
    assert reason is Outcome.failed
    assert live.failure is not None and ERROR.fullmatch(live.failure), live.failure
    for metrics, _ in recorded.epochs.get(0, []):  # epochs before it diverged are finite
        assert math.isfinite(metrics.train_loss) and math.isfinite(metrics.test_loss)
    assert live.loss is None or math.isfinite(live.loss)


def test_the_issues_nan_spec_fails_at_its_first_epoch(settings):
    live = Live()
    recorded = Recorded()
    spec = make_spec("fc", seed=3, n_hidden=1024, lr=10, momentum=0.999)
    assert trainer_for(settings, spec, live=live).run(recorded) == {}
    assert recorded.stops[0][0] is Outcome.failed and 0 not in recorded.epochs
    assert live.failure is not None and live.failure.startswith("the training loss became nan at epoch 1, step ")
    assert live.failure.endswith("(lr 10 is probably too high; try a lower lr or momentum)")


def test_a_cancel_already_asked_for_wins_over_a_divergence():
    live = Live(stop_reason=Outcome.cancelled)
    live.request_stop(Outcome.failed, "the training loss became nan")
    assert live.stop_reason is Outcome.cancelled and live.failure is None
    handing_back = Live(stop_reason=Outcome.handed_back)
    handing_back.request_stop(Outcome.failed, "the training loss became nan")
    assert handing_back.stop_reason is Outcome.failed, "a diverged job is not resumed"


def test_in_a_pack_only_the_diverged_job_leaves_and_the_other_is_bit_identical_to_alone(settings):
    specs = [make_spec("fc", seed=1, **SHAPE), make_spec("fc", seed=2, permutation_seed=5, **SHAPE)]
    assert all(isinstance(spec, FCSpec) for spec in specs)
    lives = [Live(), Live()]
    packed = Recorded()
    results = PackedFCTrainer(
        [s for s in specs if isinstance(s, FCSpec)], load_tensors(settings, "mnist"), CPU, lives
    ).run(packed)
    assert list(results) == [1] and list(packed.stops) == [0]
    assert packed.stops[0][0] is Outcome.failed
    assert lives[0].failure is not None and ERROR.fullmatch(lives[0].failure), lives[0].failure
    assert lives[1].failure is None

    alone = Recorded()
    expected = trainer_for(settings, specs[1]).run(alone)[0]
    assert results[1].correct == expected.correct and results[1].test_loss == expected.test_loss
    for (ours_metrics, ours), (theirs_metrics, theirs) in zip(packed.epochs[1], alone.epochs[0], strict=True):
        assert ours_metrics == theirs_metrics
        for name, tensor in theirs.state_dict.items():
            assert torch.equal(ours.state_dict[name], tensor), name
    assert len(packed.epochs[1]) == 2


def test_out_of_memory_is_a_readable_failure(settings, db):
    from workers.runner import failure_message, is_out_of_memory

    cuda = torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 35.16 GiB. GPU 0 has a total capacity of 8 GiB"
    )
    cpu = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 37748736000 bytes.")
    assert is_out_of_memory(cuda) and is_out_of_memory(cpu) and not is_out_of_memory(RuntimeError("shape mismatch"))
    assert failure_message(cuda, [], CPU, settings) == (
        "out of memory on cpu: CUDA out of memory. Tried to allocate 35.16 GiB. GPU 0 has a total capacity of 8 GiB; "
        "lower batch_size, test_batch_size or the model size (n_hidden / n_features)"
    )
    assert failure_message(cpu, [], CPU, settings).startswith(
        "out of memory on cpu: DefaultCPUAllocator: can't allocate memory"
    )


@pytest.mark.parametrize(
    ("first", "then", "stands"),
    [
        (None, Outcome.cancelled, Outcome.cancelled),
        (Outcome.handed_back, Outcome.cancelled, Outcome.handed_back),  # the hand-back turns into a cancel in SQL
        (Outcome.cancelled, Outcome.handed_back, Outcome.cancelled),
        (Outcome.handed_back, Outcome.failed, Outcome.failed),
        (Outcome.failed, Outcome.cancelled, Outcome.failed),
        (Outcome.cancelled, Outcome.lease_lost, Outcome.lease_lost),
        (Outcome.failed, Outcome.lease_lost, Outcome.lease_lost),
        (Outcome.lease_lost, Outcome.failed, Outcome.lease_lost),
        (Outcome.lease_lost, Outcome.handed_back, Outcome.lease_lost),
    ],
)
def test_the_one_stop_protocol_decides_which_reason_stands(first, then, stands):
    live = Live()
    if first is not None:
        assert live.request_stop(first, "why" if first is Outcome.failed else None)
    assert live.request_stop(then, "diverged") is (stands is then and first is not then)
    assert live.stop_reason is stands
    assert (live.failure is not None) is (Outcome.failed in (first, stands)), "a failure keeps its reason"
