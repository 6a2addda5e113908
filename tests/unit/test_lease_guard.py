"""A training loop whose lease is in doubt (the process was paused past it) trains no further step
until the heartbeat answers: renewed, it goes on and computes exactly what it would have; lost, it
stops where it was. The heartbeat moves each job's lease deadline on with every renewal."""

from __future__ import annotations

import math
import threading
import time

import pytest
import torch
from sqlalchemy import update

from service.jobs.schemas import FCSpec
from service.platform.models import Job
from service.platform.states import Outcome
from service.training.control import Live
from service.training.packed import PackedFCTrainer
from service.training.tensors import load_tensors
from tests.support.queue import two_claims
from tests.support.training import Recorded, make_spec, trainer_for
from workers.heartbeat import Heartbeat, Held

pytestmark = pytest.mark.usefixtures("one_thread")

DOUBT = 0.5  # seconds the loop is left waiting: an unguarded loop trains the fixture's epoch in less
CPU = torch.device("cpu")


def in_doubt() -> Live:
    """A Live whose lease deadline has passed, as after a SIGCONT that came later than the lease."""
    return Live(lease_until=time.monotonic() - 1)


def started(run, recorded: Recorded) -> threading.Thread:
    thread = threading.Thread(target=run, args=(recorded,), daemon=True)
    thread.start()
    time.sleep(DOUBT)
    return thread


def test_a_lost_lease_stops_the_loop_before_its_next_step(settings):
    live, recorded = in_doubt(), Recorded()
    thread = started(trainer_for(settings, make_spec("fc", epochs=2), live=live).run, recorded)
    assert thread.is_alive() and live.step == 0 and not recorded.epochs, "no step trained while in doubt"
    live.request_stop(Outcome.lease_lost)  # the heartbeat's verdict
    thread.join(30)
    reason, state = recorded.stops[0]
    assert reason is Outcome.lease_lost and state.epoch == 0 and state.partial is not None
    assert state.partial.step == 0


def test_a_renewed_lease_lets_the_loop_go_on_and_changes_nothing_it_computes(settings):
    spec = make_spec("cnn", epochs=1)
    straight = trainer_for(settings, spec)
    straight.run(Recorded())

    live, recorded = in_doubt(), Recorded()
    guarded = trainer_for(settings, spec, live=live)
    thread = started(guarded.run, recorded)
    assert live.step == 0
    live.lease_until = math.inf  # renewed
    thread.join(60)
    assert guarded.metrics == straight.metrics and not recorded.stops
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, guarded.model.state_dict()[name]), name


def test_in_a_pack_only_the_job_whose_lease_was_lost_leaves(settings):
    specs = [FCSpec.model_validate({"architecture": "fc", "epochs": 1, "seed": seed}) for seed in (1, 2)]
    lives, recorded = [in_doubt(), in_doubt()], Recorded()
    trainer = PackedFCTrainer(specs, load_tensors(settings, "mnist"), CPU, lives)
    thread = started(trainer.run, recorded)
    assert all(live.step == 0 for live in lives) and not recorded.epochs
    lives[0].request_stop(Outcome.lease_lost)
    lives[1].lease_until = math.inf
    thread.join(60)
    reason, state = recorded.stops[0]
    assert reason is Outcome.lease_lost and state.partial is not None and state.partial.step == 0
    assert 0 not in recorded.epochs and len(recorded.epochs[1]) == 1 and 1 not in recorded.stops


def test_each_heartbeat_moves_the_lease_deadline_on_and_a_lost_lease_stops_the_job(db):
    kept, lost = two_claims(db, 30)
    assert kept.lease_from <= time.monotonic()
    helds = [Held(claim, Live(lease_until=claim.lease_from + 30)) for claim in (kept, lost)]
    with db.write() as session:  # another worker took `lost` over
        session.execute(update(Job).where(Job.id == lost.job_id).values(lease_token="other"))

    before = time.monotonic()
    Heartbeat(db, helds, period=1, lease_seconds=30, worker_id="w").beat()
    assert before + 30 <= helds[0].live.lease_until <= time.monotonic() + 30
    assert helds[1].live.stop_reason is Outcome.lease_lost
