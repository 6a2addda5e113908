"""The PNG endpoints through the real app: what each answers, its cache and ETag, and its errors."""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from service.jobs.schemas import StepMetrics
from service.queue import leases
from tests.support.queue import end_jobs, result

PNG = b"\x89PNG\r\n\x1a\n"


def picture(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png" and response.content.startswith(PNG)
    image = np.asarray(Image.open(io.BytesIO(response.content)).convert("L"), dtype=float)
    assert image.std() > 5, "not a blank picture"
    return image


def test_samples_with_and_without_a_permutation(client):
    plain = picture(client.get("/v1/datasets/mnist/samples.png", params={"count": 8}))
    permuted = picture(client.get("/v1/datasets/mnist/samples.png", params={"count": 8, "permutation_seed": 42}))
    assert permuted.shape[0] > plain.shape[0], "the permuted digits are drawn as a second row"
    again = client.get("/v1/datasets/mnist/samples.png", params={"count": 8})
    assert again.content == client.get("/v1/datasets/mnist/samples.png", params={"count": 8}).content
    etag = again.headers["etag"]
    cached = client.get("/v1/datasets/mnist/samples.png", params={"count": 8}, headers={"If-None-Match": etag})
    assert cached.status_code == 304
    assert client.get("/v1/datasets/mnist/samples.png", params={"count": 101}).status_code == 422
    assert client.get("/v1/datasets/cifar/samples.png").status_code == 422


def test_a_data_set_not_prepared_here_is_a_404_problem_naming_the_fix(client):
    response = client.get("/v1/datasets/fashion-mnist/samples.png")
    assert response.status_code == 404 and response.headers["content-type"] == "application/problem+json"
    assert "mnist-jobs data prepare --dataset fashion-mnist" in response.json()["detail"]


def test_curves_confusion_and_summary(client, db):
    comparison = client.post("/v1/comparisons", json={"seeds": 2, "architectures": ["fc"]}).json()
    job_id = comparison["cells"][0]["job_ids"][0]
    before = picture(client.get(f"/v1/jobs/{job_id}/curves.png"))  # "no data yet", still a picture
    refused = client.get(f"/v1/jobs/{job_id}/confusion.png")
    assert refused.status_code == 409 and refused.json()["field"] == "status"

    with db.write() as session:
        claims = leases.claim(session, "worker-1", 60, limit=100)
        mine = next(claim for claim in claims if claim.job_id == job_id)
        steps = [StepMetrics(step=s, epoch=1, samples=64 * s, loss=2.3 / s) for s in range(50, 951, 50)]
        leases.record_steps(session, mine, steps)
        matrix = [[900 if row == col else 10 for col in range(10)] for row in range(10)]
        leases.finish(session, mine, result(0.9).model_copy(update={"confusion": matrix}), None)
        for claim in claims:
            if claim is not mine:
                leases.hand_back(session, claim, None)
    end_jobs(db, dict.fromkeys(comparison["job_ids"][1:], 0.8))

    assert client.get(f"/v1/jobs/{job_id}").json()["result"]["confusion"] == matrix
    after = picture(client.get(f"/v1/jobs/{job_id}/curves.png"))
    assert before.shape != after.shape or not np.array_equal(before, after), "the curve is drawn once there is one"
    picture(client.get(f"/v1/jobs/{job_id}/confusion.png"))
    picture(client.get(f"/v1/comparisons/{comparison['id']}/summary.png"))
    assert client.get(f"/v1/comparisons/{job_id}/summary.png").status_code == 404


# The render pool (service.pictures.pool): off the request threads, one render per picture, bounded ----


def test_concurrent_requests_for_one_new_picture_share_one_render(client):
    renders = client.app.state.renders
    params = {"count": 30, "permutation_seed": 7}
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: client.get("/v1/datasets/mnist/samples.png", params=params), range(6)))
    assert {a.status_code for a in answers} == {200} and len({a.content for a in answers}) == 1
    assert renders.counts.rendered == 1, "six requests, one render"
    assert renders.counts.joined + renders.counts.cached == 5


def test_pictures_render_outside_the_api_process(client):
    picture(client.get("/v1/datasets/mnist/samples.png", params={"count": 3}))
    executor = client.app.state.renders._executor
    assert executor is not None
    renderers = {p.pid for p in executor._processes.values()} - {os.getpid()}
    assert renderers, "drawn in a render process"
    assert all(os.getpriority(os.PRIO_PROCESS, pid) >= 10 for pid in renderers), "niced below the API"


def test_a_caller_past_its_renders_per_minute_gets_429_while_cached_pictures_are_served(client):
    renders = client.app.state.renders
    renders.per_minute = 2
    drawn = [client.get("/v1/datasets/mnist/samples.png", params={"count": n}) for n in (1, 2)]
    assert [a.status_code for a in drawn] == [200, 200]
    refused = client.get("/v1/datasets/mnist/samples.png", params={"count": 3})
    assert refused.status_code == 429 and refused.json()["title"] == "Too many renders"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert client.get("/v1/datasets/mnist/samples.png", params={"count": 1}).status_code == 200, "cached: free"


def test_a_full_render_queue_is_a_503_with_retry_after(client):
    renders = client.app.state.renders
    renders.max_in_flight = 0  # as if every slot were taken by renders in flight
    refused = client.get("/v1/datasets/mnist/samples.png", params={"count": 4})
    assert refused.status_code == 503 and "MNIST_JOBS_RENDER_QUEUE_MAX" in refused.json()["detail"]
    assert refused.headers["Retry-After"] == "2"
