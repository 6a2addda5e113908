"""Log lines as text or JSON (service/platform/logs.py): the request id on every line about a request, and a
worker's line for each job transition, with the reason when a job fails."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.jobs import lifecycle
from service.jobs.schemas import job_spec_adapter
from service.platform import logs
from service.platform.logs import JsonFormatter, RequestIdFilter
from service.queue import leases
from tests.support.settings import local_sources_only, migrate
from tests.support.training import CPU


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """The root logger writing JSON lines (with the request id filter) into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield buffer
    root.removeHandler(handler)
    root.setLevel(level)


def parsed(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_a_json_line_has_the_fields_a_collector_reads(json_lines):
    logging.getLogger("mnist_jobs.test").warning(
        "job %s: %s", "j-1", "failed", extra={"job_id": "j-1", "attempt": 2, "reason": "boom"}
    )
    (line,) = parsed(json_lines)
    assert line.pop("ts").endswith("+00:00")
    assert line == {
        "level": "WARNING",
        "logger": "mnist_jobs.test",
        "message": "job j-1: failed",
        "job_id": "j-1",
        "attempt": 2,
        "reason": "boom",
    }, "no request_id outside a request"


def test_an_access_line_carries_its_request_fields():
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/x", "1.1", 404),
        None,
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == '127.0.0.1:5000 - "GET /x HTTP/1.1" 404'
    assert (line["method"], line["path"], line["status_code"], line["client_addr"]) == (
        "GET",
        "/x",
        404,
        "127.0.0.1:5000",
    )


def test_an_exception_is_one_line_with_its_traceback(json_lines):
    try:
        raise ValueError("bad")
    except ValueError:
        logging.getLogger("t").exception("it failed")
    (line,) = parsed(json_lines)
    assert line["message"] == "it failed" and "ValueError: bad" in line["exc"]


def test_an_api_requests_lines_carry_its_request_id(settings, json_lines):
    from api.app import create_app

    migrate(settings.database_url)
    app = create_app(settings)

    @app.get("/log-something")
    def log_something() -> dict[str, str]:
        logging.getLogger("api.test").info("inside the request")
        return {}

    with TestClient(app) as client:
        assert client.get("/log-something", headers={"X-Request-ID": "trace-9"}).headers["x-request-id"] == "trace-9"
        made = client.get("/log-something").headers["x-request-id"]
    logging.getLogger("api.test").info("outside any request")
    lines = [line for line in parsed(json_lines) if line["logger"] == "api.test"]
    assert [(line["message"], line.get("request_id")) for line in lines] == [
        ("inside the request", "trace-9"),
        ("inside the request", made),
        ("outside any request", None),
    ]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_uvicorn_config_puts_the_id_on_every_line_in_either_format(log_format):
    config = logs.uvicorn_config(log_format)
    assert config["filters"]["request_id"]["()"] == "service.platform.logs.RequestIdFilter"
    assert all(handler["filters"] == ["request_id"] for handler in config["handlers"].values())
    assert config["root"]["handlers"] == ["default"]
    for name in ("default", "access"):
        formatter = config["formatters"][name]
        if log_format == "json":
            assert formatter == {"()": "service.platform.logs.JsonFormatter"}
        else:
            assert "%(request_id)s" in formatter["fmt"]


def test_a_worker_logs_each_job_transition_and_why_a_job_failed(settings, db, tmp_path, mnist_data, json_lines):
    from workers.data_cache import DataCache
    from workers.runner import JobRunner, log_transition

    nowhere = local_sources_only(settings, tmp_path, mnist_data[1])  # an empty data dir, no source to fill it
    with db.write() as session:
        job, _ = lifecycle.enqueue(
            session, job_spec_adapter.validate_python({"architecture": "fc"}), default_max_attempts=3
        )
        job_id = job.id
    with db.write() as session:
        (claim,) = leases.claim(session, "worker-7", 60)
    log_transition(claim, "worker-7", "claimed")  # what the worker's loop logs as it claims
    outcomes = JobRunner(nowhere, db, "worker-7", CPU, DataCache(nowhere, CPU)).run([claim])
    assert outcomes == {job_id: "failed"}
    with db.read() as session:
        error = lifecycle.get(session, job_id).error
    assert error and "mnist" in error
    lines = [line for line in parsed(json_lines) if line.get("job_id") == job_id]
    assert [line["transition"] for line in lines] == ["claimed", "failed"]
    claimed, failed = lines
    for line in lines:
        assert (line["attempt"], line["worker_id"]) == (1, "worker-7")
    assert "reason" not in claimed
    assert failed["level"] == "WARNING" and failed["reason"] == error
    assert failed["message"] == f"job {job_id} attempt 1 on worker worker-7: failed: {error}"


def test_a_worker_configures_text_or_json_lines(capsys):
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        for log_format in ("text", "json"):
            logs.setup(logs.worker_config(log_format))
            logging.getLogger("mnist_jobs.worker").info("hello", extra={"worker_id": "w-1"})
    finally:
        root.handlers[:], root.level = handlers, level
        logging.captureWarnings(False)
    text, json_line = capsys.readouterr().err.strip().splitlines()[-2:]
    assert "INFO hello" in text and "worker[" in text
    assert json.loads(json_line)["worker_id"] == "w-1"
