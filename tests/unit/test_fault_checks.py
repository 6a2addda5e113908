"""bench/fault_checks.py: every check of the fault run can fail, and the resume points it expects
follow from a job's events (epochs recorded, hand-backs and their last step, claims)."""

from __future__ import annotations

import io
from typing import Any

import torch

from bench import fault_checks as checks

SPE = 38  # steps per epoch: 600 fixture samples, batch 16


def status(state: str, attempt: int, worker: str | None = None) -> checks.Event:
    return ("status", {"status": state, "attempt": attempt, "worker_id": worker, "cancel_requested": False})


def epoch(n: int) -> checks.Event:
    return ("epoch", {"epoch": n})


def steps(epoch: int, first: int, last: int) -> checks.Event:
    return ("step", {"steps": [{"epoch": epoch, "step": s} for s in range(first, last + 1)]})


def test_a_reaped_attempt_resumes_from_its_last_epoch_and_a_handed_back_one_from_its_last_step():
    events = [
        status("queued", 0),
        status("running", 1, "a"),
        steps(1, 1, SPE),
        epoch(1),
        steps(2, SPE + 1, SPE + 5),  # trained on, then lost (SIGKILL): the epoch checkpoint counts
        status("queued", 1),  # reaped: the attempt is spent
        status("running", 2, "b"),
        steps(2, SPE + 1, SPE + 7),
        status("queued", 1),  # handed back (SIGTERM): the attempt given back, stopped before step 7 of epoch 2
        status("running", 2, "c"),
        status("queued", 1),  # handed back again before any step: the same point
        status("running", 2, "d"),
        status("succeeded", 2, "d"),
    ]
    claims = [((1, "a"), None, True), ((2, "b"), (1, 0), True), ((2, "c"), (1, 7), False), ((2, "d"), (1, 7), False)]
    assert checks.resume_points(events, SPE) == claims


def test_a_hand_back_before_the_first_epoch_resumes_from_its_mid_epoch_checkpoint():
    events = [status("queued", 0), status("running", 1, "a"), status("queued", 0), status("running", 1, "b")]
    assert checks.resume_points(events, SPE) == [((1, "a"), None, False), ((1, "b"), (0, 0), False)]


def job(history: list[dict[str, Any]], status: str = "succeeded", epochs: int = 2) -> dict[str, Any]:
    return {
        "status": status,
        "history": history,
        "spec": {"epochs": epochs, "batch_size": 16},
        "metrics": [{"epoch": e} for e in range(1, epochs + 1)],
    }


def attempt(ended: str, resumed: tuple[int, int] | None = None, n: int = 1, worker: str = "a") -> dict[str, Any]:
    epoch, step = resumed or (None, None)
    return {
        "ended": ended,
        "resumed_from_epoch": epoch,
        "resumed_from_step": step,
        "attempt": n,
        "worker_id": worker,
        "started_at": "2026-11-29T15:00:00Z",
    }


def verdicts(rows: list[checks.Row]) -> dict[str, bool | None]:
    return {row.what: row.ok for row in rows}


def test_outcome_checks_fail_on_a_lost_job_a_result_published_twice_and_a_fenced_out_finish():
    jobs = {"a": job([attempt("succeeded")]), "b": job([attempt("succeeded")])}
    assert all(verdicts(checks.outcomes(["a", "b"], jobs, "")).values())
    jobs = {"a": job([attempt("lease expired")], status="failed"), "b": job([attempt("succeeded")] * 2)}
    failed = verdicts(checks.outcomes(["a", "b"], jobs, f"WARNING job b: {checks.FENCED_OUT}\n"))
    assert [ok for what, ok in failed.items() if "metrics" not in what] == [False, False, False]


EVENTS = [status("running", 1, "a"), epoch(1), status("queued", 1), status("running", 2, "b"), status("succeeded", 2)]


def test_the_resume_check_fails_when_an_attempt_resumed_elsewhere():
    for resumed, ok in [((1, 0), True), ((0, 0), False), (None, False)]:
        history = [attempt("lease expired"), attempt("succeeded", resumed, n=2, worker="b")]
        got = checks.Collected({"j": job(history)}, {}, {"j": EVENTS}, 600)
        resumed_row, order_row = checks.resumes(["j"], got)[:2]
        assert (resumed_row.ok, order_row.ok) == (ok, True)


def test_a_claim_lost_before_it_resumed_is_no_wrong_resume_but_one_that_trained_is():
    events = [*EVENTS[:3], status("running", 2, "b"), status("queued", 2), status("running", 3, "c")]
    history = [attempt("lease expired"), attempt("lease expired", None, n=2, worker="b")]
    history.append(attempt("succeeded", (1, 0), n=3, worker="c"))
    got = checks.Collected({"j": job(history)}, {}, {"j": [*events, status("succeeded", 3)]}, 600)
    assert checks.resumes(["j"], got)[0].ok, "b was killed before it resumed: it trained nothing"
    trained = [*events[:4], steps(1, 1, 3), *events[4:], status("succeeded", 3)]
    got = checks.Collected({"j": job(history)}, {}, {"j": trained}, 600)
    assert not checks.resumes(["j"], got)[0].ok, "b trained from scratch"


def test_a_history_out_of_claim_order_is_told_apart_from_a_wrong_resume():
    history = [attempt("succeeded", (1, 0), n=2, worker="b"), attempt("lease expired")]  # sorted by a stale clock
    got = checks.Collected({"j": job(history)}, {}, {"j": EVENTS}, 600)
    resumed_row, order_row = checks.resumes(["j"], got)[:2]
    assert (resumed_row.ok, order_row.ok) == (True, False)


def saved(weight: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": weight}, "metrics": [{"train_loss": 0.5}]}, buffer)
    return buffer.getvalue()


def test_the_weights_check_fails_on_any_difference_and_says_how_large():
    fault = checks.Collected({}, {"a": saved(torch.ones(3)), "b": saved(torch.ones(3))})
    same = checks.Collected({}, {"x": saved(torch.ones(3)), "y": saved(torch.ones(3))})
    assert checks.same_checkpoints(["a", "b"], fault, ["x", "y"], same)[0].ok
    other = checks.Collected({}, {"x": saved(torch.ones(3)), "y": saved(torch.tensor([1.0, 1.0, 1.25]))})
    row = checks.same_checkpoints(["a", "b"], fault, ["x", "y"], other)[0]
    assert not row.ok and "1 equal / 1 differing" in row.value and "max abs diff 0.25" in row.value
    missing = checks.Collected({}, {"x": saved(torch.ones(3)), "y": None})
    assert not checks.same_checkpoints(["a", "b"], fault, ["x", "y"], missing)[0].ok
