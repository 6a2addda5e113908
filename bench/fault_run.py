"""Fault run: 50 short jobs, 3 workers, one of them SIGKILLed or SIGTERMed every few seconds and
restarted, the API restarted once. Reports jobs succeeded / lost / run to completion twice,
resumes, and the total time. Loopback only, bounded in time, everything in a temp dir.

    .venv/bin/python -m bench.fault_run                 # small fixture data (tests/idx.py)
    .venv/bin/python -m bench.fault_run --data real     # ../shared/data/MNIST/raw (slower jobs)

"Run to completion twice" is counted two ways: a job whose history has more than one attempt that
ended "succeeded" (published twice), and a worker that trained a job to its end but was fenced out
when it tried to publish ("lease lost before it could be marked succeeded" in its log: the compute
ran twice, the result was published once). "Lost" is every job that did not end `succeeded`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.run import REPO, SHARED, wait_for_api

REAL_DATA = SHARED / "MNIST" / "raw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_data(root: Path, which: str) -> dict[str, dict[str, str]]:
    raw = root / "MNIST" / "raw"
    if which == "real":
        raw.mkdir(parents=True)
        for path in REAL_DATA.glob("*.gz"):
            shutil.copy(path, raw / path.name)
        return {}  # the built-in pins of the real files apply
    from bench.synthetic import write_mnist

    return {"mnist": write_mnist(raw)}


def job_specs(count: int, which: str, rng: random.Random) -> list[dict[str, Any]]:
    """A mix of CNN jobs (trained alone) and FC jobs (which workers pack), each a few seconds."""
    specs = []
    for i in range(count):
        if which == "real":
            spec = {"architecture": "cnn" if i % 3 else "fc", "epochs": 2, "batch_size": 256}
        elif i % 3:
            spec = {"architecture": "cnn", "epochs": rng.randint(15, 30), "batch_size": 16}
        else:
            spec = {"architecture": "fc", "epochs": rng.randint(20, 40), "batch_size": 8}
        specs.append({**spec, "seed": 1000 + i, "permutation_seed": (i % 2) or None})
    return specs


class Run:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        checksums = prepare_data(work / "data", args.data)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MNIST_JOBS_")}
        self.env.update(
            {
                "MNIST_JOBS_DATABASE_URL": f"sqlite:///{work / 'jobs.db'}",
                "MNIST_JOBS_DATA_DIR": str(work / "data"),
                "MNIST_JOBS_ARTIFACTS_DIR": str(work / "artifacts"),
                "MNIST_JOBS_DATA_CHECKSUMS": json.dumps(checksums),
                "MNIST_JOBS_DEVICE": "cpu",
                "MNIST_JOBS_LEASE_SECONDS": str(args.lease_seconds),
                "MNIST_JOBS_HEARTBEAT_SECONDS": "0.5",
                "MNIST_JOBS_REAP_SECONDS": "1",
                "MNIST_JOBS_RETRY_BASE_SECONDS": "0.5",
                "MNIST_JOBS_RETRY_MAX_SECONDS": "5",
                "MNIST_JOBS_POLL_SECONDS": "0.1",
                "MNIST_JOBS_SHUTDOWN_GRACE_SECONDS": "5",
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api: subprocess.Popen[bytes] | None = None
        self.slots: list[subprocess.Popen[bytes]] = []  # the 3 current worker processes
        self.all_workers: list[subprocess.Popen[bytes]] = []
        self.started_logs = 0
        self.api_errors: list[str] = []
        self.events: Counter[str] = Counter()

    # processes

    def start_api(self) -> None:
        with open(self.work / f"api-{self.events['api_starts']}.log", "wb") as log:  # the child keeps its copy
            self.events["api_starts"] += 1
            self.api = subprocess.Popen(
                [sys.executable, "-m", "cli", "serve", "--port", str(self.port), "--workers", "0"],
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_api(self.url)

    def start_worker(self) -> subprocess.Popen[bytes]:
        with open(self.work / f"worker-{len(self.all_workers)}.log", "wb") as log:  # the child keeps its copy
            proc = subprocess.Popen(
                [sys.executable, "-m", "cli", "worker"], env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
            )
        self.all_workers.append(proc)
        return proc

    def busy_pids(self) -> set[int]:
        try:
            workers = httpx.get(f"{self.url}/v1/workers", timeout=5).json()
        except (httpx.TransportError, ValueError) as exc:
            self.api_errors.append(f"workers: {exc!r}")
            return set()
        return {w["pid"] for w in workers if w["current_job_id"]}

    def strike(self, rng: random.Random) -> None:
        """Kill or stop one worker (preferably one holding a job) and start a replacement."""
        busy = [i for i, p in enumerate(self.slots) if p.pid in self.busy_pids()]
        i = rng.choice(busy or range(len(self.slots)))
        how = signal.SIGKILL if self.events["strikes"] % 2 == 0 else signal.SIGTERM
        self.events["strikes"] += 1
        self.events[f"{how.name}{' (busy)' if busy else ' (idle)'}"] += 1
        self.slots[i].send_signal(how)
        self.slots[i] = self.start_worker()

    # client

    def get_jobs(self) -> list[dict[str, Any]] | None:
        try:
            response = httpx.get(f"{self.url}/v1/jobs", params={"limit": 200}, timeout=10)
        except httpx.TransportError as exc:
            self.api_errors.append(f"list: {exc!r}")
            return None
        if response.status_code != 200:
            self.api_errors.append(f"list: {response.status_code} {response.text[:200]}")
            return None
        return response.json()["items"]

    def submit(self, specs: list[dict[str, Any]]) -> tuple[list[str], Counter[int]]:
        ids: list[str] = []
        codes: Counter[int] = Counter()
        for i, spec in enumerate(specs):
            response = httpx.post(
                f"{self.url}/v1/jobs", json=spec, headers={"Idempotency-Key": f"fault-run-{i}"}, timeout=10
            )
            codes[response.status_code] += 1
            ids.append(response.json()["id"])
        return ids, codes

    def main(self) -> int:
        args = self.args
        rng = random.Random(args.seed)
        began = time.monotonic()
        self.start_api()
        self.slots = [self.start_worker() for _ in range(args.workers)]
        specs = job_specs(args.jobs, args.data, rng)
        ids, codes = self.submit(specs)
        print(f"submitted {len(ids)} jobs {dict(codes)}; workers starting", flush=True)

        next_strike = time.monotonic() + args.strike_every
        api_restart_at = time.monotonic() + args.api_restart_after
        deadline = began + args.timeout
        jobs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            now = time.monotonic()
            if api_restart_at and now >= api_restart_at:
                api_restart_at = 0
                assert self.api is not None
                self.api.send_signal(signal.SIGTERM)
                code = self.api.wait(timeout=30)
                self.start_api()
                again, recodes = self.submit(specs)  # a client retrying all its POSTs after the outage
                self.events["api restart exit code"] = code
                print(
                    f"API restarted (old exit {code}); resubmitted with the same keys: {dict(recodes)}, "
                    f"same ids: {again == ids}",
                    flush=True,
                )
                if again != ids:
                    self.api_errors.append("idempotent resubmit returned other ids")
            if now >= next_strike:
                self.strike(rng)
                next_strike = now + args.strike_every * rng.uniform(0.6, 1.4)
            listed = self.get_jobs()
            if listed is not None:
                jobs = listed
                states = Counter(j["status"] for j in jobs)
                if states["queued"] + states["running"] == 0 and len(jobs) == len(ids):
                    break
            time.sleep(0.5)
        total = time.monotonic() - began

        for proc in self.slots:
            proc.send_signal(signal.SIGTERM)
        for proc in self.all_workers:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        assert self.api is not None
        self.api.send_signal(signal.SIGTERM)
        self.api.wait(timeout=30)
        return self.report(jobs, ids, total)

    def verify_resumed(self, jobs: list[dict[str, Any]]) -> list[str]:
        """Retrain up to --verify resumed jobs in one go here: their metrics must match exactly
        (a job's numbers depend on its spec alone: resumed or not, packed or not)."""
        resumed = [
            j
            for j in jobs
            if j["status"] == "succeeded" and any(h.get("resumed_from_epoch") is not None for h in j["history"])
        ][: self.args.verify]
        if not resumed:
            return []
        import torch

        from service.config import Settings
        from service.schemas import EpochRecord, job_spec_adapter
        from service.states import Outcome
        from service.training.checkpoints import TrainingState
        from service.training.engine import Trainer, configure_torch
        from service.training.tensors import load_tensors, permutation

        class Keep:
            def __init__(self) -> None:
                self.metrics: list[EpochRecord] = []

            def on_epoch(self, index: int, metrics: EpochRecord, checkpoint: TrainingState) -> None:
                self.metrics.append(metrics)

            def on_stop(self, index: int, reason: Outcome, checkpoint: TrainingState) -> None:
                pass

        configure_torch(1)
        settings = Settings(
            data_dir=self.work / "data", data_checksums=json.loads(self.env["MNIST_JOBS_DATA_CHECKSUMS"])
        )
        base = load_tensors(settings, "mnist")
        mismatched = []
        for job in resumed:
            spec = job_spec_adapter.validate_python(job["spec"])
            perm = permutation(spec.permutation_seed)
            kept = Keep()
            Trainer(spec, base if perm is None else base.permuted(perm), torch.device("cpu")).run(kept)
            if [m.model_dump(exclude={"correct"}) for m in kept.metrics] != job["metrics"]:
                mismatched.append(job["id"])
        print(f"resumed jobs retrained in one go: {len(resumed)}, metrics identical: {len(resumed) - len(mismatched)}")
        return mismatched

    def report(self, jobs: list[dict[str, Any]], ids: list[str], total: float) -> int:
        by_id = {j["id"]: j for j in jobs}
        states = Counter(by_id[i]["status"] if i in by_id else "missing" for i in ids)
        published_twice = [i for i in ids if sum(h.get("ended") == "succeeded" for h in by_id[i]["history"]) > 1]
        logs = "".join(p.read_text(errors="replace") for p in sorted(self.work.glob("worker-*.log")))
        computed_twice = logs.count("lease lost before it could be marked succeeded")
        attempts = [h for j in jobs for h in j["history"]]
        resumes = [h for h in attempts if h.get("resumed_from_epoch") is not None]
        mid_epoch = [h for h in resumes if h.get("resumed_from_step")]
        ended = Counter(h.get("ended") or "unended" for h in attempts)
        gaps = [
            i
            for i in ids
            if by_id[i]["status"] == "succeeded"
            and [m["epoch"] for m in by_id[i]["metrics"]] != list(range(1, by_id[i]["spec"]["epochs"] + 1))
        ]
        locked = sum(p.read_text(errors="replace").count("database is locked") for p in self.work.glob("*.log"))
        tracebacks = sum(p.read_text(errors="replace").count("Traceback") for p in self.work.glob("*.log"))

        print()
        print(
            f"jobs:                    {len(ids)}  (data: {self.args.data}, {self.args.workers} workers, "
            f"lease {self.args.lease_seconds} s)"
        )
        print(f"succeeded / lost:        {states['succeeded']} / {len(ids) - states['succeeded']}  {dict(states)}")
        print(
            f"run to completion twice: {len(published_twice)} published twice, "
            f"{computed_twice} trained to the end by a fenced-out worker (not published)"
        )
        print(
            f"resumes:                 {len(resumes)} ({len(mid_epoch)} mid-epoch, "
            f"{len(resumes) - len(mid_epoch)} from an epoch checkpoint)"
        )
        print(f"attempts ended:          {dict(ended)}")
        print(
            f"strikes:                 {self.events['strikes']}  "
            f"{ {k: v for k, v in self.events.items() if k.startswith('SIG')} }"
        )
        print(
            f"worker processes:        {len(self.all_workers)} started; API started {self.events['api_starts']} times"
        )
        print(f"metrics gaps:            {len(gaps)} succeeded jobs without every epoch exactly once")
        print(f"'database is locked':    {locked} in logs; tracebacks in logs: {tracebacks}")
        print(f"API errors seen:         {len(self.api_errors)} {self.api_errors[:3]}")
        print(f"total time:              {total:.1f} s")
        mismatched = self.verify_resumed([by_id[i] for i in ids if i in by_id])
        ok = states["succeeded"] == len(ids) and not published_twice and not gaps and not locked and not mismatched
        return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["fixture", "real"], default="fixture")
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--strike-every", type=float, default=4.0, help="seconds between kills (jittered)")
    parser.add_argument("--api-restart-after", type=float, default=20.0, help="seconds into the run")
    parser.add_argument("--lease-seconds", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=420.0, help="the whole run's bound, seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verify", type=int, default=8, help="resumed jobs to retrain and compare")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, database)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fault-run-"))
    try:
        code = Run(args, work).main()
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
