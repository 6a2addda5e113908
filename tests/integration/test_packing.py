"""A worker process packs queued FC jobs of one shape, and a cancel takes one job out of the pack."""

from __future__ import annotations

from functools import partial
from typing import Any

from tests.support.processes import wait_until

FINAL = ("succeeded", "failed", "cancelled")


def test_worker_packs_queued_fc_jobs_and_a_cancel_spares_the_rest(client, workers):
    ids = [
        client.post(
            "/v1/jobs",
            json={
                "architecture": "fc",
                "epochs": 40,
                "batch_size": 4,
                "seed": s,
                "permutation_seed": 3 if s % 2 else None,
            },
        ).json()["id"]
        for s in range(3)
    ]
    cnn = client.post("/v1/jobs", json={"architecture": "cnn"}).json()["id"]
    workers.start()
    wait_until(lambda: all(client.get(f"/v1/jobs/{i}").json()["status"] == "running" for i in ids))
    running = [client.get(f"/v1/jobs/{i}").json() for i in ids]
    # one worker process running three jobs at once: they were claimed and are trained as one pack
    assert len({j["history"][-1]["worker_id"] for j in running}) == 1
    assert client.get(f"/v1/jobs/{cnn}").json()["status"] == "queued", "a CNN does not join an FC pack"

    assert client.post(f"/v1/jobs/{ids[1]}/cancel").status_code == 202

    def ended(i: str) -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/jobs/{i}").json()
        return job if job["status"] in FINAL else None

    final = {i: wait_until(partial(ended, i)) for i in [*ids, cnn]}
    assert [final[i]["status"] for i in ids] == ["succeeded", "cancelled", "succeeded"]
    assert final[cnn]["status"] == "succeeded"
    for i in (ids[0], ids[2]):
        assert [m["epoch"] for m in final[i]["metrics"]] == list(range(1, 41))
        assert final[i]["attempts"] == 1 and final[i]["history"][-1]["ended"] == "succeeded"
    assert final[ids[1]]["history"][-1]["ended"] == "cancelled"
