"""The job cost estimate (service/jobs/cost.py) and the per-job budget: numbers, refusals, admissions."""

from __future__ import annotations

import pytest

from service.jobs.cost import DATA_BYTES, check_budget, estimate, over_budget
from service.jobs.schemas import job_spec_adapter
from service.platform.config import Settings
from service.platform.errors import InvalidInput

DEFAULTS = Settings()


def spec(**fields):
    return job_spec_adapter.validate_python(fields)


def test_the_estimate_of_the_tutorials_fc_job_by_hand():
    cost = estimate(spec(architecture="fc"))
    macs = 784 * 8 + 8 * 8 + 8 * 10
    assert cost.param_count == 6442 and cost.steps == 938  # ceil(60000 / 64)
    assert cost.flops == 6 * macs * 60_000 + 2 * macs * 10_000
    activations = 784 + 4 * 8 + 2 * 10
    assert cost.peak_memory_bytes == 3 * 6442 * 4 + 2 * activations * 1000 * 4 + DATA_BYTES


def test_the_estimate_of_the_tutorials_cnn_job_by_hand():
    cost = estimate(spec(architecture="cnn", epochs=3, batch_size=100))
    macs = 24 * 24 * 6 * 25 + 8 * 8 * 6 * 25 * 6 + 96 * 50 + 50 * 10
    assert cost.param_count == 6422 and cost.steps == 3 * 600
    assert cost.flops == 3 * (6 * macs * 60_000 + 2 * macs * 10_000)
    activations = 784 + (2 * 576 + 144 + 2 * 64 + 16) * 6 + 2 * 50 + 2 * 10
    assert cost.peak_memory_bytes == 3 * 6422 * 4 + 2 * activations * 1000 * 4 + DATA_BYTES


@pytest.mark.parametrize(
    "fields",
    [
        {"architecture": "fc"},
        {"architecture": "cnn"},
        {"architecture": "fc", "permutation_seed": 1},
        {"architecture": "fc", "n_hidden": 1024, "epochs": 10},
        {"architecture": "cnn", "n_features": 32, "epochs": 10},
        {"architecture": "fc", "n_hidden": 4096, "epochs": 5},
        {"architecture": "cnn", "n_features": 256},
        {"architecture": "fc", "batch_size": 60_000, "test_batch_size": 10_000},
    ],
)
def test_the_default_budget_admits_the_tutorials_jobs_and_their_ordinary_variations(fields):
    assert over_budget(spec(**fields), DEFAULTS.max_job_flops, DEFAULTS.max_job_memory_bytes) is None


@pytest.mark.parametrize(
    "fields, limit",
    [
        ({"architecture": "fc", "n_hidden": 4096, "epochs": 100, "batch_size": 1}, "MNIST_JOBS_MAX_JOB_FLOPS"),
        ({"architecture": "cnn", "n_features": 256, "epochs": 100, "batch_size": 1}, "MNIST_JOBS_MAX_JOB_FLOPS"),
        ({"architecture": "cnn", "n_features": 256, "batch_size": 60_000}, "MNIST_JOBS_MAX_JOB_MEMORY_BYTES"),
        ({"architecture": "fc", "n_hidden": 4096, "batch_size": 60_000}, "MNIST_JOBS_MAX_JOB_MEMORY_BYTES"),
    ],
)
def test_the_default_budget_refuses_the_days_long_and_the_huge_jobs(fields, limit):
    with pytest.raises(InvalidInput) as refused:
        check_budget(spec(**fields), DEFAULTS.max_job_flops, DEFAULTS.max_job_memory_bytes)
    assert refused.value.field == "spec" and limit in refused.value.detail


def test_the_refusal_names_the_estimate_and_the_limit():
    largest = spec(architecture="cnn", n_features=256, epochs=100, batch_size=60_000, test_batch_size=10_000)
    reason = over_budget(largest, 5e14, 4 * 2**30)
    assert reason == (
        "this job would cost about 4.1e15 FLOPs (about 23 h on one CPU core at 5.0e10 FLOP/s), over the limit of "
        "5.0e14 (MNIST_JOBS_MAX_JOB_FLOPS); lower epochs or n_features; and this job would need about 165.4 GiB "
        "of memory at its peak, over the limit of 4.0 GiB (MNIST_JOBS_MAX_JOB_MEMORY_BYTES); lower batch_size, "
        "test_batch_size or n_features"
    )
    assert over_budget(largest, None, None) is None, "None: that limit is not checked"


def test_a_jobs_json_shows_its_estimate(client):
    job = client.post("/v1/jobs", json={"architecture": "cnn", "epochs": 2}).json()
    assert job["cost"] == estimate(spec(architecture="cnn", epochs=2)).model_dump(mode="json")
    assert client.get(f"/v1/jobs/{job['id']}").json()["cost"] == job["cost"]


def test_a_job_over_the_budget_is_a_422_naming_its_cost_and_the_limit(client):
    response = client.post("/v1/jobs", json={"architecture": "fc", "n_hidden": 4096, "epochs": 100, "batch_size": 1})
    assert response.status_code == 422 and response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["field"] == "spec"
    assert (
        "7.6e14 FLOPs" in problem["detail"]
        and "over the limit of 5.0e14 (MNIST_JOBS_MAX_JOB_FLOPS)" in problem["detail"]
    )
    assert client.get("/v1/jobs").json()["items"] == [], "nothing was queued"
