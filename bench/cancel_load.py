"""Cancel under load: how long a running pack's cancel takes to reach its worker while the API
serves many event streams and a submission flood.

Each round starts a fresh service (bench.fault_service.Service: `mnist-jobs serve --workers 0` and
one `mnist-jobs worker`) on a SQLite file and the real MNIST, under --root. It submits --pack FC jobs
of one shape before the worker starts (so they are claimed as one pack), waits until they run, and
then, in the `load` scenario, opens --streams event streams (one in five a job's own stream, the
rest GET /v1/events; all read continuously) and starts a submission flood (CNN jobs, which only
queue behind the pack) before it cancels every job of the pack at once. The `quiet` scenario
cancels with neither. Per job, in seconds from the moment its POST /v1/jobs/{id}/cancel was sent:

  answer  the API's 202;
  stored  the API's write of the request committed (the job's `status` event, cancel_requested);
  seen    the worker's heartbeat read it: that job's first `progress` event after the request's
          (ids follow commit order on SQLite). The heartbeat reads cancels just before its write
          of the progress, so this is when it saw the cancel, or a little after (its wait for the
          write lock); the job's end, when that came first;
  ended   the worker wrote the job's end (its `cancelled` status event);
  stream  the bench's own GET /v1/events stream delivered that `cancelled` status.

`healthz` is the answer time of a GET /healthz sent with the cancels: how far behind the API's
event loop is. The moments after `answer` come from the database the round leaves behind.
`--at evaluation` cancels once the observer sees an epoch's last step (the pack then evaluates
and records its epoch); `--hogs N` runs N spinning processes beside the service, as other work on
a shared machine would. Everything is bounded (--deadline per phase, the flood by count and time,
the hogs by time); every process a round started is stopped when it ends.

    python -m bench.cancel_load --root /tmp/cancel-bench [--rounds 2] [--hogs 2] [--at evaluation]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from bench.fault_service import LIMITS_OFF, Service, prepare_data, service_env
from service.jobs.schemas import JobPage, JobRead
from service.platform.db import Database
from service.platform.events import EventKind
from service.platform.models import Event

PACK_LABEL = "bench"
FLOOD_SPEC = {"architecture": "cnn", "epochs": 1}
COLUMNS = ("answer", "stored", "seen", "ended", "stream")
STREAM_SETTLE_SECONDS = 10.0


@dataclass
class Cancel:
    """One job's cancel: wall-clock moments (time.time()); None where it never came."""

    job_id: str
    sent: float
    answer: float
    stored: float | None = None
    seen: float | None = None
    ended: float | None = None
    stream: float | None = None


@dataclass
class Load:
    """What the streams and the flood did while the cancels ran."""

    streams_open: int = 0
    streams_dropped: int = 0
    stream_bytes: int = 0
    stream_errors: int = 0
    flood_posts: int = 0
    flood_errors: int = 0
    flood_seconds: float = 0.0


@dataclass
class Round:
    scenario: str
    cancels: list[Cancel] = field(default_factory=list)
    healthz: float = 0.0  # s
    load: Load = field(default_factory=Load)
    loadavg: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def after_sent(self, column: str) -> list[float]:
        moments = [(getattr(c, column), c.sent) for c in self.cancels]
        return [moment - sent for moment, sent in moments if moment is not None]


def pack_specs(count: int, epochs: int, tag: str) -> list[dict[str, Any]]:
    """FC jobs of one shape (only their seeds differ), labelled to be found again."""
    return [{"architecture": "fc", "epochs": epochs, "seed": i + 1, "labels": {PACK_LABEL: tag}} for i in range(count)]


async def pack_status(client: httpx.AsyncClient, tag: str) -> list[JobRead]:
    response = await client.get("/v1/jobs", params={"label": f"{PACK_LABEL}:{tag}", "limit": 200})
    response.raise_for_status()
    return JobPage.model_validate_json(response.content).items


async def wait_until(client: httpx.AsyncClient, tag: str, status: str, count: int, deadline: float) -> bool:
    """Until `count` jobs of the pack have `status` ("running": and a progress, so training has begun,
    past the worker's load of the data set)."""
    while time.monotonic() < deadline:
        try:
            jobs = await pack_status(client, tag)
            if sum(job.status == status and (status != "running" or job.progress is not None) for job in jobs) >= count:
                return True
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.2)
    return False


async def read_stream(client: httpx.AsyncClient, path: str, load: Load, opened: asyncio.Event) -> None:
    """Read a stream until cancelled, discarding what it sends (the cost is the server's)."""
    try:
        async with client.stream("GET", path) as response:
            load.streams_open += 1
            opened.set()
            last = b""
            async for chunk in response.aiter_raw():
                load.stream_bytes += len(chunk)
                last = chunk
            load.streams_dropped += b": dropped" in last  # the server ended it: too far behind
    except httpx.HTTPError:
        load.stream_errors += 1
        opened.set()


@dataclass
class Observer:
    """The bench's own GET /v1/events: when it was subscribed, when a job's progress showed the last
    step of an epoch (the pack then evaluates), and when each job's `cancelled` status arrived."""

    ready: asyncio.Event = field(default_factory=asyncio.Event)
    evaluating: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: dict[str, float] = field(default_factory=dict)

    async def run(self, client: httpx.AsyncClient) -> None:
        async with client.stream("GET", "/v1/events") as response:
            kind = ""
            async for line in response.aiter_lines():
                self.ready.set()  # its first line (": live events after id N") comes once it is subscribed
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind in ("status", "progress"):
                    data = json.loads(line[6:])
                    if kind == "progress" and data["step"] == data["steps"]:
                        self.evaluating.set()
                    elif kind == "status" and data["status"] == "cancelled":
                        self.cancelled.setdefault(data["job_id"], time.time())


async def flood(client: httpx.AsyncClient, load: Load, stop: asyncio.Event, max_posts: int, workers: int) -> None:
    started = time.monotonic()

    async def one() -> None:
        while not stop.is_set() and load.flood_posts + load.flood_errors < max_posts:
            try:
                response = await client.post("/v1/jobs", json=FLOOD_SPEC)
                if response.status_code == 201:
                    load.flood_posts += 1
                else:
                    load.flood_errors += 1
            except httpx.HTTPError:
                load.flood_errors += 1

    await asyncio.gather(*(one() for _ in range(workers)))
    load.flood_seconds = time.monotonic() - started


async def cancel_one(client: httpx.AsyncClient, job_id: str) -> Cancel:
    sent = time.time()
    response = await client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code in (200, 202), response.text
    return Cancel(job_id, sent, time.time())


async def healthz(client: httpx.AsyncClient) -> float:
    started = time.monotonic()
    (await client.get("/healthz")).raise_for_status()
    return time.monotonic() - started


async def open_load(
    client: httpx.AsyncClient, ids: list[str], args: argparse.Namespace, load: Load, tasks: list[asyncio.Task[None]]
) -> None:
    """Open the streams (they read until cancelled); returns once each has its answer's head."""
    opened = []
    for i in range(args.streams):
        path = f"/v1/jobs/{ids[i % len(ids)]}/events" if i % 5 == 0 else "/v1/events"
        opened.append(event := asyncio.Event())
        tasks.append(asyncio.create_task(read_stream(client, path, load, event)))
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in opened)), args.deadline)


async def measure(url: str, scenario: str, tag: str, args: argparse.Namespace, result: Round) -> None:
    timeout = httpx.Timeout(args.deadline, connect=args.deadline)
    many = httpx.Limits(max_connections=args.streams + args.flood_workers + 50, max_keepalive_connections=None)
    async with (
        httpx.AsyncClient(base_url=url, timeout=timeout) as control,
        httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(None, connect=args.deadline), limits=many) as load,
    ):
        ids = [job.id for job in await pack_status(control, tag)]
        observer = Observer()
        tasks = [asyncio.create_task(observer.run(load))]
        stop_flood = asyncio.Event()
        flooding = None
        if scenario == "load":
            await open_load(load, ids, args, result.load, tasks)
            flooding = asyncio.create_task(flood(load, result.load, stop_flood, args.flood_max, args.flood_workers))
            await asyncio.sleep(args.warmup)
        await asyncio.wait_for(observer.ready.wait(), args.deadline)
        if args.at == "evaluation":
            observer.evaluating.clear()
            await asyncio.wait_for(observer.evaluating.wait(), args.deadline)
        probe = asyncio.create_task(healthz(control))
        result.cancels = list(await asyncio.gather(*(cancel_one(control, job_id) for job_id in ids)))
        result.healthz = await probe
        await wait_until(control, tag, "cancelled", len(ids), time.monotonic() + args.deadline)
        result.loadavg = os.getloadavg()
        settle = time.monotonic() + STREAM_SETTLE_SECONDS  # the observer's stream may lag the database
        while len(observer.cancelled) < len(ids) and time.monotonic() < settle:
            await asyncio.sleep(0.1)
        stop_flood.set()
        if flooding is not None:  # its POSTs in flight end first
            await asyncio.wait_for(flooding, args.deadline)
        for cancel in result.cancels:
            cancel.stream = observer.cancelled.get(cancel.job_id)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def read_moments(database_url: str, cancels: list[Cancel]) -> None:
    """stored, seen and ended of each cancel, from the events table of the round's database."""
    db = Database(database_url)
    try:
        with db.read() as session:
            rows = session.execute(
                select(Event.id, Event.job_id, Event.kind, Event.data, Event.created_at)
                .where(Event.job_id.in_([c.job_id for c in cancels]))
                .order_by(Event.id)
            ).all()
    finally:
        db.dispose()
    by_job = {c.job_id: c for c in cancels}
    for row in rows:
        cancel, at = by_job[row.job_id], row.created_at.timestamp()
        if row.kind == EventKind.status and row.data["status"] == "running" and row.data["cancel_requested"]:
            cancel.stored = cancel.stored or at
        elif row.kind == EventKind.progress and cancel.stored is not None:
            cancel.seen = cancel.seen or at
        elif row.kind == EventKind.status and row.data["status"] == "cancelled":
            cancel.ended = at
            cancel.seen = cancel.seen or at  # ended before a heartbeat wrote its progress


def start_hogs(count: int, seconds: float) -> list[subprocess.Popen[bytes]]:
    """`count` processes that spin for at most `seconds`: a machine shared with other work."""
    spin = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
    return [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(count)]


def one_round(root: Path, number: int, scenario: str, args: argparse.Namespace) -> Round:
    folder = root / f"round-{number}-{scenario}"
    data = folder / "data"
    folder.mkdir(parents=True)
    settings: dict[str, object] = {"torch_threads": 1, **LIMITS_OFF}
    env = service_env(data, prepare_data(data, "real"), settings)
    database_url = f"sqlite:///{folder}/jobs.db"
    service = Service(folder / "service", database_url, env, port=args.port)
    result = Round(scenario)
    tag = f"{scenario}-{number}"
    hogs = start_hogs(args.hogs, 4 * args.deadline)
    try:
        service.start(workers=0)
        service.submit(pack_specs(args.pack, args.epochs, tag), tag)
        service.slots = [service.start_worker()]

        async def run() -> None:
            async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
                if not await wait_until(client, tag, "running", args.pack, time.monotonic() + args.deadline):
                    raise SystemExit(f"the pack of {args.pack} did not start within {args.deadline:.0f} s")
            await asyncio.sleep(args.running)  # well into its first epoch
            await measure(service.url, scenario, tag, args, result)

        asyncio.run(run())
    finally:
        service.close()
        for hog in hogs:
            hog.kill()
            hog.wait()
    read_moments(database_url, result.cancels)
    (folder / "cancels.json").write_text(json.dumps([asdict(c) for c in result.cancels], indent=1))
    return result


def summary(values: list[float], jobs: int) -> str:
    """Median and max (and how many jobs, when not all)."""
    if not values:
        return "-"
    short = "" if len(values) == jobs else f" ({len(values)})"
    return f"{statistics.median(values):5.2f} {max(values):5.2f}{short}"


def report(rounds: list[Round]) -> None:
    print("s from each cancel's POST, median and max over the pack's jobs")
    print(f"{'scenario':8} " + " ".join(f"{name:>11}" for name in COLUMNS) + f" {'healthz':>7}  load")
    for r in rounds:
        load = r.load
        rate = load.flood_posts / load.flood_seconds if load.flood_seconds else 0.0
        extra = (
            f"streams {load.streams_open} ({load.streams_dropped} dropped, {load.stream_errors} errors, "
            f"{load.stream_bytes / 1e6:.0f} MB), "
            f"flood {load.flood_posts} POSTs {rate:.0f}/s ({load.flood_errors} errors)"
            if r.scenario == "load"
            else "no streams, no flood"
        )
        cells = " ".join(f"{summary(r.after_sent(name), len(r.cancels)):>11}" for name in COLUMNS)
        print(f"{r.scenario:8} {cells} {r.healthz:7.2f}  {extra}; loadavg {r.loadavg[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="an empty folder: state, logs, artifacts")
    parser.add_argument("--scenario", choices=["quiet", "load", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pack", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--streams", type=int, default=250)
    parser.add_argument("--flood-workers", type=int, default=8)
    parser.add_argument("--flood-max", type=int, default=20_000)
    parser.add_argument("--warmup", type=float, default=5.0, help="s of streams and flood before the cancels")
    parser.add_argument("--running", type=float, default=3.0, help="s the pack trains before the load starts")
    parser.add_argument(
        "--at", choices=["any", "evaluation"], default="any", help="cancel at once, or once an epoch's last step shows"
    )
    parser.add_argument("--deadline", type=float, default=90.0, help="s each phase may take")
    parser.add_argument("--hogs", type=int, default=0, help="processes spinning beside the service (other work)")
    parser.add_argument("--port", type=int, default=8791)
    args = parser.parse_args()
    if args.root.exists() and any(args.root.iterdir()):
        raise SystemExit(f"{args.root} is not empty")
    scenarios = ["quiet", "load"] if args.scenario == "both" else [args.scenario]
    report([one_round(args.root, n, s, args) for n in range(1, args.rounds + 1) for s in scenarios])


if __name__ == "__main__":
    main()
