"""The service under test in bench/fault_run.py: one database, an API process (`mnist-jobs serve
--workers 0`) and worker processes (`mnist-jobs worker`), each logging to a file of its own."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.postgres import free_port
from bench.run import REPO, SHARED, wait_for_api

REAL_DATA = SHARED / "MNIST" / "raw"
FINAL = ("succeeded", "failed", "cancelled")


def prepare_data(root: Path, which: str) -> dict[str, dict[str, str]]:
    """MNIST under `root` (fixture: bench.synthetic's small files); the checksums to pin."""
    raw = root / "MNIST" / "raw"
    if which == "real":
        raw.mkdir(parents=True)
        for path in REAL_DATA.glob("*.gz"):
            shutil.copy(path, raw / path.name)
        return {}  # the built-in pins of the real files apply
    from bench.synthetic import write_mnist

    return {"mnist": write_mnist(raw)}


# For a bench whose one client plays every caller: no fair share to hold it to (api/limits.py).
LIMITS_OFF: dict[str, object] = {
    "rate_limit_per_second": 1_000_000,
    "rate_limit_burst": 1_000_000,
    "max_requests_per_caller": 100_000,
    "max_streams_per_caller": 100_000,
}


def service_env(data: Path, checksums: dict[str, dict[str, str]], settings: dict[str, object]) -> dict[str, str]:
    """This process's environment without its MNIST_JOBS_ settings, plus the data and `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNIST_JOBS_")}
    env |= {f"MNIST_JOBS_{name.upper()}": str(value) for name, value in settings.items()}
    return env | {
        "MNIST_JOBS_DATA_DIR": str(data),
        "MNIST_JOBS_DATA_CHECKSUMS": json.dumps(checksums),
        "PYTHONUNBUFFERED": "1",
    }


class Service:
    """A database (migrated by `mnist-jobs db upgrade`), an API and worker processes; logs and
    artifacts under `folder`. With `artifacts_url` (an object store) the artifacts go there, and
    each process gets an empty folder of its own for its cache: no disk is shared. Every process it
    started is stopped by close()."""

    def __init__(
        self,
        folder: Path,
        database_url: str,
        env: dict[str, str],
        port: int | None = None,
        artifacts_url: str | None = None,
    ) -> None:
        folder.mkdir()
        self.folder, self.database_url, self.artifacts_url = folder, database_url, artifacts_url
        self.env = env | {"MNIST_JOBS_DATABASE_URL": database_url, "MNIST_JOBS_ARTIFACTS_DIR": str(folder / "art")}
        if artifacts_url is not None:
            self.env["MNIST_JOBS_ARTIFACTS_URL"] = artifacts_url
        self.url = f"http://127.0.0.1:{port or free_port()}"
        self.api: subprocess.Popen[bytes] | None = None
        self.api_starts = 0
        self.api_exits: list[int] = []  # exit status of each API process stopped
        self.slots: list[subprocess.Popen[bytes]] = []  # the worker processes now, one per slot
        self.started: list[subprocess.Popen[bytes]] = []  # every worker process, in start order
        self.crashes: list[str] = []  # processes that exited without being told to
        self.poll_errors = 0

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        env = self.env
        if self.artifacts_url is not None:
            env = env | {"MNIST_JOBS_ARTIFACTS_DIR": str(self.folder / f"art-{name}")}
        with open(self.folder / f"{name}.log", "wb") as log:  # the child keeps its copy
            command = [sys.executable, "-m", "cli", *args]
            return subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    def start(self, workers: int) -> None:
        upgrade = [sys.executable, "-m", "cli", "db", "upgrade"]
        subprocess.run(upgrade, env=self.env, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        self.start_api()
        self.slots = [self.start_worker() for _ in range(workers)]

    def start_api(self) -> None:
        port = self.url.rsplit(":", 1)[1]
        self.api = self._spawn(f"api-{self.api_starts}", "serve", "--port", port, "--workers", "0")
        self.api_starts += 1
        wait_for_api(self.url)

    def stop_api(self) -> None:
        if self.api is not None and self.api.poll() is None:
            self.api.send_signal(signal.SIGTERM)
            self.api_exits.append(self.api.wait(timeout=30))

    def start_worker(self) -> subprocess.Popen[bytes]:
        self.started.append(proc := self._spawn(f"worker-{len(self.started)}", "worker"))
        return proc

    def worker_log(self, proc: subprocess.Popen[bytes]) -> str:
        return (self.folder / f"worker-{self.started.index(proc)}.log").read_text(errors="replace")

    def replace_the_dead(self) -> None:
        """Start again a worker or the API that exited without being told to, and note why it ended."""
        for i, proc in enumerate(self.slots):
            if proc.poll() is not None:
                lines = self.worker_log(proc).splitlines()
                ours = [line.strip() for line in lines if f'File "{REPO}/' in line]  # the last frame of our code
                errors = [line for line in lines if line[:1].isalpha() and "Error" in line]
                why = f"{errors[-1] if errors else ''} ({ours[-1] if ours else 'no traceback'})"
                self.crashes.append(f"worker pid {proc.pid} exited {proc.returncode}: {why}")
                self.slots[i] = self.start_worker()
        if self.api is not None and self.api.poll() is not None:
            self.crashes.append(f"API pid {self.api.pid} exited {self.api.returncode}")
            self.start_api()

    def stop_workers(self) -> Counter[int]:
        """SIGCONT + SIGTERM every worker still running, wait (SIGKILL after 20 s); their exit codes."""
        for proc in self.started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in self.started:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return Counter(proc.returncode for proc in self.started)

    def close(self) -> None:
        self.stop_workers()
        self.stop_api()

    def logs(self, prefix: str) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.folder.glob(f"{prefix}*.log")))

    def submit(self, specs: list[dict[str, Any]], key: str) -> tuple[list[str], Counter[int]]:
        """POST each spec with Idempotency-Key <key>-<index>: the ids, and the status codes seen."""
        ids, codes = [], Counter[int]()
        with httpx.Client(base_url=self.url, timeout=30) as client:
            for i, spec in enumerate(specs):
                response = client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": f"{key}-{i}"})
                codes[response.status_code] += 1
                ids.append(response.json()["id"])
        return ids, codes

    def ended(self) -> int | None:
        """Jobs in a final status (GET /metrics), or None when that could not be read."""
        try:
            text = httpx.get(f"{self.url}/metrics", timeout=10).text
        except httpx.TransportError:
            text = ""
        counts = [line.split() for line in text.splitlines() if line.startswith('mnist_jobs_jobs{status="')]
        if not counts:
            self.poll_errors += 1
            return None
        return sum(int(float(n)) for name, n in counts if name.split('"')[1] in FINAL)

    def busy(self) -> dict[int, str]:
        """The pid of each worker holding a job, and the job's id (GET /v1/workers)."""
        try:
            workers = httpx.get(f"{self.url}/v1/workers", timeout=5).json()
            return {w["pid"]: w["current_job_id"] for w in workers if w["current_job_id"]}
        except (httpx.TransportError, ValueError, TypeError):
            self.poll_errors += 1
            return {}
