"""The HTTP contract through the real app (httpx via TestClient) on a migrated SQLite file."""

from __future__ import annotations

import uuid
from datetime import datetime

import pytest

PROBLEM = "application/problem+json"


def submit(client, **spec):
    response = client.post("/v1/jobs", json={"architecture": "fc", **spec})
    assert response.status_code == 201, response.text
    return response.json()


def test_submit_answers_201_with_the_full_spec_chosen_seed_and_param_count(client):
    response = client.post("/v1/jobs", json={"architecture": "cnn", "permutation_seed": 42, "epochs": 1})
    assert response.status_code == 201
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    uuid.UUID(job["id"])
    assert job["status"] == "queued" and job["attempts"] == 0 and job["param_count"] == 6422
    assert job["spec"]["n_features"] == 6 and job["spec"]["permutation_seed"] == 42
    assert isinstance(job["spec"]["seed"], int)
    assert job["created_at"].endswith("Z") and datetime.fromisoformat(job["created_at"]).tzinfo is not None
    assert submit(client)["param_count"] == 6442

    again = client.get(f"/v1/jobs/{job['id']}").json()
    assert again["spec"]["seed"] == job["spec"]["seed"], "the chosen seed is stored"


def test_a_given_seed_is_kept(client):
    assert submit(client, seed=123)["spec"]["seed"] == 123


@pytest.mark.parametrize(
    "body, field",
    [
        ({"architecture": "fc", "epochs": 0}, "epochs"),
        ({"architecture": "cnn", "n_features": 1000}, "n_features"),
        ({"architecture": "fc", "unknown": 1}, "unknown"),
        ({"architecture": "transformer"}, "architecture"),
        ({"epochs": 1}, "architecture"),
    ],
)
def test_invalid_specs_get_a_problem_naming_the_field(client, body, field):
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["status"] == 422 and problem["field"] == field
    assert field in problem["detail"]
    assert problem["errors"][0]["field"] == field


def test_malformed_json_is_a_422_problem(client):
    response = client.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM
    assert response.json()["field"] == "body"


def test_unknown_ids_are_404_problems_and_bad_ids_422(client):
    missing = uuid.uuid4()
    for method, path in [
        ("GET", f"/v1/jobs/{missing}"),
        ("POST", f"/v1/jobs/{missing}/cancel"),
        ("DELETE", f"/v1/jobs/{missing}"),
        ("GET", f"/v1/jobs/{missing}/checkpoint"),
    ]:
        response = client.request(method, path)
        assert response.status_code == 404, (method, path)
        assert response.headers["content-type"] == PROBLEM
        assert str(missing) in response.json()["detail"]
    response = client.get("/v1/jobs/not-a-uuid")
    assert response.status_code == 422 and response.json()["field"] == "path.job_id"


def test_list_is_newest_first_filtered_and_paginated(client):
    ids = [submit(client, architecture=arch)["id"] for arch in ["fc", "cnn", "fc", "cnn", "fc"]]
    page = client.get("/v1/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["items"]] == ids[::-1][:2]
    seen = [j["id"] for j in page["items"]]
    while page["next_cursor"]:
        page = client.get("/v1/jobs", params={"limit": 2, "cursor": page["next_cursor"]}).json()
        seen += [j["id"] for j in page["items"]]
    assert seen == ids[::-1]

    cnn = client.get("/v1/jobs", params={"architecture": "cnn"}).json()["items"]
    assert [j["id"] for j in cnn] == [ids[3], ids[1]]
    assert client.get("/v1/jobs", params={"status": "running"}).json()["items"] == []
    assert client.get("/v1/jobs", params={"status": "bogus"}).json()["field"] == "query.status"
    assert client.get("/v1/jobs", params={"cursor": "garbage"}).json()["field"] == "cursor"


def test_cancel_a_queued_job_at_once_then_409_and_delete(client, settings):
    job = submit(client)
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled" and response.json()["finished_at"]

    again = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and again.headers["content-type"] == PROBLEM

    files = settings.artifacts_dir / "jobs" / job["id"]
    files.mkdir(parents=True)
    (files / "epoch-001-x.pt").write_bytes(b"x")
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert not files.exists()
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 404


def test_unfinished_jobs_cannot_be_deleted_and_have_no_checkpoint_yet(client):
    job = submit(client)
    response = client.delete(f"/v1/jobs/{job['id']}")
    assert response.status_code == 409 and "cancel it first" in response.json()["detail"]
    response = client.get(f"/v1/jobs/{job['id']}/checkpoint")
    assert response.status_code == 409 and "no checkpoint" in response.json()["detail"]


@pytest.mark.databases
def test_idempotency_key_returns_the_same_job_or_409(client):
    headers = {"Idempotency-Key": "abc-123"}
    first = client.post("/v1/jobs", json={"architecture": "fc"}, headers=headers)
    same = client.post("/v1/jobs", json={"architecture": "fc", "epochs": 1}, headers=headers)
    other = client.post("/v1/jobs", json={"architecture": "cnn"}, headers=headers)
    assert first.status_code == 201 and same.status_code == 200
    assert same.json()["id"] == first.json()["id"]
    assert other.status_code == 409 and other.json()["field"] == "Idempotency-Key"
    assert len(client.get("/v1/jobs").json()["items"]) == 1


def test_healthz_and_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/checkpoint", "/v1/workers"} <= set(paths)


def test_a_page_of_jobs_costs_the_same_queries_whatever_its_length(client):
    """Epochs and attempts load in one query per table for the whole page, never one per job."""
    from sqlalchemy import event

    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    engine = client.app.state.db.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        sizes = {}
        for total in (2, 20):
            while len(client.get("/v1/jobs", params={"limit": 200}).json()["items"]) < total:
                submit(client)
            statements.clear()
            assert len(client.get("/v1/jobs", params={"limit": 200}).json()["items"]) == total
            sizes[total] = len(statements)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert sizes[2] == sizes[20] <= 5, sizes  # BEGIN, the jobs, their epochs, their attempts, their labels
