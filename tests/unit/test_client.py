"""mnist_jobs_client.Client against the real app in process: the client gets the TestClient's own
httpx transport, so every call crosses the real ASGI stack (middleware, routes, problem+json).

Jobs are ended through the queue's fenced calls (tests/support/queue.py), or trained for real by
the worker's runner where a model is loaded. Besides the app's own transport there are only
httpx's MockTransport raising httpx's own connection errors, and two wrappers around the app's
transport standing for a faulty network, which pass the app's real answers on: one flips a byte
(the one way to reach the client's own sha256 check: the server never sends a checkpoint that
fails its hash), one drops event streams mid-body (to reach the reconnect and the fallback).
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from bench.synthetic import make_digits
from mnist_jobs_client import ApiError, ChecksumMismatch, Client, ServerUnreachable, WaitTimeout
from mnist_jobs_client.events import Display, EventParser
from service.comparisons.schemas import ComparisonCreate, ComparisonProgress
from service.jobs.schemas import CNNSpec, FCSpec, JobRead, Progress
from service.platform.config import Settings
from service.platform.db import Database
from service.platform.states import JobStatus
from service.queue import leases, registry
from service.training.nets import build_model
from service.training.tensors import normalise
from tests.support.processes import REPO, free_port
from tests.support.queue import end_jobs, finish_with_checkpoint, result
from tests.support.settings import migrate
from tests.support.training import CPU
from tests.support.transports import FlipsAByte

URL = "http://testserver"  # the TestClient's host, one of the app's allowed hosts


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared settings, with a keep-alive comment on idle event streams every 0.2 s: in process
    httpx has no read timeout, so a wait's deadline is checked at each line the stream sends."""
    return settings.model_copy(update={"events_ping_seconds": 0.2})


@pytest.fixture
def api(client: TestClient) -> Iterator[Client]:
    with Client(URL, transport=client._transport) as api_client:
        yield api_client


@pytest.fixture
def sent(api: Client) -> list[httpx.Request]:
    """Every request the client sends, recorded by an httpx event hook."""
    requests: list[httpx.Request] = []
    api.http.event_hooks = {"request": [requests.append]}
    return requests


def test_importing_the_client_imports_neither_torch_fastapi_nor_sqlalchemy():
    heavy = "('torch', 'fastapi', 'sqlalchemy', 'starlette')"
    code = f"import mnist_jobs_client, sys; print([m for m in {heavy} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_submit_takes_a_typed_spec_or_a_dict_and_answers_with_the_servers_model(api, sent):
    typed = api.submit(
        FCSpec(architecture="fc", n_hidden=16, seed=3, name="typed", labels={"run": "a"}, max_attempts=2)
    )
    assert isinstance(typed, JobRead) and typed.status is JobStatus.queued
    assert isinstance(typed.spec, FCSpec) and typed.spec.n_hidden == 16 and typed.spec.seed == 3
    assert (typed.name, typed.labels, typed.max_attempts, typed.param_count) == ("typed", {"run": "a"}, 2, 13_002)

    plain = api.submit({"architecture": "cnn", "permutation_seed": 42, "epochs": 2}, idempotency_key="k-1")
    assert isinstance(plain.spec, CNNSpec) and plain.spec.permutation_seed == 42 and plain.spec.epochs == 2
    assert plain.spec.seed is not None, "the server chose and stored a seed"
    again = api.submit(CNNSpec(architecture="cnn", permutation_seed=42, epochs=2), idempotency_key="k-1")
    assert again.id == plain.id, "the same Idempotency-Key and body: the first job"
    assert api.get(plain.id).id == plain.id
    assert [r.method for r in sent] == ["POST", "POST", "POST", "GET"]


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"architecture": "cnn", "epochs": 0}, "epochs"),
        ({"architecture": "fc", "n_hiden": 8}, "n_hiden"),
        ({"epochs": 1}, "architecture"),
        ({"architecture": "fc", "lr": "0.1"}, "lr"),
    ],
)
def test_an_invalid_dict_fails_before_any_request_naming_the_field_the_server_names(api, sent, spec, field):
    with pytest.raises(ApiError) as raised:
        api.submit(spec)
    assert sent == [], "nothing was sent"
    error = raised.value
    assert (error.status, error.field, error.request_id) == (422, field, None)
    assert field in str(error) and "not sent" in str(error)
    server = api.http.post("/v1/jobs", json=spec).json()  # what the server says of the same body
    assert server["field"] == field


def test_problems_become_api_errors_with_their_fields_and_request_id(api, db):
    missing = str(uuid.uuid4())
    with pytest.raises(ApiError) as not_found:
        api.get(missing)
    error = not_found.value
    assert error.status == 404 and error.title and missing in error.detail
    assert error.request_id and error.request_id in str(error) and error.url == f"{URL}/v1/jobs/{missing}"

    job = api.submit({"architecture": "fc"})
    end_jobs(db, {job.id: 0.9})
    with pytest.raises(ApiError) as conflict:
        api.cancel(job.id)
    assert conflict.value.status == 409 and "succeeded" in conflict.value.detail

    with pytest.raises(ApiError) as invalid:  # passes the client's types, not the server's checks
        list(api.jobs(created_after=datetime(2026, 1, 1)))
    assert invalid.value.status == 422 and invalid.value.field == "query.created_after"
    assert invalid.value.errors == [], "a check of the route's own: a field, no list"
    with pytest.raises(ApiError) as bad_limit:
        list(api.jobs(limit=0))
    assert bad_limit.value.field == "query.limit" and bad_limit.value.errors[0]["field"] == "query.limit"


def test_jobs_iterates_every_page_with_the_servers_filters(api, sent, db):
    ids = [api.submit({"architecture": "fc", "seed": seed, "labels": {"exp": "x"}}).id for seed in range(5)]
    natural_cnn = api.submit({"architecture": "cnn", "name": "the cnn", "labels": {"exp": "x", "kind": "cnn"}})
    permuted = api.submit({"architecture": "cnn", "permutation_seed": 9})
    sent.clear()

    listed = [job.id for job in api.jobs(architecture="fc", limit=2)]
    assert listed == ids[::-1], "all five, newest first"
    assert len(sent) == 3 and [r.url.params.get("limit") for r in sent] == ["2", "2", "2"]
    assert "cursor" not in sent[0].url.params and sent[1].url.params["cursor"]

    assert [j.id for j in api.jobs(label=["exp:x", "kind:cnn"])] == [natural_cnn.id]
    assert [j.id for j in api.jobs(label="exp:x", name="the cnn")] == [natural_cnn.id]
    assert [j.id for j in api.jobs(architecture="cnn", permutation_seed="none")] == [natural_cnn.id]
    assert [j.id for j in api.jobs(permutation_seed=9)] == [permuted.id]
    assert [j.id for j in api.jobs(seed=3)] == [ids[3]]
    end_jobs(db, {ids[1]: 0.8, ids[2]: 0.95})
    assert [j.id for j in api.jobs(status="succeeded", sort="test_accuracy")] == [ids[2], ids[1]]
    assert [j.id for j in api.jobs(created_after=natural_cnn.created_at)] == [permuted.id]


RUNNING = Progress(fraction=0.25, epoch=1, step=3, steps=10, loss=1.5)


def wait_while_a_worker_ends_it(
    api: Client, db: Database, ready: threading.Event | None = None
) -> tuple[JobRead, list[Progress]]:
    """wait() on a running job (progress RUNNING) that a worker ends once wait() has shown that
    progress (and `ready` is set): the job ends while wait() follows it."""
    job = api.submit({"architecture": "fc"})
    with db.write() as session:
        (claim,) = leases.claim(session, "worker-1", 60)
        leases.heartbeat(session, claim, 60, RUNNING)
    seen: list[Progress] = []
    shown = threading.Event()

    def worker() -> None:
        assert shown.wait(60) and (ready is None or ready.wait(60))
        with db.write() as session:
            leases.finish(session, claim, result(0.9), Progress(fraction=1.0, epoch=1, step=10, steps=10, loss=0.5))

    def callback(progress: Progress) -> None:
        seen.append(progress)
        shown.set()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        final = api.wait(job.id, progress=callback, timeout=120)
    finally:
        shown.set()
        if ready is not None:
            ready.set()
        thread.join()
    assert final.id == job.id and final.status is JobStatus.succeeded
    assert final.result is not None and final.result.test_accuracy == 0.9
    assert seen[0] == RUNNING and seen[-1].fraction == 1.0
    assert len(seen) == len({p.model_dump_json() for p in seen}), "each progress once"
    return final, seen


def paths(sent: list[httpx.Request], job_id: str) -> list[str]:
    return [f"{r.method} {r.url.path.replace(job_id, '{id}')}" for r in sent]


def test_wait_follows_the_jobs_events_stream_to_its_end(api, sent, db):
    final, _seen = wait_while_a_worker_ends_it(api, db)
    get, stream = "GET /v1/jobs/{id}", "GET /v1/jobs/{id}/events"
    followed = paths(sent, final.id)
    assert followed[:3] == ["POST /v1/jobs", get, stream] and sent[2].headers["accept"] == "text/event-stream"
    assert followed[3:] in ([], [get]), "no polling: at most the final view (when the stream ended on a status)"


def test_a_broken_stream_is_resumed_once_with_last_event_id_then_polled(client, db):
    link = CutsStreams(client._transport, after_events=1, times=1)  # the job ends once it was cut
    sent: list[httpx.Request] = []
    with Client(URL, transport=link) as api:
        api.http.event_hooks = {"request": [sent.append]}
        final, _seen = wait_while_a_worker_ends_it(api, db, link.cut)
    streams = [r for r in sent if r.url.path.endswith("/events")]
    assert len(streams) == 2 and "last-event-id" not in streams[0].headers
    assert streams[1].headers["last-event-id"].isdigit(), "resumed after the first stream's `job` event"

    link = CutsStreams(client._transport, after_events=0, times=2)  # the job ends once both were cut
    sent.clear()
    with Client(URL, transport=link) as api:
        api.http.event_hooks = {"request": [sent.append]}
        final, _seen = wait_while_a_worker_ends_it(api, db, link.cut)
    get, stream = "GET /v1/jobs/{id}", "GET /v1/jobs/{id}/events"
    followed = paths(sent, final.id)
    assert followed[:4] == ["POST /v1/jobs", get, stream, stream], "the stream, and one reconnect"
    assert followed[4:] and set(followed[4:]) == {get}, "broken twice: polled to the end"


def test_wait_polls_a_server_without_an_events_route(settings, db):
    from api.app import create_app
    from api.routes import events

    app = create_app(settings)  # as a server from before the events streams: the same app less their router
    app.router.routes = [r for r in app.router.routes if getattr(r, "original_router", None) is not events.router]
    with TestClient(app) as older, Client(URL, transport=older._transport) as api:
        missing = older.get(f"/v1/jobs/{uuid.uuid4()}/events")
        assert missing.status_code == 404 and missing.json()["detail"] == "Not Found", "no such route"
        sent: list[httpx.Request] = []
        api.http.event_hooks = {"request": [sent.append]}
        final, _seen = wait_while_a_worker_ends_it(api, db)
    assert paths(sent, final.id)[1:4] == ["GET /v1/jobs/{id}", "GET /v1/jobs/{id}/events", "GET /v1/jobs/{id}"]


class CutsStreams(httpx.BaseTransport):
    """Passes the app's real answers on, but breaks its first `times` event streams after
    `after_events` events, as a dropped connection does (httpx.ReadError mid-body); `cut` is set
    once the last of them broke."""

    def __init__(self, inner: httpx.BaseTransport, *, after_events: int, times: int) -> None:
        self.inner, self.after_events, self.times = inner, after_events, times
        self.cut = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if not request.url.path.endswith("/events") or self.times == 0:
            return response
        self.times -= 1
        stream = CutStream(response, self.after_events, self.cut if self.times == 0 else None)
        return httpx.Response(response.status_code, headers=response.headers, stream=stream, request=request)


class CutStream(httpx.SyncByteStream):
    def __init__(self, response: httpx.Response, after_events: int, cut: threading.Event | None) -> None:
        self.response, self.after_events, self.cut = response, after_events, cut

    def __iter__(self) -> Iterator[bytes]:
        buffered, ends = b"", 0
        for chunk in self.response.stream:  # type: ignore[union-attr]  # a sync transport's stream
            if ends >= self.after_events:
                break
            buffered += chunk
            while ends < self.after_events and (end := buffered.find(b"\n\n")) >= 0:
                if not buffered.startswith(b":"):  # a keep-alive comment is not an event
                    ends += 1
                yield buffered[: end + 2]
                buffered = buffered[end + 2 :]
        if self.cut is not None:
            self.cut.set()
        raise httpx.ReadError("connection reset by peer")

    def close(self) -> None:
        self.response.close()


def test_wait_times_out_with_the_last_view_and_returns_an_ended_job_at_once(api, db, capsys):
    queued = api.submit({"architecture": "fc"})
    with pytest.raises(WaitTimeout) as raised:
        api.wait(queued.id, timeout=0.3)
    assert isinstance(raised.value, TimeoutError) and isinstance(raised.value, ApiError)
    assert isinstance(raised.value.last, JobRead) and raised.value.last.status is JobStatus.queued
    assert queued.id in str(raised.value)

    end_jobs(db, {queued.id: 0.875})
    assert api.wait(queued.id, progress=True).status is JobStatus.succeeded
    assert capsys.readouterr().err == f"job {queued.id[:8]}: succeeded, test accuracy 87.50 %\n", "plain lines"

    with pytest.raises(ApiError) as missing:
        api.wait(str(uuid.uuid4()))
    assert missing.value.status == 404


def test_download_checkpoint_verifies_the_sha256_and_leaves_no_file_when_it_fails(api, client, settings, db, tmp_path):
    payload = os.urandom(100_000)
    job = api.submit({"architecture": "fc"})
    stored = settings.artifacts_dir / finish_with_checkpoint(settings, db, job.id, payload)
    out = tmp_path / "out"
    out.mkdir()

    assert api.download_checkpoint(job.id, out / "fc.pt").read_bytes() == payload
    into_folder = api.download_checkpoint(job.id, out, epoch=1)
    assert into_folder == out / f"{job.id}-epoch001.pt" and into_folder.read_bytes() == payload

    with pytest.raises(ApiError) as gone:
        api.download_checkpoint(job.id, out / "e2.pt", epoch=2)
    assert gone.value.status == 404

    # A faulty network: the app's real answer, one byte flipped on the way. The client's own check.
    with Client(URL, transport=FlipsAByte(client._transport)) as flaky, pytest.raises(ChecksumMismatch) as bad:
        flaky.download_checkpoint(job.id, out / "flipped.pt")
    assert hashlib.sha256(payload).hexdigest() in str(bad.value)

    stored.write_bytes(payload[:-1] + bytes([payload[-1] ^ 1]))  # corrupt on the server's disk
    with pytest.raises(ApiError) as corrupt:
        api.download_checkpoint(job.id, out / "corrupt.pt")
    assert corrupt.value.status == 409 and "corrupt" in corrupt.value.detail
    assert sorted(p.name for p in out.iterdir()) == sorted(["fc.pt", into_folder.name]), "no file, no temp file"


def train(api: Client, settings: Settings, db: Database, spec: dict[str, Any]) -> str:
    """Submit a job and run it to its end with the worker's own runner, in this process."""
    from workers.data_cache import DataCache
    from workers.runner import JobRunner

    job_id = api.submit(spec).id
    with db.write() as session:
        claims = leases.claim(session, "worker-1", settings.lease_seconds)
    assert JobRunner(settings, db, "worker-1", CPU, DataCache(settings, CPU)).run(claims) == {job_id: "succeeded"}
    return job_id


@pytest.mark.usefixtures("one_thread")
def test_load_model_and_predict_compute_what_the_checkpoint_loaded_by_hand_computes(api, settings, db):
    job_id = train(api, settings, db, {"architecture": "fc", "n_hidden": 16, "permutation_seed": 7})
    images = make_digits(3, seed=4)[0]

    generator_before = torch.get_rng_state()
    model, perm = api.load_model(job_id)
    assert torch.equal(torch.get_rng_state(), generator_before), "the caller's global generator is left alone"
    assert not model.training and perm is not None
    assert torch.equal(perm, torch.randperm(784, generator=torch.Generator().manual_seed(7)))

    saved = torch.load(checkpoint_file(settings, job_id), weights_only=True)  # by hand
    by_hand = build_model(FCSpec.model_validate(saved["spec"]))
    by_hand.load_state_dict(saved["state_dict"])
    by_hand.eval()
    x = normalise(torch.from_numpy(images))
    permuted = x.view(len(x), -1)[:, saved["permutation"]].view_as(x)
    with torch.no_grad():
        expected = by_hand(permuted)
        assert torch.equal(model(x.view(len(x), -1)[:, perm].view_as(x)), expected)

    for image, row in zip(images, expected, strict=True):
        for sent_image in (image.flatten().tolist(), png(image)):
            answer = api.predict(job_id, sent_image)
            assert (answer.job_id, answer.epoch, answer.digit) == (job_id, 1, int(row.argmax()))
            assert answer.probabilities == pytest.approx(row.exp().tolist(), abs=1e-5)


def checkpoint_file(settings: Settings, job_id: str) -> Path:
    [path] = (settings.artifacts_dir / "jobs" / job_id).glob("epoch-001-*.pt")
    return path


def png(image: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, "L").save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_unreachable_server_names_the_url_and_what_to_check():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url) as api, pytest.raises(ServerUnreachable) as raised:
        api.get("0d1e0c6a-6b1f-4d55-9d1a-2b9e1d7c1f00")
    message = str(raised.value)
    assert f"{url}/v1/jobs/0d1e0c6a" in message and "mnist-jobs serve" in message and "MNIST_JOBS_URL" in message
    assert raised.value.status is None and isinstance(raised.value.__cause__, httpx.ConnectError)

    def times_out(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)  # httpx's own behaviour, not our server's

    with Client(url, transport=httpx.MockTransport(times_out)) as api, pytest.raises(ServerUnreachable) as late:
        list(api.jobs())
    assert "timed out" in str(late.value) and url in str(late.value)


def test_url_and_token_default_from_the_environment(settings, monkeypatch):
    from api.app import create_app

    migrate(settings.database_url)
    with_tokens = settings.model_copy(update={"api_tokens": "secret-read:read"})
    with TestClient(create_app(with_tokens)) as app:
        monkeypatch.setenv("MNIST_JOBS_URL", URL + "/")
        monkeypatch.delenv("MNIST_JOBS_TOKEN", raising=False)
        with Client(transport=app._transport) as anonymous, pytest.raises(ApiError) as refused:
            anonymous.workers()
        assert anonymous.base_url == URL and refused.value.status == 401
        monkeypatch.setenv("MNIST_JOBS_TOKEN", "secret-read")
        with Client(transport=app._transport) as reader:
            assert reader.workers() == []
    monkeypatch.delenv("MNIST_JOBS_URL")
    assert Client().base_url == "http://127.0.0.1:8000"


def test_comparisons_submit_page_wait_cancel_and_delete(api, sent, db):
    with pytest.raises(ApiError) as invalid:
        api.compare({"seeds": 0})
    assert invalid.value.field == "seeds" and sent == []

    first = api.compare({"seeds": 2, "architectures": ["fc"], "name": "first"})
    second = api.compare(ComparisonCreate(seeds=[5], architectures=["cnn"], permutation_seeds=[None]))
    assert len(first.job_ids) == 4 and first.name == "first" and second.seeds == [5] and len(second.job_ids) == 1
    assert api.comparison(first.id).job_ids == first.job_ids
    sent.clear()
    assert [c.id for c in api.comparisons(limit=1)] == [second.id, first.id] and len(sent) == 2

    end_jobs(db, dict.fromkeys(first.job_ids, 0.9))
    progress: list[ComparisonProgress] = []
    done = api.wait_comparison(first.id, progress=progress.append, timeout=60)
    assert done.status is JobStatus.succeeded and [c.values for c in done.cells] == [[0.9, 0.9], [0.9, 0.9]]
    assert progress == [done.progress]
    with pytest.raises(WaitTimeout):
        api.wait_comparison(second.id, timeout=0.2)

    assert api.cancel_comparison(second.id).status is JobStatus.cancelled
    api.delete_comparison(second.id)
    with pytest.raises(ApiError) as gone:
        api.comparison(second.id)
    assert gone.value.status == 404
    api.delete(first.job_ids[0])
    with pytest.raises(ApiError) as deleted:
        api.get(first.job_ids[0])
    assert deleted.value.status == 404


def test_workers_lists_the_registry(api, db):
    with db.write() as session:
        registry.register(session, "worker-a", host="h", pid=12, device="cpu", torch_version="2.14.1")
    [worker] = api.workers()
    assert (worker.id, worker.pid, worker.device, worker.stopped_at) == ("worker-a", 12, "cpu", None)


def test_server_sent_events_are_parsed_as_the_standard_says():
    lines = [
        ": keep-alive",
        "event: job",
        "id: 1",
        'data: {"a":',
        "data: 1}",
        "",
        "",  # a second blank line: no event
        "data:no space",
        "",
        "retry: 100",
        "event: status",
        "id",  # an empty id resets the last id
        "data: x",
        "",
        ": a comment that moves the resume point on, as the server sends one",
        "id: 7",
        "",
        "event: progress",
        "data: cut off by the end of the stream",
    ]
    parser = EventParser()
    events = [(e.event, e.data, e.id) for e in parser.events(lines)]
    assert events == [("job", '{"a":\n1}', "1"), ("message", "no space", "1"), ("status", "x", None)]
    assert parser.last_id == "7"


def test_a_terminal_gets_a_progress_bar():
    primary, secondary = os.openpty()
    with os.fdopen(secondary, "w") as terminal:
        display = Display("job 1234abcd", terminal)
        display.update("running", 0.5, "epoch 1/2, step 5/10, loss 0.5000", (1, 5))
        display.update("succeeded", 1.0, "test accuracy 90.00 %", (2, 10))
        display.close()
    drawn = b""
    try:
        while chunk := os.read(primary, 65536):
            drawn += chunk
    except OSError:  # EIO: the terminal's other end is closed and everything was read
        pass
    os.close(primary)
    assert b"job 1234abcd" in drawn and b"100%" in drawn
