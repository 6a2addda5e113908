"""Clients generated from the live /openapi.json by two independent generators (openapi-python-client
and @hey-api/openapi-ts, pinned in tests/support/generated_clients.py) work against a live server
with a real worker: each submits a small FC job, polls it to succeeded, downloads its checkpoint and
its ONNX model, and reads the API's own 401, 404, 409 and 422 answers as the documented Problem."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.platform import auth
from service.platform.auth import Role
from tests.support import generated_clients
from tests.support.processes import wait_until

pytestmark = pytest.mark.slow
MISSING = uuid.UUID(int=1)
PACKAGE = "mnist_jobs_generated"
FINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def server(live_server, tmp_path):
    """One live server and one worker, behind a tokens file holding one admin token."""
    tokens = tmp_path / "tokens"
    token, _known = auth.create(tokens, Role.admin)
    served = live_server(workers=1, api_tokens_file=str(tokens))
    return served, token


@pytest.fixture
def document(server, tmp_path) -> Path:
    served, _token = server
    response = httpx.get(f"{served.url}/openapi.json", timeout=30)
    assert response.status_code == 200
    path = tmp_path / "openapi.json"
    path.write_bytes(response.content)
    return path


def test_the_python_client_openapi_python_client_generates(server, document, tmp_path):
    served, token = server
    out = tmp_path / "python-client"
    generated = generated_clients.generate_python(document, out, PACKAGE)
    try:
        flow(generated, served.url, token)
    finally:
        generated_clients.forget_python(out, PACKAGE)


def flow(generated: Any, url: str, token: str) -> None:
    from mnist_jobs_generated.api.jobs import (  # type: ignore[import-not-found]
        cancel_job,
        download_checkpoint,
        download_model,
        get_job,
        list_jobs,
        submit_job,
    )
    from mnist_jobs_generated.models import (  # type: ignore[import-not-found]
        DownloadModelFormat,
        FCSpec,
        JobRead,
        JobStatus,
        Problem,
    )

    client = generated.AuthenticatedClient(base_url=url, token=token, timeout=httpx.Timeout(60))
    anonymous = generated.Client(base_url=url, timeout=httpx.Timeout(60))

    def problem(answer: Any, status: int) -> Any:
        assert answer.status_code == status, answer.content
        print(f"python client: HTTP {status} -> {answer.parsed!r}")  # the transcript, with pytest -s
        assert isinstance(answer.parsed, Problem), answer.parsed
        assert answer.parsed.status == status and answer.parsed.title and answer.parsed.detail
        return answer.parsed

    problem(list_jobs.sync_detailed(client=anonymous), 401)
    problem(get_job.sync_detailed(MISSING, client=client), 404)
    invalid = problem(submit_job.sync_detailed(client=client, body=FCSpec(architecture="fc", epochs=0)), 422)
    assert invalid.field == "epochs", invalid

    created = submit_job.sync(client=client, body=FCSpec(architecture="fc", epochs=1))
    assert isinstance(created, JobRead) and created.status is JobStatus.QUEUED

    def ended() -> Any:
        job = get_job.sync(created.id, client=client)
        assert isinstance(job, JobRead)
        return job if job.status.value in FINAL else None

    job = wait_until(ended, timeout=300, interval=0.2)
    print(f"python client: submit_job -> {type(created).__name__} {created.status!r}; get_job -> {job.status!r}")
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert 0 <= job.result.test_accuracy <= 1
    saved = job.result.checkpoints[-1]

    problem(cancel_job.sync_detailed(created.id, client=client), 409)
    checkpoint = download_checkpoint.sync(created.id, client=client)
    data = checkpoint.payload.read()
    assert hashlib.sha256(data).hexdigest() == saved.sha256 and len(data) == saved.size_bytes

    model = download_model.sync(created.id, client=client, format_=DownloadModelFormat.ONNX)
    onnx = model.payload.read()
    assert onnx[:1] == b"\x08", onnx[:16]  # an ONNX ModelProto starts with its ir_version field
    print(f"python client: download_checkpoint -> {len(data)} bytes; download_model(onnx) -> {len(onnx)} bytes")


def test_the_typescript_client_hey_api_openapi_ts_generates(server, document, tmp_path):
    served, token = server
    flow_script = generated_clients.generate_ts(document, tmp_path / "ts-client")
    steps = {record["step"]: record for record in generated_clients.run_ts(flow_script, served.url, token)}
    print("\n".join(f"typescript client: {record}" for record in steps.values()))  # the transcript, with -s
    for step, status in (("401", 401), ("404", 404), ("422", 422), ("409", 409)):
        record = steps[step]
        assert record["http_status"] == status and record["is_problem"], record
        assert record["problem"]["status"] == status and record["problem"]["detail"], record
    assert steps["422"]["problem"]["field"] == "epochs"
    assert steps["submit"]["http_status"] == 201 and steps["submit"]["status"] == "queued"
    assert steps["poll"]["status"] == "succeeded" and 0 <= steps["poll"]["test_accuracy"] <= 1
    checkpoint = steps["checkpoint"]
    assert checkpoint["http_status"] == 200 and checkpoint["sha256"] == steps["poll"]["checkpoint_sha256"]
    assert steps["model"]["http_status"] == 200 and steps["model"]["first"] == 0x08 and steps["model"]["size"] > 0
