"""Data sets over HTTP: GET /v1/datasets, the spec's `dataset`, and a job whose data set cannot be had."""

from __future__ import annotations

import pytest

from bench.synthetic import write_mnist
from service.datasets import catalog
from tests.support.settings import local_sources_only
from workers.main import Worker


@pytest.fixture
def settings(settings, tmp_path):
    """The shared settings with a data dir of this test's own, and every outside source off."""
    return local_sources_only(settings, tmp_path, write_mnist(tmp_path / "data" / "MNIST" / "raw", gz=True))


def test_datasets_lists_each_with_state_source_sizes_and_counts(client, settings):
    before = {d["name"]: d for d in client.get("/v1/datasets").json()}
    assert set(before) == {"mnist", "fashion-mnist"}
    assert before["mnist"]["state"] == "missing" and "data prepare --dataset mnist" in before["mnist"]["detail"]

    catalog.prepare(settings, "mnist")
    mnist = next(d for d in client.get("/v1/datasets").json() if d["name"] == "mnist")
    raw = settings.data_dir / "MNIST" / "raw"
    assert mnist == {
        "name": "mnist",
        "state": "ready",
        "source": "data dir MNIST/raw",  # relative to the data dir: no server path in an answer
        "folder": "MNIST/raw",
        "size_bytes": 600 * 785 + 200 * 785 + 48,
        "file_sizes_bytes": {
            "train-images-idx3-ubyte": 600 * 784 + 16,
            "train-labels-idx1-ubyte": 608,
            "t10k-images-idx3-ubyte": 200 * 784 + 16,
            "t10k-labels-idx1-ubyte": 208,
        },
        "train_samples": 600,
        "test_samples": 200,
        "detail": None,
    }
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\x00" * 208)
    corrupt = next(d for d in client.get("/v1/datasets").json() if d["name"] == "mnist")
    assert corrupt["state"] == "corrupt" and "t10k-labels-idx1-ubyte" in corrupt["detail"]


def test_a_spec_accepts_fashion_mnist_and_rejects_an_unknown_data_set(client):
    accepted = client.post("/v1/jobs", json={"architecture": "fc", "dataset": "fashion-mnist"})
    assert accepted.status_code == 201 and accepted.json()["dataset"] == "fashion-mnist"
    rejected = client.post("/v1/jobs", json={"architecture": "fc", "dataset": "cifar10"})
    assert rejected.status_code == 422 and rejected.json()["field"] == "dataset"


def test_a_job_whose_data_set_cannot_be_had_fails_with_the_reason(client, settings):
    job = client.post("/v1/jobs", json={"architecture": "cnn", "dataset": "fashion-mnist", "max_attempts": 1}).json()
    Worker(settings, "cpu").run(max_jobs=1)
    failed = client.get(f"/v1/jobs/{job['id']}").json()
    assert failed["status"] == "failed"
    assert failed["error"].startswith("data set 'fashion-mnist' is not available")
    assert "install the Debian package dataset-fashion-mnist" in failed["error"]
    assert "Traceback" not in failed["error"]
