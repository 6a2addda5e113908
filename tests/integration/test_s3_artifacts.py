"""Artifacts in an S3-compatible object store: moto's real server process (bench/s3.py), reached
through boto3's own variables, behind a relay that cuts it off for the outage tests.

The store on its own (integrity, copies, deletes, retries), then the whole service on it: `serve`
with a worker writes checkpoints into the bucket, the API streams and redirects downloads, exports
and predicts from it, reuse copies objects and deletes leave nothing behind; and a job survives
the store going away for 10 s, also when its worker is killed meanwhile.
"""

from __future__ import annotations

import base64
import hashlib
import signal
import time

import httpx
import pytest

from service.platform.errors import CheckpointCorrupt, StoreUnavailable
from service.storage.s3 import S3Store
from service.storage.store import open_store, read_verified
from tests.support.processes import wait_until


@pytest.fixture
def settings(s3_settings):
    """Every test here keeps its artifacts in a new bucket."""
    return s3_settings


def bucket_of(settings) -> str:
    return settings.artifacts_url.removeprefix("s3://").split("/")[0]


def store_of(settings, **changes) -> S3Store:
    store = open_store(settings.model_copy(update=changes))
    assert isinstance(store, S3Store)
    return store


def test_objects_carry_their_sha256_and_every_read_is_checked(settings, s3_server):
    store = store_of(settings)
    written = store.put("jobs/a/epoch-001.pt", b"weights")
    assert written.sha256 == hashlib.sha256(b"weights").hexdigest()
    raw = s3_server.client()
    head = raw.head_object(Bucket=bucket_of(settings), Key="run/jobs/a/epoch-001.pt", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(b"weights").digest()).decode()
    assert head["Metadata"]["sha256"] == written.sha256
    assert read_verified(store, written, "checkpoint") == b"weights"
    assert store.local_copy(written).read_bytes() == b"weights"

    with pytest.raises(FileNotFoundError):
        store.get("jobs/a/missing.pt")
    # Another writer replaces the object: nothing serves or opens it, the cached copy included.
    raw.put_object(Bucket=bucket_of(settings), Key="run/jobs/a/epoch-001.pt", Body=b"tampered")
    store.local_copy(written).write_bytes(b"stale cache")
    with pytest.raises(CheckpointCorrupt):
        read_verified(store, written, "checkpoint")
    with pytest.raises(CheckpointCorrupt):
        store.local_copy(written)
    with pytest.raises(CheckpointCorrupt):
        store_of(settings, artifacts_presign_seconds=60).download_url(written, "a.pt")


def test_a_copy_outlives_its_original_and_a_job_delete_leaves_nothing(settings, s3_server):
    store = store_of(settings)
    original = store.put("jobs/one/epoch-001.pt", b"bytes of one")
    store.put("jobs/one/models/epoch-001.onnx", b"model")
    copy = store.link(original, "jobs/two/epoch-001.pt")
    store.delete_job("one")
    assert s3_server.keys(bucket_of(settings)) == ["run/jobs/two/epoch-001.pt"]
    assert read_verified(store, copy, "copy") == b"bytes of one"
    store.delete_job("two")
    store.delete_job("two")  # already gone: fine
    assert s3_server.keys(bucket_of(settings)) == []


def test_a_call_waits_out_an_outage_and_gives_up_after_the_retry_window(settings, s3_server):
    store = store_of(settings)
    s3_server.outage_in_background(3.0)
    written = store.put("jobs/a/during-outage.pt", b"kept")
    assert time.monotonic() > s3_server.outages[-1][1]  # it returned only once the store was back
    assert store.get(written.path) == b"kept"

    impatient = store_of(settings, artifacts_retry_seconds=1.0)
    ended = len(s3_server.outages)
    outage = s3_server.outage_in_background(6.0)
    with pytest.raises(StoreUnavailable):
        impatient.put("jobs/a/never.pt", b"x")
    assert len(s3_server.outages) == ended  # it gave up while the store was still away
    outage.join()


def tiny_job(**fields) -> dict[str, object]:
    return {"architecture": "cnn", "batch_size": 8, "seed": 11, "epochs": 2, **fields}


def test_the_service_keeps_serves_copies_and_deletes_its_artifacts_in_the_bucket(settings, s3_server, live_server):
    server = live_server(workers=1)
    api = server.client
    job_id = api.post("/v1/jobs", json=tiny_job()).json()["id"]
    job = server.wait_for_status(job_id, {"succeeded", "failed"})
    assert job["status"] == "succeeded", job
    keys = s3_server.keys(bucket_of(settings))
    assert any(k.startswith(f"run/jobs/{job_id}/epoch-002-") for k in keys), keys
    assert not (settings.artifacts_dir / "jobs").exists()  # nothing of the job on the local disk

    got = api.get(f"/v1/jobs/{job_id}/checkpoint")
    assert got.status_code == 200
    etag = got.headers["etag"].strip('"')
    assert hashlib.sha256(got.content).hexdigest() == etag
    part = api.get(f"/v1/jobs/{job_id}/checkpoint", headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == got.content[:10]
    head = api.head(f"/v1/jobs/{job_id}/checkpoint")
    assert head.headers["content-length"] == str(len(got.content)) and head.content == b""

    onnx = api.get(f"/v1/jobs/{job_id}/model", params={"format": "onnx"})
    assert onnx.status_code == 200, onnx.text
    assert any(k.startswith(f"run/jobs/{job_id}/models/") for k in s3_server.keys(bucket_of(settings)))
    predicted = api.post(f"/v1/jobs/{job_id}/predict", json={"pixels": [0] * 784})
    assert predicted.status_code == 200, predicted.text

    reuser = api.post("/v1/jobs", json=tiny_job(reuse=True)).json()
    assert reuser["reused_from"] == job_id
    assert api.delete(f"/v1/jobs/{job_id}").status_code == 204
    left = s3_server.keys(bucket_of(settings))
    assert not [k for k in left if k.startswith(f"run/jobs/{job_id}/")], left
    again = api.get(f"/v1/jobs/{reuser['id']}/checkpoint")
    assert again.status_code == 200 and again.content == got.content  # the copy outlived the original
    assert api.delete(f"/v1/jobs/{reuser['id']}").status_code == 204
    assert s3_server.keys(bucket_of(settings)) == []


def test_downloads_redirect_to_a_checked_presigned_url_when_set(settings, s3_server, live_server):
    server = live_server(workers=1, artifacts_presign_seconds=120)
    api = server.client
    job_id = api.post("/v1/jobs", json=tiny_job(epochs=1)).json()["id"]
    assert server.wait_for_status(job_id, {"succeeded", "failed"})["status"] == "succeeded"
    for path, params in ((f"/v1/jobs/{job_id}/checkpoint", {}), (f"/v1/jobs/{job_id}/model", {"format": "onnx"})):
        answer = api.get(path, params=params)
        assert answer.status_code == 307, answer.text
        location = answer.headers["location"]
        assert location.startswith(s3_server.endpoint) and "Signature" in location
        fetched = httpx.get(location)
        assert fetched.status_code == 200
        assert hashlib.sha256(fetched.content).hexdigest() == answer.headers["etag"].strip('"')


def checkpoints_in(settings, s3_server, job_id: str) -> list[str]:
    return [k for k in s3_server.keys(bucket_of(settings)) if k.startswith(f"run/jobs/{job_id}/epoch-")]


def test_a_job_survives_the_store_away_for_ten_seconds(settings, s3_server, live_server):
    server = live_server(workers=1)
    api = server.client
    job_id = api.post("/v1/jobs", json=tiny_job(epochs=30)).json()["id"]
    wait_until(lambda: len(checkpoints_in(settings, s3_server, job_id)) >= 2, timeout=120)
    s3_server.outage(10.0)
    job = server.wait_for_status(job_id, {"succeeded", "failed"}, timeout=240)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1  # no attempt spent: the worker waited for the store
    with open(server.log.name, errors="replace") as log:
        assert "artifact store unreachable" in log.read()
    assert server.proc.poll() is None


def test_a_worker_killed_while_the_store_is_away_resumes_from_a_durable_checkpoint(
    settings, s3_server, workers, client
):
    first = workers.start(lease_seconds=3, reap_seconds=0.5)
    job_id = client.post("/v1/jobs", json=tiny_job(epochs=30)).json()["id"]

    def durable_epochs() -> int:
        return len(client.get(f"/v1/jobs/{job_id}").json()["metrics"])

    wait_until(lambda: durable_epochs() >= 3, timeout=120)
    outage = s3_server.outage_in_background(10.0)
    first.send_signal(signal.SIGKILL)
    first.wait()
    durable = durable_epochs()  # read after the kill: no write of the first worker's can follow
    workers.start(lease_seconds=3, reap_seconds=0.5)
    outage.join()
    job = wait_until(lambda: (j := client.get(f"/v1/jobs/{job_id}").json())["status"] == "succeeded" and j, 240)
    assert len(job["history"]) == 2
    assert job["history"][1]["resumed_from_epoch"] == durable
    assert [e["epoch"] for e in job["metrics"]] == list(range(1, 31))
