"""POST to downloaded checkpoint through real processes: `mnist-jobs serve` and `mnist-jobs worker`."""

from __future__ import annotations

import base64
import hashlib
import io
import signal
import subprocess

import torch

from service.jobs import lifecycle
from service.jobs.schemas import job_spec_adapter
from service.platform.db import Database
from service.training.evaluation import evaluate
from service.training.nets import build_model
from service.training.tensors import load_tensors
from tests.support.files import immutable
from tests.support.processes import REPO, mnist_jobs, wait_until
from tests.support.settings import settings_env


def test_job_from_post_to_downloaded_checkpoint(settings, live_server, workers):
    server = live_server(workers=0)
    worker = workers.start(step_metrics_every=5)
    response = server.client.post("/v1/jobs", json={"architecture": "cnn", "permutation_seed": 42, "epochs": 2})
    assert response.status_code == 201
    job_id = response.json()["id"]

    job = server.wait_for_status(job_id, {"succeeded", "failed"})
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 1 and job["started_at"] and job["finished_at"]
    assert job["progress"]["fraction"] == 1.0
    assert [m["epoch"] for m in job["metrics"]] == [1, 2]
    result = job["result"]
    assert result["total"] == 200 and 0 <= result["test_accuracy"] <= 1
    assert result["test_accuracy"] == result["correct"] / result["total"] == job["metrics"][-1]["test_accuracy"]
    assert result["device"] == "cpu" and result["torch_version"] == torch.__version__
    assert [c["epoch"] for c in result["checkpoints"]] == [1, 2]
    database = Database(settings.database_url)
    with database.read() as session:  # 2 epochs of 10 steps, one record every 5
        steps = lifecycle.steps(session, job_id, from_step=0, limit=100)
    database.dispose()
    assert [(point.step, point.epoch) for point in steps] == [(5, 1), (10, 1), (15, 2), (20, 2)]

    download = server.client.get(f"/v1/jobs/{job_id}/checkpoint")
    assert download.status_code == 200
    sha256 = hashlib.sha256(download.content).hexdigest()
    assert download.headers["etag"] == f'"{sha256}"' == f'"{result["checkpoints"][-1]["sha256"]}"'
    assert download.headers["repr-digest"] == f"sha-256=:{base64.b64encode(bytes.fromhex(sha256)).decode()}:"
    assert len(download.content) == result["checkpoints"][-1]["size_bytes"]
    not_modified = server.client.get(f"/v1/jobs/{job_id}/checkpoint", headers={"If-None-Match": f'"{sha256}"'})
    assert not_modified.status_code == 304

    checkpoint = torch.load(io.BytesIO(download.content), weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["spec"] == job["spec"]
    model = build_model(job_spec_adapter.validate_python(checkpoint["spec"]))
    model.load_state_dict(checkpoint["state_dict"])
    data = load_tensors(settings, "mnist").permuted_by(job["spec"]["permutation_seed"])
    assert data.permutation is not None and torch.equal(checkpoint["permutation"], data.permutation)
    correct = evaluate(model, data.test_x, data.test_y, 1000).correct
    assert correct == result["correct"], "the downloaded model reproduces the stored accuracy exactly"

    first = server.client.get(f"/v1/jobs/{job_id}/checkpoint", params={"epoch": 1})
    assert first.status_code == 200 and first.headers["etag"] == f'"{result["checkpoints"][0]["sha256"]}"'
    assert server.client.get(f"/v1/jobs/{job_id}/checkpoint", params={"epoch": 3}).status_code == 404

    assert [w["pid"] for w in server.client.get("/v1/workers").json()] == [worker.pid]

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=120) == 0
    assert server.client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert not (settings.artifacts_dir / "jobs" / job_id).exists()


def test_cancel_stops_a_running_job_mid_epoch(live_server, workers):
    server = live_server(workers=0)
    workers.start()
    # 100 epochs of 600 single-image steps: only a cancel ends this job in a test's lifetime.
    job_id = server.client.post("/v1/jobs", json={"architecture": "fc", "epochs": 100, "batch_size": 1}).json()["id"]
    wait_until(lambda: (server.client.get(f"/v1/jobs/{job_id}").json().get("progress") or {}).get("step"))

    response = server.client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202 and response.json()["cancel_requested"]
    job = server.wait_for_status(job_id, {"cancelled", "succeeded", "failed"})
    assert job["status"] == "cancelled" and job["finished_at"]
    assert job["attempts"] == 1 and job["history"][-1]["ended"] == "cancelled"
    assert len(job["metrics"]) < 100


def test_serve_runs_workers_and_stops_them_all_on_sigterm(live_server):
    server = live_server(workers=2)
    ids = [server.client.post("/v1/jobs", json={"architecture": arch}).json()["id"] for arch in ("fc", "cnn")]
    jobs = [server.wait_for_status(job_id, {"succeeded", "failed"}) for job_id in ids]
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded"]
    registered = wait_until(lambda: len(w := server.client.get("/v1/workers").json()) == 2 and w)
    pids = [w["pid"] for w in registered]

    assert server.stop() == 0

    def gone(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().split()[2] == "Z"
        except FileNotFoundError:
            return True

    wait_until(lambda: all(gone(pid) for pid in pids))


def test_a_worker_on_an_unmigrated_database_says_what_to_run_and_exits(settings):
    result = subprocess.run(
        mnist_jobs("worker"), env=settings_env(settings), cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1
    assert "run `mnist-jobs db upgrade`" in result.stderr and "Traceback" not in result.stderr


def test_a_delete_whose_files_cannot_be_removed_keeps_the_job_on_a_live_server(settings, live_server):
    server = live_server(workers=1)
    job_id = server.client.post("/v1/jobs", json={"architecture": "fc", "epochs": 2}).json()["id"]
    assert server.wait_for_status(job_id, {"succeeded", "failed"})["status"] == "succeeded"
    folder = settings.artifacts_dir / "jobs" / job_id
    files = sorted(p.name for p in folder.iterdir())
    with immutable(folder / files[0]):  # as a read-only or foreign-owned artifacts dir would
        refused = server.client.delete(f"/v1/jobs/{job_id}")
        assert refused.status_code == 500 and refused.headers["content-type"] == "application/problem+json"
        assert "could not be removed" in refused.json()["detail"] and str(settings.artifacts_dir) not in refused.text
        assert server.client.get(f"/v1/jobs/{job_id}").status_code == 200, "the job is kept"
        assert files[0] in {p.name for p in folder.iterdir()}
    assert server.client.delete(f"/v1/jobs/{job_id}").status_code == 204, "and deleted once the files can go"
    assert not folder.exists()
    assert server.client.get(f"/v1/jobs/{job_id}").status_code == 404
