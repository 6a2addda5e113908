"""A fair share per caller (api/limits.py) and who sees whose jobs, through the real app: the rate
limit's 429 with Retry-After and RateLimit fields, a bucket per token and one per address for every
unknown token, /healthz exempt, the stream and in-flight bounds, and `submitted_by` per role."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.limits import TokenBuckets
from tests.support.settings import migrate

TOKENS = {"read": "lim-read", "a": "lim-submit-a", "b": "lim-submit-b", "admin": "lim-admin"}
ROLES = {"read": "read", "a": "submit", "b": "submit", "admin": "admin"}
BURST = 5


def bearer(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[who]}"}


@pytest.fixture
def settings(settings):
    return settings.model_copy(
        update={
            "api_tokens": ",".join(f"{TOKENS[who]}:{role}" for who, role in ROLES.items()),
            "rate_limit_burst": BURST,
            # One request back every 100 s: however slow this machine, nothing refills within a test
            "rate_limit_per_second": 0.01,
            "max_streams_per_caller": 2,
        }
    )


def test_a_token_past_its_burst_gets_429_with_retry_after_and_ratelimit_fields(client):
    answers = [client.get("/v1/jobs", headers=bearer("read")) for _ in range(BURST + 1)]
    assert [a.status_code for a in answers] == [200] * BURST + [429]
    first, refused = answers[0], answers[-1]
    assert first.headers["RateLimit-Policy"] == f'"burst";q={BURST};w=500'
    assert first.headers["RateLimit"].startswith(f'"burst";r={BURST - 1};t=')
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["title"] == "Rate limited" and "MNIST_JOBS_RATE_LIMIT_BURST" in refused.json()["detail"]
    assert 90 <= int(refused.headers["Retry-After"]) <= 100  # one request back at 0.01 a second
    assert refused.headers["RateLimit"].startswith('"burst";r=0;')
    assert "X-Request-ID" in refused.headers
    # another token has its own bucket; health checks are never limited
    assert client.get("/v1/jobs", headers=bearer("a")).status_code == 200
    assert all(client.get("/healthz").status_code == 200 for _ in range(BURST + 2))


def test_unknown_tokens_share_their_addresss_bucket(client):
    """Inventing tokens buys nothing: every unknown one counts against the client's address."""
    statuses = [
        client.get("/v1/jobs", headers={"Authorization": f"Bearer made-up-{i}"}).status_code for i in range(BURST + 1)
    ]
    assert statuses == [401] * BURST + [429]
    assert client.get("/v1/jobs").status_code == 429  # no token at all: the same address
    assert client.get("/v1/jobs", headers=bearer("read")).status_code == 200  # a known token is apart


def test_the_bucket_refills_at_its_rate_and_never_past_its_burst():
    buckets = TokenBuckets(rate=2.0, burst=3)
    assert [buckets.take("k", now=0.0).allowed for _ in range(4)] == [True, True, True, False]
    assert buckets.take("k", now=0.0).retry_after_seconds == 1
    assert buckets.take("k", now=0.5).allowed  # one back after half a second at 2 a second
    assert not buckets.take("k", now=0.5).allowed
    full = buckets.take("k", now=100.0)
    assert full.allowed and full.remaining == 2, "refilled to the burst, not beyond"


def test_a_caller_holds_at_most_max_streams_open(client):
    with (
        client.stream("GET", "/v1/events", headers=bearer("read")) as one,
        client.stream("GET", "/v1/events", headers=bearer("read")) as two,
    ):
        assert one.status_code == two.status_code == 200
        third = client.get("/v1/events", headers=bearer("read"))
        assert third.status_code == 429 and "MNIST_JOBS_MAX_STREAMS_PER_CALLER" in third.json()["detail"]
        with client.stream("GET", "/v1/events", headers=bearer("admin")) as others:
            assert others.status_code == 200, "another token's streams are its own"


def test_requests_in_flight_are_bounded_per_caller(settings):
    """A caller whose streams fill MAX_REQUESTS_PER_CALLER gets a 429 for anything else too."""
    from api.app import create_app

    migrate(settings.database_url)
    tight = settings.model_copy(update={"max_requests_per_caller": 1, "rate_limit_burst": 100})
    with TestClient(create_app(tight)) as client, client.stream("GET", "/v1/events", headers=bearer("read")):
        refused = client.get("/v1/jobs", headers=bearer("read"))
        assert refused.status_code == 429 and "MNIST_JOBS_MAX_REQUESTS_PER_CALLER" in refused.json()["detail"]
        assert client.get("/v1/jobs", headers=bearer("a")).status_code == 200


# Who sees whose jobs ------------------------------------------------------------------------------


@pytest.fixture
def roomy(settings):
    return settings.model_copy(update={"rate_limit_burst": 1000})


def test_submitted_by_is_shown_to_the_submitter_and_admins_only(roomy):
    from api.app import create_app

    migrate(roomy.database_url)
    with TestClient(create_app(roomy)) as client:
        created = client.post("/v1/jobs", json={"architecture": "fc"}, headers=bearer("a")).json()
        owner_id = created["submitted_by"]
        assert owner_id is not None and len(owner_id) == 12
        comparison = client.post(
            "/v1/comparisons", json={"seeds": 1, "architectures": ["fc"]}, headers=bearer("a")
        ).json()
        assert comparison["submitted_by"] == owner_id
        expected = {"a": owner_id, "admin": owner_id, "b": None, "read": None}
        for who, shown in expected.items():
            job = client.get(f"/v1/jobs/{created['id']}", headers=bearer(who)).json()
            listed = client.get("/v1/jobs", headers=bearer(who)).json()["items"]
            compared = client.get(f"/v1/comparisons/{comparison['id']}", headers=bearer(who)).json()
            comparisons = client.get("/v1/comparisons", headers=bearer(who)).json()["items"]
            assert job["submitted_by"] == shown, who
            assert {j["submitted_by"] for j in listed} == {shown}, who
            assert compared["submitted_by"] == shown and comparisons[0]["submitted_by"] == shown, who
            with client.stream("GET", f"/v1/jobs/{created['id']}/events", headers=bearer(who)) as stream:
                snapshot = next(line for line in stream.iter_lines() if line.startswith("data:"))
            assert f'"submitted_by":{"null" if shown is None else chr(34) + shown + chr(34)}' in snapshot, who
