"""Packed FC jobs train as one stacked model and give each job what it would get alone."""

from __future__ import annotations

import pytest
import torch

from service.training.data import load_tensors
from service.training.engine import Live
from service.training.nets import build_model
from service.training.packed import PackedFCTrainer
from tests.test_engine import make_spec, saved, trainer_for
from tests.test_e2e import worker_process  # noqa: F401  (fixture)
from tests.conftest import wait_until


pytestmark = pytest.mark.usefixtures("one_thread")


def test_each_packed_job_matches_the_same_job_trained_alone(settings):
    specs = [make_spec("fc", None, epochs=2, seed=1), make_spec("fc", 42, epochs=2, seed=2),
             make_spec("fc", 7, epochs=2, seed=3)]
    packed = PackedFCTrainer(specs, load_tensors(settings, "mnist"), torch.device("cpu"), [Live() for _ in specs])
    checkpoints: dict[int, dict] = {}
    results = packed.run(lambda j, row, checkpoint: checkpoints.__setitem__(j, checkpoint), lambda stop: None)
    assert sorted(results) == [0, 1, 2]

    for j, spec in enumerate(specs):
        alone = trainer_for(settings, spec)
        expected = alone.run(lambda *_: None)
        assert results[j]["correct"] == expected["correct"]
        state = saved(checkpoints[j])
        assert state["epoch"] == 2 and state["spec"] == spec
        model = build_model(spec)
        model.load_state_dict(state["state_dict"])  # the tutorial's FC2Layer keys
        for name, tensor in alone.model.state_dict().items():
            torch.testing.assert_close(model.state_dict()[name], tensor, rtol=1e-4, atol=1e-5)
        # and the momentum too: a packed job's checkpoint resumes alone
        resumed = trainer_for(settings, make_spec("fc", spec["permutation_seed"], epochs=3, seed=spec["seed"]),
                              resume={**state, "spec": {**spec, "epochs": 3}})
        assert resumed.run(lambda *_: None)["total"] == 200


def test_a_stopped_job_leaves_the_pack_and_the_others_carry_on(settings):
    specs = [make_spec("fc", None, seed=1), make_spec("fc", None, seed=2)]
    lives = [Live(), Live()]
    lives[1].stop_reason = "cancelled"
    packed = PackedFCTrainer(specs, load_tensors(settings, "mnist"), torch.device("cpu"), lives)
    stops = []
    results = packed.run(lambda *_: None, stops.append)
    assert [s.index for s in stops] == [1] and stops[0].reason == "cancelled"
    assert stops[0].checkpoint["partial"]["step"] == 0
    alone = trainer_for(settings, specs[0]).run(lambda *_: None)
    assert list(results) == [0] and results[0]["correct"] == alone["correct"]


def test_worker_packs_queued_fc_jobs_and_a_cancel_spares_the_rest(client, worker_process):  # noqa: F811
    ids = [client.post("/v1/jobs", json={"architecture": "fc", "epochs": 40, "batch_size": 4, "seed": s,
                                         "permutation_seed": 3 if s % 2 else None}).json()["id"] for s in range(3)]
    cnn = client.post("/v1/jobs", json={"architecture": "cnn"}).json()["id"]
    worker_process()
    wait_until(lambda: all(client.get(f"/v1/jobs/{i}").json()["status"] == "running" for i in ids), timeout=60)
    jobs = [client.get(f"/v1/jobs/{i}").json() for i in ids]
    # one worker process running three jobs at once: they were claimed and are trained as one pack
    assert len({j["history"][-1]["worker_id"] for j in jobs}) == 1
    assert client.get(f"/v1/jobs/{cnn}").json()["status"] == "queued", "a CNN does not join an FC pack"

    assert client.post(f"/v1/jobs/{ids[1]}/cancel").status_code == 202
    final = {i: wait_until(lambda i=i: (j := client.get(f"/v1/jobs/{i}").json())["status"] not in ("queued", "running")
                           and j, timeout=120) for i in ids + [cnn]}
    assert [final[i]["status"] for i in ids] == ["succeeded", "cancelled", "succeeded"]
    assert final[cnn]["status"] == "succeeded"
    for i in (ids[0], ids[2]):
        assert [m["epoch"] for m in final[i]["metrics"]] == list(range(1, 41))
        assert final[i]["attempts"] == 1
