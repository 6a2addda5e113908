"""Per-step training losses (every N steps, written with the heartbeat or a job's last write) and the
confusion matrix of the last test pass, from the training loop to the database.

The fixture data has 600 training images: 10 steps of 64 per epoch, the last one a short batch of 24.
"""

from __future__ import annotations

import math
import threading
from datetime import timedelta

import pytest
import torch
import torch.nn.functional as F
from sqlalchemy import update

from service.jobs import lifecycle
from service.jobs.schemas import FCSpec, StepMetrics, TrainResult, job_spec_adapter
from service.platform.errors import LeaseLost
from service.platform.models import Job, utcnow
from service.platform.states import JobStatus, Outcome
from service.queue import leases, reaper
from service.storage.store import LocalStore, StoredFile
from service.training import checkpoints
from service.training.control import Live
from service.training.evaluation import evaluate
from service.training.nets import build_model
from service.training.packed import PackedFCTrainer
from service.training.steps import StepLosses, sync_figures
from service.training.tensors import load_tensors
from tests.support.training import CPU, Recorded, StopAt, job_data, make_spec, reloaded, trainer_for
from workers.data_cache import DataCache
from workers.heartbeat import Heartbeat, Held
from workers.runner import JobRunner

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS_PER_EPOCH, N_TRAIN, N_TEST = 10, 600, 200


def recording(every: int | None) -> Live:
    return Live(step_losses=StepLosses(every))


def recorded_steps(settings, spec, every: int, resume=None) -> tuple[list[StepMetrics], Recorded]:
    """The steps a trainer with a Live recording every `every` steps records, and its callbacks."""
    live = recording(every)
    recorded = Recorded()
    trainer_for(settings, spec, resume=resume, live=live).run(recorded)
    return live.step_losses.take(), recorded


def fc_specs(count: int, **fields) -> list[FCSpec]:
    specs = [make_spec("fc", permutation_seed=(7 if j % 2 else None), seed=j + 1, **fields) for j in range(count)]
    return [spec for spec in specs if isinstance(spec, FCSpec)]


# The training loop


@pytest.mark.parametrize(
    "every, expected",
    [
        # (step, epoch, samples): step 10 is the short batch (576 + 24), epoch 2 counts on from 600
        (3, [(3, 1, 192), (6, 1, 384), (9, 1, 576), (12, 2, 728), (15, 2, 920), (18, 2, 1112)]),
        (5, [(5, 1, 320), (10, 1, 600), (15, 2, 920), (20, 2, 1200)]),
        (20, [(20, 2, 1200)]),
    ],
)
def test_steps_are_recorded_at_the_multiples_of_n_counted_over_both_epochs(settings, every, expected):
    steps, _ = recorded_steps(settings, make_spec("fc", epochs=2), every)
    assert [(s.step, s.epoch, s.samples) for s in steps] == expected
    assert all(math.isfinite(s.loss) and s.loss > 0 for s in steps)


def test_each_recorded_loss_is_that_steps_batch_loss(settings):
    spec = make_spec("cnn", permutation_seed=4, epochs=2)
    every_step, recorded = recorded_steps(settings, spec, 1)
    assert [s.step for s in every_step] == list(range(1, 2 * STEPS_PER_EPOCH + 1))

    # The epoch's training loss is the mean of its steps' losses, summed in float64 in step order.
    for epoch, (metrics, _) in enumerate(recorded.epochs[0], start=1):
        losses = [s.loss for s in every_step if s.epoch == epoch]
        assert sum(losses) / STEPS_PER_EPOCH == metrics.train_loss

    # Another N picks the same values at its own steps.
    every_third, _ = recorded_steps(settings, spec, 3)
    assert every_third == [s for s in every_step if s.step % 3 == 0]

    # Recomputed by hand from the state after 12 steps (epoch 2, step 2): step 13's batch loss.
    stopped = Recorded()
    trainer_for(settings, spec, live=StopAt(epoch=2, step=2)).run(stopped)
    state = reloaded(stopped.stops[0][1])
    assert state.partial is not None and (state.epoch, state.partial.step) == (1, 2)
    model = build_model(spec)
    model.load_state_dict(state.state_dict)
    data = job_data(settings, spec)
    batch = state.partial.order[2 * 64 : 3 * 64]
    with torch.no_grad():
        loss = F.nll_loss(model(data.train_x[batch]), data.train_y[batch]).item()
    assert every_step[12] == StepMetrics(step=13, epoch=2, samples=600 + 3 * 64, loss=loss)


def test_recording_changes_no_bit_of_the_training(settings):
    spec = make_spec("fc", permutation_seed=9, epochs=2)
    runs = []
    for every in (None, 1, settings.step_metrics_every):
        trainer = trainer_for(settings, spec, live=recording(every))
        result = trainer.run(Recorded())[0]
        runs.append((trainer.model.state_dict(), trainer.metrics, result))
    (weights, metrics, result), *others = runs
    for other_weights, other_metrics, other_result in others:
        assert other_metrics == metrics and other_result.correct == result.correct
        for name, tensor in weights.items():
            assert torch.equal(other_weights[name], tensor), name


def test_a_stop_settles_its_steps_before_on_stop_and_a_resume_numbers_on(settings):
    spec = make_spec("fc", epochs=2)
    straight, _ = recorded_steps(settings, spec, 2)

    class TakeOnStop(Recorded):
        def on_stop(self, index, reason, checkpoint):
            super().on_stop(index, reason, checkpoint)
            self.taken = stopping.step_losses.take()  # what the runner writes with the hand-back

    stopping = StopAt(epoch=1, step=5)
    stopping.step_losses = StepLosses(2)
    stopped = TakeOnStop()
    trainer_for(settings, spec, live=stopping).run(stopped)
    assert [s.step for s in stopped.taken] == [2, 4]

    resumed, _ = recorded_steps(settings, spec, 2, resume=reloaded(stopped.stops[0][1]))
    assert resumed[0].step == 6 and stopped.taken + resumed == straight


def test_a_loss_that_is_not_finite_is_not_recorded(settings):
    spec = make_spec("fc", seed=3, n_hidden=1024, lr=10, momentum=0.999)  # nan within epoch 1
    live = recording(1)
    recorded = Recorded()
    assert trainer_for(settings, spec, live=live).run(recorded) == {}
    assert recorded.stops[0][0] is Outcome.failed
    steps = live.step_losses.take()
    assert steps, "the first steps' losses are finite"
    assert len(steps) < STEPS_PER_EPOCH and all(math.isfinite(s.loss) for s in steps)
    assert [s.step for s in steps] == list(range(1, len(steps) + 1))


def test_packed_jobs_record_the_steps_and_confusion_they_record_alone(settings):
    specs = fc_specs(3, epochs=2)
    lives = [recording(3) for _ in specs]
    results = PackedFCTrainer(specs, load_tensors(settings, "mnist"), CPU, lives).run(Recorded())
    for j, spec in enumerate(specs):
        alone = recording(3)
        expected = trainer_for(settings, spec, live=alone).run(Recorded())[0]
        packed_steps = lives[j].step_losses.take()
        assert [s.step for s in packed_steps] == [3, 6, 9, 12, 15, 18]
        assert packed_steps == alone.step_losses.take(), f"job {j}: step, epoch, samples and loss, exactly"
        assert results[j].confusion == expected.confusion


def test_a_job_leaving_a_pack_settles_its_steps_before_on_stop(settings):
    specs = fc_specs(2)
    stopping = StopAt(epoch=1, step=7)
    stopping.step_losses = StepLosses(3)
    lives = [recording(3), stopping]

    class TakeOnStop(Recorded):
        def on_stop(self, index, reason, checkpoint):
            super().on_stop(index, reason, checkpoint)
            self.taken = lives[index].step_losses.take()

    recorded = TakeOnStop()
    PackedFCTrainer(specs, load_tensors(settings, "mnist"), CPU, lives).run(recorded)
    assert [s.step for s in recorded.taken] == [3, 6]
    assert [s.step for s in lives[0].step_losses.take()] == [3, 6, 9]


# The confusion matrix


@pytest.mark.parametrize("architecture", ["fc", "cnn"])
def test_the_confusion_matrix_counts_the_test_set_by_true_and_predicted_digit(settings, architecture):
    spec = make_spec(architecture, epochs=2)
    trainer = trainer_for(settings, spec)
    recorded = Recorded()
    result = trainer.run(recorded)[0]
    confusion = result.confusion
    assert confusion is not None and len(confusion) == 10 and all(len(row) == 10 for row in confusion)
    assert sum(map(sum, confusion)) == N_TEST == result.total
    assert sum(confusion[d][d] for d in range(10)) == result.correct
    labels = job_data(settings, spec).test_y
    assert [sum(row) for row in confusion] == torch.bincount(labels, minlength=10).tolist(), "rows: true digits"
    assert confusion != [[0] * 10 for _ in range(10)]

    # Predictions by hand: column d counts the images the final model calls d.
    data = job_data(settings, spec)
    with torch.no_grad():
        predicted = trainer.model(data.test_x).argmax(1)
    assert [sum(row[d] for row in confusion) for d in range(10)] == torch.bincount(predicted, minlength=10).tolist()
    assert evaluate(trainer.model, data.test_x, data.test_y, 64).confusion == confusion, "any batch size"


def test_the_confusion_matrix_is_the_last_epochs(settings):
    spec = make_spec("fc", epochs=2)
    trainer = trainer_for(settings, spec)
    recorded = Recorded()
    result = trainer.run(recorded)[0]
    first = build_model(spec)
    first.load_state_dict(recorded.epochs[0][0][1].state_dict)
    data = job_data(settings, spec)
    last = evaluate(trainer.model, data.test_x, data.test_y, 1000).confusion
    assert result.confusion == last != evaluate(first, data.test_x, data.test_y, 1000).confusion


# The queue


RESULT = TrainResult(
    test_accuracy=0.75,
    test_loss=0.5,
    correct=150,
    total=200,
    train_seconds=1.0,
    test_seconds=0.1,
    device="cpu",
    torch_version="test",
)


def step(n: int, loss: float = 1.0) -> StepMetrics:
    return StepMetrics(step=n, epoch=1 + (n - 1) // STEPS_PER_EPOCH, samples=64 * n, loss=loss)


def submit_and_claim(db, worker: str = "worker-a"):
    spec = job_spec_adapter.validate_python({"architecture": "fc", "seed": 1})
    with db.write() as session:
        lifecycle.enqueue(session, spec, default_max_attempts=3)
    with db.write() as session:
        return leases.claim(session, worker, 60)[0]


def stored_steps(db, job_id: str) -> list[tuple[int, float]]:
    with db.read() as session:
        rows = lifecycle.steps(session, job_id, from_step=0, limit=10_000)
    return [(row.step, row.loss) for row in rows]


def lose_lease(db, claim) -> leases.Claim:
    """Expire the claim's lease, reap it, and let another worker claim the job."""
    with db.write() as session:
        session.execute(
            update(Job).where(Job.id == claim.job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    with db.write() as session:
        assert reaper.reap(session, base_seconds=0.0, max_seconds=0.0) == [claim.job_id]
    with db.write() as session:
        session.execute(update(Job).where(Job.id == claim.job_id).values(run_after=utcnow()))
        return leases.claim(session, "worker-b", 60)[0]


@pytest.mark.databases
def test_record_steps_is_fenced_and_a_retry_replaces_the_steps_it_trains_again(db):
    stale = submit_and_claim(db)
    with db.write() as session:
        leases.record_steps(session, stale, [step(n) for n in range(1, 6)])
    assert stored_steps(db, stale.job_id) == [(n, 1.0) for n in range(1, 6)]

    fresh = lose_lease(db, stale)
    with pytest.raises(LeaseLost), db.write() as session:
        leases.record_steps(session, stale, [step(6)])
    assert stored_steps(db, stale.job_id) == [(n, 1.0) for n in range(1, 6)], "a fenced-out worker writes nothing"

    with db.write() as session:  # resumed from step 2: steps 3 on are trained again
        leases.record_steps(session, fresh, [step(3, 2.0), step(4, 2.0)])
    assert stored_steps(db, stale.job_id) == [(1, 1.0), (2, 1.0), (3, 2.0), (4, 2.0)]


@pytest.mark.databases
def test_finish_sets_test_accuracy_and_writes_the_last_steps_in_its_transaction(db):
    claim = submit_and_claim(db)
    with db.write() as session:
        leases.finish(session, claim, RESULT, None, steps=[step(5), step(10)])
    with db.read() as session:
        job = session.get(Job, claim.job_id)
        assert job is not None and job.status == JobStatus.succeeded.value and job.test_accuracy == 0.75
    assert stored_steps(db, claim.job_id) == [(5, 1.0), (10, 1.0)]

    other = submit_and_claim(db)
    fresh = lose_lease(db, other)
    with pytest.raises(LeaseLost), db.write() as session:
        leases.finish(session, other, RESULT, None, steps=[step(5)])
    assert stored_steps(db, other.job_id) == []
    with db.read() as session:
        job = session.get(Job, fresh.job_id)
        assert job is not None and job.test_accuracy is None and job.status == JobStatus.running.value


# The worker: heartbeat and runner


def settled(*steps: int, every: int = 1) -> Live:
    """A Live whose loop has settled these steps' losses (as at one of its syncs)."""
    live = recording(every)
    for n in steps:
        live.step_losses.note(n, 1, 64 * n, torch.tensor(float(n), dtype=torch.float32))
    sync_figures(torch.zeros(1, dtype=torch.float64), [live.step_losses])
    return live


@pytest.mark.databases
def test_the_heartbeat_writes_the_settled_steps_once_and_a_lost_lease_writes_none(db):
    claim = submit_and_claim(db)
    live = settled(1, 2)
    beat = Heartbeat(db, [Held(claim, live)], period=60, lease_seconds=60, worker_id="worker-a")
    beat.beat()
    assert stored_steps(db, claim.job_id) == [(1, 1.0), (2, 2.0)]
    assert live.step_losses.take() == []
    beat.beat()  # nothing new: nothing rewritten
    assert stored_steps(db, claim.job_id) == [(1, 1.0), (2, 2.0)]

    lose_lease(db, claim)
    live.step_losses.note(3, 1, 192, torch.tensor(3.0))
    sync_figures(torch.zeros(1, dtype=torch.float64), [live.step_losses])
    beat.beat()
    assert live.stop_reason is Outcome.lease_lost
    assert stored_steps(db, claim.job_id) == [(1, 1.0), (2, 2.0)]


def quiet_runner(settings, db, every: int) -> JobRunner:
    """A runner whose heartbeat never beats during a test: every step row comes from the job's last write."""
    quiet = settings.model_copy(update={"step_metrics_every": every, "heartbeat_seconds": 600, "lease_seconds": 3600})
    return JobRunner(quiet, db, "worker-a", CPU, DataCache(quiet, CPU))


def claim_spec(db, **fields) -> leases.Claim:
    spec = job_spec_adapter.validate_python({"architecture": "fc", "seed": 1, **fields})
    with db.write() as session:
        lifecycle.enqueue(session, spec, default_max_attempts=3)
        return leases.claim(session, "worker-a", 3600)[0]


@pytest.mark.databases
def test_the_runner_writes_the_steps_with_the_finish(settings, db):
    claim = claim_spec(db, epochs=2)
    assert quiet_runner(settings, db, 4).run([claim]) == {claim.job_id: Outcome.succeeded}
    assert [n for n, _ in stored_steps(db, claim.job_id)] == [4, 8, 12, 16, 20]
    with db.read() as session:
        job = session.get(Job, claim.job_id)
        assert job is not None and job.result is not None
        assert job.test_accuracy == job.result["test_accuracy"]
        assert sum(map(sum, job.result["confusion"])) == N_TEST


@pytest.mark.databases
def test_the_runner_writes_the_steps_with_a_hand_back_up_to_the_stop(settings, db):
    claim = claim_spec(db, epochs=100, batch_size=1)  # 60,000 steps: only the stop ends it
    runner = quiet_runner(settings, db, 1)

    def stop_once_training() -> None:
        while not (runner.held and runner.held[0].live.step >= 5):
            threading.Event().wait(0.001)
        runner.stop_all(Outcome.handed_back)

    stopper = threading.Thread(target=stop_once_training, daemon=True)
    stopper.start()
    assert runner.run([claim]) == {claim.job_id: Outcome.handed_back}
    stopper.join(timeout=60)

    with db.read() as session:
        job = session.get(Job, claim.job_id)
        assert job is not None and job.resume_path is not None and job.resume_sha256 is not None
        resume = checkpoints.load(LocalStore(settings.artifacts_dir), StoredFile(job.resume_path, job.resume_sha256))
    assert resume.partial is not None
    stopped_at = resume.epoch * N_TRAIN + resume.partial.step
    assert [n for n, _ in stored_steps(db, claim.job_id)] == list(range(1, stopped_at + 1))


@pytest.mark.databases
def test_the_runner_writes_the_finite_steps_with_a_divergence_failure(settings, db):
    claim = claim_spec(db, seed=3, n_hidden=1024, lr=10, momentum=0.999)
    assert quiet_runner(settings, db, 1).run([claim]) == {claim.job_id: Outcome.failed}
    steps = stored_steps(db, claim.job_id)
    assert steps and [n for n, _ in steps] == list(range(1, len(steps) + 1))
    assert len(steps) < STEPS_PER_EPOCH and all(math.isfinite(loss) for _, loss in steps)
