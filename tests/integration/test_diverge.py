"""A job whose loss becomes NaN ends `failed` through a real worker process, with finite JSON, and
the worker goes on with the next job."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from tests.support.processes import wait_until

FINAL = ("succeeded", "failed", "cancelled")


def strict_json(text: str) -> Any:
    """json.loads that refuses the NaN / Infinity tokens JSON does not have."""

    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def ended(client, job_id: str) -> dict[str, Any] | None:
    job: dict[str, Any] = strict_json(client.get(f"/v1/jobs/{job_id}").text)
    return job if job["status"] in FINAL else None


def test_a_nan_job_fails_with_where_and_why_and_the_worker_goes_on(client, workers):
    spec = {"architecture": "fc", "n_hidden": 1024, "lr": 10, "momentum": 0.999, "epochs": 2, "seed": 3}
    nan_job = client.post("/v1/jobs", json=spec).json()["id"]
    worker = workers.start()
    job = wait_until(partial(ended, client, nan_job))
    print("\nthe NaN job's final JSON:\n" + json.dumps(job, indent=2))
    assert job["status"] == "failed" and job["attempts"] == 1
    assert job["error"].startswith("the training loss became nan at epoch 1, step ")
    assert job["error"].endswith("(lr 10 is probably too high; try a lower lr or momentum)")
    assert job["metrics"] == [] and job["result"] is None
    assert job["history"][-1]["ended"] == "failed"
    assert job["progress"] is None or job["progress"]["loss"] is None or job["progress"]["loss"] >= 0

    after = client.post("/v1/jobs", json={"architecture": "fc", "seed": 3}).json()["id"]
    assert wait_until(partial(ended, client, after))["status"] == "succeeded"
    assert worker.poll() is None, "the worker is still running"
    listed = strict_json(client.get("/v1/jobs").text)
    assert {j["id"] for j in listed["items"]} == {nan_job, after}
