"""mnist_jobs_client.Client against a live `mnist-jobs serve` (one worker) over a real socket: a CNN job
followed to its end, then its checkpoint downloaded and its model loaded."""

from __future__ import annotations

import hashlib

import torch

from bench.synthetic import make_digits
from mnist_jobs_client import Client
from service.jobs.schemas import CNNSpec, Progress
from service.platform.states import JobStatus
from service.training.nets import build_model
from service.training.tensors import normalise


def test_a_cnn_job_followed_downloaded_and_loaded_through_the_client(live_server, tmp_path):
    server = live_server(workers=1)
    with Client(server.url) as api:
        # batch_size 1: enough steps (1,200) that the job runs through several heartbeats
        job = api.submit({"architecture": "cnn", "permutation_seed": 42, "epochs": 2, "batch_size": 1})
        seen: list[Progress] = []
        final = api.wait(job.id, progress=seen.append, timeout=600)  # the deadline only guards a hang
        assert final.status is JobStatus.succeeded, final.error
        assert final.result is not None and [m.epoch for m in final.metrics] == [1, 2]
        assert seen and seen[-1].fraction == 1.0 and all(isinstance(p, Progress) for p in seen)
        fractions = [p.fraction for p in seen]
        assert fractions == sorted(fractions), "progress only moves forward"
        [worker] = api.workers()
        assert worker.device == "cpu"

        path = api.download_checkpoint(job.id, tmp_path)
        assert path == tmp_path / f"{job.id}-epoch002.pt"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == final.result.checkpoints[-1].sha256

        model, perm = api.load_model(job.id)
        saved = torch.load(path, weights_only=True)  # by hand
        by_hand = build_model(CNNSpec.model_validate(saved["spec"]))
        by_hand.load_state_dict(saved["state_dict"])
        by_hand.eval()
        assert perm is not None and torch.equal(perm, saved["permutation"])
        images = make_digits(4, seed=9)[0]
        x = normalise(torch.from_numpy(images))
        x = x.view(len(x), -1)[:, perm].view_as(x)
        with torch.no_grad():
            out = model(x)
            assert torch.equal(out, by_hand(x))
        answer = api.predict(job.id, images[0].flatten().tolist())
        assert answer.epoch == 2 and answer.digit == int(out[0].argmax())
