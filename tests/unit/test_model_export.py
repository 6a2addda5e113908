"""Exported models (ONNX, safetensors) compute what the job's own test pass computes, on every image."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load as load_safetensors
from torchvision import datasets

from service.training import export
from service.training.checkpoints import TrainingState
from service.training.nets import CNN, FC2Layer
from tests.support.training import Recorded, make_spec, reloaded, trainer_for

pytestmark = pytest.mark.usefixtures("one_thread")
CELLS = [("fc", None), ("fc", 42), ("cnn", None), ("cnn", 42)]
TOLERANCE = 1e-4  # log-probabilities: onnxruntime's kernels sum in another order than torch's


# Every test here reads the session's fixture data, so each cell is trained, and exported to ONNX,
# once per test process (the exporter takes a second or more per graph).
_trained: dict[tuple[str, int | None], tuple[TrainingState, torch.Tensor, int]] = {}
_onnx: dict[tuple[str, int | None], bytes] = {}


def trained(settings, architecture, permutation_seed):
    """A three-epoch job on the fixture data: its checkpoint (as read back from disk), its test
    pass's per-image log-probabilities (the service's own preprocessing and model), and its count."""
    cell = (architecture, permutation_seed)
    if cell not in _trained:
        trainer = trainer_for(settings, make_spec(architecture, permutation_seed, epochs=3, lr=0.1))
        recorded = Recorded()
        result = trainer.run(recorded)[0]
        state = reloaded(recorded.last())
        with torch.inference_mode():
            log_probabilities = export.model_of(state)(trainer.data.test_x)
        _trained[cell] = state, log_probabilities, result.correct
    return _trained[cell]


def onnx_of(settings, architecture, permutation_seed) -> bytes:
    cell = (architecture, permutation_seed)
    if cell not in _onnx:
        _onnx[cell] = export.onnx_bytes(trained(settings, *cell)[0])
    return _onnx[cell]


def raw_test_images(settings) -> np.ndarray:
    """The test images as they are in the IDX file: uint8 [N, 28, 28]."""
    return datasets.MNIST(str(settings.data_dir), train=False, download=False).data.numpy()


@pytest.mark.parametrize(("architecture", "permutation_seed"), CELLS)
def test_onnx_gives_every_image_the_digit_of_the_jobs_own_test_pass(settings, architecture, permutation_seed):
    _, expected, correct = trained(settings, architecture, permutation_seed)
    images = raw_test_images(settings)
    model = onnx_of(settings, architecture, permutation_seed)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    [given] = session.get_inputs()
    assert (given.name, given.type) == ("pixels", "tensor(uint8)")
    assert [output.name for output in session.get_outputs()] == ["log_probabilities"]
    assert onnx.load_model_from_string(model).opset_import[0].version == export.ONNX_OPSET

    (flat,) = session.run(["log_probabilities"], {"pixels": images})
    (channels,) = session.run(["log_probabilities"], {"pixels": images[:, None]})  # [N, 1, 28, 28] too
    ours = expected.numpy()
    assert flat.dtype == np.float32 and flat.shape == (len(images), 10) == ours.shape
    np.testing.assert_array_equal(flat, channels)
    equal = int((flat.argmax(axis=1) == ours.argmax(axis=1)).sum())
    assert equal == len(images)  # every image's digit
    largest = float(np.abs(flat - ours).max())
    assert largest <= TOLERANCE
    labels = datasets.MNIST(str(settings.data_dir), train=False, download=False).targets.numpy()
    assert int((flat.argmax(axis=1) == labels).sum()) == correct  # the job's own recorded count
    assert correct > 3 * len(images) / 10  # far above chance (1 in 10): a wrong pixel order would not score so
    print(
        f"{architecture} perm={permutation_seed}: {len(images)} images, {equal} digits equal, "
        f"{correct} correct, max |Δ| {largest:.2e}"
    )


def test_a_permuted_graph_gathers_the_jobs_own_permutation(settings):
    state, _, _ = trained(settings, "fc", 42)
    graph = onnx.load_model_from_string(onnx_of(settings, "fc", 42)).graph
    [gather] = [node for node in graph.node if node.op_type == "Gather"]
    constants = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    indices = constants.get(gather.input[1])
    assert indices is not None and indices.tolist() == state.permutation.tolist()
    natural_graph = onnx.load_model_from_string(onnx_of(settings, "fc", None)).graph
    assert not [node for node in natural_graph.node if node.op_type == "Gather"]


@pytest.mark.parametrize(("architecture", "permutation_seed"), CELLS)
def test_safetensors_loads_strictly_into_the_services_net_and_reproduces_it(
    settings, tmp_path, architecture, permutation_seed
):
    state, expected, _ = trained(settings, architecture, permutation_seed)
    data = export.safetensors_bytes(state, "job-1")
    weights = load_safetensors(data)
    net = FC2Layer(784, 8, 10) if architecture == "fc" else CNN(784, 6, 10)
    assert set(weights) == set(net.state_dict()) == set(state.state_dict)
    net.load_state_dict(weights, strict=True)
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in weights.values())

    (tmp_path / "model.safetensors").write_bytes(data)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as opened:
        metadata = opened.metadata()
    assert set(metadata) == set(export.METADATA_KEYS)
    assert metadata["format"] == "mnist-jobs-model/1" and metadata["job_id"] == "job-1"
    assert metadata["epoch"] == "3" and metadata["architecture"] == architecture
    assert json.loads(metadata["spec"]) == state.spec.model_dump(mode="json")
    assert (metadata["normalize_mean"], metadata["normalize_std"]) == ("0.1307", "0.3081")
    assert json.loads(metadata["permutation_seed"]) == permutation_seed
    assert metadata["torch_version"] == torch.__version__
    order = json.loads(metadata["permutation"])
    assert order == (None if permutation_seed is None else state.permutation.tolist())

    # Rebuilt from the metadata alone, as a user without this project would.
    images = torch.from_numpy(raw_test_images(settings)).float().div(255)
    x = (images - float(metadata["normalize_mean"])) / float(metadata["normalize_std"])
    x = x.view(len(x), -1)
    if order is not None:
        x = x[:, torch.tensor(order)]
    with torch.inference_mode():
        ours = net.eval()(x.view(-1, 1, 28, 28))
    assert torch.equal(ours, expected)


def test_exports_are_the_same_bytes_every_time(settings):
    state, _, _ = trained(settings, "cnn", 42)
    assert export.onnx_bytes(state) == onnx_of(settings, "cnn", 42)
    assert export.safetensors_bytes(state, "j") == export.safetensors_bytes(state, "j")


def test_a_checkpoint_without_a_stored_permutation_exports_its_seeds(settings):
    state, _, _ = trained(settings, "fc", 42)
    bare = TrainingState(
        state.spec, state.state_dict, state.optimizer, state.epoch, state.metrics, None, state.rng_state
    )
    assert export.safetensors_bytes(bare, "j") == export.safetensors_bytes(state, "j")
