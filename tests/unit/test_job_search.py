"""Finding jobs (filters, sort by accuracy, pages) and reusing a finished job's result, through the
real app on a migrated SQLite file."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

import pytest

from tests.support.queue import end_jobs, finish_with_checkpoint

pytestmark = pytest.mark.databases  # each test once on SQLite, once on PostgreSQL

PROBLEM = "application/problem+json"


def submit(client, **fields):
    response = client.post("/v1/jobs", json={"architecture": "fc", **fields})
    assert response.status_code == 201, response.text
    return response.json()


def ids(client, **params) -> list[str]:
    response = client.get("/v1/jobs", params=params)
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()["items"]]


def test_names_and_labels_are_kept_and_filter_the_list(client):
    a = submit(client, name="baseline", labels={"team": "vision", "run": "1"})
    b = submit(client, labels={"team": "vision", "run": "2"}, permutation_seed=42, seed=9)
    c = submit(client, architecture="cnn", dataset="fashion-mnist", seed=9)
    assert a["name"] == "baseline" and a["labels"] == {"run": "1", "team": "vision"}
    assert "labels" not in a["spec"] and "name" not in a["spec"], "options are not part of what is trained"
    assert ids(client, label="team:vision") == [b["id"], a["id"]]
    assert ids(client, label=["team:vision", "run:1"]) == [a["id"]]
    assert ids(client, name="baseline") == [a["id"]]
    assert ids(client, permutation_seed="42") == [b["id"]]
    assert ids(client, permutation_seed="none") == [c["id"], a["id"]]
    assert ids(client, seed=9) == [c["id"], b["id"]]
    assert ids(client, dataset="fashion-mnist") == [c["id"]]
    created_b = datetime.fromisoformat(b["created_at"])
    assert ids(client, created_after=(created_b - timedelta(microseconds=1)).isoformat()) == [c["id"], b["id"]]
    assert ids(client, created_before=created_b.isoformat()) == [a["id"]]


def test_the_comparison_filter_finds_its_jobs(client):
    comparison = client.post("/v1/comparisons", json={"seeds": 2, "architectures": ["fc"]}).json()
    submit(client)
    assert sorted(ids(client, comparison=comparison["id"])) == sorted(comparison["job_ids"])


@pytest.mark.parametrize(
    "params, field",
    [
        ({"label": "no-colon"}, "label"),
        ({"label": "Bad Key:x"}, "label"),
        ({"permutation_seed": "-3"}, "permutation_seed"),
        ({"created_after": "2026-01-01T00:00:00"}, "created_after"),
        ({"sort": "loss"}, "sort"),
        ({"comparison": "not-a-uuid"}, "comparison"),
        ({"sort": "test_accuracy", "cursor": "WyIyMDI2LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwgIngiXQ=="}, "cursor"),
    ],
)
def test_bad_filters_are_a_422_naming_the_parameter(client, params, field):
    response = client.get("/v1/jobs", params=params)
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM
    assert response.json()["field"] == (field if field == "cursor" else f"query.{field}")


@pytest.mark.parametrize(
    "labels",
    [{"Bad": "x"}, {"k": ""}, {"k": "x" * 201}, {f"k{i}": "v" for i in range(17)}, {"k": 1}],
)
def test_bad_labels_are_refused_at_submit(client, labels):
    response = client.post("/v1/jobs", json={"architecture": "fc", "labels": labels})
    assert response.status_code == 422 and response.json()["field"].startswith("labels")


def test_sort_by_test_accuracy_pages_best_first_and_leaves_out_unfinished_jobs(client, db):
    accuracies = [0.91, 0.87, 0.95, 0.87, 0.60]
    jobs = [submit(client)["id"] for _ in accuracies]
    unfinished = submit(client)["id"]
    end_jobs(db, dict(zip(jobs, accuracies, strict=True)))
    seen: list[str] = []
    cursor = None
    while True:
        params = {"sort": "test_accuracy", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params).json()
        seen += [job["id"] for job in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    by_accuracy = sorted(zip(accuracies, jobs, strict=True), key=lambda pair: -pair[0])
    assert [job_id for _, job_id in by_accuracy][:1] == seen[:1] and len(seen) == 5 and unfinished not in seen
    got = [client.get(f"/v1/jobs/{job_id}").json()["result"]["test_accuracy"] for job_id in seen]
    assert got == sorted(accuracies, reverse=True)


def test_reuse_takes_a_finished_jobs_result_and_outlives_its_deletion(client, settings, db):
    original = submit(client, seed=11, permutation_seed=3)
    finish_with_checkpoint(settings, db, original["id"], b"weights")

    not_asked = submit(client, seed=11, permutation_seed=3)
    assert not_asked["status"] == "queued" and not_asked["reused_from"] is None, "reuse is opt-in for jobs"
    other_seed = submit(client, seed=12, permutation_seed=3, reuse=True)
    assert other_seed["status"] == "queued", "only an equal spec, seed included, is reused"

    reused = submit(client, seed=11, permutation_seed=3, reuse=True)
    assert reused["status"] == "succeeded" and reused["reused_from"] == original["id"]
    assert reused["result"]["test_accuracy"] == 0.9 and [m["epoch"] for m in reused["metrics"]] == [1]
    assert reused["result"]["checkpoints"][0]["sha256"] == hashlib.sha256(b"weights").hexdigest()

    client.post(f"/v1/jobs/{not_asked['id']}/cancel", json={})
    client.post(f"/v1/jobs/{other_seed['id']}/cancel", json={})
    assert client.delete(f"/v1/jobs/{original['id']}").status_code == 204
    download = client.get(f"/v1/jobs/{reused['id']}/checkpoint")
    assert download.status_code == 200 and download.content == b"weights", "the reuser's file stays"


def test_a_rerun_comparison_reuses_every_finished_job(client, db):
    body = {"seeds": 2, "architectures": ["fc"]}
    first = client.post("/v1/comparisons", json=body).json()
    end_jobs(db, dict.fromkeys(first["job_ids"], 0.88))
    again = client.post("/v1/comparisons", json=body).json()
    assert again["status"] == "succeeded" and again["progress"]["succeeded"] == 4
    assert [cell["values"] for cell in again["cells"]] == [[0.88, 0.88], [0.88, 0.88]]
    reused = [client.get(f"/v1/jobs/{job_id}").json() for job_id in again["job_ids"]]
    assert {job["reused_from"] for job in reused} == set(first["job_ids"]), "each from its equal original"
    assert all(job["history"] == [] for job in reused), "no training: no worker ever claimed them"
    fresh = client.post("/v1/comparisons", json={**body, "reuse": False}).json()
    assert fresh["status"] == "queued"
