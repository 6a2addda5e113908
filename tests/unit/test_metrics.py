"""GET /metrics through the real app: the queue's gauges from the database, the job duration
histogram and samples counter fed at scrape time, the HTTP requests by route template."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from service.jobs.schemas import StepMetrics
from service.platform.models import Job, utcnow
from service.queue import leases, registry
from tests.support.queue import end_jobs, result
from tests.support.settings import migrate

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient, **headers: str) -> Samples:
    """Every sample of a scrape, by name and labels; the text must parse as Prometheus' format."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def submit(client: TestClient, architecture: str = "fc") -> str:
    response = client.post("/v1/jobs", json={"architecture": architecture})
    assert response.status_code == 201
    job_id: str = response.json()["id"]
    return job_id


def test_the_job_gauges_count_each_status_and_the_runnable_queue(db, client):
    ids = [submit(client) for _ in range(5)]
    end_jobs(db, {ids[0]: 0.9, ids[1]: "boom"})  # the other three go back to the queue
    with db.write() as session:  # one of them runs, one waits out a backoff
        leases.claim(session, "worker-1", 60)
        backoff = utcnow() + timedelta(minutes=5)
        session.execute(update(Job).where(Job.id == ids[4]).values(run_after=backoff))
        # the oldest queued job was submitted a minute ago
        session.execute(update(Job).where(Job.id == ids[3]).values(created_at=utcnow() - timedelta(minutes=1)))
    samples = scrape(client)
    counts = {status: value(samples, "mnist_jobs_jobs", status=status) for status in ("queued", "running")}
    assert counts == {"queued": 2, "running": 1}
    assert value(samples, "mnist_jobs_jobs", status="succeeded") == 1
    assert value(samples, "mnist_jobs_jobs", status="failed") == 1
    assert value(samples, "mnist_jobs_jobs", status="cancelled") == 0
    assert value(samples, "mnist_jobs_queue_depth") == 1, "the job in backoff is queued, not runnable"
    assert 60 <= (value(samples, "mnist_jobs_queue_oldest_age_seconds") or 0) < 120
    assert value(samples, "mnist_jobs_database_up") == 1


def test_each_ended_job_is_observed_once_by_the_duration_histogram(db, client):
    first, second, third = submit(client), submit(client, "cnn"), submit(client)
    end_jobs(db, {first: 0.9, second: "boom"})
    with db.write() as session:  # `first` ran for 90 s
        ended = session.get_one(Job, first).finished_at
        assert ended is not None
        session.execute(update(Job).where(Job.id == first).values(started_at=ended - timedelta(seconds=90)))
    name = "mnist_jobs_job_duration_seconds"
    samples = scrape(client)
    assert value(samples, f"{name}_count", status="succeeded", architecture="fc") == 1
    assert value(samples, f"{name}_count", status="failed", architecture="cnn") == 1
    assert value(samples, f"{name}_sum", status="succeeded", architecture="fc") == 90
    assert value(samples, f"{name}_bucket", status="succeeded", architecture="fc", le="60.0") == 0
    assert value(samples, f"{name}_bucket", status="succeeded", architecture="fc", le="120.0") == 1
    assert value(scrape(client), f"{name}_count", status="succeeded", architecture="fc") == 1, "not twice"
    end_jobs(db, {third: 0.8})
    assert value(scrape(client), f"{name}_count", status="succeeded", architecture="fc") == 2


def test_jobs_that_ended_before_the_app_started_are_not_its_to_count(db, settings):
    from api.app import create_app

    migrate(settings.database_url)
    with TestClient(create_app(settings)) as early:
        job = submit(early)
        end_jobs(db, {job: 0.9})
        with TestClient(create_app(settings)) as late:  # a second app, its own registry
            late_samples = scrape(late)
        early_samples = scrape(early)
    labels = {"status": "succeeded", "architecture": "fc"}
    assert value(early_samples, "mnist_jobs_job_duration_seconds_count", **labels) == 1
    assert value(late_samples, "mnist_jobs_job_duration_seconds_count", **labels) is None
    assert value(late_samples, "mnist_jobs_jobs", status="succeeded") == 1, "the gauges see every job"


def steps(first: int, last: int) -> list[StepMetrics]:
    return [StepMetrics(step=s, epoch=1, samples=64 * s, loss=1.0) for s in range(first, last + 1)]


def test_training_samples_count_how_far_the_recorded_steps_moved_between_scrapes(db, client):
    for _ in range(2):
        submit(client)
    with db.write() as session:
        one, two = leases.claim(session, "worker-1", 60, limit=2)
        leases.record_steps(session, one, steps(1, 10))  # trained before the first scrape: its baseline
    first = scrape(client)
    assert value(first, "mnist_jobs_training_samples_total") == 0
    assert value(first, "mnist_jobs_training_samples_per_second") is None, "one scrape gives no rate yet"
    with db.write() as session:
        leases.record_steps(session, one, steps(11, 30))  # 20 steps more
        leases.record_steps(session, two, steps(1, 5))  # first seen now
    second = scrape(client)
    assert value(second, "mnist_jobs_training_samples_total") == 64 * 25
    assert (value(second, "mnist_jobs_training_samples_per_second") or 0) > 0
    with db.write() as session:  # `one` ends with its last steps; it still counts, once
        leases.finish(session, one, result(0.9), None, steps(31, 40))
    third = scrape(client)
    assert value(third, "mnist_jobs_training_samples_total") == 64 * 35
    assert value(scrape(client), "mnist_jobs_training_samples_total") == 64 * 35


def test_workers_alive_and_the_age_of_each_ones_heartbeat(db, client):
    with db.write() as session:
        for worker_id in ("w-1", "w-2"):
            registry.register(session, worker_id, host="h", pid=os.getpid(), device="cpu", torch_version="2.14.1")
        registry.seen(session, "w-2", current_job_id=None, stopped=True)
    samples = scrape(client)
    assert value(samples, "mnist_jobs_workers") == 1
    age = value(samples, "mnist_jobs_worker_heartbeat_age_seconds", worker="w-1", host="h", device="cpu")
    assert age is not None and 0 <= age < 60
    assert value(samples, "mnist_jobs_worker_heartbeat_age_seconds", worker="w-2", host="h", device="cpu") is None


def test_requests_are_counted_by_route_template_and_status_never_by_raw_path(client):
    ids = [submit(client), submit(client)]
    for job_id in ids:
        assert client.get(f"/v1/jobs/{job_id}").status_code == 200
    assert client.get("/v1/jobs/00000000-0000-0000-0000-000000000000").status_code == 404
    assert client.get("/no/such/path").status_code == 404
    assert client.get("/v1/jobs", headers={"Host": "evil.example"}).status_code == 400  # a guard's answer
    samples = scrape(client)
    total = "mnist_jobs_http_requests_total"
    assert value(samples, total, method="GET", route="/v1/jobs/{job_id}", status="200") == 2
    assert value(samples, total, method="GET", route="/v1/jobs/{job_id}", status="404") == 1
    assert value(samples, total, method="POST", route="/v1/jobs", status="201") == 2
    assert value(samples, total, method="GET", route="/v1/jobs", status="400") == 1
    assert value(samples, total, method="GET", route="unmatched", status="404") == 1
    latency = value(samples, "mnist_jobs_http_request_duration_seconds_count", method="GET", route="/v1/jobs/{job_id}")
    assert latency == 3
    routes = {dict(labels).get("route") for (_, labels) in samples}
    assert not any(job_id in str(route) for job_id in ids for route in routes), "no raw path in a label"
    assert "/no/such/path" not in routes


@pytest.mark.parametrize("token, status", [(None, 401), ("wrong", 401), ("reader", 200), ("admin", 200)])
def test_with_tokens_configured_a_scrape_needs_a_read_token(settings, token, status):
    from api.app import create_app

    settings = settings.model_copy(update={"api_tokens": "reader:read,admin:admin"})
    migrate(settings.database_url)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with TestClient(create_app(settings)) as client:
        response = client.get("/metrics", headers=headers)
    assert response.status_code == status
    assert ("mnist_jobs_jobs" in response.text) == (status == 200)


def test_openmetrics_when_the_scraper_asks_for_it(client):
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")
