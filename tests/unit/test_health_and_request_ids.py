"""Liveness vs readiness (the database answers and is still the file it started with), and the
X-Request-ID on every answer and in every log line about the request."""

from __future__ import annotations

import logging
import os
import re
import shutil

import pytest
from fastapi.testclient import TestClient

from api.guards import RequestIdFilter, log_config
from service.platform.db import upgrade

PROBLEM = "application/problem+json"


def test_live_and_ready_answer_ok_while_the_database_is_the_one_opened(client):
    for path in ("/healthz", "/healthz/live", "/healthz/ready"):
        response = client.get(path)
        assert response.status_code == 200 and response.json() == {"status": "ok"}, path


def test_a_deleted_database_file_makes_ready_503_but_not_live(client, settings):
    db_file = settings.database_url.removeprefix("sqlite:///")
    assert client.get("/healthz").status_code == 200
    os.unlink(db_file)  # the server's open connections still answer: only the file check sees it
    for path in ("/healthz", "/healthz/ready"):
        response = client.get(path)
        assert response.status_code == 503 and response.headers["content-type"] == PROBLEM, path
        assert "the database file is gone" in response.json()["detail"]
        assert db_file not in response.text and "jobs.db" not in response.text, "no path in the answer"
    assert client.get("/healthz/live").status_code == 200, "the process still runs"


def test_a_replaced_database_file_makes_ready_503(client, settings, tmp_path):
    db_file = settings.database_url.removeprefix("sqlite:///")
    other = tmp_path / "other.db"
    upgrade(f"sqlite:///{other}")
    shutil.move(other, db_file)  # a new inode under the same name
    response = client.get("/healthz")
    assert response.status_code == 503 and "replaced since the server started" in response.json()["detail"]


SANE = re.compile(r"[0-9a-f]{32}")


@pytest.mark.parametrize(
    "sent, kept",
    [("abc-123.X_y", True), ("a" * 64, True), ("a" * 65, False), ("", False), ("bad id", False), ("x\u00e9", False)],
)
def test_every_answer_carries_a_sane_request_id(client, sent, kept):
    headers = {"X-Request-ID": sent.encode()}  # bytes: httpx sends them as they are
    rid = client.get("/v1/jobs", headers=headers).headers["x-request-id"]
    assert rid == sent if kept else SANE.fullmatch(rid)


@pytest.mark.parametrize(
    "method, path, kwargs, status",
    [
        ("GET", "/healthz", {}, 200),
        ("GET", "/v1/jobs/not-a-uuid", {}, 422),
        ("GET", "/v1/jobs", {"headers": {"Host": "evil.example"}}, 400),
        ("POST", "/v1/jobs", {"content": b"x" * 20000, "headers": {"Content-Type": "application/json"}}, 413),
        ("POST", "/v1/jobs", {"content": b"{}", "headers": {"Content-Type": "text/plain"}}, 415),
        ("GET", "/nowhere", {}, 404),
    ],
)
def test_the_request_id_is_on_guard_and_error_answers_too(client, method, path, kwargs, status):
    response = client.request(method, path, **kwargs)
    assert response.status_code == status
    assert SANE.fullmatch(response.headers["x-request-id"])
    echoed = client.request(method, path, **{**kwargs, "headers": {**kwargs.get("headers", {}), "X-Request-ID": "r-1"}})
    assert echoed.headers["x-request-id"] == "r-1"


def test_log_lines_about_a_request_carry_its_id(settings, caplog):
    from api.app import create_app

    upgrade(settings.database_url)
    app = create_app(settings)

    @app.get("/log-something")
    def log_something() -> dict[str, str]:
        logging.getLogger("api.test").warning("something about this request")
        return {}

    id_filter = RequestIdFilter()
    caplog.handler.addFilter(id_filter)
    try:
        with TestClient(app) as client, caplog.at_level(logging.INFO):
            client.get("/log-something", headers={"X-Request-ID": "trace-42"})
            logging.getLogger("api.test").warning("outside any request")
    finally:
        caplog.handler.removeFilter(id_filter)
    ids = {r.getMessage(): r.request_id for r in caplog.records if r.name == "api.test"}
    assert ids == {"something about this request": "trace-42", "outside any request": "-"}


def test_uvicorns_log_config_puts_the_id_on_access_and_app_lines():
    config = log_config()
    assert "%(request_id)s" in config["formatters"]["access"]["fmt"]
    assert "%(request_id)s" in config["formatters"]["default"]["fmt"]
    assert all(h["filters"] == ["request_id"] for h in config["handlers"].values())
    assert config["root"]["handlers"] == ["default"]
