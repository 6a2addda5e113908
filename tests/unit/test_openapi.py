"""The OpenAPI document tells the truth: every error an operation answers with is
documented as application/problem+json with the one Problem schema; 405s carry Allow; a body that is
not JSON names where it broke; Swagger UI and ReDoc load nothing from another origin."""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from api import docs, openapi
from tests.support.settings import migrate

PROBLEM = "application/problem+json"
TOKENS = {"read": "openapi-read", "submit": "openapi-submit", "admin": "openapi-admin"}
MISSING = str(uuid.UUID(int=1))


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


@pytest.fixture
def app(settings):
    from api.app import create_app

    migrate(settings.database_url)
    tokens = ",".join(f"{token}:{role}" for role, token in TOKENS.items())
    app = create_app(settings.model_copy(update={"api_tokens": tokens, "max_body_bytes": 4096}))
    openapi.install(app)  # both idempotent: no-ops once create_app calls them
    docs.install(app)
    return app


@pytest.fixture
def client(app):
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def document(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def operations(document):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in openapi.METHODS:
                yield method.upper(), path, operation


def resolve(document, response):
    ref = response.get("$ref")
    return document["components"]["responses"][ref.rsplit("/", 1)[1]] if ref else response


def test_every_error_response_is_a_problem(document):
    assert document["components"]["schemas"]["Problem"]["required"] == ["type", "title", "status", "detail"]
    assert set(document["components"]["schemas"]["Problem"]["properties"]) == {
        "type", "title", "status", "detail", "field", "errors",
    }  # fmt: skip
    assert "HTTPValidationError" not in str(document) and "ValidationError" not in document["components"]["schemas"]
    seen = 0
    for method, path, operation in operations(document):
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            content = resolve(document, response)["content"]
            assert list(content) == [PROBLEM], (method, path, status)
            assert content[PROBLEM]["schema"] == {"$ref": "#/components/schemas/Problem"}
            seen += 1
    assert seen > 40


def errors_of(document, method, path):
    return {int(s) for s in document["paths"][path][method.lower()]["responses"] if int(s) >= 400}


def test_each_operation_lists_the_errors_it_can_send(document):
    assert errors_of(document, "POST", "/v1/jobs") == {400, 401, 403, 409, 413, 415, 422, 429}
    assert errors_of(document, "GET", "/v1/jobs") == {400, 401, 422, 429}
    assert errors_of(document, "GET", "/v1/jobs/{job_id}") == {400, 401, 404, 422, 429}
    assert errors_of(document, "DELETE", "/v1/jobs/{job_id}") >= {400, 401, 403, 404, 409, 422, 429}
    assert errors_of(document, "POST", "/v1/jobs/{job_id}/cancel") == {400, 401, 403, 404, 409, 422, 429}
    assert errors_of(document, "GET", "/v1/jobs/{job_id}/checkpoint") >= {400, 401, 404, 409, 422, 429}
    assert errors_of(document, "GET", "/v1/workers") == {400, 401, 422, 429}
    assert errors_of(document, "GET", "/v1/datasets") == {400, 401, 422, 429}
    assert errors_of(document, "GET", "/v1/jobs/{job_id}/curves.png") == {400, 401, 404, 422, 429, 503}
    assert 429 not in errors_of(document, "GET", "/healthz")
    unauthorized = document["components"]["responses"]["Unauthorized"]
    assert "WWW-Authenticate" in unauthorized["headers"]
    too_many = document["components"]["responses"]["TooManyRequests"]["headers"]
    assert {"Retry-After", "RateLimit", "RateLimit-Policy"} <= set(too_many)
    assert "Retry-After" in document["components"]["responses"]["Unavailable"]["headers"]


def test_route_errors_name_only_operations_that_exist(document):
    listed = {(method, path) for method, path, _ in operations(document)}
    assert set(openapi.ROUTE_ERRORS) <= listed


def test_the_document_is_computed_once(app):
    assert app.openapi() is app.openapi()
    openapi.install(app)  # a second install changes nothing
    assert app.openapi() is app.openapi()


def submitted(client) -> str:
    response = client.post("/v1/jobs", json={"architecture": "fc"}, headers=bearer("submit"))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_every_error_the_api_sends_is_documented_for_its_operation(client, document):
    job = submitted(client)
    json_body = {"Content-Type": "application/json"}
    text_body = bearer("submit") | {"Content-Type": "text/plain"}
    keyed = bearer("submit") | {"Idempotency-Key": "k"}
    cases: list[tuple[str, str, str, dict[str, Any], int]] = [  # method, url, documented path, kwargs, status
        ("GET", "/v1/jobs", "/v1/jobs", {}, 401),
        ("GET", "/v1/jobs", "/v1/jobs", {"headers": {"Host": "evil.example"}}, 400),
        ("GET", "/v1/jobs?limit=0", "/v1/jobs", {"headers": bearer("read")}, 422),
        ("GET", "/v1/jobs?cursor=x", "/v1/jobs", {"headers": bearer("read")}, 422),
        ("GET", "/v1/jobs?nope=1", "/v1/jobs", {"headers": bearer("read")}, 422),
        ("GET", "/v1/workers?nope=1", "/v1/workers", {"headers": bearer("read")}, 422),
        ("GET", "/v1/datasets?nope=1", "/v1/datasets", {"headers": bearer("read")}, 422),
        ("GET", f"/v1/jobs/{MISSING}", "/v1/jobs/{job_id}", {"headers": bearer("read")}, 404),
        ("GET", "/v1/jobs/nope", "/v1/jobs/{job_id}", {"headers": bearer("read")}, 422),
        ("POST", "/v1/jobs", "/v1/jobs", {"headers": bearer("read"), "json": {"architecture": "fc"}}, 403),
        ("POST", "/v1/jobs", "/v1/jobs", {"headers": bearer("submit"), "json": {"architecture": "x"}}, 422),
        ("POST", "/v1/jobs", "/v1/jobs", {"headers": bearer("submit"), "content": b" " * 5000}, 413),
        ("POST", "/v1/jobs", "/v1/jobs", {"headers": text_body, "content": b"{}"}, 415),
        ("POST", "/v1/jobs", "/v1/jobs", {"headers": bearer("submit") | json_body, "content": b"{"}, 422),
        ("POST", "/v1/jobs", "/v1/jobs", {"headers": keyed, "json": {"architecture": "fc"}}, 201),
        ("POST", "/v1/jobs", "/v1/jobs", {"headers": keyed, "json": {"architecture": "cnn"}}, 409),
        ("POST", f"/v1/jobs/{job}/cancel", "/v1/jobs/{job_id}/cancel", {"headers": bearer("read")}, 403),
        ("POST", f"/v1/jobs/{MISSING}/cancel", "/v1/jobs/{job_id}/cancel", {"headers": bearer("admin")}, 404),
        ("DELETE", f"/v1/jobs/{job}", "/v1/jobs/{job_id}", {"headers": bearer("submit")}, 403),
        ("DELETE", f"/v1/jobs/{job}", "/v1/jobs/{job_id}", {"headers": bearer("admin")}, 409),
        ("POST", f"/v1/jobs/{job}/cancel", "/v1/jobs/{job_id}/cancel", {"headers": bearer("submit")}, 200),
        ("POST", f"/v1/jobs/{job}/cancel", "/v1/jobs/{job_id}/cancel", {"headers": bearer("submit")}, 409),
        ("GET", f"/v1/jobs/{job}/checkpoint", "/v1/jobs/{job_id}/checkpoint", {"headers": bearer("read")}, 409),
        ("GET", f"/v1/jobs/{MISSING}/checkpoint", "/v1/jobs/{job_id}/checkpoint", {"headers": bearer("read")}, 404),
    ]  # fmt: skip
    for method, url, path, kwargs, status in cases:
        response = client.request(method, url, **kwargs)
        assert response.status_code == status, (method, url, response.text)
        assert str(status) in document["paths"][path][method.lower()]["responses"], (method, url, status)
        if status >= 400:
            assert response.headers["content-type"] == PROBLEM, (method, url)
            body = response.json()
            assert {"type", "title", "status", "detail"} <= set(body) and body["status"] == status
            assert set(body) <= {"type", "title", "status", "detail", "field", "errors"}, body


def test_a_body_that_is_not_json_names_where_it_broke(client):
    body = b'{"architecture": "fc",\n "epochs": }'
    response = client.post("/v1/jobs", content=body, headers=bearer("submit") | {"Content-Type": "application/json"})
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["field"] == "body"
    assert "line 2, column 12 (character 34)" in problem["detail"], problem["detail"]
    assert body[34:35] == b"}"


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("PUT", f"/v1/jobs/{MISSING}", "GET, DELETE"),
        ("PATCH", "/v1/jobs", "GET, POST"),
        ("HEAD", "/v1/jobs", "GET, POST"),
        ("GET", f"/v1/jobs/{MISSING}/cancel", "POST"),
        ("DELETE", "/healthz", "GET"),
        ("POST", "/openapi.json", "GET, HEAD"),
        ("POST", "/docs", "GET"),
    ],
)
def test_405_names_every_method_the_path_takes(client, method, path, allowed):
    response = client.request(method, path, headers=bearer("admin"))
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert response.headers["content-type"] == PROBLEM
    if method != "HEAD":
        assert allowed in response.json()["detail"]


URL_ATTRIBUTES = re.compile(r"""(?:src|href|spec-url)="([^"]*)\"""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_load_only_same_origin_files_and_they_are_there(client, page):
    response = client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "unsafe-inline'; img" not in csp.split("script-src")[1][:30]
    assert response.headers["x-content-type-options"] == "nosniff"
    html = response.text
    assert "<script>" not in html and "cdn" not in html.lower() and "//" not in html.replace("<!DOCTYPE", "")
    urls = URL_ATTRIBUTES.findall(html)
    assert len(urls) >= 2
    for url in urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and url.startswith("/"), url
        fetched = client.get(url)
        assert fetched.status_code == 200, url
        assert fetched.content, url
    if page == "/docs":
        init = client.get(docs.INIT_URL).text
        assert "SwaggerUIBundle(" in init and '"url": "/openapi.json"' in init and "http" not in init


def test_only_the_shipped_docs_files_are_served(client):
    for name in ("../consts.py", "..%2Fconsts.py", "__init__.py", "nope.js"):
        response = client.get(f"/docs/static/{name}")
        assert response.status_code == 404, name
    for name, media_type in docs.STATIC_FILES.items():
        response = client.get(f"/docs/static/{name}")
        assert response.status_code == 200 and response.headers["content-type"] == media_type


def test_fastapis_cdn_pages_are_gone(client):
    assert client.get("/docs/oauth2-redirect").status_code == 404
    assert "cdn.jsdelivr" not in client.get("/docs").text


# What client generators need: one schema per model, exact integer bounds, verb operation ids,
# binary answers typed as such, and examples the server accepts.

BOUNDS = ("maximum", "minimum", "exclusiveMaximum", "exclusiveMinimum", "multipleOf")
VERBS = {
    "submit",
    "get",
    "list",
    "cancel",
    "delete",
    "download",
    "predict",
    "create",
    "draw",
    "stream",
    "check",
    "scrape",
}
SNAKE_CASE = re.compile(r"^[a-z]+(_[a-z0-9]+)*$")


def walk(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_one_schema_per_model(document):
    names = set(document["components"]["schemas"])
    assert not [name for name in names if name.endswith(("-Input", "-Output"))], sorted(names)
    assert {"FCSpec", "CNNSpec", "JobRead", "JobPage", "ComparisonCreate", "ComparisonRead", "Problem"} <= names


def test_bounds_are_exact_integers(client, document):
    for node in walk(document):
        for key in BOUNDS:
            value = node.get(key)
            assert not (isinstance(value, float) and value.is_integer()), (key, value, node)
    assert not re.search(r'"(maximum|minimum|exclusiveMaximum|exclusiveMinimum)":\s*-?\d+(\.\d*)?e', client.get(
        "/openapi.json").text)  # fmt: skip
    seed = document["components"]["schemas"]["FCSpec"]["properties"]["seed"]["anyOf"][0]
    assert seed["maximum"] == 2**63 - 1 and type(seed["maximum"]) is int
    largest = {"architecture": "fc", "seed": seed["maximum"], "permutation_seed": seed["maximum"]}
    assert client.post("/v1/jobs", json=largest, headers=bearer("submit")).status_code == 201
    past = largest | {"seed": seed["maximum"] + 1}
    assert client.post("/v1/jobs", json=past, headers=bearer("submit")).status_code == 422


def test_operation_ids_are_unique_snake_case_verb_phrases(document):
    ids = {(method, path): operation["operationId"] for method, path, operation in operations(document)}
    assert len(set(ids.values())) == len(ids), sorted(ids.values())
    for operation_id in ids.values():
        assert SNAKE_CASE.match(operation_id) and operation_id.split("_")[0] in VERBS, operation_id
    assert ids[("POST", "/v1/jobs")] == "submit_job" and ids[("GET", "/v1/jobs")] == "list_jobs"
    assert ids[("GET", "/v1/jobs/{job_id}")] == "get_job" and ids[("DELETE", "/v1/jobs/{job_id}")] == "delete_job"
    assert ids[("POST", "/v1/jobs/{job_id}/cancel")] == "cancel_job"
    assert ids[("GET", "/v1/jobs/{job_id}/checkpoint")] == "download_checkpoint"
    assert ids[("GET", "/v1/jobs/{job_id}/model")] == "download_model"
    assert ids[("POST", "/v1/jobs/{job_id}/predict")] == "predict"
    assert ids[("POST", "/v1/comparisons")] == "create_comparison"
    assert ids[("GET", "/v1/comparisons/{comparison_id}")] == "get_comparison"


@pytest.mark.parametrize(
    "path, media_type",
    [
        ("/v1/jobs/{job_id}/checkpoint", "application/octet-stream"),
        ("/v1/jobs/{job_id}/model", None),
        ("/v1/datasets/{name}/samples.png", "image/png"),
        ("/v1/jobs/{job_id}/curves.png", "image/png"),
        ("/v1/jobs/{job_id}/confusion.png", "image/png"),
        ("/v1/comparisons/{comparison_id}/summary.png", "image/png"),
    ],
)
def test_binary_answers_are_documented_as_binary(document, path, media_type):
    content = document["paths"][path]["get"]["responses"]["200"]["content"]
    assert content and "application/json" not in content, content
    if media_type is not None:
        assert list(content) == [media_type]
    for entry in content.values():
        assert entry["schema"] == {"type": "string", "format": "binary"}, entry


def documented_examples(document, operation):
    """Every example of the operation's JSON body: the media type's, and its schema's own."""
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if body is None:
        return []
    schema = body["schema"]
    if "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    values = [example["value"] for example in body.get("examples", {}).values()]
    values += [body["example"]] if "example" in body else []
    return values + list(schema.get("examples", [])) + ([schema["example"]] if "example" in schema else [])


def test_every_documented_example_is_accepted(client, document):
    """Swagger UI offers a body's first media-type example, so every JSON body has some (else it
    would build its own from the schema); each one is sent. A path's job is a fresh queued one, so
    predict answers 409 (no checkpoint yet): the body itself got through validation."""
    job = submitted(client)
    sent = 0
    for method, path, operation in operations(document):
        examples = documented_examples(document, operation)
        if "requestBody" in operation and "application/json" in operation["requestBody"]["content"]:
            assert examples, (method, path)
        for example in examples:
            url = path.replace("{job_id}", job).replace("{comparison_id}", MISSING)
            response = client.request(method, url, json=example, headers=bearer("admin"))
            expected = {409} if path.endswith("/predict") else {200, 201}
            assert response.status_code in expected, (method, path, example, response.text)
            sent += 1
    assert sent >= 6
