"""Strict numbers and messages a person can act on: the job spec's types, the 422's wording, the
number and size of the errors listed, and unknown query parameters (api/strict_query.py)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from api import errors
from api.strict_query import reject_unknown_query
from service.jobs.schemas import job_spec_adapter
from tests.support.settings import migrate

PROBLEM = "application/problem+json"


def post(client, body: object):
    return client.post("/v1/jobs", content=json.dumps(body), headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("epochs", True, "epochs must be an integer, not a boolean"),
        ("epochs", False, "epochs must be an integer, not a boolean"),
        ("permutation_seed", True, "permutation_seed must be an integer, not a boolean"),
        ("epochs", "10", 'epochs must be an integer, not a string ("10")'),
        ("epochs", "1_0", 'epochs must be an integer, not a string ("1_0")'),
        ("batch_size", 1.5, "batch_size must be an integer, not a number with a fraction (1.5)"),
        ("batch_size", 64.0, "batch_size must be an integer, not a decimal number (64.0)"),
        ("epochs", None, "epochs must be an integer, not null"),
        ("n_hidden", [8], "n_hidden must be an integer, not a list"),
        ("lr", True, "lr must be a number, not a boolean"),
        ("lr", "0.1", 'lr must be a number, not a string ("0.1")'),
        ("momentum", "0.5", 'momentum must be a number, not a string ("0.5")'),
        ("dataset", 1, 'dataset must be "mnist" or "fashion-mnist", not an integer'),
        ("dataset", "MNIST", 'dataset must be "mnist" or "fashion-mnist", not "MNIST"'),
        ("epochs", 0, "epochs must be at least 1"),
        ("lr", 0, "lr must be greater than 0"),
        ("momentum", 1, "momentum must be less than 1"),
        ("unknown", 1, "unknown is not a field of a job spec"),
    ],
)
def test_a_wrong_type_is_a_422_naming_the_field_in_words(client, field, value, words):
    response = post(client, {"architecture": "fc", field: value})
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["field"] == field
    assert problem["errors"][0]["message"] == words
    assert problem["detail"] == words


@pytest.mark.parametrize("token, words", [("NaN", "NaN"), ("Infinity", "Infinity"), ("-Infinity", "-Infinity")])
@pytest.mark.parametrize("field", ["lr", "momentum"])
def test_nan_and_infinity_are_refused(client, field, token, words):
    body = f'{{"architecture": "fc", "{field}": {token}}}'
    response = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["errors"][0] == {
        "field": field,
        "message": f"{field} must be a finite number, not {words}",
        "type": "finite_number",
    }


def test_numbers_of_the_right_kind_are_taken(client):
    response = post(client, {"architecture": "fc", "lr": 1, "momentum": 0, "epochs": 2, "permutation_seed": 0})
    assert response.status_code == 201, response.text
    spec = response.json()["spec"]
    assert spec["lr"] == 1.0 and isinstance(spec["lr"], float) and spec["epochs"] == 2


def test_the_model_itself_is_strict():
    bodies: list[dict[str, Any]] = [{"epochs": True}, {"epochs": "2"}, {"epochs": 2.0}, {"lr": "1"}, {"lr": math.nan}]
    for body in bodies:
        with pytest.raises(ValueError):
            job_spec_adapter.validate_python({"architecture": "cnn", **body})
    assert job_spec_adapter.validate_python({"architecture": "cnn", "lr": 1}).lr == 1.0


@pytest.mark.parametrize(
    "body, words",
    [
        ({"epochs": 1}, 'architecture is required: one of "fc", "cnn"'),
        ({"architecture": "transformer"}, 'architecture must be one of "fc", "cnn", not "transformer"'),
        ({"architecture": 1}, 'architecture must be one of "fc", "cnn", not an integer'),
        ({"architecture": True}, 'architecture must be one of "fc", "cnn", not a boolean'),
        ([], "body must be a JSON object, not a list"),
    ],
)
def test_architecture_and_body_errors_read_like_sentences(client, body, words):
    response = post(client, body)
    assert response.status_code == 422
    problem = response.json()
    assert problem["errors"][0]["message"] == words
    assert "discriminator" not in response.text and "Input should" not in response.text


def test_a_body_with_ten_thousand_unknown_keys_lists_a_few_errors_in_a_small_body(settings):
    from api.app import create_app

    settings = settings.model_copy(update={"max_body_bytes": 10_000_000})  # past the body limit
    migrate(settings.database_url)
    body = {"architecture": "fc", **{f"key{i:05d}" + "x" * 500: i for i in range(10_000)}}
    with TestClient(create_app(settings)) as client:
        response = post(client, body)
    assert response.status_code == 422
    problem = response.json()
    cap = settings.max_validation_errors
    assert len(problem["errors"]) == cap
    assert problem["detail"].endswith(f"; and {10_000 - cap} more (only the first {cap} are listed)")
    assert all(len(e["field"]) <= errors.MAX_FIELD_CHARS for e in problem["errors"])
    assert len(response.content) < 20_000


async def validation_problem(body: object, cap: int = 3) -> dict[str, object]:
    """The handler's answer for the errors of validating `body`, with max_validation_errors = cap."""
    from fastapi.exceptions import RequestValidationError
    from pydantic import ValidationError
    from starlette.requests import Request

    from service.platform.config import Settings

    app = FastAPI()
    app.state.settings = Settings(max_validation_errors=cap)
    try:
        job_spec_adapter.validate_python(body)
    except ValidationError as exc:
        located = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        request = Request({"type": "http", "app": app, "headers": []})
        response = await errors.validation_error(request, RequestValidationError(located))
        result: dict[str, object] = json.loads(bytes(response.body))
        return result
    raise AssertionError("body was valid")


def test_the_error_count_and_each_message_are_capped_whatever_the_input():
    import asyncio

    body = {"architecture": "fc", **{"k" * 100_000 + str(i): i for i in range(1_000)}}
    problem = asyncio.run(validation_problem(body, cap=3))
    listed = problem["errors"]
    assert isinstance(listed, list) and len(listed) == 3
    assert all(len(e["message"]) <= errors.MAX_MESSAGE_CHARS for e in listed)
    assert len(json.dumps(problem)) < 2_000


def strict_app(settings) -> FastAPI:
    app = FastAPI(dependencies=[Depends(reject_unknown_query)])
    app.state.settings = settings
    errors.install(app)

    def page_size(limit: int = 50) -> int:
        return limit

    @app.get("/things")
    def things(status: str | None = None, size: int = Depends(page_size)) -> dict[str, object]:
        return {"status": status, "size": size}

    return app


def test_unknown_query_parameters_are_a_422_like_unknown_body_fields(settings):
    with TestClient(strict_app(settings)) as client:
        assert client.get("/things", params={"status": "x", "limit": 3}).json() == {"status": "x", "size": 3}
        response = client.get("/things", params={"status": "x", "colour": "red", "z": ""})
        assert response.status_code == 422 and response.headers["content-type"] == PROBLEM
        problem = response.json()
        assert [e["field"] for e in problem["errors"]] == ["query.colour", "query.z"]
        assert problem["errors"][0] == {
            "field": "query.colour",
            "message": "query.colour is not a query parameter of this call",
            "type": "extra_forbidden",
        }


def test_the_app_refuses_unknown_query_parameters(client):
    assert client.get("/v1/jobs", params={"limit": 5}).status_code == 200
    response = client.get("/v1/jobs", params={"limt": 5})
    assert response.status_code == 422 and response.json()["field"] == "query.limt"


def test_page_sizes_are_the_settings_and_past_them_a_problem_names_query_limit(settings):
    from api.app import create_app

    settings = settings.model_copy(update={"page_size_max": 300, "comparison_page_size_max": 3})
    migrate(settings.database_url)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/jobs", params={"limit": 300}).status_code == 200, "past the old fixed 200"
        assert client.get("/v1/comparisons", params={"limit": 3}).status_code == 200
        for path, limit, most in (("/v1/jobs", 301, 300), ("/v1/comparisons", 4, 3)):
            response = client.get(path, params={"limit": limit})
            assert response.status_code == 422 and response.headers["content-type"] == PROBLEM
            assert response.json()["field"] == "query.limit" and f"at most {most}" in response.json()["detail"]
        params = {p["name"]: p for p in client.get("/openapi.json").json()["paths"]["/v1/jobs"]["get"]["parameters"]}
        assert params["limit"]["schema"]["maximum"] == 1000 and params["limit"]["schema"]["default"] == 50
