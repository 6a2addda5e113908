"""POST /v1/jobs/{id}/predict through the real app and its real inference helper process.

Jobs are trained by the worker's own runner on the small IDX files; the reference answer is the
checkpoint read back here with torch.load(weights_only=True), preprocessed the way training does
(written out here, not taken from the service). One app (one helper start, the cost of a torch
import) serves the module; the helper's own logic is also run in this process, where its cache
can be looked at.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from bench.synthetic import make_digits
from service.inference import helper
from service.inference.client import InferenceClient
from service.jobs import lifecycle
from service.jobs.schemas import SEED_MAX, job_spec_adapter
from service.platform.config import Settings
from service.platform.db import Database
from service.platform.errors import PredictionUnavailable
from service.training.nets import build_model
from service.training.tensors import permutation
from tests.support.processes import wait_until
from tests.support.settings import make_settings, migrate
from tests.support.training import run_queued

PROBLEM = "application/problem+json"
READ = {"Authorization": "Bearer predict-read"}
SUBMIT = {"Authorization": "Bearer predict-submit"}
SPECS: dict[str, dict[str, Any]] = {
    "cnn": {"architecture": "cnn"},
    "cnn_permuted": {"architecture": "cnn", "permutation_seed": 42},
    "fc_permuted": {"architecture": "fc", "permutation_seed": 7, "n_hidden": 16},
    "broken": {"architecture": "fc"},  # its file is overwritten before any prediction
    "gone": {"architecture": "fc"},  # its file is removed before any prediction
}
IMAGES = make_digits(4, seed=5)[0]  # (4, 28, 28) uint8, digit-like blocks on noise


@dataclass
class Served:
    client: TestClient
    settings: Settings
    db: Database
    jobs: dict[str, str]  # name in SPECS -> job id; "queued" has no checkpoint

    def checkpoint(self, name: str) -> tuple[Path, str]:
        with self.db.read() as session:
            _epoch, file = lifecycle.checkpoint(session, self.jobs[name], None)
        return self.settings.artifacts_dir / file.path, file.sha256


def train(client: TestClient, settings: Settings, db: Database, spec: dict[str, Any]) -> str:
    """Submit a job and run it to its end with the worker's own runner, in this process."""
    job_id = str(client.post("/v1/jobs", json=spec, headers=SUBMIT).json()["id"])
    assert run_queued(settings, db) == {job_id: "succeeded"}
    return job_id


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, mnist_data: tuple[Path, dict[str, str]]) -> Iterator[Served]:
    from api.app import create_app

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    settings = make_settings(tmp_path_factory.mktemp("predict"), *mnist_data).model_copy(
        update={"api_tokens": "predict-read:read,predict-submit:submit"}
    )
    migrate(settings.database_url)
    db = Database(settings.database_url)
    with TestClient(create_app(settings)) as client:
        ids = {name: train(client, settings, db, spec) for name, spec in SPECS.items()}
        ids["queued"] = client.post("/v1/jobs", json={"architecture": "fc"}, headers=SUBMIT).json()["id"]
        yield Served(client, settings, db, ids)
    db.dispose()
    torch.set_num_threads(threads)


def reference(path: Path, image: np.ndarray) -> tuple[int, list[float]]:
    """The digit and probabilities of the checkpoint's model for `image`, computed here."""
    saved = torch.load(path, weights_only=True)
    spec = job_spec_adapter.validate_python(saved["spec"])
    model = build_model(spec)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    x = torch.from_numpy(image).to(torch.float32).div(255).sub(0.1307).div(0.3081).flatten()
    if spec.permutation_seed is not None:
        order = torch.randperm(784, generator=torch.Generator().manual_seed(spec.permutation_seed))
        assert torch.equal(saved["permutation"], order)
        x = x[order]
    with torch.no_grad():
        out = model(x.view(1, 1, 28, 28))
    return int(out.argmax()), out.exp()[0].tolist()


def png(image: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    picture = Image.fromarray(image, "L")
    (picture if mode == "L" else picture.convert(mode)).save(buffer, format="PNG")
    return buffer.getvalue()


def post_json(served: Served, job: str, body: Any, headers: dict[str, str] = READ) -> Any:
    return served.client.post(f"/v1/jobs/{job}/predict", json=body, headers=headers)


def post_png(served: Served, job: str, data: bytes) -> Any:
    return served.client.post(f"/v1/jobs/{job}/predict", content=data, headers=READ | {"Content-Type": "image/png"})


def assert_matches(answer: Any, job_id: str, expected: tuple[int, list[float]]) -> None:
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"job_id", "epoch", "digit", "probabilities"}
    assert body["job_id"] == job_id and body["epoch"] == 1
    assert body["digit"] == expected[0]
    assert body["probabilities"] == pytest.approx(expected[1], abs=1e-5)
    assert sum(body["probabilities"]) == pytest.approx(1, abs=1e-5)


@pytest.mark.parametrize("name", ["cnn", "cnn_permuted", "fc_permuted"])
def test_json_and_png_predict_what_the_checkpoint_computes(served, name):
    job_id = served.jobs[name]
    path, _sha256 = served.checkpoint(name)
    for image in IMAGES:
        expected = reference(path, image)
        assert_matches(post_json(served, job_id, {"pixels": image.flatten().tolist()}), job_id, expected)
        assert_matches(post_png(served, job_id, png(image)), job_id, expected)
    assert_matches(post_png(served, job_id, png(IMAGES[0], "RGB")), job_id, reference(path, IMAGES[0]))


def test_a_permuted_job_sees_the_permuted_image(served):
    """The same weights applied to the natural image would answer otherwise: the permutation is applied."""
    path, _sha256 = served.checkpoint("cnn_permuted")
    saved = torch.load(path, weights_only=True)
    model = build_model(job_spec_adapter.validate_python(saved["spec"]))
    model.load_state_dict(saved["state_dict"])
    model.eval()
    image = IMAGES[1]
    x = torch.from_numpy(image).to(torch.float32).div(255).sub(0.1307).div(0.3081)
    with torch.no_grad():
        natural = model(x.view(1, 1, 28, 28)).exp()[0].tolist()
    answer = post_json(served, served.jobs["cnn_permuted"], {"pixels": image.flatten().tolist()}).json()
    assert answer["probabilities"] == pytest.approx(reference(path, image)[1], abs=1e-5)
    assert answer["probabilities"] != pytest.approx(natural, abs=1e-3)


def pixels(value: Any = 0, at: int = 0, size: int = 784) -> list[Any]:
    row: list[Any] = [0] * size
    if size:
        row[at] = value
    return row


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"pixels": pixels(size=783)}, "pixels", "784"),
        ({"pixels": pixels(size=785)}, "pixels", "784"),
        ({"pixels": pixels(256, at=5)}, "pixels.5", "at most 255"),
        ({"pixels": pixels(-1, at=6)}, "pixels.6", "at least 0"),
        ({"pixels": pixels(True, at=7)}, "pixels.7", "not a boolean"),
        ({"pixels": pixels(1.0, at=8)}, "pixels.8", "must be an integer"),
        ({"pixels": pixels("1", at=9)}, "pixels.9", "must be an integer"),
        ({}, "pixels", "pixels is required"),
        ({"pixels": pixels(), "extra": 1}, "extra", "not a field of a prediction request"),
    ],
)
def test_json_that_is_not_one_image_is_a_422_naming_the_field(served, body, field, words):
    response = post_json(served, served.jobs["cnn"], body)
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["field"] == field and words in problem["detail"], problem


def sized_png(width: int, height: int) -> bytes:
    return png(np.zeros((height, width), dtype=np.uint8))


def claims_size(data: bytes, width: int, height: int) -> bytes:
    """A real 28x28 PNG whose header claims another size (the CRC is not even fixed: it is never read)."""
    return data[:16] + width.to_bytes(4, "big") + height.to_bytes(4, "big") + data[24:]


@pytest.mark.parametrize(
    "data, words",
    [
        (sized_png(27, 28), "27x28"),
        (sized_png(56, 56), "56x56"),
        (b"GIF89a not a png at all", "not a PNG"),
        (b"", "not a PNG"),
        (png(IMAGES[0])[:60], "cannot be decoded"),  # cut inside the image data
        (claims_size(png(IMAGES[0]), 100_000, 100_000), "100000x100000"),  # a bomb, refused from its header
    ],
)
def test_a_png_that_is_not_28x28_or_not_a_png_is_a_422_naming_image(served, data, words):
    response = post_png(served, served.jobs["cnn"], data)
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["field"] == "image" and words in problem["detail"], problem


def test_other_media_types_are_415_and_only_predict_takes_png(served):
    image = png(IMAGES[0])
    text = served.client.post(
        f"/v1/jobs/{served.jobs['cnn']}/predict", content=b"1", headers=READ | {"Content-Type": "text/plain"}
    )
    assert text.status_code == 415 and "application/json or image/png" in text.json()["detail"]
    submit = served.client.post("/v1/jobs", content=image, headers=SUBMIT | {"Content-Type": "image/png"})
    assert submit.status_code == 415 and "application/json bodies only" in submit.json()["detail"]


def test_no_checkpoint_is_409_an_unknown_job_404_and_a_token_is_needed(served):
    body = {"pixels": pixels()}
    queued = post_json(served, served.jobs["queued"], body)
    assert queued.status_code == 409 and "no checkpoint" in queued.json()["detail"]
    missing = uuid.uuid4()
    unknown = post_json(served, str(missing), body)
    assert unknown.status_code == 404 and str(missing) in unknown.json()["detail"]
    assert post_json(served, "not-a-uuid", body).json()["field"] == "path.job_id"
    assert post_json(served, served.jobs["cnn"], body, headers={}).status_code == 401


def test_a_corrupt_or_missing_checkpoint_is_named_without_a_server_path(served):
    broken, _sha256 = served.checkpoint("broken")
    broken.write_bytes(b"not what the worker wrote")
    gone, _sha256 = served.checkpoint("gone")
    gone.unlink()
    answers = [post_json(served, served.jobs[name], {"pixels": pixels()}) for name in ("broken", "gone")]
    assert [answer.status_code for answer in answers] == [409, 404]
    assert "sha256" in answers[0].json()["detail"] and broken.name in answers[0].json()["detail"]
    assert gone.name in answers[1].json()["detail"]
    for answer in answers:
        assert answer.headers["content-type"] == PROBLEM
        assert str(served.settings.artifacts_dir) not in answer.text and "/tmp" not in answer.text


def test_the_openapi_document_lists_both_bodies_and_the_errors(served):
    operation = served.client.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}/predict"]["post"]
    assert set(operation["requestBody"]["content"]) == {"application/json", "image/png"}
    assert {int(s) for s in operation["responses"] if int(s) >= 400} == {400, 401, 404, 409, 413, 415, 422, 429, 503}


def test_a_killed_or_hung_helper_is_replaced_at_the_next_call(served):
    inference: InferenceClient = served.client.app.state.inference
    job_id = served.jobs["cnn"]
    body = {"pixels": IMAGES[2].flatten().tolist()}
    expected = reference(served.checkpoint("cnn")[0], IMAGES[2])
    assert_matches(post_json(served, job_id, body), job_id, expected)

    killed = inference.pid
    assert killed is not None
    os.kill(killed, signal.SIGKILL)
    assert_matches(post_json(served, job_id, body), job_id, expected)  # restarted once, retried
    assert inference.pid not in (None, killed)

    hung = inference.pid
    assert hung is not None
    os.kill(hung, signal.SIGSTOP)
    timeout = inference.timeout_seconds
    inference.timeout_seconds = 0.5
    try:
        answer = post_json(served, job_id, body)
    finally:
        inference.timeout_seconds = timeout
    assert answer.status_code == 503 and "took over 0.5 s" in answer.json()["detail"]
    assert pid_of(inference) is None and not alive(hung), "the hung helper was killed"
    assert_matches(post_json(served, job_id, body), job_id, expected)


def pid_of(inference: InferenceClient) -> int | None:
    return inference.pid  # read afresh (an assert above does not fix what a property returns)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_no_helper_is_left_behind_when_the_app_shuts_down(served):
    from api.app import create_app

    with TestClient(create_app(served.settings)) as other:
        answer = other.post(f"/v1/jobs/{served.jobs['cnn']}/predict", json={"pixels": pixels()}, headers=READ)
        assert answer.status_code == 200
        pid = other.app.state.inference.pid  # type: ignore[attr-defined]
        assert pid is not None and alive(pid)
    assert not alive(pid)
    assert other.app.state.inference.pid is None  # type: ignore[attr-defined]


# The helper's loop, run in this process: each request line gets one reply line, errors included.


def reply(models: helper.Models, request: dict[str, Any] | bytes) -> dict[str, Any]:
    import json

    line = request if isinstance(request, bytes) else json.dumps(request).encode()
    answer: dict[str, Any] = json.loads(helper.answer(models, line).model_dump_json())
    return answer


def test_the_permutation_op_is_the_services_one_definition():
    models = helper.Models(1)
    for seed in (0, 42, SEED_MAX):
        assert reply(models, {"op": "permutation", "seed": seed}) == {
            "ok": True,
            "permutation": permutation(seed).tolist(),
        }
    assert reply(models, {"op": "permutation", "seed": -1})["kind"] == "invalid"


def test_the_permutation_through_the_client_is_the_same_and_cached(served):
    inference: InferenceClient = served.client.app.state.inference
    assert inference.permutation(42) == permutation(42).tolist()
    assert inference.permutation(42) == permutation(42).tolist()


def test_bad_requests_get_an_error_reply_not_a_traceback(tmp_path):
    models = helper.Models(1)
    predict = {"op": "predict", "sha256": "0" * 64, "pixels": [pixels()]}
    assert reply(models, b"not json")["kind"] == "invalid"
    assert reply(models, {"op": "train"})["kind"] == "invalid"
    assert reply(models, predict | {"checkpoint": str(tmp_path / "nope.pt")}) == {
        "ok": False,
        "error": "nope.pt is not there",
        "kind": "missing",
    }
    assert reply(models, predict | {"checkpoint": "x.pt", "pixels": [pixels(256)]})["kind"] == "invalid"


def test_models_stay_loaded_up_to_max_models(served, tmp_path):
    """With room for one model, three checkpoints in turn each answer right; the least recently
    used is dropped (its file, gone meanwhile, is then missed), the one in use is not reloaded."""
    models = helper.Models(1)
    image = IMAGES[3]
    paths = {}
    for name in ("cnn", "cnn_permuted", "fc_permuted"):
        path, sha256 = served.checkpoint(name)
        paths[name] = (shutil.copy(path, tmp_path / f"{name}.pt"), sha256)
    for name in ("cnn", "cnn_permuted", "fc_permuted", "cnn"):
        copy, sha256 = paths[name]
        request = {"op": "predict", "checkpoint": str(copy), "sha256": sha256, "pixels": [image.flatten().tolist()]}
        [prediction] = reply(models, request)["predictions"]
        expected = reference(Path(copy), image)
        assert prediction["digit"] == expected[0]
        assert prediction["probabilities"] == pytest.approx(expected[1], abs=1e-5)
        assert list(models.cache) == [(str(copy), sha256)]
    cnn, sha256 = paths["cnn"]
    Path(cnn).unlink()  # cached: still answers
    request = {"op": "predict", "checkpoint": str(cnn), "sha256": sha256, "pixels": [pixels()]}
    assert reply(models, request)["ok"] is True
    permuted, permuted_sha256 = paths["fc_permuted"]
    reply(models, request | {"checkpoint": str(permuted), "sha256": permuted_sha256})
    assert reply(models, request)["kind"] == "missing", "dropped from the cache, so read again"


def test_a_closed_client_refuses_and_leaves_no_process():
    client = InferenceClient(max_models=1, timeout_seconds=5)
    client.close()
    with pytest.raises(PredictionUnavailable, match="shutting down"):
        client.permutation(1)
    assert client.pid is None


def test_a_stalled_helper_fills_its_bounded_queue_and_holds_no_request_thread(served):
    """Predictions wait for the helper on its queue's own thread: with the helper stopped, calls
    past MNIST_JOBS_PREDICT_QUEUE_MAX are 503s with Retry-After at once, and routes that do not
    need the helper answer meanwhile."""
    inference: InferenceClient = served.client.app.state.inference
    calls = served.client.app.state.helper_calls
    job_id, body = served.jobs["cnn"], {"pixels": IMAGES[0].flatten().tolist()}
    assert post_json(served, job_id, body).status_code == 200  # the helper is up
    stalled = inference.pid
    assert stalled is not None
    waiting, timeout = calls.max_waiting, inference.timeout_seconds
    calls.max_waiting, inference.timeout_seconds = 2, 5.0
    os.kill(stalled, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(3) as pool:
            held = [pool.submit(post_json, served, job_id, body) for _ in range(3)]  # 1 at the helper, 2 waiting
            wait_until(lambda: calls.admitted == 3, timeout=30)
            refused = post_json(served, job_id, body)
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
            assert "waiting for the inference helper" in refused.json()["detail"]
            for path in ("/healthz", f"/v1/jobs/{job_id}"):
                assert served.client.get(path, headers=READ).status_code == 200, path
            statuses = [future.result(timeout=60).status_code for future in held]
    finally:
        calls.max_waiting, inference.timeout_seconds = waiting, timeout
        with contextlib.suppress(ProcessLookupError):
            os.kill(stalled, signal.SIGCONT)
    assert 503 in statuses, "the call at the stalled helper timed out, and the helper was replaced"
    assert post_json(served, job_id, body).status_code == 200
