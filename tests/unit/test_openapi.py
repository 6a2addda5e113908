"""The OpenAPI document tells the truth (issue 10, item 8): every error an operation answers with is
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
    assert errors_of(document, "GET", "/v1/jobs") == {400, 401, 422}
    assert errors_of(document, "GET", "/v1/jobs/{job_id}") == {400, 401, 404, 422}
    assert errors_of(document, "DELETE", "/v1/jobs/{job_id}") >= {400, 401, 403, 404, 409, 422}
    assert errors_of(document, "POST", "/v1/jobs/{job_id}/cancel") == {400, 401, 403, 404, 409, 422}
    assert errors_of(document, "GET", "/v1/jobs/{job_id}/checkpoint") >= {400, 401, 404, 409, 422}
    assert errors_of(document, "GET", "/v1/workers") == {400, 401, 422}
    assert errors_of(document, "GET", "/v1/datasets") == {400, 401, 422}
    unauthorized = document["components"]["responses"]["Unauthorized"]
    assert "WWW-Authenticate" in unauthorized["headers"]
    assert "Retry-After" in document["components"]["responses"]["TooManyQueued"]["headers"]


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
