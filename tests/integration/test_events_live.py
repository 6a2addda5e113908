"""A job's live events over real HTTP: `mnist-jobs serve` (uvicorn) with one worker process training
the job, followed with an httpx streaming GET from the job's submit until the server closes it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpx

HANG_GUARD_SECONDS = 300  # only against a stream that never ends; no speed is asserted


def events(lines: Iterable[str], deadline: float) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) of each event in a text/event-stream, to its end; comments are skipped."""
    kind, data = "message", list[str]()
    for line in lines:
        assert time.monotonic() < deadline, "the stream did not end"
        if line.startswith(":"):
            continue
        if not line:
            if data:
                yield kind, json.loads("\n".join(data))
            kind, data = "message", []
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").strip())
        elif line.startswith("event:"):
            kind = line.removeprefix("event:").strip()


def label(kind: str, data: dict[str, Any]) -> str:
    return f"status:{data['status']}" if kind == "status" else kind


def test_a_job_stream_follows_a_real_worker_from_submit_to_succeeded(live_server):
    # Heartbeats (which carry progress) every 20 ms: the job trains for about 0.2 s here, and its
    # stream must show progress before its epoch on a machine several times faster too.
    server = live_server(workers=1, events_ping_seconds=1, heartbeat_seconds=0.02)
    # The worker is busy with a long job first, so ours is still queued when its stream opens.
    blocker = server.client.post("/v1/jobs", json={"architecture": "fc", "epochs": 100, "batch_size": 1}).json()
    server.wait_for_status(blocker["id"], {"running"})
    job = server.client.post("/v1/jobs", json={"architecture": "fc", "epochs": 1, "batch_size": 1}).json()

    deadline = time.monotonic() + HANG_GUARD_SECONDS
    with (
        httpx.Client(base_url=server.url, timeout=30) as http,
        http.stream("GET", f"/v1/jobs/{job['id']}/events") as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = events(response.iter_lines(), deadline)
        kind, snapshot = next(stream)
        assert (kind, snapshot["id"], snapshot["status"]) == ("job", job["id"], "queued")
        assert server.client.post(f"/v1/jobs/{blocker['id']}/cancel").status_code == 202  # the worker is free
        seen = list(stream)  # to the end of the stream, which the server closes after the final status

    labels = [label(kind, data) for kind, data in seen]
    assert labels[0] == "status:running" and labels[-1] == "status:succeeded", labels
    assert labels.count("status:running") == 1 and labels.count("status:succeeded") == 1
    first_progress, epoch = labels.index("progress"), labels.index("epoch")
    assert 0 < first_progress < epoch < len(labels) - 1, labels
    assert all(data["job_id"] == job["id"] for _, data in seen)
    ended = server.client.get(f"/v1/jobs/{job['id']}").json()
    epoch_data = seen[epoch][1]
    assert ended["status"] == "succeeded"
    assert ended["metrics"] == [{key: epoch_data[key] for key in ("epoch", "train_loss", "test_loss", "test_accuracy")}]
