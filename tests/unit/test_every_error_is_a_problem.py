"""Every answer to a bad input is a problem naming its field, and an exception no handler takes is a
problem+json 500 with the request id: never Starlette's bare text/plain 500."""

from __future__ import annotations

import sqlite3

import pytest

from api.errors import PROBLEM_JSON
from api.strict_query import INT64_MAX

# Inputs that reached a bare 500: Unicode digits int() takes, offsets that carry a datetime past
# year 1 or 9999 in UTC, and an integer past the databases' 64 bits.
FIVE_QUERIES = [
    ("/v1/jobs?permutation_seed=%C2%B2", "query.permutation_seed"),  # "²"
    ("/v1/jobs?permutation_seed=%E2%91%A0", "query.permutation_seed"),  # "①"
    ("/v1/jobs?created_after=0001-01-01T00:00:00%2B14:00", "query.created_after"),
    ("/v1/jobs?created_before=9999-12-31T23:59:59-14:00", "query.created_before"),
    ("/v1/jobs/{job}/metrics?from_step=9223372036854775808", "query.from_step"),
]


def assert_problem(answer, status: int, field: str | None = None) -> dict[str, object]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM_JSON
    assert answer.headers.get("x-request-id")
    body = answer.json()
    assert body["status"] == status
    if field is not None:
        assert body["field"] == field, body
    return body


@pytest.mark.parametrize(("url", "field"), FIVE_QUERIES)
def test_the_inputs_that_were_a_bare_500_are_422s_naming_their_field(client, url, field):
    job = client.post("/v1/jobs", json={"architecture": "fc"}).json()["id"]
    assert_problem(client.get(url.format(job=job)), 422, field)


@pytest.mark.parametrize("value", [2**63, 10**30])
def test_every_integer_parameter_past_64_bits_is_a_422(client, value):
    job = client.post("/v1/jobs", json={"architecture": "fc"}).json()["id"]
    for url, field in [
        (f"/v1/jobs/{job}/metrics?from_step={value}", "query.from_step"),
        (f"/v1/jobs/{job}/checkpoint?epoch={value}", "query.epoch"),
        (f"/v1/jobs/{job}/model?format=onnx&epoch={value}", "query.epoch"),
        (f"/v1/jobs?seed={value}", "query.seed"),
        (f"/v1/jobs?permutation_seed={value}", "query.permutation_seed"),
        (f"/v1/datasets/mnist/samples.png?permutation_seed={value}", "query.permutation_seed"),
    ]:
        assert_problem(client.get(url), 422, field)


def test_the_largest_64_bit_integer_is_taken(client):
    job = client.post("/v1/jobs", json={"architecture": "fc"}).json()["id"]
    answer = client.get(f"/v1/jobs/{job}/metrics?from_step={INT64_MAX}")
    assert answer.status_code == 200 and answer.json()["items"] == []
    no_checkpoint = client.get(f"/v1/jobs/{job}/checkpoint?epoch={INT64_MAX}")  # a queued job has none yet
    assert_problem(no_checkpoint, 409)


def test_an_offset_datetime_inside_the_range_still_filters(client):
    client.post("/v1/jobs", json={"architecture": "fc"})
    assert len(client.get("/v1/jobs?created_after=0001-01-02T00:00:00%2B14:00").json()["items"]) == 1
    assert client.get("/v1/jobs?created_before=0001-01-02T00:00:00%2B14:00").json()["items"] == []


def test_a_comparison_named_as_math_markup_draws_its_name_as_text(client):
    for name in ["$\\foo$", "$", "$x^$", "$\\frac{$", "\\$5 and $10"]:
        comparison = client.post("/v1/comparisons", json={"seeds": 1, "architectures": ["fc"], "name": name}).json()
        answer = client.get(f"/v1/comparisons/{comparison['id']}/summary.png")
        assert answer.status_code == 200 and answer.content.startswith(b"\x89PNG"), name


def corrupt_status(settings, job_id: str) -> None:
    """A row no version of the service writes (a database edited by hand): reading it fails in a
    way no handler expects."""
    with sqlite3.connect(settings.database_url.removeprefix("sqlite:///")) as connection:
        connection.execute("UPDATE jobs SET status = 'bogus' WHERE id = ?", (job_id,))


def test_an_unexpected_exception_is_a_problem_500_with_the_request_id(settings, client, caplog):
    job = client.post("/v1/jobs", json={"architecture": "fc"}).json()["id"]
    corrupt_status(settings, job)
    answer = client.get(f"/v1/jobs/{job}", headers={"X-Request-ID": "trace-500"})
    body = assert_problem(answer, 500)
    assert answer.headers["x-request-id"] == "trace-500"
    assert body["title"] == "Internal error"
    text = answer.text
    assert "Traceback" not in text and "bogus" not in text and str(settings.database_url) not in text
    assert "/work" not in text and ".py" not in text
    assert any(record.levelname == "ERROR" and record.exc_info for record in caplog.records)
    assert client.get("/healthz/live").status_code == 200  # the app goes on answering
