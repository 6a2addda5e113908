"""The engine replays the tutorial's loop bit for bit, and resumes bit for bit from a checkpoint."""

from __future__ import annotations

import io

import pytest
import torch

from bench import textbook
from service.training.data import load_tensors, permutation
from service.training.engine import Interrupted, Live, Trainer, evaluate
from service.training.nets import build_model

DEVICE = torch.device("cpu")


def make_spec(architecture: str, permutation_seed: int | None, epochs: int = 1, seed: int = 7) -> dict:
    return {"architecture": architecture, "n_hidden": 8, "n_features": 6, "permutation_seed": permutation_seed,
            "epochs": epochs, "batch_size": 64, "test_batch_size": 1000, "lr": 0.01, "momentum": 0.5, "seed": seed,
            "dataset": "mnist"}


def trainer_for(settings, spec: dict, **kwargs) -> Trainer:
    data = load_tensors(settings, "mnist")
    perm = permutation(spec["permutation_seed"])
    if perm is not None:
        data = data.permuted(perm)
    return Trainer(spec, data, DEVICE, permutation=perm, **kwargs)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("architecture", ["fc", "cnn"])
@pytest.mark.parametrize("permutation_seed", [None, 42])
def test_final_weights_are_bit_identical_to_the_textbook_loop(settings, mnist_data, architecture, permutation_seed):
    spec = make_spec(architecture, permutation_seed, epochs=2)
    trainer = trainer_for(settings, spec)
    result = trainer.run(lambda row, checkpoint: None)

    reference = textbook.run(str(mnist_data[0]), architecture, seed=7, permutation_seed=permutation_seed, epochs=2)

    ours, theirs = trainer.model.state_dict(), reference.model.state_dict()
    assert list(ours) == list(theirs)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), f"{name} differs from the textbook loop"
    assert result["correct"] == reference.correct
    assert result["total"] == reference.total == 200


def test_a_different_seed_gives_different_weights(settings):
    a = trainer_for(settings, make_spec("fc", None, seed=1))
    b = trainer_for(settings, make_spec("fc", None, seed=2))
    a.run(lambda *_: None), b.run(lambda *_: None)
    assert not torch.equal(a.model.network[0].weight, b.model.network[0].weight)


def test_permutation_is_fixed_by_its_seed_and_differs_between_seeds():
    assert torch.equal(permutation(42), permutation(42))
    assert not torch.equal(permutation(42), permutation(43))
    assert sorted(permutation(42).tolist()) == list(range(784))
    assert permutation(None) is None


def saved(checkpoint: dict) -> dict:
    """A checkpoint as it comes back from disk: only through torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("architecture", ["fc", "cnn"])
def test_resume_from_a_mid_epoch_interrupt_matches_an_uninterrupted_run(settings, architecture):
    spec = make_spec(architecture, 3, epochs=3)
    straight = trainer_for(settings, spec)
    straight.run(lambda *_: None)

    first = trainer_for(settings, spec)
    stop_after_epoch_two = []

    def on_epoch(row, checkpoint):
        if row["epoch"] == 2:
            first.live.stop_reason = "shutdown"  # as a SIGTERM would, mid-way through epoch 3
            stop_after_epoch_two.append(checkpoint)

    with pytest.raises(Interrupted) as stopped:
        first.run(on_epoch)
    assert stopped.value.reason == "shutdown"
    state = saved(stopped.value.checkpoint)
    assert state["epoch"] == 2 and state["partial"]["step"] == 0

    resumed = trainer_for(settings, spec, resume=state)
    result = resumed.run(lambda *_: None)
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    assert [m["epoch"] for m in resumed.metrics] == [1, 2, 3]
    assert result["correct"] == straight.metrics[-1]["correct"]


class StopAfterStep4(Live):
    """A Live whose stop flag rises once the loop has done step 4, as a signal would."""

    @property
    def stop_reason(self):
        return "shutdown" if self.step >= 4 else None

    @stop_reason.setter
    def stop_reason(self, _value):
        pass


def test_resume_from_the_middle_of_an_epoch(settings):
    spec = make_spec("fc", None, epochs=1)
    straight = trainer_for(settings, spec)
    straight.run(lambda *_: None)

    first = trainer_for(settings, spec, live=StopAfterStep4())
    with pytest.raises(Interrupted) as stopped:
        first.run(lambda *_: None)
    state = saved(stopped.value.checkpoint)
    assert state["epoch"] == 0 and state["partial"]["step"] == 4

    resumed = trainer_for(settings, spec, resume=state)
    resumed.run(lambda *_: None)
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    assert resumed.metrics[0]["train_loss"] == pytest.approx(straight.metrics[0]["train_loss"], rel=1e-12)


def test_checkpoint_loads_weights_only_into_a_fresh_model_and_reproduces_accuracy(settings):
    spec = make_spec("cnn", 42)
    trainer = trainer_for(settings, spec)
    checkpoints = []
    result = trainer.run(lambda row, checkpoint: checkpoints.append(checkpoint))
    state = saved(checkpoints[-1])
    assert state["format_version"] == 1 and state["spec"] == spec and state["epoch"] == 1
    assert torch.equal(state["permutation"], permutation(42))
    assert set(state) >= {"state_dict", "optimizer", "metrics", "rng_state"}

    model = build_model(state["spec"])
    model.load_state_dict(state["state_dict"])
    data = load_tensors(settings, "mnist").permuted(state["permutation"])
    _, correct = evaluate(model, data.test_x, data.test_y, 1000)
    assert correct == result["correct"]
