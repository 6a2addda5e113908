"""The fault run's checks (bench/fault_run.py): what it reads back through the API, and one row of
the result table per check, each of which can fail.

Resumes are checked exactly from each job's replayed event stream (GET /v1/jobs/{id}/events from
event 0): its `epoch` events are the epoch checkpoints recorded, a hand-back (`status` queued with
the attempt count given back) wrote a mid-epoch checkpoint where its last `step` event stops (step
losses recorded every step: MNIST_JOBS_STEP_METRICS_EVERY=1), and each claim (`status` running)
must resume from the latest of these; the job's `history` says where each attempt did.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import torch

from bench.run import REPO
from mnist_jobs_client.events import EventParser

FENCED_OUT = "lease lost before it could be marked succeeded"  # workers/writer.py, JobWriter._end
Point = tuple[int, int] | None  # (epochs done, step within the next epoch) to resume from; None: from scratch
Event = tuple[str, dict[str, Any]]
Claim = tuple[int, str]  # a claim's attempt count and worker id, as its `status` event and its history entry show


@dataclass
class Row:
    what: str
    value: str
    ok: bool | None = None  # None: a count shown, not a check


@dataclass
class Collected:
    """A finished run as the API shows it."""

    jobs: dict[str, dict[str, Any]]
    checkpoints: dict[str, bytes | None]
    events: dict[str, list[Event] | None] = field(default_factory=dict)  # None: not replayable from event 0
    train_samples: int = 0


# Reading the API


def all_jobs(url: str) -> dict[str, dict[str, Any]]:
    jobs: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 200} | ({"cursor": cursor} if cursor else {})
        page = httpx.get(f"{url}/v1/jobs", params=params, timeout=60).raise_for_status().json()
        jobs.update((job["id"], job) for job in page["items"])
        if not (cursor := page["next_cursor"]):
            return jobs


def job_events(client: httpx.Client, job_id: str, timeout: float = 60) -> list[Event] | None:
    """Every event of a finished job, replayed from the first one kept (the stream ends after its
    final status); None when the API answers with a snapshot instead (events pruned) or the stream
    does not end within `timeout`."""
    found: list[Event] = []
    deadline = time.monotonic() + timeout
    with client.stream("GET", f"/v1/jobs/{job_id}/events", params={"last_event_id": 0}) as response:
        response.raise_for_status()
        lines = itertools.takewhile(lambda _: time.monotonic() < deadline, response.iter_lines())
        for event in EventParser().events(lines):
            if event.event == "job":
                return None
            found.append((event.event, json.loads(event.data)))
    return found if time.monotonic() < deadline else None


def collect(url: str, ids: list[str], with_events: bool) -> Collected:
    jobs = all_jobs(url)
    got = Collected(jobs, {})
    with httpx.Client(base_url=url, timeout=60) as client:
        for job_id in ids:
            status = jobs.get(job_id, {}).get("status")
            if status == "succeeded":  # the final checkpoint: its last epoch's
                response = client.get(f"/v1/jobs/{job_id}/checkpoint")
                got.checkpoints[job_id] = response.content if response.status_code == 200 else None
            if with_events and status in ("succeeded", "failed", "cancelled"):
                got.events[job_id] = job_events(client, job_id)  # a job's stream ends after its final status
        mnist = next(d for d in client.get("/v1/datasets").raise_for_status().json() if d["name"] == "mnist")
    got.train_samples = mnist["train_samples"] or 0
    return got


# Checks


def outcomes(ids: list[str], jobs: dict[str, dict[str, Any]], logs: str) -> list[Row]:
    status = Counter(jobs[i]["status"] if i in jobs else "missing" for i in ids)
    found = [jobs[i] for i in ids if i in jobs]
    twice = [j for j in found if sum(h["ended"] == "succeeded" for h in j["history"]) > 1]
    gaps = [
        j
        for j in found
        if j["status"] == "succeeded" and [m["epoch"] for m in j["metrics"]] != list(range(1, j["spec"]["epochs"] + 1))
    ]
    source = (REPO / "workers" / "writer.py").read_text()
    logged = "lease lost before it could be marked %s" in source  # the format string the count relies on
    lost = len(ids) - status["succeeded"]
    return [
        Row("jobs lost (not ended `succeeded`)", f"{lost} of {len(ids)} {dict(status)}", lost == 0),
        Row("results published twice (>1 attempt ended `succeeded`)", str(len(twice)), not twice),
        Row(
            "jobs trained to the end by a fenced-out worker (log line)",
            str(logs.count(FENCED_OUT)) if logged else "log line gone from workers/writer.py: not counted",
            logged and FENCED_OUT not in logs,
        ),
        Row("succeeded jobs without every epoch's metrics exactly once", str(len(gaps)), not gaps),
    ]


def resume_points(events: list[Event], steps_per_epoch: int) -> list[tuple[Claim, Point, bool]]:
    """Each claim of the job, in the order of its events, where it must resume from (the latest
    checkpoint saved before it), and whether it trained (wrote a step or an epoch) before it ended."""
    point: Point = None
    claims: list[tuple[Claim, Point, bool]] = []
    running: int | None = None  # the attempt count of the claim now running
    last_step: tuple[int, int] | None = None  # (epoch, global step) of this claim's last step event
    for kind, data in events:
        if kind in ("epoch", "step") and claims:
            claims[-1] = (*claims[-1][:2], True)
        if kind == "epoch":
            point = (data["epoch"], 0)
        elif kind == "step" and data["steps"]:
            last_step = (data["steps"][-1]["epoch"], data["steps"][-1]["step"])
        elif kind == "status" and data["status"] == "running" and not data["cancel_requested"]:
            claims.append(((data["attempt"], data["worker_id"]), point, False))
            running, last_step = data["attempt"], None
        elif kind == "status" and data["status"] != "running":
            if data["status"] == "queued" and running is not None and data["attempt"] == running - 1:  # handed back
                stopped = (0, 0) if point is None else point
                if last_step is not None:
                    epoch, step = last_step
                    stopped = max(stopped, (epoch - 1, step - (epoch - 1) * steps_per_epoch))
                point = stopped
            running = None
    return claims


def story(events: list[Event], history: list[dict[str, Any]]) -> str:
    """A job's events in short (status and attempt, epochs, last step of each step batch) and its history."""
    told = []
    for kind, data in events:
        if kind == "status":
            told.append(f"{data['status']}#{data['attempt']}@{(data['worker_id'] or '-')[:4]}")
        elif kind == "epoch":
            told.append(f"e{data['epoch']}")
        elif kind == "step" and data["steps"]:
            told.append(f"s{data['steps'][-1]['step']}")
    tried = [
        (h["attempt"], h["worker_id"][:4], h["started_at"], h["ended"], h["resumed_from_epoch"], h["resumed_from_step"])
        for h in history
    ]
    return f"events {' '.join(told)}; history {tried}"


def resumes(ids: list[str], got: Collected) -> list[Row]:
    """Each claim after a job's first (found in its history by attempt count and worker) resumed
    exactly where resume_points says; and the history lists the claims in the order they happened."""
    checked, wrong, unordered, resumed, mid_epoch, retried, unstarted = 0, [], [], 0, 0, 0, 0
    for job_id in (i for i in ids if i in got.jobs):
        history = got.jobs[job_id]["history"]
        actual = [
            None if h["resumed_from_epoch"] is None else (h["resumed_from_epoch"], h["resumed_from_step"] or 0)
            for h in history
        ]
        resumed += sum(a is not None for a in actual)
        mid_epoch += sum(a is not None and a[1] > 0 for a in actual)
        if len(history) < 2:
            continue
        retried += 1
        events = got.events.get(job_id)
        if events is None:
            why = "its events could not be replayed" if job_id in got.events else "not ended, its events not read"
            wrong.append(f"{job_id}: {why}")
            continue
        spe = math.ceil(got.train_samples / got.jobs[job_id]["spec"]["batch_size"])
        unused, order = list(range(len(history))), []
        for n, ((attempt, worker), want, trained) in enumerate(resume_points(events, spe)):
            found = [i for i in unused if (history[i]["attempt"], history[i]["worker_id"]) == (attempt, worker)]
            if not found:
                wrong.append(
                    f"{job_id}: claim #{n + 1} (attempt {attempt}) not in its history; {story(events, history)}"
                )
                continue
            unused.remove(found[0])
            order.append(found[0])
            lost_early = actual[found[0]] is None and not trained and history[found[0]]["ended"] != "succeeded"
            if n > 0 and want is not None and lost_early:
                unstarted += 1  # killed or paused between its claim and its resume: it trained nothing
                continue
            checked += n > 0
            if n > 0 and actual[found[0]] != want:
                have = actual[found[0]]
                wrong.append(f"{job_id} claim #{n + 1}: expected {want}, resumed from {have}; {story(events, history)}")
        if unused:
            wrong.append(f"{job_id}: {len(unused)} history entries match no claim; {story(events, history)}")
        if order != sorted(order):
            unordered.append(f"{job_id}: history order {order} of the claims; {story(events, history)}")
    for line in (wrong + unordered)[:10]:
        print(f"  {line}")
    return [
        Row(
            "retried jobs resumed from their last checkpoint (epoch, step)",
            f"{len(wrong)} wrong of {checked} later claims ({retried} jobs retried; "
            f"{unstarted} more ended before they resumed, having trained nothing)",
            not wrong,
        ),
        Row("job histories listing the claims in the order they happened", f"{len(unordered)} not", not unordered),
        Row("resumes (from a mid-epoch checkpoint)", f"{resumed} ({mid_epoch})"),
    ]


def leaves(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in leaves(item, f"{path}/{key}").items()}
    if isinstance(value, list | tuple):
        return {k: v for i, item in enumerate(value) for k, v in leaves(item, f"{path}/{i}").items()}
    return {path: value}


def same_checkpoints(ids: list[str], fault: Collected, clean_ids: list[str], clean: Collected) -> list[Row]:
    """Each job's final checkpoint (weights, optimizer state, generator state, metrics) against the
    clean run's: every tensor torch.equal, every other field ==."""
    equal, differing, missing, max_diff = 0, 0, 0, 0.0
    for job_id, clean_id in zip(ids, clean_ids, strict=True):
        a, b = fault.checkpoints.get(job_id), clean.checkpoints.get(clean_id)
        if a is None or b is None:
            missing += 1
            continue
        x = leaves(torch.load(io.BytesIO(a), weights_only=True))
        y = leaves(torch.load(io.BytesIO(b), weights_only=True))
        same = x.keys() == y.keys()
        for key in x.keys() & y.keys():
            u, v = x[key], y[key]
            if isinstance(u, torch.Tensor) and isinstance(v, torch.Tensor):
                if not torch.equal(u, v):
                    same = False
                    if u.is_floating_point() and u.shape == v.shape:
                        max_diff = max(max_diff, (u.double() - v.double()).abs().max().item())
            elif u != v:
                same = False
        equal += same
        differing += not same
    return [
        Row(
            "final checkpoints equal to a clean run's (every tensor torch.equal)",
            f"{equal} equal / {differing} differing / {missing} missing (not succeeded); max abs diff {max_diff:g}",
            differing == 0 and missing == 0,
        )
    ]


def table(rows: list[Row]) -> str:
    lines = ["| check | result | pass |", "|---|---|---|"]
    for row in rows:
        verdict = "" if row.ok is None else ("yes" if row.ok else "**NO**")
        lines.append(f"| {row.what} | {row.value} | {verdict} |")
    return "\n".join(lines)
