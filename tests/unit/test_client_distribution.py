"""The client distribution's first-hour parts against the real app in process (the TestClient's own
httpx transport): job id prefixes resolved by the server, scheme-less URLs, model downloads (ONNX,
safetensors) verified like checkpoints, and the CLI's one table of exit codes."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from mnist_jobs_client import AmbiguousId, ApiError, ChecksumMismatch, Client
from mnist_jobs_client.cli import cli
from mnist_jobs_client.cli.exits import MEANING, Exit, code_for
from mnist_jobs_client.errors import ServerUnreachable
from mnist_jobs_client.wire import with_scheme
from service.platform.config import Settings
from service.platform.db import Database
from tests.support.job_ids import rename_job
from tests.support.training import run_queued
from tests.support.transports import FlipsAByte

URL = "http://testserver"
SHARED = "abcdef01"  # the prefix two jobs are given


@pytest.fixture
def api(client: TestClient) -> Iterator[Client]:
    with Client(URL, transport=client._transport) as api_client:
        yield api_client


def test_a_prefix_of_4_or_more_hex_characters_finds_the_one_job_or_names_the_matches(api, db):
    first, second, other = (api.submit({"architecture": "fc"}).id for _ in range(3))
    full_a, full_b = f"{SHARED}-0000-4000-8000-00000000000a", f"{SHARED}-1111-4000-8000-00000000000b"
    rename_job(db, first, full_a)
    rename_job(db, second, full_b)

    assert api.resolve(other[:8]) == other
    assert api.resolve(other[:8].upper()) == other, "as jobs list shows it, in either case"
    assert api.resolve(full_a[:-1] + "A") == full_a, "a full id is taken as it is (lowercased)"
    assert api.resolve(full_b[:13]) == full_b, "a prefix may run past the first hyphen"
    assert api.get(api.resolve(other[:6])).id == other

    with pytest.raises(AmbiguousId) as ambiguous:
        api.resolve(SHARED[:5])
    assert "ambiguous" in str(ambiguous.value) and sorted(ambiguous.value.matches) == [full_a, full_b]
    assert full_a in str(ambiguous.value) and full_b in str(ambiguous.value)
    with pytest.raises(ApiError) as none:
        api.resolve("0000000000")
    assert none.value.status == 404 and "0000000000" in none.value.detail
    for bad in ("abc", "xyz1", "ab%d", ""):
        with pytest.raises(ValueError, match="4 or more hex"):
            api.resolve(bad)


def test_the_list_route_filters_by_id_prefix_and_names_the_field_of_a_bad_one(api, client):
    job = api.submit({"architecture": "fc"})
    assert [j.id for j in api.jobs(id_prefix=job.id[:7])] == [job.id]
    assert [j.id for j in api.jobs(id_prefix=job.id[:7].upper())] == [job.id]
    for bad in ("abc", "ab_d", "abc%", "g" * 4, "a" * 37):
        answer = client.get("/v1/jobs", params={"id_prefix": bad})
        assert answer.status_code == 422, bad
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["field"] == "query.id_prefix", answer.json()


def test_a_url_without_a_scheme_means_http(monkeypatch):
    assert with_scheme("127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert with_scheme("jobs.lab:8000/") == "http://jobs.lab:8000"
    assert with_scheme("https://jobs.lab/") == "https://jobs.lab"
    with Client("127.0.0.1:9") as plain:
        assert plain.base_url == "http://127.0.0.1:9"
    monkeypatch.setenv("MNIST_JOBS_URL", "localhost:9")
    with Client() as from_env:
        assert from_env.base_url == "http://localhost:9"
        with pytest.raises(ServerUnreachable) as raised:  # a real connection attempt to that address
            from_env.get(str(uuid.uuid4()))
        assert "http://localhost:9" in str(raised.value)


def train(api: Client, settings: Settings, db: Database, spec: dict[str, object]) -> str:
    """Submit a job and run it to its end with the worker's own runner, in this process."""
    job_id = api.submit(spec).id
    assert run_queued(settings, db) == {job_id: "succeeded"}
    return job_id


@pytest.mark.usefixtures("one_thread")
def test_download_model_saves_each_format_verified_by_its_sha256(api, client, settings, db, tmp_path):
    tmp_path = tmp_path / "downloads"  # the settings' files live in tmp_path itself
    tmp_path.mkdir()
    job_id = train(api, settings, db, {"architecture": "cnn", "n_features": 2, "permutation_seed": 3})
    for file_format in ("onnx", "safetensors"):
        saved = api.download_model(job_id, tmp_path, format=file_format)
        assert saved == tmp_path / f"{job_id}-epoch001.{file_format}"
        sent = client.get(f"/v1/jobs/{job_id}/model", params={"format": file_format})
        assert sent.status_code == 200 and saved.read_bytes() == sent.content
        assert sent.headers["ETag"] == f'"{hashlib.sha256(saved.read_bytes()).hexdigest()}"'
        named = api.download_model(job_id, tmp_path / f"m.{file_format}", format=file_format, epoch=1)
        assert named.read_bytes() == sent.content
    assert api.download_model(job_id, tmp_path).suffix == ".onnx", "ONNX unless asked otherwise"

    with pytest.raises(ApiError) as missing:
        api.download_model(job_id, tmp_path / "e2.onnx", epoch=2)
    assert missing.value.status == 404
    with Client(URL, transport=FlipsAByte(client._transport)) as flaky, pytest.raises(ChecksumMismatch) as bad:
        flaky.download_model(job_id, tmp_path / "flipped.safetensors", format="safetensors")
    assert "safetensors model of job" in str(bad.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{job_id}-epoch001.onnx", f"{job_id}-epoch001.safetensors", "m.onnx", "m.safetensors"]
    ), "a failed download leaves no file and no temp file"


def test_every_exit_code_is_distinct_documented_and_chosen_by_status():
    assert len({code.value for code in Exit}) == len(Exit) and set(MEANING) == set(Exit)
    cases = {401: Exit.AUTH, 403: Exit.AUTH, 404: Exit.NOT_FOUND, 409: Exit.CONFLICT, 422: Exit.USAGE}
    cases |= {429: Exit.ERROR, 500: Exit.ERROR, 503: Exit.ERROR}
    for status, code in cases.items():
        assert code_for(ApiError("x", status=status)) is code, status
    assert code_for(AmbiguousId("abcd", ["a", "b"])) is Exit.USAGE
    assert code_for(ServerUnreachable("down")) is Exit.UNREACHABLE
    assert code_for(ChecksumMismatch("bad")) is Exit.ERROR
    shown = CliRunner().invoke(cli, ["--help"], terminal_width=200).output
    for code, meaning in MEANING.items():
        assert f"{code.value}  {meaning}" in shown, code
