"""GET and HEAD /v1/jobs/{id}/model and /checkpoint through the real app and its real helper process.

The job is trained by the worker's own runner on the small IDX files; the ONNX download is run with
onnxruntime and checked against the app's own predictions, the safetensors one loaded into the net.
One app (one helper start, whose first export pays torch's exporter import) serves the module.
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load as load_safetensors

from bench.synthetic import make_digits
from service.jobs.schemas import job_spec_adapter
from service.platform.config import Settings
from service.platform.db import Database
from service.training.nets import build_model
from tests.support.settings import make_settings, migrate
from tests.support.training import run_queued

PROBLEM = "application/problem+json"
IMAGES = make_digits(4, seed=5)[0]  # (4, 28, 28) uint8


@dataclass
class Served:
    client: TestClient
    settings: Settings
    job: str  # succeeded, epochs 1 and 2 kept
    queued: str  # no checkpoint yet

    def models(self) -> Path:
        return self.settings.artifacts_dir / "jobs" / self.job / "models"


def train(client: TestClient, settings: Settings, db: Database, spec: dict[str, Any]) -> str:
    """Submit a job and run it to its end with the worker's own runner, in this process."""
    job_id = str(client.post("/v1/jobs", json=spec).json()["id"])
    assert run_queued(settings, db) == {job_id: "succeeded"}
    return job_id


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, mnist_data: tuple[Path, dict[str, str]]) -> Iterator[Served]:
    from api.app import create_app

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    settings = make_settings(tmp_path_factory.mktemp("downloads"), *mnist_data)
    migrate(settings.database_url)
    db = Database(settings.database_url)
    with TestClient(create_app(settings)) as client:
        job = train(client, settings, db, {"architecture": "fc", "permutation_seed": 7, "epochs": 2})
        queued = client.post("/v1/jobs", json={"architecture": "fc"}).json()["id"]
        yield Served(client, settings, job, queued)
    db.dispose()
    torch.set_num_threads(threads)


def stat_of(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def assert_file_headers(response: Any, data: bytes, filename: str) -> None:
    sha256 = hashlib.sha256(data).hexdigest()
    assert response.headers["etag"] == f'"{sha256}"'
    assert response.headers["repr-digest"] == f"sha-256=:{base64.b64encode(bytes.fromhex(sha256)).decode()}:"
    assert response.headers["content-disposition"] == f'attachment; filename="{filename}"'
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["accept-ranges"] == "bytes"


def test_onnx_downloads_once_and_predicts_what_the_app_predicts(served):
    url = f"/v1/jobs/{served.job}/model"
    first = served.client.get(url, params={"format": "onnx"})
    assert first.status_code == 200
    assert_file_headers(first, first.content, f"{served.job}-epoch002.onnx")
    [stored] = served.models().glob("*.onnx")
    before = stat_of(stored)
    assert stored.read_bytes() == first.content

    again = served.client.get(url, params={"format": "onnx", "epoch": 2})
    assert again.content == first.content and again.headers["etag"] == first.headers["etag"]
    assert stat_of(stored) == before  # read back, not exported again
    assert sorted(p.name for p in served.models().iterdir()) == [stored.name, stored.name + ".sha256"]

    session = ort.InferenceSession(first.content, providers=["CPUExecutionProvider"])
    (log_probabilities,) = session.run(["log_probabilities"], {"pixels": IMAGES})
    for image, row in zip(IMAGES, log_probabilities, strict=True):
        answer = served.client.post(f"/v1/jobs/{served.job}/predict", json={"pixels": image.flatten().tolist()})
        assert answer.json()["digit"] == int(row.argmax())
        np.testing.assert_allclose(np.exp(row), answer.json()["probabilities"], atol=1e-4)


def test_safetensors_downloads_once_and_loads_into_the_net(served):
    url = f"/v1/jobs/{served.job}/model?format=safetensors&epoch=1"
    first = served.client.get(url)
    assert first.status_code == 200
    assert_file_headers(first, first.content, f"{served.job}-epoch001.safetensors")
    [stored] = served.models().glob("epoch-001-*.safetensors")
    before = stat_of(stored)
    assert served.client.get(url).content == first.content
    assert stat_of(stored) == before

    checkpoint = served.client.get(f"/v1/jobs/{served.job}/checkpoint?epoch=1")
    state = torch.load(io.BytesIO(checkpoint.content), weights_only=True)
    net = build_model(job_spec_adapter.validate_python(state["spec"]))
    net.load_state_dict(load_safetensors(first.content), strict=True)
    for key, value in net.state_dict().items():
        assert torch.equal(value, state["state_dict"][key])


@pytest.mark.parametrize("path", ["checkpoint", "model?format=onnx"])
def test_head_ranges_and_if_none_match(served, path):
    url = f"/v1/jobs/{served.job}/{path}"
    whole = served.client.get(url)
    data, size, etag = whole.content, len(whole.content), whole.headers["etag"]
    assert whole.status_code == 200 and size > 100

    head = served.client.head(url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(size)
    for name in ("etag", "repr-digest", "content-disposition", "accept-ranges", "content-type"):
        assert head.headers[name] == whole.headers[name]

    def ranged(value: str, method: str = "GET") -> Any:
        return served.client.request(method, url, headers={"Range": value})

    part = ranged("bytes=0-99")
    assert part.status_code == 206 and part.content == data[:100]
    assert part.headers["content-range"] == f"bytes 0-99/{size}" and part.headers["etag"] == etag
    rest = ranged("bytes=100-")
    assert rest.status_code == 206 and part.content + rest.content == data  # as `curl -C -` resumes
    assert rest.headers["content-range"] == f"bytes 100-{size - 1}/{size}"
    tail = ranged("bytes=-10")
    assert tail.status_code == 206 and tail.content == data[-10:]
    past_end = ranged(f"bytes=50-{size + 1000}")
    assert past_end.status_code == 206 and past_end.content == data[50:]
    head_part = ranged("bytes=0-99", "HEAD")
    assert head_part.status_code == 206 and head_part.content == b"" and head_part.headers["content-length"] == "100"

    for unsatisfiable in (f"bytes={size}-", f"bytes={size + 5}-{size + 9}", "bytes=-0"):
        refused = ranged(unsatisfiable)
        assert refused.status_code == 416 and refused.headers["content-type"] == PROBLEM, (unsatisfiable, size)
        assert refused.headers["content-range"] == f"bytes */{size}"
        assert refused.json()["field"] == "header.range"
    for ignored in ("bytes=0-1,5-9", "bytes=9-2", "bytes=abc", "items=0-9", "bytes=-"):
        full = ranged(ignored)
        assert full.status_code == 200 and full.content == data, ignored
    stale = served.client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"0000"'})
    assert stale.status_code == 200 and stale.content == data

    for matching in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        cached = served.client.get(url, headers={"If-None-Match": matching})
        assert cached.status_code == 304 and cached.content == b"" and cached.headers["etag"] == etag
    assert served.client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200


def test_unknown_epoch_no_checkpoint_and_bad_format(served):
    missing = served.client.get(f"/v1/jobs/{served.job}/model", params={"format": "onnx", "epoch": 9})
    assert missing.status_code == 404 and missing.json()["field"] == "epoch"
    assert missing.headers["content-type"] == PROBLEM
    early = served.client.get(f"/v1/jobs/{served.queued}/model", params={"format": "safetensors"})
    assert early.status_code == 409 and "no checkpoint" in early.json()["detail"]
    for params in ({"format": "pickle"}, {}):
        bad = served.client.get(f"/v1/jobs/{served.job}/model", params=params)
        assert bad.status_code == 422 and bad.json()["field"] == "query.format", bad.json()
    assert served.client.head(f"/v1/jobs/{served.queued}/checkpoint").status_code == 409


def test_concurrent_first_requests_make_one_export(served):
    folder = served.models()
    for old in folder.glob("epoch-002-*.safetensors*"):
        old.unlink()
    url = f"/v1/jobs/{served.job}/model?format=safetensors"
    answers: list[Any] = []

    def fetch() -> None:
        answers.append(served.client.get(url))

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [a.status_code for a in answers] == [200] * 4
    assert len({a.content for a in answers}) == 1 and len({a.headers["etag"] for a in answers}) == 1
    made = sorted(p.name for p in folder.glob("epoch-002-*.safetensors*"))
    assert len(made) == 2 and not list(folder.glob(".*"))  # the file and its sha256; no temp file left


def test_a_damaged_export_is_made_again(served):
    url = f"/v1/jobs/{served.job}/model?format=onnx"
    good = served.client.get(url)
    [stored] = served.models().glob("epoch-002-*.onnx")
    stored.write_bytes(b"not a model")
    again = served.client.get(url)
    assert again.status_code == 200 and again.content == good.content
    assert stored.read_bytes() == good.content


def test_a_corrupt_checkpoint_is_a_409_and_exports_nothing(served):
    [checkpoint] = (served.settings.artifacts_dir / "jobs" / served.job).glob("epoch-001-*.pt")
    checkpoint.write_bytes(b"flipped")
    refused = served.client.get(f"/v1/jobs/{served.job}/model", params={"format": "onnx", "epoch": 1})
    assert refused.status_code == 409 and refused.json()["field"] == "epoch"
    assert str(served.settings.artifacts_dir) not in refused.text
    assert not list(served.models().glob("epoch-001-*.onnx*"))


def test_deleting_the_job_deletes_its_exports(served):
    assert served.models().is_dir()
    assert served.client.delete(f"/v1/jobs/{served.job}").status_code == 204
    assert not served.models().parent.exists()
    assert served.client.get(f"/v1/jobs/{served.job}/model?format=onnx").status_code == 404
