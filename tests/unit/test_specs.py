"""The job spec contract, the two networks' sizes, and which jobs may share a pack."""

import pytest
from pydantic import ValidationError

from service.jobs.schemas import CNNSpec, FCSpec, job_spec_adapter, request_fingerprint
from service.training.nets import build_model


def spec(**fields):
    return job_spec_adapter.validate_python(fields)


def test_defaults_are_the_tutorials():
    spec = job_spec_adapter.validate_python({"architecture": "fc"})
    assert isinstance(spec, FCSpec)
    assert (spec.n_hidden, spec.epochs, spec.batch_size, spec.test_batch_size) == (8, 1, 64, 1000)
    assert (spec.lr, spec.momentum, spec.permutation_seed, spec.seed, spec.dataset) == (0.01, 0.5, None, None, "mnist")
    cnn = job_spec_adapter.validate_python({"architecture": "cnn"})
    assert isinstance(cnn, CNNSpec) and cnn.n_features == 6


@pytest.mark.parametrize(
    "body, field",
    [
        ({"architecture": "fc", "epochs": 0}, "epochs"),
        ({"architecture": "fc", "epochs": 101}, "epochs"),
        ({"architecture": "fc", "n_hidden": 4097}, "n_hidden"),
        ({"architecture": "cnn", "n_features": 0}, "n_features"),
        ({"architecture": "cnn", "n_hidden": 8}, "n_hidden"),  # an FC field on a CNN
        ({"architecture": "fc", "lr": 0}, "lr"),
        ({"architecture": "fc", "momentum": 1}, "momentum"),
        ({"architecture": "fc", "batch_size": 0}, "batch_size"),
        ({"architecture": "fc", "seed": -1}, "seed"),
        ({"architecture": "fc", "permutation_seed": 2**63}, "permutation_seed"),
        ({"architecture": "fc", "dataset": "cifar10"}, "dataset"),
        ({"architecture": "fc", "colour": "red"}, "colour"),
    ],
)
def test_out_of_bounds_and_unknown_fields_are_rejected(body, field):
    with pytest.raises(ValidationError) as error:
        job_spec_adapter.validate_python(body)
    assert field in {str(e["loc"][-1]) for e in error.value.errors()}


def test_architecture_is_required_and_known():
    with pytest.raises(ValidationError):
        job_spec_adapter.validate_python({"epochs": 1})
    with pytest.raises(ValidationError):
        job_spec_adapter.validate_python({"architecture": "rnn"})


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"architecture": "fc", "n_hidden": 8}, 6442),
        ({"architecture": "cnn", "n_features": 6}, 6422),
        ({"architecture": "fc", "n_hidden": 100}, None),
        ({"architecture": "cnn", "n_features": 20}, None),
    ],
)
def test_param_count_formula_matches_the_built_network(fields, expected):
    built = sum(p.numel() for p in build_model(spec(**fields)).parameters())
    assert spec(**fields).param_count == built
    if expected is not None:
        assert built == expected


def test_state_dict_keys_are_the_tutorials():
    assert list(build_model(spec(architecture="fc", n_hidden=8)).state_dict()) == [
        f"network.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")
    ]
    assert list(build_model(spec(architecture="cnn", n_features=6)).state_dict()) == [
        f"{layer}.{p}" for layer in ("conv1", "conv2", "fc1", "fc2") for p in ("weight", "bias")
    ]


def test_the_pack_key_ignores_only_what_makes_a_job_itself():
    base = spec(architecture="fc", seed=1)
    assert spec(architecture="fc", seed=2, permutation_seed=42).pack_key == base.pack_key
    assert spec(architecture="fc", seed=1, max_attempts=5).pack_key == base.pack_key
    for other in (
        {"n_hidden": 16},
        {"lr": 0.02},
        {"momentum": 0.9},
        {"epochs": 2},
        {"batch_size": 32},
        {"test_batch_size": 500},
        {"dataset": "fashion-mnist"},
    ):
        assert spec(architecture="fc", seed=1, **other).pack_key != base.pack_key, other
    assert spec(architecture="cnn", seed=1).pack_key != base.pack_key


def test_max_attempts_is_a_submission_option_not_part_of_the_stored_spec():
    asked = spec(architecture="fc", max_attempts=5)
    assert asked.max_attempts == 5 and "max_attempts" not in asked.model_dump()
    assert request_fingerprint(asked) != request_fingerprint(spec(architecture="fc", max_attempts=4))
