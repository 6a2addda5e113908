"""Packed FC jobs train as one stacked model and give each job, bit for bit, what it gets alone."""

from __future__ import annotations

import pytest
import torch

from service.platform.states import Outcome
from service.training.control import Live
from service.training.packed import PackedFCTrainer
from service.training.tensors import load_tensors
from tests.support.training import CPU, Recorded, StopAt, make_spec, reloaded, trainer_for

pytestmark = pytest.mark.usefixtures("one_thread")


def pack_specs(size: int, epochs: int = 2):
    """`size` FC jobs of one shape, each its own seed, every other one with its own permutation."""
    return [
        make_spec("fc", permutation_seed=(100 + j if j % 2 else None), epochs=epochs, seed=j + 1) for j in range(size)
    ]


def resumed_and_straight(settings, spec, state):
    """The job resumed from `state` and the same job trained straight through, once each: the same
    bits, weights and metrics (asserted here), and both trainers for further checks."""
    resumed = trainer_for(settings, spec, resume=reloaded(state))
    resumed.run(Recorded())
    straight = trainer_for(settings, spec)
    straight.run(Recorded())
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
    assert resumed.metrics == straight.metrics
    return resumed, straight


@pytest.mark.parametrize("size", [1, 2, 7])
def test_every_tensor_of_a_packed_job_equals_the_job_trained_alone(settings, size):
    specs = pack_specs(size)
    packed = Recorded()
    results = PackedFCTrainer(specs, load_tensors(settings, "mnist"), CPU, [Live() for _ in specs]).run(packed)
    assert sorted(results) == list(range(size))

    for j, spec in enumerate(specs):
        alone = Recorded()
        expected = trainer_for(settings, spec).run(alone)[0]
        assert results[j].correct == expected.correct and results[j].test_loss == expected.test_loss
        for (ours_metrics, ours), (theirs_metrics, theirs) in zip(packed.epochs[j], alone.epochs[0], strict=True):
            assert ours_metrics == theirs_metrics, "train loss, test loss and accuracy, exactly"
            assert list(ours.state_dict) == list(theirs.state_dict)  # the tutorial's FC2Layer keys
            for name, tensor in theirs.state_dict.items():
                assert torch.equal(ours.state_dict[name], tensor), (j, name)
            for index, slots in theirs.optimizer["state"].items():
                assert torch.equal(ours.optimizer["state"][index]["momentum_buffer"], slots["momentum_buffer"])
            assert ours.optimizer["param_groups"] == theirs.optimizer["param_groups"]
            assert torch.equal(ours.rng_state, theirs.rng_state)


@pytest.mark.parametrize("stop_at", [(2, 0), (2, 4)], ids=["between-epochs", "mid-epoch"])
def test_a_packed_job_resumes_alone_from_its_checkpoint_to_the_same_bits(settings, stop_at):
    specs = pack_specs(3, epochs=3)  # job 1 is permuted
    lives = [Live(), StopAt(*stop_at), Live()]  # as a SIGTERM would stop it
    recorded = Recorded()
    results = PackedFCTrainer(specs, load_tensors(settings, "mnist"), CPU, lives).run(recorded)
    assert sorted(results) == [0, 2], "the others carry on"
    reason, state = recorded.stops[1]
    assert reason is Outcome.handed_back and state.epoch == 1
    assert state.partial is not None and state.partial.step == stop_at[1]

    resumed_and_straight(settings, specs[1], state)


def test_a_job_stopped_before_its_first_step_leaves_the_pack_with_its_start_state(settings):
    specs = pack_specs(2, epochs=1)
    lives = [Live(), Live()]
    lives[1].request_stop(Outcome.cancelled)
    recorded = Recorded()
    results = PackedFCTrainer(specs, load_tensors(settings, "mnist"), CPU, lives).run(recorded)
    assert list(results) == [0] and list(recorded.stops) == [1]
    reason, state = recorded.stops[1]
    assert reason is Outcome.cancelled and state.epoch == 0 and state.partial is not None and state.partial.step == 0
    assert results[0].correct == trainer_for(settings, specs[0]).run(Recorded())[0].correct


class StopsAnother(Recorded):
    """Callbacks that ask job `then` to stop once job `first`'s epoch is recorded: as a heartbeat
    would while the pack records its epoch (or evaluates it)."""

    def __init__(self, lives: list[Live], first: int, then: int) -> None:
        super().__init__()
        self.lives, self.first, self.then = lives, first, then

    def on_epoch(self, index: int, metrics, checkpoint) -> None:
        super().on_epoch(index, metrics, checkpoint)
        if index == self.first:
            self.lives[self.then].request_stop(Outcome.handed_back)


def test_a_stop_asked_while_the_pack_ends_its_epoch_leaves_unrecorded_and_resumes_to_the_same_bits(settings):
    specs = pack_specs(3, epochs=2)  # job 1 is permuted
    lives = [Live() for _ in specs]
    recorded = StopsAnother(lives, first=0, then=1)
    results = PackedFCTrainer(specs, load_tensors(settings, "mnist"), CPU, lives).run(recorded)
    assert sorted(results) == [0, 2], "the others carry on"
    assert 1 not in recorded.epochs, "a job asked to stop records no more epochs"
    reason, state = recorded.stops[1]
    assert reason is Outcome.handed_back and state.epoch == 0
    assert state.partial is not None and state.partial.step == lives[1].steps, "at its evaluation"

    resumed, straight = resumed_and_straight(settings, specs[1], state)
    assert torch.equal(resumed.generator.get_state(), straight.generator.get_state())
