"""Callers and hostile requests through the real app: tokens and roles, Host allow-list, media types,
body limits, queue limit, per-caller idempotency."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.platform import auth
from service.platform.errors import Unauthorized
from tests.support.settings import migrate

PROBLEM = "application/problem+json"
TOKENS = {"read": "read-token", "a": "submit-a-token", "b": "submit-b-token", "admin": "admin-token"}
QUEUE_LIMIT = 4


@pytest.fixture
def settings(settings):
    roles = {"read": "read", "a": "submit", "b": "submit", "admin": "admin"}
    return settings.model_copy(
        update={
            "api_tokens": ",".join(f"{TOKENS[who]}:{role}" for who, role in roles.items()),
            "max_body_bytes": 4096,
            "max_queued_per_token": QUEUE_LIMIT,
        }
    )


def bearer(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[who]}"}


def submit(client, who: str, **headers: str) -> str:
    response = client.post("/v1/jobs", json={"architecture": "fc"}, headers=bearer(who) | headers)
    assert response.status_code in (200, 201), response.text
    return str(response.json()["id"])


@pytest.fixture
def jobs(client) -> dict[str, str]:
    """A queued job of each submit token, and a cancelled one of b's (deletable)."""
    made = {"a": submit(client, "a"), "b": submit(client, "b"), "b_done": submit(client, "b")}
    assert client.post(f"/v1/jobs/{made['b_done']}/cancel", headers=bearer("b")).status_code == 200
    return made


def chunks(size: int, piece: int = 1024):
    for _ in range(size // piece):
        yield b" " * piece


@dataclass
class Case:
    name: str
    method: str
    path: str  # {a}, {b}, {b_done}: the fixture's jobs
    status: int
    who: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content: Any = None
    json: Any = None


SPEC = {"architecture": "fc"}
SPEC_BYTES = b'{"architecture": "fc"}'
BIG = b" " * 100_000
JSON_BODY = {"Content-Type": "application/json"}
TEXT = {"Content-Type": "text/plain"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
EVIL_PAGE = {"Content-Type": "text/plain;charset=UTF-8", "Origin": "https://evil.example"}

# fmt: off
CASES = [
    # no token, a bad one, the wrong scheme
    Case("list without a token", "GET", "/v1/jobs", 401),
    Case("read a job without a token", "GET", "/v1/jobs/{a}", 401),
    Case("workers without a token", "GET", "/v1/workers", 401),
    Case("datasets without a token", "GET", "/v1/datasets", 401),
    Case("submit without a token", "POST", "/v1/jobs", 401, json=SPEC),
    Case("cancel without a token", "POST", "/v1/jobs/{a}/cancel", 401),
    Case("delete without a token", "DELETE", "/v1/jobs/{b_done}", 401),
    Case("unknown token", "GET", "/v1/jobs", 401, headers={"Authorization": "Bearer not-a-token"}),
    Case("empty bearer", "GET", "/v1/jobs", 401, headers={"Authorization": "Bearer "}),
    Case("basic auth", "GET", "/v1/jobs", 401, headers={"Authorization": "Basic YWRtaW46YWRtaW4="}),
    Case("token without scheme", "GET", "/v1/jobs", 401, headers={"Authorization": TOKENS["admin"]}),
    Case("openapi stays open", "GET", "/openapi.json", 200),
    Case("healthz stays open", "GET", "/healthz", 200),
    # roles
    Case("read lists", "GET", "/v1/jobs", 200, who="read"),
    Case("read reads", "GET", "/v1/jobs/{a}", 200, who="read"),
    Case("read lists workers", "GET", "/v1/workers", 200, who="read"),
    Case("read lists datasets", "GET", "/v1/datasets", 200, who="read"),
    Case("read may not submit", "POST", "/v1/jobs", 403, who="read", json=SPEC),
    Case("read may not cancel", "POST", "/v1/jobs/{a}/cancel", 403, who="read"),
    Case("read may not delete", "DELETE", "/v1/jobs/{b_done}", 403, who="read"),
    Case("submit may not cancel another's job", "POST", "/v1/jobs/{b}/cancel", 403, who="a"),
    Case("submit cancels its own job", "POST", "/v1/jobs/{a}/cancel", 200, who="a"),
    Case("submit may not delete, even its own", "DELETE", "/v1/jobs/{b_done}", 403, who="b"),
    Case("admin cancels anyone's job", "POST", "/v1/jobs/{b}/cancel", 200, who="admin"),
    Case("admin deletes anyone's job", "DELETE", "/v1/jobs/{b_done}", 204, who="admin"),
    Case("submit submits", "POST", "/v1/jobs", 201, who="a", json=SPEC),
    Case("json with charset", "POST", "/v1/jobs", 201, who="a", content=SPEC_BYTES,
         headers={"Content-Type": "application/json; charset=utf-8"}),
    # Host allow-list (DNS rebinding)
    Case("foreign Host", "GET", "/v1/jobs", 400, who="admin", headers={"Host": "evil.example"}),
    Case("foreign Host on healthz", "GET", "/healthz", 400, headers={"Host": "attacker.test:8000"}),
    Case("loopback Host with port", "GET", "/healthz", 200, headers={"Host": "127.0.0.1:8000"}),
    Case("IPv6 loopback Host", "GET", "/healthz", 200, headers={"Host": "[::1]:8000"}),
    Case("malformed Host", "GET", "/healthz", 400, headers={"Host": "local host"}),
    # browsers' cross-origin simple requests and other non-JSON bodies
    Case("text/plain submit", "POST", "/v1/jobs", 415, who="a", content=SPEC_BYTES, headers=TEXT),
    Case("cross-origin text/plain submit", "POST", "/v1/jobs", 415, content=SPEC_BYTES, headers=EVIL_PAGE),
    Case("cross-origin text/plain cancel", "POST", "/v1/jobs/{a}/cancel", 415, content=b"x", headers=EVIL_PAGE),
    Case("form-encoded cancel", "POST", "/v1/jobs/{a}/cancel", 415, who="a", content=b"x=1", headers=FORM),
    Case("text/plain cancel with a body", "POST", "/v1/jobs/{a}/cancel", 415, who="admin", content=b"{}",
         headers=TEXT),
    Case("text/plain cancel, empty body", "POST", "/v1/jobs/{a}/cancel", 415, who="admin", content=b"",
         headers=TEXT),
    Case("multipart submit", "POST", "/v1/jobs", 415, who="a", content=b"--x--\r\n",
         headers={"Content-Type": "multipart/form-data; boundary=x"}),
    Case("body without content type", "POST", "/v1/jobs", 415, who="a", content=SPEC_BYTES),
    Case("json-ish media type", "POST", "/v1/jobs", 415, who="a", content=SPEC_BYTES,
         headers={"Content-Type": "application/jsonx"}),
    Case("delete with a text/plain body", "DELETE", "/v1/jobs/{b_done}", 415, who="admin", content=b"x",
         headers=TEXT),
    Case("cancel with a json body", "POST", "/v1/jobs/{a}/cancel", 200, who="a", json={}),
    # body size
    Case("100 KB body", "POST", "/v1/jobs", 413, who="a", content=BIG, headers=JSON_BODY),
    Case("100 KB body without a token", "POST", "/v1/jobs", 413, content=BIG, headers=JSON_BODY),
    Case("chunked oversize body", "POST", "/v1/jobs", 413, who="a", content=chunks(100_000), headers=JSON_BODY),
    Case("Content-Length says 10, body is 100 KB", "POST", "/v1/jobs", 413, who="a", content=BIG,
         headers=JSON_BODY | {"Content-Length": "10"}),
    Case("Content-Length says 10, body is 100 B", "POST", "/v1/jobs", 400, who="a", content=b" " * 100,
         headers=JSON_BODY | {"Content-Length": "10"}),
    Case("Content-Length says 1 GB", "POST", "/v1/jobs", 413, who="a", content=b"{}",
         headers=JSON_BODY | {"Content-Length": str(2**30)}),
    Case("Content-Length not a number", "POST", "/v1/jobs", 400, who="a", content=b"{}",
         headers=JSON_BODY | {"Content-Length": "-1"}),
    Case("oversize GET body", "GET", "/v1/jobs", 413, who="read", content=BIG),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_and_role_requests(client, jobs, case: Case):
    headers = (bearer(case.who) if case.who else {}) | case.headers
    response = client.request(
        case.method, case.path.format(**jobs), headers=headers, content=case.content, json=case.json
    )
    assert response.status_code == case.status, response.text
    if case.status >= 400:
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["status"] == case.status
    if case.status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    assert "server" not in response.headers


def test_a_full_queue_is_a_429_with_retry_after(client):
    for _ in range(QUEUE_LIMIT):
        submit(client, "a")
    response = client.post("/v1/jobs", json=SPEC, headers=bearer("a"))
    assert response.status_code == 429 and response.headers["content-type"] == PROBLEM
    assert int(response.headers["retry-after"]) > 0
    assert str(QUEUE_LIMIT) in response.json()["detail"]
    assert submit(client, "b"), "the limit is per token"
    first = client.get("/v1/jobs", headers=bearer("read")).json()["items"][-1]["id"]
    assert client.post(f"/v1/jobs/{first}/cancel", headers=bearer("a")).status_code == 200
    assert submit(client, "a"), "a cancelled job frees its place"


def test_an_idempotency_key_is_per_token(client):
    key = {"Idempotency-Key": "same-key"}
    first = submit(client, "a", **key)
    assert submit(client, "a", **key) == first
    other = submit(client, "b", **key)
    assert other != first, "another token's key never returns someone else's job"
    assert submit(client, "b", **key) == other
    long_key = {"Idempotency-Key": "k" * 200}
    assert submit(client, "a", **long_key) == submit(client, "a", **long_key)


def test_jobs_record_the_token_that_submitted_them(client, db):
    from service.jobs.lifecycle import get

    job_id = submit(client, "a")
    with db.read() as session:
        assert get(session, job_id).submitted_by == auth.digest(TOKENS["a"])[:12]
    assert client.get(f"/v1/jobs/{job_id}", headers=bearer("a")).json()["submitted_by"] == auth.digest(TOKENS["a"])[:12]


def test_the_tokens_file_is_read_again_when_it_changes(settings, tmp_path):
    from api.app import create_app

    path = tmp_path / "tokens"
    token, known = auth.create(path, auth.Role.read)
    settings = settings.model_copy(update={"api_tokens": None, "api_tokens_file": path})
    migrate(settings.database_url)
    with TestClient(create_app(settings)) as client:
        headers = {"Authorization": f"Bearer {token}"}
        assert client.get("/v1/jobs", headers=headers).status_code == 200
        assert client.post("/v1/jobs", json=SPEC, headers=headers).status_code == 403
        auth.revoke(path, known.id)
        assert client.get("/v1/jobs", headers=headers).status_code == 401
        path.write_text("not a tokens file\n")
        # a broken file keeps only the tokens it still names, and it names none here
        assert client.get("/v1/jobs", headers=headers).status_code == 401


def test_without_tokens_the_api_is_open_to_every_call(settings):
    from api.app import create_app

    settings = settings.model_copy(update={"api_tokens": None, "api_tokens_file": None})
    migrate(settings.database_url)
    with TestClient(create_app(settings)) as client:
        job = client.post("/v1/jobs", json=SPEC).json()["id"]
        assert client.post(f"/v1/jobs/{job}/cancel").status_code == 200
        assert client.delete(f"/v1/jobs/{job}").status_code == 204
        assert client.get("/v1/jobs", headers={"Host": "evil.example"}).status_code == 400, "hosts still checked"
        assert client.post("/v1/jobs", content=b"{}", headers={"Content-Type": "text/plain"}).status_code == 415


def test_cors_is_off_unless_origins_are_configured(client, settings):
    from api.app import create_app

    preflight = {"Origin": "https://lab.example", "Access-Control-Request-Method": "POST"}
    response = client.options("/v1/jobs", headers=preflight)
    assert "access-control-allow-origin" not in response.headers
    settings = settings.model_copy(update={"cors_origins": ["https://lab.example"]})
    with TestClient(create_app(settings)) as with_cors:
        response = with_cors.options("/v1/jobs", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://lab.example"
        other = with_cors.options("/v1/jobs", headers=preflight | {"Origin": "https://evil.example"})
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"


def test_tokens_file_parsing_and_constant_time_lookup(tmp_path):
    path = tmp_path / "tokens"
    token, known = auth.create(path, auth.Role.submit)
    assert path.stat().st_mode & 0o777 == 0o600
    assert token not in path.read_text() and known.sha256 in path.read_text()
    assert auth.authenticate(auth.list_tokens(path), token) == auth.Caller(known.id, auth.Role.submit)
    with pytest.raises(Unauthorized):
        auth.authenticate(auth.list_tokens(path), token + "x")
    text = f"# comment\n\n{'a' * 64} admin\n{'B' * 64}   read\n"
    assert [(t.id, t.role) for t in auth.parse_file(text)] == [("a" * 12, auth.Role.admin), ("b" * 12, auth.Role.read)]
    for bad in (f"{'a' * 64}", f"{'a' * 63} read", f"{'g' * 64} read", f"{'a' * 64} root"):
        with pytest.raises(ValueError, match=r"line 1|unknown role"):
            auth.parse_file(bad)
    assert [t.role for t in auth.parse_plain("x:y:read, z:admin")] == [auth.Role.read, auth.Role.admin]
    with pytest.raises(ValueError, match="no token"):
        auth.revoke(path, "ffffffffffff")
