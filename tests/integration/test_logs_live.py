"""Real processes: `mnist-jobs serve --log-format json` writes nothing but JSON lines (its workers'
included), access lines with their request id; a worker logs why a job failed; /metrics sees it all;
the supervisor of `worker --all-gpus` hands its log format to its workers and stops them gracefully."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import REPO, mnist_jobs, wait_until
from tests.support.settings import local_sources_only, migrate, settings_env


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of `text` as JSON (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_serve_with_json_logs_writes_only_json_lines(live_server, tmp_path):
    server = live_server(workers=1, log_format="json")
    job = server.client.post("/v1/jobs", json={"architecture": "fc"}, headers={"X-Request-ID": "trace-json"}).json()
    assert server.wait_for_status(job["id"], {"succeeded"})["status"] == "succeeded"
    metrics = server.client.get("/metrics").text
    log = tmp_path / "serve-0.log"

    def ended() -> list[dict[str, Any]] | None:
        lines = json_lines(log.read_text())
        return lines if any(line.get("transition") == "succeeded" for line in lines) else None

    lines = wait_until(ended, timeout=60)
    access = [line for line in lines if line["logger"] == "uvicorn.access" and line.get("request_id") == "trace-json"]
    assert [(line["method"], line["path"], line["status_code"]) for line in access] == [("POST", "/v1/jobs", 201)]
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    assert not [line for line in lines if line["logger"] == "alembic.runtime.plugins"], "no line per plugin"
    transitions = [(line["transition"], line["attempt"]) for line in lines if line.get("job_id") == job["id"]]
    assert transitions == [("claimed", 1), ("succeeded", 1)]
    assert len({line["worker_id"] for line in lines if line.get("job_id") == job["id"]}) == 1

    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
    }
    assert samples[("mnist_jobs_jobs", (("status", "succeeded"),))] == 1
    assert samples[("mnist_jobs_workers", ())] == 1
    posted = (("method", "POST"), ("route", "/v1/jobs"), ("status", "201"))
    assert samples[("mnist_jobs_http_requests_total", posted)] == 1


def test_a_worker_process_logs_why_its_job_failed(settings, tmp_path, mnist_data):
    from service.jobs import lifecycle
    from service.jobs.schemas import job_spec_adapter
    from service.platform.db import Database

    nowhere = local_sources_only(settings, tmp_path, mnist_data[1])  # an empty data dir, no source to fill it
    migrate(nowhere.database_url)
    db = Database(nowhere.database_url)
    with db.write() as session:
        spec = job_spec_adapter.validate_python({"architecture": "cnn"})
        job, _ = lifecycle.enqueue(session, spec, default_max_attempts=3)
        job_id = job.id
    done = subprocess.run(
        mnist_jobs("worker", "--max-jobs", "1", "--log-format", "json"),
        env=settings_env(nowhere),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    with db.read() as session:
        error = lifecycle.get(session, job_id).error
    db.dispose()
    lines = json_lines(done.stderr)
    (failed,) = [line for line in lines if line.get("job_id") == job_id and line.get("transition") == "failed"]
    assert error and failed["reason"] == error and "mnist" in error
    assert failed["attempt"] == 1 and failed["level"] == "WARNING"
    assert any(line.get("worker_id") == failed["worker_id"] and "pid" in line["message"] for line in lines)


SUPERVISE = """
from cli.supervisor import supervise
from service.platform import logs
from service.platform.config import Settings

settings = Settings()
logs.setup(logs.worker_config(settings.log_format))
supervise(["cpu", "cpu"], settings)  # what `worker --all-gpus` runs, given two devices
"""


def test_the_supervisor_runs_a_worker_per_device_and_stops_them_all(settings):
    from service.platform import metrics
    from service.platform.db import Database

    migrate(settings.database_url)
    db = Database(settings.database_url)

    def live() -> int:
        with db.read() as session:
            return len(metrics.live_workers(session))

    proc = subprocess.Popen(
        [sys.executable, "-c", SUPERVISE],
        env=settings_env(settings, log_format="json"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: live() == 2, timeout=120, interval=0.2)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    assert live() == 0, "each worker said it stopped"
    lines = json_lines(output)  # the supervisor's lines and its workers', all JSON
    assert any(line["message"] == "started 2 worker(s): cpu, cpu" for line in lines)
    assert len({line["worker_id"] for line in lines if "worker_id" in line}) == 2
    db.dispose()
