"""The engine replays the tutorial's loop bit for bit, and resumes bit for bit from a checkpoint."""

from __future__ import annotations

import pytest
import torch

from bench import textbook
from service.platform.errors import CheckpointCorrupt
from service.platform.states import Outcome
from service.storage.store import LocalStore, StoredFile
from service.training import checkpoints
from service.training.evaluation import evaluate
from service.training.nets import build_model
from service.training.tensors import load_tensors, permutation
from tests.support.training import Recorded, StopAt, make_spec, reloaded, saved, trainer_for

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("architecture", ["fc", "cnn"])
@pytest.mark.parametrize("permutation_seed", [None, 42])
def test_final_weights_are_bit_identical_to_the_textbook_loop(settings, mnist_data, architecture, permutation_seed):
    spec = make_spec(architecture, permutation_seed, epochs=2)
    trainer = trainer_for(settings, spec)
    result = trainer.run(Recorded())[0]

    reference = textbook.run(str(mnist_data[0]), architecture, seed=7, permutation_seed=permutation_seed, epochs=2)

    ours, theirs = trainer.model.state_dict(), reference.model.state_dict()
    assert list(ours) == list(theirs)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), f"{name} differs from the textbook loop"
    assert result.correct == reference.correct
    assert result.total == reference.total == 200


def test_a_different_seed_gives_different_weights(settings):
    a = trainer_for(settings, make_spec("fc", seed=1))
    b = trainer_for(settings, make_spec("fc", seed=2))
    a.run(Recorded()), b.run(Recorded())
    assert not torch.equal(a.model.state_dict()["network.0.weight"], b.model.state_dict()["network.0.weight"])


def test_permutation_is_fixed_by_its_seed_and_differs_between_seeds():
    assert torch.equal(permutation(42), permutation(42))
    assert not torch.equal(permutation(42), permutation(43))
    assert sorted(permutation(42).tolist()) == list(range(784))
    assert permutation(None) is None


@pytest.mark.parametrize("architecture", ["fc", "cnn"])
def test_resume_from_a_stop_between_epochs_matches_an_uninterrupted_run(settings, architecture):
    spec = make_spec(architecture, 3, epochs=3)
    straight = trainer_for(settings, spec)
    straight.run(Recorded())

    first = trainer_for(settings, spec)

    class StopAfterEpochTwo(Recorded):
        def on_epoch(self, index, metrics, checkpoint):
            super().on_epoch(index, metrics, checkpoint)
            if metrics.epoch == 2:
                first.live.request_stop(Outcome.handed_back)  # as a SIGTERM would, before epoch 3 starts

    recorded = StopAfterEpochTwo()
    assert first.run(recorded) == {}, "a stopped job has no result"
    reason, state = recorded.stops[0]
    assert reason is Outcome.handed_back
    state = reloaded(state)
    assert state.epoch == 2 and state.partial is not None and state.partial.step == 0

    resumed = trainer_for(settings, spec, resume=state)
    result = resumed.run(Recorded())[0]
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    assert [m.epoch for m in resumed.metrics] == [1, 2, 3]
    assert resumed.metrics == straight.metrics
    assert result.correct == straight.metrics[-1].correct


def test_resume_from_the_middle_of_an_epoch(settings):
    spec = make_spec("fc", epochs=1)
    straight = trainer_for(settings, spec)
    straight.run(Recorded())

    recorded = Recorded()
    trainer_for(settings, spec, live=StopAt(epoch=1, step=4)).run(recorded)
    state = reloaded(recorded.stops[0][1])
    assert state.epoch == 0 and state.partial is not None and state.partial.step == 4

    resumed = trainer_for(settings, spec, resume=state)
    resumed.run(Recorded())
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    assert resumed.metrics == straight.metrics, "the loss summed before the stop is carried exactly"


def test_checkpoint_loads_weights_only_into_a_fresh_model_and_reproduces_accuracy(settings):
    spec = make_spec("cnn", 42)
    recorded = Recorded()
    result = trainer_for(settings, spec).run(recorded)[0]
    state = saved(recorded.last())
    assert state["format_version"] == 1 and state["spec"] == spec.model_dump(mode="json") and state["epoch"] == 1
    assert torch.equal(state["permutation"], permutation(42))
    assert set(state) >= {"state_dict", "optimizer", "metrics", "rng_state"}

    model = build_model(spec)
    model.load_state_dict(state["state_dict"])
    data = load_tensors(settings, "mnist").permuted_by(42)
    correct = evaluate(model, data.test_x, data.test_y, 1000).correct
    assert correct == result.correct


def test_a_checkpoint_whose_sha256_differs_is_never_opened(settings, tmp_path):
    recorded = Recorded()
    trainer_for(settings, make_spec("fc")).run(recorded)
    file = checkpoints.save(LocalStore(tmp_path), "jobs/x/epoch-001.pt", recorded.last())
    assert checkpoints.load(LocalStore(tmp_path), file).epoch == 1
    damaged = bytearray((tmp_path / file.path).read_bytes())
    damaged[len(damaged) // 2] ^= 1  # one flipped bit
    (tmp_path / file.path).write_bytes(bytes(damaged))
    with pytest.raises(CheckpointCorrupt, match="sha256"):
        checkpoints.load(LocalStore(tmp_path), StoredFile(file.path, file.sha256))
