"""Real processes for integration tests: `mnist-jobs serve` on a free port and `mnist-jobs worker`s.

Waits poll a condition (wait_until) with a generous deadline that only guards against a hang; no
test asserts how fast something happened.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx

from bench.postgres import free_port as free_port  # one copy (bench/postgres.py); tests take it from here
from service.platform.config import Settings
from tests.support.settings import settings_env

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def mnist_jobs(*args: str) -> list[str]:
    """The CLI, run with the interpreter running the tests (as the console script runs it)."""
    return [sys.executable, "-m", "cli", *args]


def run_cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`mnist-jobs ARGS` run to its end with its output captured; the caller checks the exit code."""
    return subprocess.run(
        mnist_jobs(*args), env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )


def wait_until(predicate: Callable[[], T | Literal[False] | None], timeout: float = 120, interval: float = 0.05) -> T:
    """The predicate's first truthy value; AssertionError past `timeout` (a hang guard, not a bound)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


class LiveServer:
    """`mnist-jobs serve` as a real process on a free port."""

    def __init__(self, settings: Settings, workers: int, log_path: Path, **overrides: object) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "wb")  # noqa: SIM115 (held while the server runs; closed in stop())
        self.proc = subprocess.Popen(
            mnist_jobs("serve", "--port", str(self.port), "--workers", str(workers)),
            env=settings_env(settings, **overrides),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        self.client = httpx.Client(base_url=self.url, timeout=30)
        wait_until(self._healthy, timeout=120, interval=0.2)

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited with {self.proc.returncode}")
        try:
            return self.client.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def wait_for_status(self, job_id: str, statuses: set[str], timeout: float = 180) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            job: dict[str, Any] = self.client.get(f"/v1/jobs/{job_id}").json()
            return job if job["status"] in statuses else None

        return wait_until(reached, timeout=timeout)

    def stop(self) -> int:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
        code = self.proc.wait(timeout=60)
        self.log.close()
        return code


class Workers:
    """`mnist-jobs worker` subprocesses, each with its own log; all killed at teardown."""

    def __init__(self, settings: Settings, tmp_path: Path, **defaults: object) -> None:
        self.settings, self.tmp_path, self.defaults = settings, tmp_path, defaults
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}

    def start(self, **overrides: object) -> subprocess.Popen[bytes]:
        log_path = self.tmp_path / f"worker-{len(self.procs)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                mnist_jobs("worker"),
                env=settings_env(self.settings, **self.defaults | overrides),
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        self.logs[proc.pid] = log_path
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return self.logs[proc.pid].read_text(errors="replace")

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()
